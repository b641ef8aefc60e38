//! The daemon: the shell around the core ([`crate::watch::Watch`]). It decides nothing; it moves
//! data between the core and the world and executes the core's effects:
//!
//! - kernel records in, through the front half ([`crate::watch::front`]) and [`Discovery`]
//!   (`/proc`);
//! - probes attached (locating TLS functions on a blocking task, at most
//!   [`locate::WORKERS`] at once, in the order [`Locating`] says) and detached;
//! - restarts and the escalation hook on their own tasks, their results fed back as inputs;
//! - the journal and the recovery state written by one durable writer thread (fsync never runs
//!   on the event loop), and what acts on or reports a decision (restart, hook, status) held
//!   until the records before it are durable (`durable::WriteAhead`);
//! - status, metrics, `sd_notify` and the control socket.
//!
//! Modules:
//! - `durable`: the writer thread for the journal and the recovery state, and the write-ahead
//!   rule;
//! - `publish`: metric events and the status snapshot rendered for the registry and the socket;
//! - [`control`]: the control socket `claude-watch status` talks to;
//! - [`metrics`]: the Prometheus registry and endpoint;
//! - [`notify`]: `sd_notify` readiness and watchdog;
//! - [`status`]: the snapshot served to operators;
//! - [`terminal`]: no controlling terminal, ever.

pub mod control;
mod durable;
pub mod fleet;
pub mod guard;
pub mod metrics;
pub mod notify;
mod publish;
pub mod status;
pub mod terminal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use claude_watch_core::schedule::locate::{self, AttachFailure, Locating};
use claude_watch_core::schedule::look::{self, LookQueue};
use claude_watch_core::schedule::{self, OverBudgetList, Throttle};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::capture::images::ImageBook;
use crate::capture::probes::{OverBudget, OverUserBudget};
use crate::capture::records::RecordStream;
use crate::capture::{CaptureError, KernelStats, Probes, Settings, Target as ProbeTarget, targets};
use crate::config::Config;
use crate::discover::{self, Discovery, Found, Looked, Processes as _};
use crate::error_chain;
use crate::http::pair::Record;
use crate::journal::{Journal, JournalOptions};
use crate::supervise::RestartFailed;
use crate::supervise::supervisor::{self, SystemdBus};
use crate::time::{mono_now_ns, wall_clock};
use crate::watch::front::Front;
use crate::watch::{Effect, Input, Watch};
use durable::{Durable, Write, WriteAhead};
use metrics::Metrics;
use notify::Notifier;
use status::Snapshot;

/// The configuration file read when none is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = crate::config::DEFAULT_PATH;

/// How often the core's clock is advanced without an event.
const TICK: Duration = Duration::from_millis(250);

/// How often the ring is read without a wake-up. An exec of an image not judged yet does not
/// wake the daemon (the wake-up would be paid inside the exec: `sched_process_exec` in
/// `claude-ebpf`), so a new program, a Claude Code never seen before among them, is read within
/// this of its exec; exits and successful exchanges ride it too.
const DRAIN: Duration = Duration::from_millis(50);

// How the daemon was started: the arguments of `claude-watch daemon`, whose `--help` the doc
// comment below is (so it speaks to the operator).
/// Run the watchdog: discover every Claude Code process, attach probes, detect 401 latches and
/// 429 throttles, and restart latched instances through their supervisor.
///
/// Without --config it reads /etc/claude-watch/config.toml if present, else the built-in
/// configuration (`claude-watch config show`). Instances in systemd units are restarted through
/// systemd when systemd is reachable; everything else is observed only unless configured.
///
/// Examples:
///   claude-watch daemon                                  # defaults
///   claude-watch daemon --config /etc/claude-watch/config.toml
///   claude-watch daemon --dry-run                        # detect and report, never restart
///   claude-watch daemon --probe-time                     # and what each eBPF program cost
///
/// Signals: SIGHUP reloads the configuration (a bad one is refused and the running one kept),
/// SIGTERM/SIGINT stop cleanly (probes detached, state saved).
#[derive(Clone, Debug, Default, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Options {
    /// Configuration file (TOML).
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Detect and report, never restart anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print each eBPF program's runs and average run time when stopping (turns the kernel's
    /// run-time statistics on while running: two clock reads per program run).
    #[arg(long)]
    pub probe_time: bool,
}

