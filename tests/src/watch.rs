//! Running the `claude-watch` binary under test: `trace` sessions whose JSON lines the test
//! reads, and one-shot invocations whose output the test inspects.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use claude_watch::detect::{Episode, EpisodeEnd};
use claude_watch::journal::{ActionKind, ActionRecord, Record};
use claude_watch::watch::status::InstanceView;
use serde_json::Value;

use crate::deps::workspace_root;
use crate::process::ChildGuard;
use crate::wait::wait_until;

/// Environment variable naming the `claude-watch` binary (`cargo xtask test` sets it).
pub const BIN_ENV: &str = "CLAUDE_WATCH_BIN";

/// How long probes may take to load and attach.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `claude-watch` binary: `$CLAUDE_WATCH_BIN`, or the release build in the workspace.
#[track_caller]
pub fn bin() -> PathBuf {
    let path = std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/claude-watch"));
    assert!(
        path.is_file(),
        "claude-watch binary not found at {} (run `cargo xtask test`, or set {BIN_ENV})",
        path.display()
    );
    path
}

/// Runs `claude-watch <args>` to completion.
#[track_caller]
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run claude-watch {args:?}: {e}"))
}

/// A running `claude-watch trace --json`, killed on drop.
pub struct Trace {
    child: ChildGuard,
}

