//! The fleet's hold, sans-IO: what the fleet's Alertmanager last said about the incident alert
//! (fed by the daemon's poller as [`FleetAnswer`]s), turned into one decision the policy
//! obeys: may this host restart now?
//!
//! ```text
//!            answer: firing                      answer: clear
//!   Clear ─────────────────────► Held ──────────────────────────► Resuming ── stagger over ──► Clear
//!     ▲                            │  no answer for stale_after        (until now + this host's
//!     │                            ▼                                    offset in the stagger)
//!     └──── an answer ◄──── Unreachable (local behaviour, said) ◄──── no answer for stale_after
//! ```
//!
//! - While the alert fires, no restart on this host (every latched instance waits; notices wait
//!   too: the fleet's alert is the page).
//! - When it resolves, the host resumes after its own offset within the stagger, derived from
//!   its identity, so the hosts of a fleet do not restart in the same second; recovery is still
//!   confirmed by each instance's own answer.
//! - With no answer for `stale_after` the host falls back to its local behaviour, and says so:
//!   it never holds on an old answer. Until the first answer after the start the host holds
//!   for at most `stale_after`.

use std::time::Duration;

use crate::detect::MonoNs;
use crate::time::nanos as ns;

/// The fleet's tunables (`[fleet]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// This host's name (the stagger's key, and status).
    pub host: String,
    /// What the alert is, for people (`alertname="ClaudeFleetUpstreamIncident"`).
    pub alert: String,
    /// No answer for this long: local behaviour.
    pub stale_after: Duration,
    /// The hosts' resumption is spread over this long.
    pub stagger: Duration,
}

impl FleetConfig {
    /// This host's offset within the stagger: FNV-1a of its name, so every host of a fleet
    /// computes a different, stable one without asking anyone.
    #[must_use]
    pub fn offset(&self) -> Duration {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.host.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let ms = u64::try_from(self.stagger.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(if ms == 0 { 0 } else { h % ms })
    }
}

/// What the fleet's Alertmanager said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetAnswer {
    /// The incident alert fires.
    Firing {
        /// Which (its name and labels, for status and the journal).
        alert: String,
        /// Since when (wall ms, its `startsAt`).
        since_ms: u64,
        /// The Alertmanager that answered.
        from: String,
    },
    /// No incident alert is active.
    Clear {
        /// The Alertmanager that answered.
        from: String,
    },
    /// No Alertmanager answered.
    Unreachable {
        /// Why (each one tried).
        error: String,
    },
}

/// Where the host stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetState {
    /// Not asked yet since the start: holding for at most `stale_after`.
    Waiting,
    /// The alert does not fire: local behaviour.
    Clear,
    /// The alert fires: no restart.
    Held {
        /// The alert.
        alert: String,
        /// Firing since (wall ms).
        since_ms: u64,
    },
    /// The alert resolved: this host resumes at `until`.
    Resuming {
        /// The end of this host's offset.
        until: MonoNs,
    },
    /// No answer for `stale_after`: local behaviour.
    Unreachable,
}

/// A change worth saying (journal, log, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    /// The alert fires: restarts held.
    Held {
        /// The alert.
        alert: String,
        /// Firing since (wall ms).
        since_ms: u64,
    },
    /// The alert resolved: restarts resume at `until`.
    Resuming {
        /// When this host resumes.
        until: MonoNs,
    },
    /// No answer for `stale_after`: local behaviour.
    Unreachable {
        /// The last error.
        error: String,
    },
    /// An answer again after being unreachable.
    Reachable,
}

/// The fleet's hold for one host.
#[derive(Clone, Debug)]
pub struct Fleet {
    config: FleetConfig,
    state: FleetState,
    started: MonoNs,
    /// The last answer (monotonic) and who gave it.
    last_answer: Option<(MonoNs, String)>,
    /// The last error, when the last attempt failed.
    last_error: Option<String>,
}

