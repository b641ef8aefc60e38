//! Tests of the stand-in Anthropic API itself, driven by real clients (curl, python, node, Bun
//! and the real Claude Code). Each test runs its own stand-in, so they can run in parallel.

use std::process::Command;
use std::time::{Duration, Instant};

use claude_watch_tests::agents::{Agent, AgentConfig, ClaudeAgent, FAKE_API_KEY, Runtime};
use claude_watch_tests::deps::{self, Bun, ClaudeCode};
use claude_watch_tests::process::{ChildGuard, processes_in_group};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::wait::wait_until;

const SECOND: Duration = Duration::from_secs(1);

/// A response as curl saw it.
#[derive(Debug)]
struct Curl {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl against the stand-in (`-k`, no proxy, HTTP/1.1) and parses the last response.
#[track_caller]
fn curl(standin: &StandIn, args: &[&str]) -> Curl {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-i",
            "--http1.1",
            "--noproxy",
            "*",
            "--max-time",
            "20",
        ])
        .args(
            args.iter()
                .map(|a| a.replace("{base}", &standin.base_url())),
        )
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let last = text.rfind("HTTP/1.1 ").expect("curl printed a status line");
    let (head, body) = text[last..].split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Curl {
        status: status.expect("a numeric status"),
        headers,
        body: body.to_owned(),
    }
}

/// A streamed `POST /v1/messages?beta=true` as Claude Code makes it, from curl.
#[track_caller]
fn post_message(standin: &StandIn, session: Option<&str>, key: &str, model: &str) -> Curl {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":16,"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let key = format!("x-api-key: {key}");
    let session = session.map(|s| format!("X-Claude-Code-Session-Id: {s}"));
    let mut args = vec![
        "{base}/v1/messages?beta=true",
        "-H",
        "content-type: application/json",
        "-H",
        &key,
        "-d",
        &body,
    ];
    if let Some(s) = &session {
        args.extend(["-H", s.as_str()]);
    }
    curl(standin, &args)
}

fn statuses_of(standin: &StandIn, session: &str, after: f64) -> Vec<u16> {
    standin
        .log()
        .into_iter()
        .filter(|e| e.session.as_deref() == Some(session) && e.time > after)
        .map(|e| e.status)
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn answers_like_the_api_with_streamed_and_json_messages_models_and_real_error_bodies() {
    let standin = StandIn::start();
    let head = curl(&standin, &["-I", "{base}/"]);
    assert_eq!(head.status, 200);
    assert!(
        head.header("request-id")
            .is_some_and(|r| r.starts_with("req_")),
        "{head:?}"
    );

    let streamed = post_message(&standin, Some("s-1"), FAKE_API_KEY, "claude-opus-4-8");
    assert_eq!(streamed.status, 200);
    assert!(
        streamed
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events: Vec<&str> = streamed
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    for needed in [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    ] {
        assert!(events.contains(&needed), "{needed} missing from {events:?}");
    }

    let json = curl(
        &standin,
        &[
            "{base}/v1/messages",
            "-H",
            "x-api-key: k",
            "-d",
            r#"{"model":"claude-haiku-4-5","stream":false}"#,
        ],
    );
    assert_eq!(json.status, 200);
    let message: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-haiku-4-5");
    assert_eq!(message["content"][0]["type"], "text");

    let models = curl(&standin, &["{base}/v1/models", "-H", "x-api-key: k"]);
    let models: serde_json::Value = serde_json::from_str(&models.body).unwrap();
    assert!(
        models["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == "claude-opus-4-8"))
    );

    standin.latch_session("s-1");
    let denied = post_message(&standin, Some("s-1"), FAKE_API_KEY, "claude-opus-4-8");
    assert_eq!(denied.status, 401);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&denied.body).unwrap(),
        serde_json::json!({"type":"error","error":{"type":"authentication_error","message":"Invalid authentication credentials"}})
    );

    // Every response carries a distinct request id, and the log shows them without credentials.
    let log = standin.log();
    assert_eq!(log.len(), 5);
    let mut ids: Vec<&str> = log.iter().map(|e| e.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    assert!(
        log.iter()
            .all(|e| e.credential.as_deref().is_none_or(|c| c.len() == 8))
    );
    assert_eq!(log[4].status, 401);
    assert_eq!(log[4].reason.as_deref(), Some("latched"));
}

#[test]
fn keeps_connections_alive_serves_large_bodies_and_splits_status_lines() {
    let standin = StandIn::start();
    // Two requests in one curl run reuse one connection.
    let output = Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .arg(format!("{}/v1/models", standin.base_url()))
        .arg(format!("{}/v1/models", standin.base_url()))
        .output()
        .expect("curl runs");
    assert!(output.status.success());
    let log = standin.log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[0].client_port, log[1].client_port,
        "the second request reused the connection"
    );

    let size = 10 * 1024 * 1024;
    let output = Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(format!("{}/bytes/{size}", standin.base_url()))
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("200 {size}")
    );

    // With split_status, the first TLS record holds only part of the status line.
    standin.split_status(3, Duration::from_millis(50), 1);
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nConnection: close\r\n\r\n")
reads = []
while True:
    b = s.recv(65536)
    if not b: break
    reads.append(b)
print(len(reads[0]), len(b"".join(reads).split(b"\r\n")[0]), b"".join(reads).split(b"\r\n")[0].decode())
"#;
    let output = Command::new(deps::python3())
        .args(["-c", script, &standin.api_port().to_string()])
        .output()
        .expect("python runs");
    let out = String::from_utf8_lossy(&output.stdout);
    let mut parts = out.split_whitespace();
    let first_read: usize = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let status_len: usize = parts.next().unwrap().parse().unwrap();
    assert!(
        first_read < status_len,
        "first read {first_read} bytes, status line {status_len}: {out}"
    );
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    // Only `count` responses are split: the next one arrives whole.
    assert_eq!(curl(&standin, &["{base}/v1/models"]).status, 200);
}

