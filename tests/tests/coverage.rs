//! Never blind in silence (#35), with the real Claude Code (the npm install, 2.1.332): watched
//! and answered over TLS it reads healthy and the coverage audit never calls it blind, idle or
//! busy; pointed at a plain-HTTP gateway on loopback (its requests never pass through TLS) it
//! reads blind, never healthy, also once its session is latched there.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use std::time::{Duration, Instant};

use claude_watch_tests::agents::{ClaudeAgent, FAKE_API_KEY};
use claude_watch_tests::deps;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::wait::one_at_a_time as serial;
use claude_watch_tests::watch::Daemon;

const WAIT: Duration = Duration::from_secs(60);
const TURN: Duration = Duration::from_secs(90);

/// The npm-installed Claude Code (`bin/claude.exe`), as users run it.
fn latest(standin: &StandIn, base_url: Option<&str>) -> ClaudeAgent {
    let program =
        deps::npm_global_prefix().join("lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe");
    let env: Vec<(&str, &str)> = base_url
        .map(|u| vec![("ANTHROPIC_BASE_URL", u)])
        .unwrap_or_default();
    ClaudeAgent::start_program_with_env(standin, &program, &[], FAKE_API_KEY, &env)
}

/// The state `status --json` gives the instance of `pid`, if listed.
fn state_of(daemon: &Daemon, pid: u32) -> Option<(String, String)> {
    let i = daemon.instance_of(pid)?;
    Some((
        i["state"].as_str().unwrap_or_default().to_owned(),
        i["blind"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[test]
fn a_watched_claude_code_is_never_blind_idle_or_busy() {
    let _serial = serial();
    let standin = StandIn::start();
    let daemon = Daemon::start("coverage_audit = \"3s\"", "");
    let mut claude = latest(&standin, None);
    let pid = claude.pid();
    let from = claude.send_turn("first");
    assert!(!claude.wait_for_result(from, TURN).is_error);
    claude_watch_tests::wait::wait_until(WAIT, "Claude Code healthy", || {
        (state_of(&daemon, pid)?.0 == "healthy").then_some(())
    });
    // An idle minute: twenty audits, nothing asked.
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(3));
        let (state, why) = state_of(&daemon, pid).expect("listed");
        assert_eq!(state, "healthy", "idle, {:?} in: {why}", idle.elapsed());
    }
    // A busy minute: turn after turn.
    let busy = Instant::now();
    let mut turns = 0;
    while busy.elapsed() < Duration::from_secs(60) {
        let from = claude.send_turn("again");
        assert!(!claude.wait_for_result(from, TURN).is_error);
        turns += 1;
        let (state, why) = state_of(&daemon, pid).expect("listed");
        assert_ne!(state, "blind", "busy, turn {turns}: {why}");
    }
    assert!(turns >= 5, "{turns} turns in the busy minute");
    let (state, _) = state_of(&daemon, pid).expect("listed");
    assert_eq!(state, "healthy");
    assert!(
        !daemon.log().iter().any(|l| l.contains("blind:")),
        "never said blind"
    );
}

#[test]
fn claude_code_through_a_plain_http_gateway_reads_blind_never_healthy() {
    let _serial = serial();
    let gateway = StandIn::start_plain();
    let daemon = Daemon::start("coverage_audit = \"3s\"", "");
    let url = gateway.plain_url();
    let mut claude = latest(&gateway, Some(&url));
    let pid = claude.pid();
    let from = claude.send_turn("through the gateway");
    let first = claude.wait_for_result(from, TURN);
    assert!(!first.is_error, "the gateway answers: {first:?}");
    let (state, why) = claude_watch_tests::wait::wait_until(WAIT, "Claude Code blind", || {
        state_of(&daemon, pid).filter(|(s, _)| s == "blind")
    });
    assert_eq!(state, "blind");
    assert!(
        why.contains(&format!("ANTHROPIC_BASE_URL is plain {url}")),
        "{why}"
    );
    // Latched at the gateway: its 401s are not seen, and it never reads healthy.
    gateway.latch_session(&first.session_id);
    claude.send_turn("latched");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(2));
        let (state, _) = state_of(&daemon, pid).expect("listed");
        assert_eq!(state, "blind");
    }
    let rejected = gateway
        .log()
        .into_iter()
        .filter(|e| e.status == 401)
        .count();
    assert!(
        rejected >= 2,
        "the gateway answered 401s meanwhile: {rejected}"
    );
    assert!(
        daemon.restarts().is_empty(),
        "never restarted for being blind"
    );
}
