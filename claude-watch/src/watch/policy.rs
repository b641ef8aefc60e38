//! The recovery policy, sans-IO: fed what the detector and the restarter report plus the
//! monotonic clock, it answers with [`Action`]s. It never reads the time or touches a process
//! itself; [`Policy::next_deadline`] says when the clock alone will change something.
//!
//! ```text
//!             latched                poll: slot free,           restart_finished(Ok)
//!   Idle ───────────────► Latched ── window over ──► Restarting ────────────────────► Recovering
//!    ▲                     ▲   ▲                         │                              │   │
//!    │                     │   └── restart_finished(Err) ┘ or restart_timeout           │   │
//!    │                     └──────────── latched (window still open): quiet window ─────┘   │
//!    │                                      (K restarts reached: Escalated instead)          │
//!    └──────────────── recovered (a non-401 of the new process) ───────────────────────────┘
//!    └──────────────── recovered ◄── Escalated (no restarts; Escalate once)
//! ```
//!
//! - The first latch of an instance is restarted as soon as no other restart is in flight.
//! - After a restart the instance is recovering until its new process gets a non-401 answer
//!   ([`Policy::recovered`]); a new latch instead means the upstream window is still open, so the
//!   next restart waits a quiet window that doubles each time up to a cap, and is reset after the
//!   instance stays healthy long enough.
//! - One restart is in flight host-wide: several instances latched together (an upstream
//!   incident) are restarted one at a time, the next one after the previous is confirmed, has
//!   failed, or has timed out.
//! - After `max_restarts` restarts without a confirmed recovery the instance is escalated: no
//!   more restarts, [`Action::Escalate`] once; a non-401 answer leaves the escalated state.
//! - Supervisor failures (and restarts that time out) are retried behind the same growing
//!   quiet window, and do not count as restarts.
//! - [`Policy::snapshot`] / [`Policy::restore`] carry the state across a daemon restart with
//!   wall-clock deadlines, so a restarted daemon does not restart anything early.
//!
//! Instances are keyed by [`InstanceId`] and time is [`MonoNs`], like the detector's.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detect::MonoNs;
use crate::instance::{IdSource, InstanceId};

/// A duration in nanoseconds, saturating.
fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
/// Tunables of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// The first quiet window, after the first restart that did not heal.
    pub initial_backoff: Duration,
    /// The largest quiet window.
    pub max_backoff: Duration,
    /// How long an instance must stay healthy for its backoff to reset.
    pub healthy_reset: Duration,
    /// Restarts without a confirmed recovery before the instance is escalated.
    pub max_restarts: u32,
    /// How long a restart (job plus confirmation) may hold the host-wide slot.
    pub restart_timeout: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30 * 60),
            healthy_reset: Duration::from_secs(10 * 60),
            max_restarts: 3,
            restart_timeout: Duration::from_secs(120),
        }
    }
}

/// What the daemon should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Restart this instance through its supervisor, then report [`Policy::restart_finished`].
    Restart(InstanceId),
    /// Run the escalation hook for this instance (emitted once per escalation).
    Escalate(InstanceId),
}

/// Where an instance stands in recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not latched.
    Idle,
    /// Latched, waiting for its turn or its quiet window.
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
    /// Restarts stopped; waiting for a non-401 answer.
    Escalated,
}

#[derive(Clone, Debug)]
struct Instance {
    phase: Phase,
    /// When the instance entered `Latched` (for fairness: oldest first).
    latched_at: Option<MonoNs>,
    /// Restarts since the last confirmed recovery.
    restarts: u32,
    /// The quiet window to apply on the next failed attempt.
    backoff: Duration,
    /// No restart before this.
    not_before: Option<MonoNs>,
    /// Healthy since (for the backoff reset).
    healthy_since: Option<MonoNs>,
    /// `Escalate` still to be emitted.
    escalate_pending: bool,
    /// The new process got 401 before the supervisor answered (its answer and the new
    /// process's first request race): the restart did not heal, said when the answer comes.
    rejected_early: bool,
}

/// The recovery policy for all instances of a host.
#[derive(Clone, Debug)]
pub struct Policy {
    config: PolicyConfig,
    instances: BTreeMap<InstanceId, Instance>,
    /// The instance holding the host-wide restart slot.
    in_flight: Option<InstanceId>,
}

