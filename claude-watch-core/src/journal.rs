//! The journal's records: what the daemon writes (episode snapshots, actions, incidents,
//! throttles) and what is read back from them. The shell's `journal` keeps the file (durable
//! appends, rotation, repair); here only the values.

use serde::{Deserialize, Serialize};

use crate::detect::{Episode, EpisodeSource};

/// What the recovery layer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// A restart was requested from the supervisor.
    Restart,
    /// A quiet-window wait before the next restart (see [`ActionRecord::until_ms`]).
    Backoff,
    /// Restarts stopped; the instance is escalated.
    Escalate,
    /// The configured escalation hook ran.
    Hook,
    /// The instance waits for an upstream incident's canary (see [`IncidentRecord`]): no
    /// restart of its own until a restart of the incident heals.
    Held,
    /// The coverage audit found the instance's process blind: traffic its probes do not see
    /// (the detail says what was seen). Nothing is done about it but saying so.
    Blind,
}

/// What happened to a host's upstream incident (several instances latched in one window,
/// probed by one canary restart per quiet window).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentEvent {
    /// Several instances latched together: the incident opened.
    Opened,
    /// One more instance latched during it.
    Joined,
    /// Its canary restarts did not heal for long: escalated, once for all members.
    Escalated,
    /// A restart healed (the window is closed: the others are restarted promptly), or no
    /// member was left.
    Closed,
}

/// A record of a host's upstream incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRecord {
    /// Wall time (ms since epoch) of the event.
    pub at_ms: u64,
    /// `incident@<wall ms it opened>`; every record of one incident shares it.
    pub id: String,
    /// What happened.
    pub event: IncidentEvent,
    /// Its members at the event (the instance that joined, for `joined`).
    pub members: Vec<String>,
    /// The canary: the member restarted to probe the window (for `closed`, the one that healed).
    pub canary: Option<String>,
    /// Canary restarts that did not heal so far (restarts into the open window).
    pub tries: u32,
    /// A sentence for people.
    pub detail: String,
}

/// An action of the recovery layer, journalled with its episode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Wall time (ms since epoch) of the action.
    pub at_ms: u64,
    /// Instance name.
    pub instance: String,
    /// The episode it belongs to, when there is one.
    pub episode_id: Option<String>,
    /// What was done.
    pub kind: ActionKind,
    /// Whether it succeeded (the supervisor accepted the restart, the hook exited 0...).
    pub ok: bool,
    /// For a backoff: wall time (ms) before which no restart may happen; persisted so a daemon
    /// restart does not restart early.
    pub until_ms: Option<u64>,
    /// Short human-readable detail (supervisor, error text); never credentials or bodies.
    pub detail: Option<String>,
}

/// A model throttle window of one instance: 429 `rate_limit_error` answers for one model, from
/// the first to the last, until that model answered again. Written by the transcript import (the
/// daemon shows throttles live and does not journal them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleRecord {
    /// Instance name.
    pub instance: String,
    /// Session id the 429s were answered on.
    pub session_id: Option<String>,
    /// The throttled model (`unknown` when the request's model was not known).
    pub model: String,
    /// Wall time (ms) of the first 429.
    pub first_429_ms: u64,
    /// Wall time of the last 429.
    pub last_429_ms: u64,
    /// Number of 429 answers.
    pub count_429: u64,
    /// Request ids of the first 429s (at most [`crate::detect::REQUEST_IDS_KEPT`]).
    pub request_ids: Vec<String>,
    /// Wall time the model answered again, when it did.
    pub ended_ms: Option<u64>,
    /// Where the throttle comes from.
    #[serde(default)]
    pub source: EpisodeSource,
}

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "record")]
#[expect(
    clippy::large_enum_variant,
    reason = "episode snapshots are most of the journal: boxing the common variant buys nothing"
)]
pub enum Record {
    /// A snapshot of an episode (opened, updated or closed: see `episode.end`).
    Episode {
        /// Wall time (ms) the snapshot was written.
        at_ms: u64,
        /// The episode.
        episode: Episode,
    },
    /// An action of the recovery layer.
    Action(ActionRecord),
    /// A model throttle window (see [`ThrottleRecord`]).
    Throttle(ThrottleRecord),
    /// An upstream incident of the host (see [`IncidentRecord`]).
    Incident(IncidentRecord),
}

/// The episodes in `records`: the latest snapshot of each episode id, ordered by first 401.
pub fn episodes(records: &[Record]) -> Vec<Episode> {
    let mut by_id: std::collections::HashMap<&str, &Episode> = std::collections::HashMap::new();
    for r in records {
        if let Record::Episode { episode, .. } = r {
            by_id.insert(episode.id.as_str(), episode);
        }
    }
    let mut eps: Vec<Episode> = by_id.into_values().cloned().collect();
    eps.sort_by(|a, b| (a.first_401_ms, &a.id).cmp(&(b.first_401_ms, &b.id)));
    eps
}

/// The throttle windows in `records`, without duplicates (same instance, session, model and
/// first 429), ordered by first 429.
pub fn throttles(records: &[Record]) -> Vec<ThrottleRecord> {
    let mut out: Vec<ThrottleRecord> = Vec::new();
    for r in records {
        if let Record::Throttle(t) = r
            && !out.iter().any(|o| {
                (&o.instance, &o.session_id, &o.model, o.first_429_ms)
                    == (&t.instance, &t.session_id, &t.model, t.first_429_ms)
            })
        {
            out.push(t.clone());
        }
    }
    out.sort_by(|a, b| (a.first_429_ms, &a.instance).cmp(&(b.first_429_ms, &b.instance)));
    out
}

/// The restarts in `records` (actions of kind [`ActionKind::Restart`]), oldest first.
pub fn restarts(records: &[Record]) -> Vec<ActionRecord> {
    let mut out: Vec<ActionRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Action(a) if a.kind == ActionKind::Restart => Some(a.clone()),
            _ => None,
        })
        .collect();
    out.sort_by_key(|a| a.at_ms);
    out
}
