//! Loading the eBPF object, attaching its programs, reading its counters.

use std::collections::HashMap;
use std::num::NonZeroU32;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope};
use aya::programs::{RawTracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use claude_ebpf_common::{Budget, stats};
use serde::Serialize;
use tracing::{debug, info};

use super::ledger::{Acquire, AttachKey, Ledger};
use super::targets::Target;
use super::{CaptureError, LoadError, os_error};
use crate::locate::FunctionName;

/// The compiled eBPF object (built by `build.rs` from the `claude-ebpf` crate).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/claude-ebpf"));

pub use claude_watch_core::config::{DEFAULT_RING_BYTES, Wakeup};

/// What the kernel side is loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Ring buffer size (a power of two multiple of the page size).
    pub ring_bytes: u32,
    /// Records one process may send per second (`None`: no budget).
    pub budget: Option<u32>,
    /// Records one user other than root may send per second over all their processes, heads
    /// and execs of images not judged yet (`None`: no budget).
    pub user_budget: Option<u32>,
    /// When a record wakes the reader.
    pub wakeup: Wakeup,
    /// The most bytes copied of one buffer head (1 to `HEAD_MAX - 1`).
    pub copy_max: u32,
    /// Keep execs of images judged not Claude Code in the kernel (when the kernel's BTF gives
    /// the offsets; see [`super::btf`]).
    pub exec_filter: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ring_bytes: DEFAULT_RING_BYTES,
            budget: Some(claude_ebpf_common::BUDGET_RECORDS),
            user_budget: Some(claude_ebpf_common::USER_BUDGET_RECORDS),
            wakeup: Wakeup::default(),
            copy_max: claude_ebpf_common::COPY_MAX,
            exec_filter: true,
        }
    }
}

/// Counters kept by the kernel programs, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelStats {
    /// Records dropped because the ring buffer was full.
    pub lost: u64,
    /// Records sent to user space.
    pub sent: u64,
    /// TLS buffers that were not HTTP heads (bodies, streamed events, non-HTTP traffic).
    pub skipped: u64,
    /// Of `skipped`, reads of a response body skipped at their entry.
    pub body_reads: u64,
    /// Read returns without a remembered entry (probe attached mid-call).
    pub orphan_returns: u64,
    /// HTTP heads dropped because their process exceeded its record budget.
    pub over_budget: u64,
    /// Execs of images known not to be Claude Code, kept in the kernel.
    pub execs_filtered: u64,
    /// Execs sent to user space.
    pub execs_sent: u64,
    /// HTTP heads dropped because their user (not root) exceeded its record budget.
    pub over_user_budget: u64,
    /// Execs of images not judged yet dropped because their user exceeded its record budget.
    pub execs_over_budget: u64,
}

/// One program's runs and total run time ([`Probes::run_times`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramTime {
    /// The program (named as in the eBPF object).
    pub program: &'static str,
    /// Times it ran.
    pub runs: u64,
    /// Time it ran in all.
    pub time: std::time::Duration,
}

impl ProgramTime {
    /// `name runs avgns, ...` for the programs that ran (what `trace --probe-time` and
    /// `daemon --probe-time` print at exit, and the benchmark reads).
    #[must_use]
    pub fn line(times: &[Self]) -> String {
        let ran: Vec<String> = times
            .iter()
            .filter(|t| t.runs > 0)
            .map(|t| {
                let avg = t.time.as_nanos() / u128::from(t.runs);
                format!("{} {} {avg}ns", t.program, t.runs)
            })
            .collect();
        if ran.is_empty() {
            "no program ran".to_owned()
        } else {
            ran.join(", ")
        }
    }
}

/// The kernel's run-time statistics of eBPF programs, on while this value lives (they cost
/// two clock reads per program run, so they are off unless asked for).
pub struct RunTimeStats(#[allow(dead_code)] std::os::fd::OwnedFd);

impl RunTimeStats {
    /// Turns the statistics on.
    pub fn enable() -> Result<Self, CaptureError> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(Self)
            .map_err(|e| load_error(LoadError::Stats(e)))
    }
}

