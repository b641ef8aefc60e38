//! A fleet, not a host: five daemons stand for five hosts (each scoped to its own systemd test
//! bed with two agents), a real Prometheus scrapes them and evaluates the shipped rules, a
//! real Alertmanager holds the incident alert, and every daemon asks it before restarting.
//!
//! Needs root and Debian's `prometheus` and `prometheus-alertmanager` (`cargo xtask setup
//! --tests`).

use std::collections::BTreeMap;
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::{ActionKind, ActionRecord};
use claude_watch_tests::agents::{AgentConfig, Runtime, agent_unit};
use claude_watch_tests::fleet::{Alertmanager, Prometheus, rules_with_horizon};
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::testbed::Testbed;
use claude_watch_tests::wait::{now_ms, one_at_a_time as serial, wait_until};
use claude_watch_tests::watch::{Daemon, free_port};

const UNITS: [&str; 2] = ["agent-a.service", "agent-b.service"];
const ALERT: &str = "ClaudeFleetUpstreamIncident";

/// One host: a test bed with two agents, and a daemon scoped to it.
struct Host {
    name: String,
    daemon: Daemon,
    metrics: u16,
    _bed: Testbed,
}

impl Host {
    /// Host `i` with two agents; its daemon asks `alertmanager` when given (`[fleet]`).
    fn start(i: usize, standin: &StandIn, alertmanager: &str, dir: &std::path::Path) -> Self {
        Self::start_with(i, standin, Some(alertmanager), dir)
    }

    fn start_with(
        i: usize,
        standin: &StandIn,
        alertmanager: Option<&str>,
        dir: &std::path::Path,
    ) -> Self {
        let bed = Testbed::start(&format!("fleet{i}"));
        for unit in UNITS {
            let home = dir.join(format!("host-{i}-{unit}"));
            std::fs::create_dir_all(&home).expect("agent dir");
            bed.add_unit(
                unit,
                &agent_unit(
                    standin,
                    Runtime::Node,
                    &AgentConfig::haiku_as_claude(),
                    &home,
                ),
            );
        }
        bed.daemon_reload();
        for unit in UNITS {
            assert!(
                bed.systemctl(&["start", unit]).status.success(),
                "start {unit}"
            );
        }
        let metrics = free_port();
        let name = format!("host-{i}");
        let daemon = Daemon::start(
            &format!(
                "metrics_listen = \"127.0.0.1:{metrics}\"\nscope = \"/{}\"",
                bed.name()
            ),
            &format!(
                "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nsystemd_bus = \"{}\"\nrestart_timeout = \"20s\"\nbackoff_initial = \"3s\"\nbackoff_max = \"12s\"\n[fleet]\nalertmanager = [{}]\npoll_every = \"1s\"\nstale_after = \"5s\"\nstagger = \"10s\"\nhost = \"{name}\"\n",
                bed.bus_address(),
                alertmanager.map(|a| format!("\"{a}\"")).unwrap_or_default()
            ),
        );
        Self {
            name,
            daemon,
            metrics,
            _bed: bed,
        }
    }

    /// The fleet's line of its status.
    fn fleet_line(&self) -> String {
        self.daemon
            .status_text()
            .lines()
            .find(|l| l.starts_with("fleet ("))
            .unwrap_or_default()
            .to_owned()
    }

    /// Its hold intervals from its journal: from a "held by the fleet" record to the next
    /// "resolved" one (open at the end: `u64::MAX`).
    fn holds(&self) -> Vec<(u64, u64)> {
        let mut held: Vec<&ActionRecord> = Vec::new();
        let records = self.daemon.actions(ActionKind::Held);
        held.extend(records.iter().filter(|a| {
            a.detail.as_deref().is_some_and(|d| {
                d.starts_with("held by the fleet")
                    || d.starts_with("the fleet's incident alert resolved")
            })
        }));
        held.sort_by_key(|a| a.at_ms);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for a in held {
            let start = a.detail.as_deref().is_some_and(|d| d.starts_with("held"));
            match (start, out.last_mut()) {
                (true, Some((_, end))) if *end == u64::MAX => {}
                (true, _) => out.push((a.at_ms, u64::MAX)),
                (false, Some((_, end))) if *end == u64::MAX => *end = a.at_ms,
                (false, _) => {}
            }
        }
        out
    }