#[test]
fn latched_session_gets_401_while_probes_with_the_same_credential_get_200() {
    let standin = StandIn::start();
    let agent = Agent::start(&standin, Runtime::Node, &AgentConfig::default());
    let first = agent.wait_for_responses(1, 10 * SECOND, "the node agent's first 200", |r| {
        r.status == 200
    });
    assert_eq!(first.text.as_deref(), Some("Hello from the stand-in."));
    assert_eq!(
        first.complete,
        Some(true),
        "the agent read the SSE stream to message_stop"
    );

    let latched_at = unix_now();
    standin.latch_session(agent.session_id());
    agent.wait_for_responses(
        3,
        10 * SECOND,
        "three 401s of the latched node agent",
        |r| r.status == 401 && r.error_type.as_deref() == Some("authentication_error"),
    );

    // Token probes with the same credential read green.
    assert_eq!(
        post_message(&standin, None, FAKE_API_KEY, "claude-opus-4-8").status,
        200
    );
    assert_eq!(
        post_message(
            &standin,
            Some("fresh-session"),
            FAKE_API_KEY,
            "claude-opus-4-8"
        )
        .status,
        200
    );
    assert_eq!(
        curl(
            &standin,
            &[
                "{base}/v1/models",
                "-H",
                &format!("x-api-key: {FAKE_API_KEY}")
            ]
        )
        .status,
        200
    );
    // So does another instance (a Bun agent) with the same credential.
    let other = Agent::start(&standin, Runtime::Bun(Bun::V1_4_5), &AgentConfig::default());
    other.wait_for_responses(2, 10 * SECOND, "two 200s of a second instance", |r| {
        r.status == 200
    });

    // The latched session never got anything but 401 after the latch, and it is still retrying.
    let after = statuses_of(&standin, agent.session_id(), latched_at);
    assert!(
        after.len() >= 3 && after.iter().all(|&s| s == 401),
        "{after:?}"
    );
    assert!(
        standin
            .sessions()
            .iter()
            .any(|s| s.identity == format!("session:{}", agent.session_id()) && s.latched)
    );
}

