//! Capture end to end: real uprobes on real TLS clients (node, curl, python) talking to the
//! stand-in API on 127.0.0.1, seen through `claude-watch trace --json`.
//!
//! Needs root (the tests load eBPF programs). Traces attached to a shared library see every
//! process using it, so each test looks only at the exchanges of the pids it started.

use std::process::Command;
use std::time::Duration;

use claude_watch_tests::process::ChildGuard;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::watch::{self, Trace, counters};
use claude_watch_tests::{deps, wait::wait_until};
use serde_json::Value;

const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const WAIT: Duration = Duration::from_secs(20);
/// A credential distinctive enough to find anywhere it leaks.
const CANARY_KEY: &str = "sk-ant-api03-CANARYCANARY-7f3e9a1b2c4d";
const CANARY_TOKEN: &str = "sk-ant-oat01-CANARYTOKEN-0d1e2f3a4b5c";

/// A client started before the trace: it prints `ready` once its TLS library is loaded, then
/// waits for a line on stdin before it talks.
fn gated(name: &str, program: &std::path::Path, args: &[&str]) -> ChildGuard {
    let mut command = Command::new(program);
    command.args(args);
    let mut child = ChildGuard::spawn(name, &mut command);
    child.wait_for_line(0, WAIT, "the client to load its TLS library", |l| {
        l == "ready"
    });
    child
}

fn curl(standin: &StandIn, args: &[&str]) -> ChildGuard {
    let mut command = Command::new("curl");
    command.args([
        "-sk",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
    ]);
    command.args(["-H", &format!("x-api-key: {CANARY_KEY}")]);
    command.args(
        args.iter()
            .map(|a| a.replace("{base}", &standin.base_url())),
    );
    ChildGuard::spawn("curl", &mut command)
}

fn field<'a>(e: &'a Value, key: &str) -> &'a Value {
    e.get(key)
        .unwrap_or_else(|| panic!("exchange has no {key:?}: {e}"))
}

#[test]
fn curl_keep_alive_through_shared_libssl_started_after_the_trace() {
    let standin = StandIn::start();
    standin.throttle_models(&["claude-opus-*"]);
    let trace = Trace::start(&["--binary", LIBSSL]);
    // One curl, three requests on one connection: 200, 429 (throttled model), 200.
    let mut client = curl(
        &standin,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "X-Claude-Code-Session-Id: 11111111-2222-3333-4444-555555555555",
            "-d",
            r#"{"model":"claude-haiku-4-5","max_tokens":8,"messages":[]}"#,
            "{base}/v1/messages?beta=true",
            "--next",
            "-sk",
            "-o",
            "/dev/null",
            "-H",
            &format!("x-api-key: {CANARY_KEY}"),
            "-X",
            "POST",
            "-d",
            r#"{"model":"claude-opus-4-8","max_tokens":8,"messages":[]}"#,
            "{base}/v1/messages",
            "--next",
            "-sk",
            "-o",
            "/dev/null",
            "{base}/v1/models",
        ],
    );
    let pid = client.pid();
    let seen = trace.wait_for(pid, 3, WAIT, "three curl exchanges", |_| true);
    client.wait_for_line(0, WAIT, "curl to finish", |_| true);
    assert_eq!(field(&seen[0], "method"), "POST");
    assert_eq!(field(&seen[0], "path"), "/v1/messages?beta=true");
    assert_eq!(field(&seen[0], "status"), 200);
    assert_eq!(field(&seen[0], "model"), "claude-haiku-4-5");
    assert_eq!(
        field(&seen[0], "session_id"),
        "11111111-2222-3333-4444-555555555555"
    );
    assert!(
        field(&seen[0], "request_id")
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))
    );
    assert_eq!(field(&seen[1], "status"), 429);
    assert_eq!(field(&seen[1], "model"), "claude-opus-4-8");
    assert_eq!(field(&seen[1], "should_retry"), true);
    assert_eq!(
        (
            field(&seen[2], "method"),
            field(&seen[2], "path"),
            field(&seen[2], "status")
        ),
        (
            &Value::from("GET"),
            &Value::from("/v1/models"),
            &Value::from(200)
        )
    );
    // Keep-alive: one connection carried all three.
    assert!(
        seen.iter().all(|e| e["conn"] == seen[0]["conn"]),
        "expected one connection: {seen:?}"
    );
    for e in &seen {
        assert_eq!(field(e, "comm"), "curl");
        assert!(field(e, "latency_ms").is_u64());
        for key in ["ts", "tid", "exe", "request_id", "session_id", "model"] {
            assert!(e.get(key).is_some(), "key {key} missing: {e}");
        }
    }
    // The request ids are the stand-in's own.
    let log = standin.log();
    for e in &seen {
        assert!(
            log.iter()
                .any(|l| Some(l.request_id.as_str()) == e["request_id"].as_str()),
            "{e} not in the stand-in's log"
        );
    }
}