impl Policy {
    /// An empty policy.
    #[must_use]
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            instances: BTreeMap::new(),
            in_flight: None,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Replaces the tunables (configuration reload); running windows keep their deadlines.
    pub fn set_config(&mut self, config: PolicyConfig) {
        self.config = config;
    }

    /// The phase of `instance`, `None` when the policy has never heard of it.
    #[must_use]
    pub fn phase(&self, instance: &InstanceId) -> Option<Phase> {
        self.instances.get(instance).map(|i| i.phase)
    }

    /// Restarts of `instance` since its last confirmed recovery.
    #[must_use]
    pub fn restarts(&self, instance: &InstanceId) -> u32 {
        self.instances.get(instance).map_or(0, |i| i.restarts)
    }

    /// The instances restarts gave up on (waiting for a non-401 answer).
    pub fn escalated(&self) -> impl Iterator<Item = &InstanceId> {
        self.instances
            .iter()
            .filter(|(_, i)| i.phase == Phase::Escalated)
            .map(|(id, _)| id)
    }

    /// No restart of `instance` happens before this.
    #[must_use]
    pub fn not_before(&self, instance: &InstanceId) -> Option<MonoNs> {
        self.instances.get(instance).and_then(|i| i.not_before)
    }

    fn entry(&mut self, instance: &InstanceId) -> &mut Instance {
        let initial = self.config.initial_backoff;
        self.instances
            .entry(instance.clone())
            .or_insert_with(|| Instance {
                phase: Phase::Idle,
                latched_at: None,
                restarts: 0,
                backoff: initial,
                not_before: None,
                healthy_since: None,
                escalate_pending: false,
                rejected_early: false,
            })
    }

    fn release(&mut self, instance: &InstanceId) {
        if self.in_flight.as_ref() == Some(instance) {
            self.in_flight = None;
        }
    }

    /// Puts `instance` back in the queue behind a quiet window starting `now`, growing the
    /// window; escalates instead when it has had its `max_restarts`.
    fn back_off(&mut self, instance: &InstanceId, now: MonoNs) {
        let max_restarts = self.config.max_restarts;
        let max_backoff = self.config.max_backoff;
        let i = self.entry(instance);
        if i.restarts >= max_restarts {
            i.phase = Phase::Escalated;
            i.escalate_pending = true;
            i.not_before = None;
            tracing::warn!(
                instance = %instance,
                restarts = i.restarts,
                "restarts did not heal: escalating"
            );
        } else {
            i.phase = Phase::Latched;
            i.latched_at.get_or_insert(now);
            i.not_before = Some(now.saturating_add(ns(i.backoff)));
            tracing::info!(instance = %instance, wait = ?i.backoff, "backing off before the next restart");
            i.backoff = (i.backoff * 2).min(max_backoff);
        }
        self.release(instance);
    }

    /// The detector says `instance` is latched (its own requests keep getting 401).
    pub fn latched(&mut self, instance: &InstanceId, now: MonoNs) {
        let i = self.entry(instance);
        i.healthy_since = None;
        match i.phase {
            Phase::Idle => {
                i.phase = Phase::Latched;
                i.latched_at = Some(now);
            }
            // The new process got 401 again: the window is still open.
            Phase::Recovering { .. } => self.back_off(instance, now),
            // ... before the supervisor said the restart was done.
            Phase::Restarting { .. } => i.rejected_early = true,
            Phase::Latched | Phase::Escalated => {}
        }
    }

    /// The restart handed out for `instance` finished with `result` (the adapter's own result).
    /// Reports for an instance that is not restarting are ignored.
    pub fn restart_finished<T, E>(
        &mut self,
        instance: &InstanceId,
        now: MonoNs,
        result: &Result<T, E>,
    ) {
        let Some(i) = self.instances.get_mut(instance) else {
            return;
        };
        if !matches!(i.phase, Phase::Restarting { .. }) {
            return;
        }
        let rejected_early = std::mem::take(&mut i.rejected_early);
        if result.is_ok() {
            i.phase = Phase::Recovering { since: now };
            i.restarts += 1;
            if rejected_early {
                self.back_off(instance, now);
            }
        } else {
            // The supervisor failed: retry later with the same backoff, not counted as a restart.
            self.back_off(instance, now);
        }
    }

