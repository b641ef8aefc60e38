//! The real Claude Code and real Bun builds, traced live: the locator's offsets for stripped
//! BoringSSL binaries are right when a probe there sees the plaintext.
//!
//! Needs root and the pinned npm clients (`cargo xtask setup --tests`).

use std::time::Duration;

use claude_watch_tests::agents::{Agent, AgentConfig, ClaudeAgent, FAKE_API_KEY, Runtime};
use claude_watch_tests::deps::{Bun, ClaudeCode};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::Trace;
use serde_json::Value;

const TURN: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

/// Waits until the trace has attached to `pid`'s executable (native: through `/proc/<pid>/exe`;
/// a script: the TLS library its interpreter maps, through `/proc/<pid>/root`).
fn wait_attached(trace: &Trace, pid: u32) {
    let needle = format!("/proc/{pid}/");
    wait_until(WAIT, "the trace to attach to the new claude", || {
        trace
            .stderr()
            .iter()
            .any(|l| l.contains("attached to") && l.contains(&needle))
            .then_some(())
    });
}

/// One turn that must succeed, then a latch: the trace shows the 200, then 401s, all with the
/// claude pid and its session id.
fn turn_then_latch(standin: &StandIn, claude: &mut ClaudeAgent, trace: &Trace) {
    let pid = claude.pid();
    let from = claude.send_turn("say hi");
    let result = claude.wait_for_result(from, TURN);
    assert!(
        !result.is_error,
        "the first turn should succeed: {result:?}"
    );
    let ok = trace.wait_for(pid, 1, WAIT, "claude's successful POST", |e| {
        e["method"] == "POST" && e["path"] == "/v1/messages?beta=true" && e["status"] == 200
    });
    let session = ok[0]["session_id"]
        .as_str()
        .expect("the session id header was seen")
        .to_owned();
    assert_eq!(
        session, result.session_id,
        "the header's session id is claude's own"
    );
    assert!(
        ok[0]["model"]
            .as_str()
            .is_some_and(|m| m.starts_with("claude-")),
        "{:?}",
        ok[0]
    );
    assert!(
        ok[0]["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))
    );
    standin.latch_session(&session);
    claude.send_turn("are you there?");
    let denied = trace.wait_for(pid, 2, WAIT, "claude's 401s", |e| e["status"] == 401);
    for e in &denied {
        assert_eq!(e["session_id"], Value::from(session.as_str()));
        assert_eq!(e["path"], "/v1/messages?beta=true");
    }
    // The stand-in's log agrees on every request id the trace reported.
    let log = standin.log();
    for e in trace.exchanges_of(pid) {
        assert!(
            log.iter()
                .any(|l| Some(l.request_id.as_str()) == e["request_id"].as_str()),
            "{e} not in the stand-in's log"
        );
    }
}

#[test]
fn native_claude_started_after_the_trace() {
    let standin = StandIn::start();
    let trace = Trace::start(&[]);
    let mut claude = ClaudeAgent::start(&standin, ClaudeCode::Native2_1_331, FAKE_API_KEY);
    wait_attached(&trace, claude.pid());
    turn_then_latch(&standin, &mut claude, &trace);
}

#[test]
fn native_claude_started_before_the_trace_older_release() {
    let standin = StandIn::start();
    let mut claude = ClaudeAgent::start(&standin, ClaudeCode::Native2_1_197, FAKE_API_KEY);
    // Let it start up before claude-watch does.
    std::thread::sleep(Duration::from_millis(1500));
    let trace = Trace::start(&[]);
    wait_attached(&trace, claude.pid());
    turn_then_latch(&standin, &mut claude, &trace);
}

#[test]
fn node_based_claude_cli_js() {
    let standin = StandIn::start();
    let trace = Trace::start(&[]);
    let mut claude = ClaudeAgent::start(&standin, ClaudeCode::Node2_0_77, FAKE_API_KEY);
    wait_attached(&trace, claude.pid());
    let from = claude.send_turn("say hi");
    let result = claude.wait_for_result(from, TURN);
    assert!(!result.is_error, "{result:?}");
    let seen = trace.wait_for(claude.pid(), 1, WAIT, "the node claude's POST", |e| {
        e["method"] == "POST"
            && e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/v1/messages"))
            && e["status"] == 200
    });
    // node renames its process title to `claude`; the executable is still node.
    assert!(
        seen[0]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/node")),
        "{:?}",
        seen[0]
    );
    assert!(
        seen[0]["session_id"].is_string()
            || seen[0]["user_agent"]
                .as_str()
                .is_some_and(|u| u.contains("claude-cli")),
        "{:?}",
        seen[0]
    );
}

#[test]
fn bun_builds_without_symbols() {
    let standin = StandIn::start();
    for bun in [Bun::V1_4_5, Bun::Baseline1_3_11, Bun::V1_2_23] {
        let path = bun.path();
        let trace = Trace::start(&["--binary", path.to_str().expect("utf-8 path")]);
        assert!(
            trace.stderr().iter().any(|l| l.contains("BoringSSL")
                && l.contains("SSL_write")
                && l.contains("SSL_read")),
            "{bun:?}: {:?}",
            trace.stderr()
        );
        let config = AgentConfig {
            model: "claude-haiku-4-5".into(),
            ..AgentConfig::default()
        };
        let agent = Agent::start(&standin, Runtime::Bun(bun), &config);
        let seen = trace.wait_for(agent.pid(), 2, WAIT, "the Bun agent's turns", |e| {
            e["status"] == 200
        });
        assert_eq!(seen[0]["method"], "POST", "{bun:?}");
        assert_eq!(seen[0]["model"], "claude-haiku-4-5", "{bun:?}");
        assert_eq!(
            seen[0]["session_id"],
            Value::from(agent.session_id()),
            "{bun:?}"
        );
    }
}

#[test]
fn a_binary_replaced_by_an_update_is_located_and_attached_again() {
    // A Bun build installed as `claude` (so discovery takes it for Claude Code), traced; then
    // replaced in place the way updaters do (new file, rename over the old path).
    let standin = StandIn::start();
    let dir = claude_watch_tests::process::ScratchDir::new("claude-watch-update");
    let claude = dir.path().join("claude");
    std::fs::copy(Bun::V1_4_5.path(), &claude).expect("install the first build");
    let trace = Trace::start(&[]);
    let config = AgentConfig {
        model: "claude-haiku-4-5".into(),
        ..AgentConfig::default()
    };
    let first = Agent::start_with_program(&standin, &claude, &config);
    wait_attached(&trace, first.pid());
    trace.wait_for(first.pid(), 1, WAIT, "the first build's traffic", |e| {
        e["status"] == 200
    });

    let staged = dir.path().join("claude.new");
    std::fs::copy(Bun::Baseline1_3_11.path(), &staged).expect("stage the update");
    std::fs::rename(&staged, &claude).expect("replace the binary");
    let second = Agent::start_with_program(&standin, &claude, &config);
    wait_attached(&trace, second.pid());
    // (Its very first request may go out while the new file is still being located: the
    // response then shows up unpaired. Every later one is whole.)
    let seen = trace.wait_for(second.pid(), 1, WAIT, "the updated build's traffic", |e| {
        e["status"] == 200 && e["method"] == "POST"
    });
    assert_eq!(seen[0]["session_id"], Value::from(second.session_id()));
    let attachments = trace
        .stderr()
        .iter()
        .filter(|l| l.contains("attached to") && l.contains("BoringSSL"))
        .count();
    assert!(
        attachments >= 2,
        "the new file was located and attached: {:?}",
        trace.stderr()
    );
    // The old process, still running the replaced file, is still seen too.
    let before = trace.exchanges_of(first.pid()).len();
    trace.wait_for(
        first.pid(),
        before + 1,
        WAIT,
        "the old build's traffic after the update",
        |_| true,
    );
}
