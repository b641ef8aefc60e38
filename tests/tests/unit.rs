//! The packaged systemd unit (`packaging/claude-watch.service`) and its sandboxing.
//!
//! - Under a real systemd 252 (the test bed), the unit file as shipped (only `ExecStart` points
//!   at the built binary and a configuration) starts the daemon: it gets its capabilities
//!   bounded to exactly the unit's `CapabilityBoundingSet`, no new privileges and a seccomp
//!   filter, loads its eBPF programs, reports READY, finds a claude process and attaches probes
//!   to it, answers `status`, and stops cleanly.
//! - The test bed's systemd runs its units in a PID namespace of its own, where the daemon
//!   cannot map the kernel's PIDs (it must run in the host's). So the recovery path is proved on
//!   the host with the same capability bounding set (`setpriv`, which is what
//!   `CapabilityBoundingSet` sets): probes, a latch detected, the agent's unit restarted through
//!   D-Bus and the recovery confirmed.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::{ActionKind, Record};
use claude_watch::watch::status::InstanceView;
use claude_watch_tests::agents::{AgentConfig, Runtime, agent_unit};
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::testbed::Testbed;
use claude_watch_tests::wait::{one_at_a_time as serial, wait_until};
use claude_watch_tests::watch::{Daemon, bin, run};

const AGENT: &str = "agent.service";
const UNIT: &str = "claude-watch.service";
const WAIT: Duration = Duration::from_secs(45);

fn packaged_unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/claude-watch.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The capability names of the unit's `CapabilityBoundingSet=`.
fn bounding_set(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet");
    line.split_whitespace().map(str::to_owned).collect()
}

/// The bit of a capability (only those the unit may name).
fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_KILL" => 5,
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to cap_bit"),
    }
}

fn mask(caps: &[String]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1_u64 << cap_bit(c)))
}

