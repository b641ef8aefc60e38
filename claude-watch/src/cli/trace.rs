//! `claude-watch trace`: a live view of HTTP exchanges, one line each.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use claude_ebpf_common::kind;

use crate::capture::records::RecordStream;
use tracing::{debug, warn};

use crate::capture::{Probes, Settings, Target, Wakeup, probes::DEFAULT_RING_BYTES, targets};
use crate::discover::{self, Discovery, Found, Processes};
use crate::error_chain;
use crate::http::Exchange;
use crate::http::pair::Record;
use crate::instance::ClaudeKind;
use crate::instance::proc;
use crate::instance::table::{PidTable, Standing};
use crate::time::{rfc3339_ms, wall_clock};
use crate::watch::Input;
use crate::watch::front::{Front, NoProcesses};
use clap::builder::TypedValueParser as _;

/// Show every HTTP/1.x exchange of TLS clients, live.
///
/// Without --pid or --binary: every Claude Code process on the host (native binary or cli.js
/// under node), including those started later.
///
/// Examples:
///   claude-watch trace                             # every claude process
///   claude-watch trace --pid 4242                  # one process (its libssl or executable)
///   claude-watch trace --binary /usr/bin/node      # every process running that binary
///   claude-watch trace --binary /usr/lib/x86_64-linux-gnu/libssl.so.3 --json
///
/// Only request and status lines and a few headers (request-id, retry-after, x-should-retry,
/// X-Claude-Code-Session-Id) and the request's model leave the kernel's filter into the
/// output; credentials and bodies never do.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct TraceArgs {
    /// Trace this process (repeatable): its executable or TLS library, this process only.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Trace every process that maps this executable or shared library (repeatable),
    /// including processes started later.
    #[arg(long, value_name = "PATH")]
    pub binary: Vec<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_RING_BYTES >> 20, value_parser = parse_ring_mib)]
    pub ring_mib: u32,
    /// Records one process may send per second; the kernel drops and counts the rest (the
    /// daemon's `[daemon] record_budget`). Default: no budget, every record is shown.
    #[arg(long, value_name = "RECORDS")]
    pub record_budget: Option<u32>,
    /// When the kernel wakes trace for a record: `errors` (a response that is not 1xx–3xx;
    /// other lines are printed within 200 ms), `responses` (every response, at once), `timer`
    /// (every line within 200 ms). The daemon's `[daemon] wakeup`.
    #[arg(long, value_name = "POLICY", default_value_t = Wakeup::default(),
          value_parser = clap::builder::PossibleValuesParser::new(Wakeup::ALL)
              .map(|s| s.parse::<Wakeup>().expect("one of the possible values")))]
    pub wakeup: Wakeup,
    /// The most bytes the kernel copies of one head (1 to 4095; for measurements: fewer
    /// bytes may cut off the headers claude-watch reads).
    #[arg(long, value_name = "BYTES", default_value_t = claude_ebpf_common::COPY_MAX, hide = true)]
    pub copy_max: u32,
    /// At exit, print how often each eBPF program ran and its average time (turns on the
    /// kernel's BPF run-time statistics while tracing, which adds two clock reads per run).
    #[arg(long)]
    pub probe_time: bool,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if n == 0 || !n.is_power_of_two() || n > 1024 {
        return Err(format!(
            "{n} MiB: the ring buffer size must be a power of two from 1 to 1024"
        ));
    }
    Ok(n)
}

/// One output line.
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    comm: Option<&'a str>,
    exe: Option<&'a str>,
    #[serde(flatten)]
    exchange: &'a Exchange,
}

/// `comm` and `exe` of processes, read once per pid.
#[derive(Default)]
struct ProcNames(HashMap<u32, (Option<String>, Option<String>)>);

impl ProcNames {
    fn get(&mut self, pid: u32) -> (Option<&str>, Option<&str>) {
        let (comm, exe) = self.0.entry(pid).or_insert_with(|| {
            let comm = proc::comm(pid);
            let exe = proc::exe(pid).ok().map(|p| p.display().to_string());
            (comm, exe)
        });
        (comm.as_deref(), exe.as_deref())
    }
}

