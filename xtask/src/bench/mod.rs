//! `cargo xtask bench`: what claude-watch costs the processes it watches, and how much it can
//! take, measured side by side on this machine. Prints a table and writes it to
//! `BENCHMARKS.md` (`--smoke`: a tiny run of every part, written to
//! `target/BENCHMARKS-smoke.md`, checking only that each part produces numbers). `--only 8` or
//! `--only 1,2,4b` runs some parts alone; a run of fewer than all parts (`--soak-minutes 0`
//! included) is written to `target/BENCHMARKS-partial.md`, never over `BENCHMARKS.md`.
//!
//! Parts:
//! 1. probe overhead on node clients (keep-alive request loop; long streamed response read in
//!    many small reads), each timed with no probes, with an empty-probe floor (bpftrace on the
//!    same functions), and with `claude-watch trace` attached; runs alternated; then the eBPF
//!    run time per request, per program (runs per request × ns per run), beside the empty
//!    programs' own;
//! 2. the same on a Bun client (BoringSSL found without symbols);
//! 3. pipeline capacity: exchanges/s from node raw-TLS clients, lost records counted, and a
//!    stalled consumer with a small ring to show loss is counted without a crash;
//! 4. capture-to-output latency of a 401 (probe → `trace --json` line);
//!
//!    4b. detector decision latency: `claude-watch daemon` watching light agents against the
//!    stand-in API, sessions latched and healed through its control API, p50/p99 read from the
//!    daemon's `claude_watch_detection_seconds` histogram;
//! 5. footprint of `claude-watch trace` with a fleet of node processes, idle then busy;
//! 6. locating SSL functions in the real Claude Code binary, cold and cached;
//! 7. the per-exec check under a burst of execs; 7b. an exec loop with no eBPF, an empty floor,
//!    the daemon with and without its in-kernel exec filter, with per-program kernel figures;
//! 8. fleet soak, run last: `claude-watch daemon` (dry run) watching 200 light agents (a turn
//!    every 5–30 s against one stand-in API, a few sessions latched and healed through its
//!    control API) and sleeping copies of `sleep` named `claude` up to 1,000 watched processes,
//!    for 30 minutes (`--soak-minutes N`), a sleeper replaced every second and an agent too once
//!    the previous replacement has started:
//!    the daemon's RSS every 10 s (start, max, end, the median of each tenth, and the slope over the
//!    second half: Theil–Sen, which transient peaks barely move, with least squares beside it),
//!    its CPU over the soak and over idle windows (agents stopped, no churn, nothing asked of
//!    the daemon), the kernel records it lost, and each latch and heal seen in its status.
//! 9. a real Claude Code turn (the pinned latest release, streamed answer) with and without
//!    `claude-watch daemon`, and the daemon's eBPF run time per request, per program, beside
//!    empty programs on the same probes over one more round;
//! 10. the recovery policy replayed against the write-up's window history (`claude-watch
//!     replay`, the core on a fake clock): agents left down, restarts into open windows against
//!     log2(window / backoff_initial) + 2, extra downtime after each window closes, notices;
//! 11. the fleet: five scoped daemons, a real Prometheus and Alertmanager, one window over
//!     every agent with `[fleet]` and without (the scenario of `tests/tests/fleet.rs`): the
//!     time to the last host holding, restarts avoided, the daemons' added CPU. Not in the
//!     smoke run (the test suite runs the same scenario).
//!
//! Parts 1, 2 and 4b also measure each wake-up policy (`[daemon] wakeup`) for the trade-off
//! table, and 4b runs once more with a CPU burner on every core.
//!
//! Files: `env.rs` (binaries, scratch directory, the server), `process.rs` (child processes,
//! their output and `trace`'s counters), `stats.rs`, `shared` (`tests/src/shared.rs`: process
//! groups, ports and the stand-in's control port, one copy with the test harness), one file per part (`overhead.rs`,
//! `capacity.rs`, `latency.rs`, `detection.rs`, `footprint.rs`, `locate.rs`, `execburst.rs`,
//! `soak.rs`, `turn.rs`) and `report.rs`
//! (the tables and `BENCHMARKS.md`).
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

