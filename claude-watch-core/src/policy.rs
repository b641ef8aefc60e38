//! The recovery policy, sans-IO, the one recovery lifecycle of every instance (the detector
//! keeps only evidence): fed what the detector and the restarter report plus the
//! monotonic clock, it answers with [`Action`]s ([`Policy::poll`]). It never reads the time or
//! touches a process itself; [`Policy::next_deadline`] says when the clock alone will change
//! something.
//!
//! # One instance
//!
//! ```text
//!            latched                poll: slot free,            restart_finished(Ok)
//!   Idle ─────────────► Latched ──── its turn ────► Restarting ──────────────────► Recovering
//!    ▲                   ▲   ▲                          │                            │    │
//!    │                   │   └── restart_finished(Err), restart_timeout: a hold ─────┘    │
//!    │                   └───── latched (the new process got 401): a quiet window ───────┘
//!    └──────────── recovered: a non-401 answer of the new process (a confirmed recovery) ──┘
//! ```
//!
//! - The first latch of an instance is restarted as soon as its owner's slot is free (one
//!   restart in flight per owner, the uid of its processes: a user whose supervisor hangs
//!   delays only that user's restarts).
//! - A restart is confirmed only by the new process's own non-401 answer. When the new process
//!   gets 401 instead, the upstream window is still open: the next restart waits a quiet window
//!   that doubles from `initial_backoff` up to `max_backoff` (reset after `healthy_reset` of
//!   health).
//! - **Escalation is a notice, not an abandonment.** After `max_restarts` (K) restarts that did
//!   not heal, or `escalate_after` latched, the instance is escalated: [`Action::Escalate`]
//!   once (the hook runs, status says escalated), and it is still restarted behind its quiet
//!   window, which keeps doubling to the cap, until its own new session answers. A confirmed
//!   recovery ends the escalation. A persisted bad credential therefore costs one restart per
//!   cap, never a storm, and an agent whose window outlasts the notice comes back when the
//!   window closes. With `give_up` (off by default) an escalated instance is no longer
//!   restarted (`Phase::GaveUp`) until it answers non-401 on its own.
//! - Supervisor failures and restarts that time out are held behind the same growing quiet
//!   window; they are not restarts and say nothing about the upstream window.
//! - The detector is told what it needs of this lifecycle with every call
//!   ([`Instance::detector`]): the restart boundary, from a restart's hand-out (or a restart by
//!   something else, [`Policy::restarted_elsewhere`]) until the new process gets 401, the
//!   restart fails or recovery ends (only processes started since count, and their answers say
//!   whether it healed), and whether restarts gave up (its 401s then open no window).
//!
//! # An upstream incident: one canary
//!
//! When a second instance latches while another of the same owner is latched and not healed
//! (or a restarted instance's new session is rejected while others are latched), the host is
//! in an upstream incident of that owner's instances (with `canary`, the default); another
//! owner's latches never join it, so no user holds another's agents to a canary. Its members are not restarted each on its own
//! schedule: one member at a time, the canary, is restarted per quiet window of the incident;
//! the others wait, and their waiting counts toward nothing.
//!
//! ```text
//!  second latch ──► Incident { members, tries, backoff } ── next try due, slot free ──► canary
//!                     ▲    (the member with the fewest tries, then the oldest latch)     │
//!                     │                                                                  │
//!                     └──── the canary's new process got 401: tries + 1, quiet window ◄──┤
//!                                                                                        │
//!   incident closed ◄── a restarted member's new process answered non-401 ◄─────────────┘
//!   (the window is closed): every other member is released and restarted promptly, one at a
//!   time, each confirmed by its own answer.
//! ```
//!
//! - Restarts into an open window grow with the logarithm of its length, not with the number
//!   of instances: the incident has one quiet window, doubling per rejected try.
//! - One notice per incident ([`Action::IncidentEscalated`], after K rejected tries or
//!   `escalate_after`), none per member.
//! - Members leave the incident when they answer non-401, exit, or are forgotten; the incident
//!   ends when a restart is confirmed or no member is left.
//! - A released member rejected again while others are still latched opens the incident anew
//!   (a window that reopened: the release pauses); rejected alone, it backs off on its own.
//! - An instance escalated on its own (K restarts alone did not heal it: a persisted
//!   credential, say) never opens or joins an incident, so it never holds others back.
//! - An instance latched alone while no incident is open is recovered exactly as without
//!   incidents.
//!
//! [`Policy::snapshot`] / [`Policy::restore`] carry everything across a daemon restart with
//! wall-clock deadlines, so a restarted daemon does not restart anything early.
//!
//! Instances are keyed by [`InstanceId`] and time is [`MonoNs`], like the detector's.
//!
//! # Where the state lives
//!
//! Each instance's recovery state is an [`Instance`], kept by the caller beside the rest of
//! what it knows of the instance (the core: in the instance's record, so that forgetting an
//! instance is dropping its record) and lent to every call as a [`Table`]. The [`Policy`]
//! keeps only what spans instances: the configuration, each owner's restart slot, the
//! incident, the actions not yet polled, the fleet's hold, and the names of the instances it
//! heard of (an index, so that a poll passes over those and not over every record; dropped
//! with the rest by [`Policy::forget`]); its cross-instance choices (the oldest latch first,
//! the canary, one restart per owner) go over the table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detect::{MonoNs, Recovery};
use crate::instance::{IdSource, InstanceId};
use crate::time::WallClock;
use crate::time::nanos as ns;

fn yes() -> bool {
    true
}

/// Tunables of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// The first quiet window, after the first restart that did not heal.
    pub initial_backoff: Duration,
    /// The largest quiet window (escalated instances are retried at least this often).
    pub max_backoff: Duration,
    /// How long an instance must stay healthy for its backoff to reset.
    pub healthy_reset: Duration,
    /// K: restarts without a confirmed recovery before the escalation notice (an incident's:
    /// rejected canary tries).
    pub max_restarts: u32,
    /// How long a restart (job plus confirmation) may hold the host-wide slot.
    pub restart_timeout: Duration,
    /// Escalate an instance (or an incident) latched this long, whatever its restart count.
    #[serde(default)]
    pub escalate_after: Option<Duration>,
    /// Stop restarting an escalated instance (the behaviour before escalation became a notice).
    #[serde(default)]
    pub give_up: bool,
    /// Several instances latched together are one upstream incident, probed by one canary.
    #[serde(default = "yes")]
    pub canary: bool,
}

