//! The daemon: capture, discovery, detection and recovery wired together around one event
//! loop. The state machines ([`Detector`], [`Policy`]) stay pure; this module moves data
//! between them and the world: kernel records in, journal records, restarts, metrics and
//! status out.
//!
//! - [`control`]: the control socket `claude-watch status` talks to;
//! - [`metrics`]: the Prometheus registry and endpoint;
//! - [`notify`]: `sd_notify` readiness and watchdog;
//! - [`recovery`]: each instance's supervisor, restarts and the escalation hook;
//! - [`status`]: the snapshot served to operators.

pub mod control;
pub mod metrics;
pub mod notify;
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
use crate::journal::{ActionKind, ActionRecord, Journal, JournalOptions, Record as JournalRecord};
use crate::supervise::policy::{Action, Phase, Policy, PolicySnapshot};
use crate::supervise::{RestartOutcome, SuperviseError, Target};
use crate::time::{mono_now_ns, wall_minus_mono_ns};
use metrics::{Metrics, labels};
use notify::Notifier;
use recovery::{Supervisor, SystemdBus};
use status::{CaptureView, InstanceView, Snapshot};

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
        let discovery = Discovery::new("/proc", config.rules());
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
        let mut batch: Vec<(claude_ebpf_common::EventHeader, Vec<u8>)> = Vec::new();
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
                drained = stream.drain(|r| batch.push((r.header, r.head.to_vec()))) => {
                    drained.map_err(crate::capture::CaptureError::Read)?;
                    for (header, head) in batch.drain(..) {
                        self.on_record(Record { header, head: &head });
                    }
                    self.drive_policy();
                    self.publish();
                }
                                _ = tick.tick() => {
                    stream.drain_now(|r| batch.push((r.header, r.head.to_vec())));
                    for (header, head) in batch.drain(..) {
                        self.on_record(Record { header, head: &head });
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
        match discover::target(found).and_then(|t| self.probes.attach(&t).map(|new| (t, new))) {
            Ok((target, true)) => {
                info!(pid = found.info.pid, instance = %found.instance, path = %target.path.display(), how = %target.how, "attached")
            }
            Ok((_, false)) => {}
            Err(e) => warn!(pid = found.info.pid, instance = %found.instance, "cannot attach: {e}"),
        }
        self.ids
            .insert(found.instance.name.clone(), found.instance.clone());
        self.binaries
            .insert(found.instance.clone(), found.info.exe.display().to_string());
        let events = self
            .detector
            .process_started(&found.instance, found.info.pid, mono_now_ns());
        self.on_events(events);
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
                self.probes.detach_pid(pid);
                if let Some(found) = self.discovery.exited(pid) {
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

    fn journal_episode(&mut self, episode: &crate::detect::Episode) {
        let record = JournalRecord::Episode {
            at_ms: now_ms(),
            episode: episode.clone(),
        };
        if let Err(e) = self.journal.append(&record) {
            error!(episode = %episode.id, "cannot write the journal: {e}");
        }
    }

    fn journal_action(
        &mut self,
        instance: &str,
        kind: ActionKind,
        ok: bool,
        until_ms: Option<u64>,
        detail: String,
    ) {
        let episode_id = self
            .ids
            .get(instance)
            .and_then(|id| self.detector.status(id))
            .and_then(|s| s.window)
            .map(|w| w.id);
        let record = JournalRecord::Action(ActionRecord {
            at_ms: now_ms(),
            instance: instance.to_owned(),
            episode_id,
            kind,
            ok,
            until_ms,
            detail: Some(detail),
        });
        if let Err(e) = self.journal.append(&record) {
            error!(instance, "cannot write the journal: {e}");
        }
    }

    fn supervisor(&self, instance: &InstanceId) -> Supervisor {
        Supervisor::resolve(
            self.config.supervisor_for(&instance.name),
            instance,
            &self.bus,
            self.config.recovery.restart_timeout,
        )
    }

    fn drive_policy(&mut self) {
        for action in self.policy.poll(Instant::now()) {
            match action {
                Action::Restart(name) => self.start_restart(&name),
                Action::Escalate(name) => self.escalate(&name),
                Action::Wait { .. } => {}
            }
        }
    }

    /// The restart target of an instance: its newest live process.
    fn target(&self, id: &InstanceId) -> Result<Target, SuperviseError> {
        let status = self.detector.status(id);
        let pid = status
            .as_ref()
            .and_then(|s| {
                s.window.as_ref().and_then(|w| {
                    w.pids
                        .iter()
                        .rev()
                        .find(|p| self.discovery.get(**p).is_some())
                        .copied()
                })
            })
            .or_else(|| {
                self.discovery
                    .all()
                    .filter(|f| &f.instance == id)
                    .map(|f| f.info.pid)
                    .max()
            })
            .ok_or_else(|| SuperviseError::UnitNotFound {
                instance: id.name.clone(),
                pid: 0,
                reason: "no live process of the instance is known".into(),
            })?;
        let target = Target::for_pid(id.name.clone(), pid)?;
        Ok(match id.unit_name() {
            Some(unit) => target.with_unit(unit),
            None => target,
        })
    }

    fn start_restart(&mut self, name: &str) {
        let Some(id) = self.ids.get(name).cloned() else {
            self.policy
                .restart_finished(name, Instant::now(), &Err::<(), _>("unknown instance"));
            return;
        };
        let supervisor = self.supervisor(&id);
        let target = match self.target(&id) {
            Ok(t) => t,
            Err(e) => {
                warn!(instance = name, "cannot restart: {e}");
                self.policy
                    .restart_finished(name, Instant::now(), &Err::<(), _>(e.to_string()));
                self.journal_action(
                    name,
                    ActionKind::Restart,
                    false,
                    None,
                    format!("no live process to restart: {e}"),
                );
                return;
            }
        };
        info!(instance = name, pid = target.pid, unit = ?target.unit, supervisor = supervisor.kind(), "restarting latched instance");
        let events = self.detector.restart_started(&id, mono_now_ns());
        self.on_events(events);
        self.save_policy();
        let tx = self.done_tx.clone();
        let instance = name.to_owned();
        let timeout = self.config.recovery.restart_timeout;
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, supervisor.restart(&target)).await {
                Ok(r) => r,
                Err(_) => Err(SuperviseError::Timeout {
                    what: format!("{} restart", supervisor.kind()),
                    timeout,
                }),
            };
            let _ = tx.send(RestartDone {
                instance,
                started,
                hook: false,
                result,
            });
        });
    }

    fn on_restart_done(&mut self, done: RestartDone) {
        let name = done.instance.as_str();
        if done.hook {
            let (ok, detail) = match &done.result {
                Ok(outcome) => (true, outcome.summary.clone()),
                Err(e) => (false, e.to_string()),
            };
            if ok {
                info!(instance = name, "escalation hook ran: {detail}");
            } else {
                warn!(instance = name, "escalation hook failed: {detail}");
            }
            self.journal_action(name, ActionKind::Hook, ok, None, detail);
            return;
        }
        let now = Instant::now();
        self.policy.restart_finished(name, now, &done.result);
        let id = self.ids.get(name).cloned();
        match &done.result {
            Ok(outcome) => {
                info!(instance = name, new_pid = ?outcome.new_pid, took_ms = done.started.elapsed().as_millis() as u64, "{}", outcome.summary);
                self.metrics.inc(
                    "claude_watch_restarts_total",
                    RESTARTS_HELP,
                    labels(&[("agent", name), ("result", "ok")]),
                    1.0,
                );
                self.journal_action(
                    name,
                    ActionKind::Restart,
                    true,
                    None,
                    outcome.summary.clone(),
                );
                if let Some(pid) = outcome.new_pid
                    && let Some(found) = self.discovery.check(pid)
                {
                    self.adopt(&found);
                }
            }
            Err(e) => {
                warn!(instance = name, "restart failed: {e}");
                self.metrics.inc(
                    "claude_watch_restarts_total",
                    RESTARTS_HELP,
                    labels(&[("agent", name), ("result", "error")]),
                    1.0,
                );
                self.journal_action(name, ActionKind::Restart, false, None, e.to_string());
                if let Some(id) = id {
                    let events = self.detector.restart_failed(&id, mono_now_ns());
                    self.on_events(events);
                }
            }
        }
        self.journal_backoff(name, now);
        self.save_policy();
    }

    /// Journals the quiet window the policy set for `name`, if one runs past `now`.
    fn journal_backoff(&mut self, name: &str, now: Instant) {
        if let Some(until) = self.policy.not_before(name).filter(|t| *t > now) {
            let wait = until.duration_since(now);
            let until_ms = now_ms() + u64::try_from(wait.as_millis()).unwrap_or(0);
            info!(
                instance = name,
                wait_s = wait.as_secs(),
                "quiet window before the next restart"
            );
            self.journal_action(
                name,
                ActionKind::Backoff,
                true,
                Some(until_ms),
                format!(
                    "quiet window of {}s before the next restart",
                    wait.as_secs()
                ),
            );
        }
    }

    fn escalate(&mut self, name: &str) {
        warn!(
            instance = name,
            restarts = self.policy.restarts(name),
            "escalated: restarts did not heal it; no more restarts until it answers non-401"
        );
        self.metrics.inc(
            "claude_watch_escalations_total",
            ESCALATIONS_HELP,
            labels(&[("agent", name)]),
            1.0,
        );
        self.journal_action(
            name,
            ActionKind::Escalate,
            true,
            None,
            format!(
                "{} restarts without a confirmed recovery",
                self.policy.restarts(name)
            ),
        );
        if let Some(id) = self.ids.get(name).cloned() {
            let events = self.detector.escalate(&id, mono_now_ns());
            self.on_events(events);
            if let Some(hook) = self
                .config
                .recovery
                .escalation_hook
                .as_ref()
                .map(|h| h.get_ref().clone())
            {
                let target = self.target(&id).unwrap_or(Target {
                    instance: id.name.clone(),
                    unit: id.unit_name().map(str::to_owned),
                    pid: 0,
                    start_time: None,
                });
                let timeout = self.config.recovery.hook_timeout;
                let tx = self.done_tx.clone();
                let instance = name.to_owned();
                info!(instance = name, "running the escalation hook");
                tokio::spawn(async move {
                    let result = recovery::run_hook(&hook, timeout, &target).await;
                    let _ = tx.send(RestartDone {
                        instance,
                        started: Instant::now(),
                        hook: true,
                        result,
                    });
                });
            }
        }
        self.save_policy();
    }

    fn save_policy(&self) {
        let snapshot = self.policy.snapshot(Instant::now(), SystemTime::now());
        if let Err(e) = write_atomic(&self.state_path, &snapshot) {
            error!(path = %self.state_path.display(), "cannot save recovery state: {e}");
        }
    }

    /// Publishes the status snapshot and refreshes the gauges.
    fn publish(&mut self) {
        let stats = self.probes.stats();
        let now = Instant::now();
        let wall = now_ms();
        let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();
        for found in self.discovery.all() {
            let view = instances
                .entry(found.instance.name.clone())
                .or_insert_with(|| InstanceView {
                    name: found.instance.name.clone(),
                    unit: found.instance.unit_name().map(str::to_owned),
                    state: "observed".into(),
                    ..InstanceView::default()
                });
            view.pids.push(found.info.pid);
            view.binary = Some(found.info.exe.display().to_string());
            if view.version.is_none() {
                view.version = found.version();
            }
        }
        for s in self.detector.statuses() {
            let name = s.instance.name.clone();
            let view = instances
                .entry(name.clone())
                .or_insert_with(|| InstanceView {
                    name: name.clone(),
                    unit: s.instance.unit_name().map(str::to_owned),
                    ..InstanceView::default()
                });
            view.state = serde_json::to_value(s.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if view.pids.is_empty() {
                view.pids = s.pids.clone();
            }
            view.session_id = s.session_id.clone();
            if s.client_version.is_some() {
                view.version = s.client_version.clone();
            }
            view.throttled = s.throttled.clone();
            view.tier_throttle = s.tier_throttle;
            view.window_401s = s.window.as_ref().map(|w| w.count_401);
            view.episode = s
                .window
                .as_ref()
                .filter(|_| matches!(s.state, State::Latched | State::Recovering))
                .map(|w| w.id.clone());
            if let Some(last) = self.last_seen.get(&s.instance) {
                view.last_status = Some(last.status);
                view.last_seen_ms = Some(last.ts_ms);
            }
        }
        for view in instances.values_mut() {
            view.pids.sort_unstable();
            view.pids.dedup();
            let id = self
                .ids
                .get(&view.name)
                .cloned()
                .unwrap_or_else(|| instance_id_of(&view.name, view.unit.as_deref()));
            view.supervisor = if self.config.daemon.dry_run {
                "dry-run".into()
            } else {
                self.supervisor(&id).kind().into()
            };
            view.restarts = self.policy.restarts(&view.name);
            view.backoff_until_ms = self
                .policy
                .not_before(&view.name)
                .filter(|t| *t > now)
                .map(|t| wall + u64::try_from(t.duration_since(now).as_millis()).unwrap_or(0));
            if view.binary.is_none() {
                view.binary = self.binaries.get(&id).cloned();
            }
            if matches!(self.policy.phase(&view.name), Some(Phase::Escalated))
                && view.state == "latched"
            {
                view.state = "escalated".into();
            }
        }
        let throttled: BTreeMap<String, f64> = instances
            .values()
            .flat_map(|v| {
                v.throttled
                    .iter()
                    .map(move |m| (labels(&[("agent", &v.name), ("model", m)]), 1.0))
            })
            .collect();
        self.metrics.set_all(
            "claude_watch_throttled",
            "1 for each model an instance gets 429 for (a throttle, not a latch).",
            throttled,
        );
        let mut states = BTreeMap::new();
        for view in instances.values() {
            for state in [
                "observed",
                "healthy",
                "suspect",
                "latched",
                "recovering",
                "escalated",
            ] {
                states.insert(
                    labels(&[("agent", &view.name), ("state", state)]),
                    f64::from(u8::from(view.state == state)),
                );
            }
        }
        self.metrics.set_all(
            "claude_watch_instance_state",
            "1 for the state each instance is in.",
            states,
        );
        #[expect(clippy::cast_precision_loss, reason = "counters as Prometheus floats")]
        {
            self.metrics.set(
                "claude_watch_instances",
                "Claude instances known.",
                String::new(),
                instances.len() as f64,
            );
            self.metrics.set_counter(
                "claude_watch_lost_events_total",
                "Kernel records lost (ring buffer full).",
                String::new(),
                stats.lost as f64,
            );
            self.metrics.set_counter(
                "claude_watch_kernel_records_total",
                "Records the kernel sent to user space.",
                String::new(),
                stats.sent as f64,
            );
            self.metrics.set(
                "claude_watch_probe_attachments",
                "Files (or processes) with probes attached.",
                String::new(),
                self.probes.attachments() as f64,
            );
        }
        let snapshot = Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            now_ms: wall,
            dry_run: self.config.daemon.dry_run,
            config: self.origin.clone(),
            capture: CaptureView {
                attachments: self.probes.attachments(),
                sent: stats.sent,
                lost: stats.lost,
                exchanges: self.exchanges,
            },
            instances: instances.into_values().collect(),
        };
        self.snapshots.send_replace(Arc::new(snapshot));
    }
}

