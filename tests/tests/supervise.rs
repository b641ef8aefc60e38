//! Supervisor adapters against real supervisors: systemd (the test bed, over D-Bus), supervisord
//! (the command adapter), a plain respawning parent (the signal adapter). Run as root.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claude_watch::instance::InstanceId;
use claude_watch::instance::proc;
use claude_watch::supervise::command::CommandRestarter;
use claude_watch::supervise::observe::ObserveOnly;
use claude_watch::supervise::signal::SignalRestarter;
use claude_watch::supervise::systemd::{SystemdIo as _, SystemdMode, SystemdRestarter};
use claude_watch::supervise::{Restarter, SuperviseError, Target};
use claude_watch::time::mono_now_ns;
use claude_watch::watch::policy::{Action, Phase, Policy, PolicyConfig, Table};
use claude_watch_tests::process::{ScratchDir, alive};
use claude_watch_tests::supervisord::Supervisord;
use claude_watch_tests::testbed::Testbed;
use claude_watch_tests::wait::wait_until;

const LOOPER: &str = "[Unit]\nDescription=looper\n[Service]\nExecStart=/bin/sh -c 'while :; do sleep 1; done'\nRestart=always\nRestartSec=100ms\n";

/// A child process killed (its whole process group) and reaped on drop.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        Self(
            cmd.stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pgid = i32::try_from(self.0.id()).unwrap();
        // SIGTERM first so a supervisor stops its own programs (supervisord puts them in
        // process groups of their own), then SIGKILL whatever is left of the group.
        // SAFETY: plain syscalls on the process group we created.
        unsafe { libc::kill(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start_looper(tb: &Testbed) -> u32 {
    tb.add_unit("looper.service", LOOPER);
    tb.daemon_reload();
    let out = tb.systemctl(&["start", "looper.service"]);
    assert!(
        out.status.success(),
        "start looper: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(5), "looper main pid", || {
        tb.main_pid("looper.service")
    })
}

#[test]
fn testbed_starts_and_stops_in_seconds_leaving_nothing_behind() {
    let t0 = Instant::now();
    let tb = Testbed::start("lifecycle");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "start took {:?}",
        t0.elapsed()
    );
    let pid1 = tb.pid1();
    let cgroup = tb.cgroup();
    let state = tb.systemctl(&["is-system-running"]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "running");
    let looper = start_looper(&tb);
    assert!(alive(looper));
    let t1 = Instant::now();
    drop(tb);
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t1.elapsed()
    );
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert!(!alive(pid1), "systemd {pid1} left running");
    assert!(!alive(looper), "unit process {looper} left running");
}

#[test]
fn testbed_teardown_falls_back_to_cgroup_kill_when_systemd_hangs() {
    let tb = Testbed::start("hung");
    let pid1 = tb.pid1();
    let cgroup = tb.cgroup();
    let looper = start_looper(&tb);
    // systemd stops answering: `systemctl exit` cannot work.
    // SAFETY: plain syscall on the test bed's PID 1.
    unsafe { libc::kill(i32::try_from(pid1).unwrap(), libc::SIGSTOP) };
    let t0 = Instant::now();
    drop(tb);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert!(!alive(pid1) && !alive(looper), "processes left behind");
}

