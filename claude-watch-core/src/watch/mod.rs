//! The watch core: every decision the daemon makes, in one sans-IO state machine.
//!
//! Fed [`Input`]s with the monotonic time (kernel clock, nanoseconds), [`Watch::handle`] answers
//! with [`Effect`]s for the daemon to execute; the daemon feeds their results back as inputs.
//! The core reads no clock, no file and no process, so every recovery behaviour is tested here
//! with a fake clock (`tests.rs`), in milliseconds and without root.
//!
//! ```text
//!  kernel record ─► front (pair, exec/exit) ─► Input::{Started, Exited, Exchange}
//!  tick / restart result / hook result / reload ────────► Input::{Tick, Restart…, Reload}
//!                                                             │
//!                        ┌───────────────── Watch ────────────▼──────────────────────────┐
//!                        │ Detector (evidence) ──events──► Policy (the lifecycle)         │
//!                        │   ◄── Recovery (boundary, given up); one MonoNs clock          │
//!                        └────────────────────────────┬──────────────────────────────────┘
//!                                                     ▼
//!   Effect::{Attach, Detach, Inspect, Restart, RunHook, Journal, SaveRecovery, Metric, Publish}
//! ```
//!
//! What lives where:
//! - the shell's `watch::front`: kernel records to inputs (pairing, exec and exit dispatch),
//!   shared with `trace`;
//! - [`crate::detect`]: the evidence: what counts as a latch, a recovery, a throttle;
//! - [`policy`]: the one recovery lifecycle: when to restart, how long to wait, when to give
//!   up, and the restart boundary the detector is given with every call;
//! - this module: how evidence reaches the lifecycle (the detector's events feed the policy;
//!   the restarts and escalations it decides are recorded in the open episode), the restart
//!   target, the journal and metrics each decision produces, resumed episodes;
//! - [`status`]: the status every instance shows (detector, policy and processes merged).
//!
//! Wall time appears only where a person or a file needs it: journal records and the persisted
//! recovery state, converted with the wall-minus-monotonic offset given at construction.

mod record;
pub mod replay;
pub mod status;

// The recovery machine, the coverage rule and the fleet's hold, where the Watch's paths
// have always named them.
pub use crate::{coverage, fleet, policy};

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::detect::{self, Episode, EpisodeEnd, Event, MonoNs, Reason, State};
use crate::http::Exchange;
use crate::instance::Found;
use crate::instance::table::{PidTable, Standing};
use crate::instance::{IdSource, InstanceId, Placement};
use crate::journal::{
    ActionKind, ActionRecord, IncidentEvent, IncidentRecord, Record as JournalRecord,
};
use crate::supervise::{
    Choice, EngineSocket, RestartFailed, RestartOutcome, Supervisor, SystemdBus, Target,
};
use crate::time::{WallClock, nanos};
use policy::{Action, Phase, Policy, PolicySnapshot, Table};
use record::Record;
use status::{LastSeen, Status};

/// The most instances the core keeps state for (live or remembered). A new instance beyond it
/// is refused (not attached, not watched; said in the log, counted in status and
/// `claude_watch_instances_refused_total`), after the longest-idle instance that can be
/// forgotten without loss has been; an instance with a live process, an open episode or a
/// recovery under way is never dropped to make room.
pub const MAX_INSTANCES: usize = 4096;

/// Instances one user other than root may have tracked at once (a quarter of
/// [`MAX_INSTANCES`]): one user's thousands of `claude` processes leave room for everyone else.
pub const MAX_INSTANCES_PER_USER: usize = MAX_INSTANCES / 4;

/// How long a named instance is remembered (status, its detector and recovery state) after its
/// last process exited, once nothing is under way for it: no open episode, no restart, its
/// backoff reset (an escalated one too: its hook ran, and a new process starts afresh).
/// `pid:` instances are forgotten at once (their name cannot come back).
pub const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);

/// The most pending successors (new processes a background session's restart reported, not
/// yet found) kept; the oldest pid is dropped first.
const SUCCESSORS_KEPT: usize = 64;

/// Something that happened, for the core to decide about.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "Started (a Found) is the common input, moved once into the core; boxing buys nothing"
)]
pub enum Input {
    /// A claude instance process was found (at start, on exec, after a restart).
    Started(Found),
    /// A process exited, or is no longer a claude process (it exec'd something else): the
    /// core looks it up in its pid table.
    Exited {
        /// The process.
        pid: u32,
    },
    /// Probes were attached for an instance process (`unobserved` is `None`), or could not
    /// be (a binary or library that could not be verified: why).
    Observed {
        /// The process.
        pid: u32,
        /// Why its traffic cannot be seen, if it cannot.
        unobserved: Option<String>,
    },
    /// An HTTP exchange was paired (of any process: the core's pid table says whose).
    Exchange {
        /// The exchange.
        exchange: Exchange,
    },
    /// The clock moved (periodically, and at [`Watch::next_deadline`]).
    Tick,
    /// Episodes the journal holds open from the previous run, after the first scan: they are
    /// resumed under the same ids and, where a supervisor acts, count as still latched.
    Resume {
        /// The open episodes.
        episodes: Vec<Episode>,
    },
    /// A restart handed out by [`Effect::Restart`] finished.
    RestartFinished {
        /// The instance.
        instance: InstanceId,
        /// The supervisor's answer (a time-out is an error too).
        result: Result<RestartOutcome, RestartFailed>,
    },
    /// The escalation hook of [`Effect::RunHook`] finished.
    HookFinished {
        /// The instance.
        instance: InstanceId,
        /// The hook's result.
        result: Result<RestartOutcome, RestartFailed>,
    },
    /// The configuration was reloaded (and systemd's reachability checked again).
    Reload {
        /// The new configuration.
        config: Box<Config>,
        /// Where systemd is reachable now.
        bus: SystemdBus,
        /// The container engine's socket now.
        engine: EngineSocket,
    },
    /// The container engine's socket appeared or went away (the engine started after the
    /// daemon, or stopped).
    Engine(EngineSocket),
    /// What the fleet's Alertmanager said about the incident alert (`[fleet]`).
    Fleet(fleet::FleetAnswer),
    /// The coverage audit of an instance process: the bytes (sent and received) of the TCP
    /// sockets it holds now, by the kernel's counters (see [`coverage`]).
    Traffic {
        /// The process.
        pid: u32,
        /// Bytes sent and received on its TCP sockets, in all.
        total: u64,
        /// Its TCP sockets.
        sockets: u32,
    },
}

/// Something for the daemon to do.
#[derive(Debug)]
pub enum Effect {
    /// Locate the TLS functions of this process's executable and attach to it.
    Attach(Found),
    /// An instance process exited: release what it held (its per-process probes, and a
    /// binary's once no other process runs it).
    Detach {
        /// The process.
        pid: u32,
    },
    /// Look at this process (a supervisor's new main PID) and report it if it is claude.
    Inspect {
        /// The process.
        pid: u32,
    },
    /// Restart an instance through its supervisor within `timeout`, then report
    /// [`Input::RestartFinished`].
    Restart {
        /// The instance.
        instance: InstanceId,
        /// Through what.
        supervisor: Supervisor,
        /// The process to restart.
        target: Target,
        /// Report a time-out error after this long.
        timeout: Duration,
    },
    /// Run the escalation hook (an argv template, no shell), then report
    /// [`Input::HookFinished`].
    RunHook {
        /// The instance.
        instance: InstanceId,
        /// The hook.
        argv: Vec<String>,
        /// What its placeholders stand for.
        target: Target,
        /// Its time limit.
        timeout: Duration,
        /// Why the notice (`{reason}`): one sentence for the person paged.
        reason: String,
        /// Every instance it is for (`{instances}`): one, or an incident's members.
        instances: Vec<String>,
    },
    /// Append to the journal (durably, in order).
    Journal(JournalRecord),
    /// Persist the recovery state (durably; the latest one wins).
    SaveRecovery(PolicySnapshot),
    /// Count or observe a metric.
    Metric(Metric),
    /// Publish the status of every instance.
    Publish(Status),
}