pub use claude_watch_core::status::{OverBudget, OverUserBudget};

/// At most this many over-budget processes are read from the kernel map and reported.
pub const OVER_BUDGET_SHOWN: usize = 16;

/// The loaded programs and their attachments.
pub struct Probes {
    ebpf: Ebpf,
    links: HashMap<AttachKey, Vec<(&'static str, UProbeLinkId)>>,
    ledger: Ledger,
    process_events: bool,
    /// Whether the exec filter is on (the kernel has the offsets).
    exec_filter: bool,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attachments", &self.links.len())
            .finish()
    }
}

/// Program names in the object, per function: entry program, and return program if any.
fn programs(function: FunctionName) -> &'static [&'static str] {
    match function {
        FunctionName::SslWrite => &["ssl_write"],
        FunctionName::SslWriteEx => &["ssl_write_ex"],
        FunctionName::SslRead => &["ssl_read_entry", "ssl_read_return"],
        FunctionName::SslReadEx => &["ssl_read_ex_entry", "ssl_read_ex_return"],
    }
}

/// Raw tracepoints (named as the tracepoints they attach to) that report execs and exits.
const PROCESS_PROGRAMS: [&str; 2] = ["sched_process_exec", "sched_process_exit"];

const ALL_PROGRAMS: [&str; 6] = [
    "ssl_write",
    "ssl_write_ex",
    "ssl_read_entry",
    "ssl_read_return",
    "ssl_read_ex_entry",
    "ssl_read_ex_return",
];

