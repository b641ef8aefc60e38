//! The stand-in Anthropic API (`tests/standin/standin.py`) and its control client.
//!
//! [`StandIn::start`] runs the server on 127.0.0.1 (HTTPS API port with a throw-away self-signed
//! certificate, plain-HTTP control port) and returns a guard that kills it on drop. Its methods
//! switch the failure modes the seed article describes: a session latch, an open upstream window,
//! a poisoned credential, a model-tier throttle and idle-wake.

use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::deps;
use crate::process::ChildGuard;

/// How long the server may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running stand-in server; killed (with its process group) on drop.
pub struct StandIn {
    child: ChildGuard,
    api_port: u16,
    control_port: u16,
}

/// One request the stand-in answered, as `GET /log` reports it (never credentials or bodies).
#[derive(Debug, Clone, Deserialize)]
pub struct LogEntry {
    /// Position in the log, from 0.
    pub index: usize,
    /// Unix time (seconds) the request arrived.
    pub time: f64,
    /// HTTP method.
    pub method: String,
    /// Request target, query included (e.g. `/v1/messages?beta=true`).
    pub path: String,
    /// The `X-Claude-Code-Session-Id` header, if sent.
    pub session: Option<String>,
    /// The identity failure modes key on: `session:<id>`, or `conn:<client port>` without one.
    pub identity: Option<String>,
    /// The `model` of a `/v1/messages` body.
    pub model: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Why a failure was answered: `latched`, `poisoned`, `throttled`.
    pub reason: Option<String>,
    /// The `request-id` header answered.
    pub request_id: String,
    /// The client's TCP port (one per connection).
    pub client_port: u16,
    /// The pid owning the client socket, when the server could resolve it.
    pub pid: Option<u32>,
    /// First 8 hex digits of the SHA-256 of the credential, if one was sent.
    pub credential: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
}

/// One client identity the stand-in has seen or was told to latch (`GET /sessions`).
#[derive(Debug, Clone, Deserialize)]
pub struct SessionInfo {
    /// `session:<id>` or `conn:<client port>`.
    pub identity: String,
    /// Whether every further request of this identity gets 401.
    pub latched: bool,
    /// `/v1/messages` requests seen from it.
    pub requests: u64,
}

impl StandIn {
    /// Starts a fresh stand-in and waits until it listens. Panics if it does not start.
    #[track_caller]
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A stand-in whose API is plain HTTP (a gateway on loopback): its [`Self::base_url`]
    /// says `https://`, use [`Self::plain_url`].
    #[track_caller]
    pub fn start_plain() -> Self {
        Self::start_with(&["--plain-api"])
    }

    #[track_caller]
    fn start_with(args: &[&str]) -> Self {
        let script = deps::assets_dir().join("standin/standin.py");
        let mut child = ChildGuard::spawn(
            "stand-in",
            Command::new(deps::python3())
                .arg("-u")
                .arg(&script)
                .args(args),
        );
        let (_, ready) = child.wait_for_line(0, START_TIMEOUT, "the stand-in's ready line", |l| {
            l.contains("\"ready\"")
        });
        let (api_port, control_port) =
            crate::shared::standin_ports(&ready).unwrap_or_else(|e| panic!("{e}"));
        StandIn {
            api_port,
            control_port,
            child,
        }
    }

    /// Pid of the server process (its process group id too).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The HTTPS API port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The plain-HTTP control port on 127.0.0.1.
    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    /// The value for `ANTHROPIC_BASE_URL`: `https://127.0.0.1:<api port>`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// `http://127.0.0.1:<api port>`, for a stand-in started with [`Self::start_plain`].
    pub fn plain_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Latches session `id`: from now on each of its requests gets 401 (until [`Self::reset`]).
    pub fn latch_session(&self, id: &str) {
        self.post("/latch", &json!({ "session": id }));
    }

    /// Latches whichever session makes the next `/v1/messages` request.
    pub fn latch_next(&self) {
        self.post("/latch", &json!({ "next": true }));
    }

    /// Latches every identity whose client socket belongs to process `pid` (for clients without a
    /// session id), including connections it opens later.
    pub fn latch_pid(&self, pid: u32) {
        self.post("/latch", &json!({ "pid": pid }));
    }

    /// A latch bound to the process, not to its session: every request from pid `pid` gets 401,
    /// while another process sending the same session id is answered normally (the model in
    /// which `claude respawn`, which keeps the session id, heals a latch).
    pub fn latch_process(&self, pid: u32) {
        self.post("/latch", &json!({ "process": pid }));
    }