mod capacity;
mod detection;
mod env;
mod execburst;
mod fleet;
mod footprint;
mod latency;
mod locate;
mod overhead;
mod process;
mod replay;
mod report;
/// The pieces shared with the test harness (process groups, free ports, the stand-in's ready line
/// and control port): one copy, in `tests/src/shared.rs`.
#[path = "../../../tests/src/shared.rs"]
mod shared;
mod soak;
mod stats;
mod turn;

use capacity::*;
use detection::*;
use env::*;
use footprint::*;
use latency::*;
use locate::*;
use overhead::*;
use process::*;
use report::*;
use soak::*;
use stats::*;
use turn::*;

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
    /// Rounds of (nothing, claude-watch) around a real Claude Code...
    turn_rounds: usize,
    /// ...each timing this many turns after a warm-up.
    turns: usize,
    /// Part 8, fleet soak: how long (zero: skipped).
    soak: Duration,
    /// Light agents in the soak...
    soak_agents: usize,
    /// ...and watched processes in all (sleeping `claude` copies make up the rest).
    soak_processes: usize,
    /// Each agent's pause between turns is drawn from this range at its start.
    soak_turn: (Duration, Duration),
    /// Scale on the agents' retry delays (1: Claude Code's).
    soak_backoff_scale: f64,
    /// Extra daemon configuration for the soak (empty: the detector's defaults).
    soak_detector: &'static str,
    /// Pause between two latch cycles...
    soak_latch_every: Duration,
    /// ...each latching this many sessions.
    soak_latch_batch: usize,
    /// Each idle window: settling after the agents are stopped, then the measured time.
    soak_settle: Duration,
    soak_idle: Duration,
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
            turn_rounds: 7,
            turns: 30,
            soak: Duration::from_secs(30 * 60),
            soak_agents: 200,
            soak_processes: 1000,
            soak_turn: (Duration::from_secs(5), Duration::from_secs(30)),
            soak_backoff_scale: 1.0,
            soak_detector: "",
            soak_latch_every: Duration::from_secs(60),
            soak_latch_batch: 3,
            soak_settle: Duration::from_secs(5),
            soak_idle: Duration::from_secs(30),
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
            turn_rounds: 1,
            turns: 2,
            soak: Duration::from_secs(20),
            soak_agents: 5,
            soak_processes: 20,
            soak_turn: (Duration::from_secs(1), Duration::from_secs(3)),
            soak_backoff_scale: 0.1,
            soak_detector: "[detector]\nlatch_min_401s = 1\nlatch_min_span = \"0s\"\n",
            soak_latch_every: Duration::from_secs(3),
            soak_latch_batch: 1,
            soak_settle: Duration::from_secs(1),
            soak_idle: Duration::from_secs(3),
        }
    }
}

/// Every part, in the table's order.
const PARTS: [Part; 13] = [
    Part(1, None),
    Part(2, None),
    Part(3, None),
    Part(4, None),
    Part(4, Some('b')),
    Part(5, None),
    Part(6, None),
    Part(7, None),
    Part(7, Some('b')),
    Part(8, None),
    Part(9, None),
    Part(10, None),
    Part(11, None),
];

/// Reads `--only`: part names separated by commas (`1,2,4b`).
fn parse_parts(list: &str) -> anyhow::Result<Vec<Part>> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            PARTS
                .iter()
                .copied()
                .find(|part| part.to_string() == p)
                .with_context(|| {
                    format!("no bench part {p:?} (parts: 1, 2, 3, 4, 4b, 5, 6, 7, 8, 9, 10, 11)")
                })
        })
        .collect()
}

/// How `cargo xtask bench` was asked to run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A tiny run of every part that fails if one yields nothing.
    pub smoke: bool,
    /// Part 8's length in minutes instead of the plan's (0 skips it).
    pub soak_minutes: Option<u32>,
    /// Only these parts, separated by commas (`1,2,4b`; all when `None`).
    pub only: Option<String>,
}