#[test]
fn node_fetch_by_pid_started_before_the_trace_with_401_and_429() {
    let standin = StandIn::start();
    standin.throttle_models(&["claude-sonnet-*"]);
    standin.latch_session("node-latched-session");
    let script = r#"
        const base = process.argv[1];
        const post = (model, session) => fetch(base + '/v1/messages?beta=true', { method: 'POST',
            headers: { 'content-type': 'application/json', 'x-api-key': process.env.KEY, 'authorization': 'Bearer ' + process.env.TOKEN,
                       'X-Claude-Code-Session-Id': session },
            body: JSON.stringify({ model, max_tokens: 8, stream: false, messages: [{ role: 'user', content: 'a secret prompt' }] }) })
            .then(async r => { await r.arrayBuffer(); return r.status; });
        process.stdin.once('data', async () => {
            const out = [];
            out.push(await post('claude-haiku-4-5', 'node-ok-session'));
            out.push(await post('claude-sonnet-4-6', 'node-ok-session'));
            out.push(await post('claude-haiku-4-5', 'node-latched-session'));
            console.log(JSON.stringify(out));
        });
    "#;
    let mut command = Command::new(deps::node());
    command
        .args(["-e", script, &standin.base_url()])
        .env("KEY", CANARY_KEY)
        .env("TOKEN", CANARY_TOKEN)
        .env("NODE_TLS_REJECT_UNAUTHORIZED", "0");
    let mut node = ChildGuard::spawn("node", &mut command);
    let pid = node.pid();
    let trace = Trace::start(&["--pid", &pid.to_string()]);
    node.write_line("go");
    let (_, statuses) = node.wait_for_line(0, WAIT, "node's statuses", |l| l.starts_with('['));
    assert_eq!(statuses, "[200,429,401]");
    let seen = trace.wait_for(pid, 3, WAIT, "three node exchanges", |e| {
        e["path"] == "/v1/messages?beta=true"
    });
    let summary: Vec<(Value, Value, Value)> = seen
        .iter()
        .map(|e| {
            (
                e["status"].clone(),
                e["model"].clone(),
                e["session_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                200.into(),
                "claude-haiku-4-5".into(),
                "node-ok-session".into()
            ),
            (
                429.into(),
                "claude-sonnet-4-6".into(),
                "node-ok-session".into()
            ),
            (
                401.into(),
                "claude-haiku-4-5".into(),
                "node-latched-session".into()
            ),
        ]
    );
    assert!(
        seen.iter()
            .all(|e| e["comm"] == "node" && e["tid"].is_u64())
    );
    let (all, stderr) = trace.stop();
    let everything = format!("{all:?}\n{}", stderr.join("\n"));
    for secret in [CANARY_KEY, CANARY_TOKEN, "a secret prompt"] {
        assert!(
            !everything.contains(secret),
            "{secret:?} leaked into claude-watch's output"
        );
    }
}

#[test]
fn python_clients_concurrently_with_a_split_status_line_and_a_10mb_body() {
    let standin = StandIn::start();
    let script = r#"
import http.client, ssl, sys
ctx = ssl._create_unverified_context()
port = int(sys.argv[1]); paths = sys.argv[2:]
print('ready', flush=True)
sys.stdin.readline()
c = http.client.HTTPSConnection('127.0.0.1', port, context=ctx)
out = []
for p in paths:
    c.request('GET', p, headers={'x-api-key': 'sk-ant-api03-CANARYCANARY-7f3e9a1b2c4d'})
    r = c.getresponse(); body = r.read(); out.append((r.status, len(body)))
print(out, flush=True)
"#;
    let port = standin.api_port().to_string();
    let python = deps::python3();
    let mut big = gated(
        "python big",
        &python,
        &["-c", script, &port, "/bytes/10485760", "/v1/models"],
    );
    let mut small = gated(
        "python small",
        &python,
        &[
            "-c",
            script,
            &port,
            "/v1/models",
            "/v1/models",
            "/v1/models",
        ],
    );
    let trace = Trace::start(&[
        "--pid",
        &big.pid().to_string(),
        "--pid",
        &small.pid().to_string(),
    ]);
    standin.split_status(3, Duration::from_millis(150), 1);
    big.write_line("go");
    let (_, out) = big.wait_for_line(1, WAIT, "the big download", |l| l.starts_with('['));
    assert!(out.starts_with("[(200, 10485760), (200, "), "{out}");
    small.write_line("go");
    let (_, out) = small.wait_for_line(1, WAIT, "the small requests", |l| l.starts_with('['));
    assert!(out.starts_with("[(200,"), "{out}");
    let big_seen = trace.wait_for(big.pid(), 2, WAIT, "the big client's two exchanges", |_| {
        true
    });
    assert_eq!(big_seen[0]["path"], "/bytes/10485760");
    assert_eq!(
        big_seen[0]["status"], 200,
        "the split status line was read wrong: {:?}",
        big_seen[0]
    );
    assert_eq!(big_seen[1]["path"], "/v1/models");
    // The second answer on the same connection, after the 10 MB body whose reads were
    // skipped at their entry: the next request looked for its head again.
    assert_eq!(big_seen[1]["status"], 200, "{:?}", big_seen[1]);
    let small_seen = trace.wait_for(
        small.pid(),
        3,
        WAIT,
        "the small client's three exchanges",
        |_| true,
    );
    assert!(
        small_seen
            .iter()
            .all(|e| e["status"] == 200
                && e["comm"].as_str().is_some_and(|c| c.starts_with("python")))
    );
    let (all, stderr) = trace.stop();
    assert_eq!(
        all.len(),
        5,
        "only these two processes were traced: {all:?}"
    );
    let c = counters(&stderr);
    // Five requests, five responses, the status line's two extra pieces: the 10 MB body
    // (hundreds of reads) stayed in the kernel.
    assert!(
        c.sent <= 14,
        "the kernel sent {} records for 5 exchanges: {c:?}",
        c.sent
    );
    assert!(
        c.skipped >= 100,
        "the 10 MB body should have been hundreds of skipped reads: {c:?}"
    );
    // After its status line and headers (forwarded, in pieces), the body's reads cost one
    // lookup at their entry: nothing was kept for their return.
    assert!(
        c.body_reads >= 100 && c.body_reads <= c.skipped,
        "the 10 MB body's reads should have been skipped at their entry: {c:?}"
    );
    assert_eq!(c.lost, 0);
}

#[test]
fn garbage_over_tls_is_ignored_and_counted() {
    let standin = StandIn::start();
    // Raw TLS writes: binary junk, a request line with a bad version, an over-long line, then a
    // real request whose answer must still be read right.
    let script = r#"
import socket, ssl, sys
ctx = ssl._create_unverified_context()
port = int(sys.argv[1])
print('ready', flush=True)
sys.stdin.readline()
def conn():
    return ctx.wrap_socket(socket.create_connection(('127.0.0.1', port)), server_hostname='127.0.0.1')
s = conn(); s.sendall(bytes(range(256)) * 4); s.close()
s = conn(); s.sendall(b'GET /x HTTP/9.9\r\n\r\n'); s.settimeout(2)
try: s.recv(100)
except Exception: pass
s.close()
s = conn(); s.sendall(b'POST /' + b'a' * 6000); s.close()
s = conn(); s.sendall(b'GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
data = b''
while True:
    d = s.recv(65536)
    if not d: break
    data += d
print(data.split(b'\r\n')[0].decode(), flush=True)
"#;
    let mut client = gated(
        "python raw",
        &deps::python3(),
        &["-c", script, &standin.api_port().to_string()],
    );
    let trace = Trace::start(&["--pid", &client.pid().to_string()]);
    client.write_line("go");
    let (_, status_line) =
        client.wait_for_line(1, WAIT, "the real request's status line", |_| true);
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    let seen = trace.wait_for(client.pid(), 1, WAIT, "the real exchange", |e| {
        e["path"] == "/v1/models"
    });
    assert_eq!(seen[0]["status"], 200);
    std::thread::sleep(Duration::from_millis(300));
    let (all, stderr) = trace.stop();
    // Whatever the stand-in answered to the junk, no exchange claims a request it never got.
    for e in &all {
        assert!(
            e["path"] != "/x",
            "a bad request line became an exchange: {e}"
        );
        assert!((100..600).contains(&e["status"].as_u64().unwrap_or(0)));
    }
    let c = counters(&stderr);
    assert!(
        c.invalid >= 2,
        "the bad and the over-long request line should be counted: {c:?}"
    );
    assert!(
        c.skipped >= 1,
        "the binary junk should stay in the kernel: {c:?}"
    );
}

#[test]
fn clear_one_line_errors() {
    // A target without SSL functions.
    let out = watch::run(&["trace", "--binary", "/bin/true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "want one line, got:\n{err}");
    assert!(
        err.contains("/bin/true") && err.contains("SSL_write"),
        "{err}"
    );
    // A missing file and a missing process.
    let out = watch::run(&["trace", "--binary", "/nonexistent/libssl.so"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.lines().count() == 1 && err.contains("/nonexistent/libssl.so"),
        "{err}"
    );
    let out = watch::run(&["trace", "--pid", "999999999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.lines().count() == 1
            && err.contains("no process with pid 999999999"),
        "{err}"
    );
    // Nothing to trace.
    let out = watch::run(&["trace", "--ring-mib", "3", "--pid", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn without_privileges_one_line_says_so() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(watch::bin())
        .args(["trace", "--binary", LIBSSL])
        .output()
        .expect("setpriv runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "want one line, got:\n{err}");
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn without_bpf_in_the_kernel_one_line_says_so() {
    // A seccomp filter makes bpf(2) fail with ENOSYS, as on a kernel built without BPF.
    let mut command = Command::new(watch::bin());
    command.args(["trace", "--binary", LIBSSL]);
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe prctl calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            deny_bpf_syscall();
            Ok(())
        });
    }
    let out = command.output().expect("claude-watch runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "want one line, got:\n{err}");
    assert!(err.contains("does not support BPF"), "{err}");
}

/// Installs a seccomp filter: `bpf` (x86-64 syscall 321) returns ENOSYS, all else is allowed.
fn deny_bpf_syscall() {
    const NR_BPF: u32 = 321;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: NR_BPF,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: a valid filter program; prctl copies it.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        );
    }
}

#[test]
fn exchanges_of_other_processes_are_not_attributed_to_the_wrong_pid() {
    // Two concurrent curls through the same traced library: each exchange carries its own pid.
    let standin = StandIn::start();
    let trace = Trace::start(&["--binary", LIBSSL]);
    let mut a = curl(&standin, &["{base}/v1/models", "{base}/v1/models"]);
    let mut b = curl(
        &standin,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"model":"claude-haiku-4-5"}"#,
            "{base}/v1/messages",
        ],
    );
    a.wait_for_line(1, WAIT, "curl a", |_| true);
    b.wait_for_line(0, WAIT, "curl b", |_| true);
    let from_a = trace.wait_for(a.pid(), 2, WAIT, "curl a's exchanges", |_| true);
    let from_b = trace.wait_for(b.pid(), 1, WAIT, "curl b's exchange", |_| true);
    assert!(
        from_a.iter().all(|e| e["path"] == "/v1/models"),
        "{from_a:?}"
    );
    assert_eq!(from_b[0]["path"], "/v1/messages");
    assert_eq!(from_b[0]["model"], "claude-haiku-4-5");
    wait_until(Duration::from_secs(1), "no stray exchange", || Some(()));
    assert_eq!(trace.exchanges_of(a.pid()).len(), 2);
}

/// A node `script` (given the stand-in's port and the canary key) that prints `ready`, traced by
/// pid from then on, and told to go.
fn node_traced(standin: &StandIn, script: &str) -> (ChildGuard, Trace) {
    let mut command = Command::new(deps::node());
    command
        .args(["-e", script, &standin.api_port().to_string()])
        .env("KEY", CANARY_KEY);
    let mut node = ChildGuard::spawn("node https", &mut command);
    node.wait_for_line(0, WAIT, "node to start", |l| l == "ready");
    let trace = Trace::start(&["--pid", &node.pid().to_string()]);
    node.write_line("go");
    (node, trace)
}

#[test]
fn a_body_after_headers_written_alone_is_copied_only_as_far_as_its_start() {
    // node's http writes the headers alone when flushed; the body follows in its own write,
    // of which the kernel copies only `BODY_COPY_MAX` bytes: the model at the body's start is
    // seen, one behind 1,000 bytes of other fields is not (the prompt stays in the kernel).
    let standin = StandIn::start();
    let script = r#"
        const https = require('https');
        const post = (first) => new Promise((ok, fail) => {
            const fields = first ? { model: 'claude-haiku-4-5', max_tokens: 8, messages: [], pad: 'x'.repeat(1000) }
                                 : { pad: 'x'.repeat(1000), model: 'claude-sonnet-4-6', max_tokens: 8, messages: [] };
            const body = JSON.stringify(fields);
            const req = https.request({ host: '127.0.0.1', port: Number(process.argv[1]), path: '/v1/messages',
                method: 'POST', rejectUnauthorized: false, agent: false,
                headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body),
                           'x-api-key': process.env.KEY } },
                (res) => { res.resume(); res.on('end', () => ok(res.statusCode)); });
            req.on('error', fail);
            req.flushHeaders();
            setTimeout(() => req.end(body), 100);
        });
        console.log('ready');
        process.stdin.once('data', async () => {
            const out = [await post(true), await post(false)];
            console.log(JSON.stringify(out));
        });
    "#;
    let (mut node, trace) = node_traced(&standin, script);
    node.wait_for_line(1, WAIT, "the two answers", |l| l == "[200,200]");
    let seen = trace.wait_for(node.pid(), 2, WAIT, "two exchanges", |e| {
        e["path"] == "/v1/messages"
    });
    let models: Vec<&Value> = seen.iter().map(|e| &e["model"]).collect();
    assert_eq!(models, [&Value::from("claude-haiku-4-5"), &Value::Null]);
    // Both bodies carried their model: the stand-in read each.
    let sent: Vec<Option<String>> = standin.log().into_iter().map(|l| l.model).collect();
    assert_eq!(
        sent,
        [
            Some("claude-haiku-4-5".to_owned()),
            Some("claude-sonnet-4-6".to_owned())
        ]
    );
}

#[test]
fn node_https_keep_alive_pairs_each_response_with_its_own_request() {
    // node's https module writes the first request while the handshake is still running:
    // SSL_write fails and is retried with the same buffer. Each attempt reaches the probe.
    let standin = StandIn::start();
    let script = r#"
        const https = require('https');
        const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
        const get = (path) => new Promise((ok, fail) => https.get(
            { host: '127.0.0.1', port: Number(process.argv[1]), path, agent, rejectUnauthorized: false,
              headers: { 'x-api-key': process.env.KEY } },
            (res) => { res.resume(); res.on('end', () => ok(res.statusCode)); }).on('error', fail));
        console.log('ready');
        process.stdin.once('data', async () => {
            const out = [];
            for (const p of ['/v1/models', '/bytes/10', '/bytes/20', '/bytes/30']) out.push(await get(p));
            console.log(JSON.stringify(out));
            agent.destroy();
        });
    "#;
    let (mut node, trace) = node_traced(&standin, script);
    node.wait_for_line(1, WAIT, "the four answers", |l| l == "[200,200,200,200]");
    let seen = trace.wait_for(node.pid(), 4, WAIT, "four exchanges", |_| true);
    let paths: Vec<&str> = seen.iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(paths, ["/v1/models", "/bytes/10", "/bytes/20", "/bytes/30"]);
    let log = standin.log();
    for e in &seen {
        let answered = log
            .iter()
            .find(|l| Some(l.request_id.as_str()) == e["request_id"].as_str())
            .expect("a stand-in request id");
        assert_eq!(
            Some(answered.path.as_str()),
            e["path"].as_str(),
            "response paired with another request: {e}"
        );
    }
}

#[test]
fn a_process_in_another_mount_namespace_is_reached_through_its_root() {
    // node copied onto a tmpfs only its own mount namespace sees: the host has no such path.
    let standin = StandIn::start();
    let script = r#"
        const https = require('https');
        console.log('ready ' + process.execPath);
        process.stdin.once('data', () => https.get({ host: '127.0.0.1', port: Number(process.argv[1]), path: '/v1/models',
            rejectUnauthorized: false }, (res) => { res.resume(); res.on('end', () => console.log('status ' + res.statusCode)); }));
    "#;
    let inner = format!(
        "mount -t tmpfs tmpfs /mnt && cp {} /mnt/node-private && exec /mnt/node-private -e \"$0\" \"$1\"",
        deps::node().display()
    );
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &inner,
        script,
        &standin.api_port().to_string(),
    ]);
    let mut node = ChildGuard::spawn("node in its own mount namespace", &mut command);
    let (_, ready) = node.wait_for_line(0, WAIT, "node to start", |l| l.starts_with("ready "));
    assert_eq!(ready, "ready /mnt/node-private");
    assert!(
        !std::path::Path::new("/mnt/node-private").exists(),
        "the host must not see the private copy"
    );
    let trace = Trace::start(&["--pid", &node.pid().to_string()]);
    assert!(
        trace
            .stderr()
            .iter()
            .any(|l| l.contains(&format!("/proc/{}/root/mnt/node-private", node.pid()))),
        "{:?}",
        trace.stderr()
    );
    node.write_line("go");
    node.wait_for_line(1, WAIT, "the answer", |l| l == "status 200");
    let seen = trace.wait_for(node.pid(), 1, WAIT, "the exchange", |_| true);
    assert_eq!(
        (seen[0]["path"].as_str(), seen[0]["status"].as_u64()),
        (Some("/v1/models"), Some(200))
    );
}