/// A metric event; the daemon owns names, help texts and the registry.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// An exchange of an instance.
    Exchange {
        /// Instance name.
        agent: String,
        /// HTTP status.
        status: u16,
        /// Model, `unknown` when not seen.
        model: String,
    },
    /// A latch episode opened.
    EpisodeOpened {
        /// Instance name.
        agent: String,
    },
    /// A restart finished.
    Restart {
        /// Instance name.
        agent: String,
        /// Whether the supervisor did it.
        ok: bool,
    },
    /// A confirmed recovery.
    Recovery {
        /// Instance name.
        agent: String,
    },
    /// An escalation.
    Escalation {
        /// Instance name.
        agent: String,
    },
    /// An upstream incident opened on the host.
    IncidentOpened,
    /// The host's upstream incident was escalated (one notice for all its members).
    IncidentEscalated,
    /// A restart did not heal: its new process got 401.
    RestartRejected {
        /// Instance name.
        agent: String,
    },
    /// From the latch condition holding to the decision, in seconds.
    DetectionSeconds(f64),
    /// From the end of a restart to the new process's first accepted answer, in seconds.
    RecoverySeconds(f64),
    /// A new instance was refused: [`MAX_INSTANCES`] were tracked, none could be forgotten.
    InstanceRefused,
    /// An instance was forgotten: its per-instance series go with it, so the metric families
    /// hold the instances the core keeps, not every `pid:` instance ever seen.
    Forgotten {
        /// Instance name.
        agent: String,
    },
}

/// The core: detector, recovery policy and what joins them, for every instance of the host.
#[derive(Debug)]
pub struct Watch {
    config: Config,
    bus: SystemdBus,
    engine: EngineSocket,
    /// What every instance's detection shares (thresholds, wall clock, host).
    rules: detect::Rules,
    policy: Policy,
    /// Turns the core's clock into wall time.
    wall_clock: WallClock,
    /// Every instance the core keeps state for (at most [`MAX_INSTANCES`]), one record each.
    records: BTreeMap<InstanceId, Record>,
    /// The records without a live process, longest idle first (each one's `idle_since`): who
    /// makes room at the cap, and who is forgotten, without sorting every record.
    idle: BTreeSet<(MonoNs, InstanceId)>,
    /// The pid table: the claude processes discovery found, by pid (each watched one in its
    /// instance's record's pids; those outside the scope or refused at the cap, ignored).
    procs: PidTable,
    /// The coverage audit: which processes move traffic their probes do not see.
    coverage: coverage::Coverage,
    /// Exchanges seen, of any process.
    exchanges: u64,
    /// Instance processes whose traffic cannot be seen, and why.
    unobserved: BTreeMap<u32, String>,
    /// New processes a background session's restart reported, and the instance they continue
    /// (a fresh session has a new short id, so discovery names it anew).
    successors: BTreeMap<u32, InstanceId>,
    /// New instances refused because [`MAX_INSTANCES`] were tracked.
    refused: u64,
    /// Instances forgotten since the last [`Watch::handle`] returned (their series go).
    forgotten: Vec<String>,
    /// When the last refusal was logged (one warning a minute at most).
    refusal_logged: Option<MonoNs>,
    /// Whether anything but the clock moved since the status was last published.
    changed: bool,
    /// When the status was last published.
    published_at: Option<MonoNs>,
    /// The fleet's hold, when `[fleet]` names an Alertmanager.
    fleet: Option<fleet::Fleet>,
    /// When a restart was last rejected (its new process got 401), wall ms.
    last_rejected_ms: Option<u64>,
}

/// A tick republishes an unchanged status this often (ages and counters stay fresh), instead
/// of every tick: with a thousand idle instances, rebuilding the status four times a second
/// cost the daemon some 7% of a core.
pub const REPUBLISH_AFTER: MonoNs = 5_000_000_000;