#[test]
fn latch_next_and_latch_by_pid_catch_whichever_client_comes() {
    let standin = StandIn::start();
    standin.latch_next();
    assert_eq!(
        post_message(&standin, Some("first"), "k", "claude-opus-4-8").status,
        401
    );
    assert_eq!(
        post_message(&standin, Some("first"), "k", "claude-opus-4-8").status,
        401
    );
    assert_eq!(
        post_message(&standin, Some("second"), "k", "claude-opus-4-8").status,
        200
    );

    // A client without a session id, latched by its pid: all its connections get 401.
    let script = r#"
import http.client, ssl, sys, time, json
ctx = ssl._create_unverified_context()
while True:
    c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
    c.request("POST", "/v1/messages", body=json.dumps({"model": "claude-opus-4-8"}), headers={"x-api-key": "k"})
    r = c.getresponse(); r.read(); c.close()
    print(r.status, flush=True)
    time.sleep(0.1)
"#;
    let mut client = ChildGuard::spawn(
        "python client",
        Command::new(deps::python3()).args(["-c", script, &standin.api_port().to_string()]),
    );
    client.wait_for_line(0, 10 * SECOND, "a 200 of the python client", |l| l == "200");
    standin.latch_pid(client.pid());
    let from = client.lines().len();
    let (i, _) = client.wait_for_line(
        from,
        10 * SECOND,
        "a 401 of the latched python client",
        |l| l == "401",
    );
    let (j, _) = client.wait_for_line(i + 1, 10 * SECOND, "another 401", |l| l == "401");
    let lines = client.lines();
    assert!(lines[i..=j].iter().all(|l| l == "401"), "{lines:?}");
    // Another process with the same credential is fine.
    assert_eq!(
        post_message(&standin, None, "k", "claude-opus-4-8").status,
        200
    );
}

#[test]
fn window_catches_new_sessions_until_it_closes() {
    let standin = StandIn::start();
    let config = AgentConfig::default();
    let before = Agent::start(&standin, Runtime::Bun(Bun::V1_4_5), &config);
    before.wait_for_responses(1, 10 * SECOND, "a 200 before the window", |r| {
        r.status == 200
    });

    let window = 3 * SECOND;
    let opened = Instant::now();
    standin.open_window(window);
    let mut caught = Agent::start(&standin, Runtime::Node, &config);
    caught.wait_for_responses(
        2,
        10 * SECOND,
        "401s of a session started in the window",
        |r| r.status == 401,
    );
    let first_session = caught.session_id().to_owned();
    // A restart into the window latches again.
    caught.kill();
    let restarted = Agent::start(&standin, Runtime::Node, &config);
    restarted.wait_for_responses(
        1,
        10 * SECOND,
        "a 401 of the restart into the window",
        |r| r.status == 401,
    );
    assert!(
        opened.elapsed() < window,
        "the restart happened inside the window (test too slow)"
    );
    // The session known before the window is spared.
    let n = before.responses().len();
    before.wait_for_responses(
        n + 1,
        10 * SECOND,
        "a 200 of the older session during the window",
        |r| r.status == 200,
    );

    // After the window closes: latched sessions stay latched, new sessions are healthy.
    std::thread::sleep(window.saturating_sub(opened.elapsed()) + Duration::from_millis(100));
    let closed_at = unix_now();
    let after = Agent::start(&standin, Runtime::Bun(Bun::V1_4_5), &config);
    after.wait_for_responses(
        2,
        10 * SECOND,
        "200s of a session started after the window",
        |r| r.status == 200,
    );
    wait_until(
        10 * SECOND,
        "two more 401s of the restarted session after the window",
        || (statuses_of(&standin, restarted.session_id(), closed_at).len() >= 2).then_some(()),
    );
    let statuses = statuses_of(&standin, restarted.session_id(), 0.0);
    assert!(
        statuses.iter().all(|&s| s == 401),
        "latched forever: {statuses:?}"
    );
    assert!(
        statuses_of(&standin, &first_session, 0.0)
            .iter()
            .all(|&s| s == 401)
    );
}

