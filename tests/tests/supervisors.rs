//! Recovery through the supervisor that really owns the latched process, checked right before
//! acting: systemd user units through their user's own manager (a real `user@<uid>.service`
//! with its own D-Bus inside the test bed), and the refusal when the manager asked does not own
//! the process.
//!
//! Needs root (`cargo xtask setup --tests`: systemd, dbus-user-session).

use claude_watch_tests::wait::now_ms;
use claude_watch_tests::wait::one_at_a_time as serial;
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::instance::{Manager, Placement, SystemdUnit};
use claude_watch::journal::ActionKind;
use claude_watch::supervise::systemd::SystemdRestarter;
use claude_watch::supervise::{Restarter as _, SuperviseError, Target};
use claude_watch_tests::agents::start_user_agent;
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::testbed::Testbed;
use claude_watch_tests::users::TestUser;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::Daemon;

/// The unprivileged user whose manager runs the agents.
const USER: &str = "cwtest-unit";
const WAIT: Duration = Duration::from_secs(45);

/// Fast detection, short quiet windows, the test bed's system bus.
fn config(bed: &Testbed) -> String {
    format!(
        "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nsystemd_bus = \"{}\"\nrestart_timeout = \"20s\"\nbackoff_initial = \"3s\"\n",
        bed.bus_address()
    )
}

/// Latches the user's agent `unit` and checks it is restarted through the user's manager and
/// recovers by its own new session's 200; returns the daemon for further checks.
fn latch_and_recover(bed: &Testbed, user: &TestUser, unit: &str, standin: &StandIn) -> Daemon {
    let name = format!("user:{}:{unit}", user.uid);
    let daemon = Daemon::start("", &config(bed));
    let healthy = daemon.wait_for(&name, WAIT, "the user's agent healthy", |i| {
        i.last_status == Some(200)
    });
    assert_eq!(healthy.supervisor, "systemd-user", "{healthy:?}");
    assert_eq!(
        healthy.supervisor_reason,
        format!(
            "auto → systemd-user (unit {unit} in user@{}'s manager)",
            user.uid
        )
    );
    let old_session = healthy.session_id.clone().expect("session");
    let old_pid = bed
        .user_main_pid(user, unit)
        .expect("the user unit's main pid");
    let latched_at = now_ms();
    standin.latch_session(&old_session);

    let episode = daemon.wait_closed_episode(None, EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.restarts, 1, "{episode:?}");
    let new_pid = bed.user_main_pid(user, unit).expect("a new main pid");
    assert_ne!(new_pid, old_pid, "the user's manager restarted the unit");
    daemon.assert_recovered_by_new_session(standin, &name, &old_session, latched_at, WAIT);
    let restarts = daemon.actions(ActionKind::Restart);
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok, "{restarts:?}");
    let detail = restarts[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("user@{}'s manager", user.uid)),
        "{detail}"
    );
    daemon
}