    /// Whether forgetting `instance` loses nothing recovery needs: idle with its backoff reset,
    /// or escalated with its escalation announced (or never heard of), and not holding the
    /// restart slot.
    #[must_use]
    pub fn at_rest(&self, instance: &InstanceId) -> bool {
        self.in_flight.as_ref() != Some(instance)
            && self.instances.get(instance).is_none_or(|i| {
                !i.escalate_pending
                    && match i.phase {
                        Phase::Idle => i.healthy_since.is_none(),
                        Phase::Escalated => true,
                        _ => false,
                    }
            })
    }

    /// The instances the policy keeps state for.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceId> {
        self.instances.keys()
    }

    /// Drops everything known about `instance` (a `pid:` instance whose process exited).
    pub fn forget(&mut self, instance: &InstanceId) {
        self.instances.remove(instance);
        self.release(instance);
    }

    /// Holds `instance` until its current traffic is seen again (a resumed episode too old to
    /// act on without a fresh 401): no restart until [`Policy::latched`] is called again.
    /// Restarts, quiet window and backoff are kept; the slot is released.
    pub fn hold(&mut self, instance: &InstanceId) {
        let i = self.entry(instance);
        if matches!(
            i.phase,
            Phase::Latched | Phase::Restarting { .. } | Phase::Recovering { .. }
        ) {
            i.phase = Phase::Idle;
            i.latched_at = None;
        }
        self.release(instance);
    }

    /// `instance`'s process got a non-401 answer: a confirmed recovery when it was recovering
    /// (returns the time from the end of the restart), and the end of an escalation.
    pub fn recovered(&mut self, instance: &InstanceId, now: MonoNs) -> Option<Duration> {
        let i = self.entry(instance);
        let time_to_recovery = match i.phase {
            Phase::Recovering { since } => Some(Duration::from_nanos(now.saturating_sub(since))),
            _ => None,
        };
        if matches!(i.phase, Phase::Restarting { .. }) {
            // An answer of the old process while the restart runs proves nothing about the new.
            return None;
        }
        i.phase = Phase::Idle;
        i.latched_at = None;
        i.restarts = 0;
        i.escalate_pending = false;
        i.healthy_since.get_or_insert(now);
        self.release(instance);
        time_to_recovery
    }

    /// What to do at `now`: restarts to run (at most one in flight host-wide) and escalations
    /// to announce. [`Policy::next_deadline`] says when to poll again if nothing else happens.
    pub fn poll(&mut self, now: MonoNs) -> Vec<Action> {
        let mut actions = Vec::new();
        let config = self.config.clone();
        let timeout = ns(config.restart_timeout);

        // A restart that holds the slot too long: the restart itself is a failure; an
        // unconfirmed recovery just frees the slot.
        if let Some(id) = self.in_flight.clone() {
            match self.instances.get(&id).map(|i| i.phase) {
                Some(Phase::Restarting { since }) if now >= since.saturating_add(timeout) => {
                    tracing::warn!(instance = %id, "restart timed out");
                    self.back_off(&id, now);
                }
                Some(Phase::Recovering { since }) if now >= since.saturating_add(timeout) => {
                    self.release(&id);
                }
                Some(Phase::Restarting { .. } | Phase::Recovering { .. }) => {}
                _ => self.release(&id),
            }
        }

        for (id, i) in &mut self.instances {
            // A long enough healthy period forgets the backoff.
            if let Some(since) = i.healthy_since.filter(|_| i.phase == Phase::Idle)
                && now >= since.saturating_add(ns(config.healthy_reset))
            {
                i.backoff = config.initial_backoff;
                i.not_before = None;
                i.healthy_since = None;
            }
            if i.escalate_pending {
                i.escalate_pending = false;
                actions.push(Action::Escalate(id.clone()));
            }
        }

        if self.in_flight.is_none() {
            let due = self
                .instances
                .iter()
                .filter(|(_, i)| i.phase == Phase::Latched)
                .filter(|(_, i)| i.not_before.is_none_or(|t| t <= now))
                .min_by_key(|(id, i)| (i.latched_at, *id))
                .map(|(id, _)| id.clone());
            if let Some(id) = due {
                let i = self.entry(&id);
                i.phase = Phase::Restarting { since: now };
                i.latched_at = None;
                self.in_flight = Some(id.clone());
                actions.push(Action::Restart(id));
            }
        }
        actions
    }

    /// The earliest moment [`Policy::poll`] will do something the clock alone decides: the end
    /// of a restart's time limit, of a quiet window, or of a healthy period that resets the
    /// backoff. `None` when only an event can change anything.
    #[must_use]
    pub fn next_deadline(&self) -> Option<MonoNs> {
        let timeout = ns(self.config.restart_timeout);
        let in_flight = self
            .in_flight
            .as_ref()
            .and_then(|id| self.instances.get(id))
            .and_then(|i| match i.phase {
                Phase::Restarting { since } | Phase::Recovering { since } => {
                    Some(since.saturating_add(timeout))
                }
                _ => None,
            });
        let instances = self.instances.values().filter_map(|i| match i.phase {
            Phase::Idle => i
                .healthy_since
                .map(|t| t.saturating_add(ns(self.config.healthy_reset))),
            Phase::Latched => i.not_before,
            _ => None,
        });
        in_flight.into_iter().chain(instances).min()
    }

    /// The state to persist, with every deadline as wall-clock time (`now` and `wall_now_ms`
    /// are the same moment on both clocks).
    #[must_use]
    pub fn snapshot(&self, now: MonoNs, wall_now_ms: u64) -> PolicySnapshot {
        let wall = |t: MonoNs| to_wall_ms(t, now, wall_now_ms);
        PolicySnapshot {
            config: self.config.clone(),
            instances: self
                .instances
                .iter()
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
                        Phase::Escalated => SavedPhase::Escalated,
                    };
                    let saved = SavedInstance {
                        phase,
                        restarts: i.restarts,
                        backoff: i.backoff,
                        not_before_ms: i.not_before.map(wall),
                        healthy_since_ms: i.healthy_since.map(wall),
                        escalate_pending: i.escalate_pending,
                        source: Some(id.source),
                    };
                    (id.name.clone(), saved)
                })
                .collect(),
            in_flight: self.in_flight.as_ref().map(|id| id.name.clone()),
        }
    }

    /// The policy saved by [`Policy::snapshot`], its deadlines mapped back onto this process's
    /// monotonic clock. A restart that was running when the daemon stopped is taken as done and
    /// awaiting confirmation: it is not repeated.
    #[must_use]
    pub fn restore(snapshot: PolicySnapshot, now: MonoNs, wall_now_ms: u64) -> Self {
        let at = |ms: u64| from_wall_ms(ms, now, wall_now_ms);
        let mut in_flight = None;
        let instances = snapshot
            .instances
            .into_iter()
            .map(|(name, s)| {
                let id = match s.source {
                    Some(source) => InstanceId { name, source },
                    // Earlier files: a unit name is the only kind that ends like one.
                    None if [".service", ".scope"].iter().any(|s| name.ends_with(s)) => {
                        InstanceId::unit(name)
                    }
                    None => InstanceId::from_saved(&name, None),
                };
                if snapshot.in_flight.as_deref() == Some(id.name.as_str()) {
                    in_flight = Some(id.clone());
                }
                let phase = match s.phase {
                    SavedPhase::Idle => Phase::Idle,
                    SavedPhase::Latched => Phase::Latched,
                    SavedPhase::Restarting { since_ms } | SavedPhase::Recovering { since_ms } => {
                        Phase::Recovering {
                            since: at(since_ms),
                        }
                    }
                    SavedPhase::Escalated => Phase::Escalated,
                };
                let restarts = match s.phase {
                    SavedPhase::Restarting { .. } => s.restarts + 1,
                    _ => s.restarts,
                };
                let instance = Instance {
                    phase,
                    latched_at: (phase == Phase::Latched).then_some(now),
                    restarts,
                    backoff: s.backoff,
                    not_before: s.not_before_ms.map(at),
                    healthy_since: s.healthy_since_ms.map(at),
                    escalate_pending: s.escalate_pending,
                    rejected_early: false,
                };
                (id, instance)
            })
            .collect();
        Self {
            config: snapshot.config,
            instances,
            in_flight,
        }
    }
}