/// Loads the configuration the daemon would use, and names where it came from. What the
/// configuration leaves to the host is filled in here (`[fleet] host`: the kernel's host name).
pub fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    let (mut config, origin) = crate::config::find(path)?;
    if config.fleet.host.is_none() {
        let host = crate::instance::proc::read_host_text("/proc/sys/kernel/hostname", 256);
        let host = host.trim();
        config.fleet.host = Some(if host.is_empty() { "localhost" } else { host }.to_owned());
    }
    Ok((config, origin))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: Options) -> anyhow::Result<()> {
    // Everything that can be wrong with the configuration is found before anything starts.
    let (mut config, origin) = load_config(options.config.as_deref())?;
    config.daemon.dry_run |= options.dry_run;
    terminal::give_up_and_say();
    crate::allocator::tune_for_long_run();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Blocking work is locating (at most `locate::WORKERS` at once) and a container
        // engine's restarts; the cap keeps a burst from becoming hundreds of threads.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut daemon = Daemon::start(config, origin, options).await?;
        daemon.run().await
    })
}

/// Descriptors of one process the coverage audit looks at.
const AUDIT_FDS: usize = 4096;

/// A result of work done off the event loop, on its way back.
enum Done {
    /// The TLS functions of a found process were located (or not).
    Located {
        found: Box<Found>,
        result: Result<Vec<ProbeTarget>, CaptureError>,
        /// The last look at a script instance's mapped files (a failure is then said).
        last: bool,
    },
    /// An input for the core (a restart's or the hook's result, an audit's figures).
    Input(Box<Input>),
    /// A coverage audit finished: how long it took, over how many processes.
    Audited(Duration, usize),
    /// The durable writer wrote everything up to this write.
    Durable(u64),
    /// A look of discovery's returned (`overran`: after it was given up).
    Looked {
        uid: u32,
        looked: Option<Looked>,
        overran: bool,
    },
    /// A look of discovery's ran over its budget and was given up.
    LookOverran { uid: u32, pid: u32 },
}

/// Threads for blocking work, at most: locates ([`locate::WORKERS`]), discovery's looks
/// ([`look::WORKERS`], and up to [`look::MAX_STUCK`] given up in a call that does not
/// return), and a container engine's restarts.
const MAX_BLOCKING_THREADS: usize = 12;

struct Daemon {
    origin: String,
    options: Options,
    probes: Probes,
    stream: Option<RecordStream>,
    front: Front<Discovery>,
    watch: Watch,
    durable: Durable,
    /// Effects that act on or report a decision, until the records before them are durable.
    /// Effects held for their records, each with the moment it was decided.
    ahead: WriteAhead<(std::time::Instant, Effect)>,
    metrics: Metrics,
    notifier: Notifier,
    snapshots: watch::Sender<Arc<Snapshot>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    started_ms: u64,
    control_path: PathBuf,
    /// Which process's files are located next (inline while starting, within a budget).
    locates: Locating,
    /// Discovery's looks waiting for a blocking thread.
    looks: LookQueue<discover::Look>,
    /// This daemon's claim on its scope (no other daemon watches the same processes).
    _claim: guard::Claim,
    /// The task asking the fleet's Alertmanager, and what it asks (`[fleet]`).
    fleet_poller: Option<(fleet::Asking, tokio::task::JoinHandle<()>)>,
    /// Live processes over their record budget, as last read from the kernel.
    over_budget: OverBudgetList<OverBudget>,
    /// Users over their record budget, as last read from the kernel (heads and execs).
    over_budget_users: OverBudgetList<OverUserBudget>,
    /// When every process was last looked at again for execs dropped over a user's budget.
    rescan_look: Throttle,
    /// When the container engine's socket was last looked for.
    engine_poll: Throttle,
    /// Images the kernel's exec filter knows not to be Claude Code.
    images: ImageBook,
    /// The kernel's run-time statistics, on for `--probe-time`.
    run_stats: Option<crate::capture::probes::RunTimeStats>,
    /// When the last coverage audit was started, and whether one is running.
    audit: (Throttle, bool),
    /// The last coverage audit: how long it took, over how many processes.
    audit_took: (Duration, usize),
}