/// Runs the bench.
pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    if !super::is_root() {
        bail!("the bench attaches uprobes: run it as root (e.g. `sudo -E cargo xtask bench`)");
    }
    let smoke = options.smoke;
    let only = options.only.as_deref().map(parse_parts).transpose()?;
    let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
    if let Some(minutes) = options.soak_minutes {
        plan.soak = Duration::from_secs(u64::from(minutes) * 60);
    }
    let wanted = |part: Part| {
        only.as_ref().is_none_or(|o| o.contains(&part))
            && (part != Part(8, None) || !plan.soak.is_zero())
    };
    let partial = PARTS.iter().any(|p| !wanted(*p));
    super::build(root)?;
    if let Err(e) = super::apt_install(&["bpftrace", "openssl"]) {
        eprintln!("bench: cannot install bpftrace ({e:#}); the probe floor will not be measured");
    }
    let started = Instant::now();
    let env = BenchEnv::new(root)?;
    let mut report = Report::default();

    let server = [1, 2, 4, 5]
        .into_iter()
        .any(|p| wanted(Part(p, None)))
        .then(|| env.server(1, false))
        .transpose()?;
    let port = server.as_ref().map_or(0, |s| s.port);
    for client in [Client::Node, Client::Bun] {
        let part = if client == Client::Node { 1 } else { 2 };
        if !wanted(Part(part, None)) {
            continue;
        }
        eprintln!(
            "bench: part {part}: probe overhead, {} client",
            client.name()
        );
        match overhead(&env, &plan, client, port) {
            Ok(o) => o.report(part, &mut report),
            Err(e) => report.failed(part, &format!("probe overhead, {}", client.name()), &e),
        }
    }
    if wanted(Part(4, None)) {
        eprintln!("bench: part 4: capture-to-output latency");
        match latency(&env, &plan, port) {
            Ok(l) => l.report(&mut report),
            Err(e) => report.failed(4, "capture-to-output latency", &e),
        }
    }
    if wanted(Part(4, Some('b'))) {
        // The default policy on the machine as it is and loaded, then the others for the
        // trade-off table (the smoke run only the first).
        let runs: &[(&str, bool)] = if smoke {
            &[(POLICIES[0], false)]
        } else {
            &[
                (POLICIES[0], false),
                (POLICIES[0], true),
                (POLICIES[1], false),
                (POLICIES[2], false),
            ]
        };
        for &(policy, loaded) in runs {
            let what = format!(
                "detector decision latency, wakeup {policy}{}",
                if loaded { ", loaded" } else { "" }
            );
            eprintln!("bench: part 4b: {what}");
            match detection(&env, &plan, policy, loaded) {
                Ok(d) => d.report(&mut report),
                Err(e) => report.failed(Part(4, Some('b')), &what, &e),
            }
        }
    }
    if wanted(Part(5, None)) {
        eprintln!("bench: part 5: footprint");
        match footprint(&env, &plan, port) {
            Ok(f) => f.report(&mut report),
            Err(e) => report.failed(5, "footprint", &e),
        }
    }
    drop(server);

    if wanted(Part(3, None)) {
        eprintln!("bench: part 3: pipeline capacity");
        match capacity(&env, &plan) {
            Ok(c) => c.report(&mut report),
            Err(e) => report.failed(3, "pipeline capacity", &e),
        }
    }
    if wanted(Part(7, None)) {
        eprintln!("bench: part 7: exec burst");
        match execburst::run(&env, root, smoke) {
            Ok(b) => b.report(&mut report),
            Err(e) => report.failed(7, "exec burst", &e),
        }
    }
    if wanted(Part(7, Some('b'))) {
        eprintln!("bench: part 7b: exec loop");
        match execburst::exec_loop(&env, smoke) {
            Ok(l) => l.report(&mut report),
            Err(e) => report.failed(Part(7, Some('b')), "exec loop", &e),
        }
    }
    if wanted(Part(9, None)) {
        eprintln!("bench: part 9: a real Claude Code turn");
        match turns(&env, &plan, root) {
            Ok(t) => t.report(&mut report),
            Err(e) => report.failed(9, "Claude Code turn", &e),
        }
    }
    if wanted(Part(6, None)) {
        eprintln!("bench: part 6: locate");
        match locate(&env, &plan) {
            Ok(l) => l.report(&mut report),
            Err(e) => report.failed(6, "locate", &e),
        }
    }
    if wanted(Part(10, None)) {
        eprintln!("bench: part 10: recovery replay");
        if let Err(e) = replay::replay(&env, smoke).and_then(|r| r.report(&mut report)) {
            report.failed(10, "recovery replay", &e);
        }
    }
    if wanted(Part(11, None)) && !smoke {
        eprintln!("bench: part 11: a fleet in an upstream incident");
        match fleet::fleet(&env, root) {
            Ok(f) => f.report(&mut report),
            Err(e) => report.failed(11, "fleet", &e),
        }
    }
    if wanted(Part(8, None)) {
        eprintln!("bench: part 8: fleet soak");
        match soak(&env, &plan) {
            Ok(s) => s.report(&mut report),
            Err(e) => report.failed(8, "fleet soak", &e),
        }
    }

    let ran: Vec<String> = PARTS
        .iter()
        .filter(|p| wanted(**p))
        .map(ToString::to_string)
        .collect();
    let text = report.render(
        &machine(),
        smoke,
        partial.then_some(ran.join(", ")).as_deref(),
        started.elapsed(),
    );
    println!("{text}");
    let out = if partial {
        root.join("target/BENCHMARKS-partial.md")
    } else if smoke {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_line_is_parsed() {
        let line = "claude-watch: kernel sent 2000 heads, skipped 31 other buffers (body reads at their entry: 20), lost 7; user space ignored 1 invalid, 2 unpaired";
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
    fn probe_time_line_is_parsed() {
        let line = "claude-watch: probe time: ssl_write 2000 2512ns, ssl_read_return 4000 1500ns";
        assert_eq!(
            parse_probe_times(line),
            Some(vec![
                ProbeTime {
                    program: "ssl_write".into(),
                    runs: 2000,
                    avg_ns: 2512
                },
                ProbeTime {
                    program: "ssl_read_return".into(),
                    runs: 4000,
                    avg_ns: 1500
                },
            ])
        );
        assert_eq!(
            parse_probe_times("claude-watch: probe time: no program ran"),
            Some(Vec::new())
        );
        assert_eq!(
            parse_probe_times("claude-watch: probe time: ssl_write x 1ns"),
            None
        );
        assert_eq!(parse_probe_times("claude-watch: tracing"), None);
        assert_eq!(counter("a_total 3\nb_total 7.0\n", "b_total"), 7);
        assert_eq!(counter("a_total 3\n", "b_total"), 0);
        assert_eq!(counter("a_total_x 3\n", "a_total"), 0);
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
    fn parts_are_chosen_by_name() {
        assert_eq!(
            parse_parts("1, 2,4b").unwrap(),
            [Part(1, None), Part(2, None), Part(4, Some('b'))]
        );
        assert_eq!(parse_parts("8").unwrap(), [Part(8, None)]);
        assert_eq!(parse_parts("9").unwrap(), [Part(9, None)]);
        assert_eq!(parse_parts("10").unwrap(), [Part(10, None)]);
        assert_eq!(parse_parts("11").unwrap(), [Part(11, None)]);
        assert!(parse_parts("12").is_err());
        assert!(parse_parts("4c").is_err());
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
        let parts = rss_parts(i32::try_from(std::process::id()).unwrap()).unwrap();
        let sum: u64 = parts.iter().map(|p| p.1).sum();
        assert!(parts[1].1 > 0, "the test binary's own pages: {parts:?}");
        assert!(
            sum * 2 > rss && sum < rss * 2,
            "{parts:?} against VmRSS {rss}"
        );
        let _ = ticks;
    }
}
