//! The daemon: capture, discovery, detection and recovery wired together around one event
//! loop. The state machines ([`Detector`], [`Policy`]) stay pure; this module moves data
//! between them and the world: kernel records in, journal records, restarts, metrics and
//! status out.
//!
//! - `actions`: restarts, the escalation hook, and their durable record;
//! - `publish`: the status snapshot and gauges;
//! - [`control`]: the control socket `claude-watch status` talks to;
//! - [`metrics`]: the Prometheus registry and endpoint;
//! - [`notify`]: `sd_notify` readiness and watchdog;
//! - [`recovery`]: each instance's supervisor, restarts and the escalation hook;
//! - [`status`]: the snapshot served to operators.

mod actions;
pub mod control;
pub mod metrics;
pub mod notify;
mod publish;
pub mod recovery;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use claude_ebpf_common::kind;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::capture::records::RecordStream;
use crate::capture::{Probes, targets};
use crate::config::Config;
use crate::detect::{Detector, Event, Reason, State};
use crate::discover::{self, Discovery, Found};
use crate::http::Exchange;
use crate::http::pair::{Pairer, Record};
use crate::instance::{IdSource, InstanceId};
use crate::journal::{Journal, JournalOptions};
use crate::supervise::policy::Policy;
use crate::supervise::{RestartOutcome, SuperviseError};
use crate::time::{mono_now_ns, wall_minus_mono_ns};
use actions::restore_policy;
use metrics::{Metrics, labels};
use notify::Notifier;
use publish::{
    DETECTION_HELP, EPISODES_HELP, EXCHANGES_HELP, RECOVERIES_HELP, RECOVERY_HELP, declare_metrics,
};
use recovery::SystemdBus;
use status::Snapshot;

/// The configuration file read when none is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/claude-watch/config.toml";

/// How often the detector's clock and the recovery policy are polled.
const TICK: Duration = Duration::from_millis(250);

/// How the daemon was started.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The configuration file (`None`: `/etc/claude-watch/config.toml` if present, else the
    /// built-in one).
    pub config: Option<PathBuf>,
    /// Never restart anything.
    pub dry_run: bool,
}

/// Loads the configuration the daemon would use, and names where it came from.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    match path {
        Some(p) => Ok((Config::load(p)?, p.display().to_string())),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            let p = Path::new(DEFAULT_CONFIG_PATH);
            Ok((Config::load(p)?, p.display().to_string()))
        }
        None => Ok((Config::builtin(), "<built-in>".to_owned())),
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: Options) -> anyhow::Result<()> {
    // Everything that can be wrong with the configuration is found before anything starts.
    let (mut config, origin) = load_config(options.config.as_deref())?;
    config.daemon.dry_run |= options.dry_run;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut daemon = Daemon::start(config, origin, options).await?;
        daemon.run().await
    })
}

/// A restart or hook that finished, sent back to the loop by its task.
struct RestartDone {
    instance: String,
    started: Instant,
    /// The escalation hook rather than a restart.
    hook: bool,
    result: Result<RestartOutcome, SuperviseError>,
}

/// The latest API answer of an instance.
#[derive(Clone, Copy, Debug)]
struct LastSeen {
    status: u16,
    ts_ms: u64,
}

