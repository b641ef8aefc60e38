//! Recovery end to end: a real systemd (the test bed), agents in `Restart=always` units, the
//! stand-in API in each failure mode, real probes, and the daemon restarting through D-Bus.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use claude_watch_tests::wait::now_ms;
use std::path::Path;
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::{ActionKind, ActionRecord};
use claude_watch_tests::agents::{AgentConfig, FAKE_API_KEY, Runtime, agent_unit};
use claude_watch_tests::deps::ClaudeCode;
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::testbed::Testbed;
use claude_watch_tests::wait::{one_at_a_time as serial, wait_until};
use claude_watch_tests::watch::Daemon;

const UNIT: &str = "agent.service";

const WAIT: Duration = Duration::from_secs(45);

/// A test bed running one light agent (taken for Claude Code) in `agent.service`.
fn bed_with_agent(name: &str, standin: &StandIn, model: &str, dir: &Path) -> Testbed {
    let bed = Testbed::start(name);
    let config = AgentConfig {
        model: model.into(),
        as_claude: true,
        ..AgentConfig::default()
    };
    bed.add_unit(UNIT, &agent_unit(standin, Runtime::Node, &config, dir));
    bed.daemon_reload();
    let out = bed.systemctl(&["start", UNIT]);
    assert!(
        out.status.success(),
        "start {UNIT}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed
}

/// Daemon configuration: fast detection, short quiet windows, systemd at the test bed's bus.
fn recovery_config(bed: &Testbed, extra: &str) -> String {
    format!(
        "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nsystemd_bus = \"{}\"\nrestart_timeout = \"20s\"\n{extra}\n",
        bed.bus_address()
    )
}

#[test]
fn a_latched_agent_is_restarted_through_dbus_and_recovery_is_confirmed_by_its_own_200() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-recovery");
    let bed = bed_with_agent("recover", &standin, "claude-haiku-4-5", dir.path());
    let daemon = Daemon::start(
        &format!(
            "metrics_listen = \"127.0.0.1:{}\"",
            claude_watch_tests::watch::free_port()
        ),
        &recovery_config(&bed, "backoff_initial = \"3s\""),
    );
    let healthy = daemon.wait_for(UNIT, WAIT, "the unit's agent healthy", |i| {
        i.last_status == Some(200)
    });
    assert_eq!(healthy.supervisor, "systemd");
    assert_eq!(healthy.unit.as_deref(), Some(UNIT));
    let old_session = healthy.session_id.clone().expect("session");
    let old_pid = bed.main_pid(UNIT).expect("main pid");
    let latched_at = now_ms();
    standin.latch_session(&old_session);

    let episode = daemon.wait_closed_episode(Some(UNIT), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.restarts, 1);
    let ttr = episode
        .time_to_recovery_ms
        .expect("time to recovery recorded");
    assert!(ttr < 20_000, "time to recovery {ttr} ms");
    let new_pid = bed.main_pid(UNIT).expect("a new main pid");
    assert_ne!(new_pid, old_pid, "systemd restarted the unit");
    // Confirmed by the new process's own request: the stand-in answered its new session 200
    // after the restart, and no token probe was ever sent (claude-watch sends no request).
    daemon.assert_recovered_by_new_session(&standin, UNIT, &old_session, latched_at, WAIT);
    assert!(
        standin.log().iter().all(|l| l.path != "/v1/models"),
        "no probe request was made"
    );
    let restarts = daemon.actions_of(UNIT, ActionKind::Restart);
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok);
    assert_eq!(restarts[0].episode_id.as_deref(), Some(episode.id.as_str()));
    // The restart waited for its journal records to be durable, and that wait is measured.
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("claude_watch_restart_sync_wait_seconds_count 1\n"),
        "{metrics}"
    );
}

#[test]
fn an_open_upstream_window_backs_off_and_recovery_waits_for_it_to_close() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-window");
    let bed = bed_with_agent("window", &standin, "claude-haiku-4-5", dir.path());
    let daemon = Daemon::start(
        "",
        &recovery_config(
            &bed,
            "backoff_initial = \"3s\"\nbackoff_max = \"12s\"\nmax_restarts = 6",
        ),
    );
    let healthy = daemon.wait_for(UNIT, WAIT, "healthy", |i| i.last_status == Some(200));
    // Long enough that the first restart lands inside it even on a loaded machine.
    let window = Duration::from_secs(25);
    standin.open_window(window);
    let window_closes = now_ms() + u64::try_from(window.as_millis()).expect("fits");
    standin.latch_session(healthy.session_id.as_deref().expect("session"));

    let episode = daemon.wait_closed_episode(Some(UNIT), EpisodeEnd::RecoveredAfterRestart, WAIT);
    let restarts = daemon.actions_of(UNIT, ActionKind::Restart);
    assert!(
        restarts.len() >= 2,
        "restarted into the open window, then again: {restarts:?}"
    );
    assert!(
        episode.ended_ms.expect("ended") >= window_closes,
        "recovered before the window closed: {episode:?}"
    );
    // Growing quiet windows, and no restart inside one.
    let backoffs = daemon.actions_of(UNIT, ActionKind::Backoff);
    let waits: Vec<u64> = backoffs
        .iter()
        .map(|b| b.until_ms.expect("until") - b.at_ms)
        .collect();
    assert!(waits.len() >= 2, "{backoffs:?}");
    assert!(
        waits.windows(2).all(|w| w[1] > w[0] + 1000),
        "quiet windows grow: {waits:?}"
    );
    for backoff in &backoffs {
        let until = backoff.until_ms.expect("until");
        let at = backoff.at_ms;
        assert!(
            restarts
                .iter()
                .map(|r| r.at_ms)
                .all(|t| t <= at || t >= until.saturating_sub(300)),
            "a restart inside the quiet window {at}..{until}: {restarts:?}"
        );
    }
}

