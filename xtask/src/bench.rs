//! `cargo xtask bench`: what claude-watch costs the processes it watches, and how much it can
//! take, measured side by side on this machine. Prints a table and writes it to
//! `BENCHMARKS.md` (`--smoke`: a tiny run of every part, written to
//! `target/BENCHMARKS-smoke.md`, checking only that each part produces numbers).
//!
//! Parts:
//! 1. probe overhead on node clients (keep-alive request loop; long streamed response read in
//!    many small reads), each timed with no probes, with an empty-probe floor (bpftrace on the
//!    same functions), and with `claude-watch trace` attached; runs alternated;
//! 2. the same on a Bun client (BoringSSL found without symbols);
//! 3. pipeline capacity: exchanges/s from node raw-TLS clients, lost records counted, and a
//!    stalled consumer with a small ring to show loss is counted without a crash;
//! 4. capture-to-output latency of a 401 (probe → `trace --json` line);
//!
//!    4b. detector decision latency: `claude-watch daemon` watching light agents against the
//!    stand-in API, sessions latched and healed through its control API, p50/p99 read from the
//!    daemon's `claude_watch_detection_seconds` histogram;
//! 5. footprint of `claude-watch trace` with a fleet of node processes, idle then busy;
//! 6. locating SSL functions in the real Claude Code binary, cold and cached.
//!
//! Everything talks to 127.0.0.1 only: the server is `bench/server.mjs`, run from a private
//! copy of the node executable so the probes on `/usr/bin/node` never fire in it.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Sizes of one bench run.
#[derive(Clone, Debug)]
struct Plan {
    /// Alternated rounds of (none, floor, claude-watch) per client.
    rounds: usize,
    /// Requests in the request loop.
    requests: u32,
    /// SSE events in the streamed response.
    stream_events: u32,
    /// Bytes per SSE event.
    event_bytes: u32,
    /// Seconds each capacity step lasts.
    capacity_seconds: f64,
    /// Capacity steps: (`blast` client processes, connections each).
    capacity_steps: &'static [(u32, u32)],
    /// 401 responses timed for the capture latency.
    latency_count: u32,
    /// Pause between two 401 requests (ms).
    latency_gap_ms: u32,
    /// Light agents the daemon watches for the detector latency.
    detect_agents: usize,
    /// Agents latched together in one latch/unlatch cycle.
    detect_batch: usize,
    /// Latch decisions wanted for the detector latency...
    detect_decisions: u64,
    /// ...unless the cycles have taken this long.
    detect_budget: Duration,
    /// Watched node processes for the footprint.
    fleet: usize,
    /// Footprint measurement window.
    window: Duration,
    /// Timed runs of the locator, cold and cached each.
    locate_runs: usize,
}

impl Plan {
    fn full() -> Self {
        Self {
            rounds: 11,
            requests: 2000,
            stream_events: 20000,
            event_bytes: 100,
            capacity_seconds: 4.0,
            capacity_steps: &[(1, 4), (1, 16), (2, 16), (2, 64)],
            latency_count: 400,
            latency_gap_ms: 5,
            detect_agents: 20,
            detect_batch: 5,
            detect_decisions: 200,
            detect_budget: Duration::from_secs(60),
            fleet: 50,
            window: Duration::from_secs(5),
            locate_runs: 5,
        }
    }

    fn smoke() -> Self {
        Self {
            rounds: 1,
            requests: 100,
            stream_events: 300,
            event_bytes: 100,
            capacity_seconds: 1.0,
            capacity_steps: &[(1, 4)],
            latency_count: 20,
            latency_gap_ms: 5,
            detect_agents: 5,
            detect_batch: 5,
            detect_decisions: 10,
            detect_budget: Duration::from_secs(30),
            fleet: 3,
            window: Duration::from_secs(1),
            locate_runs: 1,
        }
    }
}

