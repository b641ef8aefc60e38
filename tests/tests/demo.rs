//! The demo behind `cargo xtask demo` (#30), which is also a test: three real Claude Code
//! 2.1.332 agents (the npm install) in units of a real systemd (the test bed), the stand-in API
//! on 127.0.0.1, and the daemon watching them. One agent's session latches upstream and is
//! restarted and confirmed recovered, one is throttled on Opus and left alone, one stays
//! healthy; `status` and `episodes` are shown as an operator would see them. Everything is
//! cleaned up when it ends.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::ActionKind;
use claude_watch_tests::agents::claude_code_unit;
use claude_watch_tests::deps;
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::testbed::Testbed;
use claude_watch_tests::wait::{now_ms, one_at_a_time};
use claude_watch_tests::watch::{Daemon, run};

const WAIT: Duration = Duration::from_secs(90);

/// `(unit, model, what happens to it)`.
const AGENTS: [(&str, &str, &str); 3] = [
    (
        "reviewer.service",
        "claude-sonnet-4-6",
        "its session latches upstream: restarted, recovered",
    ),
    (
        "planner.service",
        "claude-opus-4-8",
        "Opus throttled (429): a throttle, not a latch",
    ),
    ("tester.service", "claude-haiku-4-5", "stays healthy"),
];

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m== {n}. {text}\x1b[0m\n");
}

#[test]
fn demo_three_real_agents_one_latched_one_throttled_one_healthy() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-demo");
    let bed = Testbed::start("demo");
    let claude = deps::native_latest();
    for (unit, model, _) in AGENTS {
        let home = dir.path().join(unit.trim_end_matches(".service"));
        let args = format!("--model {model}");
        bed.add_unit(unit, &claude_code_unit(&standin, &claude, &args, 4, &home));
    }
    bed.daemon_reload();
    for (unit, ..) in AGENTS {
        assert!(
            bed.systemctl(&["start", unit]).status.success(),
            "start {unit}"
        );
    }
    let daemon = Daemon::start(
        "",
        &format!(
            "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"5s\"\n[recovery]\nsystemd_bus = \"{}\"\nbackoff_initial = \"10s\"\nrestart_timeout = \"30s\"\n",
            bed.bus_address()
        ),
    );

    step(
        1,
        &format!(
            "three real Claude Code agents ({}) in systemd units, the API stand-in on {}, claude-watch watching",
            claude.display(),
            standin.base_url()
        ),
    );
    for (unit, _, fate) in AGENTS {
        println!("  {unit:<18} {fate}");
    }
    for (unit, ..) in AGENTS {
        daemon.wait_for(unit, WAIT, "its own 200", |i| {
            i.state == "healthy" && i.last_status == Some(200) && i.session_id.is_some()
        });
    }
    println!("\n$ claude-watch status\n{}", daemon.status_text());

    step(
        2,
        "reviewer's session latches upstream: every request of that session gets 401 (its token is fine)",
    );
    let reviewer = daemon.wait_for(AGENTS[0].0, WAIT, "reviewer", |_| true);
    let old_session = reviewer.session_id.clone().expect("a session");
    let latched_at = now_ms();
    standin.latch_session(&old_session);
    step(
        3,
        "Opus is throttled for planner (429): a model-tier throttle, which a restart does not help",
    );
    standin.throttle_models(&["claude-opus-*"]);
    daemon.wait_for(AGENTS[1].0, WAIT, "planner throttled", |i| {
        i.throttled.iter().any(|m| m.starts_with("claude-opus"))
    });
    // The moment between the latch and the recovery, when it is caught (it is short: the
    // restart goes out at once, and the new process answers within seconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if daemon
            .instance(AGENTS[0].0)
            .is_some_and(|i| i.state == "latched" || i.state == "recovering")
        {
            println!("$ claude-watch status\n{}", daemon.status_text());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let episode =
        daemon.wait_closed_episode(Some(AGENTS[0].0), EpisodeEnd::RecoveredAfterRestart, WAIT);
    daemon.assert_recovered_by_new_session(&standin, AGENTS[0].0, &old_session, latched_at, WAIT);
    println!(
        "reviewer latched ({} 401s on session {}), restarted through systemd, and recovered: its new session's own request got 200, {:.1} s after the first 401\n",
        episode.count_401,
        &old_session[..8],
        episode.duration_ms() as f64 / 1000.0
    );
    println!("$ claude-watch status\n{}", daemon.status_text());

    // The throttled agent was never restarted, and the healthy one is untouched.
    assert!(
        daemon
            .actions_of(AGENTS[1].0, ActionKind::Restart)
            .is_empty()
    );
    assert!(
        daemon
            .actions_of(AGENTS[2].0, ActionKind::Restart)
            .is_empty()
    );
    let tester = daemon.wait_for(AGENTS[2].0, WAIT, "tester", |_| true);
    assert_eq!(tester.state, "healthy", "{tester:?}");

    step(
        4,
        "the episode report, with request ids, as you would send it upstream",
    );
    let journal = daemon.journal_path();
    let out = run(&["episodes", "--journal", journal.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("reviewer.service"), "{report}");
    println!(
        "$ claude-watch episodes --journal {}\n{report}",
        journal.display()
    );
    println!("(stopping the agents, the test bed, the stand-in and the daemon)");
}