#[test]
fn a_poisoned_credential_is_escalated_after_k_restarts_and_the_hook_runs_once() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-poison");
    let bed = bed_with_agent("poison", &standin, "claude-haiku-4-5", dir.path());
    let hook_log = dir.path().join("hook.log");
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", hook_log.display()),
    )
    .expect("write hook");
    let config = recovery_config(
        &bed,
        &format!(
            "backoff_initial = \"2s\"\nmax_restarts = 2\nescalation_hook = [\"/bin/sh\", \"{}\", \"{{instance}}\", \"{{unit}}\"]",
            hook.display()
        ),
    );
    let daemon = Daemon::start("", &config);
    daemon.wait_for(UNIT, WAIT, "healthy", |i| i.last_status == Some(200));
    standin.poison_credential(FAKE_API_KEY);

    let episode = daemon.wait_closed_episode(Some(UNIT), EpisodeEnd::Escalated, WAIT);
    assert_eq!(episode.restarts, 2, "{episode:?}");
    daemon.wait_for(UNIT, WAIT, "escalated in status", |i| {
        i.state == "escalated"
    });
    wait_until(WAIT, "the hook to run", || hook_log.exists().then_some(()));
    // No more restarts once escalated, and the hook ran exactly once.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(daemon.actions_of(UNIT, ActionKind::Restart).len(), 2);
    assert_eq!(
        std::fs::read_to_string(&hook_log).expect("hook log"),
        format!("{UNIT} {UNIT}\n")
    );
    assert_eq!(daemon.actions_of(UNIT, ActionKind::Hook).len(), 1);
    // A non-401 leaves escalation.
    standin.clear_credential(FAKE_API_KEY);
    daemon.wait_for(UNIT, WAIT, "healthy after the credential was fixed", |i| {
        i.state == "healthy" && i.last_status == Some(200)
    });
}

#[test]
fn a_429_throttle_restarts_nothing() {
    let _serial = serial();
    let standin = StandIn::start();
    standin.throttle_models(&["claude-opus-*"]);
    let dir = ScratchDir::new("cw-throttle");
    let bed = bed_with_agent("throttle", &standin, "claude-opus-4-8", dir.path());
    let pid = bed.main_pid(UNIT).expect("main pid");
    let daemon = Daemon::start("", &recovery_config(&bed, "backoff_initial = \"2s\""));
    daemon.wait_for(UNIT, WAIT, "throttled", |i| {
        i.last_status == Some(429) && i.throttled == ["claude-opus-4-8"]
    });
    std::thread::sleep(Duration::from_secs(6));
    let status = daemon.wait_for(UNIT, WAIT, "still healthy", |_| true);
    assert_eq!(status.state, "healthy");
    assert!(daemon.actions_of(UNIT, ActionKind::Restart).is_empty());
    assert_eq!(bed.main_pid(UNIT), Some(pid), "the unit was not restarted");
}

