//! The latch detector: a sans-IO state machine fed exchanges, process and restart events, and a
//! monotonic clock; it returns [`Event`]s and does no I/O and reads no clock of its own.
//!
//! # States (per instance)
//! - [`State::Healthy`]: no open 401 window.
//! - [`State::Suspect`]: 401s seen on the instance's current session, no accepted answer since,
//!   threshold not reached yet.
//! - [`State::Latched`]: at least [`DetectorConfig::latch_min_401s`] 401s and the window open for
//!   at least [`DetectorConfig::latch_min_span`]; an [`Episode`] is open.
//!
//! That is all the detector's own state: the evidence. What recovery does about a latch
//! (restarting, awaiting the new process's answer, escalated, given up) is the recovery
//! machine's ([`crate::policy`]); it tells the detector what the detector needs of it as a
//! [`Recovery`] with each call: the restart boundary (only processes started since count, and
//! their answers say whether the restart healed: [`Event::Rejected`], [`Event::Accepted`]) and
//! whether restarts gave up (401s are not counted then, and an accepted answer is reported).
//!
//! Model throttles are a separate, per-model dimension ([`InstanceStatus::throttled`]): an
//! instance can be healthy with `claude-opus-*` throttled, and a 429 never counts toward a latch.
//!
//! # Answers, precisely
//! Only Anthropic API calls count: paths starting with `/v1/` (not `HEAD /`, not unknown paths).
//! - **rejected**: 401.
//! - **accepted**: any other status in 200..=499 except 403 (2xx, 3xx, 400, 404, 413, 429...):
//!   the request got past authentication on this session. It ends a 401 window, confirms a
//!   recovery and ends a give-up ("non-401" in the design).
//! - **neutral**: 1xx, 403, 5xx (500, 529 overloaded): tells nothing about the session; only
//!   updates the idle clock.
//!
//! # Latch threshold
//! Latched when the window has at least N 401s (default 3) and `now - first 401 >= T` (default
//! 10 s) with no accepted answer in between. `T` is measured to `now` (checked by [`Instance::tick`]),
//! not to the last 401: Claude Code retries a 401 after about 1, 1, 3, 4, 8, 18 s, so by 10 s a
//! latched instance has sent 5 requests but its next 401 only comes at about 17 s; measuring to
//! `now` reports the latch at T plus the tick period. A lone 401 window that never reaches N is
//! forgotten after [`DetectorConfig::suspect_forget_after`] without further 401s.
//!
//! # Own session
//! A 401 counts only for the process and session that got it: exchanges from a PID reported
//! exited, or carrying a session id of an exited process (unless discovery announced the
//! process as the instance's: a respawned background worker keeps its session id), are
//! ignored; past a restart boundary only
//! processes started at or after it count; a new session id in a suspect window starts
//! the window anew.

pub mod episode;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

pub use episode::{
    EPISODE_LIST_KEPT, Episode, EpisodeEnd, EpisodeSource, NotKept, REQUEST_IDS_KEPT,
};

use crate::http::Exchange;
use crate::instance::InstanceId;
pub use crate::time::MonoNs;
use crate::time::{WallClock, nanos};

/// How many exited PIDs / retired sessions an instance remembers, to ignore their late answers
/// (also the most sessions one live process keeps).
const RETIRED_KEPT: usize = 64;

/// How long a latched instance whose last process exited on its own keeps its episode open
/// for a restart by something else (systemd's `Restart=`, another watchdog, `claude
/// respawn`): a new process of the instance within it continues the episode, and its restart
/// counts toward the escalation.
pub const RESTART_ELSEWHERE_GRACE: Duration = Duration::from_secs(60);

/// How many models an instance keeps per-model state for (throttles, latest accepted answer):
/// the model is the observed process's to choose. Further models share the state of
/// [`OTHER_MODEL`].
pub const MODELS_KEPT: usize = 32;

/// The model under which models beyond [`MODELS_KEPT`] are tracked.
pub const OTHER_MODEL: &str = "other";

/// How long a model's latest accepted answer is remembered (it tells a tier throttle only
/// within a minute).
const LAST_OK_KEPT_NS: MonoNs = 10 * 60 * 1_000_000_000;

/// Thresholds of the detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// N: 401s needed in one window (default 3).
    pub latch_min_401s: u32,
    /// T: how long the window must have been open (default 10 s).
    pub latch_min_span: Duration,
    /// A suspect window below N with no new 401 for this long is dropped (default 10 min).
    pub suspect_forget_after: Duration,
    /// A throttled model with no 429 for this long is no longer throttled (default 5 min); an
    /// accepted non-429 answer from that model clears it at once.
    pub throttle_clear_after: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            latch_min_401s: 3,
            latch_min_span: Duration::from_secs(10),
            suspect_forget_after: Duration::from_secs(600),
            throttle_clear_after: Duration::from_secs(300),
        }
    }
}

