//! Claude Code's own background sessions (`claude --bg`), end to end: the real Claude Code
//! (2.1.332 from `npm install -g`) against the stand-in, real probes, the daemon recovering a
//! latched worker through `claude respawn`.
//!
//! Each worker is an instance of its own (`claude-bg:<short id>`); the daemon, the pty hosts
//! and the unclaimed spares are none. A worker that finished its task waits idle for its next
//! turn, so the tests give it one as a person would (`claude attach` in a pseudo-terminal,
//! [`BgFleet::send`]). `claude respawn` keeps the session id: the stand-in's latch bound to the
//! process heals, the one bound to the session does not.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use claude_watch_tests::wait::one_at_a_time as serial;
use std::collections::BTreeSet;
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::ActionKind;
use claude_watch_tests::agents::FAKE_API_KEY;
use claude_watch_tests::bg::BgFleet;
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::Daemon;

const WAIT: Duration = Duration::from_secs(60);

/// Fast detection and short quiet windows.
fn config(extra: &str) -> String {
    format!(
        "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nrestart_timeout = \"90s\"\nbackoff_initial = \"2s\"\n{extra}\n"
    )
}

fn name(id: &str) -> String {
    format!("claude-bg:{id}")
}

/// Two sessions started and idle, each listed by the daemon as its own instance; their pids.
fn two_workers(fleet: &BgFleet, daemon: &Daemon) -> ((String, u32), (String, u32)) {
    let a = fleet.start("a", "task a");
    let a_pid = fleet.wait_idle(&a, None, WAIT);
    let b = fleet.start("b", "task b");
    let b_pid = fleet.wait_idle(&b, None, WAIT);
    for (id, pid, dir) in [(&a, a_pid, "a"), (&b, b_pid, "b")] {
        let i = daemon.wait_for(&name(id), WAIT, "the worker listed", |i| {
            i.pids.contains(&pid)
        });
        assert_eq!(i.supervisor, "claude-bg", "{i:?}");
        let background = i.background.as_ref().expect("a background session");
        assert_eq!(&background.short_id, id, "{i:?}");
        assert_eq!(
            background.cwd.as_deref(),
            Some(fleet.dir(dir).display().to_string().as_str()),
            "{i:?}"
        );
        assert!(
            i.session_id
                .as_ref()
                .is_none_or(|s| *s == background.session_id),
            "{i:?}"
        );
    }
    ((a, a_pid), (b, b_pid))
}

/// No process of the fleet other than the workers is an instance: not the daemon, not a pty
/// host, not a spare.
fn only_workers_listed(fleet: &BgFleet, daemon: &Daemon, workers: &[u32]) {
    let fleet_pids: BTreeSet<u32> = fleet.processes().into_iter().collect();
    assert!(
        fleet_pids.len() > workers.len(),
        "daemon and spares run too"
    );
    for i in daemon.instances() {
        for pid in &i.pids {
            if fleet_pids.contains(pid) {
                assert!(
                    workers.contains(pid),
                    "pid {pid} of the fleet is listed but is no worker: {i:?}"
                );
                assert!(i.name.starts_with("claude-bg:"), "{i:?}");
            }
        }
    }
}

/// `nobody`: the sessions of this test belong to an unprivileged user, as whom the daemon
/// (root) must act.
const NOBODY: u32 = 65534;