impl Watch {
    /// A core for `config`, systemd reachable as `bus`, the container engine at `engine`,
    /// recovery state `saved` by the previous run (if any), at monotonic time `now`.
    #[must_use]
    pub fn new(
        config: Config,
        bus: SystemdBus,
        engine: EngineSocket,
        saved: Option<PolicySnapshot>,
        now: MonoNs,
        wall_clock: WallClock,
    ) -> Self {
        let (mut policy, mut saved) = match saved {
            Some(snapshot) => Policy::restore(snapshot, now, wall_clock),
            None => (Policy::new(config.recovery.policy_config()), Table::new()),
        };
        // Instances given up on under `give_up` and released by a configuration without it:
        // their current traffic decides afresh.
        policy.set_config(&mut saved, config.recovery.policy_config());
        let rules = detect::Rules {
            config: config.detector.detector_config(),
            wall_clock: Some(wall_clock),
            host: config.fleet.host.clone(),
        };
        // Instances of the saved state have no process yet: forgotten in time unless one comes.
        let idle = saved.keys().map(|id| (now, id.clone())).collect();
        let records = saved
            .into_iter()
            .map(|(id, recovery)| {
                let mut record = Record::new(&id, 0);
                record.idle_since = Some(now);
                record.recovery = recovery;
                (id, record)
            })
            .collect();
        let fleet = config
            .fleet
            .enabled()
            .then(|| fleet::Fleet::new(config.fleet.fleet_config("localhost"), now));
        policy.set_fleet_hold(fleet.as_ref().and_then(fleet::Fleet::hold_until));
        Self {
            fleet,
            last_rejected_ms: None,
            rules,
            policy,
            config,
            bus,
            engine,
            wall_clock,
            records,
            idle,
            procs: PidTable::default(),
            coverage: coverage::Coverage::default(),
            exchanges: 0,
            unobserved: BTreeMap::new(),
            successors: BTreeMap::new(),
            refused: 0,
            forgotten: Vec::new(),
            refusal_logged: None,
            changed: true,
            published_at: None,
        }
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The container engine's socket, as last detected.
    #[must_use]
    pub fn engine(&self) -> &EngineSocket {
        &self.engine
    }

    /// Instances known (with a process, or remembered).
    #[must_use]
    pub fn instance_count(&self) -> usize {
        self.records.len()
    }

    /// When the clock alone will next change something (a latch reaching its span, a quiet
    /// window ending, a restart timing out): feed [`Input::Tick`] then.
    #[must_use]
    pub fn next_deadline(&self) -> Option<MonoNs> {
        [
            self.records
                .values()
                .filter_map(|r| r.detection.next_deadline(&self.rules))
                .min(),
            self.policy.next_deadline(&self.records),
            self.fleet.as_ref().and_then(fleet::Fleet::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Decides about `input` at monotonic time `now`.
    pub fn handle(&mut self, now: MonoNs, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        let tick = matches!(input, Input::Tick);
        let publish = matches!(
            input,
            Input::Tick
                | Input::Resume { .. }
                | Input::RestartFinished { .. }
                | Input::HookFinished { .. }
                | Input::Reload { .. }
                | Input::Engine(_)
                | Input::Fleet(_)
        );
        match input {
            Input::Started(found) => self.started(found, now, &mut out),
            Input::Observed { pid, unobserved } => match unobserved {
                Some(why) if self.procs.watched(pid).is_some() => {
                    self.unobserved.insert(pid, why);
                }
                _ => {
                    self.unobserved.remove(&pid);
                }
            },
            Input::Exited { pid } => {
                self.unobserved.remove(&pid);
                self.coverage.forget(pid);
                // Processes outside the scope or refused at the cap were never watched.
                if let Some(found) = self.remove_proc(pid) {
                    // Its own probes go, and a binary's once no other process runs it.
                    out.push(Effect::Detach { pid });
                    let id = found.instance;
                    self.detect(&id, now, &mut out, |d, rules, rec| {
                        d.process_exited(rules, pid, now, true, rec)
                    });
                    self.went_idle(&id, now);
                }
            }
            Input::Exchange { exchange } => {
                let watched = self.procs.watched(exchange.pid).map(|f| f.instance.clone());
                // Only instance processes are audited.
                if watched.is_some()
                    && self.coverage.exchange(exchange.pid, now) == Some(coverage::Change::Seen)
                {
                    info!(
                        pid = exchange.pid,
                        "coverage: an exchange of a blind process was captured; no longer blind"
                    );
                }
                self.exchange(&exchange, watched, now, &mut out);
            }
            Input::Tick => {
                let mut events = Vec::new();
                for record in self.records.values_mut() {
                    record.detection.tick(&self.rules, now, &mut events);
                }
                self.on_events(events, now, &mut out);
                self.sweep(now);
                if let Some(f) = self.fleet.as_mut() {
                    let events = f.tick(now);
                    self.on_fleet(events, now, &mut out);
                }
            }
            Input::Traffic {
                pid,
                total,
                sockets,
            } => {
                // A process that exited since the audit began is not counted again.
                if let Some(id) = self.procs.watched(pid).map(|f| f.instance.clone())
                    && let Some(coverage::Change::Blind(b)) =
                        self.coverage.traffic(pid, total, sockets, now)
                {
                    let why = b.reason(now);
                    warn!(pid, instance = %id, "blind: {why}");
                    self.journal_action(
                        &id,
                        ActionKind::Blind,
                        Err(format!("pid {pid}: {why}")),
                        None,
                        now,
                        &mut out,
                    );
                }
            }
            Input::Fleet(answer) => {
                if let Some(f) = self.fleet.as_mut() {
                    let events = f.answer(now, answer);
                    self.on_fleet(events, now, &mut out);
                }
            }
            Input::Resume { episodes } => self.resume(episodes, now, &mut out),
            Input::RestartFinished { instance, result } => {
                self.restart_finished(&instance, result, now, &mut out);
            }
            Input::HookFinished { instance, result } => {
                let detail = result.map(|o| o.summary).map_err(|e| e.detail);
                match &detail {
                    Ok(detail) => info!(instance = %instance, detail, "escalation hook ran"),
                    Err(detail) => warn!(instance = %instance, detail, "escalation hook failed"),
                }
                self.journal_action(&instance, ActionKind::Hook, detail, None, now, &mut out);
            }
            Input::Reload {
                config,
                bus,
                engine,
            } => {
                self.rules.config = config.detector.detector_config();
                self.rules.host.clone_from(&config.fleet.host);
                self.policy
                    .set_config(&mut self.records, config.recovery.policy_config());
                match (self.fleet.as_mut(), config.fleet.enabled()) {
                    (Some(f), true) => {
                        let host = f.config().host.clone();
                        f.set_config(config.fleet.fleet_config(&host));
                    }
                    (None, true) => {
                        self.fleet = Some(fleet::Fleet::new(
                            config.fleet.fleet_config("localhost"),
                            now,
                        ));
                    }
                    (_, false) => self.fleet = None,
                }
                self.policy
                    .set_fleet_hold(self.fleet.as_ref().and_then(fleet::Fleet::hold_until));
                self.config = *config;
                self.bus = bus;
                self.engine = engine;
                self.adopt_latched(now, &mut out);
            }
            Input::Engine(engine) => {
                self.engine = engine;
                self.adopt_latched(now, &mut out);
            }
        }
        self.drive(now, &mut out);
        out.extend(
            self.forgotten
                .drain(..)
                .map(|agent| Effect::Metric(Metric::Forgotten { agent })),
        );
        self.changed |= !tick || !out.is_empty();
        let stale = self
            .published_at
            .is_none_or(|at| now.saturating_sub(at) >= REPUBLISH_AFTER);
        if publish && (self.changed || stale) {
            out.push(Effect::Publish(self.status(now)));
            self.changed = false;
            self.published_at = Some(now);
        }
        out
    }

    /// The instance processes the coverage audit looks at: those with probes attached.
    #[must_use]
    pub fn audited(&self) -> Vec<u32> {
        self.procs
            .watched_pids()
            .filter(|pid| !self.unobserved.contains_key(pid))
            .collect()
    }

    /// The pid table: what discovery reads to classify processes (see
    /// [`crate::instance::table`]).
    #[must_use]
    pub fn procs(&self) -> &PidTable {
        &self.procs
    }

    /// The status of every instance now (also published on ticks and after restarts).
    #[must_use]
    pub fn status(&self, now: MonoNs) -> Status {
        status::merge(self, now)
    }

    /// The recovery state to persist (also sent as [`Effect::SaveRecovery`] after each change;
    /// the daemon writes it once more when it stops).
    #[must_use]
    pub fn recovery_state(&self) -> PolicySnapshot {
        self.policy.snapshot(&self.records, self.wall_clock)
    }

    fn wall_ms(&self, now: MonoNs) -> u64 {
        self.wall_clock.wall_ms(now)
    }

    /// The supervisor of `instance` and why (`Observe` in a dry run acts the same: never).
    fn choice(&self, instance: &InstanceId) -> Choice {
        // An instance known only from its traffic or the journal: its unit, if its name is one.
        let from_name = || instance.placement();
        let placement = self
            .records
            .get(instance)
            .and_then(|r| r.placement.clone())
            .unwrap_or_else(from_name);
        let mut choice = Supervisor::resolve(
            self.config.supervisor_for(&instance.name),
            &placement,
            &self.bus,
            &self.engine,
            self.config.recovery.restart_timeout,
        );
        if let Supervisor::ClaudeBg(restarter) = &mut choice.supervisor
            && self.config.recovery.fresh_session
        {
            restarter.fresh_session = true;
            choice
                .reason
                .push_str(", a fresh session each time (fresh_session = true)");
        }
        choice
    }

    /// Whether latches of `instance` are acted on.
    fn acts(&self, instance: &InstanceId) -> bool {
        !self.config.daemon.dry_run && self.choice(instance).supervisor.acts()
    }

    fn started(&mut self, mut found: Found, now: MonoNs, out: &mut Vec<Effect>) {
        if let Some(old) = self.successors.remove(&found.info.pid)
            && matches!(found.placement, Placement::ClaudeBg(_))
            && old != found.instance
        {
            info!(pid = found.info.pid, instance = %old, named = %found.instance, "a fresh background session continues the instance it replaced");
            found.instance = old;
        }
        let id = found.instance.clone();
        let pid = found.info.pid;
        // A process that moves to another instance (a spare of the background machinery that
        // a session claimed) leaves the one it was part of.
        if let Some(prev) = self
            .procs
            .watched(pid)
            .map(|f| f.instance.clone())
            .filter(|prev| *prev != id)
        {
            self.remove_proc(pid);
            self.detect(&prev, now, out, |d, rules, rec| {
                d.process_exited(rules, pid, now, false, rec)
            });
            self.went_idle(&prev, now);
        }
        if let Some(scope) = &self.config.daemon.scope
            && !in_scope(&found.info.cgroup, scope)
        {
            tracing::debug!(pid, instance = %id, scope, "outside this daemon's scope: not watched");
            self.procs.insert(found, Standing::Outside);
            return;
        }
        if !self.admit(&id, found.info.uid, now, out) {
            self.procs.insert(found, Standing::Refused);
            return;
        }
        let record = self.records.get_mut(&id).expect("admitted");
        if let Some(since) = record.idle_since.take() {
            self.idle.remove(&(since, id.clone()));
        }
        record.binary = Some(found.info.exe.display().to_string());
        record.placement = Some(found.placement.clone());
        record.pids.insert(pid);
        let events = record.detection.process_started(pid, now);
        self.procs.insert(found.clone(), Standing::Watched);
        out.push(Effect::Attach(found));
        self.on_events(events, now, out);
    }

    fn exchange(
        &mut self,
        exchange: &Exchange,
        instance: Option<InstanceId>,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        self.exchanges += 1;
        // Not a watched process (a tool an instance spawned, say, or one refused at the cap).
        let Some(id) = instance else { return };
        out.push(Effect::Metric(Metric::Exchange {
            agent: id.name.clone(),
            status: exchange.status,
            model: model_label(exchange.model.as_deref()),
        }));
        let api_call = crate::detect::is_api_call(exchange);
        let record = Record::of(&mut self.records, &id);
        if api_call {
            record.last_seen = Some(LastSeen {
                status: exchange.status,
                ts_ms: exchange.ts_ms,
            });
        }
        let recheck = api_call && std::mem::take(&mut record.recheck);
        self.detect(&id, now, out, |d, rules, rec| {
            d.observe(rules, exchange.pid, exchange, now, rec)
        });
        let latched = self.records[&id].detection.state() == State::Latched;
        if recheck && exchange.status == 401 && latched && self.acts(&id) {
            info!(instance = %id, "the resumed episode's instance still gets 401: latched");
            self.latch(&id, now);
            self.save(out);
        }
    }

    /// Instances the detector holds latched while their supervisor could not act (observe-only,
    /// no engine socket, a dry run) are handed to the policy once it can (the engine's socket
    /// appeared, the configuration was reloaded), instead of waiting for a new latch.
    fn adopt_latched(&mut self, now: MonoNs, out: &mut Vec<Effect>) {
        let latched: Vec<InstanceId> = self
            .records
            .iter()
            .filter(|(_, r)| r.detection.state() == State::Latched)
            .filter(|(_, r)| matches!(r.recovery.phase(), None | Some(Phase::Idle)))
            // Not one restarted by something else, awaiting its new process's answer.
            .filter(|(_, r)| r.recovery.detector().boundary.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let mut adopted = false;
        for id in latched {
            if self.acts(&id) {
                info!(instance = %id, supervisor = self.choice(&id).supervisor.kind(), "a latched instance can be restarted now");
                self.latch(&id, now);
                adopted = true;
            }
        }
        if adopted {
            self.save(out);
        }
    }

    fn resume(&mut self, episodes: Vec<Episode>, now: MonoNs, out: &mut Vec<Effect>) {
        let wall_now = self.wall_ms(now);
        let stale_after =
            u64::try_from(self.config.recovery.healthy_reset.as_millis()).unwrap_or(u64::MAX);
        for episode in episodes.into_iter().filter(|e| !e.is_closed()) {
            let id = InstanceId::from_saved(&episode.instance, episode.unit.as_deref());
            let live = self.live(&id);
            let age_ms = wall_now.saturating_sub(episode.last_401_ms);
            let last_pid = episode.pids.last().copied().unwrap_or(0);
            info!(instance = %id, episode = %episode.id, live, age_ms, "resuming an episode left open by the previous run");
            // Instances the previous run gave up on (`give_up`) stay given up on: their
            // non-401 answer is awaited, their episode is not resumed.
            let record = self.record(&id);
            let gave_up = record.recovery.detector().gave_up;
            record.last_episode = Some(episode.id.clone());
            if !gave_up {
                record.detection.restore(episode);
            }
            if !live {
                // Its process is gone (and a `pid:` name can never come back): the episode
                // ends as the process's would have, and nothing is restarted.
                info!(instance = %id, "the latched process is gone: episode ends process_exited");
                self.policy.hold(&mut self.records, &id);
                self.detect(&id, now, out, |d, rules, rec| {
                    d.process_exited(rules, last_pid, now, false, rec)
                });
                self.went_idle(&id, now);
                continue;
            }
            if !self.acts(&id) {
                continue;
            }
            if age_ms > stale_after {
                // Too old to act on: the instance's current traffic decides (a 401 latches it
                // again, a non-401 closes the episode).
                info!(instance = %id, age_ms, "old episode: waiting for the instance's current traffic before any restart");
                self.policy.hold(&mut self.records, &id);
                self.record(&id).recheck = true;
                continue;
            }
            // Still latched as far as recovery knows: a restart that was under way when the
            // previous run stopped counts as not healed (a quiet window first), and a quiet
            // window restored from the state file keeps its deadline.
            self.latch(&id, now);
            if let Some(until) = self.record(&id).recovery.not_before().filter(|t| *t > now) {
                self.journal_backoff(&id, until, false, now, out);
            }
        }
        self.save(out);
    }

    /// Tells the policy that `id` is latched, with its owner (restarts are one at a time per
    /// owner, and an incident holds only its owner's instances).
    fn latch(&mut self, id: &InstanceId, now: MonoNs) {
        let owner = self
            .members(id)
            .max_by_key(|f| f.info.start_time)
            .map_or(0, |f| f.info.uid);
        self.policy.set_owner(&mut self.records, id, owner);
        self.policy.latched(&mut self.records, id, now);
    }

    /// Whether `id` has a live process.
    fn live(&self, id: &InstanceId) -> bool {
        self.records.get(id).is_some_and(Record::live)
    }

    /// The live processes of `id`.
    fn members<'a>(&'a self, id: &InstanceId) -> impl Iterator<Item = &'a Found> + 'a {
        let pids = self.records.get(id).map(|r| &r.pids).into_iter().flatten();
        pids.filter_map(|pid| self.procs.watched(*pid))
    }

    /// `id`'s record, made (as root's) if it has none.
    fn record(&mut self, id: &InstanceId) -> &mut Record {
        Record::of(&mut self.records, id)
    }

    /// Runs `f` on `id`'s detection (its record made if need be), under what recovery says of
    /// it, and acts on its events.
    fn detect(
        &mut self,
        id: &InstanceId,
        now: MonoNs,
        out: &mut Vec<Effect>,
        f: impl FnOnce(&mut detect::Instance, &mut detect::Rules, detect::Recovery) -> Vec<Event>,
    ) {
        let record = Record::of(&mut self.records, id);
        let rec = record.recovery.detector();
        let events = f(&mut record.detection, &mut self.rules, rec);
        self.on_events(events, now, out);
    }

    /// Takes process `pid` out of the pid table, and out of its instance's record when it
    /// was watched (then returned).
    fn remove_proc(&mut self, pid: u32) -> Option<Found> {
        let (found, Standing::Watched) = self.procs.remove(pid)? else {
            return None;
        };
        if let Some(r) = self.records.get_mut(&found.instance) {
            r.pids.remove(&pid);
        }
        Some(found)
    }

    /// A process of `id` is gone: a `pid:` instance is forgotten at once (its name can never
    /// come back), a named one is remembered as idle when it was its last process, so neither
    /// status nor memory keeps one entry per instance that ever ran.
    fn went_idle(&mut self, id: &InstanceId, now: MonoNs) {
        if self.live(id) {
            return;
        }
        if id.source == IdSource::Pid {
            self.forget(id);
        } else {
            self.idle(id, now);
        }
    }

    /// Whether forgetting `id` loses nothing under way: no live process, no open episode, no
    /// restart or quiet window, no escalation waiting for an answer.
    fn at_rest(&self, id: &InstanceId) -> bool {
        !self.live(id)
            && self
                .records
                .get(id)
                .is_none_or(|r| r.detection.at_rest() && self.policy.at_rest(id, &r.recovery))
            && !self.successors.values().any(|s| s == id)
    }

    /// Drops everything known about `id`: its record, its recovery state, its successors.
    fn forget(&mut self, id: &InstanceId) {
        self.forgotten.push(id.name.clone());
        if let Some(since) = self.records.remove(id).and_then(|r| r.idle_since) {
            self.idle.remove(&(since, id.clone()));
        }
        self.policy.forget(&mut self.records, id);
        self.successors.retain(|_, s| s != id);
    }

    /// `id` has no live process since `now` (unless known idle since earlier).
    fn idle(&mut self, id: &InstanceId, now: MonoNs) {
        if let Some(r) = self.records.get_mut(id)
            && r.idle_since.is_none()
        {
            r.idle_since = Some(now);
            self.idle.insert((now, id.clone()));
        }
    }

    /// Forgets the named instances idle for [`FORGET_AFTER`] that are at rest.
    fn sweep(&mut self, now: MonoNs) {
        let after = nanos(FORGET_AFTER);
        let due: Vec<InstanceId> = self
            .idle
            .iter()
            .take_while(|(since, _)| now.saturating_sub(*since) >= after)
            .map(|(_, id)| id)
            .filter(|id| self.at_rest(id))
            .cloned()
            .collect();
        for id in due {
            tracing::debug!(instance = %id, "forgetting an instance idle for an hour");
            self.forget(&id);
        }
    }

    /// Whether a process of `id`, owned by `uid`, may be watched: `id` is tracked already, or
    /// there is room for it in the table and in its user's share (made by forgetting the
    /// longest-idle instance at rest, the user's own when the share is full, if need be).
    /// Otherwise the process is refused: logged (once a minute), counted, and not attached.
    fn admit(&mut self, id: &InstanceId, uid: u32, now: MonoNs, out: &mut Vec<Effect>) -> bool {
        if self.records.contains_key(id) {
            return true;
        }
        let share_full = uid != 0
            && self.records.values().filter(|r| r.owner == uid).count() >= MAX_INSTANCES_PER_USER;
        if share_full || self.records.len() >= MAX_INSTANCES {
            let victim = self
                .idle
                .iter()
                .map(|(_, id)| id)
                .filter(|id| !share_full || self.records[*id].owner == uid)
                .find(|id| self.at_rest(id))
                .cloned();
            match victim {
                Some(victim) => {
                    tracing::debug!(instance = %victim, "forgetting an idle instance to make room");
                    self.forget(&victim);
                }
                None => {
                    self.refused += 1;
                    out.push(Effect::Metric(Metric::InstanceRefused));
                    if self
                        .refusal_logged
                        .is_none_or(|t| now.saturating_sub(t) >= 60_000_000_000)
                    {
                        self.refusal_logged = Some(now);
                        if share_full {
                            warn!(instance = %id, uid, refused = self.refused, share = MAX_INSTANCES_PER_USER, "too many instances of one user: not watching a new one of theirs (each is live or has recovery under way)");
                        } else {
                            warn!(instance = %id, tracked = self.records.len(), refused = self.refused, max = MAX_INSTANCES, "too many instances: not watching a new one (each tracked one is live or has recovery under way)");
                        }
                    }
                    return false;
                }
            }
        }
        self.records.insert(id.clone(), Record::new(id, uid));
        true
    }

    /// Translates the detector's events into policy calls, journal records and metrics.
    fn on_events(&mut self, events: Vec<Event>, now: MonoNs, out: &mut Vec<Effect>) {
        for event in events {
            match event {
                Event::StateChanged {
                    instance,
                    from: State::Suspect,
                    to: State::Latched,
                    at_ns,
                    ..
                } => {
                    if let Some(held) = self
                        .records
                        .get(&instance)
                        .and_then(|r| r.detection.latch_held_since(&self.rules))
                    {
                        #[expect(
                            clippy::cast_precision_loss,
                            reason = "nanoseconds to seconds for a histogram"
                        )]
                        let seconds = at_ns.max(now).saturating_sub(held) as f64 / 1e9;
                        out.push(Effect::Metric(Metric::DetectionSeconds(seconds)));
                    }
                    self.on_latch(&instance, now, out);
                }
                // The episode ended (an accepted answer, or its process exited): so does
                // recovery.
                Event::StateChanged {
                    instance,
                    from: State::Latched,
                    to: State::Healthy,
                    reason,
                    ..
                } => self.recovered(&instance, &reason, now, out),
                Event::StateChanged { .. } => {}
                Event::EpisodeOpened(episode) => {
                    let id = InstanceId::from_saved(&episode.instance, episode.unit.as_deref());
                    if let Some(r) = self.records.get_mut(&id) {
                        r.last_episode = Some(episode.id.clone());
                    }
                    warn!(instance = %episode.instance, episode = %episode.id, count_401 = episode.count_401, request_ids = ?episode.request_ids(), "latched: 401s on the instance's own session");
                    out.push(Effect::Metric(Metric::EpisodeOpened {
                        agent: episode.instance.clone(),
                    }));
                    self.journal_episode(episode, now, out);
                }
                Event::EpisodeUpdated(episode) => self.journal_episode(episode, now, out),
                Event::Rejected { instance, .. } => self.on_latch(&instance, now, out),
                Event::Accepted {
                    instance,
                    pid,
                    status,
                } => self.recovered(&instance, &Reason::Accepted { pid, status }, now, out),
                Event::RestartedElsewhere {
                    instance,
                    old_pid,
                    pid,
                    ..
                } => {
                    // Not ours: counted toward the escalation as ours are, and shown.
                    info!(instance = %instance, old_pid, pid, "restarted by something else while latched: the episode goes on, the new process's own answer decides");
                    self.policy
                        .restarted_elsewhere(&mut self.records, &instance, now);
                    self.record(&instance).recoveries.restarts += 1;
                    self.journal_action(
                        &instance,
                        ActionKind::Restart,
                        Ok(format!("restarted by something else, not claude-watch: pid {old_pid} exited while latched, pid {pid} of the same instance started")),
                        None,
                        now,
                        out,
                    );
                    self.save(out);
                }
                Event::EpisodeClosed(episode) => self.episode_closed(episode, now, out),
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
                    warn!(instance = %instance, throttled = %throttled.join(","), answering, "tier throttle: 429 for some models while another answers");
                }
                Event::ThrottleCleared {
                    instance, model, ..
                } => info!(instance = %instance, model, "throttle cleared"),
            }
        }
    }

    /// `episode` closed: logged and journalled, and a recovery remembered for status.
    fn episode_closed(&mut self, episode: Episode, now: MonoNs, out: &mut Vec<Effect>) {
        if matches!(
            episode.end,
            EpisodeEnd::SelfRecovered | EpisodeEnd::RecoveredAfterRestart
        ) {
            let at = self.wall_ms(now);
            if let Some(r) = self
                .records
                .iter_mut()
                .find(|(i, _)| i.name == episode.instance)
                .map(|(_, r)| r)
            {
                r.recoveries.last = Some((at, episode.end));
            }
        }
        info!(instance = %episode.instance, episode = %episode.id, end = %episode.end, duration_ms = episode.duration_ms(), restarts = episode.restarts, "episode closed");
        self.journal_episode(episode, now, out);
    }

    /// `id`'s open episode records its escalation, or closes as escalated when restarts
    /// `gave_up`: journalled. Only the episode changes, so no policy is asked.
    fn episode_escalated(
        &mut self,
        id: &InstanceId,
        gave_up: bool,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        let record = Record::of(&mut self.records, id);
        match record.detection.escalated(&self.rules, now, gave_up) {
            Some(episode) if gave_up => self.episode_closed(episode, now, out),
            Some(episode) => self.journal_episode(episode, now, out),
            None => {}
        }
    }

    /// `instance` is latched (newly, or again: its restarted process got 401): recovery is
    /// told, where a supervisor acts.
    fn on_latch(&mut self, instance: &InstanceId, now: MonoNs, out: &mut Vec<Effect>) {
        if self.acts(instance) {
            self.latch(instance, now);
            self.journal_if_fleet_held(instance, now, out);
            self.save(out);
        } else {
            let supervisor = if self.config.daemon.dry_run {
                "dry-run"
            } else {
                self.choice(instance).supervisor.kind()
            };
            warn!(instance = %instance, supervisor, "latched; not restarting (observe-only)");
            self.record(instance).recovery.boundary_passed();
        }
    }

    /// Journals that the fleet holds `instance`'s restarts, if it does.
    fn journal_if_fleet_held(&self, instance: &InstanceId, now: MonoNs, out: &mut Vec<Effect>) {
        if let Some(fleet::FleetState::Held { alert, since_ms }) =
            self.fleet.as_ref().map(fleet::Fleet::state)
        {
            self.journal_action(
                instance,
                ActionKind::Held,
                Ok(format!(
                    "held by the fleet: {alert} fires since {}; no restart on this host while it does",
                    crate::time::rfc3339_ms(*since_ms)
                )),
                None,
                now,
                out,
            );
        }
    }

    /// `id`'s episode ended, or its give-up, `why`: recovery ends (a confirmed recovery when
    /// its restarted process answered), counted when an accepted answer ended it.
    fn recovered(&mut self, id: &InstanceId, why: &Reason, now: MonoNs, out: &mut Vec<Effect>) {
        if let Some(ttr) = self.policy.recovered(&mut self.records, id, now) {
            out.push(Effect::Metric(Metric::RecoverySeconds(ttr.as_secs_f64())));
        }
        if matches!(why, Reason::Accepted { .. }) {
            out.push(Effect::Metric(Metric::Recovery {
                agent: id.name.clone(),
            }));
        }
        self.save(out);
    }

    /// Carries out what the policy decided: restarts due now, quiet windows, notices and
    /// incidents (journalled, logged, counted). A restart that cannot start feeds the policy
    /// again, so this polls until the policy has nothing more to say.
    fn drive(&mut self, now: MonoNs, out: &mut Vec<Effect>) {
        // Each round either hands out the one restart slot or holds what could not start
        // behind a quiet window: a few rounds at most.
        for _ in 0..16 {
            let actions = self.policy.poll(&mut self.records, now);
            if actions.is_empty() {
                return;
            }
            for action in actions {
                match action {
                    Action::Restart(id) => self.start_restart(&id, now, out),
                    Action::Backoff {
                        instance,
                        until,
                        incident,
                    } => self.journal_backoff(&instance, until, incident, now, out),
                    Action::Escalate {
                        instance,
                        restarts,
                        gave_up,
                    } => self.escalate(&instance, restarts, gave_up, now, out),
                    Action::IncidentOpened {
                        opened,
                        members,
                        canary,
                    } => self.incident_opened(opened, &members, canary.as_ref(), now, out),
                    Action::Joined { opened, instance } => {
                        self.incident_joined(opened, &instance, now, out);
                    }
                    Action::IncidentEscalated {
                        opened,
                        members,
                        canary,
                        tries,
                        gave_up,
                    } => {
                        self.incident_escalated(opened, &members, &canary, tries, gave_up, now, out)
                    }
                    Action::Rejected { instance } => {
                        self.last_rejected_ms = Some(self.wall_ms(now));
                        out.push(Effect::Metric(Metric::RestartRejected {
                            agent: instance.name.clone(),
                        }));
                    }
                    Action::IncidentClosed {
                        opened,
                        healed_by,
                        released,
                        tries,
                    } => {
                        self.incident_closed(opened, healed_by.as_ref(), &released, tries, now, out)
                    }
                }
            }
            self.save(out);
        }
    }

    /// The process to restart for `id`: the newest live process whose own requests got the
    /// open window's 401s. Never another member of the instance: a process that did not latch
    /// (possibly another user's, borrowing the name) is not restarted for someone else's 401s.
    fn target(&self, id: &InstanceId) -> Option<Target> {
        let window_pids = self
            .records
            .get(id)
            .and_then(|r| r.detection.window())
            .map(|w| w.pids.as_slice())
            .unwrap_or_default();
        let found = window_pids
            .iter()
            .rev()
            .find_map(|p| self.procs.watched(*p).filter(|f| &f.instance == id))?;
        Some(Target {
            instance: id.name.clone(),
            unit: id.unit_name().map(str::to_owned),
            pid: found.info.pid,
            start_time: Some(found.info.start_time),
            uid: Some(found.info.uid),
            placement: found.placement.clone(),
        })
    }

    fn start_restart(&mut self, id: &InstanceId, now: MonoNs, out: &mut Vec<Effect>) {
        let supervisor = self.choice(id).supervisor;
        let Some(target) = self.target(id) else {
            let detail = format!("no live process of instance {id} got the 401s");
            warn!(instance = %id, "cannot restart: {detail}");
            let failed = Err::<(), _>(detail.as_str());
            self.policy
                .restart_finished(&mut self.records, id, now, &failed);
            self.journal_action(
                id,
                ActionKind::Restart,
                Err(format!("no live process to restart: {detail}")),
                None,
                now,
                out,
            );
            return;
        };
        info!(instance = %id, pid = target.pid, unit = target.unit.as_deref().unwrap_or("-"), supervisor = supervisor.kind(), "restarting latched instance");
        if let Some(episode) = self.record(id).detection.restart_started(now) {
            self.journal_episode(episode, now, out);
        }
        self.save(out);
        out.push(Effect::Restart {
            instance: id.clone(),
            supervisor,
            target,
            timeout: self.config.recovery.restart_timeout,
        });
    }

    fn restart_finished(
        &mut self,
        id: &InstanceId,
        result: Result<RestartOutcome, RestartFailed>,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        self.policy
            .restart_finished(&mut self.records, id, now, &result);
        match &result {
            Ok(outcome) => {
                let record = self.record(id);
                record.restart_error = None;
                record.recoveries.restarts += 1;
                let bg = matches!(record.placement, Some(Placement::ClaudeBg(_)));
                info!(instance = %id, new_pid = %outcome.new_pid.map_or_else(|| "-".to_owned(), |p| p.to_string()), "{}", outcome.summary);
                out.push(Effect::Metric(Metric::Restart {
                    agent: id.name.clone(),
                    ok: true,
                }));
                self.journal_action(
                    id,
                    ActionKind::Restart,
                    Ok(outcome.summary.clone()),
                    None,
                    now,
                    out,
                );
                if let Some(pid) = outcome.new_pid {
                    if bg {
                        self.adopt(id, pid, now, out);
                    }
                    out.push(Effect::Inspect { pid });
                }
            }
            Err(e) => {
                let detail = e.detail.clone();
                warn!(instance = %id, detail, "restart failed");
                self.record(id).restart_error = Some(detail.clone());
                out.push(Effect::Metric(Metric::Restart {
                    agent: id.name.clone(),
                    ok: false,
                }));
                self.journal_action(id, ActionKind::Restart, Err(detail), None, now, out);
                // Latched again, its old process counting: held by the fleet, if it is.
                self.journal_if_fleet_held(id, now, out);
            }
        }
        self.save(out);
    }

    /// The new process `pid` of background session `id` (a fresh session, named anew by
    /// discovery) continues `id`: now if it is known already, else when it is found.
    fn adopt(&mut self, id: &InstanceId, pid: u32, now: MonoNs, out: &mut Vec<Effect>) {
        let Some(found) = self.procs.watched(pid).cloned() else {
            self.remember_successor(pid, id);
            return;
        };
        if &found.instance == id || !matches!(found.placement, Placement::ClaudeBg(_)) {
            return;
        }
        let named = found.instance.clone();
        self.remove_proc(pid);
        if let Some(r) = self.records.get_mut(&named) {
            r.detection.forget_process(pid);
            if !r.live() {
                r.placement = None;
                r.binary = None;
                r.last_seen = None;
                if self.at_rest(&named) {
                    self.forget(&named);
                } else {
                    self.idle(&named, now);
                }
            }
        }
        self.remember_successor(pid, id);
        self.started(found, now, out);
    }

    /// Remembers that new process `pid` continues `id` (at most [`SUCCESSORS_KEPT`]).
    fn remember_successor(&mut self, pid: u32, id: &InstanceId) {
        if self.successors.len() >= SUCCESSORS_KEPT && !self.successors.contains_key(&pid) {
            self.successors.pop_first();
        }
        self.successors.insert(pid, id.clone());
    }

    /// `id` is escalated: journalled, counted, its episode marked (or, with `give_up`, closed
    /// as escalated), and the hook run once.
    fn escalate(
        &mut self,
        id: &InstanceId,
        restarts: u32,
        gave_up: bool,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        let reason = if gave_up {
            format!(
                "{restarts} restarts of {id} did not heal it; restarts stopped (give_up) until it answers non-401"
            )
        } else {
            let every = crate::time::human(*self.config.recovery.backoff_max.get_ref());
            format!(
                "{restarts} restarts of {id} did not heal it; restarts go on, at least every {every}, until its own new session answers"
            )
        };
        warn!(instance = %id, restarts, gave_up, "escalated: {reason}");
        out.push(Effect::Metric(Metric::Escalation {
            agent: id.name.clone(),
        }));
        self.journal_action(id, ActionKind::Escalate, Ok(reason.clone()), None, now, out);
        // The process that latched, taken before a give-up closes its episode.
        let latched = self.target(id);
        self.episode_escalated(id, gave_up, now, out);
        self.run_hook(id, latched, reason, vec![id.name.clone()], out);
    }

    /// Runs the escalation hook (when one is configured) for `id`, its `{instances}` being
    /// `instances`.
    fn run_hook(
        &self,
        id: &InstanceId,
        latched: Option<Target>,
        reason: String,
        instances: Vec<String>,
        out: &mut Vec<Effect>,
    ) {
        let Some(hook) = &self.config.recovery.escalation_hook else {
            return;
        };
        let target = latched.unwrap_or(Target {
            instance: id.name.clone(),
            unit: id.unit_name().map(str::to_owned),
            pid: 0,
            start_time: None,
            uid: None,
            placement: self
                .records
                .get(id)
                .and_then(|r| r.placement.clone())
                .unwrap_or_default(),
        });
        info!(instance = %id, "running the escalation hook");
        out.push(Effect::RunHook {
            instance: id.clone(),
            argv: hook.get_ref().clone(),
            target,
            timeout: self.config.recovery.hook_timeout,
            reason,
            instances,
        });
    }

    /// The fleet's hold changed: journalled in each latched instance's episode, logged, and
    /// the policy told.
    fn on_fleet(&mut self, events: Vec<fleet::FleetEvent>, now: MonoNs, out: &mut Vec<Effect>) {
        let latched: Vec<InstanceId> = self
            .records
            .iter()
            .filter(|(_, r)| r.recovery.unhealed())
            .map(|(id, _)| id.clone())
            .collect();
        for event in events {
            match event {
                fleet::FleetEvent::Held { alert, since_ms } => {
                    warn!(alert, since = %crate::time::rfc3339_ms(since_ms), latched = latched.len(), "the fleet's upstream incident alert fires: no restart on this host while it does");
                    // The fleet's state is this hold now: each latched instance's record says so.
                    for id in &latched {
                        self.journal_if_fleet_held(id, now, out);
                    }
                }
                fleet::FleetEvent::Resuming { until } => {
                    let at = crate::time::rfc3339_ms(self.wall_ms(until));
                    info!(resume_at = %at, "the fleet's incident alert resolved: restarts resume at this host's turn in the stagger");
                    for id in &latched {
                        self.journal_action(
                            id,
                            ActionKind::Held,
                            Ok(format!("the fleet's incident alert resolved: restarts resume at {at} (this host's turn in the stagger)")),
                            Some(until),
                            now,
                            out,
                        );
                    }
                }
                fleet::FleetEvent::Unreachable { error } => {
                    let after = self
                        .fleet
                        .as_ref()
                        .map(|f| crate::time::human(f.config().stale_after))
                        .unwrap_or_default();
                    warn!(
                        error,
                        "no Alertmanager answered for {after}: recovering locally, restarts are not held"
                    );
                }
                fleet::FleetEvent::Reachable => {
                    info!("Alertmanager answers again: the fleet's hold is back in force");
                }
            }
        }
        self.policy
            .set_fleet_hold(self.fleet.as_ref().and_then(fleet::Fleet::hold_until));
    }

    /// The id of the incident opened at monotonic `opened`.
    fn incident_id(&self, opened: MonoNs) -> String {
        format!("incident@{}", self.wall_ms(opened))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of one incident record"
    )]
    fn journal_incident(
        &self,
        opened: MonoNs,
        event: IncidentEvent,
        members: Vec<String>,
        canary: Option<String>,
        tries: u32,
        detail: String,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        out.push(Effect::Journal(JournalRecord::Incident(IncidentRecord {
            at_ms: self.wall_ms(now),
            id: self.incident_id(opened),
            event,
            members,
            canary,
            tries,
            detail,
        })));
    }