struct Daemon {
    config: Config,
    origin: String,
    options: Options,
    probes: Probes,
    stream: Option<RecordStream>,
    discovery: Discovery,
    pairer: Pairer,
    detector: Detector,
    policy: Policy,
    journal: Journal,
    metrics: Metrics,
    notifier: Notifier,
    bus: SystemdBus,
    /// Instances by name (the policy speaks names).
    ids: BTreeMap<String, InstanceId>,
    /// Binary of each instance.
    binaries: HashMap<InstanceId, String>,
    /// Instance processes that no probe could be attached to, and why.
    unobserved: HashMap<u32, String>,
    last_seen: HashMap<InstanceId, LastSeen>,
    exchanges: u64,
    snapshots: watch::Sender<Arc<Snapshot>>,
    done_tx: mpsc::UnboundedSender<RestartDone>,
    done_rx: mpsc::UnboundedReceiver<RestartDone>,
    state_path: PathBuf,
    started_ms: u64,
    control_path: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Daemon {
    /// Opens everything in an order where a failure leaves nothing half-started: files and
    /// sockets first, the kernel last.
    async fn start(config: Config, origin: String, options: Options) -> anyhow::Result<Self> {
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

        let mut probes = Probes::load(d.ring_mib << 20)?;
        probes.watch_processes()?;
        let stream = RecordStream::new(probes.take_ring()?).context("polling the ring buffer")?;

        let state_path = d.state_dir.join("recovery.json");
        let policy = restore_policy(&state_path, config.recovery.policy_config());
        let mut detector = Detector::new(config.detector.detector_config());
        let records = journal.records().context("reading the journal")?;
        let mut resumed = Vec::new();
        for episode in crate::journal::episodes(&records)
            .into_iter()
            .filter(|e| !e.is_closed())
        {
            let id = instance_id_of(&episode.instance, episode.unit.as_deref());
            info!(instance = %id, episode = %episode.id, "resuming an episode left open by the previous run");
            detector.restore(&id, episode);
            resumed.push(id);
        }

        let bus = SystemdBus::detect(config.recovery.systemd_bus.as_deref());
        if let SystemdBus::Unavailable(why) = &bus {
            warn!(
                "systemd is not reachable ({why}): instances in units will be observed, not restarted, unless [recovery] or [[instance]] configure a supervisor"
            );
        }
        if config.daemon.dry_run {
            warn!("dry run: latched instances are reported, never restarted");
        }

        let metrics = Metrics::default();
        declare_metrics(&metrics);
        let (snapshots, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(control::serve(control, snapshot_rx));
        if let Some(listener) = metrics_listener {
            info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving Prometheus metrics on /metrics");
            tokio::spawn(metrics::serve(listener, metrics.clone()));
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let discovery = Discovery::new("/proc", config.rules())
            .with_docker_socket(config.daemon.docker_socket.clone());
        let control_path = d.control_socket.clone();
        let mut daemon = Self {
            config,
            origin,
            options,
            probes,
            stream: Some(stream),
            discovery,
            pairer: Pairer::new(wall_minus_mono_ns()),
            detector,
            policy,
            journal,
            metrics,
            notifier: Notifier::from_env(),
            bus,
            ids: BTreeMap::new(),
            binaries: HashMap::new(),
            unobserved: HashMap::new(),
            last_seen: HashMap::new(),
            exchanges: 0,
            snapshots,
            done_tx,
            done_rx,
            state_path,
            started_ms: now_ms(),
            control_path,
        };
        for found in daemon.discovery.scan() {
            daemon.adopt(&found);
        }
        // An episode still open is still latched as far as recovery knows: a restart that was
        // under way when the previous run stopped counts as not healed (a quiet window first),
        // and a quiet window restored from the state file keeps its deadline.
        for id in resumed {
            if !daemon.config.daemon.dry_run && daemon.supervisor(&id).acts() {
                daemon
                    .ids
                    .entry(id.name.clone())
                    .or_insert_with(|| id.clone());
                daemon.policy.latched(&id.name, Instant::now());
                daemon.journal_backoff(&id.name, Instant::now());
            }
        }
        daemon.save_policy();
        daemon.publish();
        info!(
            instances = daemon.ids.len(),
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
        let mut watchdog =
            tokio::time::interval(Notifier::watchdog_period().unwrap_or(Duration::from_secs(3600)));

        loop {
            // A latch the clock will decide (N 401s already in, span not yet reached) is
            // decided at that moment, not at the next tick.
            let deadline = self.detector.next_deadline().map_or(
                tokio::time::Instant::now() + Duration::from_secs(3600),
                |at| {
                    tokio::time::Instant::now()
                        + Duration::from_nanos(at.saturating_sub(mono_now_ns()))
                },
            );
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    let events = self.detector.tick(mono_now_ns());
                    self.on_events(events);
                    self.drive_policy();
                    self.publish();
                }
                                // Records are handled in place, straight from the ring (no copy). The status
                // snapshot is rebuilt on the tick, not per record.
                ready = stream.readable() => {
                    ready.map_err(crate::capture::CaptureError::Read)?;
                    stream.drain_now(|r| self.on_record(r));
                    self.drive_policy();
                }
                                _ = tick.tick() => {
                    stream.drain_now(|r| self.on_record(r));
                    for (found, last) in self.discovery.due_rescans(Instant::now()) {
                        self.attach(&found, last);
                    }
                    let events = self.detector.tick(mono_now_ns());
                    self.on_events(events);
                    self.drive_policy();
                    self.publish();
                }
                Some(done) = self.done_rx.recv() => {
                    self.on_restart_done(done);
                    self.drive_policy();
                    self.publish();
                }
                _ = watchdog.tick() => self.notifier.notify("WATCHDOG=1"),
                _ = sighup.recv() => self.reload(),
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        self.shutdown();
        Ok(())
    }

    /// Stops cleanly: state saved, socket removed, probes detached (dropping them detaches).
    fn shutdown(&mut self) {
        self.notifier.notify("STOPPING=1");
        self.save_policy();
        let _ = std::fs::remove_file(&self.control_path);
        info!(
            attachments = self.probes.attachments(),
            "stopping: detaching probes"
        );
    }

    fn reload(&mut self) {
        self.notifier.notify("RELOADING=1");
        match load_config(self.options.config.as_deref()) {
            Ok((mut config, origin)) => {
                config.daemon.dry_run |= self.options.dry_run;
                if config.daemon.journal != self.config.daemon.journal
                    || config.daemon.control_socket != self.config.daemon.control_socket
                    || config.daemon.metrics_listen != self.config.daemon.metrics_listen
                {
                    warn!(
                        "journal, control_socket and metrics_listen changes take effect at the next start"
                    );
                }
                self.detector.set_config(config.detector.detector_config());
                self.policy.set_config(config.recovery.policy_config());
                self.discovery.set_rules(config.rules());
                self.bus = SystemdBus::detect(config.recovery.systemd_bus.as_deref());
                self.config = config;
                self.origin = origin;
                info!(config = %self.origin, "configuration reloaded");
            }
            Err(e) => error!("reload refused, keeping the running configuration: {e:#}"),
        }
        self.notifier.notify("READY=1");
        self.publish();
    }

    /// A claude process was found: attach to it and tell the detector.
    fn adopt(&mut self, found: &Found) {
        self.attach(found, false);
        self.ids
            .insert(found.instance.name.clone(), found.instance.clone());
        self.binaries
            .insert(found.instance.clone(), found.info.exe.display().to_string());
        let events = self
            .detector
            .process_started(&found.instance, found.info.pid, mono_now_ns());
        self.on_events(events);
    }

    /// Attaches the probes a found process needs. A file that cannot be verified is refused,
    /// said once in the log, and the instance is shown `unobserved (why)`; a script whose TLS
    /// library is not mapped yet is looked at again (`last`: for the final time).
    fn attach(&mut self, found: &Found, last: bool) {
        let pid = found.info.pid;
        let attached = discover::target(found).and_then(|targets| {
            let mut any = false;
            for target in &targets {
                if self.probes.attach(target)? {
                    info!(pid, instance = %found.instance, path = %target.path.display(), how = %target.how, "attached");
                }
                any = true;
            }
            Ok(any)
        });
        match attached {
            Ok(_) => {
                self.unobserved.remove(&pid);
            }
            Err(e) => {
                if last || !self.discovery.rescan_pending(pid) {
                    warn!(pid, instance = %found.instance, "unobserved: cannot attach: {e}");
                } else {
                    debug!(pid, instance = %found.instance, "not attached yet: {e}");
                }
                self.unobserved.insert(pid, e.to_string());
            }
        }
    }

    fn on_record(&mut self, record: Record<'_>) {
        let pid = record.header.pid;
        match record.header.kind {
            kind::EXEC => {
                if let Some(found) = self.discovery.check(pid) {
                    self.adopt(&found);
                }
            }
            kind::EXIT => {
                self.pairer.forget_pid(pid);
                if let Some(found) = self.discovery.exited(pid) {
                    // Only instances (scripts under node or bun) have per-process probes.
                    self.probes.detach_pid(pid);
                    self.unobserved.remove(&pid);
                    debug!(pid, instance = %found.instance, "instance process exited");
                    let events = self
                        .detector
                        .process_exited(&found.instance, pid, mono_now_ns());
                    self.on_events(events);
                }
            }
            _ => {
                if let Some(exchange) = self.pairer.push(record) {
                    self.on_exchange(&exchange);
                }
            }
        }
    }

    fn on_exchange(&mut self, exchange: &Exchange) {
        self.exchanges += 1;
        let instance = match self.discovery.get(exchange.pid) {
            Some(found) => found.instance.clone(),
            None => match self.discovery.check(exchange.pid) {
                Some(found) => {
                    self.adopt(&found);
                    found.instance
                }
                None => return, // not a claude instance (a tool it spawned, say)
            },
        };
        let model = exchange.model.as_deref().unwrap_or("unknown");
        let status = exchange.status.to_string();
        self.metrics.inc(
            "claude_watch_exchanges_total",
            EXCHANGES_HELP,
            labels(&[
                ("agent", &instance.name),
                ("status", &status),
                ("model", model),
            ]),
            1.0,
        );
        if exchange
            .path
            .as_deref()
            .is_some_and(|p| p.starts_with("/v1/"))
        {
            self.last_seen.insert(
                instance.clone(),
                LastSeen {
                    status: exchange.status,
                    ts_ms: exchange.ts_ms,
                },
            );
        }
        let now = mono_now_ns();
        let events = self
            .detector
            .observe(&instance, exchange.pid, exchange, now);
        self.on_events(events);
    }

    fn on_events(&mut self, events: Vec<Event>) {
        let instant = Instant::now();
        for event in events {
            match &event {
                Event::StateChanged {
                    instance,
                    from,
                    to,
                    reason,
                    at_ns,
                } => {
                    info!(instance = %instance, from = ?from, to = ?to, reason = ?reason, "state changed");
                    let name = instance.name.as_str();
                    self.ids
                        .entry(name.to_owned())
                        .or_insert_with(|| instance.clone());
                    let acts = !self.config.daemon.dry_run && self.supervisor(instance).acts();
                    match (from, to) {
                        (_, State::Latched) => {
                            if *from == State::Suspect {
                                self.observe_detection(instance, *at_ns);
                            }
                            if acts {
                                self.policy.latched(name, instant);
                                self.journal_backoff(name, instant);
                                self.save_policy();
                            } else {
                                warn!(instance = %instance, supervisor = self.supervisor(instance).kind(), "latched; not restarting (observe-only)");
                            }
                        }
                        (State::Recovering | State::Latched | State::Escalated, State::Healthy) => {
                            if let Some(ttr) = self.policy.recovered(name, instant) {
                                self.metrics.observe(
                                    "claude_watch_recovery_seconds",
                                    RECOVERY_HELP,
                                    ttr.as_secs_f64(),
                                );
                            }
                            if *from != State::Latched || matches!(reason, Reason::Accepted { .. })
                            {
                                self.metrics.inc(
                                    "claude_watch_recoveries_total",
                                    RECOVERIES_HELP,
                                    labels(&[("agent", name)]),
                                    1.0,
                                );
                            }
                            self.save_policy();
                        }
                        _ => {}
                    }
                }
                Event::EpisodeOpened(episode) => {
                    warn!(instance = %episode.instance, episode = %episode.id, count_401 = episode.count_401, request_ids = ?episode.request_ids(), "latched: 401s on the instance's own session");
                    self.metrics.inc(
                        "claude_watch_episodes_total",
                        EPISODES_HELP,
                        labels(&[("agent", &episode.instance)]),
                        1.0,
                    );
                    self.journal_episode(episode);
                }
                Event::EpisodeUpdated(episode) => self.journal_episode(episode),
                Event::EpisodeClosed(episode) => {
                    info!(instance = %episode.instance, episode = %episode.id, end = ?episode.end, duration_ms = episode.duration_ms(), restarts = episode.restarts, "episode closed");
                    self.journal_episode(episode);
                }
                Event::ModelThrottled {
                    instance, model, ..
                } => {
                    warn!(instance = %instance, model, "model throttled (429): not a latch, no restart");
                }
                Event::TierThrottle {
                    instance,
                    throttled,
                    answering,
                    ..
                } => {
                    warn!(instance = %instance, throttled = ?throttled, answering, "tier throttle: 429 for some models while another answers");
                }
                Event::ThrottleCleared {
                    instance, model, ..
                } => info!(instance = %instance, model, "throttle cleared"),
            }
        }
    }

    /// Detection latency: from the moment the latch condition held (the 401 that completed it,
    /// or the window reaching its minimum span) to the decision.
    fn observe_detection(&self, instance: &InstanceId, at_ns: u64) {
        let Some(window) = self.detector.status(instance).and_then(|s| s.window) else {
            return;
        };
        let span =
            u64::try_from(self.detector.config().latch_min_span.as_nanos()).unwrap_or(u64::MAX);
        let held_since = window
            .last_401_mono_ns
            .max(window.first_401_mono_ns.saturating_add(span));
        let decided = at_ns.max(mono_now_ns());
        #[expect(
            clippy::cast_precision_loss,
            reason = "nanoseconds to seconds for a histogram"
        )]
        let seconds = decided.saturating_sub(held_since) as f64 / 1e9;
        self.metrics
            .observe("claude_watch_detection_seconds", DETECTION_HELP, seconds);
    }
}

/// The instance id an episode names.
fn instance_id_of(name: &str, unit: Option<&str>) -> InstanceId {
    match unit {
        Some(u) if u == name => InstanceId::unit(name),
        _ if name.starts_with("pid:") => InstanceId {
            name: name.to_owned(),
            source: IdSource::Pid,
        },
        _ => InstanceId::rule(name),
    }
}