impl Probes {
    /// Loads the programs into the kernel with `settings`, allowing
    /// [`super::ledger::DEFAULT_MAX_ATTACHMENTS`] attachments (see
    /// [`Probes::set_max_attachments`]).
    pub fn load(settings: Settings) -> Result<Self, CaptureError> {
        let Settings {
            ring_bytes,
            budget,
            user_budget,
            wakeup,
            copy_max,
            exec_filter,
        } = settings;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(CaptureError::NotPrivileged);
        }
        raise_memlock();
        raise_nofile();
        let budget_records = budget.unwrap_or(u32::MAX);
        let user_budget_records = user_budget.unwrap_or(u32::MAX);
        let wakeup_kernel = wakeup.kernel();
        let watermark = u64::from(ring_bytes / 4);
        let copy_max = copy_max.clamp(1, claude_ebpf_common::COPY_MAX);
        let offsets = if exec_filter {
            super::btf::kernel_offsets()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "exec filter off: every exec on the host is looked at in user space");
                })
                .unwrap_or_default()
        } else {
            claude_ebpf_common::KernelOffsets::default()
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .override_global("BUDGET_RECORDS", &budget_records, true)
            .override_global("USER_BUDGET_RECORDS", &user_budget_records, true)
            .override_global("WAKEUP", &wakeup_kernel, true)
            .override_global("WATERMARK", &watermark, true)
            .override_global("COPY_MAX", &copy_max, true)
            .override_global("OFFSETS", &offsets, true)
            .load(OBJECT)
            .map_err(|e| load_error(LoadError::Object(Box::new(e))))?;
        for name in ALL_PROGRAMS {
            program::<UProbe>(&mut ebpf, name)?
                .load()
                .map_err(|e| load_error(LoadError::program("loading", name, e)))?;
        }
        for name in PROCESS_PROGRAMS {
            program::<RawTracePoint>(&mut ebpf, name)?
                .load()
                .map_err(|e| load_error(LoadError::program("loading", name, e)))?;
        }
        let per_second = |b: Option<u32>| b.map_or_else(|| "none".to_owned(), |b| format!("{b}/s"));
        info!(ring_bytes, budget = %per_second(budget), user_budget = %per_second(user_budget), wakeup = %wakeup, copy_max, "eBPF programs loaded");
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            ledger: Ledger::new(super::ledger::DEFAULT_MAX_ATTACHMENTS as usize),
            process_events: false,
            exec_filter: offsets.file_inode != 0,
        })
    }

    /// Whether execs of images judged not Claude Code stay in the kernel.
    #[must_use]
    pub fn exec_filter(&self) -> bool {
        self.exec_filter
    }

    /// Puts a change of the [`super::images::ImageBook`] into the kernel's `IMAGES` map.
    pub fn change_image(&mut self, change: super::images::Change) {
        use super::images::Change;
        let Some(map) = self.ebpf.map_mut("IMAGES") else {
            return;
        };
        let Ok(mut images) = BpfHashMap::<_, claude_ebpf_common::ImageKey, u32>::try_from(map)
        else {
            return;
        };
        let result = match change {
            Change::Add(image, verdict) => images.insert(image, verdict, 0),
            Change::Remove(image) => images.remove(&image),
        };
        if let Err(e) = result {
            debug!(?change, error = %e, "exec filter: image map not changed");
        }
    }

    /// Sends the execs and the exit of process `pid` (an instance) whatever its image (`on`), or
    /// stops that when it exited (the kernel leaves its bit to user space): its bit in the
    /// kernel's `WATCHED` array (a bit per pid, 64 a word; only user space writes it, so a word
    /// is read and written back whole).
    pub fn watch_pid(&mut self, pid: u32, on: bool) {
        let Some(map) = self.ebpf.map_mut("WATCHED") else {
            return;
        };
        let Ok(mut words) = aya::maps::Array::<_, u64>::try_from(map) else {
            return;
        };
        let (index, bit) = (pid / 64, 1u64 << (pid % 64));
        let result = words.get(&index, 0).and_then(|word| {
            let word = if on { word | bit } else { word & !bit };
            words.set(index, word, 0)
        });
        if let Err(e) = result {
            debug!(pid, on, error = %e, "exec filter: process's watched bit not changed in the kernel");
        }
    }

    /// At most `cap` attachments at once; new files beyond it are refused
    /// ([`CaptureError::TooManyAttachments`]). Attachments beyond a lowered cap stay until
    /// their processes exit.
    pub fn set_max_attachments(&mut self, cap: usize) {
        self.ledger.set_cap(cap);
    }

    /// Also reports every exec and process exit (records of kind `EXEC` and `EXIT`), so new
    /// claude processes are found within milliseconds of starting. Idempotent.
    pub fn watch_processes(&mut self) -> Result<(), CaptureError> {
        if self.process_events {
            return Ok(());
        }
        for name in PROCESS_PROGRAMS {
            program::<RawTracePoint>(&mut self.ebpf, name)?
                .attach(name)
                .map_err(|e| load_error(LoadError::program("attaching", name, e)))?;
        }
        self.process_events = true;
        Ok(())
    }

    /// Takes the ring buffer out (once) for a [`super::records::RecordStream`].
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(CaptureError::Load {
            source: LoadError::MissingMap { name: "EVENTS" },
        })?;
        RingBuf::try_from(map).map_err(|source| {
            load_error(LoadError::Map {
                name: "EVENTS",
                source: Box::new(source),
            })
        })
    }

    /// Attaches to every point of `target` for process `holder` of user `uid` (the process that
    /// runs or maps it; the attachment counts for that user's share), through `/proc/self/fd/N` of the descriptor it was located from (the kernel
    /// resolves that to the very inode, whatever the target's path names now). Right after,
    /// the descriptor's path and the target's `/proc` link must still lead to that inode, else
    /// the attach is undone ([`CaptureError::Replaced`]). Attaching the same file in the same
    /// scope twice only adds the holder and returns `Ok(false)`; the attachment stays until its
    /// last holder is [released](Self::release). A new file beyond the cap is refused.
    pub fn attach(&mut self, target: &Target, holder: u32, uid: u32) -> Result<bool, CaptureError> {
        let id = target.file.id;
        let key = AttachKey {
            dev: id.dev,
            ino: id.ino,
            pid: target.pid,
        };
        match self.ledger.acquire(key, holder, uid) {
            Acquire::Attach => {}
            Acquire::Shared => return Ok(false),
            Acquire::Refused { cap } => {
                return Err(CaptureError::TooManyAttachments {
                    path: target.path.clone(),
                    cap,
                });
            }
            Acquire::OverShare { share } => {
                return Err(CaptureError::OverUserShare {
                    path: target.path.clone(),
                    uid,
                    share,
                });
            }
        }
        let scope = match target.pid.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        let fd_path = target.file.fd_path();
        let mut links = Vec::new();
        for point in &target.points {
            for &name in programs(point.function) {
                let program = program::<UProbe>(&mut self.ebpf, name)?;
                let location = UProbeAttachLocation::AbsoluteOffset(point.file_offset);
                match program.attach(location, &fd_path, scope) {
                    Ok(id) => links.push((name, id)),
                    Err(e) => {
                        self.detach_links(links);
                        return Err(CaptureError::Attach {
                            function: point.function.symbol(),
                            path: target.path.clone(),
                            offset: point.file_offset,
                            source: Box::new(e),
                        });
                    }
                }
            }
        }
        if let Err(e) = still_the_same(target) {
            self.detach_links(links);
            return Err(e);
        }
        debug!(path = %target.path.display(), pid = ?target.pid, dev = id.dev, ino = id.ino, points = target.points.len(), "attached");
        self.links.insert(key, links);
        self.ledger.attached(key, holder, uid);
        Ok(true)
    }

    /// Process `pid` exited: detaches what it alone held (its own per-process attachments,
    /// and binaries no other live process runs). Returns how many attachments went.
    pub fn release(&mut self, pid: u32) -> usize {
        let free = self.ledger.release(pid);
        for key in &free {
            if let Some(links) = self.links.remove(key) {
                self.detach_links(links);
            }
        }
        if !free.is_empty() {
            debug!(pid, detached = free.len(), "detached");
        }
        free.len()
    }

    /// Number of attached (file, scope) pairs.
    pub fn attachments(&self) -> usize {
        self.links.len()
    }

    /// The attachment cap in force.
    pub fn max_attachments(&self) -> usize {
        self.ledger.cap()
    }

    /// Sets each user's share of the cap (`None`: a quarter of it).
    pub fn set_max_attachments_per_user(&mut self, share: Option<usize>) {
        self.ledger.set_share(share);
    }

    /// Each user's share of the cap in force.
    pub fn max_attachments_per_user(&self) -> usize {
        self.ledger.share()
    }

    /// Attachments refused for the cap since the start.
    pub fn refused_attachments(&self) -> u64 {
        self.ledger.refused()
    }

    fn detach_links(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (name, id) in links {
            if let Ok(program) = program::<UProbe>(&mut self.ebpf, name) {
                let _ = program.detach(id);
            }
        }
    }

    /// How often each loaded program ran and for how long in all, as the kernel counts while
    /// its run-time statistics are on (see [`RunTimeStats`]); zero otherwise.
    pub fn run_times(&self) -> Vec<ProgramTime> {
        ALL_PROGRAMS
            .iter()
            .chain(PROCESS_PROGRAMS.iter())
            .filter_map(|&name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramTime {
                    program: name,
                    runs: info.run_count(),
                    time: info.run_time(),
                })
            })
            .collect()
    }

    /// Reads the kernel counters.
    pub fn stats(&self) -> KernelStats {
        let Some(map) = self.ebpf.map("STATS") else {
            return KernelStats::default();
        };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return KernelStats::default();
        };
        let sum = |index: u32| array.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0);
        KernelStats {
            lost: sum(stats::LOST),
            sent: sum(stats::SENT),
            skipped: sum(stats::SKIPPED),
            body_reads: sum(stats::BODY_READS),
            orphan_returns: sum(stats::ORPHAN_RETURNS),
            over_budget: sum(stats::OVER_BUDGET),
            execs_filtered: sum(stats::EXECS_FILTERED),
            execs_sent: sum(stats::EXECS_SENT),
            over_user_budget: sum(stats::OVER_USER_BUDGET),
            execs_over_budget: sum(stats::EXECS_OVER_BUDGET),
        }
    }

    /// Users whose records the kernel dropped over their budget, most dropped first (at most
    /// [`OVER_BUDGET_SHOWN`]), from the kernel's `USER_BUDGET` map: call it only when
    /// [`KernelStats::over_user_budget`] or [`KernelStats::execs_over_budget`] has grown.
    pub fn over_user_budget(&self) -> Vec<OverUserBudget> {
        self.over("USER_BUDGET")
            .into_iter()
            .map(|(uid, dropped)| OverUserBudget { uid, dropped })
            .collect()
    }

    /// Live processes whose records the kernel dropped over budget, most dropped first (at
    /// most [`OVER_BUDGET_SHOWN`]), from the kernel's `BUDGET` map: call it only when
    /// [`KernelStats::over_budget`] has grown.
    pub fn over_budget(&self) -> Vec<OverBudget> {
        self.over("BUDGET")
            .into_iter()
            .map(|(pid, dropped)| OverBudget { pid, dropped })
            .collect()
    }

    /// The keys of budget map `name` with drops, and how many, most first (at most
    /// [`OVER_BUDGET_SHOWN`]). Walks the whole map (up to its 8,192 entries).
    fn over(&self, name: &str) -> Vec<(u32, u64)> {
        let Some(map) = self.ebpf.map(name) else {
            return Vec::new();
        };
        let Ok(budgets) = BpfHashMap::<_, u32, Budget>::try_from(map) else {
            return Vec::new();
        };
        let mut out: Vec<(u32, u64)> = budgets
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, b)| b.dropped > 0)
            .map(|(key, b)| (key, u64::from(b.dropped)))
            .collect();
        out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(OVER_BUDGET_SHOWN);
        out
    }
}