/// Runs the trace until interrupted or `--duration` ends.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    crate::allocator::tune_for_long_run();
    let mut explicit = Vec::new();
    for path in &args.binary {
        explicit.push(targets::binary(path)?);
    }
    for &pid in &args.pid {
        explicit.extend(targets::process(pid)?);
    }
    // Kept until the trace ends: the statistics are on while the descriptor is open.
    let _stats_on = args
        .probe_time
        .then(crate::capture::probes::RunTimeStats::enable)
        .transpose()?;
    let mut probes = Probes::load(Settings {
        ring_bytes: args.ring_mib << 20,
        budget: args.record_budget,
        // A user's share follows the per-process budget: none when the trace asked for none.
        user_budget: args
            .record_budget
            .map(|_| claude_ebpf_common::USER_BUDGET_RECORDS),
        wakeup: args.wakeup,
        copy_max: args.copy_max,
        // Every exec and exit, as the trace has no discovery to judge images with.
        exec_filter: false,
    })?;
    for target in &explicit {
        // Held by the trace itself (pid 0) for its whole run.
        probes.attach(target, target.pid.unwrap_or(0), 0)?;
        announce(target);
    }
    // Exits free what the kernel and the pairer keep per thread and process, also for explicit
    // targets; execs find new claude processes.
    probes.watch_processes()?;
    // Without targets: every claude process, now and later.
    // Without a core, the trace keeps the pid table itself.
    let mut known = PidTable::default();
    let discovery = if explicit.is_empty() {
        let mut discovery = Discovery::new("/proc", Vec::new());
        let found = discovery.scan(&mut known);
        for found in &found {
            attach_found(&mut probes, found, found.kind == ClaudeKind::Script);
        }
        eprintln!(
            "claude-watch: watching for claude processes ({} running)",
            found.len()
        );
        Some(discovery)
    } else {
        None
    };
    let ring = probes.take_ring()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let clock = wall_clock();
    match discovery {
        Some(d) => runtime.block_on(trace_loop(args, probes, ring, Front::new(d, clock), known)),
        None => runtime.block_on(trace_loop(
            args,
            probes,
            ring,
            Front::new(NoProcesses, clock),
            known,
        )),
    }
}