    /// Several instances latched together: the incident is journalled once, and each member's
    /// episode records that it waits for the canary.
    fn incident_opened(
        &mut self,
        opened: MonoNs,
        members: &[InstanceId],
        canary: Option<&InstanceId>,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        let incident = self.incident_id(opened);
        let detail = format!(
            "upstream incident: {} instances latched together ({}); one canary restart per quiet window, the others restarted once one heals",
            names.len(),
            names.join(", ")
        );
        warn!(incident, members = names.len(), canary = ?canary.map(|c| c.name.as_str()), "{detail}");
        out.push(Effect::Metric(Metric::IncidentOpened));
        self.journal_incident(
            opened,
            IncidentEvent::Opened,
            names,
            canary.map(|c| c.name.clone()),
            0,
            detail,
            now,
            out,
        );
        for m in members.iter().filter(|m| Some(*m) != canary) {
            self.journal_held(&incident, m, now, out);
        }
    }

    fn journal_held(&self, incident: &str, id: &InstanceId, now: MonoNs, out: &mut Vec<Effect>) {
        self.journal_action(
            id,
            ActionKind::Held,
            Ok(format!(
                "held by {incident}: waiting for its canary restart to heal"
            )),
            None,
            now,
            out,
        );
    }

    fn incident_joined(
        &mut self,
        opened: MonoNs,
        id: &InstanceId,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        let incident = self.incident_id(opened);
        info!(instance = %id, incident, "latched during the upstream incident: waiting for its canary");
        self.journal_incident(
            opened,
            IncidentEvent::Joined,
            vec![id.name.clone()],
            None,
            0,
            format!("{id} latched during the incident"),
            now,
            out,
        );
        self.journal_held(&incident, id, now, out);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of the policy's action"
    )]
    fn incident_escalated(
        &mut self,
        opened: MonoNs,
        members: &[InstanceId],
        canary: &InstanceId,
        tries: u32,
        gave_up: bool,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        let since = crate::time::rfc3339_ms(self.wall_ms(opened));
        let reason = if gave_up {
            format!(
                "upstream incident since {since}: {} instances latched ({}), {tries} canary restarts did not heal; restarts stopped (give_up)",
                names.len(),
                names.join(", ")
            )
        } else {
            format!(
                "upstream incident since {since}: {} instances latched ({}), {tries} canary restarts did not heal; one canary restart per quiet window goes on, at least every {}, and all are restarted once one heals",
                names.len(),
                names.join(", "),
                crate::time::human(*self.config.recovery.backoff_max.get_ref())
            )
        };
        warn!(
            incident = self.incident_id(opened),
            tries,
            members = names.len(),
            "escalated: {reason}"
        );
        out.push(Effect::Metric(Metric::IncidentEscalated));
        self.journal_incident(
            opened,
            IncidentEvent::Escalated,
            names.clone(),
            Some(canary.name.clone()),
            tries,
            reason.clone(),
            now,
            out,
        );
        for m in members {
            self.episode_escalated(m, gave_up, now, out);
        }
        let latched = self.target(canary);
        self.run_hook(canary, latched, reason, names, out);
    }

    fn incident_closed(
        &mut self,
        opened: MonoNs,
        healed_by: Option<&InstanceId>,
        released: &[InstanceId],
        tries: u32,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        let names: Vec<String> = released.iter().map(|m| m.name.clone()).collect();
        let lasted = crate::time::human(Duration::from_nanos(now.saturating_sub(opened)));
        let detail = match healed_by {
            Some(h) => format!(
                "the upstream window closed: a restart of {h} healed after {tries} that did not, {lasted} after the incident opened; {} restarted next, one at a time",
                if names.is_empty() {
                    "no other instance is".to_owned()
                } else {
                    names.join(", ") + " are"
                }
            ),
            None => {
                format!("no instance of the incident is latched any more, {lasted} after it opened")
            }
        };
        info!(incident = self.incident_id(opened), "{detail}");
        self.journal_incident(
            opened,
            IncidentEvent::Closed,
            names,
            healed_by.map(|h| h.name.clone()),
            tries,
            detail,
            now,
            out,
        );
    }

    fn journal_episode(&self, episode: Episode, now: MonoNs, out: &mut Vec<Effect>) {
        out.push(Effect::Journal(JournalRecord::Episode {
            at_ms: self.wall_ms(now),
            episode,
        }));
    }

    /// Journals `id`'s action `kind`: `ok` unless its `detail` is an `Err`, with the end
    /// `until` of the quiet window it set, if it set one.
    fn journal_action(
        &self,
        id: &InstanceId,
        kind: ActionKind,
        detail: Result<String, String>,
        until: Option<MonoNs>,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        // The open episode, else the latest one: a restart may finish, or the hook run, after
        // the episode it was for has closed.
        let record = self.records.get(id);
        let episode_id = record
            .and_then(|r| r.detection.window())
            .map(|w| w.id.clone())
            .or_else(|| record.and_then(|r| r.last_episode.clone()));
        out.push(Effect::Journal(JournalRecord::Action(ActionRecord {
            at_ms: self.wall_ms(now),
            instance: id.name.clone(),
            episode_id,
            kind,
            ok: detail.is_ok(),
            until_ms: until.map(|t| self.wall_ms(t)),
            detail: Some(detail.unwrap_or_else(|e| e)),
        })));
    }

    /// Journals a quiet window until `until` set for `id` (the incident's, when `incident`).
    fn journal_backoff(
        &self,
        id: &InstanceId,
        until: MonoNs,
        incident: bool,
        now: MonoNs,
        out: &mut Vec<Effect>,
    ) {
        let wait_s = until.saturating_sub(now) / 1_000_000_000;
        let detail = if incident {
            format!("quiet window of {wait_s}s before the incident's next canary restart")
        } else {
            format!("quiet window of {wait_s}s before the next restart")
        };
        info!(instance = %id, wait_s, incident, "{detail}");
        self.journal_action(id, ActionKind::Backoff, Ok(detail), Some(until), now, out);
    }

    fn save(&self, out: &mut Vec<Effect>) {
        out.push(Effect::SaveRecovery(self.recovery_state()));
    }
}

/// The `model` label of an exchange's metrics: the model the request named when it has a model
/// name's shape (lowercase letters, digits and `-._:@/`, at most 80 bytes, as in
/// `claude-opus-4-8` or `us.anthropic.claude-sonnet-4-6@20251001`), `unknown` when it named
/// none, `other` otherwise: the request body is the observed process's to choose, and a label
/// value is exported as is.
#[must_use]
pub fn model_label(model: Option<&str>) -> String {
    match model {
        None => "unknown".to_owned(),
        Some(m)
            if !m.is_empty()
                && m.len() <= 80
                && m.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._:@/".contains(&b)
                }) =>
        {
            m.to_owned()
        }
        Some(_) => "other".to_owned(),
    }
}

/// Whether a process whose `/proc/<pid>/cgroup` is `cgroup` lives in cgroup subtree `scope`
/// (its unified, `0::`, line; the first line on a host without one).
#[must_use]
pub fn in_scope(cgroup: &str, scope: &str) -> bool {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| cgroup.lines().next().and_then(|l| l.splitn(3, ':').nth(2)))
        .unwrap_or_default();
    path == scope
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.starts_with('/'))
}