/// Whether the descriptor's path and the target's `/proc` link still lead to the inode the
/// target was located from.
fn still_the_same(target: &Target) -> Result<(), CaptureError> {
    let expected = target.file.id;
    let links = std::iter::once(target.file.fd_path()).chain(target.recheck.clone());
    for link in links {
        let now = std::fs::metadata(&link).map(|m| super::targets::file_id(&m));
        if now.as_ref().ok() != Some(&expected) {
            return Err(CaptureError::Replaced {
                path: link,
                expected: expected.to_string(),
                found: now.map_or_else(|e| format!("unreadable ({e})"), |id| id.to_string()),
            });
        }
    }
    Ok(())
}

/// Program `name` of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(CaptureError::Load {
            source: LoadError::MissingProgram { name },
        })?
        .try_into()
        .map_err(|e| load_error(LoadError::program("typing", name, e)))
}

/// Classifies a loader error: missing privileges and missing BPF get their own messages.
fn load_error(cause: LoadError) -> CaptureError {
    match os_error(&cause) {
        Some(libc::EPERM) => CaptureError::NotPrivileged,
        Some(libc::ENOSYS) => CaptureError::BpfUnsupported,
        _ => CaptureError::Load { source: cause },
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so loading does not fail
/// there. Newer kernels account through the memory cgroup and ignore it.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; relying on memcg accounting");
    }
}

/// Every uprobe attachment holds a descriptor (three to six per attached file, up to
/// `[daemon] max_attachments` files): lift the soft descriptor limit towards the hard one (at
/// most 65,536), so the
/// cap, not a default soft limit of 1024, bounds them.
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let wanted = limit.rlim_max.min(65_536);
    if limit.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        debug!("could not raise RLIMIT_NOFILE");
    }
}