impl Daemon {
    /// Opens everything in an order where a failure leaves nothing half-started: files and
    /// sockets first, the kernel last.
    async fn start(config: Config, origin: String, options: Options) -> anyhow::Result<Self> {
        let claim = guard::claim(config.daemon.scope.as_deref())?;
        let d = &config.daemon;
        for dir in [
            d.journal.parent(),
            Some(d.state_dir.as_path()),
            Some(d.locate_cache.as_path()),
        ]
        .into_iter()
        .flatten()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let journal = Journal::open(
            &d.journal,
            JournalOptions {
                max_bytes: d.journal_max_bytes,
                keep: d.journal_keep as usize,
            },
        )
        .with_context(|| format!("opening the journal {}", d.journal.display()))?;
        let control = control::bind(&d.control_socket).await?;
        let metrics_listener = match d.metrics_listen {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .with_context(|| format!("listening for metrics on {addr}"))?,
            ),
            None => None,
        };
        targets::set_locate_cache(d.locate_cache.clone());

        let run_stats = options
            .probe_time
            .then(crate::capture::probes::RunTimeStats::enable)
            .transpose()?;
        let mut probes = Probes::load(Settings {
            ring_bytes: d.ring_mib << 20,
            budget: (d.record_budget > 0).then_some(d.record_budget),
            user_budget: (d.record_budget_per_user > 0).then_some(d.record_budget_per_user),
            wakeup: d.wakeup,
            exec_filter: d.exec_filter,
            ..Settings::default()
        })?;
        probes.set_max_attachments(d.max_attachments as usize);
        probes.set_max_attachments_per_user(d.max_attachments_per_user.map(|s| s as usize));
        probes.watch_processes()?;
        let stream = RecordStream::new(probes.take_ring()?).context("polling the ring buffer")?;

        let state_path = d.state_dir.join("recovery.json");
        let saved = durable::read_recovery_state(&state_path);
        let records = journal.records().context("reading the journal")?;
        let open_episodes: Vec<_> = crate::journal::episodes(&records)
            .into_iter()
            .filter(|e| !e.is_closed())
            .collect();

        let bus = crate::supervise::supervisor::detect_bus(config.recovery.systemd_bus.as_deref());
        if let SystemdBus::Unavailable(why) = &bus {
            warn!(
                "systemd is not reachable ({why}): instances in units will be observed, not restarted, unless [recovery] or [[instance]] configure a supervisor"
            );
        }
        if config.daemon.dry_run {
            warn!("dry run: latched instances are reported, never restarted");
        }

