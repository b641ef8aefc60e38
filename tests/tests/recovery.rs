//! Recovery end to end: a real systemd (the test bed), agents in `Restart=always` units, the
//! stand-in API in each failure mode, real probes, and the daemon restarting through D-Bus.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use claude_watch_tests::wait::now_ms;
use std::path::Path;
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::{ActionKind, ActionRecord, IncidentEvent, Record};
use claude_watch_tests::agents::{
    AgentConfig, FAKE_API_KEY, Runtime, agent_unit, claude_code_unit,
};
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
fn a_poisoned_credential_is_escalated_after_k_restarts_once_and_retried_until_it_is_fixed() {
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
            "backoff_initial = \"2s\"\nbackoff_max = \"4s\"\nmax_restarts = 2\nescalation_hook = [\"/bin/sh\", \"{}\", \"{{instance}}\", \"{{unit}}\"]",
            hook.display()
        ),
    );
    let daemon = Daemon::start("", &config);
    daemon.wait_for(UNIT, WAIT, "healthy", |i| i.last_status == Some(200));
    standin.poison_credential(FAKE_API_KEY);

    daemon.wait_for(UNIT, WAIT, "escalated in status", |i| {
        i.state == "escalated" && i.escalated_ms.is_some()
    });
    wait_until(WAIT, "the hook to run", || hook_log.exists().then_some(()));
    // The escalation is a notice: restarts go on behind the capped quiet window (4 s), and
    // nobody is paged again.
    let escalated_at = daemon.actions_of(UNIT, ActionKind::Restart).len();
    wait_until(WAIT, "two more restarts after the notice", || {
        (daemon.actions_of(UNIT, ActionKind::Restart).len() >= escalated_at + 2).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(&hook_log).expect("hook log"),
        format!("{UNIT} {UNIT}\n")
    );
    assert_eq!(daemon.actions_of(UNIT, ActionKind::Hook).len(), 1);
    assert_eq!(daemon.actions_of(UNIT, ActionKind::Escalate).len(), 1);
    let open = daemon
        .episodes_of(UNIT)
        .into_iter()
        .last()
        .expect("an episode");
    assert!(!open.is_closed() && open.escalated_ms.is_some(), "{open:?}");
    // The credential is fixed: the next restart's new session answers, the escalation ends.
    let fixed_at = now_ms();
    standin.clear_credential(FAKE_API_KEY);
    let episode = daemon.wait_closed_episode(Some(UNIT), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.id, open.id, "one episode throughout");
    assert!(episode.escalated_ms.is_some());
    let now = daemon.wait_for(UNIT, WAIT, "healthy after the credential was fixed", |i| {
        i.state == "healthy" && i.last_status == Some(200)
    });
    assert_eq!(now.escalated_ms, None);
    let session = now.session_id.expect("session");
    assert!(standin.answered(&session, 200, fixed_at));
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
    bed.add_unit(UNIT, &claude_code_unit(&standin, &claude, "", 3, &home));
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

/// Four agents latched by one upstream window that outlasts the old escalation horizon (K = 3
/// restarts from a 3 s quiet window: escalated about 15 s in, and never restarted again, so
/// none came back). Now: one canary restart per quiet window while it is open (within
/// log2(window / backoff_initial) + 2), one notice for all four, and every agent restarted
/// and confirmed by its own new session once the window has closed.
#[test]
fn an_upstream_window_longer_than_the_old_escalation_horizon_brings_every_agent_back() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-incident");
    let bed = Testbed::start("incident");
    let units = [
        "agent-a.service",
        "agent-b.service",
        "agent-c.service",
        "agent-d.service",
    ];
    for unit in units {
        let home = dir.path().join(unit);
        std::fs::create_dir_all(&home).expect("agent dir");
        bed.add_unit(
            unit,
            &agent_unit(
                &standin,
                Runtime::Node,
                &AgentConfig::haiku_as_claude(),
                &home,
            ),
        );
    }
    bed.daemon_reload();
    for unit in units {
        assert!(
            bed.systemctl(&["start", unit]).status.success(),
            "start {unit}"
        );
    }
    let hook_log = dir.path().join("hook.log");
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$1|$2\" >> {}\n", hook_log.display()),
    )
    .expect("write hook");
    let daemon = Daemon::start(
        "",
        &recovery_config(
            &bed,
            &format!(
                "backoff_initial = \"3s\"\nbackoff_max = \"12s\"\nmax_restarts = 3\nescalation_hook = [\"/bin/sh\", \"{}\", \"{{instance}}\", \"{{instances}}\"]",
                hook.display()
            ),
        ),
    );
    for unit in units {
        daemon.wait_for(unit, WAIT, "healthy", |i| i.last_status == Some(200));
    }
    let window = Duration::from_secs(50);
    let opened = now_ms();
    standin.open_window_for_all(window);
    let closes = opened + u64::try_from(window.as_millis()).expect("fits");

    // While it is open, the host is in an incident: one canary, the others wait for it.
    let text = wait_until(WAIT, "the incident of all four in status", || {
        let text = daemon.status_text();
        text.contains("4 instances latched together")
            .then_some(text)
    });
    assert!(text.contains("upstream incident since"), "{text}");
    let members = daemon
        .instances()
        .into_iter()
        .filter(|i| i.incident.is_some())
        .count();
    assert_eq!(members, 4, "{text}");

    // Every agent comes back, after the window closed, confirmed by its own new session.
    let long = Duration::from_secs(150);
    for unit in units {
        let episode =
            daemon.wait_closed_episode(Some(unit), EpisodeEnd::RecoveredAfterRestart, long);
        assert!(
            episode.ended_ms.expect("ended") >= closes,
            "{unit} recovered before the window closed: {episode:?}"
        );
        let now = daemon.wait_for(unit, WAIT, "healthy", |i| i.state == "healthy");
        let session = now.session_id.expect("a session");
        assert!(
            standin.answered(&session, 200, closes),
            "{unit}: its new session got no 200 after the window closed"
        );
    }
    // Restarts into the open window: the canary's tries only, logarithmic in its length.
    let restarts: Vec<ActionRecord> = units
        .iter()
        .flat_map(|u| daemon.actions_of(u, ActionKind::Restart))
        .filter(|r| r.ok)
        .collect();
    let into_window = restarts.iter().filter(|r| r.at_ms < closes).count();
    let bound = (window.as_secs_f64() / 3.0).log2() + 2.0;
    eprintln!(
        "restarts: {} in all, {into_window} while the window was open (bound {bound:.1})",
        restarts.len()
    );
    assert!(
        into_window >= 2 && into_window as f64 <= bound,
        "{into_window} restarts into the window (bound {bound:.1}): {restarts:?}"
    );
    assert!(
        restarts.len() >= into_window + units.len() - 1,
        "every agent restarted after the close: {restarts:?}"
    );
    // One notice, for all four; no instance escalated on its own.
    let notices = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert_eq!(notices.lines().count(), 1, "{notices}");
    assert!(units.iter().all(|u| notices.contains(u)), "{notices}");
    assert!(daemon.actions(ActionKind::Escalate).is_empty());
    let incident: Vec<IncidentEvent> = daemon
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Incident(i) if i.event != IncidentEvent::Joined => Some(i.event),
            _ => None,
        })
        .collect();
    assert_eq!(
        incident,
        [
            IncidentEvent::Opened,
            IncidentEvent::Escalated,
            IncidentEvent::Closed
        ]
    );
    let text = daemon.status_text();
    assert!(!text.contains("upstream incident"), "{text}");
}