#[test]
fn systemd_adapter_restarts_the_unit_of_a_host_pid_and_returns_the_new_host_pid() {
    let tb = Testbed::start("restart");
    let old = start_looper(&tb);
    let old_invocation = String::from_utf8_lossy(
        &tb.systemctl(&["show", "-p", "InvocationID", "--value", "looper.service"])
            .stdout,
    )
    .trim()
    .to_owned();
    let restarter = SystemdRestarter::with_address(tb.bus_address());
    let rt = runtime();
    let unit = rt
        .block_on(restarter.unit_of_pid("looper", old))
        .expect("unit of pid");
    assert_eq!(unit, "looper.service");

    let target = claude_watch_tests::target_for_pid("looper", old).unwrap();
    let outcome = rt
        .block_on(restarter.restart(&target))
        .unwrap_or_else(|e| panic!("restart: {e:?}\n{}", tb.log()));
    assert!(outcome.acted);
    assert_eq!(outcome.unit.as_deref(), Some("looper.service"));
    let new = outcome.new_pid.expect("new host pid");
    assert_ne!(new, old);
    assert!(alive(new), "new main pid {new} is alive");
    assert!(!alive(old), "old main pid {old} is gone");
    assert_eq!(
        tb.main_pid("looper.service"),
        Some(new),
        "systemd agrees on the new main pid"
    );
    let invocation = outcome.invocation_id.expect("invocation id");
    assert_eq!(invocation.len(), 32);
    assert_ne!(invocation, old_invocation);

    // Kill mode: the unit's own Restart=always brings the new process.
    let target = claude_watch_tests::target_for_pid("looper", new)
        .unwrap()
        .with_unit("looper.service");
    let killer = SystemdRestarter {
        mode: SystemdMode::Kill,
        timeout: Duration::from_secs(10),
        ..SystemdRestarter::with_address(tb.bus_address())
    };
    let outcome = rt.block_on(killer.restart(&target)).unwrap();
    let newer = outcome.new_pid.expect("new host pid after kill");
    assert!(newer != new && alive(newer));
    assert_eq!(tb.main_pid("looper.service"), Some(newer));
}