/// A field of `/proc/<pid>/status`.
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// A test bed running one light agent (taken for Claude Code) in `agent.service`.
fn bed_with_agent(name: &str, standin: &StandIn, dir: &Path) -> Testbed {
    let bed = Testbed::start(name);
    let config = AgentConfig::haiku_as_claude();
    bed.add_unit(AGENT, &agent_unit(standin, Runtime::Node, &config, dir));
    bed.daemon_reload();
    let out = bed.systemctl(&["start", AGENT]);
    assert!(
        out.status.success(),
        "start {AGENT}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed
}

#[test]
fn the_packaged_unit_runs_the_daemon_sandboxed_under_a_real_systemd() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-unit");
    let bed = bed_with_agent("unit", &standin, dir.path());
    // The configuration lives in the bed's own /run (the unit's /tmp is private).
    let run_dir = PathBuf::from(format!("/proc/{}/root/run/cw-unit", bed.pid1()));
    std::fs::create_dir_all(&run_dir).expect("config dir in the bed");
    std::fs::write(
        run_dir.join("config.toml"),
        "[daemon]\njournal = \"/run/claude-watch/journal.jsonl\"\nstate_dir = \"/run/claude-watch/state\"\n",
    )
    .expect("write config");
    // So is the binary: a checkout under /tmp is hidden from the unit by its PrivateTmp.
    std::fs::copy(bin(), run_dir.join("claude-watch")).expect("binary in the bed");
    let packaged = packaged_unit();
    let unit: String = packaged
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                "ExecStart=/run/cw-unit/claude-watch daemon --config /run/cw-unit/config.toml\nEnvironment=RUST_LOG=info".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    bed.add_unit(UNIT, &unit);
    bed.daemon_reload();
    let out = bed.systemctl(&["start", "--no-block", UNIT]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `systemctl show -p A,B` prints in its own order: ask for one property at a time.
    let state = |bed: &Testbed| {
        ["ActiveState", "SubState", "Result"]
            .iter()
            .map(|p| {
                let out = bed.systemctl(&["show", "-p", p, "--value", UNIT]);
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Type=notify: active only once the daemon said READY=1 (programs loaded, first scan done).
    wait_until(WAIT, "the packaged unit active (READY=1)", || {
        let s = state(&bed);
        assert!(
            !s.starts_with("failed") && !s.contains("exit-code"),
            "the unit failed: {s}\n{}",
            bed.log()
        );
        s.starts_with("active running").then_some(())
    });
    let pid = bed.main_pid(UNIT).expect("the daemon's pid");

    // The sandbox is in force on the running daemon.
    let caps = bounding_set(&packaged);
    let expected = mask(&caps);
    let bounded = u64::from_str_radix(&proc_status(pid, "CapBnd"), 16).expect("hex");
    assert_eq!(
        bounded, expected,
        "bounding set {bounded:#x}, the unit names {caps:?} ({expected:#x})"
    );
    let effective = u64::from_str_radix(&proc_status(pid, "CapEff"), 16).expect("hex");
    assert_eq!(effective & !expected, 0, "no capability beyond the set");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Seccomp"), "2", "a seccomp filter");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit");
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/usr") && l.contains(" ro,")),
        "ProtectSystem: /usr read-only for the daemon"
    );

    // It found the bed's agent and attached probes to it, and answers status.
    let socket = format!("/proc/{}/root/run/claude-watch/control.sock", bed.pid1());
    let agent = wait_until(WAIT, "the bed's agent listed, probes attached", || {
        let out = run(&["status", "--json", "--socket", &socket]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<InstanceView>(l).ok())
            .find(|i| i.name == AGENT && !i.pids.is_empty() && i.unobserved.is_none())
    });
    assert_eq!(agent.unit.as_deref(), Some(AGENT));
    let out = run(&["status", "--socket", &socket]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let attached: u32 = text
        .split("probes: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("probes line in {text}"));
    assert!(attached >= 1, "{text}");

    // It stops cleanly (SIGTERM: STOPPING=1, state saved, probes detached).
    let out = bed.systemctl(&["stop", UNIT]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = state(&bed);
    assert!(s.starts_with("inactive dead success"), "{s}");
}

#[test]
fn with_the_unit_s_capabilities_only_a_latch_is_detected_and_the_unit_restarted() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-unit-caps");
    let bed = bed_with_agent("unitcaps", &standin, dir.path());
    let caps = bounding_set(&packaged_unit());
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| {
            format!(
                "+{}",
                c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase()
            )
        }))
        .collect::<Vec<_>>()
        .join(",");
    let config = format!(
        "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nsystemd_bus = \"{}\"\nrestart_timeout = \"20s\"\nbackoff_initial = \"3s\"\n",
        bed.bus_address()
    );
    let daemon = Daemon::start_under(
        &["setpriv", "--bounding-set", &set, "--no-new-privs", "--"],
        ScratchDir::new("claude-watch-daemon"),
        "",
        &config,
        &[],
    );
    let bounded = u64::from_str_radix(&proc_status(daemon.pid(), "CapBnd"), 16).expect("hex");
    assert_eq!(
        bounded,
        mask(&caps),
        "the daemon runs with the unit's set only"
    );

    let healthy = daemon.wait_for(AGENT, WAIT, "the unit's agent healthy", |i| {
        i.last_status == Some(200)
    });
    assert_eq!(healthy.supervisor, "systemd");
    let old_session = healthy.session_id.clone().expect("session");
    let old_pid = bed.main_pid(AGENT).expect("main pid");
    standin.latch_session(&old_session);

    let episode = wait_until(WAIT, "the episode recovered after a restart", || {
        daemon.records().into_iter().find_map(|r| match r {
            Record::Episode { episode, .. }
                if episode.instance == AGENT
                    && episode.end == EpisodeEnd::RecoveredAfterRestart =>
            {
                Some(episode)
            }
            _ => None,
        })
    });
    assert_eq!(episode.restarts, 1);
    let new_pid = bed.main_pid(AGENT).expect("a new main pid");
    assert_ne!(new_pid, old_pid, "systemd restarted the unit");
    let restarts: Vec<_> = daemon
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Action(a) if a.kind == ActionKind::Restart && a.instance == AGENT => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok, "{restarts:?}");
}
