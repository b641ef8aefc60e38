//! The daemon end to end, without a supervisor (observe-only): real probes on real agents
//! against the stand-in API; detection, the journal, `status`, `episodes`, metrics, reload and
//! shutdown, and crashes.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use claude_watch_tests::wait::one_at_a_time as serial;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use claude_watch::detect::EpisodeEnd;
use claude_watch_tests::agents::{Agent, AgentConfig, Runtime};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::{self, Daemon, read_journal};
use serde_json::Value;

/// Fast thresholds for tests: latched after 3 401s over 2 s.
const DETECTOR: &str = "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n";
const SPAN: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);

fn claude_agent(standin: &StandIn, model: &str) -> Agent {
    let config = AgentConfig {
        model: model.into(),
        as_claude: true,
        ..AgentConfig::default()
    };
    Agent::start(standin, Runtime::Node, &config)
}

fn wall_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

/// The instance name the daemon gives an agent without unit or rule.
fn pid_name(agent: &Agent) -> String {
    format!("pid:{}", agent.pid())
}

/// The output contract: `status --json`, the journal's lines, `episodes --json` and
/// `/metrics` are read here as the JSON and text users script against (the other tests read the
/// library's own types).
#[test]
fn healthy_latched_and_throttled_agents_in_status_journal_episodes_and_metrics() {
    let _serial = serial();
    let standin = StandIn::start();
    standin.throttle_models(&["claude-opus-*"]);
    let daemon = Daemon::start(
        &format!("metrics_listen = \"127.0.0.1:{}\"", watch::free_port()),
        DETECTOR,
    );
    let healthy = claude_agent(&standin, "claude-haiku-4-5");
    let latched = claude_agent(&standin, "claude-sonnet-4-6");
    let throttled = claude_agent(&standin, "claude-opus-4-8");
    for agent in [&healthy, &latched] {
        daemon.wait_instance(&pid_name(agent), WAIT, "a healthy agent with a 200", |i| {
            i["state"] == "healthy" && i["last_status"] == 200
        });
    }

    // Latch one session; measure from its first 401 (the stand-in's clock) to the report.
    let latch_index = standin.log().len();
    standin.latch_session(latched.session_id());
    let reported = daemon.wait_instance(
        &pid_name(&latched),
        WAIT,
        "the latched agent reported latched",
        |i| i["state"] == "latched",
    );
    let reported_at = wall_s();
    let first_401 = standin
        .log_since(latch_index)
        .into_iter()
        .find(|l| l.status == 401 && l.session.as_deref() == Some(latched.session_id()))
        .expect("the stand-in answered 401");
    let delay = reported_at - first_401.time;
    assert!(
        delay <= SPAN.as_secs_f64() + 1.0,
        "latched reported {delay:.2}s after the first 401 (threshold {SPAN:?} + 1 s)"
    );
    assert!(
        reported["window_401s"].as_u64().is_some_and(|n| n >= 3),
        "{reported}"
    );
    assert_eq!(reported["session_id"], Value::from(latched.session_id()));
    assert_eq!(
        reported["supervisor"], "observe",
        "no systemd here: observe-only"
    );

    // The throttled agent: 429s, throttled, never latched.
    std::thread::sleep(SPAN + Duration::from_secs(1));
    let t = daemon.wait_instance(&pid_name(&throttled), WAIT, "the throttled agent", |i| {
        !i["throttled"].as_array().is_none_or(Vec::is_empty)
    });
    assert_eq!(t["state"], "healthy", "a 429 throttle is not a latch: {t}");
    assert_eq!(t["throttled"], serde_json::json!(["claude-opus-4-8"]));
    assert_eq!(t["last_status"], 429);
    let h = daemon
        .instance_of(healthy.pid())
        .expect("healthy agent listed");
    assert_eq!(
        (h["state"].as_str(), h["last_status"].as_u64()),
        (Some("healthy"), Some(200))
    );
    assert_eq!(
        h["version"], "0.0.0-agent",
        "version from the claude-cli User-Agent: {h}"
    );

    let text = daemon.status_text();
    assert!(
        text.contains(&pid_name(&latched)) && text.contains("latched"),
        "{text}"
    );
    assert!(text.contains("throttled(claude-opus-4-8)"), "{text}");

    // Metrics, parsed by a Prometheus text parser, agree with what happened.
    let metrics = daemon.metrics();
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let latched_name = pid_name(&latched);
    let throttled_name = pid_name(&throttled);
    assert!(
        value(
            "claude_watch_exchanges_total",
            &[("agent", &latched_name), ("status", "401")]
        )
        .is_some_and(|v| v >= 3.0),
        "{metrics}"
    );
    assert!(
        value(
            "claude_watch_exchanges_total",
            &[("agent", &throttled_name), ("status", "429")]
        )
        .is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        value("claude_watch_episodes_total", &[("agent", &latched_name)]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value("claude_watch_episodes_total", &[("agent", &throttled_name)]),
        None,
        "a throttle opens no episode"
    );
    assert_eq!(
        value(
            "claude_watch_instance_state",
            &[("agent", &latched_name), ("state", "latched")]
        ),
        Some(1.0)
    );
    assert_eq!(value("claude_watch_lost_events_total", &[]), Some(0.0));
    assert!(value("claude_watch_probe_attachments", &[]).is_some_and(|v| v >= 1.0));
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "claude_watch_detection_seconds_count"),
        "detection latency histogram"
    );

    // Every metric the shipped alert rules and dashboard use is exported.
    let root = claude_watch_tests::deps::workspace_root();
    for file in [
        "packaging/prometheus/claude-watch.rules.yml",
        "packaging/grafana/claude-watch-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("packaging file");
        let mut names: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.starts_with("claude_watch_"))
            .map(|t| t.strip_suffix("_bucket").unwrap_or(t))
            .collect();
        names.dedup();
        assert!(!names.is_empty());
        for name in names {
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "{file} uses {name}, which claude-watch does not export"
            );
        }
    }

    // The journal holds the episode with the stand-in's request ids; `episodes` reports it.
    let journal = daemon.journal();
    let episode = journal
        .iter()
        .rfind(|r| r["record"] == "episode" && r["episode"]["instance"] == latched_name.as_str())
        .expect("an episode record")["episode"]
        .clone();
    let ids: Vec<&str> = episode["first_request_ids"]
        .as_array()
        .expect("request ids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!ids.is_empty());
    let log = standin.log();
    for id in &ids {
        let entry = log
            .iter()
            .find(|l| l.request_id == *id)
            .unwrap_or_else(|| panic!("{id} is not the stand-in's"));
        assert_eq!(
            (entry.status, entry.session.as_deref()),
            (401, Some(latched.session_id()))
        );
    }
    assert!(
        journal
            .iter()
            .all(|r| r["episode"]["instance"] != throttled_name.as_str()),
        "no episode for the throttle"
    );
    let report = daemon.episodes_report();
    let text = report.to_string();
    assert!(
        text.contains(ids[0]),
        "the report carries request ids: {report}"
    );
    assert!(report.as_object().is_some_and(|o| !o.is_empty()));
    // Nothing secret anywhere.
    let all = format!(
        "{}\n{}\n{}",
        daemon.log().join("\n"),
        std::fs::read_to_string(daemon.journal_path()).unwrap_or_default(),
        metrics
    );
    assert!(
        !all.contains(claude_watch_tests::agents::FAKE_API_KEY),
        "the credential leaked"
    );
}

