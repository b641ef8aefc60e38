//! Agents to watch: light node/Bun agents (`tests/agents/agent.mjs`) and the real Claude Code,
//! each a long-running process pointed at a [`StandIn`], killed with its process group on drop.
//!
//! Every agent runs with a cleared environment: only `PATH`, a scratch `HOME`, the stand-in's
//! base URL and a fake key, so nothing can reach beyond 127.0.0.1.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::deps::{self, Bun, ClaudeCode};
use crate::process::{ChildGuard, ScratchDir};
use crate::standin::StandIn;
use crate::testbed::Testbed;
use crate::users::TestUser;

/// A fake credential in the shape of an Anthropic API key.
pub const FAKE_API_KEY: &str = "sk-ant-api03-test-claude-watch-0000000000";

/// How long an agent may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment every agent gets: loopback-only API, no telemetry, self-signed TLS accepted.
pub fn base_env(
    standin: &StandIn,
    home: &ScratchDir,
    api_key: &str,
) -> Vec<(&'static str, OsString)> {
    vec![
        (
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        ),
        ("HOME", home.path().as_os_str().to_owned()),
        ("ANTHROPIC_BASE_URL", standin.base_url().into()),
        ("ANTHROPIC_API_KEY", api_key.into()),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0".into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("NO_COLOR", "1".into()),
    ]
}

/// The runtime a light agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The system `node`.
    Node,
    /// A pinned Bun build.
    Bun(Bun),
}

/// Settings of a light agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Model asked for on every turn.
    pub model: String,
    /// Pause between successful turns.
    pub interval: Duration,
    /// Multiplier on Claude-Code-like retry delays (0.6, 1.1, 2, 4.7, 8.8, 20 s, capped).
    pub backoff_scale: f64,
    /// Credential sent as `x-api-key`.
    pub api_key: String,
    /// Session id to use; a fresh UUID when `None`.
    pub session_id: Option<String>,
    /// Run the script installed as `@anthropic-ai/claude-code/cli.js` with a `claude-cli`
    /// User-Agent, so claude-watch's discovery takes the agent for a Claude Code instance.
    pub as_claude: bool,
}

impl AgentConfig {
    /// A light agent asking for `claude-haiku-4-5`, taken for Claude Code (`as_claude`).
    #[must_use]
    pub fn haiku_as_claude() -> Self {
        Self {
            model: "claude-haiku-4-5".into(),
            as_claude: true,
            ..Self::default()
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            model: "claude-opus-4-8".into(),
            interval: Duration::from_millis(300),
            backoff_scale: 0.1,
            api_key: FAKE_API_KEY.into(),
            session_id: None,
            as_claude: false,
        }
    }
}

/// One answer a light agent got (one stdout line of `agent.mjs`).
#[derive(Debug, Clone, Deserialize)]
pub struct AgentResponse {
    /// HTTP status.
    pub status: u16,
    /// The `request-id` header.
    pub request_id: Option<String>,
    /// The model asked for.
    pub model: String,
    /// The agent's session id.
    pub session: String,
    /// Turn number, from 1.
    pub turn: u64,
    /// Retry number within the turn, from 0.
    pub attempt: u64,
    /// The streamed answer text (200 only).
    pub text: Option<String>,
    /// Whether the stream ended with `message_stop` (200 only).
    pub complete: Option<bool>,
    /// `error.type` of an error body.
    pub error_type: Option<String>,
}

/// A light agent process (node or Bun running `agent.mjs`).
pub struct Agent {
    child: ChildGuard,
    session: String,
    _home: ScratchDir,
}

impl Agent {
    /// Starts a light agent against `standin` and waits for its start line.
    #[track_caller]
    pub fn start(standin: &StandIn, runtime: Runtime, config: &AgentConfig) -> Self {
        let program = match runtime {
            Runtime::Node => deps::node(),
            Runtime::Bun(build) => build.path(),
        };
        Self::start_with_program(standin, &program, config)
    }

    /// Starts a light agent on node as the unprivileged `user` (through `setpriv`), its home
    /// owned by that user.
    #[track_caller]
    pub fn start_as(
        standin: &StandIn,
        user: &crate::users::TestUser,
        config: &AgentConfig,
    ) -> Self {
        Self::start_inner(standin, &deps::node(), config, Some(user))
    }