/// The 401 window of one instance (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No open 401 window.
    Healthy,
    /// 401s below the latch threshold.
    Suspect,
    /// Latched: an episode is open.
    Latched,
}

/// What the recovery machine tells the detector about one instance with each call: its input,
/// not the detector's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// A restart began then (ours, or one by something else): while latched, only processes
    /// started since count, a 401 of theirs is [`Event::Rejected`] and an accepted answer
    /// confirms the restart.
    pub boundary: Option<MonoNs>,
    /// Restarts gave up (`give_up`): 401s open no window, and an accepted answer is reported
    /// ([`Event::Accepted`]).
    pub gave_up: bool,
}

/// Why a state changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Reason {
    /// The first 401 of a window.
    Unauthorized {
        /// Process that got it.
        pid: u32,
    },
    /// The latch threshold was reached.
    Threshold {
        /// 401s in the window.
        count_401: u64,
        /// Time since the first 401, in ms.
        open_ms: u64,
    },
    /// An accepted (non-401) answer.
    Accepted {
        /// Process that got it.
        pid: u32,
        /// Its status.
        status: u16,
    },
    /// The instance's last process exited.
    ProcessExited {
        /// The process.
        pid: u32,
    },
    /// A suspect window saw no new 401 for [`DetectorConfig::suspect_forget_after`].
    Forgotten,
}

impl State {
    /// The state's name in logs, status and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Suspect => "suspect",
            Self::Latched => "latched",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phrase for logs: `401 to pid 2157`, `3 401s over 12.0 s`...
impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized { pid } => write!(f, "401 to pid {pid}"),
            Self::Threshold { count_401, open_ms } => {
                write!(
                    f,
                    "{count_401} 401s over {:.1} s",
                    Duration::from_millis(*open_ms).as_secs_f64()
                )
            }
            Self::Accepted { pid, status } => write!(f, "{status} to pid {pid}"),
            Self::ProcessExited { pid } => write!(f, "pid {pid} exited"),
            Self::Forgotten => f.write_str("no new 401 for suspect_forget_after"),
        }
    }
}

/// What the detector reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// An instance changed state.
    StateChanged {
        /// The instance.
        instance: InstanceId,
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// Why.
        #[serde(flatten)]
        reason: Reason,
        /// When (monotonic ns).
        at_ns: MonoNs,
    },
    /// A latched instance's process started after the restart boundary got a 401: the restart
    /// did not heal.
    Rejected {
        /// The instance.
        instance: InstanceId,
        /// The new process.
        pid: u32,
    },
    /// An accepted answer of an instance restarts gave up on (a latched instance's ends its
    /// episode instead: [`EpisodeEnd::SelfRecovered`], or past a restart boundary
    /// [`EpisodeEnd::RecoveredAfterRestart`]).
    Accepted {
        /// The instance.
        instance: InstanceId,
        /// Its process.
        pid: u32,
        /// The answer's status.
        status: u16,
    },
    /// Something else restarted the latched instance: its last process exited, and a new
    /// process of the same instance started within [`RESTART_ELSEWHERE_GRACE`]. The episode
    /// counts it; the recovery machine sets the boundary.
    RestartedElsewhere {
        /// The instance.
        instance: InstanceId,
        /// The process that exited.
        old_pid: u32,
        /// The new process.
        pid: u32,
    },
    /// A model of the instance got its first 429 of a throttle.
    ModelThrottled {
        /// The instance.
        instance: InstanceId,
        /// The model (`unknown` when the request's model was not seen).
        model: String,
        /// When.
        at_ns: MonoNs,
    },
    /// A tier throttle: some models get 429 while another answers.
    TierThrottle {
        /// The instance.
        instance: InstanceId,
        /// Models currently throttled.
        throttled: Vec<String>,
        /// A model that answered meanwhile.
        answering: String,
        /// When.
        at_ns: MonoNs,
    },
    /// A model is no longer throttled.
    ThrottleCleared {
        /// The instance.
        instance: InstanceId,
        /// The model.
        model: String,
        /// When.
        at_ns: MonoNs,
    },
    /// A latch episode opened (journal it).
    EpisodeOpened(Episode),
    /// An open episode changed: more 401s, a restart (journal it).
    EpisodeUpdated(Episode),
    /// An episode ended; `end` says how (journal it).
    EpisodeClosed(Episode),
}

/// A read-only view of one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceStatus {
    /// The instance.
    pub instance: InstanceId,
    /// Its state.
    pub state: State,
    /// Its live PIDs.
    pub pids: Vec<u32>,
    /// Its current session id.
    pub session_id: Option<String>,
    /// Claude Code version, from the latest `User-Agent: claude-cli/<version> ...`.
    pub client_version: Option<String>,
    /// Throttled models.
    pub throttled: Vec<String>,
    /// Whether a throttled model coexists with another model answering (tier throttle).
    pub tier_throttle: bool,
    /// The open episode (latched) or suspect window.
    pub window: Option<Episode>,
}