#[test]
fn a_latch_that_self_recovers_is_closed_as_self_recovered() {
    let _serial = serial();
    let standin = StandIn::start();
    let daemon = Daemon::start("", DETECTOR);
    let agent = claude_agent(&standin, "claude-haiku-4-5");
    let name = pid_name(&agent);
    daemon.wait_for(&name, WAIT, "healthy", |i| i.last_status == Some(200));
    standin.latch_session(agent.session_id());
    daemon.wait_for(&name, WAIT, "latched", |i| i.state == "latched");
    standin.unlatch_session(agent.session_id());
    daemon.wait_for(&name, WAIT, "healthy again", |i| {
        i.state == "healthy" && i.last_status == Some(200)
    });
    let closed = daemon.wait_closed_episode(Some(&name), EpisodeEnd::SelfRecovered, WAIT);
    assert_eq!(closed.restarts, 0);
    assert!(closed.count_401 >= 3, "{closed:?}");
}

#[test]
fn reload_on_sighup_and_clean_sigterm() {
    let _serial = serial();
    let daemon = Daemon::start("", DETECTOR);
    // A valid change is applied.
    let config = std::fs::read_to_string(daemon.config_path()).expect("config");
    std::fs::write(
        daemon.config_path(),
        config.replace("[daemon]\n", "[daemon]\ndry_run = true\n"),
    )
    .expect("rewrite config");
    daemon.signal(libc::SIGHUP);
    wait_until(WAIT, "the reload to be logged", || {
        daemon
            .log()
            .iter()
            .any(|l| l.contains("configuration reloaded"))
            .then_some(())
    });
    wait_until(WAIT, "dry run shown in status", || {
        daemon.status_text().contains("DRY RUN").then_some(())
    });
    // A broken one is refused and the daemon keeps running with the old one.
    std::fs::write(daemon.config_path(), "[detector]\nlatch_min_401s = 0\n").expect("break config");
    daemon.signal(libc::SIGHUP);
    let refusal = wait_until(WAIT, "the refusal to be logged", || {
        daemon
            .log()
            .into_iter()
            .find(|l| l.contains("reload refused"))
    });
    assert!(
        refusal.contains("config.toml:2:18") && refusal.contains("detector.latch_min_401s"),
        "{refusal}"
    );
    assert!(
        daemon.status_text().contains("DRY RUN"),
        "the running configuration is kept"
    );

    // SIGTERM: exit 0, probes and links released, the socket removed.
    let pid = daemon.pid();
    let (progs, links) = bpf_objects_of(pid);
    assert!(
        progs.len() >= 6 && !links.is_empty(),
        "the daemon holds its programs and links: {progs:?} {links:?}"
    );
    let dir = daemon.stop();
    // The kernel frees programs and links asynchronously once their last reference is gone.
    wait_until(
        Duration::from_secs(10),
        "the daemon's programs and links to be released",
        || {
            let loaded_progs: Vec<u32> = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .map(|p| p.id())
                .collect();
            let loaded_links: Vec<u32> = aya::programs::loaded_links()
                .filter_map(Result::ok)
                .map(|l| l.id())
                .collect();
            (progs.iter().all(|p| !loaded_progs.contains(p))
                && links.iter().all(|l| !loaded_links.contains(l)))
            .then_some(())
        },
    );
    assert!(
        !dir.path().join("control.sock").exists(),
        "the control socket was removed"
    );
}