    fn restarts(&self) -> Vec<ActionRecord> {
        self.daemon
            .actions(ActionKind::Restart)
            .into_iter()
            .filter(|r| r.ok)
            .collect()
    }
}

#[test]
fn a_fleet_holds_restarts_in_an_upstream_incident_and_resumes_in_turn() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-fleet");
    let mut alertmanager = Alertmanager::start();
    let hosts: Vec<Host> = (1..=5)
        .map(|i| Host::start(i, &standin, &alertmanager.url(), dir.path()))
        .collect();
    let ports: Vec<u16> = hosts.iter().map(|h| h.metrics).collect();
    // The shipped rules, with the fleet's 10-minute rejection horizon cut to 15 s.
    let prometheus = Prometheus::start(&ports, &rules_with_horizon(15), alertmanager.port);
    for h in &hosts {
        for unit in UNITS {
            h.daemon
                .wait_for(unit, Duration::from_secs(60), "healthy", |i| {
                    i.last_status == Some(200)
                });
        }
        assert!(
            h.fleet_line().contains("clear"),
            "{}: {}",
            h.name,
            h.fleet_line()
        );
        // Each daemon sees its own two agents only.
        assert_eq!(h.daemon.instances().len(), 2, "{}", h.name);
    }

    // 1. The upstream rejects every session: the alert fires, every host holds.
    let window = Duration::from_secs(60);
    let opened = now_ms();
    standin.open_window_for_all(window);
    let closes = opened + u64::try_from(window.as_millis()).expect("fits");
    wait_until(
        Duration::from_secs(60),
        "every host held by the fleet's alert",
        || {
            hosts
                .iter()
                .all(|h| h.fleet_line().contains("HELD"))
                .then_some(())
        },
    );
    let held_at = now_ms();
    assert_eq!(
        alertmanager.alerts(ALERT).len(),
        1,
        "one alert for the fleet, not one per instance or host"
    );
    for h in &hosts {
        let held = h
            .daemon
            .instances()
            .into_iter()
            .filter(|i| i.fleet_hold)
            .count();
        assert!(held >= 1, "{}: its latched instances show the hold", h.name);
    }
    eprintln!(
        "fleet: every host held {} ms after the window opened",
        held_at - opened
    );

    // 2. The window closes; the alert resolves; every instance comes back, confirmed by its
    // own new session, the hosts resuming in turn.
    for h in &hosts {
        for unit in UNITS {
            let episode = h.daemon.wait_closed_episode(
                Some(unit),
                EpisodeEnd::RecoveredAfterRestart,
                Duration::from_secs(180),
            );
            assert!(
                episode.ended_ms.expect("ended") >= closes,
                "{} {unit} recovered before the window closed",
                h.name
            );
        }
    }
    let mut into_window = 0;
    let mut first_after_close = BTreeMap::new();
    for h in &hosts {
        let holds = h.holds();
        assert!(!holds.is_empty(), "{}: the hold is journalled", h.name);
        let restarts = h.restarts();
        // No restart handed out while the alert held the host (a restart finishing within 3 s
        // of the hold's start was handed out before it).
        for r in &restarts {
            assert!(
                !holds
                    .iter()
                    .any(|(start, end)| r.at_ms > start + 3_000 && r.at_ms < *end),
                "{}: a restart at {} while held {holds:?}",
                h.name,
                r.at_ms
            );
        }
        into_window += restarts.iter().filter(|r| r.at_ms < closes).count();
        if let Some(first) = restarts
            .iter()
            .map(|r| r.at_ms)
            .filter(|t| *t >= closes)
            .min()
        {
            first_after_close.insert(h.name.clone(), first);
        }
    }
    let firsts: Vec<u64> = first_after_close.values().copied().collect();
    let spread = firsts.iter().max().unwrap_or(&0) - firsts.iter().min().unwrap_or(&0);
    eprintln!(
        "fleet: {into_window} restarts into the 60 s window across 5 hosts (10 agents); the hosts' first restarts after it spread over {spread} ms: {first_after_close:?}"
    );
    assert_eq!(firsts.len(), 5, "every host restarted after the close");
    assert!(
        spread >= 1_000,
        "the hosts resumed in turn, not in the same second"
    );
    wait_until(Duration::from_secs(30), "the alert resolved", || {
        alertmanager.alerts(ALERT).is_empty().then_some(())
    });

    // 3. No incident: one instance latched alone on one host is restarted at once.
    let h = &hosts[0];
    // The host's last restart after the window may still be under way (hosts resume in turn,
    // each host's instances one at a time): the instance is taken once its new process has
    // answered, so that the session latched is the one it uses.
    let lone = h.daemon.wait_for(
        UNITS[0],
        Duration::from_secs(60),
        "the lone instance healthy after the window",
        |i| i.state == "healthy" && i.session_id.is_some(),
    );
    let session = lone.session_id.clone().expect("a session");
    let latched_at = now_ms();
    standin.latch_session(&session);
    let episode = wait_until(Duration::from_secs(60), "the lone latch recovered", || {
        h.daemon
            .episodes_of(UNITS[0])
            .into_iter()
            .find(|e| e.first_401_ms >= latched_at && e.end == EpisodeEnd::RecoveredAfterRestart)
    });
    let restart = h
        .restarts()
        .into_iter()
        .filter(|r| r.at_ms >= latched_at)
        .map(|r| r.at_ms)
        .min()
        .expect("restarted");
    let detected = episode.first_401_ms;
    eprintln!(
        "fleet: a lone latch was restarted {} ms after its first 401",
        restart.saturating_sub(detected)
    );
    assert!(
        restart.saturating_sub(detected) < 10_000,
        "restarted as quickly as without a fleet"
    );
    assert!(alertmanager.alerts(ALERT).is_empty(), "no fleet incident");

    // 4. Alertmanager goes away during an incident: past stale_after every host recovers on
    // its own and says so.
    standin.open_window_for_all(Duration::from_secs(120));
    wait_until(Duration::from_secs(60), "held again", || {
        hosts
            .iter()
            .all(|h| h.fleet_line().contains("HELD"))
            .then_some(())
    });
    alertmanager.stop();
    let stopped = now_ms();
    wait_until(
        Duration::from_secs(30),
        "every host recovering locally",
        || {
            hosts
                .iter()
                .all(|h| h.fleet_line().contains("recovering locally"))
                .then_some(())
        },
    );
    let after = now_ms() - stopped;
    eprintln!(
        "fleet: every host fell back to local recovery {after} ms after Alertmanager stopped"
    );
    assert!(after < 15_000, "within stale_after (5 s) and a poll");
    for h in &hosts {
        let metrics = h.daemon.metrics();
        assert!(
            metrics.contains("claude_watch_fleet_reachable 0"),
            "{}: the metric says so",
            h.name
        );
    }
    // Local recovery restarts again (one canary per host and quiet window).
    let before: usize = hosts.iter().map(|h| h.restarts().len()).sum();
    wait_until(Duration::from_secs(60), "a local restart", || {
        (hosts.iter().map(|h| h.restarts().len()).sum::<usize>() > before).then_some(())
    });
    let _ = prometheus.query("claude_watch:hosts_latched:count");
}