#[test]
fn two_workers_one_latched_by_its_process_is_recovered_through_claude_respawn() {
    let _serial = serial();
    let standin = StandIn::start();
    let daemon = Daemon::start("", &config(""));
    let fleet = BgFleet::new_as(&standin, FAKE_API_KEY, &["a", "b"], Some(NOBODY));
    let ((a, a_pid), (b, b_pid)) = two_workers(&fleet, &daemon);
    only_workers_listed(&fleet, &daemon, &[a_pid, b_pid]);
    let listed = daemon.wait_for(&name(&a), WAIT, "a listed", |_| true);
    assert!(
        listed
            .supervisor_reason
            .contains(&format!("as uid {NOBODY}")),
        "{listed:?}"
    );

    // A latch bound to a's process; a's next turn meets it.
    standin.latch_process(a_pid);
    fleet.send(&a, "next turn please");
    let new_a = wait_until(WAIT, "claude respawn to replace a's worker", || {
        fleet.pid_of(&a).filter(|p| *p != a_pid)
    });
    let restarted = daemon.wait_for(&name(&a), WAIT, "the new worker known", |i| {
        i.pids.contains(&new_a)
    });
    assert_eq!(
        restarted.background.map(|b| b.short_id).as_deref(),
        Some(a.as_str())
    );
    // The respawned worker waits for its next turn; its own answer confirms the recovery.
    fleet.wait_idle(&a, Some(a_pid), WAIT);
    fleet.send(&a, "and now?");
    let episode =
        daemon.wait_closed_episode(Some(&name(&a)), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.restarts, 1, "{episode:?}");
    assert!(episode.pids.contains(&a_pid), "{episode:?}");
    daemon.wait_for(&name(&a), WAIT, "a healthy on its new worker", |i| {
        i.state == "healthy" && i.last_status == Some(200) && i.pids.contains(&new_a)
    });
    let restarts = daemon.actions_of(&name(&a), ActionKind::Restart);
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok, "{restarts:?}");
    let detail = restarts[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("claude respawn {a} as uid {NOBODY}"))
            && detail.contains(&new_a.to_string()),
        "{detail}"
    );
    // The respawned worker is the owner's, not root's.
    let status = std::fs::read_to_string(format!("/proc/{new_a}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534")),
        "{status}"
    );
    // The new worker kept the session id and got 200 from the stand-in with it.
    let log = standin.log();
    let session = fleet.session_of(&a);
    assert!(
        log.iter().any(|e| e.pid == Some(new_a)
            && e.status == 200
            && e.session.as_deref() == Some(session.as_str())),
        "the respawned worker's own 200 with the same session id"
    );

    // b untouched: same process, no restart, and healthy once its own answer is seen (its
    // first turn may have gone out before the daemon attached: `observed` until then).
    assert_eq!(fleet.pid_of(&b), Some(b_pid));
    assert!(daemon.actions_of(&name(&b), ActionKind::Restart).is_empty());
    fleet.send(&b, "and b?");
    let bi = daemon.wait_for(&name(&b), WAIT, "b's own 200 seen", |i| {
        i.last_status == Some(200)
    });
    assert_eq!(bi.state, "healthy", "{bi:?}");
    assert_eq!(bi.pids, [b_pid], "{bi:?}");
    assert!(daemon.actions_of(&name(&b), ActionKind::Restart).is_empty());

    // Every API request came from a worker: the daemon, pty hosts and spares sent none.
    let workers = [a_pid, new_a, b_pid];
    for e in log.iter().filter(|e| e.path.starts_with("/v1/")) {
        assert!(
            e.pid.is_none_or(|p| workers.contains(&p)),
            "request from a process that is no worker: {e:?}"
        );
    }
    only_workers_listed(&fleet, &daemon, &[new_a, b_pid]);
    let text = daemon.status_text();
    assert!(text.contains("background sessions (claude --bg)"), "{text}");
    assert!(text.contains(&format!("id {a}")), "{text}");
}