impl Default for PolicyConfig {
    /// The defaults chosen by the replay of the write-up's window history (`claude-watch
    /// replay`, BENCHMARKS.md): see the README's recovery section for why.
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30 * 60),
            healthy_reset: Duration::from_secs(10 * 60),
            max_restarts: 6,
            restart_timeout: Duration::from_secs(120),
            escalate_after: None,
            give_up: false,
            canary: true,
        }
    }
}

/// What the daemon should do (or record) now; drained by [`Policy::poll`] in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Restart this instance through its supervisor, then report [`Policy::restart_finished`].
    Restart(InstanceId),
    /// No restart of `instance` before `until`: a quiet window after a restart that did not
    /// heal, or a hold after a supervisor failure.
    Backoff {
        /// The instance (an incident's: its latest canary).
        instance: InstanceId,
        /// The end of the window.
        until: MonoNs,
        /// Whether the window is the incident's (its next canary try), not the instance's.
        incident: bool,
    },
    /// The instance is escalated (once per escalation): run the hook.
    Escalate {
        /// The instance.
        instance: InstanceId,
        /// Restarts that did not heal it.
        restarts: u32,
        /// Whether restarts stop (`give_up`) or go on at the quiet window.
        gave_up: bool,
    },
    /// An upstream incident opened: its members wait for the canary.
    IncidentOpened {
        /// When it opened (its id is derived from it).
        opened: MonoNs,
        /// The instances latched together.
        members: Vec<InstanceId>,
        /// The member whose restart is in flight, if one is.
        canary: Option<InstanceId>,
    },
    /// An instance latched while an incident is open: it waits for the canary.
    Joined {
        /// When the incident opened.
        opened: MonoNs,
        /// The instance.
        instance: InstanceId,
    },
    /// The incident is escalated (once): run the hook once for all its members.
    IncidentEscalated {
        /// When it opened.
        opened: MonoNs,
        /// Its members now.
        members: Vec<InstanceId>,
        /// The latest canary (the hook's `{instance}`).
        canary: InstanceId,
        /// Canary restarts that did not heal.
        tries: u32,
        /// Whether restarts stop (`give_up`).
        gave_up: bool,
    },
    /// A restart did not heal: its new process got 401 (evidence the window is open; the
    /// fleet's rules count it).
    Rejected {
        /// The instance.
        instance: InstanceId,
    },
    /// The incident is over.
    IncidentClosed {
        /// When it opened.
        opened: MonoNs,
        /// The member whose restart was confirmed (the window closed), if one was.
        healed_by: Option<InstanceId>,
        /// Members released to be restarted promptly, one at a time.
        released: Vec<InstanceId>,
        /// Canary restarts that did not heal.
        tries: u32,
    },
}

/// Where an instance stands in recovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Not latched.
    #[default]
    Idle,
    /// Latched, waiting for its turn, its quiet window, or the incident's canary.
    Latched,
    /// A restart was handed out and has not finished.
    Restarting {
        /// When it was handed out.
        since: MonoNs,
    },
    /// Restarted; waiting for the new process's own answer.
    Recovering {
        /// When the restart finished.
        since: MonoNs,
    },
    /// Escalated with `give_up`: no more restarts; waiting for a non-401 answer.
    GaveUp,
}

impl Phase {
    /// Latched and not healed: waiting, restarting or awaiting confirmation.
    fn unhealed(self) -> bool {
        matches!(
            self,
            Self::Latched | Self::Restarting { .. } | Self::Recovering { .. }
        )
    }
}

/// One instance's recovery state, kept beside its detection (the core keeps it in the
/// instance's record, so that forgetting the instance drops it): empty until the policy
/// hears of the instance.
#[derive(Clone, Debug, Default)]
pub struct Instance(Option<State>);

impl Instance {
    /// Its phase, `None` when the policy has never heard of it.
    #[must_use]
    pub fn phase(&self) -> Option<Phase> {
        self.0.as_ref().map(|i| i.phase)
    }

    /// What the detector needs of its recovery: its restart boundary, and whether restarts
    /// gave up on it.
    #[must_use]
    pub fn detector(&self) -> Recovery {
        Recovery {
            boundary: self.0.as_ref().and_then(|i| i.boundary),
            gave_up: self.phase() == Some(Phase::GaveUp),
        }
    }

    /// No restart of it happens before this (its own window or hold).
    #[must_use]
    pub fn not_before(&self) -> Option<MonoNs> {
        self.0.as_ref().and_then(|i| i.not_before)
    }

    /// Latched and not healed (waiting, restarting, awaiting confirmation).
    #[must_use]
    pub fn unhealed(&self) -> bool {
        self.phase().is_some_and(Phase::unhealed)
    }

    /// Its restarted process, which nothing recovers (its supervisor does not act), got 401:
    /// past its restart boundary.
    pub fn boundary_passed(&mut self) {
        if let Some(i) = self.0.as_mut() {
            i.boundary = None;
        }
    }
}

impl AsRef<Instance> for Instance {
    fn as_ref(&self) -> &Instance {
        self
    }
}

impl AsMut<Instance> for Instance {
    fn as_mut(&mut self) -> &mut Instance {
        self
    }
}

impl From<&InstanceId> for Instance {
    fn from(_: &InstanceId) -> Self {
        Self::default()
    }
}

/// What holds each instance's recovery state in a [`Table`]: the core's record of it, or the
/// [`Instance`] alone (a standalone policy's table); made from the id when the policy first
/// hears of an instance.
pub trait Entry: AsRef<Instance> + AsMut<Instance> + for<'a> From<&'a InstanceId> {}

impl<T: AsRef<Instance> + AsMut<Instance> + for<'a> From<&'a InstanceId>> Entry for T {}

/// The instances' recovery states the policy's calls are given, by instance.
pub type Table<T = Instance> = BTreeMap<InstanceId, T>;

/// The state of `id` in `t`, if the policy heard of it (so with `get_mut`: instances it never
/// heard of have none).
fn get<'t>(t: &'t Table<impl Entry>, id: &InstanceId) -> Option<&'t State> {
    t.get(id).and_then(|e| e.as_ref().0.as_ref())
}

fn get_mut<'t>(t: &'t mut Table<impl Entry>, id: &InstanceId) -> Option<&'t mut State> {
    t.get_mut(id).and_then(|e| e.as_mut().0.as_mut())
}

/// The states of the instances in `heard` (the policy's index of those it heard of).
fn states<'t>(
    heard: &'t BTreeSet<InstanceId>,
    t: &'t Table<impl Entry>,
) -> impl Iterator<Item = (&'t InstanceId, &'t State)> {
    heard.iter().filter_map(|id| Some((id, get(t, id)?)))
}

