//! Processes.

use super::*;

/// One line of a child's output, with the CLOCK_MONOTONIC time it was read.
pub(super) struct Line {
    pub(super) mono_ns: u64,
    pub(super) text: String,
}

/// A started process, killed and reaped when dropped, so an error leaves nothing running.
pub(super) struct Proc {
    pub(super) name: &'static str,
    pub(super) child: Child,
    pub(super) stdout: Option<Receiver<Line>>,
    pub(super) stderr: Receiver<Line>,
    /// Leads a process group of its own: signals and the final kill go to the whole group.
    pub(super) group: bool,
}

impl Proc {
    /// Spawns `cmd` with stdin closed, stderr piped, and stdout piped when `pipe_stdout`
    /// (else as `cmd` set it, or inherited).
    pub(super) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
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
    pub(super) fn spawn_group(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        shared::lead_own_group(cmd);
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
    pub(super) fn exited_unreaped(&self) -> Option<bool> {
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

    pub(super) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    pub(super) fn signal(&self, signal: i32) {
        let target = if self.group { -self.pid() } else { self.pid() };
        // SAFETY: kill(2) on our own child (or its group), which we have not reaped yet.
        unsafe { libc::kill(target, signal) };
    }

    pub(super) fn wait_stdout(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Line> {
        let rx = self.stdout.as_ref().context("stdout is not piped")?;
        wait_line(self.name, rx, pred, timeout)
    }

    pub(super) fn wait_stderr(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Line> {
        wait_line(self.name, &self.stderr, pred, timeout)
    }

    /// Waits for the process to close its stdout and exit successfully; returns its stdout lines.
    pub(super) fn finish(&mut self, timeout: Duration) -> anyhow::Result<Vec<Line>> {
        let (status, lines) = self.collect(timeout)?;
        if !status.success() {
            let err: Vec<String> = self.stderr.try_iter().map(|l| l.text).collect();
            bail!("{} failed ({status}): {}", self.name, err.join(" / "));
        }
        Ok(lines)
    }

    /// Waits for the process to close its stdout and exit; returns its status and stdout lines.
    pub(super) fn collect(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Vec<Line>)> {
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
    pub(super) fn interrupt(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        self.signal(libc::SIGINT);
        let status = self.wait_exit(Instant::now() + timeout)?;
        // The stderr reader ends at the pipe's end, right after the exit.
        let mut err = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            err.push(line.text);
        }
        Ok((status, err))
    }

    pub(super) fn wait_exit(&mut self, deadline: Instant) -> anyhow::Result<ExitStatus> {
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
pub(super) fn reader(pipe: impl Read + Send + 'static) -> Receiver<Line> {
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

pub(super) fn wait_line(
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
pub(super) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A running `claude-watch trace`.
pub(super) struct Trace {
    pub(super) proc: Proc,
}

impl Trace {
    /// Stops the trace with SIGINT and reads its final counters line.
    pub(super) fn stop(self) -> anyhow::Result<(ExitStatus, Counters)> {
        self.stop_timed()
            .map(|(status, counters, _)| (status, counters))
    }

    /// [`Self::stop`], also reading the `probe time:` line of a trace run with `--probe-time`
    /// (empty without it).
    pub(super) fn stop_timed(mut self) -> anyhow::Result<(ExitStatus, Counters, Vec<ProbeTime>)> {
        let (status, stderr) = self.proc.interrupt(Duration::from_secs(20))?;
        let counters = stderr
            .iter()
            .find_map(|l| parse_counters(l))
            .with_context(|| format!("no counters line from trace: {}", stderr.join(" / ")))?;
        let times = stderr
            .iter()
            .find_map(|l| parse_probe_times(l))
            .unwrap_or_default();
        Ok((status, counters, times))
    }
}

/// One eBPF program's runs and average run time, from `trace --probe-time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ProbeTime {
    pub(super) program: String,
    pub(super) runs: u64,
    pub(super) avg_ns: u64,
}

/// The SSL programs' eBPF run time per request over `requests` requests, in µs, and each
/// program's runs per request × ns per run (`ssl_write 4.0 runs × 2700 ns, ...`).
pub(super) fn ssl_per_request(times: &[ProbeTime], requests: f64) -> (f64, String) {
    let ssl = || times.iter().filter(|t| t.program.starts_with("ssl_"));
    let us = ssl().map(|t| t.runs as f64 * t.avg_ns as f64).sum::<f64>() / 1000.0 / requests;
    let each = ssl()
        .map(|t| {
            format!(
                "{} {:.1} runs × {} ns",
                t.program,
                t.runs as f64 / requests,
                t.avg_ns
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    (us, each)
}

/// The kernel's BPF run-time statistics (`kernel.bpf_stats_enabled`), on while this lives: what
/// the empty floor's bpftrace programs cost per run (the daemon and trace turn them on for
/// their own programs with `--probe-time`).
pub(super) struct BpfStats;

impl BpfStats {
    pub(super) fn on() -> anyhow::Result<Self> {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("turning on kernel.bpf_stats_enabled")?;
        Ok(Self)
    }

    /// Name, runs and total run time (ns) of the programs process `pid` (bpftrace) holds (the
    /// `prog_id` of its descriptors; this bpftool lists no pids), over the time statistics
    /// were on (`bpftool prog show`).
    pub(super) fn programs_of(&self, pid: i32) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .context("reading bpftrace's descriptors")?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("prog_id:"))
                    .and_then(|id| id.trim().parse().ok())
            })
            .collect();
        let out = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()
            .context("running bpftool prog show")?;
        let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
        Ok(progs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_owned(),
                    p["run_cnt"].as_u64()?,
                    p["run_time_ns"].as_u64()?,
                ))
            })
            .filter(|(_, runs, _)| *runs > 0)
            .collect())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

/// Parses `claude-watch: probe time: ssl_write 2000 2512ns, ssl_read_return 4000 1500ns`.
pub(super) fn parse_probe_times(line: &str) -> Option<Vec<ProbeTime>> {
    let rest = line.split("probe time: ").nth(1)?;
    if rest.trim() == "no program ran" {
        return Some(Vec::new());
    }
    rest.split(", ")
        .map(|part| {
            let mut words = part.split_whitespace();
            Some(ProbeTime {
                program: words.next()?.to_owned(),
                runs: words.next()?.parse().ok()?,
                avg_ns: words.next()?.strip_suffix("ns")?.parse().ok()?,
            })
        })
        .collect()
}

/// The final counters line of `claude-watch trace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub(super) sent: u64,
    pub(super) skipped: u64,
    pub(super) lost: u64,
    pub(super) invalid: u64,
    pub(super) unpaired: u64,
}

/// Parses `claude-watch: kernel sent N heads, skipped N other buffers (body reads at their
/// entry: N), lost N; user space ignored N invalid, N unpaired`.
pub(super) fn parse_counters(line: &str) -> Option<Counters> {
    let rest = line.split("kernel sent ").nth(1)?;
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match numbers[..] {
        [sent, skipped, _body_reads, lost, invalid, unpaired] => Some(Counters {
            sent,
            skipped,
            lost,
            invalid,
            unpaired,
        }),
        _ => None,
    }
}