fn announce(target: &Target) {
    eprintln!(
        "claude-watch: attached to {}{} ({}: {})",
        target.path.display(),
        target
            .pid
            .map(|p| format!(" [pid {p}]"))
            .unwrap_or_default(),
        target.how,
        target
            .points
            .iter()
            .map(|p| p.function.symbol())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Attaches to a discovered claude process; a failure is reported and skipped, never fatal
/// (quietly while a script's TLS library may still be loading: `quiet`).
fn attach_found(probes: &mut Probes, found: &Found, quiet: bool) {
    let attached = discover::target(found).and_then(|targets| {
        for target in targets {
            if probes.attach(&target, found.info.pid, found.info.uid)? {
                announce(&target);
            }
        }
        Ok(())
    });
    if let Err(e) = attached {
        if quiet {
            debug!(pid = found.info.pid, instance = %found.instance, error = %error_chain(&e), "not attached yet");
        } else {
            warn!(pid = found.info.pid, instance = %found.instance, error = %error_chain(&e), "cannot attach");
        }
    }
}

/// Prints every exchange the front half pairs; attaches to claude processes it finds.
async fn trace_loop<P: Processes>(
    args: TraceArgs,
    probes: Probes,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    front: Front<P>,
    known: PidTable,
) -> anyhow::Result<()> {
    // Shared by the record handler and the sweep timer (script instances looked at again).
    let probes = std::cell::RefCell::new(probes);
    let front = std::cell::RefCell::new(front);
    let known = std::cell::RefCell::new(known);
    let mut stream = RecordStream::new(ring).context("polling the ring buffer")?;
    let mut names = ProcNames::default();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = tokio::time::sleep(
        args.duration
            .map_or(Duration::MAX / 4, Duration::from_secs_f64),
    );
    tokio::pin!(deadline);
    eprintln!("claude-watch: tracing (Ctrl-C to stop)");
    let stdout = std::io::stdout();
    let mut handle = |record: Record<'_>| {
        // Name the process at its first record: short-lived clients may be gone by the time
        // their response is paired.
        if !matches!(record.header.kind, kind::EXEC | kind::EXIT) {
            names.get(record.header.pid);
        }
        let mut inputs = Vec::new();
        front
            .borrow_mut()
            .push(record, &known.borrow(), |input| inputs.push(input));
        for input in inputs {
            match input {
                Input::Started(found) => {
                    attach_found(
                        &mut probes.borrow_mut(),
                        &found,
                        found.kind == ClaudeKind::Script,
                    );
                    known.borrow_mut().insert(found, Standing::Watched);
                }
                Input::Exited { pid } => {
                    names.0.remove(&pid);
                    known.borrow_mut().remove(pid);
                }
                Input::Exchange { exchange } => {
                    let mut out = stdout.lock();
                    let (comm, exe) = names.get(exchange.pid);
                    let written = if args.json {
                        let line = Line {
                            ts: rfc3339_ms(exchange.ts_ms),
                            comm,
                            exe,
                            exchange: &exchange,
                        };
                        serde_json::to_writer(&mut out, &line)
                            .map_err(std::io::Error::other)
                            .and_then(|()| writeln!(out))
                    } else {
                        writeln!(out, "{}", human(&exchange, comm))
                    };
                    if written.is_err() {
                        std::process::exit(0); // stdout closed (e.g. `| head`)
                    }
                }
                _ => {}
            }
        }
    };
    // Requests do not wake the reader (their responses do): a timer sweeps up the rest.
    let mut sweep = tokio::time::interval(Duration::from_millis(200));
    loop {
        let swept = tokio::select! {
            drained = stream.drain(&mut handle) => {
                drained.map_err(crate::capture::CaptureError::Read)?;
                false
            }
            _ = sweep.tick() => true,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            () = &mut deadline => break,
        };
        if swept {
            stream.drain_now(&mut handle);
            let due = front
                .borrow_mut()
                .processes_mut()
                .due_rescans(crate::time::mono_now_ns(), &known.borrow());
            for (found, last) in due {
                attach_found(&mut probes.borrow_mut(), &found, !last);
            }
        }
        let _ = stdout.lock().flush();
    }
    stream.drain_now(&mut handle);
    let _ = stdout.lock().flush();
    let k = probes.borrow().stats();
    let p = front.borrow().pair_stats();
    if args.probe_time {
        let times = probes.borrow().run_times();
        eprintln!(
            "claude-watch: probe time: {}",
            crate::capture::probes::ProgramTime::line(&times)
        );
    }
    eprintln!(
        "claude-watch: kernel sent {} heads, skipped {} other buffers (body reads at their entry: {}), lost {}; user space ignored {} invalid, {} unpaired",
        k.sent, k.skipped, k.body_reads, k.lost, p.invalid, p.unpaired_responses
    );
    if k.lost > 0 {
        eprintln!(
            "claude-watch: {} records were lost (ring buffer full): raise --ring-mib",
            k.lost
        );
    }
    if k.over_budget > 0 {
        eprintln!(
            "claude-watch: {} records were dropped in the kernel: a process sent more than --record-budget per second",
            k.over_budget
        );
    }
    Ok(())
}

/// The text form of one exchange.
fn human(e: &Exchange, comm: Option<&str>) -> String {
    let mut line = format!(
        "{} pid {} ({}) {} {} -> {}",
        rfc3339_ms(e.ts_ms),
        e.pid,
        comm.unwrap_or("?"),
        e.method.as_deref().unwrap_or("?"),
        e.path.as_deref().unwrap_or("?"),
        e.status
    );
    if let Some(ms) = e.latency_ms {
        line.push_str(&format!(" {ms}ms"));
    }
    for (key, value) in [
        ("model", &e.model),
        ("request_id", &e.request_id),
        ("session", &e.session_id),
        ("retry_after", &e.retry_after),
    ] {
        if let Some(v) = value {
            line.push_str(&format!(" {key}={v}"));
        }
    }
    // The command name is the process's own choice.
    crate::text::printable(&line).into_owned()
}
