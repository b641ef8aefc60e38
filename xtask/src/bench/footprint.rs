//! Part 5: footprint.

use super::*;

/// Resident memory and CPU of a process over a window.
#[derive(Clone, Copy, Debug)]
pub(super) struct Usage {
    pub(super) rss_kib: u64,
    pub(super) hwm_kib: u64,
    pub(super) cpu_percent: f64,
}

pub(super) struct Footprint {
    pub(super) fleet: usize,
    pub(super) window: Duration,
    pub(super) idle: Usage,
    pub(super) busy: Usage,
    pub(super) busy_rate: f64,
    pub(super) counters: Counters,
}

/// CPU ticks (utime + stime) of `pid`.
pub(super) fn cpu_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3 of stat, so utime (14) and stime (15) are at 11 and 12.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// `VmRSS` and `VmHWM` of `pid` in KiB.
pub(super) fn memory_kib(pid: i32) -> anyhow::Result<(u64, u64)> {
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

/// Where `pid`'s resident memory is, in KiB, from `/proc/PID/smaps`: the BPF ring buffer and
/// maps mapped into it, its own executable, other files (libraries), the main heap (`[heap]`,
/// glibc's main arena), and other anonymous memory (other threads' malloc arenas, stacks).
pub(super) fn rss_parts(pid: i32) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let mut parts = [
        ("the BPF ring buffer", 0u64),
        ("claude-watch's executable", 0),
        ("other files", 0),
        ("the main heap", 0),
        ("other anonymous memory (thread arenas, stacks)", 0),
    ];
    let mut current = 4;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line.split_whitespace().nth(5).unwrap_or("");
            current = if name.contains("bpf") {
                0
            } else if std::path::Path::new(name) == exe {
                1
            } else if name.starts_with('/') {
                2
            } else if name == "[heap]" {
                3
            } else {
                4
            };
        } else if first == "Rss:" {
            parts[current].1 += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(parts.to_vec())
}

pub(super) fn usage_over(pid: i32, window: Duration) -> anyhow::Result<Usage> {
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

pub(super) fn footprint(env: &BenchEnv, plan: &Plan, port: u16) -> anyhow::Result<Footprint> {
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
    let trace = env.trace(&env.node, RING_MIB, true)?;
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
    pub(super) fn report(&self, report: &mut Report) {
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