    /// Latches the connection from client port `port` (clients without a session id).
    pub fn latch_client_port(&self, port: u16) {
        self.post("/latch", &json!({ "client_port": port }));
    }

    /// Heals session `id` (as if the upstream had forgotten it).
    pub fn unlatch_session(&self, id: &str) {
        self.post("/unlatch", &json!({ "session": id }));
    }

    /// Opens an upstream rejection window for `length`: a session first seen inside it latches
    /// forever (a restart into the window latches again). Sessions already known are spared.
    pub fn open_window(&self, length: Duration) {
        self.post(
            "/window",
            &json!({ "seconds": length.as_secs_f64(), "latch_existing": false }),
        );
    }

    /// Like [`Self::open_window`], but every session that makes a request inside the window
    /// latches, the already known ones too.
    pub fn open_window_for_all(&self, length: Duration) {
        self.post(
            "/window",
            &json!({ "seconds": length.as_secs_f64(), "latch_existing": true }),
        );
    }

    /// Every request carrying `credential` gets 401 until [`Self::clear_credential`].
    /// The server keeps it in memory only.
    pub fn poison_credential(&self, credential: &str) {
        self.post("/poison", &json!({ "credential": credential }));
    }

    /// Undoes [`Self::poison_credential`] for `credential`.
    pub fn clear_credential(&self, credential: &str) {
        self.post("/unpoison", &json!({ "credential": credential }));
    }

    /// `/v1/messages` for models matching any of `globs` (shell-style, e.g. `claude-opus-*`) get
    /// 429 `rate_limit_error`; an empty list lifts the throttle.
    pub fn throttle_models(&self, globs: &[&str]) {
        self.post("/throttle", &json!({ "models": globs }));
    }

    /// A session idle for longer than `after` latches on its next request; `None` turns it off.
    pub fn idle_wake(&self, after: Option<Duration>) {
        self.post(
            "/idle_wake",
            &json!({ "seconds": after.map(|d| d.as_secs_f64()) }),
        );
    }

    /// The status lines of the next `count` responses are written in `pieces` TLS writes,
    /// `delay` apart (for capture tests).
    pub fn split_status(&self, pieces: u32, delay: Duration, count: u32) {
        self.post(
            "/split_status",
            &json!({ "pieces": pieces, "delay_ms": delay.as_secs_f64() * 1000.0, "count": count }),
        );
    }

    /// Sets the text of successful answers.
    pub fn set_reply(&self, text: &str) {
        self.post("/reply", &json!({ "text": text }));
    }

    /// Turns every failure mode off and heals every latched session (the log is kept).
    pub fn reset(&self) {
        self.post("/reset", &json!({}));
    }

    /// The whole request log.
    pub fn log(&self) -> Vec<LogEntry> {
        self.log_since(0)
    }

    /// Whether the stand-in answered a request of `session` with `status` after `after_ms`
    /// (wall ms): how a test sees a new process's own answer confirm a recovery.
    pub fn answered(&self, session: &str, status: u16, after_ms: u64) -> bool {
        #[expect(clippy::cast_precision_loss, reason = "wall ms compared with seconds")]
        let after_s = after_ms as f64 / 1000.0;
        self.log().iter().any(|l| {
            l.session.as_deref() == Some(session) && l.status == status && l.time > after_s
        })
    }

    /// The request log from entry `index` on.
    pub fn log_since(&self, index: usize) -> Vec<LogEntry> {
        let value = self.control("GET", &format!("/log?since={index}"), None);
        serde_json::from_value(value).unwrap_or_else(|e| panic!("stand-in log is malformed: {e}"))
    }

    /// The identities the stand-in knows, with their latch state.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let value = self.control("GET", "/sessions", None);
        serde_json::from_value(value)
            .unwrap_or_else(|e| panic!("stand-in sessions are malformed: {e}"))
    }

    #[track_caller]
    fn post(&self, path: &str, body: &Value) {
        self.control("POST", path, Some(body));
    }

    /// One request to the control port (HTTP/1.1, `Connection: close`); panics unless it is 200.
    #[track_caller]
    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, payload) =
            crate::shared::standin_control(self.control_port, method, path, body)
                .unwrap_or_else(|e| panic!("stand-in control {method} {path}: {e}"));
        assert!(
            crate::shared::is_ok(&status),
            "stand-in control {method} {path} answered {status}: {payload}"
        );
        serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("stand-in control {method} {path}: body not JSON ({e})"))
    }
}

/// A throw-away self-signed certificate for 127.0.0.1 (`openssl req -x509`), written to `dir`:
/// its certificate and key files, for a test's own TLS server.
#[track_caller]
pub fn self_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
