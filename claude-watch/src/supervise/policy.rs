//! The recovery policy, sans-IO: fed what the detector and the restarter report plus a clock,
//! it answers with [`Action`]s. It never reads the time or touches a process itself.
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
//! - Supervisor failures are retried with the same backoff.
//! - [`Policy::snapshot`] / [`Policy::restore`] carry the state across a daemon restart with
//!   wall-clock deadlines, so a restarted daemon does not restart anything early.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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
    Restart(String),
    /// Run the escalation hook for this instance (emitted once per escalation).
    Escalate(String),
    /// Nothing more to do before this time: poll again then (or on the next event).
    Wait {
        /// When to poll next.
        until: Instant,
    },
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
        since: Instant,
    },
    /// Restarted; waiting for the new process's own answer.
    Recovering {
        /// When the restart finished.
        since: Instant,
    },
    /// Restarts stopped; waiting for a non-401 answer.
    Escalated,
}

#[derive(Clone, Debug)]
struct Instance {
    phase: Phase,
    /// When the instance entered `Latched` (for fairness: oldest first).
    latched_at: Option<Instant>,
    /// Restarts since the last confirmed recovery.
    restarts: u32,
    /// The quiet window to apply on the next failed attempt.
    backoff: Duration,
    /// No restart before this.
    not_before: Option<Instant>,
    /// Healthy since (for the backoff reset).
    healthy_since: Option<Instant>,
    /// `Escalate` still to be emitted.
    escalate_pending: bool,
}

/// The recovery policy for all instances of a host.
#[derive(Clone, Debug)]
pub struct Policy {
    config: PolicyConfig,
    instances: BTreeMap<String, Instance>,
    /// The instance holding the host-wide restart slot.
    in_flight: Option<String>,
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
    pub fn phase(&self, instance: &str) -> Option<Phase> {
        self.instances.get(instance).map(|i| i.phase)
    }

    /// Restarts of `instance` since its last confirmed recovery.
    #[must_use]
    pub fn restarts(&self, instance: &str) -> u32 {
        self.instances.get(instance).map_or(0, |i| i.restarts)
    }

    /// No restart of `instance` happens before this.
    #[must_use]
    pub fn not_before(&self, instance: &str) -> Option<Instant> {
        self.instances.get(instance).and_then(|i| i.not_before)
    }

    fn entry(&mut self, instance: &str) -> &mut Instance {
        let initial = self.config.initial_backoff;
        self.instances
            .entry(instance.to_owned())
            .or_insert_with(|| Instance {
                phase: Phase::Idle,
                latched_at: None,
                restarts: 0,
                backoff: initial,
                not_before: None,
                healthy_since: None,
                escalate_pending: false,
            })
    }

    fn release(&mut self, instance: &str) {
        if self.in_flight.as_deref() == Some(instance) {
            self.in_flight = None;
        }
    }

    /// Puts `instance` back in the queue behind a quiet window starting `now`, growing the
    /// window; escalates instead when it has had its `max_restarts`.
    fn back_off(&mut self, instance: &str, now: Instant) {
        let max_restarts = self.config.max_restarts;
        let max_backoff = self.config.max_backoff;
        let i = self.entry(instance);
        if i.restarts >= max_restarts {
            i.phase = Phase::Escalated;
            i.escalate_pending = true;
            i.not_before = None;
            tracing::warn!(
                instance,
                restarts = i.restarts,
                "restarts did not heal: escalating"
            );
        } else {
            i.phase = Phase::Latched;
            i.latched_at.get_or_insert(now);
            i.not_before = Some(now + i.backoff);
            tracing::info!(instance, wait = ?i.backoff, "backing off before the next restart");
            i.backoff = (i.backoff * 2).min(max_backoff);
        }
        self.release(instance);
    }

    /// The detector says `instance` is latched (its own requests keep getting 401).
    pub fn latched(&mut self, instance: &str, now: Instant) {
        let i = self.entry(instance);
        i.healthy_since = None;
        match i.phase {
            Phase::Idle => {
                i.phase = Phase::Latched;
                i.latched_at = Some(now);
            }
            // The new process got 401 again: the window is still open.
            Phase::Recovering { .. } => self.back_off(instance, now),
            Phase::Latched | Phase::Restarting { .. } | Phase::Escalated => {}
        }
    }