    /// Starts a light agent run by `program` (node, or any Bun executable, whatever its name).
    #[track_caller]
    pub fn start_with_program(
        standin: &StandIn,
        program: &std::path::Path,
        config: &AgentConfig,
    ) -> Self {
        Self::start_inner(standin, program, config, None)
    }

    #[track_caller]
    fn start_inner(
        standin: &StandIn,
        program: &std::path::Path,
        config: &AgentConfig,
        user: Option<&crate::users::TestUser>,
    ) -> Self {
        let home = ScratchDir::new("claude-watch-agent");
        let script = agent_script(home.path(), config.as_claude);
        let mut command = match user {
            Some(user) => {
                user.chown(home.path());
                let mut c = Command::new("setpriv");
                c.args(user.setpriv_args()).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .arg(script)
            .env_clear()
            .envs(base_env(standin, &home, &config.api_key))
            .envs(agent_env(config))
            .current_dir(home.path());
        let mut child = ChildGuard::spawn(&format!("agent ({})", program.display()), &mut command);
        let (_, start) = child.wait_for_line(0, START_TIMEOUT, "the agent's start line", |l| {
            l.contains("\"start\"")
        });
        let start: Value = serde_json::from_str(&start).expect("agent start line is JSON");
        let session = start["session"]
            .as_str()
            .expect("start line has a session")
            .to_owned();
        Agent {
            child,
            session,
            _home: home,
        }
    }

    /// The agent's pid (its process group id too).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The session id it sends as `X-Claude-Code-Session-Id`.
    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// Every response the agent has reported so far, oldest first.
    pub fn responses(&self) -> Vec<AgentResponse> {
        self.child
            .lines()
            .iter()
            .filter(|l| l.contains("\"response\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the `count`-th response (counting from 1 over all responses) satisfying
    /// `matches` arrives, and returns it. Panics, naming `what`, after `timeout`.
    #[track_caller]
    pub fn wait_for_responses(
        &self,
        count: usize,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&AgentResponse) -> bool,
    ) -> AgentResponse {
        crate::wait::wait_until(timeout, what, || {
            self.responses()
                .into_iter()
                .filter(|r| matches(r))
                .nth(count.saturating_sub(1))
        })
    }

    /// Kills the agent's process group now (as a crash or a supervisor would).
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

/// The agent script to run: `agent.mjs` itself, or (for `as_claude`) a copy installed under
/// `dir` as npm's `@anthropic-ai/claude-code/cli.js` (an ES module package, like the real one).
#[track_caller]
pub fn agent_script(dir: &std::path::Path, as_claude: bool) -> std::path::PathBuf {
    let script = deps::assets_dir().join("agents/agent.mjs");
    if !as_claude {
        return script;
    }
    claude_code_package(dir, &std::fs::read(&script).expect("read agent.mjs"))
}

/// `source` installed under `dir` as npm's `@anthropic-ai/claude-code/cli.js` (an ES module
/// package, like the real one), so discovery takes a node running it for Claude Code.
#[track_caller]
pub fn claude_code_package(dir: &std::path::Path, source: &[u8]) -> std::path::PathBuf {
    let package = dir.join("node_modules/@anthropic-ai/claude-code");
    std::fs::create_dir_all(&package).expect("create the fake claude-code package");
    std::fs::write(
        package.join("package.json"),
        r#"{"name":"@anthropic-ai/claude-code","type":"module"}"#,
    )
    .expect("write package.json");
    let cli = package.join("cli.js");
    std::fs::write(&cli, source).expect("write cli.js");
    cli
}

/// The agent's own environment variables for `config` (besides the base environment).
pub fn agent_env(config: &AgentConfig) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ANTHROPIC_MODEL", config.model.clone()),
        ("AGENT_INTERVAL_MS", config.interval.as_millis().to_string()),
        ("AGENT_BACKOFF_SCALE", config.backoff_scale.to_string()),
    ];
    if let Some(id) = &config.session_id {
        env.push(("AGENT_SESSION_ID", id.clone()));
    }
    if config.as_claude {
        env.push((
            "AGENT_USER_AGENT",
            "claude-cli/0.0.0-agent (external, sdk-cli)".into(),
        ));
    }
    env
}

/// A systemd unit running a light agent against `standin` with `Restart=always`, its files under
/// `dir` (which must outlive the unit).
#[track_caller]
pub fn agent_unit(
    standin: &StandIn,
    runtime: Runtime,
    config: &AgentConfig,
    dir: &std::path::Path,
) -> String {
    let program = match runtime {
        Runtime::Node => deps::node(),
        Runtime::Bun(build) => build.path(),
    };
    let script = agent_script(dir, config.as_claude);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("create the unit's HOME");
    let mut env = unit_env(standin, &home, &config.api_key);
    env.extend(
        agent_env(config)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    let environment = environment_lines(&env);
    format!(
        "[Unit]\nDescription=claude-watch test agent\n[Service]\nExecStart={} {}\nRestart=always\nRestartSec=200ms\nWorkingDirectory={}\n{environment}",
        program.display(),
        script.display(),
        home.display()
    )
}

/// A unit file running the real Claude Code `claude` as a headless agent against `standin`: a
/// turn (`text`) every `every_s` seconds on stream-json, `args` added to its command line (a
/// `--model`, say), `home` its `HOME` and working directory (its feeding script goes there).
pub fn claude_code_unit(
    standin: &StandIn,
    claude: &std::path::Path,
    args: &str,
    every_s: u32,
    home: &std::path::Path,
) -> String {
    std::fs::create_dir_all(home).expect("create the agent's HOME");
    let feed = home.join("feed.sh");
    std::fs::write(
        &feed,
        format!(
            "#!/bin/sh\nwhile :; do echo '{{\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":\"next step\"}}}}'; sleep {every_s}; done | {} -p {args} --input-format stream-json --output-format stream-json --verbose\n",
            claude.display()
        ),
    )
    .expect("write feed.sh");
    let environment = environment_lines(&unit_env(standin, home, FAKE_API_KEY));
    format!(
        "[Service]\nExecStart=/bin/sh {}\nRestart=always\nWorkingDirectory={}\n{environment}",
        feed.display(),
        home.display()
    )
}

/// The environment of an agent in a unit: loopback-only API, no telemetry, self-signed TLS
/// accepted (as [`base_env`], with the unit's `PATH`).
fn unit_env(standin: &StandIn, home: &std::path::Path, api_key: &str) -> Vec<(String, String)> {
    [
        ("HOME", home.display().to_string()),
        ("ANTHROPIC_BASE_URL", standin.base_url()),
        ("ANTHROPIC_API_KEY", api_key.to_owned()),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0".to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `Environment="K=V"` lines of a unit file.
fn environment_lines(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!("Environment=\"{k}={v}\"\n"))
        .collect()
}

/// Starts a light agent (taken for Claude Code, Node) as user unit `unit` of `user`'s
/// manager in `bed` (started with [`Testbed::start_user_manager`]); `dir` (its script and
/// `HOME`) is given to the user.
#[track_caller]
pub fn start_user_agent(
    bed: &Testbed,
    user: &TestUser,
    unit: &str,
    standin: &StandIn,
    dir: &std::path::Path,
) {
    let text = agent_unit(standin, Runtime::Node, &AgentConfig::haiku_as_claude(), dir);
    user.chown(dir);
    bed.add_user_unit(user, unit, &text);
    bed.user_daemon_reload(user);
    let out = bed.user_systemctl(user, &["start", unit]);
    assert!(
        out.status.success(),
        "start user unit {unit}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bed.user_log(user)
    );
}

/// The real Claude Code, kept alive across turns:
/// `claude -p --input-format stream-json --output-format stream-json --verbose`, fed turns on
/// stdin. It keeps one process and one session id for its whole life, like a fleet instance.
pub struct ClaudeAgent {
    child: ChildGuard,
    _home: ScratchDir,
}

/// The outcome of one turn of [`ClaudeAgent`] (its `{"type":"result"}` line).
#[derive(Debug, Clone)]
pub struct TurnResult {
    /// Whether Claude Code reported an error for the turn.
    pub is_error: bool,
    /// The answer text (or error text) Claude Code printed.
    pub result: String,
    /// Claude Code's session id.
    pub session_id: String,
}

/// The arguments that keep Claude Code alive across turns read from stdin.
pub const STREAM_ARGS: [&str; 6] = [
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
];

impl ClaudeAgent {
    /// Starts `release` against `standin` with credential `api_key`. It makes no request until
    /// the first [`Self::send_turn`].
    #[track_caller]
    pub fn start(standin: &StandIn, release: ClaudeCode, api_key: &str) -> Self {
        let (program, leading) = release.command();
        Self::start_program(standin, &program, &leading, api_key)
    }

    /// [`Self::start`] with extra environment variables (e.g. `CLAUDE_CODE_MAX_RETRIES`).
    #[track_caller]
    pub fn start_with_env(
        standin: &StandIn,
        release: ClaudeCode,
        api_key: &str,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let (program, leading) = release.command();
        Self::start_program_with_env(standin, &program, &leading, api_key, extra_env)
    }

    /// Starts the Claude Code at `program` (after `leading` arguments, e.g. a script for node),
    /// however it is installed, against `standin`.
    #[track_caller]
    pub fn start_program(
        standin: &StandIn,
        program: &std::path::Path,
        leading: &[PathBuf],
        api_key: &str,
    ) -> Self {
        Self::start_program_with_env(standin, program, leading, api_key, &[])
    }

    /// [`Self::start_program`] with extra environment variables.
    #[track_caller]
    pub fn start_program_with_env(
        standin: &StandIn,
        program: &std::path::Path,
        leading: &[PathBuf],
        api_key: &str,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let home = ScratchDir::new("claude-watch-claude");
        let mut command = Command::new(program);
        command
            .args(leading)
            .args(STREAM_ARGS)
            .env_clear()
            .envs(base_env(standin, &home, api_key))
            .envs(extra_env.iter().copied())
            .current_dir(home.path());
        Self::spawn(
            &format!("claude ({})", program.display()),
            &mut command,
            home,
        )
    }

    /// Runs `command` (already given its arguments and environment) as an agent driven with
    /// stream-json turns on stdin and `{"type":"result"}` lines on stdout: Claude Code itself,
    /// or a program around it (an Agent SDK driver, `docker run -i`). `home` lives as long as
    /// the agent.
    #[track_caller]
    pub fn spawn(name: &str, command: &mut Command, home: ScratchDir) -> Self {
        let child = ChildGuard::spawn(name, command);
        ClaudeAgent { child, _home: home }
    }

    /// The agent's scratch `HOME`.
    pub fn home(&self) -> &std::path::Path {
        self._home.path()
    }

    /// The agent's standard error so far (its newest lines).
    pub fn stderr(&self) -> Vec<String> {
        self.child.stderr_tail()
    }

    /// Claude Code's pid (its process group id too).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends one user turn; returns the stdout line index to wait from for its result.
    #[track_caller]
    pub fn send_turn(&mut self, text: &str) -> usize {
        let from = self.child.lines().len();
        let line = json!({ "type": "user", "message": { "role": "user", "content": text } });
        self.child.write_line(&line.to_string());
        from
    }

    /// Waits for the result of the turn sent when stdout had `from` lines.
    #[track_caller]
    pub fn wait_for_result(&mut self, from: usize, timeout: Duration) -> TurnResult {
        let (_, line) = self
            .child
            .wait_for_line(from, timeout, "a turn's result", |l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| v["type"] == "result")
            });
        let value: Value = serde_json::from_str(&line).expect("result line is JSON");
        TurnResult {
            is_error: value["is_error"].as_bool().unwrap_or(true),
            result: value["result"].as_str().unwrap_or_default().to_owned(),
            session_id: value["session_id"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// Stdout lines (stream-json) of `type` `system` and `subtype` `api_retry` so far: one per
    /// failed request Claude Code is about to retry, as `(attempt, error_status)`.
    pub fn api_retries(&self) -> Vec<(u64, u16)> {
        self.child
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "system" && v["subtype"] == "api_retry")
            .map(|v| {
                (
                    v["attempt"].as_u64().unwrap_or(0),
                    v["error_status"]
                        .as_u64()
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(0),
                )
            })
            .collect()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.has_exited()
    }
}