#[derive(Debug)]
struct Throttle {
    last_429_ns: MonoNs,
    tier_reported: bool,
}

#[derive(Debug)]
struct Proc {
    started_ns: MonoNs,
    sessions: BTreeSet<String>,
    /// Reported by discovery as a live process of the instance ([`Instance::process_started`]),
    /// not only seen in traffic.
    announced: bool,
}

/// An instance's live processes, by pid: a sorted vector (almost always one process; a
/// `BTreeMap` would allocate a node of eleven for it, for each of a thousand instances).
#[derive(Debug, Default)]
struct Pids(Vec<(u32, Proc)>);

impl Pids {
    fn find(&self, pid: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&pid, |(p, _)| *p)
    }

    fn get(&self, pid: u32) -> Option<&Proc> {
        self.find(pid).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, pid: u32) -> Option<&mut Proc> {
        self.find(pid).ok().map(|i| &mut self.0[i].1)
    }

    /// The process `pid`, inserted with `new()` when absent.
    fn get_or_insert_with(&mut self, pid: u32, new: impl FnOnce() -> Proc) -> &mut Proc {
        let i = match self.find(pid) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (pid, new()));
                i
            }
        };
        &mut self.0[i].1
    }

    fn insert(&mut self, pid: u32, proc: Proc) {
        match self.find(pid) {
            Ok(i) => self.0[i].1 = proc,
            Err(i) => self.0.insert(i, (pid, proc)),
        }
    }

    fn remove(&mut self, pid: u32) -> Option<Proc> {
        let proc = self.find(pid).ok().map(|i| self.0.remove(i).1);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        proc
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().map(|(p, _)| *p)
    }
}

/// One instance's detection state: its processes and sessions, its 401 window and episode,
/// its throttles. The [`Rules`] are passed in; a [`Detector`] is a table of these, and the
/// watch core keeps one in each instance's record.
#[derive(Debug)]
pub struct Instance {
    id: InstanceId,
    state: State,
    pids: Pids,
    exited: Vec<u32>,
    retired_sessions: Vec<String>,
    session: Option<String>,
    client_version: Option<String>,
    last_api_ns: Option<MonoNs>,
    /// The open episode or suspect window, boxed: most instances have none, and a thousand
    /// of them are kept.
    window: Option<Box<Episode>>,
    /// When its episode's latest restart began (time to recovery is measured from it).
    last_restart_ns: Option<MonoNs>,
    /// When (and which) its last process exited while latched, not through a restart of ours:
    /// the episode stays open [`RESTART_ELSEWHERE_GRACE`] for a restart by something else.
    orphaned: Option<(MonoNs, u32)>,
    throttles: BTreeMap<String, Throttle>,
    last_ok: BTreeMap<String, MonoNs>,
}

/// What every instance's detection shares: the thresholds, the wall clock, the host.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// The thresholds.
    pub config: DetectorConfig,
    /// The wall clock, learned from the latest exchange.
    pub wall_clock: Option<WallClock>,
    /// The host every new episode is stamped with.
    pub host: Option<String>,
}

impl Rules {
    /// Rules with the given thresholds.
    #[must_use]
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    fn wall_ms(&self, now: MonoNs) -> Option<u64> {
        self.wall_clock.map(|c| c.wall_ms(now))
    }

    /// `latch_min_span` in ns.
    fn span_ns(&self) -> MonoNs {
        nanos(self.config.latch_min_span)
    }
}

/// The detector for all instances of a host: a table of [`Instance`]s under one [`Rules`]
/// (what rebuilds history from transcripts uses; the watch core keeps each instance's in its
/// record instead).
#[derive(Debug, Default)]
pub struct Detector {
    rules: Rules,
    instances: BTreeMap<InstanceId, Instance>,
    /// Each instance's restart boundary: a rebuild's recovery is only its restarts.
    boundaries: BTreeMap<InstanceId, MonoNs>,
}

enum Answer {
    Rejected,
    Accepted,
    Neutral,
}

fn answer(status: u16) -> Answer {
    match status {
        401 => Answer::Rejected,
        403 => Answer::Neutral,
        200..=499 => Answer::Accepted,
        _ => Answer::Neutral,
    }
}

/// Whether an exchange is an Anthropic API call, the only kind that counts: its path starts
/// with `/v1/` (not `HEAD /`, not an unknown path).
#[must_use]
pub fn is_api_call(ex: &Exchange) -> bool {
    ex.path.as_deref().is_some_and(|p| p.starts_with("/v1/"))
}