    /// The restart handed out for `instance` finished with `result` (the adapter's own result).
    /// Reports for an instance that is not restarting are ignored.
    pub fn restart_finished<T, E>(&mut self, instance: &str, now: Instant, result: &Result<T, E>) {
        let Some(i) = self.instances.get_mut(instance) else {
            return;
        };
        if !matches!(i.phase, Phase::Restarting { .. }) {
            return;
        }
        if result.is_ok() {
            i.phase = Phase::Recovering { since: now };
            i.restarts += 1;
        } else {
            // The supervisor failed: retry later with the same backoff, not counted as a restart.
            self.back_off(instance, now);
        }
    }

    /// `instance`'s process got a non-401 answer: a confirmed recovery when it was recovering
    /// (returns the time from the end of the restart), and the end of an escalation.
    pub fn recovered(&mut self, instance: &str, now: Instant) -> Option<Duration> {
        let i = self.entry(instance);
        let time_to_recovery = match i.phase {
            Phase::Recovering { since } => Some(now.saturating_duration_since(since)),
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

    /// What to do at `now`: restarts to run (at most one in flight host-wide), escalations to
    /// announce, and when to poll next.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut next: Option<Instant> = None;
        let mut wake = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        let config = self.config.clone();

        // A restart that holds the slot too long: the restart itself is a failure; an
        // unconfirmed recovery just frees the slot.
        if let Some(name) = self.in_flight.clone() {
            match self.instances.get(&name).map(|i| i.phase) {
                Some(Phase::Restarting { since }) if now >= since + config.restart_timeout => {
                    tracing::warn!(instance = %name, "restart timed out");
                    self.back_off(&name, now);
                }
                Some(Phase::Recovering { since }) if now >= since + config.restart_timeout => {
                    self.release(&name);
                }
                Some(Phase::Restarting { since } | Phase::Recovering { since }) => {
                    wake(since + config.restart_timeout);
                }
                _ => self.release(&name),
            }
        }

        for (name, i) in &mut self.instances {
            // A long enough healthy period forgets the backoff.
            if let Some(since) = i.healthy_since.filter(|_| i.phase == Phase::Idle) {
                if now >= since + config.healthy_reset {
                    i.backoff = config.initial_backoff;
                    i.not_before = None;
                    i.healthy_since = None;
                } else {
                    wake(since + config.healthy_reset);
                }
            }
            if i.escalate_pending {
                i.escalate_pending = false;
                actions.push(Action::Escalate(name.clone()));
            }
        }

        if self.in_flight.is_none() {
            let due = self
                .instances
                .iter()
                .filter(|(_, i)| i.phase == Phase::Latched)
                .filter(|(_, i)| i.not_before.is_none_or(|t| t <= now))
                .min_by_key(|(name, i)| (i.latched_at, name.as_str()))
                .map(|(name, _)| name.clone());
            if let Some(name) = due {
                let i = self.entry(&name);
                i.phase = Phase::Restarting { since: now };
                i.latched_at = None;
                self.in_flight = Some(name.clone());
                wake(now + config.restart_timeout);
                actions.push(Action::Restart(name));
            }
        }
        for i in self.instances.values() {
            if let Some(t) = i
                .not_before
                .filter(|t| i.phase == Phase::Latched && *t > now)
            {
                wake(t);
            }
        }
        if let Some(until) = next {
            actions.push(Action::Wait { until });
        }
        actions
    }

    /// The state to persist, with every deadline as wall-clock time (`now` and `wall_now` are
    /// the same moment on both clocks).
    #[must_use]
    pub fn snapshot(&self, now: Instant, wall_now: SystemTime) -> PolicySnapshot {
        let wall = |t: Instant| to_wall_ms(t, now, wall_now);
        PolicySnapshot {
            config: self.config.clone(),
            instances: self
                .instances
                .iter()
                .map(|(name, i)| {
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
                    };
                    (name.clone(), saved)
                })
                .collect(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// The policy saved by [`Policy::snapshot`], its deadlines mapped back onto this process's
    /// monotonic clock. A restart that was running when the daemon stopped is taken as done and
    /// awaiting confirmation: it is not repeated.
    #[must_use]
    pub fn restore(snapshot: PolicySnapshot, now: Instant, wall_now: SystemTime) -> Self {
        let at = |ms: u64| from_wall_ms(ms, now, wall_now);
        let instances = snapshot
            .instances
            .into_iter()
            .map(|(name, s)| {
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
                };
                (name, instance)
            })
            .collect();
        Self {
            config: snapshot.config,
            instances,
            in_flight: snapshot.in_flight,
        }
    }
}

fn to_wall_ms(t: Instant, now: Instant, wall_now: SystemTime) -> u64 {
    let wall_now_ms = wall_now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let ms = if t >= now {
        wall_now_ms + (t - now).as_millis()
    } else {
        wall_now_ms.saturating_sub((now - t).as_millis())
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn from_wall_ms(ms: u64, now: Instant, wall_now: SystemTime) -> Instant {
    let wall_now_ms = u64::try_from(
        wall_now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    if ms >= wall_now_ms {
        now + Duration::from_millis(ms - wall_now_ms)
    } else {
        now.checked_sub(Duration::from_millis(wall_now_ms - ms))
            .unwrap_or(now)
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

    const MIN: Duration = Duration::from_secs(60);

    fn restarts_of(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Restart(i) => Some(i.as_str()),
                _ => None,
            })
            .collect()
    }

    fn escalations_of(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Escalate(i) => Some(i.as_str()),
                _ => None,
            })
            .collect()
    }

    fn wait_of(actions: &[Action]) -> Option<Instant> {
        actions.iter().find_map(|a| match a {
            Action::Wait { until } => Some(*until),
            _ => None,
        })
    }

    /// Restart handed out and finished OK at `t`, then the new process latches again at `t`.
    fn restart_and_relatch(p: &mut Policy, name: &str, t: Instant) {
        assert_eq!(restarts_of(&p.poll(t)), [name], "a restart is due at {t:?}");
        p.restart_finished(name, t, &Ok::<(), ()>(()));
        p.latched(name, t);
    }

    #[test]
    fn first_latch_restarts_at_once_and_recovery_is_confirmed_by_the_new_process() {
        let t0 = Instant::now();
        let mut p = Policy::new(PolicyConfig::default());
        assert!(p.poll(t0).is_empty(), "nothing latched, nothing to do");
        p.latched("a", t0);
        assert_eq!(restarts_of(&p.poll(t0)), ["a"]);
        assert!(
            restarts_of(&p.poll(t0)).is_empty(),
            "restart handed out once"
        );
        p.restart_finished("a", t0 + Duration::from_secs(2), &Ok::<(), ()>(()));
        assert!(matches!(p.phase("a"), Some(Phase::Recovering { .. })));
        let ttr = p.recovered("a", t0 + Duration::from_secs(5));
        assert_eq!(ttr, Some(Duration::from_secs(3)));
        assert_eq!(p.phase("a"), Some(Phase::Idle));
        assert_eq!(p.restarts("a"), 0);
    }

    #[test]
    fn relatches_back_off_with_doubling_waits_up_to_the_cap() {
        let config = PolicyConfig {
            max_restarts: 100,
            max_backoff: 4 * MIN,
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(config);
        let mut t = Instant::now();
        p.latched("a", t);
        restart_and_relatch(&mut p, "a", t);
        let mut waits = Vec::new();
        for _ in 0..5 {
            let nb = p.not_before("a").expect("a quiet window after a relatch");
            waits.push(nb - t);
            // Inside the window: no restart, and a Wait until its end.
            let inside = p.poll(nb - Duration::from_secs(1));
            assert!(
                restarts_of(&inside).is_empty(),
                "no restart inside the window"
            );
            assert_eq!(wait_of(&inside), Some(nb));
            t = nb;
            restart_and_relatch(&mut p, "a", t);
        }
        assert_eq!(waits, [MIN, 2 * MIN, 4 * MIN, 4 * MIN, 4 * MIN]);
    }

    #[test]
    fn a_healthy_period_resets_the_backoff() {
        let mut p = Policy::new(PolicyConfig::default());
        let t0 = Instant::now();
        p.latched("a", t0);
        restart_and_relatch(&mut p, "a", t0);
        let t1 = p.not_before("a").unwrap();
        restart_and_relatch(&mut p, "a", t1);
        assert_eq!(p.not_before("a").unwrap() - t1, 2 * MIN);
        let t2 = p.not_before("a").unwrap();
        assert_eq!(restarts_of(&p.poll(t2)), ["a"]);
        p.restart_finished("a", t2, &Ok::<(), ()>(()));
        p.recovered("a", t2);
        // Healthy for less than the reset period: the backoff is remembered.
        p.poll(t2 + 5 * MIN);
        p.latched("a", t2 + 5 * MIN);
        restart_and_relatch(&mut p, "a", t2 + 5 * MIN);
        assert_eq!(p.not_before("a").unwrap() - (t2 + 5 * MIN), 4 * MIN);
        // Now healthy for 10 minutes: back to the first window.
        let t3 = p.not_before("a").unwrap();
        assert_eq!(restarts_of(&p.poll(t3)), ["a"]);
        p.restart_finished("a", t3, &Ok::<(), ()>(()));
        p.recovered("a", t3);
        p.poll(t3 + 10 * MIN);
        let t4 = t3 + 11 * MIN;
        p.latched("a", t4);
        restart_and_relatch(&mut p, "a", t4);
        assert_eq!(p.not_before("a").unwrap() - t4, MIN);
    }

    #[test]
    fn simultaneous_latches_are_restarted_one_at_a_time() {
        let mut p = Policy::new(PolicyConfig::default());
        let t0 = Instant::now();
        for (k, name) in ["c", "a", "b"].iter().enumerate() {
            p.latched(name, t0 + Duration::from_millis(k as u64));
        }
        let t = t0 + Duration::from_secs(1);
        assert_eq!(
            restarts_of(&p.poll(t)),
            ["c"],
            "oldest latch first, one only"
        );
        assert!(restarts_of(&p.poll(t)).is_empty(), "c still restarting");
        p.restart_finished("c", t, &Ok::<(), ()>(()));
        assert!(restarts_of(&p.poll(t)).is_empty(), "c not confirmed yet");
        p.recovered("c", t + Duration::from_secs(3));
        assert_eq!(restarts_of(&p.poll(t + Duration::from_secs(3))), ["a"]);
        // a's restart fails: the slot is released, b goes next, a backs off.
        p.restart_finished(
            "a",
            t + Duration::from_secs(4),
            &Err::<(), _>("unit not found"),
        );
        assert_eq!(restarts_of(&p.poll(t + Duration::from_secs(4))), ["b"]);
        assert_eq!(p.not_before("a"), Some(t + Duration::from_secs(4) + MIN));
        // b is never confirmed: after the restart timeout the slot frees, a waits for its window.
        let t5 = t + Duration::from_secs(5) + PolicyConfig::default().restart_timeout;
        p.restart_finished("b", t + Duration::from_secs(5), &Ok::<(), ()>(()));
        assert!(restarts_of(&p.poll(t5 - Duration::from_secs(1))).is_empty());
        assert_eq!(restarts_of(&p.poll(t5)), ["a"]);
    }

    #[test]
    fn restart_that_never_reports_times_out_and_is_retried_with_backoff() {
        let mut p = Policy::new(PolicyConfig::default());
        let t0 = Instant::now();
        p.latched("a", t0);
        assert_eq!(restarts_of(&p.poll(t0)), ["a"]);
        let timeout = p.config().restart_timeout;
        assert_eq!(
            wait_of(&p.poll(t0 + Duration::from_secs(1))),
            Some(t0 + timeout)
        );
        assert!(restarts_of(&p.poll(t0 + timeout)).is_empty());
        assert_eq!(p.phase("a"), Some(Phase::Latched));
        assert_eq!(p.not_before("a"), Some(t0 + timeout + MIN));
        // A late report of the abandoned restart changes nothing.
        p.restart_finished(
            "a",
            t0 + timeout + Duration::from_secs(1),
            &Ok::<(), ()>(()),
        );
        assert_eq!(p.phase("a"), Some(Phase::Latched));
        assert_eq!(restarts_of(&p.poll(t0 + timeout + MIN)), ["a"]);
        assert_eq!(p.restarts("a"), 0, "failed attempts are not restarts");
    }

    #[test]
    fn escalates_once_after_k_restarts_and_leaves_on_a_non_401() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut t = Instant::now();
        p.latched("a", t);
        for k in 1..=3 {
            restart_and_relatch(&mut p, "a", t);
            assert_eq!(p.restarts("a"), k);
            if k < 3 {
                t = p.not_before("a").unwrap();
            }
        }
        assert_eq!(p.phase("a"), Some(Phase::Escalated));
        let actions = p.poll(t);
        assert_eq!(escalations_of(&actions), ["a"]);
        assert!(restarts_of(&actions).is_empty());
        // Escalated: further latches and polls do nothing, hook once.
        p.latched("a", t + 60 * MIN);
        let later = p.poll(t + 120 * MIN);
        assert!(escalations_of(&later).is_empty() && restarts_of(&later).is_empty());
        // A non-401 answer leaves the escalated state; a new latch restarts again.
        assert_eq!(p.recovered("a", t + 121 * MIN), None);
        assert_eq!(p.phase("a"), Some(Phase::Idle));
        p.latched("a", t + 122 * MIN);
        assert_eq!(restarts_of(&p.poll(t + 122 * MIN)), ["a"]);
    }

    #[test]
    fn a_non_401_before_the_restart_cancels_it() {
        let mut p = Policy::new(PolicyConfig::default());
        let t0 = Instant::now();
        p.latched("a", t0);
        p.latched("b", t0 + Duration::from_millis(1));
        assert_eq!(restarts_of(&p.poll(t0)), ["a"]);
        p.recovered("b", t0 + Duration::from_secs(1));
        p.restart_finished("a", t0, &Ok::<(), ()>(()));
        p.recovered("a", t0 + Duration::from_secs(2));
        assert!(restarts_of(&p.poll(t0 + Duration::from_secs(2))).is_empty());
    }

    #[test]
    fn a_restored_policy_does_not_restart_early() {
        let mut p = Policy::new(PolicyConfig::default());
        let t0 = Instant::now();
        let wall0 = SystemTime::now();
        p.latched("a", t0);
        restart_and_relatch(&mut p, "a", t0);
        let t1 = p.not_before("a").unwrap();
        restart_and_relatch(&mut p, "a", t1);
        let deadline_wall = wall0 + (p.not_before("a").unwrap() - t0);
        let saved = serde_json::to_string(&p.snapshot(t0, wall0)).unwrap();

        // The daemon dies and comes back 30 s later (wall), on a fresh monotonic clock.
        let t_new = t0 + Duration::from_secs(5000);
        let wall_new = wall0 + Duration::from_secs(30);
        let snapshot: PolicySnapshot = serde_json::from_str(&saved).unwrap();
        let mut q = Policy::restore(snapshot, t_new, wall_new);
        let nb = q.not_before("a").unwrap();
        assert_eq!(nb, t_new + deadline_wall.duration_since(wall_new).unwrap());
        let early = q.poll(t_new);
        assert!(
            restarts_of(&early).is_empty(),
            "no restart before the saved window ends"
        );
        assert_eq!(wait_of(&early), Some(nb));
        assert!(restarts_of(&q.poll(nb - Duration::from_millis(1))).is_empty());
        assert_eq!(restarts_of(&q.poll(nb)), ["a"]);
        assert_eq!(q.restarts("a"), 2, "restart count survives");
    }

    #[test]
    fn a_restart_running_at_shutdown_is_not_repeated_after_restore() {
        let mut p = Policy::new(PolicyConfig::default());
        let t0 = Instant::now();
        let wall0 = SystemTime::now();
        p.latched("a", t0);
        assert_eq!(restarts_of(&p.poll(t0)), ["a"]);
        let mut q = Policy::restore(p.snapshot(t0, wall0), t0, wall0 + Duration::from_secs(1));
        assert!(restarts_of(&q.poll(t0 + Duration::from_secs(1))).is_empty());
        assert!(matches!(q.phase("a"), Some(Phase::Recovering { .. })));
        q.latched("a", t0 + Duration::from_secs(2));
        assert_eq!(q.not_before("a"), Some(t0 + Duration::from_secs(2) + MIN));
    }
}
