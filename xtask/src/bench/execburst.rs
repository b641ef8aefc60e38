//! Bench part 7: what the per-exec check costs. The daemon runs with its built-in settings (and
//! scratch state) while a burst of execs of assorted executables goes by: copies of `/bin/true`
//! it has never seen (each one file read, then cached), `env` running `true`, and Bun programs
//! that carry Claude Code's banner (standing in for Claude Code, which is too heavy to start by
//! the dozen), each under a name of its own (hard links of one file, located once before the
//! burst). Nothing may be missed: every banner-carrying process is listed by `claude-watch
//! status`, and the kernel lost no record. The daemon's CPU over the burst, divided by the
//! execs, is its cost per exec.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::report::Part;
use super::{BenchEnv, Report, cpu_ticks, daemon_status};

/// What one burst measured.
pub(super) struct ExecBurst {
    /// Execs in the burst.
    pub(super) execs: usize,
    /// Distinct files never seen before (one content read each).
    pub(super) unknown_files: usize,
    /// Banner-carrying processes started, and how many the daemon listed.
    pub(super) claude_expected: usize,
    /// ...listed by `status`.
    pub(super) claude_found: usize,
    /// The daemon's CPU over the burst (utime + stime), ms.
    pub(super) cpu_ms: f64,
    /// How long the burst took, s.
    pub(super) seconds: f64,
    /// Records the kernel lost during the burst.
    pub(super) lost: u64,
}

impl ExecBurst {
    /// The daemon's CPU per exec, µs.
    pub(super) fn cpu_per_exec_us(&self) -> f64 {
        self.cpu_ms * 1000.0 / self.execs as f64
    }
}

/// Kills a child (and reaps it) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `lost` count of `claude-watch status` (its `probes:` line).
fn lost(claude_watch: &Path, socket: &Path) -> anyhow::Result<u64> {
    let out = Command::new(claude_watch)
        .args(["status", "--socket"])
        .arg(socket)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "probes: 3 attached, 78 records, 0 lost; 26 exchanges seen"
    text.lines()
        .find_map(|l| l.strip_prefix("probes: "))
        .and_then(|l| l.split(" lost").next()?.rsplit(' ').next()?.parse().ok())
        .with_context(|| format!("no lost count in status: {text}"))
}

/// Runs one burst (1,000 execs, 20 of them banner-carrying, 50 files never seen; a tenth of
/// that for `smoke`).
pub(super) fn run(env: &BenchEnv, root: &Path, smoke: bool) -> anyhow::Result<ExecBurst> {
    let (execs, claudes, unknown) = if smoke { (100, 3, 10) } else { (1000, 20, 50) };
    burst(
        env,
        &pinned_bun(root),
        &env.scratch.0,
        execs,
        claudes,
        unknown,
    )
}