/// `2.1.197` from `claude-cli/2.1.197 (external, sdk-cli)`.
fn client_version(user_agent: &str) -> Option<&str> {
    user_agent
        .strip_prefix("claude-cli/")?
        .split_whitespace()
        .next()
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// Adds `x` to `v` unless it is there or `v` is full ([`EPISODE_LIST_KEPT`]); `false` when it
/// had no room.
fn push_kept(v: &mut Vec<String>, x: &str) -> bool {
    if v.iter().any(|y| y == x) {
        return true;
    }
    if v.len() >= EPISODE_LIST_KEPT {
        return false;
    }
    v.push(x.to_owned());
    true
}

/// The key of `model`'s state in `map`: itself when known or when there is room, else
/// [`OTHER_MODEL`].
fn model_key<V>(map: &BTreeMap<String, V>, model: &str) -> String {
    if map.contains_key(model) || map.len() < MODELS_KEPT - 1 {
        model.to_owned()
    } else {
        OTHER_MODEL.to_owned()
    }
}

fn push_bounded<T>(v: &mut Vec<T>, x: T) {
    if v.len() == RETIRED_KEPT {
        v.remove(0);
    }
    v.push(x);
}

impl Instance {
    /// A healthy instance never seen before.
    #[must_use]
    pub fn new(id: InstanceId) -> Self {
        Self {
            id,
            state: State::Healthy,
            pids: Pids::default(),
            exited: Vec::new(),
            retired_sessions: Vec::new(),
            session: None,
            client_version: None,
            last_api_ns: None,
            window: None,
            last_restart_ns: None,
            orphaned: None,
            throttles: BTreeMap::new(),
            last_ok: BTreeMap::new(),
        }
    }

    fn set_state(&mut self, to: State, reason: Reason, at_ns: MonoNs, out: &mut Vec<Event>) {
        let from = self.state;
        self.state = to;
        tracing::info!(instance = %self.id, %from, %to, %reason, "instance state changed");
        out.push(Event::StateChanged {
            instance: self.id.clone(),
            from,
            to,
            reason,
            at_ns,
        });
    }

    fn new_window(&self, pid: u32, ex: &Exchange, host: Option<&String>) -> Episode {
        Episode {
            id: format!("{}@{}", self.id, ex.ts_ms),
            instance: self.id.name.clone(),
            unit: self.id.unit_name().map(str::to_owned),
            first_401_ms: ex.ts_ms,
            last_401_ms: ex.ts_ms,
            first_401_mono_ns: ex.mono_ns,
            last_401_mono_ns: ex.mono_ns,
            idle_before_ms: self.last_api_ns.map(|l| ms(ex.mono_ns.saturating_sub(l))),
            end: EpisodeEnd::StillOpen,
            host: host.cloned(),
            source: EpisodeSource::Live,
            client_version: self.client_version.clone(),
            ..Episode::default()
        }
        .with_401(pid, ex)
    }

    fn close(&mut self, end: EpisodeEnd, ended_ms: Option<u64>, out: &mut Vec<Event>) {
        out.extend(self.closed(end, ended_ms).map(Event::EpisodeClosed));
    }

    /// Ends the open episode as `end`, and returns it closed.
    fn closed(&mut self, end: EpisodeEnd, ended_ms: Option<u64>) -> Option<Episode> {
        self.last_restart_ns = None;
        self.orphaned = None;
        let mut episode = *self.window.take()?;
        (episode.end, episode.ended_ms) = (end, ended_ms);
        Some(episode)
    }
}

impl Episode {
    fn with_401(mut self, pid: u32, ex: &Exchange) -> Self {
        self.add_401(pid, ex);
        self
    }

    fn add_401(&mut self, pid: u32, ex: &Exchange) {
        self.count_401 += 1;
        self.last_401_ms = ex.ts_ms;
        self.last_401_mono_ns = ex.mono_ns;
        if !self.pids.contains(&pid) {
            if self.pids.len() >= EPISODE_LIST_KEPT {
                self.pids.remove(0);
                self.not_kept.pids += 1;
            }
            self.pids.push(pid);
        }
        if let Some(s) = &ex.session_id
            && !push_kept(&mut self.session_ids, s)
        {
            self.not_kept.session_ids += 1;
        }
        if let Some(m) = &ex.model
            && !push_kept(&mut self.models, m)
        {
            self.not_kept.models += 1;
        }
        if let Some(id) = &ex.request_id {
            if self.first_request_ids.len() < REQUEST_IDS_KEPT {
                self.first_request_ids.push(id.clone());
            }
            if self.last_request_ids.len() == REQUEST_IDS_KEPT {
                self.last_request_ids.remove(0);
            }
            self.last_request_ids.push(id.clone());
        }
    }
}

impl Instance {
    /// Whether forgetting it loses nothing a decision needs: no live process and no open
    /// window.
    #[must_use]
    pub fn at_rest(&self) -> bool {
        self.pids.is_empty() && self.window.is_none() && self.state == State::Healthy
    }

    /// Its state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// Its open episode or suspect window.
    #[must_use]
    pub fn window(&self) -> Option<&Episode> {
        self.window.as_deref()
    }

    /// Its status.
    #[must_use]
    pub fn status(&self) -> InstanceStatus {
        InstanceStatus {
            instance: self.id.clone(),
            state: self.state,
            pids: self.pids.keys().collect(),
            session_id: self.session.clone(),
            client_version: self.client_version.clone(),
            throttled: self.throttles.keys().cloned().collect(),
            tier_throttle: self.throttles.values().any(|t| t.tier_reported),
            window: self.window.as_deref().cloned(),
        }
    }

    /// Feeds one exchange of its process `pid`, under what recovery says of it (`rec`).
    pub fn observe(
        &mut self,
        rules: &mut Rules,
        pid: u32,
        ex: &Exchange,
        now: MonoNs,
        rec: Recovery,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        rules.wall_clock = Some(WallClock::at(ex.ts_ms, ex.mono_ns));
        // A retired session id is ignored only from processes discovery did not announce: a
        // process it reported live is the instance's own, and `claude respawn` gives the new
        // worker of a background session the same session id as the old one.
        let announced = self.pids.get(pid).is_some_and(|p| p.announced);
        if self.exited.contains(&pid)
            || (!announced
                && ex
                    .session_id
                    .as_ref()
                    .is_some_and(|s| self.retired_sessions.contains(s)))
        {
            tracing::debug!(instance = %self.id, pid, "ignoring exchange of an exited process or session");
            return out;
        }
        let started_ns = self
            .pids
            .get_or_insert_with(pid, || Proc {
                started_ns: ex.mono_ns,
                sessions: BTreeSet::new(),
                announced: false,
            })
            .started_ns;
        let boundary = rec.boundary.filter(|_| self.state == State::Latched);
        if boundary.is_some_and(|r| started_ns < r) {
            tracing::debug!(instance = %self.id, pid, "ignoring pre-restart process while recovering");
            return out;
        }
        if !is_api_call(ex) {
            return out;
        }
        if let Some(v) = ex.user_agent.as_deref().and_then(client_version) {
            self.client_version = Some(v.to_owned());
        }
        if let Some(s) = &ex.session_id {
            if let Some(p) = self.pids.get_mut(pid)
                && !p.sessions.contains(s)
            {
                if p.sessions.len() >= RETIRED_KEPT {
                    p.sessions.pop_first();
                }
                p.sessions.insert(s.clone());
            }
            self.session = Some(s.clone());
        }
        let model = ex.model.as_deref().unwrap_or("unknown");
        match answer(ex.status) {
            Answer::Rejected if rec.gave_up => {}
            Answer::Rejected => {
                // A 401 past the boundary (the latched instance's restarted process): the
                // restart did not heal.
                if boundary.is_some() {
                    tracing::info!(instance = %self.id, pid, "401 to the restarted pid");
                    out.push(Event::Rejected {
                        instance: self.id.clone(),
                        pid,
                    });
                }
                self.on_401(pid, ex, rules.host.as_ref(), &mut out);
            }
            Answer::Accepted => {
                self.on_throttle_signal(model, ex.status, ex.mono_ns, &mut out);
                self.on_accepted(pid, ex, rec, &mut out);
            }
            Answer::Neutral => {}
        }
        self.last_api_ns = Some(ex.mono_ns);
        self.check_latch(&rules.config, now, &mut out);
        out
    }

    fn on_401(&mut self, pid: u32, ex: &Exchange, host: Option<&String>, out: &mut Vec<Event>) {
        match self.state {
            State::Healthy => {
                self.window = Some(Box::new(self.new_window(pid, ex, host)));
                self.set_state(
                    State::Suspect,
                    Reason::Unauthorized { pid },
                    ex.mono_ns,
                    out,
                );
            }
            State::Suspect => {
                let new_session = match (&ex.session_id, &self.window) {
                    (Some(s), Some(w)) => !w.session_ids.is_empty() && !w.session_ids.contains(s),
                    _ => false,
                };
                if new_session || self.window.is_none() {
                    self.window = Some(Box::new(self.new_window(pid, ex, host)));
                } else if let Some(w) = self.window.as_mut() {
                    w.add_401(pid, ex);
                }
            }
            State::Latched => {
                if let Some(w) = self.window.as_mut() {
                    w.add_401(pid, ex);
                    out.push(Event::EpisodeUpdated((**w).clone()));
                }
            }
        }
    }

    fn on_accepted(&mut self, pid: u32, ex: &Exchange, rec: Recovery, out: &mut Vec<Event>) {
        let reason = Reason::Accepted {
            pid,
            status: ex.status,
        };
        match self.state {
            State::Healthy if rec.gave_up => {
                tracing::info!(instance = %self.id, pid, status = ex.status, "accepted answer of an instance given up on");
                out.push(Event::Accepted {
                    instance: self.id.clone(),
                    pid,
                    status: ex.status,
                });
            }
            State::Healthy => {}
            State::Suspect => {
                self.window = None;
                self.set_state(State::Healthy, reason, ex.mono_ns, out);
            }
            State::Latched
                if rec.boundary.is_none()
                    && self.window.as_ref().is_none_or(|w| w.restarts == 0) =>
            {
                self.close(EpisodeEnd::SelfRecovered, Some(ex.ts_ms), out);
                self.set_state(State::Healthy, reason, ex.mono_ns, out);
            }
            // A non-401 from the restarted process (past the boundary, or latched again after
            // a restart): the restart did heal it, later than its first request perhaps.
            State::Latched => {
                let ttr = self
                    .last_restart_ns
                    .map(|r| ms(ex.mono_ns.saturating_sub(r)));
                if let Some(w) = self.window.as_mut() {
                    w.time_to_recovery_ms = ttr;
                }
                self.close(EpisodeEnd::RecoveredAfterRestart, Some(ex.ts_ms), out);
                self.set_state(State::Healthy, reason, ex.mono_ns, out);
            }
        }
    }

    fn on_throttle_signal(
        &mut self,
        model: &str,
        status: u16,
        at_ns: MonoNs,
        out: &mut Vec<Event>,
    ) {
        if status == 429 {
            let model = model_key(&self.throttles, model);
            let model = model.as_str();
            let fresh = !self.throttles.contains_key(model);
            self.throttles
                .entry(model.to_owned())
                .or_insert(Throttle {
                    last_429_ns: at_ns,
                    tier_reported: false,
                })
                .last_429_ns = at_ns;
            if fresh {
                tracing::info!(instance = %self.id, model, "model throttled");
                out.push(Event::ModelThrottled {
                    instance: self.id.clone(),
                    model: model.to_owned(),
                    at_ns,
                });
            }
            let since = at_ns.saturating_sub(60_000_000_000);
            let answering = self
                .last_ok
                .iter()
                .find(|(m, t)| {
                    m.as_str() != model && **t >= since && !self.throttles.contains_key(*m)
                })
                .map(|(m, _)| m.clone());
            if let Some(answering) = answering {
                self.report_tier(answering, at_ns, out);
            }
            return;
        }
        if self.throttles.remove(model).is_some() {
            out.push(Event::ThrottleCleared {
                instance: self.id.clone(),
                model: model.to_owned(),
                at_ns,
            });
        }
        let model = model_key(&self.last_ok, model);
        let model = model.as_str();
        self.last_ok.insert(model.to_owned(), at_ns);
        if (200..300).contains(&status) && !self.throttles.is_empty() {
            self.report_tier(model.to_owned(), at_ns, out);
        }
    }

    fn report_tier(&mut self, answering: String, at_ns: MonoNs, out: &mut Vec<Event>) {
        if self.throttles.values().all(|t| t.tier_reported) {
            return;
        }
        self.throttles
            .values_mut()
            .for_each(|t| t.tier_reported = true);
        let throttled: Vec<String> = self.throttles.keys().cloned().collect();
        tracing::warn!(instance = %self.id, ?throttled, answering = %answering, "tier throttle");
        out.push(Event::TierThrottle {
            instance: self.id.clone(),
            throttled,
            answering,
            at_ns,
        });
    }

    fn check_latch(&mut self, cfg: &DetectorConfig, now: MonoNs, out: &mut Vec<Event>) {
        if self.state != State::Suspect {
            return;
        }
        let Some(w) = &self.window else { return };
        let open = now.saturating_sub(w.first_401_mono_ns);
        if w.count_401 >= u64::from(cfg.latch_min_401s)
            && u128::from(open) >= cfg.latch_min_span.as_nanos()
        {
            let reason = Reason::Threshold {
                count_401: w.count_401,
                open_ms: ms(open),
            };
            out.push(Event::EpisodeOpened((**w).clone()));
            self.set_state(State::Latched, reason, now, out);
        } else if u128::from(now.saturating_sub(w.last_401_mono_ns))
            >= cfg.suspect_forget_after.as_nanos()
        {
            self.window = None;
            self.set_state(State::Healthy, Reason::Forgotten, now, out);
        }
    }

    /// When the latch condition of its open window came to hold: the 401 that completed it,
    /// or the moment the window reached its minimum span, whichever is later (detection
    /// latency is measured from there to the decision).
    #[must_use]
    pub fn latch_held_since(&self, rules: &Rules) -> Option<MonoNs> {
        let w = self.window.as_ref()?;
        Some(
            w.last_401_mono_ns
                .max(w.first_401_mono_ns.saturating_add(rules.span_ns())),
        )
    }

    /// The earliest moment its latch can be decided by the clock alone: a suspect window that
    /// already has N 401s reaches its minimum span then.
    #[must_use]
    pub fn next_deadline(&self, rules: &Rules) -> Option<MonoNs> {
        let w = self
            .window
            .as_ref()
            .filter(|_| self.state == State::Suspect)?;
        (w.count_401 >= u64::from(rules.config.latch_min_401s))
            .then(|| w.first_401_mono_ns.saturating_add(rules.span_ns()))
    }

    /// Advances its clock: reports a latch whose time threshold has passed, forgets a stale
    /// suspect window, clears throttles gone quiet, ends an orphaned episode.
    pub fn tick(&mut self, rules: &Rules, now: MonoNs, out: &mut Vec<Event>) {
        let cfg = &rules.config;
        let grace = nanos(RESTART_ELSEWHERE_GRACE);
        if let Some((at, pid)) = self.orphaned
            && now.saturating_sub(at) >= grace
        {
            // No process came back: the episode ends when its process exited.
            self.orphaned = None;
            if self.state == State::Latched && self.pids.is_empty() {
                self.close(EpisodeEnd::ProcessExited, rules.wall_ms(at), out);
                self.set_state(State::Healthy, Reason::ProcessExited { pid }, now, out);
            }
        }
        self.check_latch(cfg, now, out);
        let quiet: Vec<String> = self
            .throttles
            .iter()
            .filter(|(_, t)| {
                u128::from(now.saturating_sub(t.last_429_ns)) >= cfg.throttle_clear_after.as_nanos()
            })
            .map(|(m, _)| m.clone())
            .collect();
        for model in quiet {
            self.throttles.remove(&model);
            out.push(Event::ThrottleCleared {
                instance: self.id.clone(),
                model,
                at_ns: now,
            });
        }
        self.last_ok
            .retain(|_, t| now.saturating_sub(*t) < LAST_OK_KEPT_NS);
    }

    /// Resumes an episode found still open in the journal after a daemon restart (the
    /// monotonic clock survives a daemon restart, not a reboot): the instance is latched with
    /// that episode, so later 401s extend it and a non-401 closes it under the same id.
    /// Ignored for closed episodes and for an instance that already has a window.
    pub fn restore(&mut self, episode: Episode) {
        if episode.is_closed() || self.window.is_some() || self.state != State::Healthy {
            return;
        }
        tracing::info!(instance = %self.id, episode = %episode.id, "resuming open episode");
        self.state = State::Latched;
        self.window = Some(Box::new(episode));
    }

    /// A restart of it began (the recovery machine's, its boundary `now` from then on, or one
    /// by something else): the open episode counts it, and is returned so. Ignored unless
    /// latched. Nothing but the episode changes, so nothing but the episode is said.
    pub fn restart_started(&mut self, now: MonoNs) -> Option<Episode> {
        if self.state != State::Latched {
            return None;
        }
        self.last_restart_ns = Some(now);
        self.orphaned = None;
        let w = self.window.as_mut()?;
        w.restarts += 1;
        Some((**w).clone())
    }

    /// Its process `pid` started (exec seen, or the supervisor reported a new main PID).
    pub fn process_started(&mut self, pid: u32, now: MonoNs) -> Vec<Event> {
        let mut out = Vec::new();
        self.exited.retain(|&p| p != pid);
        self.pids.insert(
            pid,
            Proc {
                started_ns: now,
                sessions: BTreeSet::new(),
                announced: true,
            },
        );
        if let Some((_, old_pid)) = self.orphaned.take()
            && self.state == State::Latched
        {
            // Restarted by something else (another watchdog, `claude respawn`, an operator):
            // the episode goes on, this restart counts, and the new process's own answer
            // decides, as after a restart of ours.
            tracing::info!(instance = %self.id, old_pid, pid, "restarted by something else");
            out.extend(self.restart_started(now).map(Event::EpisodeUpdated));
            out.push(Event::RestartedElsewhere {
                instance: self.id.clone(),
                old_pid,
                pid,
            });
        }
        out
    }

    /// Its process `pid` exited. When it was the last one: a suspect window is dropped and a
    /// latched episode closes as [`EpisodeEnd::ProcessExited`], unless past a restart
    /// boundary (`rec`: a restart is expected to replace the process). With
    /// `live` (seen exiting on its own, not through a restart of ours), a latched instance
    /// keeps its episode open [`RESTART_ELSEWHERE_GRACE`]: a process started meanwhile is a
    /// restart by something else ([`Event::RestartedElsewhere`]); otherwise [`Self::tick`]
    /// closes the episode as [`EpisodeEnd::ProcessExited`] at the exit's time.
    pub fn process_exited(
        &mut self,
        rules: &Rules,
        pid: u32,
        now: MonoNs,
        live: bool,
        rec: Recovery,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        let removed = self.pids.remove(pid);
        let known = removed.is_some();
        for s in removed.into_iter().flat_map(|p| p.sessions) {
            push_bounded(&mut self.retired_sessions, s);
        }
        push_bounded(&mut self.exited, pid);
        if !self.pids.is_empty() {
            return out;
        }
        match self.state {
            State::Suspect => {
                self.window = None;
                self.set_state(State::Healthy, Reason::ProcessExited { pid }, now, &mut out);
            }
            // Its own last process, seen exiting on its own: a restart by something else may
            // follow ([`Self::tick`] closes the episode if none does).
            State::Latched if rec.boundary.is_some() => {}
            State::Latched if live && known => self.orphaned = Some((now, pid)),
            State::Latched => {
                self.close(EpisodeEnd::ProcessExited, rules.wall_ms(now), &mut out);
                self.set_state(State::Healthy, Reason::ProcessExited { pid }, now, &mut out);
            }
            State::Healthy => {}
        }
        out
    }

    /// Process `pid` turned out to belong to another instance (a fresh background session
    /// that continues this one's predecessor): it is dropped without retiring its sessions,
    /// and the instance starts afresh when that leaves it healthy, with no process and no
    /// window.
    pub fn forget_process(&mut self, pid: u32) {
        self.pids.remove(pid);
        if self.pids.is_empty() && self.state == State::Healthy && self.window.is_none() {
            *self = Self::new(self.id.clone());
        }
    }

    /// The recovery machine escalated it. As a notice (restarts go on) the open episode
    /// records when ([`Episode::escalated_ms`]) and stays open; when it `gave_up` the episode
    /// closes as [`EpisodeEnd::Escalated`] (its 401s open no window from then on, see
    /// [`Recovery::gave_up`]). The episode is returned as it now stands.
    pub fn escalated(&mut self, rules: &Rules, now: MonoNs, gave_up: bool) -> Option<Episode> {
        if gave_up {
            let closed = (self.state == State::Latched)
                .then(|| self.closed(EpisodeEnd::Escalated, rules.wall_ms(now)))
                .flatten();
            self.window = None;
            self.state = State::Healthy;
            return closed;
        }
        let w = self.window.as_mut()?;
        w.escalated_ms = w.escalated_ms.or(rules.wall_ms(now));
        Some((**w).clone())
    }
}

impl Detector {
    /// A detector with the given thresholds.
    #[must_use]
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            rules: Rules::new(config),
            ..Self::default()
        }
    }

    /// `id`'s machine (made if it has none), the rules it runs under and its recovery.
    fn inst(&mut self, id: &InstanceId) -> (&mut Instance, &mut Rules, Recovery) {
        let inst = self
            .instances
            .entry(id.clone())
            .or_insert_with(|| Instance::new(id.clone()));
        let rec = Recovery {
            boundary: self.boundaries.get(id).copied(),
            gave_up: false,
        };
        (inst, &mut self.rules, rec)
    }

    /// Feeds one exchange of process `pid`, which belongs to `instance`.
    pub fn observe(
        &mut self,
        instance: &InstanceId,
        pid: u32,
        ex: &Exchange,
        now: MonoNs,
    ) -> Vec<Event> {
        let (inst, rules, rec) = self.inst(instance);
        let events = inst.observe(rules, pid, ex, now, rec);
        // The new process answered (or the episode ended otherwise): past the boundary.
        if events
            .iter()
            .any(|e| matches!(e, Event::Rejected { .. } | Event::EpisodeClosed(_)))
        {
            self.boundaries.remove(instance);
        }
        events
    }

    /// The earliest moment a latch can be decided by the clock alone. A caller that sleeps
    /// until this moment (as well as ticking) reports such latches without the tick period's
    /// delay.
    #[must_use]
    pub fn next_deadline(&self) -> Option<MonoNs> {
        self.instances
            .values()
            .filter_map(|i| i.next_deadline(&self.rules))
            .min()
    }

    /// Advances the clock (see [`Instance::tick`]). Call it periodically (e.g. every 250 ms);
    /// a latch is reported at most one period after the threshold.
    pub fn tick(&mut self, now: MonoNs) -> Vec<Event> {
        let mut out = Vec::new();
        for inst in self.instances.values_mut() {
            inst.tick(&self.rules, now, &mut out);
        }
        out
    }

    /// A restart of latched `instance` began (see [`Instance::restart_started`]): its
    /// boundary is `now`.
    pub fn restart_started(&mut self, instance: &InstanceId, now: MonoNs) -> Vec<Event> {
        self.boundaries.insert(instance.clone(), now);
        let episode = self.inst(instance).0.restart_started(now);
        episode.map(Event::EpisodeUpdated).into_iter().collect()
    }

    /// See [`Instance::process_started`].
    pub fn process_started(&mut self, instance: &InstanceId, pid: u32, now: MonoNs) -> Vec<Event> {
        self.inst(instance).0.process_started(pid, now)
    }

    /// A process of `instance` exited on its own (see [`Instance::process_exited`]; the table
    /// sees no live exit, so no restart by something else either).
    pub fn process_exited(&mut self, instance: &InstanceId, pid: u32, now: MonoNs) -> Vec<Event> {
        let (inst, rules, rec) = self.inst(instance);
        inst.process_exited(rules, pid, now, false, rec)
    }
}

#[cfg(test)]
mod tests;