#[test]
fn a_daemon_restarted_during_a_quiet_window_does_not_restart_early() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-persist");
    let bed = bed_with_agent("persist", &standin, "claude-haiku-4-5", dir.path());
    let config = recovery_config(&bed, "backoff_initial = \"10s\"\nmax_restarts = 5");
    let daemon = Daemon::start("", &config);
    let healthy = daemon.wait_for(UNIT, WAIT, "healthy", |i| i.last_status == Some(200));
    standin.open_window(Duration::from_secs(60));
    standin.latch_session(healthy.session_id.as_deref().expect("session"));
    // First restart, into the window: latched again, a 10 s quiet window begins.
    let backoff = wait_until(WAIT, "a quiet window", || {
        daemon
            .actions_of(UNIT, ActionKind::Backoff)
            .into_iter()
            .next()
    });
    let until = backoff.until_ms.expect("until");
    let pid_in_window = bed.main_pid(UNIT).expect("pid");
    let scratch = daemon.crash();
    let daemon = Daemon::start_in(scratch, "", &config);
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("recovery state restored")),
        "{:?}",
        daemon.log()
    );
    // Nothing happens before the window ends...
    while now_ms() + 1500 < until {
        assert_eq!(
            bed.main_pid(UNIT),
            Some(pid_in_window),
            "restarted inside the quiet window"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // ...and the next restart comes after it.
    let second = wait_until(WAIT, "the next restart", || {
        daemon
            .actions_of(UNIT, ActionKind::Restart)
            .into_iter()
            .nth(1)
    });
    assert!(
        second.at_ms >= until.saturating_sub(300),
        "restart at {} before {until}",
        second.at_ms
    );
}

#[test]
fn an_unreachable_supervisor_is_reported_retried_and_loses_no_episode() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-nobus");
    let bed = bed_with_agent("nobus", &standin, "claude-haiku-4-5", dir.path());
    let broken = "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nsystemd_bus = \"unix:path=/nonexistent/bus\"\nbackoff_initial = \"2s\"\n";
    let daemon = Daemon::start("", broken);
    let healthy = daemon.wait_for(UNIT, WAIT, "healthy", |i| i.last_status == Some(200));
    standin.latch_session(healthy.session_id.as_deref().expect("session"));
    let failed = wait_until(WAIT, "two failed restarts", || {
        let failed: Vec<ActionRecord> = daemon
            .actions_of(UNIT, ActionKind::Restart)
            .into_iter()
            .filter(|r| !r.ok)
            .collect();
        (failed.len() >= 2).then_some(failed)
    });
    assert!(
        failed[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("unavailable")),
        "{failed:?}"
    );
    assert!(
        !daemon.actions_of(UNIT, ActionKind::Backoff).is_empty(),
        "failures back off"
    );
    daemon.wait_for(UNIT, WAIT, "still latched, daemon alive", |i| {
        i.state == "latched"
    });
    // Fix the configuration: the next attempt goes through and the same episode recovers.
    let config = std::fs::read_to_string(daemon.config_path()).expect("config");
    std::fs::write(
        daemon.config_path(),
        config.replace("unix:path=/nonexistent/bus", &bed.bus_address()),
    )
    .expect("fix config");
    daemon.signal(libc::SIGHUP);
    let episode = daemon.wait_closed_episode(Some(UNIT), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert!(episode.restarts >= 1);
    let ids: Vec<String> = daemon.episodes_of(UNIT).into_iter().map(|e| e.id).collect();
    assert!(
        ids.iter().all(|id| *id == episode.id),
        "one episode throughout: {ids:?}"
    );
}

#[test]
fn the_real_claude_code_in_a_unit_is_restarted_and_recovers() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-claude");
    let bed = Testbed::start("claude");
    let (claude, leading) = ClaudeCode::Native2_1_331.command();
    assert!(leading.is_empty());
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let feed = dir.path().join("feed.sh");
    std::fs::write(
        &feed,
        format!(
            "#!/bin/sh\nwhile :; do echo '{{\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":\"ping\"}}}}'; sleep 3; done | {} -p --input-format stream-json --output-format stream-json --verbose\n",
            claude.display()
        ),
    )
    .expect("write feed.sh");
    let env = [
        ("HOME", home.display().to_string()),
        ("ANTHROPIC_BASE_URL", standin.base_url()),
        ("ANTHROPIC_API_KEY", FAKE_API_KEY.to_owned()),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
    ];
    let environment: String = env
        .iter()
        .map(|(k, v)| format!("Environment=\"{k}={v}\"\n"))
        .collect();
    bed.add_unit(
        UNIT,
        &format!(
            "[Service]\nExecStart=/bin/sh {}\nRestart=always\nWorkingDirectory={}\n{environment}",
            feed.display(),
            home.display()
        ),
    );
    bed.daemon_reload();
    assert!(bed.systemctl(&["start", UNIT]).status.success());
    let daemon = Daemon::start("", &recovery_config(&bed, "backoff_initial = \"5s\""));
    let healthy = daemon.wait_for(UNIT, Duration::from_secs(90), "claude healthy", |i| {
        i.last_status == Some(200) && i.session_id.is_some()
    });
    assert!(
        healthy
            .binary
            .as_deref()
            .is_some_and(|b| b.ends_with("/claude")),
        "{healthy:?}"
    );
    let old_session = healthy.session_id.clone().expect("session");
    standin.latch_session(&old_session);
    let episode = daemon.wait_closed_episode(Some(UNIT), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert!(episode.session_ids.contains(&old_session), "{episode:?}");
    let now = daemon.wait_for(UNIT, WAIT, "claude healthy with a new session", |i| {
        i.state == "healthy" && i.session_id.as_deref() != Some(old_session.as_str())
    });
    let new_session = now.session_id.as_deref().expect("session");
    assert!(
        standin
            .log()
            .iter()
            .any(|l| l.session.as_deref() == Some(new_session) && l.status == 200),
        "the new session got a 200"
    );
}