impl Fleet {
    /// The hold of a host started at `now`.
    #[must_use]
    pub fn new(config: FleetConfig, now: MonoNs) -> Self {
        Self {
            config,
            state: FleetState::Waiting,
            started: now,
            last_answer: None,
            last_error: None,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Replaces the configuration (reload); the state stays.
    pub fn set_config(&mut self, config: FleetConfig) {
        self.config = config;
    }

    /// Where the host stands.
    #[must_use]
    pub fn state(&self) -> &FleetState {
        &self.state
    }

    /// The last answer: when (monotonic) and from which Alertmanager.
    #[must_use]
    pub fn last_answer(&self) -> Option<&(MonoNs, String)> {
        self.last_answer.as_ref()
    }

    /// Why the last attempt failed, when it did.
    #[must_use]
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// No restart on this host before this (`u64::MAX` while held); `None` when restarts are
    /// free.
    #[must_use]
    pub fn hold_until(&self) -> Option<MonoNs> {
        match self.state {
            FleetState::Held { .. } => Some(MonoNs::MAX),
            FleetState::Waiting => Some(self.started.saturating_add(ns(self.config.stale_after))),
            FleetState::Resuming { until } => Some(until),
            FleetState::Clear | FleetState::Unreachable => None,
        }
    }

    /// Whether the alert holds this host now.
    #[must_use]
    pub fn held(&self) -> bool {
        matches!(self.state, FleetState::Held { .. })
    }

    /// The Alertmanager's `answer` at `now`.
    pub fn answer(&mut self, now: MonoNs, answer: FleetAnswer) -> Vec<FleetEvent> {
        let mut out = Vec::new();
        let (firing, from) = match answer {
            FleetAnswer::Unreachable { error } => {
                self.last_error = Some(error);
                return self.tick(now);
            }
            FleetAnswer::Firing {
                alert,
                since_ms,
                from,
            } => (Some((alert, since_ms)), from),
            FleetAnswer::Clear { from } => (None, from),
        };
        if matches!(self.state, FleetState::Unreachable) {
            out.push(FleetEvent::Reachable);
        }
        self.last_answer = Some((now, from));
        self.last_error = None;
        match firing {
            Some((alert, since_ms)) => {
                if !self.held() {
                    out.push(FleetEvent::Held {
                        alert: alert.clone(),
                        since_ms,
                    });
                }
                self.state = FleetState::Held { alert, since_ms };
            }
            None => match self.state {
                FleetState::Held { .. } => {
                    let until = now.saturating_add(ns(self.config.offset()));
                    out.push(FleetEvent::Resuming { until });
                    self.state = FleetState::Resuming { until };
                }
                FleetState::Resuming { until } if now < until => {}
                _ => self.state = FleetState::Clear,
            },
        }
        out
    }

    /// The clock moved: a resumption whose offset passed is over; an answer too old is no
    /// answer (local behaviour, said once).
    pub fn tick(&mut self, now: MonoNs) -> Vec<FleetEvent> {
        let mut out = Vec::new();
        if let FleetState::Resuming { until } = self.state
            && now >= until
        {
            self.state = FleetState::Clear;
        }
        if now >= self.stale_at() && !matches!(self.state, FleetState::Unreachable) {
            let error = self
                .last_error
                .clone()
                .unwrap_or_else(|| "no answer".to_owned());
            out.push(FleetEvent::Unreachable { error });
            self.state = FleetState::Unreachable;
        }
        out
    }

    /// When the last answer (or, without one, the start) gets too old to go by.
    fn stale_at(&self) -> MonoNs {
        let last = self.last_answer.as_ref().map_or(self.started, |(t, _)| *t);
        last.saturating_add(ns(self.config.stale_after))
    }

    /// When the clock alone will next change something.
    #[must_use]
    pub fn next_deadline(&self) -> Option<MonoNs> {
        let stale = (!matches!(self.state, FleetState::Unreachable)).then(|| self.stale_at());
        let resume = match self.state {
            FleetState::Resuming { until } => Some(until),
            _ => None,
        };
        [stale, resume].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: MonoNs = 1_000_000_000;
    const T0: MonoNs = 1_000 * S;

    fn config(host: &str) -> FleetConfig {
        FleetConfig {
            host: host.into(),
            alert: "alertname=\"ClaudeFleetUpstreamIncident\"".into(),
            stale_after: Duration::from_secs(60),
            stagger: Duration::from_secs(120),
        }
    }

    fn firing() -> FleetAnswer {
        FleetAnswer::Firing {
            alert: "ClaudeFleetUpstreamIncident".into(),
            since_ms: 1_780_000_000_000,
            from: "http://am:9093".into(),
        }
    }

    fn clear() -> FleetAnswer {
        FleetAnswer::Clear {
            from: "http://am:9093".into(),
        }
    }

    #[test]
    fn a_firing_alert_holds_and_its_resolution_resumes_after_the_hosts_offset() {
        let mut f = Fleet::new(config("host-a"), T0);
        assert_eq!(
            f.hold_until(),
            Some(T0 + 60 * S),
            "held until a first answer"
        );
        assert!(f.answer(T0, clear()).is_empty());
        assert_eq!(f.hold_until(), None);
        let events = f.answer(T0 + S, firing());
        assert!(matches!(events[..], [FleetEvent::Held { .. }]));
        assert_eq!(f.hold_until(), Some(MonoNs::MAX));
        assert!(f.answer(T0 + 2 * S, firing()).is_empty(), "said once");
        let events = f.answer(T0 + 3 * S, clear());
        let offset = ns(config("host-a").offset());
        assert_eq!(
            events,
            [FleetEvent::Resuming {
                until: T0 + 3 * S + offset
            }]
        );
        assert_eq!(f.hold_until(), Some(T0 + 3 * S + offset));
        f.answer(T0 + 4 * S, clear());
        assert_eq!(
            f.hold_until(),
            Some(T0 + 3 * S + offset),
            "still its offset"
        );
        f.tick(T0 + 3 * S + offset);
        assert_eq!(f.hold_until(), None);
    }

    #[test]
    fn hosts_get_different_offsets_within_the_stagger() {
        let offsets: Vec<Duration> = (0..20)
            .map(|i| config(&format!("host-{i}")).offset())
            .collect();
        assert!(offsets.iter().all(|o| *o < Duration::from_secs(120)));
        let mut distinct = offsets.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 18, "{offsets:?}");
        let spread = distinct.last().unwrap().saturating_sub(distinct[0]);
        assert!(spread > Duration::from_secs(60), "{offsets:?}");
        assert_eq!(config("host-3").offset(), config("host-3").offset());
    }

    #[test]
    fn an_old_answer_never_holds_past_stale_after() {
        let mut f = Fleet::new(config("host-a"), T0);
        f.answer(T0, firing());
        assert_eq!(f.next_deadline(), Some(T0 + 60 * S));
        f.answer(
            T0 + 30 * S,
            FleetAnswer::Unreachable {
                error: "connection refused".into(),
            },
        );
        assert!(f.held(), "still within the bound");
        let events = f.tick(T0 + 60 * S);
        assert_eq!(
            events,
            [FleetEvent::Unreachable {
                error: "connection refused".into()
            }]
        );
        assert_eq!(f.hold_until(), None, "local behaviour");
        assert!(f.tick(T0 + 90 * S).is_empty(), "said once");
        let events = f.answer(T0 + 100 * S, firing());
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], FleetEvent::Reachable);
        assert!(f.held());
    }

    #[test]
    fn without_any_answer_the_start_holds_only_up_to_stale_after() {
        let mut f = Fleet::new(config("host-a"), T0);
        let events = f.tick(T0 + 60 * S);
        assert!(matches!(events[..], [FleetEvent::Unreachable { .. }]));
        assert_eq!(f.hold_until(), None);
    }
}
