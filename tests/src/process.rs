//! Child processes that cannot outlive the test: each runs in its own process group, gets
//! `SIGKILL` when the spawning thread dies (`PR_SET_PDEATHSIG`), and the whole group is killed and
//! reaped when its [`ChildGuard`] drops (also while unwinding from a panic).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many lines of a child's stderr are kept (the newest) for diagnostics.
const STDERR_KEPT: usize = 200;

/// Lines a child wrote to one of its streams, shared with the thread that reads them.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn push(&self, line: String, keep: Option<usize>) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.push(line);
        let excess = keep.map_or(0, |keep| lines.len().saturating_sub(keep));
        lines.drain(..excess);
        self.changed.notify_all();
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn read_lines(stream: impl Read + Send + 'static, into: Arc<Lines>, keep: Option<usize>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => into.push(line, keep),
                Err(_) => break,
            }
        }
    });
}

/// A running child process (and its process group) that is killed and reaped on drop.
///
/// Standard output is collected line by line (see [`ChildGuard::lines`]); the tail of standard
/// error is kept and printed only if the test is panicking. Standard input is a pipe the test may
/// write to ([`ChildGuard::stdin`]).
pub struct ChildGuard {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    reaped: bool,
}

impl ChildGuard {
    /// Spawns `command` as `name` (used in messages) in a new process group with piped stdio.
    ///
    /// Panics if the program cannot be started.
    #[track_caller]
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        crate::shared::lead_own_group(command);
        Self::spawn_piped(name, command)
    }

    /// As [`Self::spawn`], the child leading a new session without a controlling terminal
    /// (`setsid()`, as systemd starts a service; its session and process group ids are its
    /// pid), killed by the kernel if the test dies first.
    #[track_caller]
    pub fn spawn_session_leader(name: &str, command: &mut Command) -> Self {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: setsid and prctl are async-signal-safe and touch no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn_piped(name, command)
    }

    #[track_caller]
    fn spawn_piped(name: &str, command: &mut Command) -> Self {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        read_lines(
            child.stdout.take().expect("piped stdout"),
            stdout.clone(),
            None,
        );
        read_lines(
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
            Some(STDERR_KEPT),
        );
        ChildGuard {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            reaped: false,
        }
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child has written to stdout so far, one entry per line.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// The newest lines the child wrote to stderr.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// Writes `line` and a newline to the child's stdin. Panics if the pipe is closed.
    #[track_caller]
    pub fn write_line(&mut self, line: &str) {
        let name = &self.name;
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{name}: stdin already closed"));
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{name}: cannot write to stdin: {e}"));
    }

    /// Closes the child's stdin (end of file for the child).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until a stdout line at index `from` or later satisfies `matches`; returns its index
    /// and the line. Panics, naming `what`, after `timeout`, or if the child exits first.
    #[track_caller]
    pub fn wait_for_line(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        mut matches: impl FnMut(&str) -> bool,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        let mut seen = from;
        loop {
            {
                let lines = self.stdout.lines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((i, line)) = lines
                    .iter()
                    .enumerate()
                    .skip(seen)
                    .find(|(_, line)| matches(line))
                {
                    return (i, line.clone());
                }
                seen = seen.max(lines.len());
                let now = Instant::now();
                if now >= deadline {
                    panic!(
                        "{}: timed out after {timeout:?} waiting for {what}",
                        self.name
                    );
                }
                let wait = (deadline - now).min(Duration::from_millis(100));
                drop(self.stdout.changed.wait_timeout(lines, wait));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = true;
                std::thread::sleep(Duration::from_millis(100)); // let the reader drain
                if let Some((i, line)) = self
                    .stdout
                    .snapshot()
                    .into_iter()
                    .enumerate()
                    .skip(seen)
                    .find(|(_, line)| matches(line))
                {
                    return (i, line);
                }
                panic!(
                    "{}: exited ({status}) while waiting for {what}; stderr tail:\n{}",
                    self.name,
                    self.stderr_tail().join("\n")
                );
            }
        }
    }

    /// Whether the child has exited (it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        self.reaped |= exited;
        exited
    }

    /// Sends SIGTERM to the child alone and waits up to `timeout` for it to exit; panics if it
    /// does not.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain syscall on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = true;
                return status;
            }
            if Instant::now() >= deadline {
                panic!("{}: still running {timeout:?} after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the child's whole process group and reaps the child. Idempotent.
    pub fn kill(&mut self) {
        let pgid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain syscall; the group id is our own child's, which we have not reaped yet,
        // so it cannot have been reused.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        if !self.reaped {
            let _ = self.child.wait();
            self.reaped = true;
        }
        self.stdin = None;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let tail = self.stderr_tail();
            let shown = &tail[tail.len().saturating_sub(30)..];
            eprintln!(
                "--- {} (pid {}) stderr tail ---\n{}",
                self.name,
                self.child.id(),
                shown.join("\n")
            );
        }
    }
}

/// Pids of live processes whose process group is `pgid` (zombies excluded).
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised comm: state ppid pgrp ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
            state != Some("Z") && pgrp == Some(pgid)
        })
        .collect()
}

/// A scratch directory removed (recursively) on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a fresh directory under the system temp dir, its name starting with `prefix`.
    #[track_caller]
    pub fn new(prefix: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ScratchDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .is_some_and(|i| !s[i + 1..].trim_start().starts_with('Z'))
    })
}