fn to_wall_ms(t: MonoNs, now: MonoNs, wall_now_ms: u64) -> u64 {
    if t >= now {
        wall_now_ms.saturating_add((t - now) / 1_000_000)
    } else {
        wall_now_ms.saturating_sub((now - t) / 1_000_000)
    }
}

fn from_wall_ms(ms: u64, now: MonoNs, wall_now_ms: u64) -> MonoNs {
    if ms >= wall_now_ms {
        now.saturating_add((ms - wall_now_ms).saturating_mul(1_000_000))
    } else {
        now.saturating_sub((wall_now_ms - ms).saturating_mul(1_000_000))
    }
}

/// The persisted policy: deadlines in milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    /// The configuration in force.
    pub config: PolicyConfig,
    /// Per-instance state.
    pub instances: BTreeMap<String, SavedInstance>,
    /// The instance holding the host-wide restart slot.
    pub in_flight: Option<String>,
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
    /// Restarts stopped.
    Escalated,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: MonoNs = 1_000_000_000;
    const MIN: MonoNs = 60 * S;
    /// A fake monotonic start, far from zero so subtractions stay meaningful.
    const T0: MonoNs = 10_000 * S;

    fn id(name: &str) -> InstanceId {
        InstanceId::rule(name)
    }

    fn restarts_of(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Restart(i) => Some(i.name.as_str()),
                Action::Escalate(_) => None,
            })
            .collect()
    }

    fn escalations_of(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Escalate(i) => Some(i.name.as_str()),
                Action::Restart(_) => None,
            })
            .collect()
    }

    /// Restart handed out and finished OK at `t`, then the new process latches again at `t`.
    fn restart_and_relatch(p: &mut Policy, name: &str, t: MonoNs) {
        assert_eq!(restarts_of(&p.poll(t)), [name], "a restart is due at {t}");
        p.restart_finished(&id(name), t, &Ok::<(), ()>(()));
        p.latched(&id(name), t);
    }

    #[test]
    fn first_latch_restarts_at_once_and_recovery_is_confirmed_by_the_new_process() {
        let a = id("a");
        let mut p = Policy::new(PolicyConfig::default());
        assert!(p.poll(T0).is_empty(), "nothing latched, nothing to do");
        assert_eq!(p.next_deadline(), None);
        p.latched(&a, T0);
        assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
        assert!(
            restarts_of(&p.poll(T0)).is_empty(),
            "restart handed out once"
        );
        p.restart_finished(&a, T0 + 2 * S, &Ok::<(), ()>(()));
        assert!(matches!(p.phase(&a), Some(Phase::Recovering { .. })));
        let ttr = p.recovered(&a, T0 + 5 * S);
        assert_eq!(ttr, Some(Duration::from_secs(3)));
        assert_eq!(p.phase(&a), Some(Phase::Idle));
        assert_eq!(p.restarts(&a), 0);
    }

    #[test]
    fn relatches_back_off_with_doubling_waits_up_to_the_cap() {
        let config = PolicyConfig {
            max_restarts: 100,
            max_backoff: Duration::from_secs(4 * 60),
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(config);
        let mut t = T0;
        p.latched(&id("a"), t);
        restart_and_relatch(&mut p, "a", t);
        let mut waits = Vec::new();
        for _ in 0..5 {
            let nb = p
                .not_before(&id("a"))
                .expect("a quiet window after a relatch");
            waits.push(nb - t);
            // Inside the window: no restart, and the window's end is the next deadline.
            let inside = p.poll(nb - S);
            assert!(
                restarts_of(&inside).is_empty(),
                "no restart inside the window"
            );
            assert_eq!(p.next_deadline(), Some(nb));
            t = nb;
            restart_and_relatch(&mut p, "a", t);
        }
        assert_eq!(waits, [MIN, 2 * MIN, 4 * MIN, 4 * MIN, 4 * MIN]);
    }

    #[test]
    fn a_healthy_period_resets_the_backoff() {
        let a = id("a");
        let mut p = Policy::new(PolicyConfig::default());
        p.latched(&a, T0);
        restart_and_relatch(&mut p, "a", T0);
        let t1 = p.not_before(&a).unwrap();
        restart_and_relatch(&mut p, "a", t1);
        assert_eq!(p.not_before(&a).unwrap() - t1, 2 * MIN);
        let t2 = p.not_before(&a).unwrap();
        assert_eq!(restarts_of(&p.poll(t2)), ["a"]);
        p.restart_finished(&a, t2, &Ok::<(), ()>(()));
        p.recovered(&a, t2);
        // Healthy for less than the reset period: the backoff is remembered.
        p.poll(t2 + 5 * MIN);
        p.latched(&a, t2 + 5 * MIN);
        restart_and_relatch(&mut p, "a", t2 + 5 * MIN);
        assert_eq!(p.not_before(&a).unwrap() - (t2 + 5 * MIN), 4 * MIN);
        // Now healthy for 10 minutes: back to the first window.
        let t3 = p.not_before(&a).unwrap();
        assert_eq!(restarts_of(&p.poll(t3)), ["a"]);
        p.restart_finished(&a, t3, &Ok::<(), ()>(()));
        p.recovered(&a, t3);
        assert_eq!(
            p.next_deadline(),
            Some(t3 + 10 * MIN),
            "the reset is a deadline"
        );
        p.poll(t3 + 10 * MIN);
        let t4 = t3 + 11 * MIN;
        p.latched(&a, t4);
        restart_and_relatch(&mut p, "a", t4);
        assert_eq!(p.not_before(&a).unwrap() - t4, MIN);
    }

    #[test]
    fn simultaneous_latches_are_restarted_one_at_a_time() {
        let mut p = Policy::new(PolicyConfig::default());
        for (k, name) in ["c", "a", "b"].iter().enumerate() {
            p.latched(&id(name), T0 + k as u64 * 1_000_000);
        }
        let t = T0 + S;
        assert_eq!(
            restarts_of(&p.poll(t)),
            ["c"],
            "oldest latch first, one only"
        );
        assert!(restarts_of(&p.poll(t)).is_empty(), "c still restarting");
        p.restart_finished(&id("c"), t, &Ok::<(), ()>(()));
        assert!(restarts_of(&p.poll(t)).is_empty(), "c not confirmed yet");
        p.recovered(&id("c"), t + 3 * S);
        assert_eq!(restarts_of(&p.poll(t + 3 * S)), ["a"]);
        // a's restart fails: the slot is released, b goes next, a backs off.
        p.restart_finished(&id("a"), t + 4 * S, &Err::<(), _>("unit not found"));
        assert_eq!(restarts_of(&p.poll(t + 4 * S)), ["b"]);
        assert_eq!(p.not_before(&id("a")), Some(t + 4 * S + MIN));
        // b is never confirmed: after the restart timeout the slot frees, a waits for its window.
        let timeout = ns(PolicyConfig::default().restart_timeout);
        let t5 = t + 5 * S + timeout;
        p.restart_finished(&id("b"), t + 5 * S, &Ok::<(), ()>(()));
        assert!(restarts_of(&p.poll(t5 - S)).is_empty());
        assert_eq!(restarts_of(&p.poll(t5)), ["a"]);
    }

    #[test]
    fn restart_that_never_reports_times_out_and_is_retried_with_backoff() {
        let a = id("a");
        let mut p = Policy::new(PolicyConfig::default());
        p.latched(&a, T0);
        assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
        let timeout = ns(p.config().restart_timeout);
        p.poll(T0 + S);
        assert_eq!(p.next_deadline(), Some(T0 + timeout));
        assert!(restarts_of(&p.poll(T0 + timeout)).is_empty());
        assert_eq!(p.phase(&a), Some(Phase::Latched));
        assert_eq!(p.not_before(&a), Some(T0 + timeout + MIN));
        // A late report of the abandoned restart changes nothing.
        p.restart_finished(&a, T0 + timeout + S, &Ok::<(), ()>(()));
        assert_eq!(p.phase(&a), Some(Phase::Latched));
        assert_eq!(restarts_of(&p.poll(T0 + timeout + MIN)), ["a"]);
        assert_eq!(p.restarts(&a), 0, "failed attempts are not restarts");
    }

    #[test]
    fn escalates_once_after_k_restarts_and_leaves_on_a_non_401() {
        let a = id("a");
        let mut p = Policy::new(PolicyConfig::default());
        let mut t = T0;
        p.latched(&a, t);
        for k in 1..=3 {
            restart_and_relatch(&mut p, "a", t);
            assert_eq!(p.restarts(&a), k);
            if k < 3 {
                t = p.not_before(&a).unwrap();
            }
        }
        assert_eq!(p.phase(&a), Some(Phase::Escalated));
        let actions = p.poll(t);
        assert_eq!(escalations_of(&actions), ["a"]);
        assert!(restarts_of(&actions).is_empty());
        // Escalated: further latches and polls do nothing, hook once.
        p.latched(&a, t + 60 * MIN);
        let later = p.poll(t + 120 * MIN);
        assert!(later.is_empty(), "{later:?}");
        // A non-401 answer leaves the escalated state; a new latch restarts again.
        assert_eq!(p.recovered(&a, t + 121 * MIN), None);
        assert_eq!(p.phase(&a), Some(Phase::Idle));
        p.latched(&a, t + 122 * MIN);
        assert_eq!(restarts_of(&p.poll(t + 122 * MIN)), ["a"]);
    }

    #[test]
    fn a_non_401_before_the_restart_cancels_it() {
        let mut p = Policy::new(PolicyConfig::default());
        p.latched(&id("a"), T0);
        p.latched(&id("b"), T0 + 1_000_000);
        assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
        p.recovered(&id("b"), T0 + S);
        p.restart_finished(&id("a"), T0, &Ok::<(), ()>(()));
        p.recovered(&id("a"), T0 + 2 * S);
        assert!(restarts_of(&p.poll(T0 + 2 * S)).is_empty());
    }

    #[test]
    fn a_restored_policy_does_not_restart_early() {
        let a = id("a");
        let mut p = Policy::new(PolicyConfig::default());
        let wall0: u64 = 1_780_000_000_000;
        p.latched(&a, T0);
        restart_and_relatch(&mut p, "a", T0);
        let t1 = p.not_before(&a).unwrap();
        restart_and_relatch(&mut p, "a", t1);
        let deadline_wall = wall0 + (p.not_before(&a).unwrap() - T0) / 1_000_000;
        let saved = serde_json::to_string(&p.snapshot(T0, wall0)).unwrap();

        // The daemon dies and comes back 30 s later (wall), on a fresh monotonic clock.
        let t_new = T0 + 5000 * S;
        let wall_new = wall0 + 30_000;
        let snapshot: PolicySnapshot = serde_json::from_str(&saved).unwrap();
        let mut q = Policy::restore(snapshot, t_new, wall_new);
        let nb = q.not_before(&a).unwrap();
        assert_eq!(nb, t_new + (deadline_wall - wall_new) * 1_000_000);
        let early = q.poll(t_new);
        assert!(
            restarts_of(&early).is_empty(),
            "no restart before the saved window ends"
        );
        assert_eq!(q.next_deadline(), Some(nb));
        assert!(restarts_of(&q.poll(nb - 1_000_000)).is_empty());
        assert_eq!(restarts_of(&q.poll(nb)), ["a"]);
        assert_eq!(q.restarts(&a), 2, "restart count survives");
    }

    #[test]
    fn a_restart_running_at_shutdown_is_not_repeated_after_restore() {
        let a = id("a");
        let mut p = Policy::new(PolicyConfig::default());
        let wall0: u64 = 1_780_000_000_000;
        p.latched(&a, T0);
        assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
        let mut q = Policy::restore(p.snapshot(T0, wall0), T0, wall0 + 1000);
        assert!(restarts_of(&q.poll(T0 + S)).is_empty());
        assert!(matches!(q.phase(&a), Some(Phase::Recovering { .. })));
        q.latched(&a, T0 + 2 * S);
        assert_eq!(q.not_before(&a), Some(T0 + 2 * S + MIN));
    }

    #[test]
    fn state_files_of_earlier_versions_name_units_and_rules() {
        let old = r#"{"config":{"initial_backoff":{"secs":60,"nanos":0},"max_backoff":{"secs":1800,"nanos":0},"healthy_reset":{"secs":600,"nanos":0},"max_restarts":3,"restart_timeout":{"secs":120,"nanos":0}},"instances":{"agent.service":{"phase":{"phase":"escalated"},"restarts":3,"backoff":{"secs":240,"nanos":0},"not_before_ms":null,"healthy_since_ms":null,"escalate_pending":false},"nightly":{"phase":{"phase":"idle"},"restarts":0,"backoff":{"secs":60,"nanos":0},"not_before_ms":null,"healthy_since_ms":null,"escalate_pending":false}},"in_flight":null}"#;
        let q = Policy::restore(serde_json::from_str(old).unwrap(), T0, 1_780_000_000_000);
        assert_eq!(
            q.phase(&InstanceId::unit("agent.service")),
            Some(Phase::Escalated)
        );
        assert_eq!(q.phase(&InstanceId::rule("nightly")), Some(Phase::Idle));
    }
}