/// The exec race of issue 14: a file is located from one descriptor and attached through
/// `/proc/self/fd/N` of that descriptor, so swapping what its path names between the locate and
/// the attach cannot move the probes (placed at offsets computed for the first file) into the
/// second one. Shown with two copies of libssl: the path is swapped after the locate, and only
/// curl loading the opened copy hits the probes.
#[test]
fn the_attach_goes_to_the_opened_file_even_when_its_path_is_swapped() {
    use claude_watch::capture::{Probes, targets};
    let standin = StandIn::start();
    let dir = std::env::temp_dir().join(format!("cw-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["opened", "kept", "other"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    let opened = dir.join("opened/libssl.so.3");
    std::fs::copy(LIBSSL, &opened).expect("copy");
    std::fs::hard_link(&opened, dir.join("kept/libssl.so.3")).expect("link");
    std::fs::copy(LIBSSL, dir.join("other/libssl.so.3")).expect("copy");

    let target = targets::binary(&opened).expect("locate the opened copy");
    // Swap: the path now names the other copy (same bytes, another inode).
    std::fs::rename(dir.join("other/libssl.so.3"), &opened).expect("swap");
    let mut probes = Probes::load(claude_watch::capture::Settings {
        ring_bytes: 1 << 20,
        budget: None,
        ..Default::default()
    })
    .expect("load");
    assert!(
        probes
            .attach(&target, std::process::id(), 0)
            .expect("attach")
    );
    let hits = |probes: &Probes| {
        let s = probes.stats();
        s.sent + s.skipped
    };
    let run = |lib_dir: &std::path::Path| {
        let mut command = Command::new("curl");
        command
            .env("LD_LIBRARY_PATH", lib_dir)
            .args([
                "-sk",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\n",
            ])
            .arg(format!("{}/v1/models", standin.base_url()));
        let mut child = ChildGuard::spawn("curl", &mut command);
        child.wait_for_line(0, WAIT, "curl's answer", |l| l == "200");
    };
    run(&dir.join("opened"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        hits(&probes),
        0,
        "curl loading the file now at the path must not hit probes meant for the opened one"
    );
    run(&dir.join("kept"));
    wait_until(WAIT, "the opened copy's probes to fire", || {
        (hits(&probes) > 0).then_some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_wakeup_policy_sees_every_exchange_with_its_status() {
    // `errors` (the default) wakes the reader only for a response that is not 1xx-3xx,
    // `responses` for each response, `timer` for none: whatever waits in the ring must still
    // come out, complete and in order, on the reader's timer.
    let standin = StandIn::start();
    standin.throttle_models(&["claude-sonnet-*"]);
    standin.latch_session("wake-latched-session");
    let script = r#"
        const base = process.argv[1];
        const post = (model, session) => fetch(base + '/v1/messages?beta=true', { method: 'POST',
            headers: { 'content-type': 'application/json', 'x-api-key': process.env.KEY,
                       'X-Claude-Code-Session-Id': session },
            body: JSON.stringify({ model, max_tokens: 8, stream: false, messages: [{ role: 'user', content: 'hi' }] }) })
            .then(async r => { await r.arrayBuffer(); return r.status; });
        console.log('ready');
        process.stdin.once('data', async () => {
            const out = [];
            out.push(await post('claude-haiku-4-5', 'wake-ok-session'));
            out.push(await post('claude-sonnet-4-6', 'wake-ok-session'));
            out.push(await post('claude-haiku-4-5', 'wake-latched-session'));
            out.push(await post('claude-haiku-4-5', 'wake-ok-session'));
            console.log(JSON.stringify(out));
        });
    "#;
    for policy in ["errors", "responses", "timer"] {
        let mut command = Command::new(deps::node());
        command
            .args(["-e", script, &standin.base_url()])
            .env("KEY", CANARY_KEY)
            .env("NODE_TLS_REJECT_UNAUTHORIZED", "0");
        let mut node = ChildGuard::spawn("node", &mut command);
        node.wait_for_line(0, WAIT, "node to start", |l| l == "ready");
        let pid = node.pid();
        let trace = Trace::start(&["--pid", &pid.to_string(), "--wakeup", policy]);
        node.write_line("go");
        let (_, statuses) = node.wait_for_line(1, WAIT, "node's statuses", |l| l.starts_with('['));
        assert_eq!(statuses, "[200,429,401,200]", "{policy}");
        let seen = trace.wait_for(pid, 4, WAIT, "four exchanges", |e| {
            e["path"] == "/v1/messages?beta=true"
        });
        let summary: Vec<(Value, Value)> = seen
            .iter()
            .map(|e| (e["status"].clone(), e["session_id"].clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (200.into(), "wake-ok-session".into()),
                (429.into(), "wake-ok-session".into()),
                (401.into(), "wake-latched-session".into()),
                (200.into(), "wake-ok-session".into()),
            ],
            "under --wakeup {policy}"
        );
        let (_, stderr) = trace.stop();
        let counters = counters(&stderr);
        assert_eq!(counters.lost, 0, "{policy}: {stderr:?}");
    }
}

/// #32: an exec of an image not judged yet reaches user space with the image's key and the
/// path it was exec'd by, and does not wake the reader (it rides the reader's timer); an image
/// judged to report at once wakes it; one judged not Claude Code stays in the kernel. The
/// reader is an edge-triggered epoll on the ring, as the daemon's: only a wake-up reports it.
#[test]
fn an_exec_not_judged_yet_carries_its_image_and_path_and_wakes_no_one() {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;

    use claude_ebpf_common::{ImageKey, verdict};
    use claude_watch::capture::images::Change;
    use claude_watch::capture::{Probes, btf, records};
    use claude_watch::discover::Exec;

    let mut probes = Probes::load(claude_watch::capture::Settings {
        ring_bytes: 1 << 20,
        ..Default::default()
    })
    .expect("load");
    assert!(
        probes.exec_filter(),
        "the exec filter is on (the kernel has BTF)"
    );
    probes
        .watch_processes()
        .expect("attach the process programs");
    let mut ring = probes.take_ring().expect("the ring");

    let dir = std::env::temp_dir().join(format!("cw-exec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let tool = dir.join("tool");
    std::fs::copy("/bin/true", &tool).expect("copy");
    let m = std::fs::metadata(&tool).expect("stat");
    let image = ImageKey {
        ino: m.ino(),
        size: m.size(),
        dev: btf::kernel_dev(m.dev()),
        pad: 0,
    };

    // SAFETY: plain epoll calls on descriptors this test owns.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0);
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 1,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, ring.as_raw_fd(), &raw mut event) },
        0
    );
    let woken = |timeout_ms: i32| {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: a buffer of one event, living across the call.
        unsafe { libc::epoll_wait(epoll, out.as_mut_ptr(), 1, timeout_ms) > 0 }
    };
    // The execs of `pid` in the ring, everything else drained.
    let mut execs_of = |pid: u32| {
        let mut execs = Vec::new();
        while let Some(item) = ring.next() {
            let record = records::decode(&item).expect("a whole record");
            if record.header.pid == pid && record.header.kind == claude_ebpf_common::kind::EXEC {
                execs.push(Exec::of(&record));
            }
        }
        execs
    };
    let run = || {
        let mut child = Command::new(&tool).spawn().expect("run the tool");
        let pid = child.id();
        assert!(child.wait().expect("wait").success());
        pid
    };
    execs_of(0);
    woken(0);

    // Not judged yet: sent, not woken, with its key and path.
    let pid = run();
    assert!(
        !woken(300),
        "an exec of an image not judged yet woke the reader"
    );
    assert_eq!(
        execs_of(pid),
        [Some(Exec {
            image,
            path: Some(tool.clone()),
            uid: 0
        })],
        "the exec record carries the image's key and path"
    );

    // To report at once: sent, and woken.
    probes.change_image(Change::Add(image, verdict::REPORT_NOW));
    woken(0);
    let pid = run();
    assert!(
        woken(2000),
        "an exec of an image to report at once did not wake the reader"
    );
    assert_eq!(execs_of(pid).len(), 1);

    // Not Claude Code: kept in the kernel.
    probes.change_image(Change::Add(image, verdict::NOT_CLAUDE));
    let filtered = probes.stats().execs_filtered;
    let pid = run();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        execs_of(pid).is_empty(),
        "an exec of an image judged not Claude Code was sent"
    );
    assert!(probes.stats().execs_filtered > filtered);
    // SAFETY: the test's own descriptor.
    unsafe { libc::close(epoll) };
    let _ = std::fs::remove_dir_all(&dir);
}