#[test]
fn a_second_daemon_over_the_same_processes_is_refused_and_disjoint_scopes_are_not() {
    let _serial = serial();
    let first = Daemon::start("scope = \"/cw-guard-a\"", "");
    // A daemon over processes inside the first one's scope: refused at once, saying why.
    let dir = ScratchDir::new("cw-guard");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nscope = \"/cw-guard-a/inner\"\njournal = \"{d}/j.jsonl\"\nstate_dir = \"{d}\"\ncontrol_socket = \"{d}/c.sock\"\n",
            d = dir.path().display()
        ),
    )
    .expect("config");
    let mut refused = claude_watch_tests::process::ChildGuard::spawn(
        "second daemon",
        std::process::Command::new(claude_watch_tests::watch::bin())
            .args(["daemon", "--config"])
            .arg(&config),
    );
    wait_until(Duration::from_secs(10), "the second daemon refused", || {
        refused.has_exited().then_some(())
    });
    // Its reason is on stderr (read by another thread: the exit may be seen before the line).
    wait_until(Duration::from_secs(10), "the refusal's reason", || {
        refused
            .stderr_tail()
            .iter()
            .any(|l| {
                l.contains("another claude-watch daemon already watches /cw-guard-a on this host")
            })
            .then_some(())
    });
    // A disjoint scope is a daemon of its own.
    let second = Daemon::start("scope = \"/cw-guard-b\"", "");
    drop((first, second));
}

