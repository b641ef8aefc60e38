//! Parts 1 and 2: probe overhead.

use super::*;

/// What is attached while a client runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    /// Nothing.
    None,
    /// Empty bpftrace probes on the same functions: the kernel's floor.
    Floor,
    /// `claude-watch trace --wakeup POLICY --binary CLIENT`.
    Watch(&'static str),
}

/// The wake-up policies measured (`trace --wakeup`, the daemon's `[daemon] wakeup`); the first
/// is the default, the one the targets are read against.
pub(super) const POLICIES: [&str; 3] = ["errors", "responses", "timer"];

/// Every variant, in the order of [`Runs`]: nothing, the floor, then each policy.
pub(super) const VARIANTS: [Variant; 5] = [
    Variant::None,
    Variant::Floor,
    Variant::Watch(POLICIES[0]),
    Variant::Watch(POLICIES[1]),
    Variant::Watch(POLICIES[2]),
];

/// Index in [`VARIANTS`] of nothing, the floor, and claude-watch as installed (the default
/// policy).
pub(super) const NONE: usize = 0;
pub(super) const FLOOR: usize = 1;
pub(super) const WATCH: usize = 2;

/// The functions `claude-watch locate` finds in a binary, as (name, file offset).
pub(super) fn located_functions(
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
pub(super) fn floor_program(
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
pub(super) struct Bpftrace {
    pub(super) proc: Proc,
}

impl Bpftrace {
    pub(super) fn start(program: &str, unsafe_: bool) -> anyhow::Result<Self> {
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
    pub(super) fn stop(mut self) -> anyhow::Result<Vec<String>> {
        self.proc.signal(libc::SIGINT);
        let (_, lines) = self.proc.collect(Duration::from_secs(20))?;
        Ok(lines.into_iter().map(|l| l.text).collect())
    }
}

/// Something attached for one variant; detached when dropped.
pub(super) enum Attached {
    None,
    Floor(Bpftrace),
    Watch(Trace),
}

/// Timings of one workload: per variant (as in [`VARIANTS`]), per round.
#[derive(Debug, Default)]
pub(super) struct Runs {
    pub(super) wall_ms: [Vec<f64>; VARIANTS.len()],
    pub(super) cpu_ms: [Vec<f64>; VARIANTS.len()],
}

impl Runs {
    /// Median wall time of variant `i` over variant `base`, and the spread of the per-round
    /// ratios.
    pub(super) fn ratio(&self, i: usize, base: usize) -> (f64, f64, f64) {
        let per_round: Vec<f64> = self.wall_ms[i]
            .iter()
            .zip(&self.wall_ms[base])
            .map(|(w, b)| w / b)
            .collect();
        let (lo, hi) = min_max(&per_round);
        (
            median(&self.wall_ms[i]) / median(&self.wall_ms[base]),
            lo,
            hi,
        )
    }

    /// Median extra client CPU of variant `i` over variant `base` per unit of work (µs), and
    /// the spread of the per-round differences.
    pub(super) fn extra_cpu_us(&self, i: usize, base: usize, n: u32) -> (f64, f64, f64) {
        let per = |ms: f64| ms * 1000.0 / f64::from(n);
        let per_round: Vec<f64> = self.cpu_ms[i]
            .iter()
            .zip(&self.cpu_ms[base])
            .map(|(w, b)| per(w - b))
            .collect();
        let (lo, hi) = min_max(&per_round);
        (
            per(median(&self.cpu_ms[i]) - median(&self.cpu_ms[base])),
            lo,
            hi,
        )
    }
}

/// Results of parts 1 or 2.
pub(super) struct Overhead {
    pub(super) client: Client,
    pub(super) plan: Plan,
    pub(super) requests: Runs,
    pub(super) stream: Runs,
    /// Why the floor was not measured, if it was not.
    pub(super) floor_missing: Option<String>,
    /// Counters of the last claude-watch run.
    pub(super) counters: Option<Counters>,
    /// Per policy: the eBPF programs' runs and average times over one extra request loop run
    /// with the kernel's run-time statistics on.
    pub(super) probe_times: Vec<(&'static str, Vec<ProbeTime>)>,
    /// The empty floor's programs over one more request loop with the statistics on: runs and
    /// total run time (ns).
    pub(super) floor_times: Option<(u64, u64)>,
    pub(super) how: String,
}

pub(super) fn overhead(
    env: &BenchEnv,
    plan: &Plan,
    client: Client,
    port: u16,
) -> anyhow::Result<Overhead> {
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
        probe_times: Vec::new(),
        floor_times: None,
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
                Variant::Watch(policy) => Attached::Watch(env.trace_with(
                    &binary,
                    RING_MIB,
                    false,
                    &["--wakeup", policy],
                )?),
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
                    if i == WATCH {
                        out.counters = Some(counters);
                    }
                }
            }
        }
        eprintln!("bench:   round {}/{} done", round + 1, plan.rounds);
    }
    // Where the kernel's time goes, per policy: one more request loop with the kernel's
    // run-time statistics on (they add two clock reads per run, so the timed rounds run
    // without them).
    for policy in POLICIES {
        let t = env.trace_with(
            &binary,
            RING_MIB,
            false,
            &["--wakeup", policy, "--probe-time"],
        )?;
        env.run_client(client, "requests", port, &requests)?;
        let (_, _, times) = t.stop_timed()?;
        out.probe_times.push((policy, times));
    }
    // The floor's own run time, the same way: the price of an empty program on each probe.
    if out.floor_missing.is_none() {
        let stats = BpfStats::on()?;
        let b = Bpftrace::start(&floor, !by_symbol)?;
        env.run_client(client, "requests", port, &requests)?;
        let programs = stats.programs_of(b.proc.pid())?;
        b.stop()?;
        out.floor_times = Some(
            programs
                .iter()
                .fold((0, 0), |(r, t), (_, runs, ns)| (r + runs, t + ns)),
        );
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
pub(super) fn check_floor(
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
    pub(super) fn report(&self, part: u8, report: &mut Report) {
        let who = self.client.name();
        let floor = self.floor_missing.is_none();
        let requests = &self.requests;
        if floor {
            noisy_row(
                report,
                part,
                &format!("{who} request loop: wall time, claude-watch / empty-probe floor"),
                requests.ratio(WATCH, FLOOR),
                |x| format!("{x:.2}"),
                (1.05, "≤ 1.05"),
            );
            noisy_row(
                report,
                part,
                &format!("{who} request loop: client CPU per request over the empty-probe floor"),
                requests.extra_cpu_us(WATCH, FLOOR, self.plan.requests),
                |x| format!("{x:.1}"),
                (5.0, "≤ 5 µs"),
            );
        } else {
            report.row(
                part,
                &format!("{who} request loop: wall time, claude-watch / empty-probe floor"),
                "floor not measured",
                "≤ 1.05",
                None,
            );
        }
        noisy_row(
            report,
            part,
            &format!("{who} streamed response: wall time, claude-watch / none"),
            self.stream.ratio(WATCH, NONE),
            |x| format!("{x:.2}"),
            (1.02, "≤ 1.02"),
        );
        for (runs, workload, label) in [
            (
                requests,
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
            report.detail(part, format!("{who} {workload} ({label})"), runs, floor);
        }
        if let Some(why) = &self.floor_missing {
            report.note(format!("{who}: empty-probe floor not measured: {why}."));
        }
        let base = if floor { FLOOR } else { NONE };
        for (k, policy) in POLICIES.into_iter().enumerate() {
            let i = WATCH + k;
            let kernel_us =
                self.probe_times
                    .iter()
                    .find(|(p, _)| *p == policy)
                    .map(|(_, times)| {
                        times
                            .iter()
                            .filter(|t| t.program.starts_with("ssl_"))
                            .map(|t| t.runs as f64 * t.avg_ns as f64)
                            .sum::<f64>()
                            / 1000.0
                            / f64::from(self.plan.requests)
                    });
            report.wake(WakeRow {
                client: who.to_owned(),
                policy,
                ratio: floor.then(|| requests.ratio(i, FLOOR)),
                extra_cpu_us: requests.extra_cpu_us(i, base, self.plan.requests),
                kernel_us,
            });
        }
        let default = self
            .probe_times
            .iter()
            .find(|(p, _)| *p == POLICIES[0])
            .map(|(_, times)| {
                super::process::ssl_per_request(times, f64::from(self.plan.requests))
            });
        if let Some((us, each)) = default {
            let floor_us = self
                .floor_times
                .map(|(_, ns)| ns as f64 / 1000.0 / f64::from(self.plan.requests));
            report.row(
                part,
                &format!("{who} request loop: eBPF run time per request (default wake-up), per program runs per request × ns per run"),
                &format!(
                    "{us:.2} µs ({each}); empty programs on the same probes: {}",
                    floor_us.map_or("not measured".into(), |f| format!("{f:.2} µs"))
                ),
                "≤ 2 µs",
                Some(us <= 2.0),
            );
        }
        let programs = self
            .probe_times
            .iter()
            .map(|(policy, times)| {
                let each: Vec<String> = times
                    .iter()
                    .filter(|t| t.program.starts_with("ssl_"))
                    .map(|t| {
                        format!(
                            "{} {} × {:.2} µs",
                            t.program,
                            t.runs,
                            t.avg_ns as f64 / 1000.0
                        )
                    })
                    .collect();
                format!("`{policy}`: {}", each.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        report.note(format!(
            "{who}: the eBPF programs' own run time over one extra loop of {} requests per policy, from the kernel's BPF run-time statistics (`trace --probe-time`): {programs}. The floor's empty probes run no program of ours, so this is the kernel part of the extra cost; the rest is the reader's work on the same 2 cores.",
            self.plan.requests
        ));
        if let Some(c) = self.counters {
            report.note(format!(
                "{who}: claude-watch attached to {}; last run: kernel sent {} heads, skipped {} other buffers, lost {}.",
                self.how, c.sent, c.skipped, c.lost
            ));
        }
    }
}

/// A row for a median with its per-round spread `(median, low, high)`, read against
/// `target` (an upper bound) with [`verdict`].
fn noisy_row(
    report: &mut Report,
    part: u8,
    measure: &str,
    (median, lo, hi): (f64, f64, f64),
    show: fn(f64) -> String,
    (target, target_text): (f64, &str),
) {
    // The unit, if any, is the target's ("≤ 5 µs": µs).
    let unit = target_text
        .rsplit_once(' ')
        .map(|(_, u)| u)
        .filter(|u| u.chars().all(char::is_alphabetic))
        .map_or(String::new(), |u| format!(" {u}"));
    report.row(
        part,
        measure,
        &format!(
            "{}{unit} (per-round {}–{}){}",
            show(median),
            show(lo),
            show(hi),
            shown(median, hi, target)
        ),
        target_text,
        verdict(median, hi, target),
    );
}

/// Met when the median ratio meets the target and no round exceeds it; unclear (`None`) when
/// only the median does: the noise is wider than the target.
pub(super) fn verdict(median: f64, worst_round: f64, target: f64) -> Option<bool> {
    match (median <= target, worst_round <= target) {
        (true, true) => Some(true),
        (true, false) => None,
        (false, _) => Some(false),
    }
}

/// The remark that goes with an unclear [`verdict`].
pub(super) fn shown(median: f64, worst_round: f64, target: f64) -> &'static str {
    if verdict(median, worst_round, target).is_none() {
        "; median meets the target, the noise is wider than it"
    } else {
        ""
    }
}