#[test]
fn systemd_adapter_reports_unit_not_found_and_bus_unavailable() {
    let tb = Testbed::start("errors");
    let looper = start_looper(&tb);
    let restarter = SystemdRestarter::with_address(tb.bus_address());
    let rt = runtime();

    let named = claude_watch_tests::target_for_pid("ghost", looper)
        .unwrap()
        .with_unit("ghost.service");
    // The manager says the pid is looper.service's: refused before anything is done.
    match rt.block_on(restarter.restart(&named)) {
        Err(SuperviseError::NotOwner {
            instance,
            expected,
            found,
            ..
        }) => {
            assert_eq!(instance, "ghost");
            assert_eq!(
                (expected.as_str(), found.as_str()),
                ("ghost.service", "looper.service")
            );
        }
        other => panic!("expected NotOwner, got {other:?}"),
    }
    // A host process that is not in the test bed's namespace has no unit there.
    let me = claude_watch_tests::target_for_pid("outsider", std::process::id()).unwrap();
    assert!(matches!(
        rt.block_on(restarter.restart(&me)),
        Err(SuperviseError::UnitNotFound { .. })
    ));
    assert_eq!(
        tb.main_pid("looper.service"),
        Some(looper),
        "nothing was restarted"
    );

    let nowhere = SystemdRestarter::with_address("unix:path=/nonexistent/claude-watch/bus");
    let target = claude_watch_tests::target_for_pid("looper", looper).unwrap();
    let err = rt.block_on(nowhere.restart(&target)).unwrap_err();
    assert!(
        matches!(err, SuperviseError::BusUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/claude-watch/bus"));
}

#[test]
fn policy_drives_the_systemd_adapter_one_at_a_time_and_backs_off_a_failing_supervisor() {
    let tb = Testbed::start("policy");
    let looper = start_looper(&tb);
    let restarter = SystemdRestarter::with_address(tb.bus_address());
    let rt = runtime();
    let targets = [
        claude_watch_tests::target_for_pid("ghost", looper)
            .unwrap()
            .with_unit("ghost.service"),
        claude_watch_tests::target_for_pid("looper", looper).unwrap(),
    ];
    let (ghost, looper_id) = (
        InstanceId::unit("ghost.service"),
        InstanceId::rule("looper"),
    );
    let id_of = |name: &str| {
        if name == "ghost" {
            ghost.clone()
        } else {
            looper_id.clone()
        }
    };
    // The policy alone, with its table of the instances' recovery states.
    let mut policy = Policy::new(PolicyConfig::default());
    let mut table: Table = Table::new();
    let t0 = mono_now_ns();
    policy.latched(&mut table, &ghost, t0);
    policy.latched(&mut table, &looper_id, t0 + 1_000_000);

    let mut new_pid = None;
    for _ in 0..2 {
        let now = mono_now_ns();
        let restarts: Vec<InstanceId> = policy
            .poll(&mut table, now)
            .into_iter()
            .filter_map(|a| match a {
                Action::Restart(i) => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(restarts.len(), 1, "one restart at a time: {restarts:?}");
        let name = if restarts[0] == ghost {
            "ghost"
        } else {
            "looper"
        };
        let target = targets.iter().find(|t| t.instance == name).unwrap();
        let result = rt.block_on(restarter.restart(target));
        if target.instance == "ghost" {
            assert!(
                matches!(result, Err(SuperviseError::NotOwner { .. })),
                "{result:?}"
            );
        } else {
            new_pid = result.as_ref().ok().and_then(|o| o.new_pid);
        }
        let id = id_of(&target.instance);
        policy.restart_finished(&mut table, &id, mono_now_ns(), &result);
    }
    // The failing supervisor is retried only after its quiet window; the other one restarted.
    let ghost_next = table[&ghost].not_before().expect("ghost backs off");
    assert!(ghost_next >= t0 + 60_000_000_000);
    assert_eq!(table[&ghost].phase(), Some(Phase::Latched));
    assert!(matches!(
        table[&looper_id].phase(),
        Some(Phase::Recovering { .. })
    ));
    let new_pid = new_pid.expect("looper restarted");
    assert_ne!(new_pid, looper);
    assert_eq!(tb.main_pid("looper.service"), Some(new_pid));
    // The new process answers (non-401): recovered; nothing else is due before ghost's window.
    let now = mono_now_ns();
    assert!(policy.recovered(&mut table, &looper_id, now).is_some());
    assert!(
        !policy
            .poll(&mut table, now)
            .iter()
            .any(|a| matches!(a, Action::Restart(_))),
        "no restart before ghost's window"
    );
    assert_eq!(policy.next_deadline(&table), Some(ghost_next));
}

#[test]
fn command_adapter_restarts_a_program_under_a_real_supervisord() {
    let dir = ScratchDir::new("cw-supervise-supervisord");
    let supervisord = Supervisord::start(
        dir.path(),
        "[program:agent]\ncommand=/bin/sleep 1000\nautorestart=true\nstartsecs=0\n",
    );
    let pid_of_agent = || supervisord.pid("agent");
    let old = wait_until(Duration::from_secs(10), "supervisord's agent", pid_of_agent);

    let restarter = CommandRestarter::new(
        vec![
            "supervisorctl".into(),
            "-c".into(),
            supervisord.conf().display().to_string(),
            "restart".into(),
            "{instance}".into(),
        ],
        Duration::from_secs(20),
    );
    let target = claude_watch_tests::target_for_pid("agent", old).unwrap();
    let outcome = runtime()
        .block_on(restarter.restart(&target))
        .expect("supervisorctl restart");
    assert!(outcome.acted);
    let new = wait_until(Duration::from_secs(10), "the restarted agent", || {
        pid_of_agent().filter(|p| *p != old)
    });
    assert!(alive(new));
    assert!(!alive(old), "old agent {old} is gone");

    // An unknown program makes supervisorctl fail: reported, not hidden.
    let target = Target {
        instance: "nosuchprogram".into(),
        ..target
    };
    let err = runtime().block_on(restarter.restart(&target)).unwrap_err();
    assert!(
        matches!(err, SuperviseError::CommandFailed { .. }),
        "{err:?}"
    );
}

#[test]
fn command_adapter_kills_a_hanging_command_on_timeout() {
    let dir = ScratchDir::new("cw-supervise-hang");
    let pids = dir.path().join("pids");
    let script = format!(
        "echo $$ > {p}; sleep 30 & echo $! >> {p}; wait",
        p = pids.display()
    );
    let restarter = CommandRestarter::new(
        vec!["sh".into(), "-c".into(), script],
        Duration::from_millis(500),
    );
    let target = Target {
        instance: "hang".into(),
        unit: None,
        pid: 1,
        start_time: None,
        uid: None,
        placement: claude_watch::instance::Placement::Unsupervised,
    };
    let t0 = Instant::now();
    let err = runtime().block_on(restarter.restart(&target)).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    match err {
        SuperviseError::Timeout { timeout, .. } => {
            assert_eq!(timeout, Duration::from_millis(500));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let started: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(started.len(), 2, "the shell and its background child ran");
    for pid in started {
        wait_until(
            Duration::from_secs(5),
            "the hung command's processes to die",
            || (!alive(pid)).then_some(()),
        );
    }
}

fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .ok()?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p| alive(*p))
}

#[test]
fn signal_adapter_restarts_the_child_of_a_respawning_parent() {
    let parent = ChildGuard::spawn(Command::new("sh").args(["-c", "while :; do sleep 1000; done"]));
    let old = wait_until(Duration::from_secs(5), "first child", || {
        child_of(parent.pid())
    });
    let restarter = SignalRestarter {
        grace: Duration::from_secs(2),
        respawn_wait: Duration::from_secs(5),
    };
    let target = claude_watch_tests::target_for_pid("looper", old).unwrap();
    let outcome = runtime()
        .block_on(restarter.restart(&target))
        .expect("signal restart");
    let new = outcome.new_pid.expect("respawned child found");
    assert_ne!(new, old);
    assert!(alive(new) && !alive(old));
    assert_eq!(proc::parent_pid(new).unwrap(), parent.pid());
    assert!(outcome.summary.contains("SIGTERM"), "{}", outcome.summary);
}

/// Whether a `/proc/<pid>/status` says SIGTERM is ignored (bit 15 of `SigIgn`).
fn sigign_has_term(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
}

#[test]
fn signal_adapter_escalates_to_sigkill_when_sigterm_is_ignored() {
    let parent = ChildGuard::spawn(Command::new("sh").args([
        "-c",
        "while :; do sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'; done",
    ]));
    // Wait until the trap is in place.
    let old = wait_until(Duration::from_secs(5), "first child", || {
        child_of(parent.pid()).filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/status")).is_ok_and(|s| sigign_has_term(&s))
        })
    });
    let restarter = SignalRestarter {
        grace: Duration::from_millis(300),
        respawn_wait: Duration::from_secs(5),
    };
    let target = claude_watch_tests::target_for_pid("stubborn", old).unwrap();
    let outcome = runtime()
        .block_on(restarter.restart(&target))
        .expect("signal restart");
    assert!(outcome.summary.contains("SIGKILL"), "{}", outcome.summary);
    assert!(!alive(old));
    assert!(outcome.new_pid.is_some_and(|p| p != old && alive(p)));
}

#[test]
fn signal_adapter_refuses_a_reused_pid() {
    let parent = ChildGuard::spawn(Command::new("sh").args(["-c", "while :; do sleep 1000; done"]));
    let pid = wait_until(Duration::from_secs(5), "child", || child_of(parent.pid()));
    // The PID now belongs to a process that started at another time than the instance did.
    let mut target = claude_watch_tests::target_for_pid("looper", pid).unwrap();
    let real = target.start_time.unwrap();
    target.start_time = Some(real - 1);
    let err = runtime()
        .block_on(SignalRestarter::default().restart(&target))
        .unwrap_err();
    match err {
        SuperviseError::PidReused {
            pid: p,
            expected,
            found,
        } => assert_eq!((p, expected, found), (pid, real - 1, real)),
        other => panic!("expected PidReused, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "the process was not signalled");
    assert_eq!(child_of(parent.pid()), Some(pid));
}

#[test]
fn observe_only_never_acts() {
    let parent = ChildGuard::spawn(Command::new("sh").args(["-c", "while :; do sleep 1000; done"]));
    let pid = wait_until(Duration::from_secs(5), "child", || child_of(parent.pid()));
    let target = claude_watch_tests::target_for_pid("looper", pid).unwrap();
    let outcome = runtime().block_on(ObserveOnly.restart(&target)).unwrap();
    assert!(!outcome.acted);
    assert!(outcome.summary.contains("would restart"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(pid));
}