/// BPF program and link ids held by process `pid`, from its fdinfo.
fn bpf_objects_of(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let (mut progs, mut links) = (Vec::new(), Vec::new());
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        for line in info.lines() {
            if let Some(id) = line
                .strip_prefix("prog_id:")
                .and_then(|v| v.trim().parse().ok())
            {
                progs.push(id);
            }
            if let Some(id) = line
                .strip_prefix("link_id:")
                .and_then(|v| v.trim().parse().ok())
            {
                links.push(id);
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    (progs, links)
}

#[test]
fn sigkill_mid_write_loses_no_episode_and_corrupts_no_record() {
    let _serial = serial();
    let standin = StandIn::start();
    let agent = claude_agent(&standin, "claude-haiku-4-5");
    standin.latch_session(agent.session_id());
    // Every 401 of the latched agent updates its episode: the journal is written continuously.
    let mut dir = None;
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..4 {
        let daemon = match dir.take() {
            Some(d) => Daemon::start_in(d, "", DETECTOR),
            None => Daemon::start("", DETECTOR),
        };
        let before = daemon.journal().len();
        wait_until(WAIT, "the journal to grow", || {
            (daemon.journal().len() >= before + 2).then_some(())
        });
        // What the daemon has reported as written (fsynced before it is reported).
        for r in daemon.journal() {
            if r["record"] == "episode" {
                let id = r["episode"]["id"].as_str().unwrap_or_default().to_owned();
                let count = r["episode"]["count_401"].as_u64().unwrap_or(0);
                let e = reported.entry(id).or_insert(0);
                *e = (*e).max(count);
            }
        }
        // Kill at a varying moment inside the write cadence.
        std::thread::sleep(Duration::from_millis(37 * (round + 1)));
        let started = Instant::now();
        dir = Some(daemon.crash());
        // A hang, not a speed: the kernel's teardown of a killed daemon's probes takes
        // seconds on a loaded machine (it waited over 5 s once, with two builds running).
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let daemon = Daemon::start_in(dir.take().expect("dir"), "", DETECTOR);
    // After a restart the (possibly torn) tail was repaired: every line parses.
    let records = read_journal(&daemon.journal_path());
    assert!(!records.is_empty());
    for (id, count) in &reported {
        let kept = records
            .iter()
            .filter(|r| r["record"] == "episode" && r["episode"]["id"] == id.as_str())
            .filter_map(|r| r["episode"]["count_401"].as_u64())
            .max()
            .unwrap_or(0);
        assert!(
            kept >= *count,
            "episode {id}: {count} 401s were reported, {kept} kept"
        );
    }
    let report = daemon.episodes_report();
    assert!(
        report.to_string().contains(
            reported
                .keys()
                .next()
                .expect("an episode")
                .split('@')
                .next()
                .unwrap_or("")
        ),
        "{report}"
    );
    drop(daemon);
    drop(agent);
}

#[test]
fn sd_notify_readiness_and_watchdog() {
    let _serial = serial();
    use std::os::unix::net::UnixDatagram;
    let dir = claude_watch_tests::process::ScratchDir::new("claude-watch-notify");
    let path = dir.path().join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let daemon = Daemon::start_with_env(
        dir,
        "",
        DETECTOR,
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("400000")),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20)
        && !(seen.iter().any(|m| m == "READY=1")
            && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m == "READY=1"), "{seen:?}");
    assert!(
        seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2,
        "watchdog pings every WATCHDOG_USEC/2: {seen:?}"
    );
    daemon.stop();
    let mut stopping = false;
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    while let Ok(n) = socket.recv(&mut buf) {
        stopping |= &buf[..n] == b"STOPPING=1";
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}

#[test]
fn status_without_a_daemon_says_so_in_one_line() {
    let _serial = serial();
    let out = watch::run(&["status", "--socket", "/nonexistent/claude-watch.sock"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no claude-watch daemon answers on /nonexistent/claude-watch.sock"),
        "{err}"
    );
}

#[test]
fn config_check_names_file_line_and_key() {
    let _serial = serial();
    let dir = claude_watch_tests::process::ScratchDir::new("claude-watch-config");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[recovery]\nbackoff_initial = \"10m\"\nbackoff_max = \"5m\"\n",
    )
    .expect("write");
    let out = watch::run(&["config", "check", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:3:15: recovery.backoff_max: must not be shorter than backoff_initial",
            path.display()
        )),
        "{err}"
    );
    std::fs::write(&path, "[detector]\nlatch_min_401s = 4\n").expect("write");
    let out = watch::run(&["config", "check", path.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A daemon given a bad file does not start at all.
    std::fs::write(&path, "[daemon]\nring_mib = 3\n").expect("write");
    let out = watch::run(&["daemon", "--config", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon.ring_mib") && !err.contains("eBPF programs loaded"),
        "{err}"
    );
}

#[test]
fn with_no_configuration_the_daemon_watches_a_running_agent_and_status_shows_it() {
    let _serial = serial();
    // The built-in configuration and the default control socket, as `cargo xtask run` starts it.
    assert!(
        !std::path::Path::new(claude_watch::daemon::DEFAULT_CONFIG_PATH).exists(),
        "this test wants a host without /etc/claude-watch/config.toml"
    );
    let standin = StandIn::start();
    let agent = claude_agent(&standin, "claude-haiku-4-5");
    let mut command = std::process::Command::new(watch::bin());
    command.arg("daemon");
    let mut daemon = claude_watch_tests::process::ChildGuard::spawn(
        "claude-watch daemon (built-in config)",
        &mut command,
    );
    let name = pid_name(&agent);
    let listed = wait_until(WAIT, "`claude-watch status` to show the agent", || {
        let out = watch::run(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success()
            && text.contains(&name)
            && text.contains("healthy")
            && text.contains("config <built-in>"))
        .then_some(text)
    });
    assert!(
        listed.contains("observe"),
        "no systemd here: observe-only, said in status: {listed}"
    );
    assert!(
        daemon
            .stderr_tail()
            .iter()
            .any(|l| l.contains("systemd is not reachable")),
        "said clearly at start"
    );
    let status = daemon.terminate(Duration::from_secs(15));
    assert!(status.success());
}

#[test]
fn a_restarted_daemon_ends_the_episode_of_a_latched_process_that_exited_meanwhile() {
    let _serial = serial();
    let standin = StandIn::start();
    let mut agent = claude_agent(&standin, "claude-haiku-4-5");
    let name = pid_name(&agent);
    let daemon = Daemon::start("", DETECTOR);
    daemon.wait_for(&name, WAIT, "a healthy agent", |i| i.state == "healthy");
    standin.latch_session(agent.session_id());
    daemon.wait_for(&name, WAIT, "the agent latched", |i| i.state == "latched");
    let dir = daemon.stop();
    // The latched process exits while no daemon runs.
    agent.kill();

    let daemon = Daemon::start_in(dir, "", DETECTOR);
    let ended = daemon.wait_closed_episode(Some(&name), EpisodeEnd::ProcessExited, WAIT);
    assert!(ended.ended_ms.is_some(), "{ended:?}");
    // The report covers every process this daemon saw (other tests of this binary run agents
    // at the same time): count only this agent's episodes.
    let report = daemon.episodes_report();
    let ends: Vec<&str> = report["episodes"]
        .as_array()
        .expect("episodes listed")
        .iter()
        .filter(|e| e["instance"] == name.as_str())
        .map(|e| e["end"].as_str().expect("end named"))
        .collect();
    assert_eq!(ends, ["process_exited"], "{report}");
    assert!(
        daemon.instance(&name).is_none(),
        "{name} no longer listed: {:?}",
        daemon.instances()
    );
}

/// The exec filter (issue #32): once discovery has judged a file twice not to be Claude Code,
/// its execs stay in the kernel (counted, never sent); an agent started afterwards, and one that
/// runs that very program as a tool, are still found, and the agent's exit still reaches the
/// daemon.
#[test]
fn execs_of_an_image_judged_not_claude_stay_in_the_kernel_and_agents_are_still_found() {
    let _serial = serial();
    let standin = StandIn::start();
    let daemon = Daemon::start(
        &format!("metrics_listen = \"127.0.0.1:{}\"", watch::free_port()),
        "",
    );
    assert!(
        watch::metric(&daemon.metrics(), "claude_watch_exec_filter_images")
            .is_some_and(|n| n >= 0.0),
        "the filter is on (the kernel has BTF)"
    );
    // A program of its own (a fresh inode), run until the daemon has judged it twice and the
    // kernel keeps its execs.
    let tool = daemon.dir().join("tool");
    std::fs::copy("/bin/true", &tool).unwrap();
    let run_tool = |n: usize| {
        for _ in 0..n {
            assert!(
                std::process::Command::new(&tool)
                    .status()
                    .unwrap()
                    .success()
            );
        }
    };
    let filtered = |d: &Daemon| {
        watch::metric(&d.metrics(), "claude_watch_kernel_execs_filtered_total").unwrap_or_default()
    };
    run_tool(2);
    wait_until(WAIT, "the image to be judged and filtered", || {
        let before = filtered(&daemon);
        run_tool(20);
        // Published with the status, every few seconds.
        std::thread::sleep(Duration::from_secs(3));
        (filtered(&daemon) >= before + 20.0).then_some(())
    });
    let (filtered0, sent0) = {
        let m = daemon.metrics();
        (
            watch::metric(&m, "claude_watch_kernel_execs_filtered_total").unwrap_or_default(),
            watch::metric(&m, "claude_watch_kernel_execs_sent_total").unwrap_or_default(),
        )
    };
    run_tool(200);
    let m = wait_until(WAIT, "the counters to include the 200 execs", || {
        std::thread::sleep(Duration::from_secs(1));
        let m = daemon.metrics();
        (watch::metric(&m, "claude_watch_kernel_execs_filtered_total").unwrap_or_default()
            >= filtered0 + 200.0)
            .then_some(m)
    });
    let sent =
        watch::metric(&m, "claude_watch_kernel_execs_sent_total").unwrap_or_default() - sent0;
    assert!(
        sent < 50.0,
        "the tool's execs were sent: {sent} execs sent during 200 of them"
    );
    assert!(watch::metric(&m, "claude_watch_exec_filter_images").is_some_and(|n| n >= 1.0));

    // An agent started now is found and observed, runs the filtered program as a tool, and
    // its exit reaches the daemon (a `pid:` instance leaves `status` when its process exits).
    let mut agent = claude_agent(&standin, "claude-haiku-4-5");
    let name = pid_name(&agent);
    daemon.wait_instance(&name, WAIT, "the agent healthy", |i| {
        i["state"] == "healthy"
    });
    run_tool(5);
    agent.kill();
    wait_until(WAIT, "the agent's exit to be seen", || {
        let text = daemon.status_text();
        (!text.contains(&name)).then_some(())
    });
}

/// The coverage audit (#35): a process recognised as Claude Code whose API traffic the probes
/// cannot read (HTTP/2 over TLS: the probes on node's OpenSSL see every buffer, none is an
/// HTTP/1.x head) reads `blind` within two audits, with what was seen; a light agent beside it,
/// idle and then busy, stays healthy and is never blind.
#[test]
fn a_claude_process_whose_traffic_the_probes_miss_reads_blind_and_a_seen_one_never_does() {
    let _serial = serial();
    let standin = StandIn::start();
    let daemon = Daemon::start("coverage_audit = \"2s\"", "");
    let dir = daemon.dir().join("h2");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = claude_watch_tests::standin::self_signed_certificate(&dir);
    let h2 = claude_watch_tests::deps::assets_dir().join("agents/h2.mjs");
    let mut serve = std::process::Command::new(claude_watch_tests::deps::node());
    serve.arg(&h2).arg("serve").arg(&cert).arg(&key);
    let server = claude_watch_tests::process::ChildGuard::spawn("h2 server", &mut serve);
    let port = wait_until(WAIT, "the HTTP/2 server's port", || {
        server
            .lines()
            .first()
            .filter(|l| l.parse::<u16>().is_ok())
            .cloned()
    });

    // The light agent, watched and making its requests: healthy.
    let agent = claude_agent(&standin, "claude-haiku-4-5");
    let agent_name = pid_name(&agent);
    daemon.wait_instance(&agent_name, WAIT, "the agent healthy", |i| {
        i["state"] == "healthy"
    });

    // The HTTP/2 client as Claude Code's cli.js.
    let cli = claude_watch_tests::agents::claude_code_package(
        &dir,
        &std::fs::read(&h2).expect("read h2.mjs"),
    );
    let mut client_cmd = std::process::Command::new(claude_watch_tests::deps::node());
    client_cmd.arg(&cli).arg(&port);
    let client = claude_watch_tests::process::ChildGuard::spawn("h2 client", &mut client_cmd);
    let client_name = format!("pid:{}", client.pid());
    let started = Instant::now();
    let blind = daemon.wait_instance(&client_name, WAIT, "the HTTP/2 client blind", |i| {
        i["state"] == "blind"
    });
    let why = blind["blind"].as_str().unwrap_or_default().to_owned();
    assert!(
        why.contains("KiB over") && why.contains("captured no API request"),
        "{blind}"
    );
    eprintln!("blind after {:?}: {why}", started.elapsed());
    assert!(
        daemon.status_text().contains("blind (it moved"),
        "status says why"
    );
    // Journalled, never restarted for it.
    let said = daemon.actions_of(&client_name, claude_watch::journal::ActionKind::Blind);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(daemon.restarts().is_empty());
    // The light agent, busy all along (a request every few seconds), was never blind.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(2));
        let agent_view = daemon
            .status()
            .into_iter()
            .find(|i| i["name"] == agent_name.as_str())
            .expect("the agent listed");
        assert_eq!(agent_view["state"], "healthy", "{agent_view}");
    }
}