#[derive(Clone, Debug, Default)]
struct State {
    phase: Phase,
    /// When the instance (last) entered `Latched`: the queue's order, oldest first.
    latched_at: Option<MonoNs>,
    /// Unhealed since (the first latch since the last confirmed recovery).
    since: Option<MonoNs>,
    /// Restarts since the last confirmed recovery.
    restarts: u32,
    /// Its own restarts that did not heal, toward K (an incident's tries count toward the
    /// incident's K instead).
    unhealed: u32,
    /// The quiet window to apply on the next failed attempt.
    backoff: Duration,
    /// No restart before this (its own quiet window or hold).
    not_before: Option<MonoNs>,
    /// Healthy since (for the backoff reset).
    healthy_since: Option<MonoNs>,
    /// Escalated at (a notice given; until a confirmed recovery).
    escalated: Option<MonoNs>,
    /// `Escalate` still to be emitted.
    escalate_pending: bool,
    /// The new process got 401 before the supervisor answered.
    rejected_early: bool,
    /// The new process got a non-401 answer before the supervisor answered.
    accepted_early: bool,
    /// Canary restarts of it in the current incident (the rotation's order).
    tries: u32,
    /// Its owner (uid): restarts are one at a time per owner, and incidents are an owner's.
    owner: u32,
    /// When its latest restart began (ours handed out, or one by something else), until the
    /// new process gets 401, the restart fails or recovery ends: the detector's restart
    /// boundary.
    boundary: Option<MonoNs>,
}

impl State {
    fn new(backoff: Duration) -> Self {
        Self {
            backoff,
            ..Self::default()
        }
    }

    /// Whether it can open or join an incident: unhealed, not escalated on its own.
    fn joins(&self) -> bool {
        self.phase.unhealed() && self.escalated.is_none()
    }
}

/// A host-wide upstream incident: several instances latched in one window.
#[derive(Clone, Debug, Default)]
struct Incident {
    /// Whose instances it holds: another owner's latches are never held by it.
    owner: u32,
    opened: MonoNs,
    members: BTreeSet<InstanceId>,
    /// The member whose restart (or its confirmation) is awaited.
    canary: Option<InstanceId>,
    /// Canary restarts whose new process got 401 (restarts into the open window).
    tries: u32,
    /// The next quiet window.
    backoff: Duration,
    /// No canary try before this.
    not_before: Option<MonoNs>,
    /// Escalated at.
    escalated: Option<MonoNs>,
    escalate_pending: bool,
}

/// The recovery policy for all instances of a host: what is not one instance's (each call is
/// given the instances' states, a [`Table`]).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    config: PolicyConfig,
    /// The instance holding each owner's restart slot (one restart in flight per owner: a
    /// user whose own supervisor hangs delays only that user's restarts).
    in_flight: BTreeMap<u32, InstanceId>,
    incident: Option<Incident>,
    /// Actions decided by the calls since the last [`Policy::poll`].
    out: Vec<Action>,
    /// The time of the last [`Policy::poll`]: a deadline it has passed without acting waits
    /// for an event (the slot freeing), not for the clock.
    polled: MonoNs,
    /// No restart on the host before this: the fleet's hold (`MonoNs::MAX` while its alert
    /// fires), set by the core from [`crate::fleet::Fleet`].
    fleet_hold: Option<MonoNs>,
    /// The instances whose state is not empty, in order: an index into the table, so that a
    /// pass over the instances (each poll, each deadline) goes over those the policy heard of
    /// as it did when it kept their states itself, not over every record. Made in `entry`,
    /// dropped by [`Policy::forget`].
    heard: BTreeSet<InstanceId>,
}

/// What status shows of one instance's recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryView {
    /// Restarts since the last confirmed recovery.
    pub restarts: u32,
    /// No restart before this (its own quiet window, or the incident's next try).
    pub not_before: Option<MonoNs>,
    /// Escalated since (the instance's own escalation, or its incident's).
    pub escalated: Option<MonoNs>,
    /// Whether it is a member of the open incident.
    pub in_incident: bool,
    /// Whether it is the incident's canary now.
    pub canary: bool,
}

/// What status shows of the open incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentView {
    /// When it opened.
    pub opened: MonoNs,
    /// Its members.
    pub members: Vec<InstanceId>,
    /// The member whose restart is awaited.
    pub canary: Option<InstanceId>,
    /// Canary restarts that did not heal.
    pub tries: u32,
    /// The next canary try (when no canary is awaited).
    pub next_try: Option<MonoNs>,
    /// Escalated since.
    pub escalated: Option<MonoNs>,
}

impl Policy {
    /// An empty policy.
    #[must_use]
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Replaces the tunables (configuration reload); running windows keep their deadlines.
    /// With `give_up` turned off, the instances given up on are released: their next 401s
    /// open a window again.
    pub fn set_config(&mut self, t: &mut Table<impl Entry>, config: PolicyConfig) {
        for id in &self.heard {
            let Some(i) = get_mut(t, id) else { continue };
            if !config.give_up && i.phase == Phase::GaveUp {
                tracing::info!(instance = %id, "give_up is off: the instance given up on is watched again");
                *i = State::new(config.initial_backoff);
            }
        }
        if !config.canary
            && let Some(incident) = self.incident.take()
        {
            self.release(t, incident, None);
        }
        self.config = config;
    }

    /// What status shows of `instance`'s recovery.
    #[must_use]
    pub fn view(&self, instance: &InstanceId, state: &Instance) -> RecoveryView {
        let Some(i) = state.0.as_ref() else {
            return RecoveryView::default();
        };
        let incident = self
            .incident
            .as_ref()
            .filter(|inc| inc.members.contains(instance));
        let canary = incident.is_some_and(|inc| inc.canary.as_ref() == Some(instance));
        let not_before = match incident {
            Some(inc) if i.phase == Phase::Latched => {
                [inc.not_before, i.not_before].into_iter().flatten().max()
            }
            _ => i.not_before,
        };
        RecoveryView {
            restarts: i.restarts,
            not_before,
            escalated: i.escalated.or(incident.and_then(|inc| inc.escalated)),
            in_incident: incident.is_some(),
            canary,
        }
    }