/// The daemon's CPU time so far (user + system), ms.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: plain sysconf query.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    ticks * 1000 / hz.max(1)
}

/// One 60 s window over five hosts, with or without `[fleet]`: how long until every host
/// held, the restarts into the window, the daemons' CPU, and how long until every agent was
/// back.
fn window_over_five_hosts(with_fleet: bool) -> serde_json::Value {
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-fleet-figures");
    let alertmanager = Alertmanager::start();
    let url = alertmanager.url();
    let hosts: Vec<Host> = (1..=5)
        .map(|i| Host::start_with(i, &standin, with_fleet.then_some(url.as_str()), dir.path()))
        .collect();
    let ports: Vec<u16> = hosts.iter().map(|h| h.metrics).collect();
    let _prometheus = Prometheus::start(&ports, &rules_with_horizon(15), alertmanager.port);
    for h in &hosts {
        for unit in UNITS {
            h.daemon
                .wait_for(unit, Duration::from_secs(60), "healthy", |i| {
                    i.last_status == Some(200)
                });
        }
    }
    let cpu0: Vec<u64> = hosts.iter().map(|h| cpu_ms(h.daemon.pid())).collect();
    let window = Duration::from_secs(60);
    let opened = now_ms();
    standin.open_window_for_all(window);
    let closes = opened + u64::try_from(window.as_millis()).expect("fits");
    let held_after_ms = with_fleet.then(|| {
        wait_until(Duration::from_secs(60), "every host held", || {
            hosts
                .iter()
                .all(|h| h.fleet_line().contains("HELD"))
                .then_some(())
        });
        now_ms() - opened
    });
    for h in &hosts {
        for unit in UNITS {
            wait_until(
                Duration::from_secs(240),
                "recovered after the window",
                || {
                    h.daemon.episodes_of(unit).into_iter().find(|e| {
                        e.end == EpisodeEnd::RecoveredAfterRestart
                            && e.ended_ms.is_some_and(|t| t >= closes)
                    })
                },
            );
        }
    }
    let back_after_close_ms = now_ms() - closes;
    let cpu: Vec<u64> = hosts
        .iter()
        .zip(&cpu0)
        .map(|(h, c)| cpu_ms(h.daemon.pid()) - c)
        .collect();
    let restarts: Vec<ActionRecord> = hosts.iter().flat_map(Host::restarts).collect();
    let into = restarts.iter().filter(|r| r.at_ms < closes).count();
    serde_json::json!({
        "fleet": with_fleet,
        "held_after_ms": held_after_ms,
        "restarts_into_window": into,
        "restarts": restarts.len(),
        "back_after_close_ms": back_after_close_ms,
        "scenario_ms": now_ms() - opened,
        "daemon_cpu_ms": cpu,
    })
}

/// Figures for the bench (part 11): the same window over five hosts with `[fleet]` and
/// without, written as JSON to `$CLAUDE_WATCH_FLEET_FIGURES`.
#[test]
#[ignore = "run by `cargo xtask bench` (part 11)"]
fn fleet_figures() {
    let _serial = serial();
    let out = std::env::var_os("CLAUDE_WATCH_FLEET_FIGURES")
        .expect("CLAUDE_WATCH_FLEET_FIGURES names the file to write");
    let with = window_over_five_hosts(true);
    let without = window_over_five_hosts(false);
    let figures = serde_json::json!({ "with": with, "without": without });
    eprintln!("fleet figures: {figures}");
    std::fs::write(out, figures.to_string()).expect("write the figures");
}