impl Trace {
    /// Starts `claude-watch trace --json <args>` and waits until its probes are attached.
    #[track_caller]
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(bin());
        command.arg("trace").arg("--json").args(args);
        let child = ChildGuard::spawn("claude-watch trace", &mut command);
        let mut trace = Self { child };
        wait_until(
            READY_TIMEOUT,
            "claude-watch trace to attach its probes",
            || {
                if trace.child.has_exited() {
                    panic!(
                        "claude-watch trace exited early:\n{}",
                        trace.child.stderr_tail().join("\n")
                    );
                }
                trace
                    .stderr()
                    .iter()
                    .any(|l| l.contains("claude-watch: tracing"))
                    .then_some(())
            },
        );
        trace
    }

    /// The pid of the trace process.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Every exchange printed so far.
    #[track_caller]
    pub fn exchanges(&self) -> Vec<Value> {
        self.child
            .lines()
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("trace printed a line that is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Exchanges of one process.
    pub fn exchanges_of(&self, pid: u32) -> Vec<Value> {
        self.exchanges()
            .into_iter()
            .filter(|e| e["pid"] == pid)
            .collect()
    }

    /// Waits until `count` exchanges of `pid` satisfy `matches`; returns them in order.
    #[track_caller]
    pub fn wait_for(
        &self,
        pid: u32,
        count: usize,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        wait_until(timeout, what, || {
            let found: Vec<Value> = self
                .exchanges_of(pid)
                .into_iter()
                .filter(&matches)
                .collect();
            (found.len() >= count).then_some(found)
        })
    }

    /// Everything printed on stderr so far (its newest lines).
    pub fn stderr(&self) -> Vec<String> {
        self.child.stderr_tail()
    }

    /// Stops the trace with SIGTERM and returns its final stderr (with the counters line).
    #[track_caller]
    pub fn stop(mut self) -> (Vec<Value>, Vec<String>) {
        let status = self.child.terminate(Duration::from_secs(10));
        assert!(
            status.success(),
            "claude-watch trace exited with {status} on SIGTERM:\n{}",
            self.stderr().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
        (self.exchanges(), self.stderr())
    }
}

/// The kernel and user-space counters from the last line `trace` prints when it stops.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Heads the kernel sent.
    pub sent: u64,
    /// Buffers the kernel kept back.
    pub skipped: u64,
    /// Of those, reads of a response body skipped at their entry.
    pub body_reads: u64,
    /// Records lost.
    pub lost: u64,
    /// Records user space ignored as invalid.
    pub invalid: u64,
}

/// Parses `claude-watch: kernel sent A heads, skipped B other buffers, lost C; user space ignored D invalid, ...`.
#[track_caller]
pub fn counters(stderr: &[String]) -> Counters {
    let line = stderr
        .iter()
        .rev()
        .find(|l| l.contains("kernel sent"))
        .unwrap_or_else(|| panic!("no counters line in:\n{}", stderr.join("\n")));
    let number_after = |word: &str| -> u64 {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("no {word:?} in {line}"))
            + word.len();
        line[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {word:?} in {line}"))
    };
    Counters {
        sent: number_after("sent"),
        skipped: number_after("skipped"),
        body_reads: number_after("at their entry:"),
        lost: number_after("lost"),
        invalid: number_after("ignored"),
    }
}

/// A running `claude-watch daemon` with its own journal, state, control socket and config in a
/// scratch directory; killed on drop.
pub struct Daemon {
    child: ChildGuard,
    dir: crate::process::ScratchDir,
    metrics_port: Option<u16>,
}

impl Daemon {
    /// Starts the daemon with the scratch paths plus `extra` TOML (its own `[daemon]` keys go
    /// in `daemon_extra`), and waits until it watches.
    #[track_caller]
    pub fn start(daemon_extra: &str, extra: &str) -> Self {
        let dir = crate::process::ScratchDir::new("claude-watch-daemon");
        Self::start_in(dir, daemon_extra, extra)
    }

    /// Starts (or restarts) a daemon on an existing scratch directory (its journal and state
    /// carry over).
    #[track_caller]
    pub fn start_in(dir: crate::process::ScratchDir, daemon_extra: &str, extra: &str) -> Self {
        Self::start_with_env(dir, daemon_extra, extra, &[])
    }

    /// As [`Self::start_in`], with extra environment variables for the daemon.
    #[track_caller]
    pub fn start_with_env(
        dir: crate::process::ScratchDir,
        daemon_extra: &str,
        extra: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        Self::start_under(&[], dir, daemon_extra, extra, env)
    }

    /// As [`Self::start_with_env`], the daemon run through `prefix` (a program that execs its
    /// arguments, such as `setpriv --bounding-set ... --`), so that its pid is the daemon's.
    #[track_caller]
    pub fn start_under(
        prefix: &[&str],
        dir: crate::process::ScratchDir,
        daemon_extra: &str,
        extra: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        Self::launch(prefix, dir, daemon_extra, extra, env, false)
    }

    /// As [`Self::start_in`], the daemon started the way the packaged unit starts it: the
    /// leader of a session of its own without a controlling terminal (`setsid()`, stdio not a
    /// terminal), where opening a terminal without `O_NOCTTY` would make it the daemon's.
    #[track_caller]
    pub fn start_as_service(
        dir: crate::process::ScratchDir,
        daemon_extra: &str,
        extra: &str,
    ) -> Self {
        Self::launch(&[], dir, daemon_extra, extra, &[], true)
    }

    #[track_caller]
    fn launch(
        prefix: &[&str],
        dir: crate::process::ScratchDir,
        daemon_extra: &str,
        extra: &str,
        env: &[(&str, &std::ffi::OsStr)],
        session_leader: bool,
    ) -> Self {
        let metrics_port = daemon_extra.contains("metrics_listen").then(|| {
            daemon_extra
                .split("127.0.0.1:")
                .nth(1)
                .and_then(|p| p.split('"').next())
                .and_then(|p| p.parse().ok())
                .expect("metrics_listen = \"127.0.0.1:PORT\"")
        });
        let config = format!(
            "[daemon]\njournal = \"{d}/journal.jsonl\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\nlocate_cache = \"/var/cache/claude-watch/locate\"\n{daemon_extra}\n{extra}\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write config");
        let mut command = match prefix {
            [] => Command::new(bin()),
            [program, args @ ..] => {
                let mut command = Command::new(program);
                command.args(args).arg(bin());
                command
            }
        };
        command
            .arg("daemon")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, *v)));
        let child = if session_leader {
            ChildGuard::spawn_session_leader("claude-watch daemon", &mut command)
        } else {
            ChildGuard::spawn("claude-watch daemon", &mut command)
        };
        let mut daemon = Self {
            child,
            dir,
            metrics_port,
        };
        wait_until(READY_TIMEOUT, "the daemon to start watching", || {
            if daemon.child.has_exited() {
                panic!(
                    "claude-watch daemon exited early:\n{}",
                    daemon.child.stderr_tail().join("\n")
                );
            }
            daemon
                .log()
                .iter()
                .any(|l| l.contains("claude-watch is watching"))
                .then_some(())
        });
        daemon
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The scratch directory (journal, state, socket, config).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.path().join("journal.jsonl")
    }

    /// The daemon's log lines (stderr, newest kept).
    pub fn log(&self) -> Vec<String> {
        self.child.stderr_tail()
    }

    /// `claude-watch status --json`: one object per instance.
    #[track_caller]
    pub fn status(&self) -> Vec<Value> {
        let socket = self.dir.path().join("control.sock");
        let out = run(&[
            "status",
            "--json",
            "--socket",
            socket.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("status printed a line that is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// How long `claude-watch status --json` took to answer, or `None` when it had not
    /// answered within `limit` (it is killed then): a daemon whose event loop is stuck accepts
    /// the connection and never answers.
    #[track_caller]
    pub fn status_latency(&self, limit: Duration) -> Option<Duration> {
        let socket = self.dir.path().join("control.sock");
        let started = std::time::Instant::now();
        let mut child = Command::new(bin())
            .args(["status", "--json", "--socket"])
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run claude-watch status: {e}"));
        loop {
            if let Some(status) = child.try_wait().expect("wait for status") {
                assert!(status.success(), "status failed: {status}");
                return Some(started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The daemon's controlling terminal (`tty_nr`, field 7 of `/proc/<pid>/stat`; 0: none),
    /// `None` when it is gone.
    pub fn controlling_terminal(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(4)?.parse().ok()
    }

    /// Whether the daemon is still running (neither exited nor a zombie).
    pub fn running(&mut self) -> bool {
        !self.child.has_exited()
    }

    /// `claude-watch status` as text.
    #[track_caller]
    pub fn status_text(&self) -> String {
        let socket = self.dir.path().join("control.sock");
        let out = run(&["status", "--socket", socket.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The status of the instance that has `pid`.
    pub fn instance_of(&self, pid: u32) -> Option<Value> {
        self.status().into_iter().find(|i| {
            i["pids"]
                .as_array()
                .is_some_and(|p| p.contains(&Value::from(pid)))
        })
    }

    /// Waits until the instance named `name` satisfies `matches`; returns it.
    #[track_caller]
    pub fn wait_instance(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(timeout, what, || {
            self.status()
                .into_iter()
                .find(|i| i["name"] == name && matches(i))
        })
    }

    /// Every journal record, parsed (panics on a line that is not JSON).
    #[track_caller]
    pub fn journal(&self) -> Vec<Value> {
        read_journal(&self.journal_path())
    }

    /// The journal as the library reads it (rotated files included).
    #[track_caller]
    pub fn records(&self) -> Vec<claude_watch::journal::Record> {
        claude_watch::journal::read_records(&self.journal_path())
            .unwrap_or_else(|e| panic!("reading the journal: {e}"))
    }

    /// The journal's actions of `kind`, of every instance (the daemon watches the whole host:
    /// use [`Self::actions_of`] where another test's agent may act next to the test's own).
    #[track_caller]
    pub fn actions(&self, kind: ActionKind) -> Vec<ActionRecord> {
        self.records()
            .into_iter()
            .filter_map(|r| match r {
                Record::Action(a) if a.kind == kind => Some(a),
                _ => None,
            })
            .collect()
    }

    /// The journal's actions of `kind` on `instance`.
    #[track_caller]
    pub fn actions_of(&self, instance: &str, kind: ActionKind) -> Vec<ActionRecord> {
        let mut actions = self.actions(kind);
        actions.retain(|a| a.instance == instance);
        actions
    }

    /// The journal's restart actions, of every instance.
    #[track_caller]
    pub fn restarts(&self) -> Vec<ActionRecord> {
        self.actions(ActionKind::Restart)
    }

    /// Every episode snapshot in the journal, of every instance.
    #[track_caller]
    pub fn episodes(&self) -> Vec<Episode> {
        self.records()
            .into_iter()
            .filter_map(|r| match r {
                Record::Episode { episode, .. } => Some(episode),
                Record::Action(_) | Record::Throttle(_) | Record::Incident(_) => None,
            })
            .collect()
    }

    /// Every episode snapshot of `instance` in the journal.
    #[track_caller]
    pub fn episodes_of(&self, instance: &str) -> Vec<Episode> {
        let mut episodes = self.episodes();
        episodes.retain(|e| e.instance == instance);
        episodes
    }

    /// Waits until an episode (of `instance`, or of any instance with `None`) is journalled as
    /// closed with `end`; returns it.
    #[track_caller]
    pub fn wait_closed_episode(
        &self,
        instance: Option<&str>,
        end: EpisodeEnd,
        timeout: Duration,
    ) -> Episode {
        let what = match instance {
            Some(instance) => format!("an episode of {instance} closed as {end:?}"),
            None => format!("an episode closed as {end:?}"),
        };
        wait_until(timeout, &what, || {
            self.episodes()
                .into_iter()
                .find(|e| e.end == end && instance.is_none_or(|i| e.instance == i))
        })
    }

    /// Waits until a failed (refused) restart of `instance` is journalled; returns it.
    #[track_caller]
    pub fn wait_refused_restart(&self, instance: &str, timeout: Duration) -> ActionRecord {
        wait_until(timeout, &format!("a refused restart of {instance}"), || {
            self.actions_of(instance, ActionKind::Restart)
                .into_iter()
                .find(|a| !a.ok)
        })
    }

    /// `claude-watch status --json` read as the library's own type, one per instance.
    #[track_caller]
    pub fn instances(&self) -> Vec<InstanceView> {
        self.status()
            .into_iter()
            .map(|i| {
                serde_json::from_value(i.clone())
                    .unwrap_or_else(|e| panic!("status line is not an instance ({e}): {i}"))
            })
            .collect()
    }

    /// The status of instance `name`, when it is listed.
    #[track_caller]
    pub fn instance(&self, name: &str) -> Option<InstanceView> {
        self.instances().into_iter().find(|i| i.name == name)
    }

    /// The status of the instance that has `pid`, as the library's own type.
    #[track_caller]
    pub fn instance_with_pid(&self, pid: u32) -> Option<InstanceView> {
        self.instances().into_iter().find(|i| i.pids.contains(&pid))
    }

    /// Waits until instance `name` is listed and satisfies `matches`; returns it.
    #[track_caller]
    pub fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&InstanceView) -> bool,
    ) -> InstanceView {
        wait_until(timeout, what, || self.instance(name).filter(|i| matches(i)))
    }

    /// Recovery confirmed by the new process's own request: waits until instance `name` is
    /// healthy with a session other than `old_session`, and asserts that the stand-in answered
    /// that new session 200 after `since_ms`. Returns the instance's status then.
    #[track_caller]
    pub fn assert_recovered_by_new_session(
        &self,
        standin: &crate::standin::StandIn,
        name: &str,
        old_session: &str,
        since_ms: u64,
        timeout: Duration,
    ) -> InstanceView {
        let now = self.wait_for(name, timeout, "healthy with a new session", |i| {
            i.state == "healthy" && i.session_id.as_deref().is_some_and(|s| s != old_session)
        });
        let new_session = now.session_id.as_deref().expect("new session");
        assert!(
            standin.answered(new_session, 200, since_ms),
            "no 200 for the new session {new_session} of {name}: the new process's own answer must confirm the recovery"
        );
        now
    }

    /// `claude-watch episodes --journal <journal> --json`.
    #[track_caller]
    pub fn episodes_report(&self) -> Value {
        let out = run(&[
            "episodes",
            "--journal",
            self.journal_path().to_str().expect("utf-8"),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "episodes failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("episodes --json prints one JSON object")
    }

    /// Scrapes `/metrics`.
    #[track_caller]
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let port = self.metrics_port.expect("started with metrics_listen");
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits");
        // SAFETY: plain syscall on our own child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// SIGTERM, and waits for a clean exit; returns the scratch directory for a restart.
    #[track_caller]
    pub fn stop(mut self) -> crate::process::ScratchDir {
        let status = self.child.terminate(Duration::from_secs(15));
        assert!(
            status.success(),
            "the daemon exited with {status} on SIGTERM:\n{}",
            self.log().join("\n")
        );
        self.child.kill();
        self.dir
    }

    /// SIGKILL (a crash); returns the scratch directory for a restart.
    pub fn crash(mut self) -> crate::process::ScratchDir {
        self.child.kill();
        self.dir
    }
}

/// Reads a journal file: one JSON value per line.
#[track_caller]
pub fn read_journal(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("journal line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// A value of an unlabelled metric family in a `/metrics` text ([`Daemon::metrics`]).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for the daemon's metrics).
pub fn free_port() -> u16 {
    crate::shared::free_port().expect("a free port")
}