/// Runs the bench; `smoke` runs a tiny version of every part and fails if one yields nothing.
pub fn run(root: &Path, smoke: bool) -> anyhow::Result<()> {
    if !super::is_root() {
        bail!("the bench attaches uprobes: run it as root (e.g. `sudo -E cargo xtask bench`)");
    }
    super::build(root)?;
    if let Err(e) = super::apt_install(&["bpftrace", "openssl"]) {
        eprintln!("bench: cannot install bpftrace ({e:#}); the probe floor will not be measured");
    }
    let plan = if smoke { Plan::smoke() } else { Plan::full() };
    let started = Instant::now();
    let env = BenchEnv::new(root)?;
    let mut report = Report::default();

    let server = env.server(1, false)?;
    for client in [Client::Node, Client::Bun] {
        let part = if client == Client::Node { 1 } else { 2 };
        eprintln!(
            "bench: part {part}: probe overhead, {} client",
            client.name()
        );
        match overhead(&env, &plan, client, server.port) {
            Ok(o) => o.report(part, &mut report),
            Err(e) => report.failed(part, &format!("probe overhead, {}", client.name()), &e),
        }
    }
    eprintln!("bench: part 4: capture-to-output latency");
    match latency(&env, &plan, server.port) {
        Ok(l) => l.report(&mut report),
        Err(e) => report.failed(4, "capture-to-output latency", &e),
    }
    eprintln!("bench: part 4b: detector decision latency");
    match detection(&env, &plan) {
        Ok(d) => d.report(&mut report),
        Err(e) => report.failed(Part(4, Some('b')), "detector decision latency", &e),
    }
    eprintln!("bench: part 5: footprint");
    match footprint(&env, &plan, server.port) {
        Ok(f) => f.report(&mut report),
        Err(e) => report.failed(5, "footprint", &e),
    }
    drop(server);

    eprintln!("bench: part 3: pipeline capacity");
    match capacity(&env, &plan) {
        Ok(c) => c.report(&mut report),
        Err(e) => report.failed(3, "pipeline capacity", &e),
    }
    eprintln!("bench: part 7: exec burst");
    let (execs, claudes, unknown) = if smoke { (100, 3, 10) } else { (1000, 20, 50) };
    match super::execburst::run(
        &env.claude_watch,
        &super::execburst::pinned_bun(root),
        &env.scratch.0,
        execs,
        claudes,
        unknown,
    ) {
        Ok(b) => {
            report.row(
                7,
                &format!(
                    "daemon CPU per exec, burst of {} execs ({} files never seen, {} Claude-banner processes)",
                    b.execs, b.unknown_files, b.claude_expected
                ),
                &format!(
                    "{:.1} µs per exec ({:.0} ms CPU over {:.1} s); {}/{} Claude processes listed, {} records lost",
                    b.cpu_per_exec_us(),
                    b.cpu_ms,
                    b.seconds,
                    b.claude_found,
                    b.claude_expected,
                    b.lost
                ),
                "no exec missed",
                Some(b.claude_found == b.claude_expected && b.lost == 0),
            );
            report.note("Exec burst (part 7): the daemon with its built-in settings while execs of copies of /bin/true it has never seen, `env true`, and Bun programs compiled here whose entry carries Claude Code's banner (stand-ins for Claude Code, too heavy to start by the dozen) go by; CPU is the daemon's utime+stime over the burst and 1.5 s after it, divided by the execs; CLK_TCK resolution (10 ms).".into());
            if b.claude_found != b.claude_expected || b.lost != 0 {
                report.failures.push(format!(
                    "part 7: {}/{} Claude processes listed, {} lost",
                    b.claude_found, b.claude_expected, b.lost
                ));
            }
        }
        Err(e) => report.failed(7, "exec burst", &e),
    }
    eprintln!("bench: part 6: locate");
    match locate(&env, &plan) {
        Ok(l) => l.report(&mut report),
        Err(e) => report.failed(6, "locate", &e),
    }

    let text = report.render(&machine(), smoke, started.elapsed());
    println!("{text}");
    let out = if smoke {
        root.join("target/BENCHMARKS-smoke.md")
    } else {
        root.join("BENCHMARKS.md")
    };
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    if !report.failures.is_empty() {
        bail!(
            "{} part(s) produced no numbers: {}",
            report.failures.len(),
            report.failures.join("; ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Environment: binaries, scripts, the scratch directory, the server.

/// Paths the bench uses, and a scratch directory removed at the end.
struct BenchEnv {
    claude_watch: PathBuf,
    node: PathBuf,
    bun: PathBuf,
    claude: PathBuf,
    scripts: PathBuf,
    /// `tests/`: the stand-in API and the light agent.
    tests: PathBuf,
    scratch: Scratch,
}

/// A temporary directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl BenchEnv {
    fn new(root: &Path) -> anyhow::Result<Self> {
        let deps = std::env::var_os("CLAUDE_WATCH_TEST_DEPS")
            .map_or_else(|| root.join(".test-deps"), PathBuf::from);
        let node = which("node").context("`node` is not on PATH")?;
        let node = std::fs::canonicalize(&node).unwrap_or(node);
        let bun = deps.join("npm/bun-1.4.5/node_modules/@oven/bun-linux-x64/bin/bun");
        let claude =
            deps.join("npm/claude-2.1.331/node_modules/@anthropic-ai/claude-code-linux-x64/claude");
        for (what, path) in [("Bun 1.4.5", &bun), ("Claude Code 2.1.331", &claude)] {
            if !path.is_file() {
                bail!(
                    "{what} not found at {} (run `cargo xtask setup --tests`, or set CLAUDE_WATCH_TEST_DEPS)",
                    path.display()
                );
            }
        }
        let scratch =
            std::env::temp_dir().join(format!("claude-watch-bench-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let scratch = Scratch(scratch);
        let dir = &scratch.0;
        let mut openssl = Command::new("openssl");
        openssl
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(Stdio::null());
        super::run(openssl).context("making the server's self-signed certificate")?;
        // The server runs from a copy of node (another inode): probes on node stay out of it.
        std::fs::copy(&node, dir.join("node-server")).context("copying node for the server")?;
        Ok(Self {
            claude_watch: root.join("target/release/claude-watch"),
            node,
            bun,
            claude,
            scripts: root.join("bench"),
            tests: root.join("tests"),
            scratch,
        })
    }

    /// Starts `bench/server.mjs` with `workers` processes (`raw`: the bare TLS server of the
    /// `blast` client) and waits for its port.
    fn server(&self, workers: u32, raw: bool) -> anyhow::Result<Server> {
        let dir = &self.scratch.0;
        let mut cmd = Command::new(dir.join("node-server"));
        cmd.env("RAW", if raw { "1" } else { "0" });
        cmd.arg(self.scripts.join("server.mjs"))
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .arg(workers.to_string());
        let proc = Proc::spawn("server", &mut cmd, true)?;
        let line = proc.wait_stdout(|l| l.contains("port"), Duration::from_secs(20))?;
        let port = serde_json::from_str::<Value>(&line.text)?["port"]
            .as_u64()
            .context("server printed no port")?;
        Ok(Server {
            port: u16::try_from(port)?,
            _proc: proc,
        })
    }

    /// A client command (`bench/client.mjs MODE PORT ARGS...`) under node or Bun.
    fn client(&self, client: Client, mode: &str, port: u16, args: &[String]) -> Command {
        let program = match client {
            Client::Node => &self.node,
            Client::Bun => &self.bun,
        };
        let mut cmd = Command::new(program);
        cmd.arg(self.scripts.join("client.mjs"))
            .arg(mode)
            .arg(port.to_string())
            .args(args)
            .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
            .env("BUN_CONFIG_NO_TELEMETRY", "1");
        for proxy in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(proxy);
        }
        cmd
    }

    /// Runs a client to the end and returns its last JSON line.
    fn run_client(
        &self,
        client: Client,
        mode: &str,
        port: u16,
        args: &[String],
    ) -> anyhow::Result<Value> {
        let mut cmd = self.client(client, mode, port, args);
        let mut proc = Proc::spawn("client", &mut cmd, true)?;
        let lines = proc.finish(Duration::from_secs(120))?;
        let last = lines
            .last()
            .with_context(|| format!("client {mode} printed nothing"))?;
        serde_json::from_str(&last.text).with_context(|| format!("client output {:?}", last.text))
    }

    /// Starts `claude-watch trace --binary BINARY` (JSON lines on stdout when `keep_stdout`,
    /// else discarded) and waits until it is tracing.
    fn trace(&self, binary: &Path, ring_mib: u32, keep_stdout: bool) -> anyhow::Result<Trace> {
        let mut cmd = Command::new(&self.claude_watch);
        cmd.args([
            "trace",
            "--json",
            "--ring-mib",
            &ring_mib.to_string(),
            "--binary",
        ])
        .arg(binary);
        if !keep_stdout {
            cmd.stdout(Stdio::null());
        }
        let proc = Proc::spawn("claude-watch trace", &mut cmd, keep_stdout)?;
        proc.wait_stderr(|l| l.contains("tracing"), Duration::from_secs(60))
            .context("waiting for claude-watch trace to attach")?;
        Ok(Trace { proc })
    }
}

/// The bench's HTTPS server, stopped when dropped.
struct Server {
    port: u16,
    _proc: Proc,
}

/// A client runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Node,
    Bun,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Bun => "Bun 1.4.5",
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// One line of a child's output, with the CLOCK_MONOTONIC time it was read.
struct Line {
    mono_ns: u64,
    text: String,
}

/// A started process, killed and reaped when dropped, so an error leaves nothing running.
struct Proc {
    name: &'static str,
    child: Child,
    stdout: Option<Receiver<Line>>,
    stderr: Receiver<Line>,
    /// Leads a process group of its own: signals and the final kill go to the whole group.
    group: bool,
}

impl Proc {
    /// Spawns `cmd` with stdin closed, stderr piped, and stdout piped when `pipe_stdout`
    /// (else as `cmd` set it, or inherited).
    fn spawn(name: &'static str, cmd: &mut Command, pipe_stdout: bool) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().map(reader);
        let stderr = reader(child.stderr.take().expect("stderr is piped"));
        Ok(Self {
            name,
            child,
            stdout,
            stderr,
            group: false,
        })
    }

    /// Spawns `cmd` as the leader of a new process group, stdout and stderr piped, stdin a pipe
    /// held open until the drop (the stand-in exits when it closes). The drop kills the whole
    /// group; the kernel kills the leader too if the bench dies first (`PR_SET_PDEATHSIG`).
    fn spawn_group(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().map(reader);
        let stderr = reader(child.stderr.take().expect("stderr is piped"));
        Ok(Self {
            name,
            child,
            stdout,
            stderr,
            group: true,
        })
    }

    /// Whether the child has exited, without reaping it (so its pid, the group id, cannot be
    /// reused yet); `None` once it has been reaped.
    fn exited_unreaped(&self) -> Option<bool> {
        // SAFETY: an all-zero siginfo_t is valid; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with WNOWAIT leaves it waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &raw mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled the siginfo_t (si_pid stays 0 while the child runs).
        (rc == 0).then(|| unsafe { info.si_pid() } != 0)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    fn signal(&self, signal: i32) {
        let target = if self.group { -self.pid() } else { self.pid() };
        // SAFETY: kill(2) on our own child (or its group), which we have not reaped yet.
        unsafe { libc::kill(target, signal) };
    }

    fn wait_stdout(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> anyhow::Result<Line> {
        let rx = self.stdout.as_ref().context("stdout is not piped")?;
        wait_line(self.name, rx, pred, timeout)
    }

    fn wait_stderr(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> anyhow::Result<Line> {
        wait_line(self.name, &self.stderr, pred, timeout)
    }

    /// Waits for the process to close its stdout and exit successfully; returns its stdout lines.
    fn finish(&mut self, timeout: Duration) -> anyhow::Result<Vec<Line>> {
        let (status, lines) = self.collect(timeout)?;
        if !status.success() {
            let err: Vec<String> = self.stderr.try_iter().map(|l| l.text).collect();
            bail!("{} failed ({status}): {}", self.name, err.join(" / "));
        }
        Ok(lines)
    }

    /// Waits for the process to close its stdout and exit; returns its status and stdout lines.
    fn collect(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Vec<Line>)> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        if let Some(rx) = &self.stdout {
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) => lines.push(line),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => bail!("{} did not finish", self.name),
                }
            }
        }
        Ok((self.wait_exit(deadline)?, lines))
    }

    /// Sends SIGINT and waits for the exit; returns the exit status and the stderr lines.
    fn interrupt(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        self.signal(libc::SIGINT);
        let status = self.wait_exit(Instant::now() + timeout)?;
        // The stderr reader ends at the pipe's end, right after the exit.
        let mut err = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            err.push(line.text);
        }
        Ok((status, err))
    }

    fn wait_exit(&mut self, deadline: Instant) -> anyhow::Result<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit in time", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    /// SIGTERM first (the server stops its cluster workers on it, trace and bpftrace detach),
    /// SIGKILL after a second.
    fn drop(&mut self) {
        if self.group {
            // The leader stays unreaped until its group is killed: the group id cannot be reused.
            if self.exited_unreaped().is_some() {
                self.signal(libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.exited_unreaped() == Some(false) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.signal(libc::SIGKILL);
            }
            let _ = self.child.wait();
            return;
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            if self
                .wait_exit(Instant::now() + Duration::from_secs(1))
                .is_err()
            {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// A thread that forwards the lines of `pipe`, stamped with the time they were read.
fn reader(pipe: impl Read + Send + 'static) -> Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for text in BufReader::new(pipe).lines() {
            let Ok(text) = text else { break };
            if tx
                .send(Line {
                    mono_ns: mono_ns(),
                    text,
                })
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    name: &str,
    rx: &Receiver<Line>,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
) -> anyhow::Result<Line> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if pred(&line.text) => return Ok(line),
            Ok(line) => seen.push(line.text),
            Err(_) => bail!(
                "{name}: expected line did not come; saw: {}",
                seen.join(" / ")
            ),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns()`.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A running `claude-watch trace`.
struct Trace {
    proc: Proc,
}

impl Trace {
    /// Stops the trace with SIGINT and reads its final counters line.
    fn stop(mut self) -> anyhow::Result<(ExitStatus, Counters)> {
        let (status, stderr) = self.proc.interrupt(Duration::from_secs(20))?;
        let counters = stderr
            .iter()
            .find_map(|l| parse_counters(l))
            .with_context(|| format!("no counters line from trace: {}", stderr.join(" / ")))?;
        Ok((status, counters))
    }
}

/// The final counters line of `claude-watch trace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    sent: u64,
    skipped: u64,
    lost: u64,
    invalid: u64,
    unpaired: u64,
}

/// Parses `claude-watch: kernel sent N heads, skipped N other buffers, lost N; user space
/// ignored N invalid, N unpaired`.
fn parse_counters(line: &str) -> Option<Counters> {
    let rest = line.split("kernel sent ").nth(1)?;
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match numbers[..] {
        [sent, skipped, lost, invalid, unpaired] => Some(Counters {
            sent,
            skipped,
            lost,
            invalid,
            unpaired,
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// The median of `xs` (mean of the middle two for an even count); NaN when empty.
fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// The `p`th percentile of `xs` by linear interpolation between closest ranks; NaN when empty.
fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

// ---------------------------------------------------------------------------------------------
// Parts 1 and 2: probe overhead.

/// What is attached while a client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Nothing.
    None,
    /// Empty bpftrace probes on the same functions: the kernel's floor.
    Floor,
    /// `claude-watch trace --binary CLIENT`.
    Watch,
}

const VARIANTS: [Variant; 3] = [Variant::None, Variant::Floor, Variant::Watch];

/// The functions `claude-watch locate` finds in a binary, as (name, file offset).
fn located_functions(
    env: &BenchEnv,
    binary: &Path,
) -> anyhow::Result<(String, Vec<(String, u64)>)> {
    let mut cmd = Command::new(&env.claude_watch);
    cmd.args(["locate", "--json", "--no-cache"]).arg(binary);
    let out = cmd.output().context("running claude-watch locate")?;
    if !out.status.success() {
        bail!(
            "claude-watch locate {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json: Value = serde_json::from_slice(&out.stdout).context("locate --json output")?;
    let method = json["method"].as_str().unwrap_or("?").to_owned();
    let functions = json["functions"]
        .as_object()
        .context("locate output has no functions")?
        .iter()
        .filter_map(|(name, f)| Some((name.clone(), f["file_offset"].as_u64()?)))
        .collect();
    Ok((method, functions))
}

/// A bpftrace program with empty probes on the points claude-watch attaches: entry of the
/// write functions, entry and return of the read functions. By symbol when the binary has
/// them, else by file offset (bpftrace 0.17 takes a stripped binary's address as a file
/// offset, and needs `--unsafe` for it). `body` is the probes' action (`{}` for the floor).
fn floor_program(
    binary: &Path,
    by_symbol: bool,
    functions: &[(String, u64)],
    body: &str,
) -> String {
    let mut program = String::new();
    for (name, offset) in functions {
        let at = if by_symbol {
            format!("\"{}\":{name}", binary.display())
        } else {
            format!("\"{}\":{offset:#x}", binary.display())
        };
        let body = body.replace("NAME", &name.replace(|c: char| !c.is_alphanumeric(), "_"));
        let _ = writeln!(program, "uprobe:{at} {body}");
        if name.starts_with("SSL_read") {
            let _ = writeln!(program, "uretprobe:{at} {{}}");
        }
    }
    program.push_str("BEGIN { printf(\"ready\\n\"); }\n");
    program
}

/// bpftrace running a program, stopped when dropped.
struct Bpftrace {
    proc: Proc,
}

impl Bpftrace {
    fn start(program: &str, unsafe_: bool) -> anyhow::Result<Self> {
        let mut cmd = Command::new("bpftrace");
        if unsafe_ {
            cmd.arg("--unsafe");
        }
        cmd.arg("-e").arg(program);
        let proc = Proc::spawn("bpftrace", &mut cmd, true)?;
        proc.wait_stdout(|l| l == "ready", Duration::from_secs(60))?;
        Ok(Self { proc })
    }

    /// Stops bpftrace; returns its stdout (maps are printed at exit).
    fn stop(mut self) -> anyhow::Result<Vec<String>> {
        self.proc.signal(libc::SIGINT);
        let (_, lines) = self.proc.collect(Duration::from_secs(20))?;
        Ok(lines.into_iter().map(|l| l.text).collect())
    }
}

/// Something attached for one variant; detached when dropped.
enum Attached {
    None,
    Floor(Bpftrace),
    Watch(Trace),
}

/// Timings of one workload: per variant, per round.
#[derive(Debug, Default)]
struct Runs {
    wall_ms: [Vec<f64>; 3],
    cpu_ms: [Vec<f64>; 3],
}

/// Results of parts 1 or 2.
struct Overhead {
    client: Client,
    plan: Plan,
    requests: Runs,
    stream: Runs,
    /// Why the floor was not measured, if it was not.
    floor_missing: Option<String>,
    /// Counters of the last claude-watch run.
    counters: Option<Counters>,
    how: String,
}

fn overhead(env: &BenchEnv, plan: &Plan, client: Client, port: u16) -> anyhow::Result<Overhead> {
    let binary = match client {
        Client::Node => env.node.clone(),
        Client::Bun => env.bun.clone(),
    };
    let (method, functions) = located_functions(env, &binary)?;
    let by_symbol = method == "symbols";
    // The floor's probes must hit: check once with counting probes before using empty ones.
    let floor_missing = check_floor(env, client, port, &binary, by_symbol, &functions).err();
    if let Some(why) = &floor_missing {
        eprintln!("bench: floor not measured for {}: {why}", client.name());
    }
    let floor = floor_program(&binary, by_symbol, &functions, "{}");
    let mut out = Overhead {
        client,
        plan: plan.clone(),
        requests: Runs::default(),
        stream: Runs::default(),
        floor_missing,
        counters: None,
        how: format!(
            "{} ({method}: {})",
            binary.display(),
            functions
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let requests = [plan.requests.to_string()];
    let stream = [plan.stream_events.to_string(), plan.event_bytes.to_string()];
    // One untimed run of each workload warms the server (JIT, page cache) for every variant.
    env.run_client(client, "requests", port, &requests)?;
    env.run_client(client, "stream", port, &stream)?;
    for round in 0..plan.rounds {
        for (i, variant) in VARIANTS.into_iter().enumerate() {
            let attached = match variant {
                Variant::None => Attached::None,
                Variant::Floor if out.floor_missing.is_some() => continue,
                Variant::Floor => Attached::Floor(Bpftrace::start(&floor, !by_symbol)?),
                Variant::Watch => Attached::Watch(env.trace(&binary, 8, false)?),
            };
            for (runs, mode, args) in [
                (&mut out.requests, "requests", &requests[..]),
                (&mut out.stream, "stream", &stream[..]),
            ] {
                let v = env.run_client(client, mode, port, args)?;
                runs.wall_ms[i].push(v["ms"].as_f64().context("client printed no ms")?);
                runs.cpu_ms[i].push(v["cpu_ms"].as_f64().context("client printed no cpu_ms")?);
            }
            match attached {
                Attached::None => {}
                Attached::Floor(b) => {
                    b.stop()?;
                }
                Attached::Watch(t) => {
                    let (status, counters) = t.stop()?;
                    if !status.success() {
                        bail!("claude-watch trace exited with {status}");
                    }
                    out.counters = Some(counters);
                }
            }
        }
        eprintln!("bench:   round {}/{} done", round + 1, plan.rounds);
    }
    if out.counters.is_some_and(|c| c.sent == 0) {
        bail!(
            "claude-watch captured nothing from the {} client",
            client.name()
        );
    }
    Ok(out)
}

/// Runs a short request loop under counting probes; fails unless every write probe hit.
fn check_floor(
    env: &BenchEnv,
    client: Client,
    port: u16,
    binary: &Path,
    by_symbol: bool,
    functions: &[(String, u64)],
) -> Result<(), String> {
    if which("bpftrace").is_none() {
        return Err("bpftrace is not installed".into());
    }
    let program = floor_program(binary, by_symbol, functions, "{ @NAME = count(); }");
    let tracer = Bpftrace::start(&program, !by_symbol).map_err(|e| format!("{e:#}"))?;
    let ran = env.run_client(client, "requests", port, &["20".into()]);
    let lines = tracer.stop().map_err(|e| format!("{e:#}"))?;
    ran.map_err(|e| format!("{e:#}"))?;
    let hits = |name: &str| {
        lines.iter().find_map(|l| {
            l.strip_prefix(&format!("@{name}: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    let writes: u64 = ["SSL_write", "SSL_write_ex"]
        .iter()
        .filter_map(|n| hits(n))
        .sum();
    if writes < 20 {
        return Err(format!(
            "bpftrace's probes at the located offsets saw {writes} writes of 20 requests"
        ));
    }
    Ok(())
}

impl Overhead {
    fn report(&self, part: u8, report: &mut Report) {
        let who = self.client.name();
        let floor = self.floor_missing.is_none();
        for (runs, workload, label) in [
            (
                &self.requests,
                "request loop",
                format!(
                    "{} sequential GETs, one keep-alive connection",
                    self.plan.requests
                ),
            ),
            (
                &self.stream,
                "streamed response",
                format!(
                    "one response of {} SSE events of {} B, read as they come",
                    self.plan.stream_events, self.plan.event_bytes
                ),
            ),
        ] {
            let med = |i: usize| median(&runs.wall_ms[i]);
            let watch_none = med(2) / med(0);
            let per_round: Vec<f64> = runs.wall_ms[2]
                .iter()
                .zip(&runs.wall_ms[0])
                .map(|(w, n)| w / n)
                .collect();
            let (lo, hi) = min_max(&per_round);
            let noise = format!("per-round {lo:.2}–{hi:.2}");
            if workload == "streamed response" {
                report.row(
                    part,
                    &format!("{who} {workload}: wall time, claude-watch / none"),
                    &format!("{watch_none:.2} ({noise}){}", shown(watch_none, hi, 1.02)),
                    "≤ 1.02",
                    verdict(watch_none, hi, 1.02),
                );
            } else if floor {
                let watch_floor = med(2) / med(1);
                let per_round: Vec<f64> = runs.wall_ms[2]
                    .iter()
                    .zip(&runs.wall_ms[1])
                    .map(|(w, f)| w / f)
                    .collect();
                let (lo, hi) = min_max(&per_round);
                report.row(
                    part,
                    &format!("{who} {workload}: wall time, claude-watch / empty-probe floor"),
                    &format!(
                        "{watch_floor:.2} (per-round {lo:.2}–{hi:.2}){}",
                        shown(watch_floor, hi, 1.10)
                    ),
                    "≤ 1.10",
                    verdict(watch_floor, hi, 1.10),
                );
            } else {
                report.row(
                    part,
                    &format!("{who} {workload}: wall time, claude-watch / empty-probe floor"),
                    "floor not measured",
                    "≤ 1.10",
                    None,
                );
            }
            report.detail(part, format!("{who} {workload} ({label})"), runs, floor);
        }
        if let Some(why) = &self.floor_missing {
            report.note(format!("{who}: empty-probe floor not measured: {why}."));
        }
        // Where the time goes, for the notes: the client's own CPU (user + system, where probe
        // hits are charged) per request and per streamed event, over the floor and over none.
        let per = |runs: &Runs, n: u32, base: usize| {
            (median(&runs.cpu_ms[2]) - median(&runs.cpu_ms[base])) * 1000.0 / f64::from(n)
        };
        let base = if floor { 1 } else { 0 };
        report.note(format!(
            "{who}: claude-watch's extra client CPU over {}: {:.1} µs per request (request loop), {:.1} µs per event (stream); the probes, the copy of each head into the ring buffer and the reader's wakeup run on the client's CPU, and the trace process shares the 2 cores with client and server. Per-round ratios spread wider than the 2% and 10% targets on this shared machine, so those targets cannot be shown met here even where the medians come close.",
            if floor { "the empty-probe floor" } else { "no probes" },
            per(&self.requests, self.plan.requests, base),
            per(&self.stream, self.plan.stream_events, base),
        ));
        if let Some(c) = self.counters {
            report.note(format!(
                "{who}: claude-watch attached to {}; last run: kernel sent {} heads, skipped {} other buffers, lost {}.",
                self.how, c.sent, c.skipped, c.lost
            ));
        }
    }
}

/// Met when the median ratio meets the target and no round exceeds it; unclear (`None`) when
/// only the median does: the noise is wider than the target.
fn verdict(median: f64, worst_round: f64, target: f64) -> Option<bool> {
    match (median <= target, worst_round <= target) {
        (true, true) => Some(true),
        (true, false) => None,
        (false, _) => Some(false),
    }
}

/// The remark that goes with an unclear [`verdict`].
fn shown(median: f64, worst_round: f64, target: f64) -> &'static str {
    if verdict(median, worst_round, target).is_none() {
        "; median meets the target, the noise is wider than it"
    } else {
        ""
    }
}

// ---------------------------------------------------------------------------------------------
// Part 3: pipeline capacity.

/// One capacity step.
struct Step {
    label: String,
    /// Exchanges the clients completed per second.
    rate: f64,
    /// Exchange lines the trace printed per second of load.
    printed_rate: f64,
    counters: Counters,
    clean_exit: bool,
    /// Lines printed after the consumer resumed (stall step only).
    after_resume: Option<usize>,
}

struct Capacity {
    steps: Vec<Step>,
}

fn capacity(env: &BenchEnv, plan: &Plan) -> anyhow::Result<Capacity> {
    let server = env.server(2, true)?;
    let mut steps = Vec::new();
    for &(procs, conc) in plan.capacity_steps {
        let step = capacity_step(env, plan, server.port, procs, conc, 8, false)?;
        eprintln!(
            "bench:   {}: {:.0} exchanges/s, lost {}",
            step.label, step.rate, step.counters.lost
        );
        steps.push(step);
    }
    let &(procs, conc) = plan.capacity_steps.last().expect("at least one step");
    let step = capacity_step(env, plan, server.port, procs, conc, 1, true)?;
    eprintln!("bench:   {}: lost {}", step.label, step.counters.lost);
    steps.push(step);
    Ok(Capacity { steps })
}

fn capacity_step(
    env: &BenchEnv,
    plan: &Plan,
    port: u16,
    procs: u32,
    conc: u32,
    ring_mib: u32,
    stall: bool,
) -> anyhow::Result<Step> {
    let trace = env.trace(&env.node, ring_mib, true)?;
    // Stalled step: the consumer stops for `pause`, long enough to overflow a 1 MiB ring.
    let pause = Duration::from_secs_f64((plan.capacity_seconds * 0.6).max(1.5));
    let load_seconds = if stall {
        pause.as_secs_f64() + 1.0
    } else {
        plan.capacity_seconds
    };
    let args = [load_seconds.to_string(), conc.to_string()];
    let mut clients = (0..procs)
        .map(|_| {
            Proc::spawn(
                "blast client",
                &mut env.client(Client::Node, "blast", port, &args),
                true,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut resumed_at = None;
    if stall {
        // The consumer stops reading for most of the load: the ring fills and overflows.
        std::thread::sleep(Duration::from_millis(300));
        trace.proc.signal(libc::SIGSTOP);
        std::thread::sleep(pause);
        trace.proc.signal(libc::SIGCONT);
        resumed_at = Some(mono_ns());
    }
    let mut exchanges = 0.0;
    let mut seconds: f64 = 0.0;
    for client in &mut clients {
        let lines = client.finish(Duration::from_secs_f64(load_seconds + 60.0))?;
        let v: Value =
            serde_json::from_str(&lines.last().context("load client printed nothing")?.text)?;
        exchanges += v["count"].as_f64().unwrap_or(0.0);
        seconds = seconds.max(v["ms"].as_f64().unwrap_or(0.0) / 1000.0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rx = trace.proc.stdout.as_ref().expect("stdout piped");
    let printed: Vec<u64> = rx.try_iter().map(|l| l.mono_ns).collect();
    let after_resume = resumed_at.map(|t| printed.iter().filter(|&&m| m > t).count());
    let (status, counters) = trace.stop()?;
    let label = if stall {
        format!(
            "{procs}×{conc} connections, ring 1 MiB, consumer stopped {:.1} s",
            pause.as_secs_f64()
        )
    } else {
        format!("{procs} process(es) × {conc} connections, ring {ring_mib} MiB")
    };
    Ok(Step {
        label,
        rate: exchanges / seconds.max(1e-9),
        printed_rate: printed.len() as f64 / seconds.max(1e-9),
        counters,
        clean_exit: status.success(),
        after_resume,
    })
}

impl Capacity {
    fn report(&self, report: &mut Report) {
        let lossless = self
            .steps
            .iter()
            .filter(|s| s.after_resume.is_none() && s.counters.lost == 0)
            .map(|s| s.rate)
            .fold(0.0, f64::max);
        let any_loss_unstalled = self
            .steps
            .iter()
            .any(|s| s.after_resume.is_none() && s.counters.lost > 0);
        report.row(
            3,
            "highest exchange rate generated with zero lost records (node raw-TLS clients, 2 cores)",
            &format!("{lossless:.0} exchanges/s"),
            "0 lost at 20,000/s",
            if lossless >= 20_000.0 {
                Some(true)
            } else if any_loss_unstalled {
                Some(false)
            } else {
                None
            },
        );
        if let Some(stall) = self.steps.iter().find(|s| s.after_resume.is_some()) {
            report.row(
                3,
                "past capacity (consumer stalled, 1 MiB ring): lost records counted, trace survives",
                &format!(
                    "lost {}, {} lines after resume, exit {}",
                    stall.counters.lost,
                    stall.after_resume.unwrap_or(0),
                    if stall.clean_exit { "clean" } else { "FAILED" }
                ),
                "loss counted, no crash",
                Some(stall.counters.lost > 0 && stall.clean_exit && stall.after_resume > Some(0)),
            );
        }
        let mut t = String::from(
            "| step | exchanges/s (clients) | lines/s printed | kernel sent | skipped | lost | unpaired | exit |\n|---|---|---|---|---|---|---|---|\n",
        );
        for s in &self.steps {
            let _ = writeln!(
                t,
                "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                s.label,
                s.rate,
                s.printed_rate,
                s.counters.sent,
                s.counters.skipped,
                s.counters.lost,
                s.counters.unpaired,
                if s.clean_exit { "clean" } else { "failed" }
            );
        }
        report.details.push((3, "Pipeline capacity".into(), t));
    }
}

// ---------------------------------------------------------------------------------------------
// Part 4: capture-to-output latency.

struct Latency {
    samples_us: Vec<f64>,
    expected: u32,
    /// 401 lines whose paired request was not the one the 401 answered.
    mispaired: usize,
}

fn latency(env: &BenchEnv, plan: &Plan, port: u16) -> anyhow::Result<Latency> {
    let trace = env.trace(&env.node, 8, true)?;
    let args = [
        plan.latency_count.to_string(),
        plan.latency_gap_ms.to_string(),
    ];
    env.run_client(Client::Node, "latency", port, &args)?;
    std::thread::sleep(Duration::from_millis(300));
    let rx = trace.proc.stdout.as_ref().expect("stdout piped");
    let mut samples_us = Vec::new();
    let mut mispaired = 0;
    for line in rx.try_iter() {
        let Ok(v) = serde_json::from_str::<Value>(&line.text) else {
            continue;
        };
        // Matched by the response's own request-id (`req_bench<seq>`), not by the paired
        // request's path: see the note on retried writes.
        let ours = v["status"] == 401
            && v["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("req_bench"));
        if let (true, Some(read_ns)) = (ours, v["mono_ns"].as_u64()) {
            if v["path"].as_str()
                != v["request_id"]
                    .as_str()
                    .map(|r| format!("/401?seq={}", &r[9..]))
                    .as_deref()
            {
                mispaired += 1;
            }
            samples_us.push(line.mono_ns.saturating_sub(read_ns) as f64 / 1e3);
        }
    }
    trace.stop()?;
    if samples_us.is_empty() {
        bail!("the trace printed none of the 401 exchanges");
    }
    Ok(Latency {
        samples_us,
        expected: plan.latency_count,
        mispaired,
    })
}

impl Latency {
    fn report(&self, report: &mut Report) {
        let p50 = percentile(&self.samples_us, 50.0);
        let p99 = percentile(&self.samples_us, 99.0);
        let (_, max) = min_max(&self.samples_us);
        report.row(
            4,
            "capture-to-output latency of a 401 (SSL_read return → `trace --json` line read), NOT detector latency",
            &format!(
                "p50 {p50:.0} µs, p99 {p99:.0} µs, max {max:.0} µs ({} of {} seen)",
                self.samples_us.len(),
                self.expected
            ),
            "— (the detector target is 4b's)",
            None,
        );
        report.row(
            4,
            "401 lines paired with the wrong request (same connection, keep-alive)",
            &format!("{} of {}", self.mispaired, self.samples_us.len()),
            "0",
            Some(self.mispaired == 0),
        );
        if self.mispaired > 0 {
            report.note(format!(
                "Capture bug found by the bench: {} of {} 401 responses were paired with an earlier request. node retries the first SSL_write of a connection while the TLS handshake is in progress (bpftrace: `SSL_write len 70 ret -1`, twice, then `ret 70`); the entry uprobe forwards each attempt, so the pairer queues the request three times and every later response on that connection is paired with the request two before it. Latencies here are matched by the response's own request-id, so they are not affected.",
                self.mispaired,
                self.samples_us.len()
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Part 4b: detector decision latency, read from the daemon's own histogram.

/// The daemon's detection histogram: SSL_read return of the 401 that completed a latch → the
/// decision.
const DETECTION_HISTOGRAM: &str = "claude_watch_detection_seconds";

/// The Claude-Code-like User-Agent the light agents send (as the integration tests' agents do).
const AGENT_USER_AGENT: &str = "claude-cli/0.0.0-agent (external, sdk-cli)";

/// A Prometheus histogram as scraped: cumulative buckets, total count, sum.
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    /// `(upper bound in seconds, observations ≤ it)`, in the order exported (`+Inf` left out).
    buckets: Vec<(f64, u64)>,
    /// All observations (the `+Inf` bucket).
    count: u64,
    /// Sum of the observations, seconds.
    sum: f64,
}

/// Reads histogram `name` (no labels besides `le`) from a Prometheus text exposition.
fn parse_histogram(text: &str, name: &str) -> Option<Histogram> {
    let mut h = Histogram::default();
    let mut counted = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some((key, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if let Some(le) = key
            .strip_prefix("_bucket{le=\"")
            .and_then(|k| k.strip_suffix("\"}"))
        {
            if le != "+Inf" {
                h.buckets.push((le.parse().ok()?, value.parse().ok()?));
            }
        } else if key == "_count" {
            h.count = value.parse().ok()?;
            counted = true;
        } else if key == "_sum" {
            h.sum = value.parse().ok()?;
        }
    }
    counted.then_some(h)
}

impl Histogram {
    /// The observations made after `before` was scraped (same buckets), or `None` if the
    /// buckets differ or a count went down.
    fn since(&self, before: &Self) -> Option<Self> {
        if before.buckets.len() != self.buckets.len() {
            return None;
        }
        let buckets = self
            .buckets
            .iter()
            .zip(&before.buckets)
            .map(|((b, n), (b0, n0))| (b == b0).then(|| n.checked_sub(*n0).map(|d| (*b, d))))
            .collect::<Option<Option<Vec<_>>>>()??;
        Some(Self {
            buckets,
            count: self.count.checked_sub(before.count)?,
            sum: self.sum - before.sum,
        })
    }

    /// The upper bound of the bucket holding the `q` quantile (0 < q ≤ 1): the smallest bound
    /// with at least ⌈q·count⌉ observations at or below it. `None` when empty, or when the
    /// quantile lies past the last finite bound.
    fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map(|(bound, _)| *bound)
    }
}

/// What part 4b measured.
struct Detection {
    /// Light agents the daemon watched.
    agents: usize,
    /// Agents latched together in one cycle.
    batch: usize,
    /// Latch decisions the bench saw in `claude-watch status` (each one then healed).
    seen: u64,
    /// Latch/unlatch cycles (a batch of agents each).
    cycles: u64,
    /// The daemon's detection histogram after the cycles.
    histogram: Histogram,
    /// Time spent in latch/unlatch cycles.
    elapsed: Duration,
    /// Whether the time budget ended the cycles before the planned number of decisions.
    budget_hit: bool,
    /// The load average when the cycles started and when they ended.
    load: (String, String),
    /// The daemon's threads over the cycles: time spent runnable but waiting for a CPU, and
    /// the number of times they ran (`/proc/PID/task/*/schedstat`).
    runqueue: Option<(Duration, u64)>,
    /// The daemon's CPU use over the cycles, percent of one core.
    cpu_percent: Option<f64>,
    /// Instances the daemon reported that are not the bench's agents.
    foreign: Vec<String>,
}

/// Run-queue wait (ns) and timeslices run, summed over the threads of `pid`.
fn runqueue_wait(pid: i32) -> anyhow::Result<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue; // a thread that just ended
        };
        let fields: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [_, wait, slices] = fields[..] {
            total.0 += wait;
            total.1 += slices;
        }
    }
    Ok(total)
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One light agent taken for Claude Code: its process and session id.
struct Agent {
    proc: Proc,
    session: String,
}

/// The stand-in Anthropic API (`tests/standin/standin.py`) on 127.0.0.1.
struct StandIn {
    api_port: u16,
    control_port: u16,
    _proc: Proc,
}

impl StandIn {
    fn start(env: &BenchEnv) -> anyhow::Result<Self> {
        let python = ["/usr/bin/python3"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| which("python3"))
            .context("`python3` is not installed")?;
        let mut cmd = Command::new(python);
        cmd.arg("-u").arg(env.tests.join("standin/standin.py"));
        let proc = Proc::spawn_group("stand-in", &mut cmd)?;
        let line = proc.wait_stdout(|l| l.contains("\"ready\""), Duration::from_secs(30))?;
        let ready: Value = serde_json::from_str(&line.text)?;
        let port = |key: &str| {
            ready[key]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .with_context(|| format!("stand-in ready line lacks {key}: {}", line.text))
        };
        Ok(Self {
            api_port: port("api_port")?,
            control_port: port("control_port")?,
            _proc: proc,
        })
    }

    /// `POST path` with a JSON body on the control port; fails unless it answers 200.
    fn post(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        use std::io::Write as _;
        let body = body.to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.control_port))
            .context("stand-in control port")?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let head = response.lines().next().unwrap_or_default();
        if head.split_whitespace().nth(1) != Some("200") {
            bail!("stand-in control POST {path} answered {head:?}");
        }
        Ok(())
    }
}

/// Starts a light agent (`tests/agents/agent.mjs` installed as `@anthropic-ai/claude-code/cli.js`
/// under `dir`, run by node) against the stand-in, and reads its session id.
fn start_agent(env: &BenchEnv, standin: &StandIn, dir: &Path) -> anyhow::Result<Agent> {
    let package = dir.join("node_modules/@anthropic-ai/claude-code");
    std::fs::create_dir_all(&package)?;
    std::fs::write(
        package.join("package.json"),
        r#"{"name":"@anthropic-ai/claude-code","type":"module"}"#,
    )?;
    let cli = package.join("cli.js");
    std::fs::copy(env.tests.join("agents/agent.mjs"), &cli).context("copying agent.mjs")?;
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let mut cmd = Command::new(&env.node);
    cmd.arg(&cli)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", &home)
        .env(
            "ANTHROPIC_BASE_URL",
            format!("https://127.0.0.1:{}", standin.api_port),
        )
        .env("ANTHROPIC_API_KEY", "sk-ant-api03-bench")
        .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("ANTHROPIC_MODEL", "claude-haiku-4-5")
        .env("AGENT_INTERVAL_MS", "300")
        .env("AGENT_BACKOFF_SCALE", "0.1")
        .env("AGENT_USER_AGENT", AGENT_USER_AGENT)
        .current_dir(&home);
    let proc = Proc::spawn_group("agent", &mut cmd)?;
    let start = proc.wait_stdout(|l| l.contains("\"start\""), Duration::from_secs(60))?;
    let start: Value = serde_json::from_str(&start.text)?;
    let session = start["session"]
        .as_str()
        .context("agent start line without a session")?
        .to_owned();
    Ok(Agent { proc, session })
}

/// A free TCP port on 127.0.0.1 (bound, then released for the daemon).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// `claude-watch status --json --socket SOCKET`: one object per instance (none while the
/// socket is not up yet).
fn daemon_status(env: &BenchEnv, socket: &Path) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(&env.claude_watch)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("status line {l:?}")))
        .collect()
}

/// Waits until the instance of every pid in `pids` is in `state` (and, when `status` is given,
/// last answered with it); returns the last status seen.
fn wait_states(
    env: &BenchEnv,
    socket: &Path,
    pids: &[i32],
    state: &str,
    status: Option<u64>,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    loop {
        last = daemon_status(env, socket).unwrap_or(last);
        let ok = |pid: &i32| {
            last.iter().any(|i| {
                i["pids"]
                    .as_array()
                    .is_some_and(|p| p.contains(&Value::from(*pid)))
                    && i["state"] == state
                    && status.is_none_or(|s| i["last_status"] == s)
            })
        };
        if pids.iter().all(ok) {
            return Ok(last);
        }
        if Instant::now() >= deadline {
            let missing: Vec<_> = pids.iter().filter(|p| !ok(p)).collect();
            bail!(
                "agents {missing:?} not {state} after {timeout:?}; status: {}",
                last.iter()
                    .map(|i| format!("{} {} {}", i["name"], i["state"], i["last_status"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        // Not faster: each poll is a process the daemon shares the 2 cores with.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` from the daemon.
fn scrape(port: u16) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).context("metrics port")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("metrics: not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answered {head:?}");
    }
    Ok(body.to_owned())
}

fn detection(env: &BenchEnv, plan: &Plan) -> anyhow::Result<Detection> {
    let dir = Scratch(env.scratch.0.join("detection"));
    std::fs::create_dir_all(&dir.0)?;
    let standin = StandIn::start(env)?;
    let metrics_port = free_port()?;
    let socket = dir.0.join("control.sock");
    // Every first 401 of a session latches at once: each histogram sample is exactly
    // "SSL_read return of the 401 → decision". dry_run: nothing is ever restarted.
    let config = format!(
        "[daemon]\njournal = \"{d}/journal.jsonl\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\nlocate_cache = \"{d}/locate\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndry_run = true\n\n[detector]\nlatch_min_401s = 1\nlatch_min_span = \"0s\"\n",
        d = dir.0.display()
    );
    std::fs::write(dir.0.join("config.toml"), config)?;
    let mut cmd = Command::new(&env.claude_watch);
    cmd.arg("daemon")
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .env("RUST_LOG", "info");
    let daemon = Proc::spawn_group("claude-watch daemon", &mut cmd)?;
    daemon
        .wait_stderr(
            |l| l.contains("claude-watch is watching"),
            Duration::from_secs(60),
        )
        .context("waiting for the daemon to watch")?;

    let mut agents = Vec::new();
    for i in 0..plan.detect_agents {
        agents.push(start_agent(
            env,
            &standin,
            &dir.0.join(format!("agent-{i}")),
        )?);
    }
    let pids: Vec<i32> = agents.iter().map(|a| a.proc.pid()).collect();
    let mut foreign = std::collections::BTreeSet::new();
    // Claude-like processes the bench did not start (another test run, say) are watched too,
    // and their latches land in the same histogram.
    let mut note_foreign = |status: &[Value]| {
        for i in status {
            let ours = i["pids"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p.as_i64().is_some_and(|p| pids.contains(&(p as i32))))
            });
            if !ours {
                foreign.insert(i["name"].as_str().unwrap_or("?").to_owned());
            }
        }
    };
    note_foreign(
        &wait_states(
            env,
            &socket,
            &pids,
            "healthy",
            Some(200),
            Duration::from_secs(90),
        )
        .context("waiting for the agents to be watched and healthy")?,
    );
    let before = parse_histogram(&scrape(metrics_port)?, DETECTION_HISTOGRAM)
        .context("the daemon exports no detection histogram")?;

    let load_start = loadavg();
    let sched_start = runqueue_wait(daemon.pid()).ok();
    let ticks_start = cpu_ticks(daemon.pid()).ok();
    let started = Instant::now();
    let (mut seen, mut cycles) = (0u64, 0u64);
    let mut next = 0;
    let budget_hit = loop {
        if seen >= plan.detect_decisions {
            break false;
        }
        if started.elapsed() >= plan.detect_budget {
            break true;
        }
        // A batch of agents latched together, then healed together.
        let batch: Vec<&Agent> = (0..plan.detect_batch.min(agents.len()))
            .map(|k| &agents[(next + k) % agents.len()])
            .collect();
        next = (next + batch.len()) % agents.len();
        let batch_pids: Vec<i32> = batch.iter().map(|a| a.proc.pid()).collect();
        for a in &batch {
            standin.post("/latch", &serde_json::json!({ "session": a.session }))?;
        }
        note_foreign(&wait_states(
            env,
            &socket,
            &batch_pids,
            "latched",
            None,
            Duration::from_secs(30),
        )?);
        seen += batch.len() as u64;
        cycles += 1;
        for a in &batch {
            standin.post("/unlatch", &serde_json::json!({ "session": a.session }))?;
        }
        note_foreign(&wait_states(
            env,
            &socket,
            &batch_pids,
            "healthy",
            Some(200),
            Duration::from_secs(30),
        )?);
    };
    let elapsed = started.elapsed();
    let runqueue = sched_start
        .zip(runqueue_wait(daemon.pid()).ok())
        .map(|((w0, s0), (w1, s1))| (Duration::from_nanos(w1 - w0), s1 - s0));
    let load = (load_start, loadavg());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_percent = ticks_start
        .zip(cpu_ticks(daemon.pid()).ok())
        .map(|(t0, t1)| (t1 - t0) as f64 / hz / elapsed.as_secs_f64() * 100.0);
    let histogram = parse_histogram(&scrape(metrics_port)?, DETECTION_HISTOGRAM)
        .context("the daemon exports no detection histogram")?
        .since(&before)
        .context("the detection histogram's buckets changed during the run")?;
    if histogram.count == 0 {
        bail!("the daemon recorded no latch decision");
    }
    drop(agents);
    drop(daemon);
    drop(standin);
    Ok(Detection {
        agents: plan.detect_agents,
        batch: plan.detect_batch,
        seen,
        cycles,
        histogram,
        elapsed,
        budget_hit,
        load,
        runqueue,
        cpu_percent,
        foreign: foreign.into_iter().collect(),
    })
}

impl Detection {
    fn report(&self, report: &mut Report) {
        let ms = |b: Option<f64>| {
            b.map_or_else(
                || "> 3600 s".to_owned(),
                |s| format!("≤ {}", fmt_ms(s * 1e3)),
            )
        };
        let h = &self.histogram;
        let p50 = h.quantile_bound(0.5);
        let p99 = h.quantile_bound(0.99);
        let mean_ms = h.sum / h.count as f64 * 1e3;
        report.row(
            Part(4, Some('b')),
            &format!(
                "detector decision latency: SSL_read return of a 401 → the daemon's latch decision (`{DETECTION_HISTOGRAM}`, {} light agents watched by `claude-watch daemon`)",
                self.agents
            ),
            &format!(
                "p50 {}, p99 {} (bucket upper bounds), mean {mean_ms:.2} ms; {} decisions",
                ms(p50),
                ms(p99),
                h.count
            ),
            "p99 < 5 ms",
            Some(p99.is_some_and(|b| b <= 0.005)),
        );
        let above_target = h.count
            - h.buckets
                .iter()
                .find(|(bound, _)| *bound >= 0.005)
                .map_or(0, |(_, n)| *n);
        let cpu = self.cpu_percent.map_or_else(String::new, |c| {
            format!(" The daemon used {c:.1}% of one core over the cycles.")
        });
        let runqueue = self.runqueue.map_or_else(String::new, |(wait, runs)| {
            format!(
                " Over the cycles the daemon's threads waited {:.0} ms in all for a CPU while runnable, over {runs} runs ({:.0} µs per run on average; `/proc/PID/task/*/schedstat`).",
                wait.as_secs_f64() * 1e3,
                wait.as_secs_f64() * 1e6 / runs.max(1) as f64
            )
        });
        let buckets: Vec<String> = h
            .buckets
            .iter()
            .take_while(|(bound, _)| *bound <= 0.01)
            .map(|(bound, n)| format!("≤ {}: {n}", fmt_ms(bound * 1e3)))
            .collect();
        report.note(format!(
            "Detector latency (4b): `claude-watch daemon` (dry run: nothing restarted) with `latch_min_401s = 1`, `latch_min_span = \"0s\"`, so each session's first 401 latches at once and each sample of `{DETECTION_HISTOGRAM}` is the time from the kernel timestamp of the SSL_read return carrying that 401 to the decision. {} node light agents (`tests/agents/agent.mjs` as `@anthropic-ai/claude-code/cli.js`, a turn every 300 ms) against the stand-in API; sessions latched {} at a time through its control API, each seen latched in `claude-watch status` and healed by unlatching: {} latch decisions in {} cycles, {:.1} s{} (load average {} at the start, {} at the end).{cpu}{runqueue} {above_target} of {} decisions took over 5 ms. Quantiles are the upper bounds of the histogram buckets holding them (a p99 of \"≤ 5 ms\" counts as meeting \"< 5 ms\"); cumulative buckets up to 10 ms: {}.{}",
            self.agents,
            self.batch,
            self.seen,
            self.cycles,
            self.elapsed.as_secs_f64(),
            if self.budget_hit {
                ", stopped by the time budget"
            } else {
                ""
            },
            self.load.0,
            self.load.1,
            h.count,
            buckets.join(", "),
            if h.count == self.seen {
                String::new()
            } else {
                format!(
                    " The histogram counted {} decisions, the bench saw {}{}.",
                    h.count,
                    self.seen,
                    if self.foreign.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; the daemon also watched {} Claude-like process(es) the bench did not start ({}), whose latches count too",
                            self.foreign.len(),
                            self.foreign.join(", ")
                        )
                    }
                )
            }
        ));
    }
}

/// Milliseconds as a short number: `0.25 ms`, `5 ms`.
fn fmt_ms(ms: f64) -> String {
    let s = format!("{ms:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} ms")
}

// ---------------------------------------------------------------------------------------------
// Part 5: footprint.

/// Resident memory and CPU of a process over a window.
#[derive(Clone, Copy, Debug)]
struct Usage {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_percent: f64,
}

struct Footprint {
    fleet: usize,
    window: Duration,
    idle: Usage,
    busy: Usage,
    busy_rate: f64,
    counters: Counters,
}

/// CPU ticks (utime + stime) of `pid`.
fn cpu_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3 of stat, so utime (14) and stime (15) are at 11 and 12.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// `VmRSS` and `VmHWM` of `pid` in KiB.
fn memory_kib(pid: i32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{name} missing"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn usage_over(pid: i32, window: Duration) -> anyhow::Result<Usage> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t0 = cpu_ticks(pid)?;
    let start = Instant::now();
    std::thread::sleep(window);
    let t1 = cpu_ticks(pid)?;
    let elapsed = start.elapsed().as_secs_f64();
    let (rss_kib, hwm_kib) = memory_kib(pid)?;
    Ok(Usage {
        rss_kib,
        hwm_kib,
        cpu_percent: (t1 - t0) as f64 / hz / elapsed * 100.0,
    })
}

fn footprint(env: &BenchEnv, plan: &Plan, port: u16) -> anyhow::Result<Footprint> {
    let mut fleet = Vec::new();
    for _ in 0..plan.fleet {
        fleet.push(Proc::spawn(
            "idle client",
            &mut env.client(Client::Node, "idle", port, &[]),
            true,
        )?);
    }
    for p in &fleet {
        p.wait_stdout(|l| l.contains("ready"), Duration::from_secs(120))?;
    }
    let trace = env.trace(&env.node, 8, true)?;
    let pid = trace.proc.pid();
    let idle = usage_over(pid, plan.window)?;
    for p in &fleet {
        p.signal(libc::SIGUSR1);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rx = trace.proc.stdout.as_ref().expect("stdout piped");
    let _ = rx.try_iter().count();
    let busy = usage_over(pid, plan.window)?;
    let printed = rx.try_iter().count();
    for p in &fleet {
        p.signal(libc::SIGTERM);
    }
    for p in &mut fleet {
        let _ = p.finish(Duration::from_secs(30));
    }
    let (status, counters) = trace.stop()?;
    if !status.success() {
        bail!("claude-watch trace exited with {status}");
    }
    Ok(Footprint {
        fleet: plan.fleet,
        window: plan.window,
        idle,
        busy,
        busy_rate: printed as f64 / plan.window.as_secs_f64(),
        counters,
    })
}

impl Footprint {
    fn report(&self, report: &mut Report) {
        let hwm_mib = self.idle.hwm_kib.max(self.busy.hwm_kib) as f64 / 1024.0;
        report.row(
            5,
            &format!(
                "claude-watch trace, {} watched node processes idle: RSS, CPU",
                self.fleet
            ),
            &format!(
                "RSS {:.1} MiB, CPU {:.1}% of one core",
                self.idle.rss_kib as f64 / 1024.0,
                self.idle.cpu_percent
            ),
            "RSS < 30 MB",
            Some(self.idle.rss_kib < 30 * 1000),
        );
        report.row(
            5,
            &format!(
                "… busy ({:.0} exchanges/s traced): RSS, peak RSS (VmHWM), CPU",
                self.busy_rate
            ),
            &format!(
                "RSS {:.1} MiB, peak {hwm_mib:.1} MiB, CPU {:.1}% of one core (lost {})",
                self.busy.rss_kib as f64 / 1024.0,
                self.busy.cpu_percent,
                self.counters.lost
            ),
            "RSS < 30 MB",
            Some(self.idle.hwm_kib.max(self.busy.hwm_kib) < 30 * 1000),
        );
        report.note(format!(
            "Footprint: each window is {:.0} s; CPU is utime+stime of the trace process from /proc/PID/stat over the window, memory VmRSS/VmHWM from /proc/PID/status (MiB = 1024 KiB; the target is read as 30 MB = 30,000 KiB).",
            self.window.as_secs_f64()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Part 6: locate.

struct Locate {
    binary: PathBuf,
    cold_ms: Vec<f64>,
    cached_ms: Vec<f64>,
    method: String,
}

fn locate(env: &BenchEnv, plan: &Plan) -> anyhow::Result<Locate> {
    let time = |cache: &Path| -> anyhow::Result<(f64, Value)> {
        let start = Instant::now();
        let out = Command::new(&env.claude_watch)
            .args(["locate", "--json", "--cache-dir"])
            .arg(cache)
            .arg(&env.claude)
            .stderr(Stdio::null())
            .output()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!("claude-watch locate {} failed", env.claude.display());
        }
        Ok((ms, serde_json::from_slice(&out.stdout)?))
    };
    // One untimed run brings the file into the page cache: "cold" means no locate cache.
    let warm = env.scratch.0.join("locate-warm");
    let (_, first) = time(&warm)?;
    let method = first["method"].as_str().unwrap_or("?").to_owned();
    let mut cold_ms = Vec::new();
    for i in 0..plan.locate_runs {
        let dir = env.scratch.0.join(format!("locate-cold-{i}"));
        cold_ms.push(time(&dir)?.0);
    }
    let mut cached_ms = Vec::new();
    for _ in 0..plan.locate_runs {
        cached_ms.push(time(&warm)?.0);
    }
    Ok(Locate {
        binary: env.claude.clone(),
        cold_ms,
        cached_ms,
        method,
    })
}

impl Locate {
    fn report(&self, report: &mut Report) {
        let cold = median(&self.cold_ms);
        let cached = median(&self.cached_ms);
        let (lo, hi) = min_max(&self.cold_ms);
        report.row(
            6,
            "locate SSL_write/SSL_read in Claude Code 2.1.331 (399 MB), no cache (whole `claude-watch locate` run)",
            &format!("{cold:.0} ms median ({lo:.0}–{hi:.0}, {} runs; {})", self.cold_ms.len(), self.method),
            "< 2 s",
            Some(cold < 2000.0),
        );
        let (lo, hi) = min_max(&self.cached_ms);
        report.row(
            6,
            "… same, cached by build id",
            &format!("{cached:.0} ms median ({lo:.0}–{hi:.0})"),
            "—",
            None,
        );
        report.note(format!(
            "Locate: {} with an empty cache directory per cold run, after one untimed run so the file is in the page cache.",
            self.binary.display()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

/// A part of the bench as the table shows it: a number, and a letter for a sub-part ("4b").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Part(u8, Option<char>);

impl From<u8> for Part {
    fn from(n: u8) -> Self {
        Self(n, None)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(sub) => write!(f, "{}{sub}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The rows, detail tables and notes of one run.
#[derive(Default)]
struct Report {
    rows: Vec<(Part, String, String, String, Option<bool>)>,
    details: Vec<(u8, String, String)>,
    notes: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        part: impl Into<Part>,
        measure: &str,
        result: &str,
        target: &str,
        met: Option<bool>,
    ) {
        self.rows.push((
            part.into(),
            measure.into(),
            result.into(),
            target.into(),
            met,
        ));
    }

    fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn failed(&mut self, part: impl Into<Part>, what: &str, err: &anyhow::Error) {
        let part = part.into();
        eprintln!("bench: part {part} ({what}) failed: {err:#}");
        self.row(part, what, &format!("FAILED: {err:#}"), "", Some(false));
        self.failures.push(format!("part {part} ({what}): {err:#}"));
    }

    fn detail(&mut self, part: u8, title: String, runs: &Runs, floor: bool) {
        let mut t = String::from(
            "| attached | wall ms, median | wall min–max | client CPU ms, median | wall ratio to none |\n|---|---|---|---|---|\n",
        );
        let base = median(&runs.wall_ms[0]);
        for (i, name) in ["nothing", "empty probes (floor)", "claude-watch trace"]
            .iter()
            .enumerate()
        {
            if i == 1 && !floor {
                let _ = writeln!(t, "| {name} | not measured | | | |");
                continue;
            }
            let (lo, hi) = min_max(&runs.wall_ms[i]);
            let m = median(&runs.wall_ms[i]);
            let _ = writeln!(
                t,
                "| {name} | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | {:.2} |",
                median(&runs.cpu_ms[i]),
                m / base
            );
        }
        self.details.push((part, title, t));
    }

    fn render(&self, machine: &str, smoke: bool, took: Duration) -> String {
        let mut s = String::from("# claude-watch benchmarks\n\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench{}` (took {:.0} s). Re-run it to refresh; numbers from a shared, busy machine carry the noise shown.\n",
            if smoke { " --smoke" } else { "" },
            took.as_secs_f64()
        );
        let _ = writeln!(s, "{machine}\n");
        s.push_str("## Results against the targets\n\n| part | measure | result | target | met |\n|---|---|---|---|---|\n");
        let mut rows = self.rows.clone();
        rows.sort_by_key(|r| r.0);
        for (part, measure, result, target, met) in &rows {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(s, "| {part} | {measure} | {result} | {target} | {met} |");
        }
        let mut details = self.details.iter().collect::<Vec<_>>();
        details.sort_by_key(|d| d.0);
        for (part, title, table) in details {
            let _ = writeln!(s, "\n### {part}. {title}\n\n{table}");
        }
        if !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

/// The machine, as a few Markdown lines.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(
            || "?".into(),
            |k| format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0),
        );
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!(
        "Machine: {nproc} CPUs ({cpu}), {mem} memory, Linux {}, load average at the end: {}.",
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_line_is_parsed() {
        let line = "claude-watch: kernel sent 2000 heads, skipped 31 other buffers, lost 7; user space ignored 1 invalid, 2 unpaired";
        assert_eq!(
            parse_counters(line),
            Some(Counters {
                sent: 2000,
                skipped: 31,
                lost: 7,
                invalid: 1,
                unpaired: 2
            })
        );
        assert_eq!(
            parse_counters("claude-watch: tracing (Ctrl-C to stop)"),
            None
        );
        assert_eq!(parse_counters("claude-watch: kernel sent 5 heads"), None);
    }

    #[test]
    fn percentiles_interpolate() {
        let xs = [4.0, 1.0, 3.0, 2.0];
        assert!((median(&xs) - 2.5).abs() < 1e-9);
        assert!((percentile(&xs, 0.0) - 1.0).abs() < 1e-9);
        assert!((percentile(&xs, 100.0) - 4.0).abs() < 1e-9);
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 99.0) - 4.96).abs() < 1e-9);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn floor_program_mirrors_the_attach_points() {
        let functions = vec![
            ("SSL_read".to_owned(), 0x100),
            ("SSL_write".to_owned(), 0x200),
        ];
        let by_name = floor_program(Path::new("/usr/bin/node"), true, &functions, "{}");
        assert_eq!(
            by_name,
            "uprobe:\"/usr/bin/node\":SSL_read {}\nuretprobe:\"/usr/bin/node\":SSL_read {}\nuprobe:\"/usr/bin/node\":SSL_write {}\nBEGIN { printf(\"ready\\n\"); }\n"
        );
        let by_offset = floor_program(Path::new("/b"), false, &functions, "{ @NAME = count(); }");
        assert!(by_offset.contains("uprobe:\"/b\":0x100 { @SSL_read = count(); }\n"));
        assert!(by_offset.contains("uretprobe:\"/b\":0x100 {}\n"));
        assert!(by_offset.contains("uprobe:\"/b\":0x200 { @SSL_write = count(); }\n"));
        assert!(!by_offset.contains("uretprobe:\"/b\":0x200"));
    }

    #[test]
    fn detection_histogram_is_parsed_and_read_as_bucket_bounds() {
        let text = "# HELP claude_watch_detection_seconds Latency.\n\
            # TYPE claude_watch_detection_seconds histogram\n\
            claude_watch_detection_seconds_bucket{le=\"0.0001\"} 0\n\
            claude_watch_detection_seconds_bucket{le=\"0.00025\"} 40\n\
            claude_watch_detection_seconds_bucket{le=\"0.0005\"} 98\n\
            claude_watch_detection_seconds_bucket{le=\"0.005\"} 99\n\
            claude_watch_detection_seconds_bucket{le=\"0.01\"} 99\n\
            claude_watch_detection_seconds_bucket{le=\"+Inf\"} 100\n\
            claude_watch_detection_seconds_sum 0.5\n\
            claude_watch_detection_seconds_count 100\n\
            claude_watch_recovery_seconds_count 7\n";
        let h = parse_histogram(text, DETECTION_HISTOGRAM).expect("histogram");
        assert_eq!(h.count, 100);
        assert!((h.sum - 0.5).abs() < 1e-12);
        assert_eq!(
            h.buckets,
            vec![
                (0.0001, 0),
                (0.00025, 40),
                (0.0005, 98),
                (0.005, 99),
                (0.01, 99)
            ]
        );
        // Rank 50 is in the 0.5 ms bucket, rank 99 in the 5 ms one, rank 100 past 10 ms.
        assert_eq!(h.quantile_bound(0.5), Some(0.0005));
        assert_eq!(h.quantile_bound(0.4), Some(0.00025));
        assert_eq!(h.quantile_bound(0.99), Some(0.005));
        assert_eq!(h.quantile_bound(1.0), None);
        assert_eq!(Histogram::default().quantile_bound(0.5), None);
        assert_eq!(parse_histogram(text, "claude_watch_absent_seconds"), None);
        let before = Histogram {
            buckets: vec![
                (0.0001, 0),
                (0.00025, 10),
                (0.0005, 10),
                (0.005, 10),
                (0.01, 10),
            ],
            count: 10,
            sum: 0.002,
        };
        let delta = h.since(&before).expect("same buckets");
        assert_eq!(delta.count, 90);
        assert_eq!(
            delta.buckets,
            vec![
                (0.0001, 0),
                (0.00025, 30),
                (0.0005, 88),
                (0.005, 89),
                (0.01, 89)
            ]
        );
        assert!((delta.sum - 0.498).abs() < 1e-12);
        assert_eq!(before.since(&h), None, "counts only grow");
        let other = Histogram {
            buckets: vec![(0.001, 0)],
            ..Histogram::default()
        };
        assert_eq!(h.since(&other), None, "different buckets");
        assert_eq!(fmt_ms(0.25), "0.25 ms");
        assert_eq!(fmt_ms(5.0), "5 ms");
        assert_eq!(Part(4, Some('b')).to_string(), "4b");
        assert!(Part::from(4) < Part(4, Some('b')) && Part(4, Some('b')) < Part::from(5));
    }

    #[test]
    fn verdicts_account_for_noise() {
        assert_eq!(verdict(1.01, 1.02, 1.02), Some(true));
        assert_eq!(verdict(1.01, 1.30, 1.02), None);
        assert_eq!(verdict(1.05, 1.01, 1.02), Some(false));
    }

    #[test]
    fn proc_stat_fields() {
        let ticks = cpu_ticks(i32::try_from(std::process::id()).unwrap()).unwrap();
        let (rss, hwm) = memory_kib(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
        let _ = ticks;
    }
}