        let metrics = Metrics::default();
        publish::declare_metrics(&metrics);
        let (snapshots, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(control::serve(control, snapshot_rx));
        if let Some(listener) = metrics_listener {
            info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving Prometheus metrics on /metrics");
            tokio::spawn(metrics::serve(listener, metrics.clone()));
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let clock = wall_clock();
        let discovery = Discovery::new("/proc", config.rules())
            .with_docker_socket(config.daemon.docker_socket.clone())
            .deferring_looks();
        let front = Front::new(discovery, clock);
        let control_path = d.control_socket.clone();
        let engine = crate::supervise::supervisor::detect_engine(&config.daemon.docker_socket);
        let watch = Watch::new(config, bus, engine, saved, mono_now_ns(), clock);
        let acks = done_tx.clone();
        let durable = Durable::start(journal, state_path, move |seq| {
            let _ = acks.send(Done::Durable(seq));
        });
        let mut daemon = Self {
            origin,
            options,
            probes,
            stream: Some(stream),
            front,
            watch,
            durable,
            ahead: WriteAhead::default(),
            metrics,
            notifier: Notifier::from_env(),
            snapshots,
            done_tx,
            done_rx,
            started_ms: crate::time::wall_now_ms(),
            control_path,
            locates: Locating::default(),
            looks: LookQueue::default(),
            _claim: claim,
            fleet_poller: None,
            over_budget: OverBudgetList::default(),
            over_budget_users: OverBudgetList::default(),
            rescan_look: Throttle::default(),
            engine_poll: Throttle::default(),
            images: ImageBook::new(claude_ebpf_common::IMAGE_ENTRIES as usize),
            run_stats,
            audit: (Throttle::default(), false),
            audit_took: (Duration::ZERO, 0),
        };
        daemon.ask_fleet();
        daemon.scan();
        daemon.settle_looks().await;
        daemon.feed(Input::Resume {
            episodes: open_episodes,
        });
        daemon.locates.ready();
        // Status and gauges are there when it says it is ready. What they show at this point
        // was read from the journal and /proc (no decision is made before the first record is
        // read), so nothing waits for the writer.
        daemon.publish(daemon.watch.status(mono_now_ns()));
        info!(
            instances = daemon.watch.instance_count(),
            config = %daemon.origin,
            control = %daemon.control_path.display(),
            "claude-watch is watching"
        );
        daemon.notifier.notify("READY=1");
        Ok(daemon)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut stream = self.stream.take().expect("the stream is taken once");
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(DRAIN);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog =
            tokio::time::interval(Notifier::watchdog_period().unwrap_or(Duration::from_secs(3600)));

        loop {
            // What the clock alone will decide (a latch reaching its span, a quiet window
            // ending) is decided at that moment, not at the next tick.
            let deadline = self.watch.next_deadline().map_or(
                tokio::time::Instant::now() + Duration::from_secs(3600),
                |at| {
                    tokio::time::Instant::now()
                        + Duration::from_nanos(at.saturating_sub(mono_now_ns()))
                },
            );
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => self.feed(Input::Tick),
                // Records are handled in place, straight from the ring (no copy). The status
                // snapshot is rebuilt on the tick, not per record.
                ready = stream.readable() => {
                    ready.map_err(CaptureError::Read)?;
                    stream.drain_now(|r| self.on_record(r));
                }
                _ = drain.tick() => {
                    stream.drain_now(|r| self.on_record(r));
                }
                _ = tick.tick() => {
                    stream.drain_now(|r| self.on_record(r));
                    let known = self.watch.procs();
                    let due = self.front.processes_mut().due_rescans(mono_now_ns(), known);
                    for (found, last) in due {
                        self.locate(found, last);
                    }
                    for found in self.front.processes_mut().due_claims(self.watch.procs()) {
                        self.feed(Input::Started(found));
                    }
                    self.rescan_after_dropped_execs();
                    self.start_audit();
                    for (image, owner, verdict) in self.front.processes_mut().take_judged_images() {
                        for change in self.images.offer(image, owner, verdict) {
                            self.probes.change_image(change);
                        }
                    }
                    self.poll_engine();
                    self.feed(Input::Tick);
                }
                Some(done) = self.done_rx.recv() => self.on_done(done),
                _ = watchdog.tick() => self.notifier.notify("WATCHDOG=1"),
                _ = sighup.recv() => self.reload(),
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
            self.start_looks();
        }
        self.shutdown();
        Ok(())
    }

    /// Stops cleanly: state saved and written, socket removed, probes detached (dropping them
    /// detaches).
    fn shutdown(&mut self) {
        self.notifier.notify("STOPPING=1");
        self.durable
            .send(Write::State(Box::new(self.watch.recovery_state())));
        self.durable.finish();
        // Everything is durable now: what reports passes; an action decided this late is left
        // to the next start, which resumes the open episodes.
        for (_, effect) in self.ahead.drain() {
            match effect {
                Effect::Restart { instance, .. } | Effect::RunHook { instance, .. } => {
                    info!(instance = %instance, "stopping: a restart or hook decided just now is left to the next start");
                }
                effect => self.act(effect),
            }
        }
        let _ = std::fs::remove_file(&self.control_path);
        if self.run_stats.is_some() {
            eprintln!(
                "claude-watch: probe time: {}",
                crate::capture::probes::ProgramTime::line(&self.probes.run_times())
            );
        }
        info!(
            attachments = self.probes.attachments(),
            "stopping: detaching probes"
        );
    }

    /// Starts, restarts or stops the task asking the fleet's Alertmanager, as `[fleet]` says.
    fn ask_fleet(&mut self) {
        let f = &self.watch.config().fleet;
        let wanted = f.enabled().then(|| fleet::Asking {
            urls: f.alertmanager.clone(),
            filters: f.filters(),
            every: f.poll_every,
        });
        if self.fleet_poller.as_ref().map(|(a, _)| a) == wanted.as_ref() {
            return;
        }
        if let Some((_, task)) = self.fleet_poller.take() {
            task.abort();
        }
        if let Some(asking) = wanted {
            info!(alertmanager = %asking.urls.join(" "), every_s = asking.every.as_secs(), filters = %asking.filters.join(", "), "asking the fleet's Alertmanager for the incident alert before any restart");
            let task = tokio::spawn(fleet::poll(asking.clone(), self.done_tx.clone()));
            self.fleet_poller = Some((asking, task));
        }
    }

    fn reload(&mut self) {
        self.notifier.notify("RELOADING=1");
        match load_config(self.options.config.as_deref()) {
            Ok((mut config, origin)) => {
                config.daemon.dry_run |= self.options.dry_run;
                let later = self
                    .watch
                    .config()
                    .daemon
                    .changed_at_next_start(&config.daemon);
                if !later.is_empty() {
                    warn!(keys = %later.join(", "), "these [daemon] changes take effect at the next start");
                }
                self.front.processes_mut().set_rules(config.rules());
                self.probes
                    .set_max_attachments(config.daemon.max_attachments as usize);
                self.probes.set_max_attachments_per_user(
                    config.daemon.max_attachments_per_user.map(|s| s as usize),
                );
                let bus = crate::supervise::supervisor::detect_bus(
                    config.recovery.systemd_bus.as_deref(),
                );
                let engine =
                    crate::supervise::supervisor::detect_engine(&config.daemon.docker_socket);
                self.origin = origin;
                // The scope is what this daemon claimed at its start (see `guard`): it stays.
                config
                    .daemon
                    .scope
                    .clone_from(&self.watch.config().daemon.scope);
                self.feed(Input::Reload {
                    config: Box::new(config),
                    bus,
                    engine,
                });
                self.ask_fleet();
                info!(config = %self.origin, "configuration reloaded");
            }
            Err(e) => error!("reload refused, keeping the running configuration: {e:#}"),
        }
        self.notifier.notify("READY=1");
    }

    /// Looks for the container engine's socket when due ([`schedule::ENGINE_POLL_EVERY`]), and
    /// tells the core when it came or went.
    fn poll_engine(&mut self) {
        if !self
            .engine_poll
            .due(mono_now_ns(), schedule::ENGINE_POLL_EVERY)
        {
            return;
        }
        let engine =
            crate::supervise::supervisor::detect_engine(&self.watch.config().daemon.docker_socket);
        if &engine != self.watch.engine() {
            info!(socket = %engine.path.display(), present = engine.present, "container engine socket changed");
            self.feed(Input::Engine(engine));
        }
    }

    /// Starts a coverage audit when one is due: on a blocking thread, one `sock_diag` dump and
    /// each audited process's socket descriptors (at most [`AUDIT_FDS`] looked at), its totals
    /// back as [`Input::Traffic`].
    fn start_audit(&mut self) {
        let every = self.watch.config().daemon.coverage_audit;
        if every.is_zero() || self.audit.1 || !self.audit.0.due(mono_now_ns(), every) {
            return;
        }
        let pids = self.watch.audited();
        self.audit.1 = !pids.is_empty();
        if pids.is_empty() {
            return;
        }
        let tx = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let sockets = match crate::capture::sockdiag::tcp_sockets() {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "coverage audit: sock_diag unanswered");
                    let _ = tx.send(Done::Audited(started.elapsed(), 0));
                    return;
                }
            };
            let audited = pids.len();
            for pid in pids {
                let mut total = 0u64;
                let mut held = 0u32;
                for inode in crate::instance::proc::socket_inodes(pid, AUDIT_FDS) {
                    if let Some(c) = sockets.get(&inode) {
                        total = total.saturating_add(c.sent).saturating_add(c.received);
                        held += 1;
                    }
                }
                let input = Input::Traffic {
                    pid,
                    total,
                    sockets: held,
                };
                let _ = tx.send(Done::Input(Box::new(input)));
            }
            let _ = tx.send(Done::Audited(started.elapsed(), audited));
        });
    }

    fn on_record(&mut self, record: Record<'_>) {
        let mut inputs = Vec::new();
        self.front
            .push(record, self.watch.procs(), |input| inputs.push(input));
        for input in inputs {
            self.feed(input);
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Located {
                found,
                result,
                last,
            } => {
                self.locates.located();
                self.attach(&found, result, last);
                self.start_locates();
            }
            Done::Input(input) => self.feed(*input),
            Done::Audited(took, processes) => {
                self.audit.1 = false;
                self.audit_took = (took, processes);
                debug!(
                    processes,
                    took_ms = took.as_secs_f64() * 1000.0,
                    "coverage audit done"
                );
            }
            Done::Looked {
                uid,
                looked,
                overran,
            } => {
                self.looks.finished(uid, overran);
                let again =
                    looked.map_or_else(Vec::new, |looked| self.front.processes_mut().learn(looked));
                for pid in again {
                    self.inspect(pid);
                }
                self.start_looks();
            }
            Done::LookOverran { uid, pid } => {
                self.looks.overran();
                self.front.processes_mut().forget_look(pid);
                warn!(
                    pid,
                    uid,
                    budget_ms = look::BUDGET.as_millis(),
                    stuck = self.looks.stuck(),
                    "a look at a process's file took longer than its budget: given up, its user's next looks wait for it"
                );
                self.start_looks();
            }
            Done::Durable(seq) => {
                for (decided, effect) in self.ahead.acknowledged(seq) {
                    self.release(decided, effect);
                }
            }
        }
    }

    /// Looks at process `pid` against the core's pid table, and tells the core what it is.
    fn inspect(&mut self, pid: u32) -> bool {
        let input = self.front.inspect(pid, self.watch.procs());
        let started = matches!(input, Some(Input::Started(_)));
        if let Some(input) = input {
            self.feed(input);
        }
        started
    }

    /// Looks at every process on the host; returns how many claude instance processes were
    /// found that the core did not know.
    fn scan(&mut self) -> usize {
        let pids = self.front.processes().pids();
        pids.into_iter().filter(|pid| self.inspect(*pid)).count()
    }

    /// Hands `input` to the core now and executes what it answers.
    fn feed(&mut self, input: Input) {
        if let Input::Exited { pid, .. } = &input {
            self.locates.forget(*pid);
        }
        for effect in self.watch.handle(mono_now_ns(), input) {
            self.execute(effect);
        }
    }

    /// Executes an effect, or holds it back when it acts on or reports a decision whose
    /// records are not durable yet ([`WriteAhead`]).
    fn execute(&mut self, effect: Effect) {
        match effect {
            Effect::Restart { .. } | Effect::RunHook { .. } | Effect::Publish(_) => {
                let coalesced = matches!(effect, Effect::Publish(_));
                if let Some((decided, effect)) = self
                    .ahead
                    .admit((std::time::Instant::now(), effect), coalesced)
                {
                    self.release(decided, effect);
                }
            }
            effect => self.act(effect),
        }
    }

    /// Acts on a write-ahead effect decided at `decided`, once its records are durable, and
    /// measures how long a restart waited for them.
    fn release(&mut self, decided: std::time::Instant, effect: Effect) {
        if matches!(effect, Effect::Restart { .. }) {
            let (name, help) = publish::WRITE_AHEAD;
            self.metrics
                .observe(name, help, decided.elapsed().as_secs_f64());
        }
        self.act(effect);
    }

    /// Queues a durable write; what acts on a decision waits for it.
    fn write(&mut self, write: Write) {
        let seq = self.durable.send(write);
        if self.durable.running() {
            self.ahead.queued(seq);
        }
    }

    /// Executes an effect now (a write-ahead effect once its records are durable).
    fn act(&mut self, effect: Effect) {
        match effect {
            // A script's TLS library may not be mapped yet: it is looked at again (see
            // `Discovery::due_rescans`), and only the last failure is said.
            Effect::Attach(found) => {
                // Its execs and exit reach us whatever image it runs.
                self.probes.watch_pid(found.info.pid, true);
                self.locate(found, false);
            }
            Effect::Detach { pid } => {
                self.probes.release(pid);
                self.probes.watch_pid(pid, false);
            }
            Effect::Inspect { pid } => {
                self.inspect(pid);
            }
            Effect::Restart {
                instance,
                supervisor,
                target,
                timeout,
            } => {
                let tx = self.done_tx.clone();
                tokio::spawn(async move {
                    let result =
                        crate::supervise::supervisor::restart_within(&supervisor, &target, timeout)
                            .await
                            .map_err(|e| RestartFailed::new(crate::error_chain(&e)));
                    let _ = tx.send(Done::Input(Box::new(Input::RestartFinished {
                        instance,
                        result,
                    })));
                });
            }
            Effect::RunHook {
                instance,
                argv,
                target,
                timeout,
                reason,
                instances,
            } => {
                let tx = self.done_tx.clone();
                tokio::spawn(async move {
                    let result = supervisor::run_hook(&argv, timeout, &target, &reason, &instances)
                        .await
                        .map_err(|e| RestartFailed::new(crate::error_chain(&e)));
                    let _ = tx.send(Done::Input(Box::new(Input::HookFinished {
                        instance,
                        result,
                    })));
                });
            }
            Effect::Journal(record) => self.write(Write::Journal(Box::new(record))),
            Effect::SaveRecovery(snapshot) => self.write(Write::State(Box::new(snapshot))),
            Effect::Metric(metric) => publish::record(&self.metrics, &metric),
            Effect::Publish(status) => self.publish(status),
        }
    }

    /// Locates the TLS functions a found process needs: inline while the daemon starts and
    /// [`Locating`] says so, else on a blocking task in its turn.
    fn locate(&mut self, found: Found, last: bool) {
        let Some(inline) = self.locates.request(found, last) else {
            self.start_locates();
            return;
        };
        let began = mono_now_ns();
        let result = discover::target(&inline.found);
        if self
            .locates
            .spent(Duration::from_nanos(mono_now_ns().saturating_sub(began)))
        {
            warn!(
                budget_s = locate::STARTUP_BUDGET.as_secs(),
                "locating at start took longer than its budget: the remaining files are located after readiness"
            );
        }
        self.attach(&inline.found, result, inline.last);
    }

    /// Queues discovery's new looks and starts those for which a worker is free, each on a
    /// blocking thread and given up after [`look::BUDGET`].
    fn start_looks(&mut self) {
        for look in self.front.processes_mut().take_looks() {
            let (uid, pid) = (look.uid, look.pid);
            if !self.looks.push(uid, look) {
                self.front.processes_mut().forget_look(pid);
                if self.looks.say_dropped(mono_now_ns()) {
                    warn!(
                        uid,
                        pid,
                        dropped = self.looks.dropped(),
                        "a user's queue of looks is full: this process is not judged (dropped: since the start)"
                    );
                }
            }
        }
        while let Some(look) = self.looks.start() {
            let (uid, pid) = (look.uid, look.pid);
            let tx = self.done_tx.clone();
            let mut work = tokio::task::spawn_blocking(move || look.run());
            tokio::spawn(async move {
                let (looked, overran) = match tokio::time::timeout(look::BUDGET, &mut work).await {
                    Ok(looked) => (looked, false),
                    Err(_) => {
                        let _ = tx.send(Done::LookOverran { uid, pid });
                        (work.await, true)
                    }
                };
                let _ = tx.send(Done::Looked {
                    uid,
                    looked: looked.ok(),
                    overran,
                });
            });
        }
    }

    /// At start: runs the looks the first scan queued (and those their answers queue), until
    /// none is left or [`look::STARTUP_BUDGET`] has passed ([`LookQueue::settle`] decides), so
    /// that the processes running now are found (and attached) before the daemon says it
    /// watches.
    async fn settle_looks(&mut self) {
        loop {
            self.start_looks();
            let now = mono_now_ns();
            let by = match self.looks.settle(now) {
                look::Settle::Done => return,
                look::Settle::Until(by) => by,
                look::Settle::OutOfTime => {
                    warn!(
                        budget_s = look::STARTUP_BUDGET.as_secs(),
                        waiting = self.looks.waiting(),
                        "discovery's looks at start took longer than their budget: the rest are judged after readiness"
                    );
                    return;
                }
            };
            let left = Duration::from_nanos(by.saturating_sub(now));
            match tokio::time::timeout(left, self.done_rx.recv()).await {
                Ok(Some(done)) => self.on_done(done),
                Ok(None) => return,
                Err(_) => {}
            }
        }
    }

    /// Starts queued looks while workers are free; a process gone meanwhile is skipped.
    fn start_locates(&mut self) {
        let known = self.watch.procs();
        while let Some(locate) = self.locates.next(|found| known.is_current(found)) {
            let tx = self.done_tx.clone();
            tokio::task::spawn_blocking(move || {
                let result = discover::target(&locate.found);
                let _ = tx.send(Done::Located {
                    found: Box::new(locate.found),
                    result,
                    last: locate.last,
                });
            });
        }
        if self.locates.waiting() > 0 {
            debug!(
                waiting = self.locates.waiting(),
                "looks at processes' files queued"
            );
        }
    }

    /// Attaches probes for a found process once its TLS functions are located, unless it has
    /// exited (or its pid was reused) meanwhile. A file that cannot be verified is refused,
    /// said once in the log (at the `last` look), and the instance is shown `unobserved (why)`.
    fn attach(
        &mut self,
        found: &Found,
        result: Result<Vec<ProbeTarget>, CaptureError>,
        last: bool,
    ) {
        let pid = found.info.pid;
        if !self.watch.procs().is_current(found) {
            return;
        }
        let attached = result.and_then(|targets| {
            for target in &targets {
                if self.probes.attach(target, pid, found.info.uid)? {
                    info!(pid, instance = %found.instance, path = %target.path.display(), how = %target.how, "attached");
                }
            }
            Ok(())
        });
        let unobserved = attached.err().map(|e| {
            let (error, instance) = (error_chain(&e), &found.instance);
            match e.attach_failure() {
                f if !f.is_final(last) => debug!(pid, %instance, error = %error, "not attached yet"),
                AttachFailure::UserShare => {
                    warn!(pid, uid = found.info.uid, %instance, share = self.probes.max_attachments_per_user(), error = %error, "unobserved: the user's share of attachments is used up");
                }
                AttachFailure::Cap => {
                    warn!(pid, %instance, attachments = self.probes.attachments(), refused = self.probes.refused_attachments(), error = %error, "unobserved: attachment cap reached");
                }
                AttachFailure::Other => warn!(pid, %instance, error = %error, "unobserved: cannot attach"),
            }
            error
        });
        self.feed(Input::Observed { pid, unobserved });
    }

    /// Publishes the status snapshot and refreshes the gauges.
    fn publish(&mut self, status: crate::watch::status::Status) {
        let stats = self.probes.stats();
        self.refresh_over_budget(&stats);
        publish::gauges(
            &self.metrics,
            &status,
            &publish::CaptureFigures {
                stats: &stats,
                attachments: self.probes.attachments(),
                max_attachments: self.probes.max_attachments(),
                refused_attachments: self.probes.refused_attachments(),
                over_budget_processes: self.over_budget.listed.len(),
                over_budget_users: self.over_budget_users.listed.len(),
                files: self.front.processes().files(),
                exec_images: self.probes.exec_filter().then(|| self.images.len()),
                audit: self.audit_took,
            },
        );
        let snapshot = Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            now_ms: crate::time::wall_now_ms(),
            dry_run: status.dry_run,
            config: self.origin.clone(),
            capture: status::CaptureView {
                attachments: self.probes.attachments(),
                sent: stats.sent,
                lost: stats.lost,
                exchanges: status.exchanges,
                skipped: stats.skipped,
                orphan_returns: stats.orphan_returns,
                over_budget: stats.over_budget,
                over_budget_pids: self.over_budget.listed.clone(),
                over_user_budget: stats.over_user_budget + stats.execs_over_budget,
                over_budget_users: self.over_budget_users.listed.clone(),
                max_attachments: self.probes.max_attachments(),
                refused_attachments: self.probes.refused_attachments(),
            },
            instances: status.instances,
            instances_refused: status.instances_refused,
            incident: status.incident,
            fleet: status.fleet,
        };
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// Reads which live processes and which users are over their record budget when
    /// [`OverBudgetList::due`] says, and says each new one once in the log.
    fn refresh_over_budget(&mut self, stats: &KernelStats) {
        let now = mono_now_ns();
        if self.over_budget.due(stats.over_budget, now) {
            for o in self.over_budget.read(self.probes.over_budget(), |o| o.pid) {
                let comm = crate::instance::proc::comm(o.pid)
                    .map(|c| c.escape_debug().to_string())
                    .unwrap_or_default();
                warn!(
                    pid = o.pid,
                    comm,
                    dropped = o.dropped,
                    budget = self.watch.config().daemon.record_budget,
                    "a process is over its record budget: its excess TLS records are dropped in the kernel"
                );
            }
        }
        let dropped = stats.over_user_budget + stats.execs_over_budget;
        if self.over_budget_users.due(dropped, now) {
            for o in self
                .over_budget_users
                .read(self.probes.over_user_budget(), |o| o.uid)
            {
                warn!(
                    uid = o.uid,
                    dropped = o.dropped,
                    budget = self.watch.config().daemon.record_budget_per_user,
                    "a user is over their record budget: the excess TLS records and execs of their processes are dropped in the kernel"
                );
            }
        }
    }

    /// Looks at every process again when the kernel dropped execs over a user's budget since
    /// the last time (at most every [`schedule::RESCAN_AFTER_DROPPED_EXECS`]): a Claude Code
    /// started by that user in the meantime is found this way, only later.
    fn rescan_after_dropped_execs(&mut self) {
        let dropped = self.probes.stats().execs_over_budget;
        let every = schedule::RESCAN_AFTER_DROPPED_EXECS;
        if !self.rescan_look.grew(dropped, false, mono_now_ns(), every) {
            return;
        }
        let found = self.scan();
        info!(
            dropped_execs = dropped,
            found, "execs were dropped over a user's budget: every process looked at again"
        );
    }
}