/// With `give_up` (a respawn keeps the session id, so a latch bound to the session follows it:
/// the operator stops restarts after K and acts on the advice).
#[test]
fn a_latch_bound_to_the_session_survives_respawn_and_escalates_with_advice() {
    let _serial = serial();
    let standin = StandIn::start();
    let scratch = ScratchDir::new("cw-bg-hook");
    let hook_log = scratch.path().join("hook.log");
    let hook = scratch.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$1\" >> {}\n", hook_log.display()),
    )
    .expect("write hook");
    let daemon = Daemon::start(
        "",
        &config(&format!(
            "max_restarts = 3\ngive_up = true\nescalation_hook = [\"/bin/sh\", \"{}\", \"{{instance}}\"]",
            hook.display()
        )),
    );
    let fleet = BgFleet::new(&standin, FAKE_API_KEY, &["a", "b"]);
    let ((a, a_pid), (b, b_pid)) = two_workers(&fleet, &daemon);
    let session = fleet.session_of(&a);
    standin.latch_session(&session);
    fleet.send(&a, "next turn please");

    // Each respawned worker keeps the session id, so its next turn meets the latch again:
    // give every new worker its turn until the daemon gives up.
    let mut pids = vec![a_pid];
    wait_until(Duration::from_secs(120), "a escalated", || {
        let current = fleet.pid_of(&a)?;
        if !pids.contains(&current) {
            pids.push(current);
            fleet.wait_idle(&a, Some(pids[pids.len() - 2]), WAIT);
            fleet.send(&a, "try again");
        }
        daemon
            .instance(&name(&a))
            .filter(|i| i.state == "escalated")
    });
    let episode = daemon.wait_closed_episode(Some(&name(&a)), EpisodeEnd::Escalated, WAIT);
    assert_eq!(episode.restarts, 3, "{episode:?}");
    assert_eq!(
        episode.session_ids,
        std::slice::from_ref(&session),
        "{episode:?}"
    );
    assert_eq!(pids.len(), 4, "three respawns: {pids:?}");
    // Quiet windows grew between the respawns.
    let windows: Vec<u64> = daemon
        .actions_of(&name(&a), ActionKind::Backoff)
        .iter()
        .filter_map(|b| {
            b.detail
                .as_deref()?
                .strip_prefix("quiet window of ")?
                .split('s')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        windows.len() >= 2
            && windows.windows(2).all(|w| w[0] <= w[1])
            && windows[0] < windows[windows.len() - 1],
        "quiet windows grow: {windows:?}"
    );
    wait_until(WAIT, "the hook to run", || hook_log.exists().then_some(()));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(daemon.actions_of(&name(&a), ActionKind::Restart).len(), 3);
    assert_eq!(
        std::fs::read_to_string(&hook_log).expect("hook log"),
        format!("{}\n", name(&a)),
        "the hook ran once"
    );
    let status = daemon.wait_for(&name(&a), WAIT, "a escalated", |i| i.state == "escalated");
    let advice = status.advice.as_deref().unwrap_or_default();
    assert!(
        advice.contains("keeps the session id")
            && advice.contains(&format!("claude stop {a}"))
            && advice.contains("fresh_session = true"),
        "{status:?}"
    );
    // The 401s of the respawned workers came with the same session id.
    let rejected: BTreeSet<u32> = standin
        .log()
        .iter()
        .filter(|e| e.status == 401 && e.session.as_deref() == Some(session.as_str()))
        .filter_map(|e| e.pid)
        .collect();
    assert!(rejected.len() >= 2, "{rejected:?} of {pids:?}");
    // b untouched.
    assert_eq!(fleet.pid_of(&b), Some(b_pid));
    assert!(daemon.actions_of(&name(&b), ActionKind::Restart).is_empty());
}

#[test]
fn fresh_session_opt_in_stops_the_worker_and_starts_a_new_session_in_the_same_directory() {
    let _serial = serial();
    let standin = StandIn::start();
    let daemon = Daemon::start("", &config("fresh_session = true"));
    let fleet = BgFleet::new(&standin, FAKE_API_KEY, &["a", "b"]);
    let ((a, a_pid), (b, b_pid)) = two_workers(&fleet, &daemon);
    let listed = daemon.wait_for(&name(&a), WAIT, "a listed", |_| true);
    assert!(
        listed.supervisor_reason.contains("fresh_session = true"),
        "{listed:?}"
    );
    let session = fleet.session_of(&a);
    // Bound to the session: only a new session gets past it.
    standin.latch_session(&session);
    fleet.send(&a, "next turn please");

    // a is stopped and a new session starts in a's directory, idle until its first turn.
    let fresh = wait_until(WAIT, "a fresh session in a's directory", || {
        fleet.agents().into_iter().find(|x| {
            x["id"] != a.as_str()
                && x["id"] != b.as_str()
                && x["cwd"] == fleet.dir("a").display().to_string()
        })
    });
    let fresh_id = fresh["id"].as_str().expect("id").to_owned();
    assert_ne!(fresh["sessionId"], session.as_str());
    let fresh_pid = fleet.wait_idle(&fresh_id, Some(a_pid), WAIT);
    assert_eq!(fleet.pid_of(&a), None, "the old session was stopped");
    // The new worker continues the instance it replaced.
    daemon.wait_for(&name(&a), WAIT, "the fresh worker under a's name", |i| {
        i.pids.contains(&fresh_pid)
            && i.background
                .as_ref()
                .is_some_and(|b| b.short_id == fresh_id)
    });
    fleet.send(&fresh_id, "hello again");
    let episode =
        daemon.wait_closed_episode(Some(&name(&a)), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.restarts, 1, "{episode:?}");
    let restarts = daemon.actions_of(&name(&a), ActionKind::Restart);
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    let detail = restarts[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("claude stop {a}")) && detail.contains(&fresh_id),
        "{detail}"
    );
    assert!(
        standin
            .log()
            .iter()
            .any(|e| e.pid == Some(fresh_pid) && e.status == 200),
        "the fresh worker's own 200"
    );
    assert!(
        daemon.instance(&name(&fresh_id)).is_none(),
        "the fresh session is not listed under a name of its own"
    );
    // b untouched.
    assert_eq!(fleet.pid_of(&b), Some(b_pid));
    assert!(daemon.actions_of(&name(&b), ActionKind::Restart).is_empty());
}