/// Runs one burst of `execs` execs, `claudes` of them banner-carrying Bun programs built with
/// `bun`, `unknown` distinct copies of `/bin/true`, under the bench's daemon binary, whose state
/// lives in `scratch`.
fn burst(
    env: &BenchEnv,
    bun: &Path,
    scratch: &Path,
    execs: usize,
    claudes: usize,
    unknown: usize,
) -> anyhow::Result<ExecBurst> {
    let dir = scratch.join("execburst");
    std::fs::create_dir_all(&dir)?;
    // A Bun program whose entry module opens with Claude Code's banner (the bundler keeps a
    // `--banner`, not ordinary comments).
    let source = dir.join("cli.js");
    std::fs::write(&source, "setTimeout(() => {}, 60000);\n")?;
    let built = dir.join("claude-like");
    let compiled = Command::new(bun)
        .args(["build", "--compile", "--banner"])
        .arg("// (c) Anthropic PBC. All rights reserved. Use is subject to the Legal Agreements outlined here: https://code.claude.com/docs/en/legal-and-compliance.\n\n// Version: 9.9.9-bench")
        .arg(&source)
        .arg("--outfile")
        .arg(&built)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .status()
        .context("bun build --compile")?;
    if !compiled.success() {
        bail!("bun build --compile failed");
    }
    let mut names = Vec::new();
    for i in 0..claudes {
        let name = dir.join(format!("agent-{i}"));
        std::fs::hard_link(&built, &name)?;
        names.push(name);
    }
    let mut trues = Vec::new();
    for i in 0..unknown {
        let name = dir.join(format!("true-{i}"));
        std::fs::copy("/bin/true", &name)?;
        trues.push(name);
    }

    let (config, socket) = scratch_config(&dir, "")?;
    let mut daemon = spawn_daemon(env, &config, &[])?;
    let stderr = daemon.0.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("claude-watch is watching") => break,
            Some(Ok(_)) => {}
            _ => bail!("the daemon exited before it watched"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let pid = daemon.0.id();
    // One banner-carrying process first, so the file is located (and its offsets cached)
    // before the measurement: the burst measures the per-exec check, not the locator.
    let warm_name = dir.join("agent-warm");
    std::fs::hard_link(&built, &warm_name)?;
    let warm = Reaped(Command::new(&warm_name).stdout(Stdio::null()).spawn()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon_status(env, &socket)?.iter().any(|i| {
        i["pids"]
            .as_array()
            .is_some_and(|ps| ps.contains(&serde_json::Value::from(warm.0.id())))
    }) {
        if Instant::now() > deadline {
            bail!("the warm-up process was never listed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let lost0 = lost(&env.claude_watch, &socket)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let pid = i32::try_from(pid).context("daemon pid")?;
    let t0 = cpu_ticks(pid)?;
    let started = Instant::now();

    let mut running = Vec::new();
    let mut done = 0;
    let every = (execs / claudes.max(1)).max(1);
    let mut i = 0;
    while done < execs {
        if i % every == 0 && running.len() < claudes {
            running.push(Reaped(
                Command::new(&names[running.len()])
                    .stdout(Stdio::null())
                    .spawn()?,
            ));
            done += 1;
        } else if i % 5 == 4 && done + 2 <= execs {
            // `env` execs `true`: two execs.
            Command::new("/usr/bin/env")
                .arg(&trues[i % trues.len()])
                .status()?;
            done += 2;
        } else {
            Command::new(&trues[i % trues.len()]).status()?;
            done += 1;
        }
        i += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Let the daemon finish the burst's records, then read its CPU.
    std::thread::sleep(Duration::from_millis(1500));
    let t1 = cpu_ticks(pid)?;
    let listed = daemon_status(env, &socket)?;
    let claude_found = running
        .iter()
        .filter(|p| {
            listed.iter().any(|i| {
                i["version"] == "9.9.9-bench"
                    && i["pids"]
                        .as_array()
                        .is_some_and(|ps| ps.contains(&serde_json::Value::from(p.0.id())))
            })
        })
        .count();
    let lost1 = lost(&env.claude_watch, &socket)?;
    Ok(ExecBurst {
        execs: done,
        unknown_files: unknown,
        claude_expected: running.len(),
        claude_found,
        cpu_ms: (t1 - t0) as f64 / hz * 1000.0,
        seconds,
        lost: lost1.saturating_sub(lost0),
    })
}

impl ExecBurst {
    /// Its rows in the report; a missed Claude process or a lost record fails the bench.
    pub(super) fn report(&self, report: &mut Report) {
        let missed = self.claude_found != self.claude_expected || self.lost != 0;
        report.row(
            7,
            &format!(
                "daemon CPU per exec, burst of {} execs ({} files never seen, {} Claude-banner processes)",
                self.execs, self.unknown_files, self.claude_expected
            ),
            &format!(
                "{:.1} µs per exec ({:.0} ms CPU over {:.1} s); {}/{} Claude processes listed, {} records lost",
                self.cpu_per_exec_us(),
                self.cpu_ms,
                self.seconds,
                self.claude_found,
                self.claude_expected,
                self.lost
            ),
            "no exec missed",
            Some(!missed),
        );
        report.note("Exec burst (part 7): the daemon with its built-in settings while execs of copies of /bin/true it has never seen, `env true`, and Bun programs compiled here whose entry carries Claude Code's banner (stand-ins for Claude Code, too heavy to start by the dozen; hard links of one file, located before the burst) go by. CPU is the daemon's utime+stime over the burst and 1.5 s after it, divided by the execs, at CLK_TCK resolution (10 ms).".into());
        if missed {
            report.failures.push(format!(
                "part 7: {}/{} Claude processes listed, {} records lost",
                self.claude_found, self.claude_expected, self.lost
            ));
        }
    }
}

/// A daemon configuration whose files all live in `dir`, with `extra` `[daemon]` keys; returns
/// it and its control socket.
fn scratch_config(dir: &Path, extra: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let socket = dir.join("control.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\njournal = \"{d}/journal.jsonl\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{}\"\nlocate_cache = \"{d}/locate\"\n{extra}",
            socket.display(),
            d = dir.display()
        ),
    )?;
    Ok((config, socket))
}

/// The bench's daemon on `config` with `extra` arguments, its stderr piped.
fn spawn_daemon(env: &BenchEnv, config: &Path, extra: &[&str]) -> anyhow::Result<Reaped> {
    let child = Command::new(&env.claude_watch)
        .arg("daemon")
        .args(extra)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the daemon")?;
    Ok(Reaped(child))
}

/// Where the bench keeps the Bun it compiles with: the pinned 1.4.5.
fn pinned_bun(root: &Path) -> PathBuf {
    root.join(".test-deps/npm/bun-1.4.5/node_modules/@oven/bun-linux-x64/bin/bun")
}

/// What the exec loop measured (part 7b): one program exec'd in a loop, with no daemon, with
/// the daemon's exec filter off (every exec to user space) and on, and with the filter on and
/// an image never judged (the program grows a byte before each exec: a new image each time),
/// rounds taken side by side.
pub(super) struct ExecLoop {
    /// Execs per round.
    pub(super) execs: usize,
    /// Seconds per round, by configuration ([`CONFIGS`]).
    pub(super) rounds: [Vec<f64>; 5],
    /// `sched_process_exec`'s average run time (ns) with the filter off, on, and on with an
    /// image never judged, from the daemon's `--probe-time`.
    pub(super) exec_ns: [Option<u64>; 3],
    /// `sched_process_exit`'s, likewise.
    pub(super) exit_ns: [Option<u64>; 3],
    /// The empty floor's two programs, per run (ns), by the same statistics: runs and total
    /// run time over the floor's rounds.
    pub(super) floor_runs: (u64, u64),
}

const CONFIGS: [&str; 5] = [
    "no eBPF",
    "empty floor (bpftrace, empty programs on the sched_process_exec and exit tracepoints)",
    "claude-watch, exec_filter = false",
    "claude-watch",
    "claude-watch, an image not judged yet at each exec (the program grows a byte before it)",
];

/// Runs the exec loop: 3 rounds of 3,000 execs per configuration (1 round of 300 for `smoke`),
/// the configurations in a rotating order so that drift on a shared machine falls on each.
pub(super) fn exec_loop(env: &BenchEnv, smoke: bool) -> anyhow::Result<ExecLoop> {
    let (rounds, execs) = if smoke { (1, 300) } else { (3, 3000) };
    // bpftrace's tracepoints need tracefs, which some machines leave unmounted.
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    let dir = env.scratch.0.join("execloop");
    std::fs::create_dir_all(&dir)?;
    let program = dir.join("tool");
    std::fs::copy("/bin/true", &program)?;
    let run = |n: usize| -> anyhow::Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            Command::new(&program).status()?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    // A program whose image is new at every exec: its size (part of the image's key) grows.
    let growing = dir.join("tool-grows");
    std::fs::copy("/bin/true", &growing)?;
    let run_growing = |n: usize| -> anyhow::Result<f64> {
        use std::io::Write as _;
        let t = Instant::now();
        for _ in 0..n {
            // A reader of the last process's `/proc` files (a daemon that woke for its exec)
            // may still hold its memory map, and with it the file's exec'd state: wait for it.
            let mut file = loop {
                match std::fs::OpenOptions::new().append(true).open(&growing) {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    opened => break opened?,
                }
            };
            file.write_all(b"\0")?;
            drop(file);
            Command::new(&growing).status()?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let mut out = ExecLoop {
        execs,
        rounds: [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()],
        exec_ns: [None; 3],
        exit_ns: [None; 3],
        floor_runs: (0, 0),
    };
    for round in 0..rounds {
        for k in 0..CONFIGS.len() {
            let which = (k + round) % CONFIGS.len();
            if which == 0 {
                out.rounds[0].push(run(execs)?);
                continue;
            }
            if which == 1 {
                let floor = super::overhead::Bpftrace::start(
                    "tracepoint:sched:sched_process_exec { } tracepoint:sched:sched_process_exit { } BEGIN { printf(\"ready\\n\"); }",
                    false,
                );
                match floor {
                    Ok(floor) => {
                        // On for the daemon's rounds too (`--probe-time`).
                        let stats = super::process::BpfStats::on()?;
                        out.rounds[1].push(run(execs)?);
                        for (_, runs, ns) in stats.programs_of(floor.proc.pid())? {
                            out.floor_runs.0 += runs;
                            out.floor_runs.1 += ns;
                        }
                        floor.stop()?;
                    }
                    Err(e) => eprintln!("bench: part 7b: no empty floor ({e:#})"),
                }
                continue;
            }
            let filter = which != 2;
            let (config, _) = scratch_config(&dir, &format!("exec_filter = {filter}\n"))?;
            let mut daemon = spawn_daemon(env, &config, &["--probe-time"])?;
            let stderr = daemon.0.stderr.take().context("stderr")?;
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            loop {
                match rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(l) if l.contains("claude-watch is watching") => break,
                    Ok(_) => {}
                    Err(_) => bail!("the daemon never watched"),
                }
            }
            // Execs until discovery has judged the file twice (its first look runs off the
            // event loop) and a tick has put it in the kernel's map: what a host's daemon has
            // done for its tools long before.
            for _ in 0..3 {
                run(1)?;
                std::thread::sleep(Duration::from_millis(400));
            }
            out.rounds[which].push(if which == 4 {
                run_growing(execs)?
            } else {
                run(execs)?
            });
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
            let _ = daemon.0.wait();
            let times = rx
                .try_iter()
                .find_map(|l| super::process::parse_probe_times(&l))
                .context("no probe time line from the daemon")?;
            let avg = |name: &str| times.iter().find(|t| t.program == name).map(|t| t.avg_ns);
            out.exec_ns[which - 2] = avg("sched_process_exec");
            out.exit_ns[which - 2] = avg("sched_process_exit");
        }
    }
    Ok(out)
}

impl ExecLoop {
    /// Its rows in the report.
    pub(super) fn report(&self, report: &mut Report) {
        let median = |xs: &[f64]| super::stats::median(xs);
        let none = median(&self.rounds[0]);
        let floor = median(&self.rounds[1]);
        for (k, label) in CONFIGS.iter().enumerate() {
            if self.rounds[k].is_empty() {
                report.row(
                    Part(7, Some('b')),
                    &format!("exec loop: {label}"),
                    "not measured",
                    "",
                    None,
                );
                continue;
            }
            let m = median(&self.rounds[k]);
            let per_exec_us = m * 1e6 / self.execs as f64;
            let ratios = if k >= 2 && floor.is_finite() {
                format!(
                    "{:.3}x the empty floor, {:.3}x no eBPF",
                    m / floor,
                    m / none
                )
            } else {
                format!("{:.3}x no eBPF", m / none)
            };
            let kernel = match k {
                1 if self.floor_runs.0 > 0 => format!(
                    "; the empty programs {} ns/run",
                    self.floor_runs.1 / self.floor_runs.0
                ),
                0 | 1 => String::new(),
                k => format!(
                    "; sched_process_exec {} ns/run, sched_process_exit {} ns/run",
                    self.exec_ns[k - 2].map_or("-".into(), |n| n.to_string()),
                    self.exit_ns[k - 2].map_or("-".into(), |n| n.to_string())
                ),
            };
            report.row(
                Part(7, Some('b')),
                &format!("exec loop, {} execs of one program: {label}", self.execs),
                &format!(
                    "{per_exec_us:.0} µs per exec, {ratios} (rounds {}){kernel}",
                    self.rounds[k]
                        .iter()
                        .map(|s| format!("{s:.2} s"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                if k == 3 {
                    "<= 1.02x the floor; exec <= 1 µs/run"
                } else {
                    ""
                },
                None,
            );
        }
        report.note("Exec loop (part 7b): one copy of /bin/true fork+exec'd in a loop by the bench (Rust's Command), with no eBPF program, with empty bpftrace programs on the two tracepoints (the floor any exec watcher pays), with the daemon and `exec_filter = false` (every exec reported to user space, as before the filter), with the daemon's defaults (the exec stays in the kernel once discovery has judged the file twice), and with the daemon's defaults while the program grows a byte before each exec (its size is part of the image's key, so every exec is of an image not judged yet and reaches the daemon, as a program run once does; the loop's time includes the write); rounds alternate in a rotating order. Kernel figures: the daemon's `--probe-time` (the kernel's run-time statistics, which add two clock reads per run), averaged over the daemon's life: the two warm-up execs weigh a few ns in the filtered average. The empty floor's figure is the same statistics (`kernel.bpf_stats_enabled`, `bpftool prog show`) over its rounds: bpftrace's two programs, which do nothing (its tracepoints are the classic ones, ours raw tracepoints).".into());
    }
}
