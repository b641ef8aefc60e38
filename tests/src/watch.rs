//! Running the `claude-watch` binary under test: `trace` sessions whose JSON lines the test
//! reads, and one-shot invocations whose output the test inspects.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

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
        lost: number_after("lost"),
        invalid: number_after("ignored"),
    }
}