    /// The open incident, if any.
    #[must_use]
    pub fn incident(&self) -> Option<IncidentView> {
        self.incident.as_ref().map(|inc| IncidentView {
            opened: inc.opened,
            members: inc.members.iter().cloned().collect(),
            canary: inc.canary.clone(),
            tries: inc.tries,
            next_try: inc.not_before.filter(|_| inc.canary.is_none()),
            escalated: inc.escalated,
        })
    }

    /// `instance`'s state in `t`, made if the policy had not heard of it.
    fn entry<'t>(&mut self, t: &'t mut Table<impl Entry>, instance: &InstanceId) -> &'t mut State {
        let initial = self.config.initial_backoff;
        let entry = t.entry(instance.clone()).or_insert_with(|| instance.into());
        entry.as_mut().0.get_or_insert_with(|| {
            self.heard.insert(instance.clone());
            State::new(initial)
        })
    }

    /// Instances other than `instance`, of the same owner, that can form an incident with it.
    fn joining_others(&self, t: &Table<impl Entry>, instance: &InstanceId) -> Vec<InstanceId> {
        let owner = get(t, instance).map_or(0, |i| i.owner);
        states(&self.heard, t)
            .filter(|(id, i)| *id != instance && i.owner == owner && i.joins())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn free_slot(&mut self, instance: &InstanceId) {
        self.in_flight.retain(|_, id| id != instance);
    }

    /// The owner (uid) of `instance`'s processes: restarts are one at a time per owner, and an
    /// incident holds only its owner's instances. Set before [`Policy::latched`].
    pub fn set_owner(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId, owner: u32) {
        self.entry(t, instance).owner = owner;
    }

    fn in_incident(&self, instance: &InstanceId) -> bool {
        self.incident
            .as_ref()
            .is_some_and(|inc| inc.members.contains(instance))
    }

    /// Whether `instance` has been unhealed for `escalate_after` at `now`.
    fn overdue(&self, since: Option<MonoNs>, now: MonoNs) -> bool {
        match (self.config.escalate_after, since) {
            (Some(after), Some(since)) => now >= since.saturating_add(ns(after)),
            _ => false,
        }
    }

    /// Escalates `instance` (its own notice), once.
    fn escalate(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId, now: MonoNs) {
        let give_up = self.config.give_up;
        let i = self.entry(t, instance);
        if i.escalated.is_some() {
            return;
        }
        i.escalated = Some(now);
        i.escalate_pending = true;
        if give_up {
            i.phase = Phase::GaveUp;
            i.not_before = None;
            i.boundary = None;
            self.free_slot(instance);
        }
        tracing::warn!(instance = %instance, restarts = i.restarts, give_up, "restarts did not heal: escalating");
    }

    /// A quiet window of `instance`'s own, starting `now`; the window grows for the next time.
    fn own_window(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId, now: MonoNs) {
        let max_backoff = self.config.max_backoff;
        let i = self.entry(t, instance);
        let until = now.saturating_add(ns(i.backoff));
        i.not_before = Some(until);
        i.backoff = (i.backoff * 2).min(max_backoff);
        tracing::info!(instance = %instance, wait_s = (until - now) / 1_000_000_000, "backing off before the next restart");
        self.out.push(Action::Backoff {
            instance: instance.clone(),
            until,
            incident: false,
        });
    }

    /// A restart of `instance` did not heal: its new process got 401 (the window is open).
    fn rejected(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId, now: MonoNs) {
        self.free_slot(instance);
        self.out.push(Action::Rejected {
            instance: instance.clone(),
        });
        let i = self.entry(t, instance);
        i.phase = Phase::Latched;
        i.latched_at = Some(now);
        let alone = i.escalated.is_some();
        if self.in_incident(instance) {
            self.incident_try_failed(t, instance, now);
            return;
        }
        let others = self.joining_others(t, instance);
        if self.config.canary && self.incident.is_none() && !alone && !others.is_empty() {
            // Rejected while others are latched too: an upstream incident, this rejection its
            // first try.
            self.open_incident(t, instance, others, now);
            self.incident_try_failed(t, instance, now);
            return;
        }
        let i = self.entry(t, instance);
        i.unhealed += 1;
        let (unhealed, since) = (i.unhealed, i.since);
        if !self.fleet_held() && (unhealed >= self.config.max_restarts || self.overdue(since, now))
        {
            self.escalate(t, instance, now);
        }
        if self.entry(t, instance).phase == Phase::Latched {
            self.own_window(t, instance, now);
        }
    }

    /// The incident's try with `canary` did not heal: one more rejected try, a quiet window.
    fn incident_try_failed(&mut self, t: &mut Table<impl Entry>, canary: &InstanceId, now: MonoNs) {
        let max_backoff = self.config.max_backoff;
        let k = self.config.max_restarts;
        let overdue = self
            .incident
            .as_ref()
            .is_some_and(|inc| self.overdue(Some(inc.opened), now));
        let Some(inc) = self.incident.as_mut() else {
            return;
        };
        if inc.canary.as_ref() == Some(canary) {
            inc.canary = None;
        }
        inc.tries += 1;
        let until = now.saturating_add(ns(inc.backoff));
        inc.not_before = Some(until);
        inc.backoff = (inc.backoff * 2).min(max_backoff);
        tracing::info!(canary = %canary, tries = inc.tries, wait_s = (until - now) / 1_000_000_000, "upstream window still open: quiet window before the incident's next try");
        self.out.push(Action::Backoff {
            instance: canary.clone(),
            until,
            incident: true,
        });
        if (inc.tries >= k || overdue) && !self.fleet_held() {
            self.escalate_incident(t, now);
        }
    }

    /// Escalates the open incident (one notice for all its members), once; with `give_up`
    /// its members are no longer restarted.
    fn escalate_incident(&mut self, t: &mut Table<impl Entry>, now: MonoNs) {
        let give_up = self.config.give_up;
        let Some(inc) = self.incident.as_mut() else {
            return;
        };
        if inc.escalated.is_some() {
            return;
        }
        inc.escalated = Some(now);
        inc.escalate_pending = true;
        tracing::warn!(
            tries = inc.tries,
            members = inc.members.len(),
            give_up,
            "upstream incident outlasts the restarts: escalating once for all its members"
        );
        if give_up {
            let members: Vec<InstanceId> = inc.members.iter().cloned().collect();
            for m in &members {
                let i = self.entry(t, m);
                i.phase = Phase::GaveUp;
                i.not_before = None;
                i.boundary = None;
                i.escalated.get_or_insert(now);
            }
        }
    }

    /// Opens an incident of `instance` and `others`, its schedule taken over from theirs.
    fn open_incident(
        &mut self,
        t: &mut Table<impl Entry>,
        instance: &InstanceId,
        others: Vec<InstanceId>,
        now: MonoNs,
    ) {
        let mut members: BTreeSet<InstanceId> = others.into_iter().collect();
        members.insert(instance.clone());
        let canary = self
            .in_flight
            .values()
            .find(|id| members.contains(*id))
            .cloned()
            .or_else(|| {
                members
                    .iter()
                    .find(|m| matches!(get(t, m).map(|i| i.phase), Some(Phase::Recovering { .. })))
                    .cloned()
            });
        let initial = self.config.initial_backoff;
        let mut inc = Incident {
            owner: get(t, instance).map_or(0, |i| i.owner),
            opened: now,
            members: members.clone(),
            canary: canary.clone(),
            backoff: initial,
            ..Incident::default()
        };
        // The members' evidence so far: the window they already waited for carries over.
        for m in &members {
            if let Some(i) = get_mut(t, m) {
                inc.tries = inc.tries.max(i.unhealed);
                inc.backoff = inc.backoff.max(i.backoff);
                inc.not_before = inc.not_before.max(i.not_before.filter(|t| *t > now));
                i.not_before = None;
                // A member already rejected in this window goes after those never tried.
                i.tries = u32::from(i.unhealed > 0);
            }
        }
        // The restart in flight is the incident's first try.
        if let Some(i) = canary.as_ref().and_then(|c| get_mut(t, c)) {
            i.tries = 1;
        }
        tracing::warn!(members = members.len(), canary = ?canary.as_ref().map(|c| c.name.as_str()), "upstream incident: several instances latched together; one canary restart per quiet window");
        self.out.push(Action::IncidentOpened {
            opened: now,
            members: members.into_iter().collect(),
            canary,
        });
        self.incident = Some(inc);
    }

    /// Closes incident `inc`: every member left waiting is released, to be restarted promptly
    /// (one at a time, each confirmed) and to fail on its own from now on.
    fn release(&mut self, t: &mut Table<impl Entry>, inc: Incident, healed_by: Option<InstanceId>) {
        let mut released = Vec::new();
        for m in &inc.members {
            if healed_by.as_ref() == Some(m) {
                continue;
            }
            if let Some(i) = get_mut(t, m) {
                // Its own hold (a supervisor that failed) stays; nothing else holds it back.
                i.tries = 0;
                if i.phase.unhealed() {
                    released.push(m.clone());
                }
            }
        }
        tracing::info!(healed_by = ?healed_by.as_ref().map(|h| h.name.as_str()), released = released.len(), tries = inc.tries, "upstream incident over");
        self.out.push(Action::IncidentClosed {
            opened: inc.opened,
            healed_by,
            released,
            tries: inc.tries,
        });
    }

    /// `instance` leaves the incident (healed, gone, held); the incident ends without members.
    fn leave_incident(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId) {
        let Some(inc) = self.incident.as_mut() else {
            return;
        };
        if !inc.members.remove(instance) {
            return;
        }
        if inc.canary.as_ref() == Some(instance) {
            inc.canary = None;
        }
        if inc.members.is_empty()
            && let Some(inc) = self.incident.take()
        {
            self.release(t, inc, None);
        }
    }

    /// The detector says `instance` is latched (its own requests keep getting 401).
    pub fn latched(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId, now: MonoNs) {
        let i = self.entry(t, instance);
        i.healthy_since = None;
        // Its old process counts again, as the new one does.
        i.boundary = None;
        match i.phase {
            Phase::Idle => {
                i.phase = Phase::Latched;
                i.latched_at = Some(now);
                i.since.get_or_insert(now);
                let alone = i.escalated.is_some();
                if !self.config.canary || alone {
                    return;
                }
                let owner = i.owner;
                if let Some(inc) = self.incident.as_mut() {
                    if inc.owner != owner {
                        // Another owner's incident holds only theirs.
                        return;
                    }
                    inc.members.insert(instance.clone());
                    let opened = inc.opened;
                    self.entry(t, instance).not_before = None;
                    tracing::info!(instance = %instance, "latched during an upstream incident: waiting for the canary");
                    self.out.push(Action::Joined {
                        opened,
                        instance: instance.clone(),
                    });
                    return;
                }
                let others = self.joining_others(t, instance);
                if !others.is_empty() {
                    self.open_incident(t, instance, others, now);
                }
            }
            // The new process got 401: the window is still open.
            Phase::Recovering { .. } => self.rejected(t, instance, now),
            // ... before the supervisor said the restart was done.
            Phase::Restarting { .. } => i.rejected_early = true,
            Phase::Latched | Phase::GaveUp => {}
        }
    }

    /// Something else restarted latched `id` (its process exited and a new one of the
    /// instance started): its restart boundary is `now`, and when it waits latched it is a
    /// restart as ours are, awaiting the new process's own answer, so a rejection counts
    /// toward the escalation (a restart of ours under way is the one that counts).
    pub fn restarted_elsewhere(&mut self, t: &mut Table<impl Entry>, id: &InstanceId, now: MonoNs) {
        let i = self.entry(t, id);
        i.boundary = Some(now);
        if i.phase == Phase::Latched {
            i.phase = Phase::Recovering { since: now };
            i.restarts += 1;
        }
    }

    /// The restart handed out for `instance` finished with `result` (the adapter's own result).
    /// Reports for an instance that is not restarting are ignored.
    pub fn restart_finished<O, E>(
        &mut self,
        t: &mut Table<impl Entry>,
        instance: &InstanceId,
        now: MonoNs,
        result: &Result<O, E>,
    ) {
        let Some(i) = get_mut(t, instance) else {
            return;
        };
        if result.is_err() {
            // It did not happen (even one that timed out already): the old process counts.
            i.boundary = None;
        }
        if !matches!(i.phase, Phase::Restarting { .. }) {
            return;
        }
        let rejected_early = std::mem::take(&mut i.rejected_early);
        let accepted_early = std::mem::take(&mut i.accepted_early);
        if result.is_ok() {
            i.phase = Phase::Recovering { since: now };
            i.restarts += 1;
            if accepted_early {
                self.recovered(t, instance, now);
            } else if rejected_early {
                self.rejected(t, instance, now);
            }
        } else {
            self.failed(t, instance, now);
        }
    }

    /// The supervisor failed (or the restart timed out): not a restart, and no evidence about
    /// the window; `instance` is held behind its own quiet window, and an incident's next try
    /// goes to another member.
    fn failed(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId, now: MonoNs) {
        self.free_slot(instance);
        let i = self.entry(t, instance);
        i.phase = Phase::Latched;
        i.latched_at.get_or_insert(now);
        if let Some(inc) = self.incident.as_mut()
            && inc.canary.as_ref() == Some(instance)
        {
            inc.canary = None;
        }
        self.own_window(t, instance, now);
    }

    /// Whether forgetting `instance` loses nothing recovery needs: idle with its backoff reset,
    /// or given up with its escalation announced (or never heard of), not holding the restart
    /// slot and not a member of an incident.
    #[must_use]
    pub fn at_rest(&self, instance: &InstanceId, state: &Instance) -> bool {
        !self.in_flight.values().any(|id| id == instance)
            && !self.in_incident(instance)
            && state.0.as_ref().is_none_or(|i| {
                !i.escalate_pending
                    && match i.phase {
                        Phase::Idle => i.healthy_since.is_none(),
                        Phase::GaveUp => true,
                        _ => false,
                    }
            })
    }

    /// Drops what is not `instance`'s own state (gone from `t` with it): its restart slot, its
    /// membership of the incident.
    pub fn forget(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId) {
        self.heard.remove(instance);
        self.free_slot(instance);
        self.leave_incident(t, instance);
    }

    /// Holds `instance` until its current traffic is seen again (a resumed episode too old to
    /// act on without a fresh 401): no restart until [`Policy::latched`] is called again.
    /// Restarts, quiet window and backoff are kept; the slot and its incident are left.
    pub fn hold(&mut self, t: &mut Table<impl Entry>, instance: &InstanceId) {
        let i = self.entry(t, instance);
        if i.phase.unhealed() {
            i.phase = Phase::Idle;
            i.latched_at = None;
        }
        self.free_slot(instance);
        self.leave_incident(t, instance);
    }

    /// `instance`'s process got a non-401 answer: a confirmed recovery when it was recovering
    /// (returns the time from the end of the restart), the end of an escalation, and, for a
    /// member of an incident whose restart it confirms, the end of the incident.
    pub fn recovered(
        &mut self,
        t: &mut Table<impl Entry>,
        instance: &InstanceId,
        now: MonoNs,
    ) -> Option<Duration> {
        let i = self.entry(t, instance);
        let time_to_recovery = match i.phase {
            Phase::Recovering { since } => Some(Duration::from_nanos(now.saturating_sub(since))),
            Phase::Restarting { .. } => {
                // The detector counts only processes started since the restart was handed
                // out: the new process answered before the supervisor did.
                i.accepted_early = true;
                i.boundary = None;
                return None;
            }
            _ => None,
        };
        i.boundary = None;
        i.phase = Phase::Idle;
        i.latched_at = None;
        i.since = None;
        i.restarts = 0;
        i.unhealed = 0;
        i.tries = 0;
        i.escalated = None;
        i.escalate_pending = false;
        i.not_before = None;
        i.healthy_since.get_or_insert(now);
        self.free_slot(instance);
        if time_to_recovery.is_some()
            && self.in_incident(instance)
            && let Some(mut inc) = self.incident.take()
        {
            // A restart healed a member: the window is closed for new sessions.
            inc.members.remove(instance);
            self.release(t, inc, Some(instance.clone()));
        } else {
            self.leave_incident(t, instance);
        }
        time_to_recovery
    }

    /// What to do at `now`: everything decided since the last call (quiet windows, notices,
    /// incidents), then the restart that is due (at most one in flight host-wide).
    /// [`Policy::next_deadline`] says when to poll again if nothing else happens.
    pub fn poll(&mut self, t: &mut Table<impl Entry>, now: MonoNs) -> Vec<Action> {
        self.polled = self.polled.max(now);
        let config = self.config.clone();
        let timeout = ns(config.restart_timeout);

        // A restart that holds the slot too long: the restart itself is a failure; an
        // unconfirmed recovery frees the slot (an incident's next try waits a quiet window).
        let in_flight: Vec<InstanceId> = self.in_flight.values().cloned().collect();
        for id in in_flight {
            match get(t, &id).map(|i| i.phase) {
                Some(Phase::Restarting { since }) if now >= since.saturating_add(timeout) => {
                    tracing::warn!(instance = %id, "restart timed out");
                    self.failed(t, &id, now);
                }
                Some(Phase::Recovering { since }) if now >= since.saturating_add(timeout) => {
                    self.free_slot(&id);
                    if let Some(inc) = self.incident.as_mut()
                        && inc.canary.as_ref() == Some(&id)
                    {
                        // No answer from the canary's new process: inconclusive.
                        inc.canary = None;
                        inc.not_before = Some(now.saturating_add(ns(inc.backoff)));
                    }
                }
                Some(Phase::Restarting { .. } | Phase::Recovering { .. }) => {}
                _ => self.free_slot(&id),
            }
        }

        let mut overdue = Vec::new();
        for id in &self.heard {
            let Some(i) = get_mut(t, id) else { continue };
            // A long enough healthy period forgets the backoff.
            if let Some(since) = i.healthy_since.filter(|_| i.phase == Phase::Idle)
                && now >= since.saturating_add(ns(config.healthy_reset))
            {
                i.backoff = config.initial_backoff;
                i.not_before = None;
                i.healthy_since = None;
            }
            if i.phase.unhealed() && i.escalated.is_none() {
                overdue.push((id.clone(), i.since));
            }
        }
        for (id, since) in overdue {
            if !self.fleet_held() && !self.in_incident(&id) && self.overdue(since, now) {
                self.escalate(t, &id, now);
            }
        }
        if !self.fleet_held()
            && self
                .incident
                .as_ref()
                .is_some_and(|inc| self.overdue(Some(inc.opened), now))
        {
            self.escalate_incident(t, now);
        }

        let mut actions = std::mem::take(&mut self.out);
        for id in &self.heard {
            let Some(i) = get_mut(t, id) else { continue };
            if i.escalate_pending {
                i.escalate_pending = false;
                actions.push(Action::Escalate {
                    instance: id.clone(),
                    restarts: i.restarts,
                    gave_up: i.phase == Phase::GaveUp,
                });
            }
        }
        if let Some(inc) = self.incident.as_mut()
            && inc.escalate_pending
        {
            inc.escalate_pending = false;
            let members: Vec<InstanceId> = inc.members.iter().cloned().collect();
            if let Some(canary) = inc.canary.clone().or_else(|| members.first().cloned()) {
                actions.push(Action::IncidentEscalated {
                    opened: inc.opened,
                    members,
                    canary,
                    tries: inc.tries,
                    gave_up: config.give_up,
                });
            }
            if config.give_up
                && let Some(inc) = self.incident.take()
            {
                self.release(t, inc, None);
                actions.append(&mut self.out);
            }
        }

        // One restart in flight per owner.
        while let Some(id) = self.due(t, now) {
            let in_incident = self.in_incident(&id);
            let i = self.entry(t, &id);
            i.phase = Phase::Restarting { since: now };
            i.boundary = Some(now);
            i.latched_at = None;
            let owner = i.owner;
            if in_incident {
                i.tries += 1;
                if let Some(inc) = self.incident.as_mut() {
                    inc.canary = Some(id.clone());
                }
            }
            self.in_flight.insert(owner, id.clone());
            actions.push(Action::Restart(id));
        }
        actions
    }

    /// The restart due at `now`: the oldest latch whose turn it is, an incident's member only
    /// as its canary (the fewest tries first) when the incident's next try is due.
    fn due(&self, t: &Table<impl Entry>, now: MonoNs) -> Option<InstanceId> {
        if self.fleet_hold.is_some_and(|until| now < until) {
            return None;
        }
        let ready = |i: &State| {
            i.phase == Phase::Latched
                && i.not_before.is_none_or(|t| t <= now)
                && !self.in_flight.contains_key(&i.owner)
        };
        let lone = states(&self.heard, t)
            .filter(|(id, i)| ready(i) && !self.in_incident(id))
            .map(|(id, i)| (i.latched_at, id));
        let canary = self
            .incident
            .as_ref()
            .filter(|inc| inc.canary.is_none() && inc.not_before.is_none_or(|t| t <= now))
            .and_then(|inc| {
                inc.members
                    .iter()
                    .filter_map(|m| get(t, m).map(|i| (m, i)))
                    .filter(|(_, i)| ready(i))
                    .min_by_key(|(m, i)| (i.tries, i.latched_at, *m))
                    .map(|(m, i)| (i.latched_at, m))
            });
        lone.chain(canary)
            .min_by_key(|(key, id)| (*key, *id))
            .map(|(_, id)| id.clone())
    }

    /// The earliest moment [`Policy::poll`] will do something the clock alone decides: the end
    /// of a restart's time limit, of a quiet window, of a healthy period that resets the
    /// backoff, or an `escalate_after`. `None` when only an event can change anything (a quiet
    /// window the last poll saw end, waiting for the slot, is such an event's to end).
    #[must_use]
    pub fn next_deadline(&self, t: &Table<impl Entry>) -> Option<MonoNs> {
        let timeout = ns(self.config.restart_timeout);
        let in_flight = self
            .in_flight
            .values()
            .filter_map(|id| get(t, id))
            .filter_map(|i| match i.phase {
                Phase::Restarting { since } | Phase::Recovering { since } => {
                    Some(since.saturating_add(timeout))
                }
                _ => None,
            })
            .min();
        let after = self.config.escalate_after.map(ns);
        let instances = states(&self.heard, t).flat_map(|(_, i)| {
            let clock = match i.phase {
                Phase::Idle => i
                    .healthy_since
                    .map(|t| t.saturating_add(ns(self.config.healthy_reset))),
                Phase::Latched => i.not_before,
                _ => None,
            };
            let escalation = after
                .filter(|_| i.phase.unhealed() && i.escalated.is_none())
                .and_then(|a| i.since.map(|s| s.saturating_add(a)));
            [clock, escalation]
        });
        let incident = self.incident.iter().flat_map(|inc| {
            [
                inc.not_before.filter(|_| inc.canary.is_none()),
                after
                    .filter(|_| inc.escalated.is_none())
                    .map(|a| inc.opened.saturating_add(a)),
            ]
        });
        let fleet = self.fleet_hold.filter(|t| *t < MonoNs::MAX);
        in_flight
            .into_iter()
            .chain(instances.flatten())
            .chain(incident.flatten())
            .chain(fleet)
            .filter(|t| *t > self.polled)
            .min()
    }

    /// The state to persist, with every deadline as wall-clock time.
    #[must_use]
    pub fn snapshot(&self, t: &Table<impl Entry>, clock: WallClock) -> PolicySnapshot {
        let wall = |t: MonoNs| clock.wall_ms(t);
        PolicySnapshot {
            config: self.config.clone(),
            instances: states(&self.heard, t)
                .map(|(id, i)| {
                    let phase = match i.phase {
                        Phase::Idle => SavedPhase::Idle,
                        Phase::Latched => SavedPhase::Latched,
                        Phase::Restarting { since } => SavedPhase::Restarting {
                            since_ms: wall(since),
                        },
                        Phase::Recovering { since } => SavedPhase::Recovering {
                            since_ms: wall(since),
                        },
                        Phase::GaveUp => SavedPhase::Escalated,
                    };
                    let saved = SavedInstance {
                        phase,
                        restarts: i.restarts,
                        backoff: i.backoff,
                        not_before_ms: i.not_before.map(wall),
                        healthy_since_ms: i.healthy_since.map(wall),
                        escalate_pending: i.escalate_pending,
                        source: Some(id.source),
                        unhealed: i.unhealed,
                        since_ms: i.since.map(wall),
                        escalated_ms: i.escalated.map(wall),
                        tries: i.tries,
                        owner: i.owner,
                    };
                    (id.name.clone(), saved)
                })
                .collect(),
            in_flight: None,
            restarting: self.in_flight.values().map(|id| id.name.clone()).collect(),
            incident: self.incident.as_ref().map(|inc| SavedIncident {
                owner: inc.owner,
                opened_ms: wall(inc.opened),
                members: inc.members.iter().map(|m| m.name.clone()).collect(),
                canary: inc.canary.as_ref().map(|c| c.name.clone()),
                tries: inc.tries,
                backoff: inc.backoff,
                not_before_ms: inc.not_before.map(wall),
                escalated_ms: inc.escalated.map(wall),
                escalate_pending: inc.escalate_pending,
            }),
        }
    }

    /// The policy saved by [`Policy::snapshot`] and the instances' states, its deadlines mapped
    /// back onto this process's monotonic clock. A restart that was running when the daemon stopped is taken as done and
    /// awaiting confirmation: it is not repeated. An instance given up on by an earlier
    /// version's escalation is retried like any other unless `give_up` is set.
    #[must_use]
    pub fn restore(snapshot: PolicySnapshot, now: MonoNs, clock: WallClock) -> (Self, Table) {
        let at = |ms: u64| clock.mono(ms);
        let give_up = snapshot.config.give_up;
        let mut in_flight = BTreeMap::new();
        let mut ids = BTreeMap::new();
        let instances: Table = snapshot
            .instances
            .into_iter()
            .filter(|(_, s)| give_up || s.phase != SavedPhase::Escalated)
            .map(|(name, s)| {
                let id = match s.source {
                    Some(source) => InstanceId { name, source },
                    // Earlier files: a unit name is the only kind that ends like one.
                    None if [".service", ".scope"].iter().any(|s| name.ends_with(s)) => {
                        InstanceId::unit(name)
                    }
                    None => InstanceId::from_saved(&name, None),
                };
                if snapshot.in_flight.as_deref() == Some(id.name.as_str())
                    || snapshot.restarting.contains(&id.name)
                {
                    in_flight.insert(s.owner, id.clone());
                }
                ids.insert(id.name.clone(), id.clone());
                let phase = match s.phase {
                    SavedPhase::Idle => Phase::Idle,
                    SavedPhase::Latched => Phase::Latched,
                    SavedPhase::Restarting { since_ms } | SavedPhase::Recovering { since_ms } => {
                        Phase::Recovering {
                            since: at(since_ms),
                        }
                    }
                    SavedPhase::Escalated => Phase::GaveUp,
                };
                let restarts = match s.phase {
                    SavedPhase::Restarting { .. } => s.restarts + 1,
                    _ => s.restarts,
                };
                let state = State {
                    phase,
                    latched_at: (phase == Phase::Latched).then_some(now),
                    since: s.since_ms.map(at).or(phase.unhealed().then_some(now)),
                    restarts,
                    unhealed: s
                        .unhealed
                        .max(if s.since_ms.is_none() { restarts } else { 0 }),
                    backoff: s.backoff,
                    not_before: s.not_before_ms.map(at),
                    healthy_since: s.healthy_since_ms.map(at),
                    escalated: s
                        .escalated_ms
                        .map(at)
                        .or((phase == Phase::GaveUp).then_some(now)),
                    escalate_pending: s.escalate_pending,
                    tries: s.tries,
                    owner: s.owner,
                    ..State::default()
                };
                (id, Instance(Some(state)))
            })
            .collect();
        let incident = snapshot.incident.and_then(|s| {
            let members: BTreeSet<InstanceId> = s
                .members
                .iter()
                .filter_map(|m| ids.get(m).cloned())
                .collect();
            (!members.is_empty()).then(|| Incident {
                owner: s.owner,
                opened: at(s.opened_ms),
                canary: s.canary.and_then(|c| ids.get(&c).cloned()),
                members,
                tries: s.tries,
                backoff: s.backoff,
                not_before: s.not_before_ms.map(at),
                escalated: s.escalated_ms.map(at),
                escalate_pending: s.escalate_pending,
            })
        });
        let policy = Self {
            in_flight,
            incident,
            heard: instances.keys().cloned().collect(),
            ..Self::new(snapshot.config)
        };
        (policy, instances)
    }

    /// The instances it heard of (the core's tests check the index against the records).
    #[cfg(test)]
    pub(crate) fn heard(&self) -> impl Iterator<Item = &InstanceId> {
        self.heard.iter()
    }

    /// Holds every restart of the host until `until` (`MonoNs::MAX`: until told otherwise;
    /// `None`: free). While held indefinitely, notices wait too: the fleet's alert is the page.
    pub fn set_fleet_hold(&mut self, until: Option<MonoNs>) {
        self.fleet_hold = until;
    }

    /// Whether the fleet holds the host indefinitely (its alert fires).
    fn fleet_held(&self) -> bool {
        self.fleet_hold == Some(MonoNs::MAX)
    }
}