/// Every metric family, exported from the start (counters and histograms before their first
/// event), so dashboards and alerts find them.
fn declare_metrics(m: &Metrics) {
    m.declare_counter("claude_watch_exchanges_total", EXCHANGES_HELP);
    m.declare_counter("claude_watch_episodes_total", EPISODES_HELP);
    m.declare_counter("claude_watch_restarts_total", RESTARTS_HELP);
    m.declare_counter("claude_watch_recoveries_total", RECOVERIES_HELP);
    m.declare_counter("claude_watch_escalations_total", ESCALATIONS_HELP);
    m.declare_histogram("claude_watch_detection_seconds", DETECTION_HELP);
    m.declare_histogram("claude_watch_recovery_seconds", RECOVERY_HELP);
}

const EXCHANGES_HELP: &str = "HTTP exchanges of claude instances, by status and model.";
const EPISODES_HELP: &str = "Latch episodes opened.";
const RESTARTS_HELP: &str = "Restarts requested from supervisors, by result.";
const RECOVERIES_HELP: &str = "Confirmed recoveries (a non-401 from the instance itself).";
const ESCALATIONS_HELP: &str = "Instances escalated after restarts did not heal them.";
const DETECTION_HELP: &str = "From the latch condition holding to the detector's decision.";
const RECOVERY_HELP: &str = "Restart to the new process's first accepted answer.";

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

fn restore_policy(path: &Path, config: crate::supervise::policy::PolicyConfig) -> Policy {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Policy::new(config);
    };
    match serde_json::from_str::<PolicySnapshot>(&text) {
        Ok(snapshot) => {
            let mut policy = Policy::restore(snapshot, Instant::now(), SystemTime::now());
            policy.set_config(config);
            info!(path = %path.display(), "recovery state restored (quiet windows and escalations carry over)");
            policy
        }
        Err(e) => {
            warn!(path = %path.display(), "ignoring unreadable recovery state: {e}");
            Policy::new(config)
        }
    }
}

/// Writes JSON to `path` atomically and durably: temp file, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&mut file, value).map_err(std::io::Error::other)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