#[test]
fn poisoned_credential_rejects_every_session_until_cleared() {
    let standin = StandIn::start();
    let poisoned_key = "sk-ant-api03-test-poisoned";
    let config = AgentConfig {
        api_key: poisoned_key.into(),
        ..AgentConfig::default()
    };
    let agent = Agent::start(&standin, Runtime::Node, &config);
    agent.wait_for_responses(1, 10 * SECOND, "a 200 before poisoning", |r| {
        r.status == 200
    });

    standin.poison_credential(poisoned_key);
    let n = agent.responses().len();
    wait_until(10 * SECOND, "two 401s after poisoning", || {
        (agent.responses()[n..]
            .iter()
            .filter(|r| r.status == 401)
            .count()
            >= 2)
            .then_some(())
    });
    // A restart cannot heal: a new session with the same credential is rejected too.
    let restarted = Agent::start(&standin, Runtime::Bun(Bun::V1_4_5), &config);
    restarted.wait_for_responses(2, 10 * SECOND, "401s of a restarted instance", |r| {
        r.status == 401
    });
    assert!(restarted.responses().iter().all(|r| r.status == 401));
    assert_eq!(
        curl(
            &standin,
            &[
                "{base}/v1/models",
                "-H",
                &format!("x-api-key: {poisoned_key}")
            ]
        )
        .status,
        401
    );
    assert_eq!(
        post_message(
            &standin,
            Some("other"),
            "sk-ant-api03-test-other",
            "claude-opus-4-8"
        )
        .status,
        200
    );
    assert!(
        standin
            .log()
            .iter()
            .filter(|e| e.status == 401)
            .all(|e| e.reason.as_deref() == Some("poisoned"))
    );

    standin.clear_credential(poisoned_key);
    let n = agent.responses().len();
    wait_until(
        10 * SECOND,
        "a 200 of the first agent once the credential is cleared",
        || {
            agent.responses()[n..]
                .iter()
                .any(|r| r.status == 200)
                .then_some(())
        },
    );
}

#[test]
fn throttle_hits_only_the_chosen_models() {
    let standin = StandIn::start();
    standin.throttle_models(&["claude-opus-*", "claude-sonnet-*"]);
    for model in ["claude-opus-4-8", "claude-sonnet-4-6"] {
        let r = post_message(&standin, Some("s"), FAKE_API_KEY, model);
        assert_eq!(r.status, 429, "{model}");
        assert_eq!(r.header("x-should-retry"), Some("true"));
        assert_eq!(r.header("retry-after"), None);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
            serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":"Error"}})
        );
    }
    assert_eq!(
        post_message(&standin, Some("s"), FAKE_API_KEY, "claude-haiku-4-5").status,
        200
    );

    let opus = Agent::start(&standin, Runtime::Bun(Bun::V1_4_5), &AgentConfig::default());
    let haiku = Agent::start(
        &standin,
        Runtime::Node,
        &AgentConfig {
            model: "claude-haiku-4-5".into(),
            ..AgentConfig::default()
        },
    );
    haiku.wait_for_responses(3, 10 * SECOND, "three 200s on haiku", |r| r.status == 200);
    opus.wait_for_responses(3, 10 * SECOND, "three 429s on opus", |r| {
        r.status == 429 && r.error_type.as_deref() == Some("rate_limit_error")
    });
    assert!(haiku.responses().iter().all(|r| r.status == 200));
    assert!(opus.responses().iter().all(|r| r.status == 429));
    // The throttle is not a latch: lifting it heals the same session without a restart.
    standin.throttle_models(&[]);
    opus.wait_for_responses(
        1,
        10 * SECOND,
        "a 200 on opus once the throttle lifts",
        |r| r.status == 200,
    );
}