/// The persisted policy: deadlines in milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    /// The configuration in force.
    pub config: PolicyConfig,
    /// Per-instance state.
    pub instances: BTreeMap<String, SavedInstance>,
    /// The instance holding the restart slot (files of earlier versions, one host-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<String>,
    /// The instances holding a restart slot (one per owner).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarting: Vec<String>,
    /// The open upstream incident (absent in files of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<SavedIncident>,
}

/// One instance's persisted state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedInstance {
    /// Its phase.
    pub phase: SavedPhase,
    /// Restarts since the last confirmed recovery.
    pub restarts: u32,
    /// The next quiet window.
    pub backoff: Duration,
    /// No restart before this wall time (ms since the epoch).
    pub not_before_ms: Option<u64>,
    /// Healthy since this wall time (ms since the epoch).
    pub healthy_since_ms: Option<u64>,
    /// An `Escalate` not yet emitted.
    pub escalate_pending: bool,
    /// How the instance's name was derived (absent in files written by earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IdSource>,
    /// Its own restarts that did not heal (toward K).
    #[serde(default)]
    pub unhealed: u32,
    /// Unhealed since (wall ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Escalated at (wall ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_ms: Option<u64>,
    /// Canary restarts of it in the open incident.
    #[serde(default)]
    pub tries: u32,
    /// Its owner (uid).
    #[serde(default)]
    pub owner: u32,
}

/// The persisted incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedIncident {
    /// Whose instances it holds (uid).
    #[serde(default)]
    pub owner: u32,
    /// Opened at (wall ms).
    pub opened_ms: u64,
    /// Its members' names.
    pub members: Vec<String>,
    /// The member whose restart was awaited.
    pub canary: Option<String>,
    /// Canary restarts that did not heal.
    pub tries: u32,
    /// The next quiet window.
    pub backoff: Duration,
    /// No canary try before this (wall ms).
    pub not_before_ms: Option<u64>,
    /// Escalated at (wall ms).
    pub escalated_ms: Option<u64>,
    /// An `IncidentEscalated` not yet emitted.
    pub escalate_pending: bool,
}

/// A persisted [`Phase`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum SavedPhase {
    /// Not latched.
    Idle,
    /// Waiting for its turn or quiet window.
    Latched,
    /// A restart was running (wall ms when handed out).
    Restarting {
        /// Wall ms.
        since_ms: u64,
    },
    /// Awaiting confirmation (wall ms when the restart finished).
    Recovering {
        /// Wall ms.
        since_ms: u64,
    },
    /// Restarts stopped (`give_up`, or an earlier version's escalation).
    Escalated,
}

#[cfg(test)]
mod tests;