#[test]
fn a_latched_user_unit_is_restarted_through_its_users_manager_and_confirmed_by_its_own_200() {
    let _serial = serial();
    let user = TestUser::ensure(USER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-user-unit");
    let bed = Testbed::start("userunit");
    bed.start_user_manager(&user);
    start_user_agent(&bed, &user, "agent.service", &standin, dir.path());
    let _daemon = latch_and_recover(&bed, &user, "agent.service", &standin);
    // The user's bus admits its user only (dbus-daemon refuses even root): the restart went
    // through as the user.
    let as_root = std::process::Command::new("busctl")
        .arg(format!(
            "--address=unix:path={}",
            bed.user_bus(&user).display()
        ))
        .args(["call", "org.freedesktop.DBus", "/org/freedesktop/DBus"])
        .args(["org.freedesktop.DBus", "GetId"])
        .output()
        .expect("run busctl");
    assert!(
        !as_root.status.success(),
        "root was let onto the user's bus: {as_root:?}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A target that names `unit` (of `manager`) but whose process is `pid`.
fn crafted(instance: &str, unit: &str, manager: Manager, pid: u32) -> Target {
    let mut target = claude_watch_tests::target_for_pid(instance, pid)
        .expect("a live pid")
        .with_unit(unit);
    target.placement = Placement::Unit(SystemdUnit {
        name: unit.into(),
        manager,
        cgroup: String::new(),
    });
    target
}

#[test]
fn a_process_of_another_unit_is_refused_naming_both_and_nothing_is_restarted() {
    let _serial = serial();
    let user = TestUser::ensure(USER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-refusal");
    let bed = Testbed::start("refusal");
    bed.start_sleeper("unit-a.service");
    bed.start_sleeper("unit-b.service");
    bed.start_user_manager(&user);
    start_user_agent(&bed, &user, "agent.service", &standin, dir.path());
    start_user_agent(&bed, &user, "other.service", &standin, dir.path());
    let pids = || {
        [
            bed.main_pid("unit-a.service"),
            bed.main_pid("unit-b.service"),
            bed.user_main_pid(&user, "agent.service"),
            bed.user_main_pid(&user, "other.service"),
        ]
    };
    let before = wait_until(WAIT, "four main pids", || {
        let p = pids();
        p.iter().all(Option::is_some).then_some(p)
    });
    let [a, b, agent, other] = before.map(|p| p.expect("pid"));
    let rt = runtime();

    // The system manager: unit-a's name, unit-b's process.
    let system = SystemdRestarter::with_address(bed.bus_address());
    let err = rt
        .block_on(system.restart(&crafted(
            "unit-a.service",
            "unit-a.service",
            Manager::System,
            b,
        )))
        .expect_err("refused");
    let SuperviseError::NotOwner {
        expected, found, ..
    } = &err
    else {
        panic!("expected NotOwner, got {err:?}")
    };
    assert_eq!(
        (expected.as_str(), found.as_str()),
        ("unit-a.service", "unit-b.service")
    );
    let text = claude_watch::error_chain(&err);
    assert!(
        text.contains("unit-a.service") && text.contains("unit-b.service"),
        "{text}"
    );

    // The user's manager: agent.service's name, other.service's process.
    let user_manager = SystemdRestarter::for_user(user.uid);
    let name = format!("user:{}:agent.service", user.uid);
    let err = rt
        .block_on(user_manager.restart(&crafted(
            &name,
            "agent.service",
            Manager::User { uid: user.uid },
            other,
        )))
        .expect_err("refused");
    assert!(
        matches!(&err, SuperviseError::NotOwner { expected, found, manager, .. }
            if expected == "agent.service" && found == "other.service"
                && *manager == format!("user@{}'s manager", user.uid)),
        "{err:?}"
    );

    // A user unit's name with a root process: not the user's to restart, and never talked
    // about to the user's manager as root.
    let err = rt
        .block_on(user_manager.restart(&crafted(
            &name,
            "agent.service",
            Manager::User { uid: user.uid },
            a,
        )))
        .expect_err("refused");
    assert!(
        matches!(&err, SuperviseError::NotOwner { found, .. } if found == "a process of uid 0"),
        "{err:?}"
    );

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        pids(),
        [Some(a), Some(b), Some(agent), Some(other)],
        "nothing was restarted"
    );
    // And the same restarters do act when the unit is the process's own.
    let outcome = rt
        .block_on(user_manager.restart(&crafted(
            &name,
            "agent.service",
            Manager::User { uid: user.uid },
            agent,
        )))
        .expect("restarted");
    let new_pid = outcome.new_pid.expect("the new main pid, as a host pid");
    assert_ne!(new_pid, agent);
    assert_eq!(bed.user_main_pid(&user, "agent.service"), Some(new_pid));
    assert_eq!(bed.user_main_pid(&user, "other.service"), Some(other));
}