#[test]
fn idle_wake_latches_only_after_idle() {
    let standin = StandIn::start();
    standin.idle_wake(Some(Duration::from_millis(1200)));
    let busy = AgentConfig {
        interval: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let agent = Agent::start(&standin, Runtime::Node, &busy);
    for _ in 0..4 {
        assert_eq!(
            post_message(&standin, Some("sleeper"), "k", "claude-opus-4-8").status,
            200
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        post_message(&standin, Some("sleeper"), "k", "claude-opus-4-8").status,
        401,
        "woke after idle"
    );
    assert_eq!(
        post_message(&standin, Some("sleeper"), "k", "claude-opus-4-8").status,
        401,
        "and stays latched"
    );
    // The agent that never idled kept getting 200 all along.
    let responses = agent.responses();
    assert!(responses.len() >= 8, "{} turns", responses.len());
    assert!(responses.iter().all(|r| r.status == 200), "{responses:?}");
}

#[test]
fn real_claude_code_completes_a_turn_then_stays_latched_on_its_own_session() {
    let standin = StandIn::start();
    standin.set_reply("Stand-in answer 4711.");
    let mut claude = ClaudeAgent::start(&standin, ClaudeCode::Native2_1_331, FAKE_API_KEY);
    let from = claude.send_turn("Say something.");
    let result = claude.wait_for_result(from, 60 * SECOND);
    assert!(!result.is_error, "{result:?}");
    assert_eq!(result.result, "Stand-in answer 4711.");
    let log = standin.log();
    let turn = log
        .iter()
        .find(|e| e.path.starts_with("/v1/messages"))
        .expect("a messages request");
    assert_eq!(
        turn.session.as_deref(),
        Some(result.session_id.as_str()),
        "Claude Code sent its session id"
    );
    assert_eq!(
        turn.pid,
        Some(claude.pid()),
        "the request came from the claude process"
    );
    assert!(
        turn.user_agent
            .as_deref()
            .is_some_and(|u| u.starts_with("claude-cli/"))
    );

    let latched_at = unix_now();
    standin.latch_session(&result.session_id);
    claude.send_turn("Again.");
    wait_until(20 * SECOND, "three 401s of the latched Claude Code", || {
        (statuses_of(&standin, &result.session_id, latched_at).len() >= 3).then_some(())
    });
    let statuses = statuses_of(&standin, &result.session_id, latched_at);
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    assert!(
        claude
            .api_retries()
            .iter()
            .all(|&(_, status)| status == 401)
    );
    assert!(
        !claude.api_retries().is_empty(),
        "Claude Code reports its retries"
    );
    assert!(!claude.has_exited(), "it stays alive, latched");
    // Its credential still works for anyone else.
    assert_eq!(
        post_message(&standin, Some("probe"), FAKE_API_KEY, "claude-opus-4-8").status,
        200
    );
    let pid = claude.pid();
    drop(claude);
    assert!(
        processes_in_group(pid).is_empty(),
        "claude's process group is gone"
    );
}

#[test]
fn harness_starts_and_tears_down_in_seconds_leaving_no_process() {
    let started = Instant::now();
    let standin = StandIn::start();
    let node = Agent::start(&standin, Runtime::Node, &AgentConfig::default());
    let bun = Agent::start(
        &standin,
        Runtime::Bun(Bun::Baseline1_3_11),
        &AgentConfig::default(),
    );
    node.wait_for_responses(1, 10 * SECOND, "node agent's first 200", |r| {
        r.status == 200
    });
    bun.wait_for_responses(1, 10 * SECOND, "bun agent's first 200", |r| r.status == 200);
    let groups = [standin.pid(), node.pid(), bun.pid()];
    for pgid in groups {
        assert!(
            !processes_in_group(pgid).is_empty(),
            "group {pgid} is running"
        );
    }
    assert!(
        started.elapsed() < 10 * SECOND,
        "start took {:?}",
        started.elapsed()
    );

    let stopping = Instant::now();
    drop((node, bun, standin));
    assert!(
        stopping.elapsed() < 3 * SECOND,
        "teardown took {:?}",
        stopping.elapsed()
    );
    for pgid in groups {
        let left = processes_in_group(pgid);
        assert!(left.is_empty(), "processes left in group {pgid}: {left:?}");
        assert!(
            !std::path::Path::new(&format!("/proc/{pgid}")).exists(),
            "pid {pgid} was reaped"
        );
    }
}
