//! The record of one 401 episode, as the detector builds it and the journal stores it.

use serde::{Deserialize, Serialize};

/// How many request ids an episode keeps from its start and from its end.
pub const REQUEST_IDS_KEPT: usize = 5;

/// How many session ids, models and pids an episode keeps (the first ones of session ids and
/// models, the latest pids); the rest are only counted in [`Episode::not_kept`]. The values are
/// the observed process's to choose, and a latched instance re-journals its episode on every
/// 401.
pub const EPISODE_LIST_KEPT: usize = 16;

/// How an episode ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeEnd {
    /// Not ended (yet, or the daemon stopped before it ended).
    #[default]
    StillOpen,
    /// The instance's own process got a non-401 answer without any restart.
    SelfRecovered,
    /// After a restart, the new process's own request got a non-401 answer.
    RecoveredAfterRestart,
    /// The process exited (not through our restart) while latched.
    ProcessExited,
    /// The recovery layer escalated and gave up restarting (`give_up`).
    Escalated,
}

impl EpisodeEnd {
    /// Its name in the journal, reports and logs (as serde writes it).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StillOpen => "still_open",
            Self::SelfRecovered => "self_recovered",
            Self::RecoveredAfterRestart => "recovered_after_restart",
            Self::ProcessExited => "process_exited",
            Self::Escalated => "escalated",
        }
    }
}

impl std::fmt::Display for EpisodeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an episode comes from.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeSource {
    /// Seen live by the daemon (the default: journals written before this field existed hold
    /// only live episodes).
    #[default]
    Live,
    /// Rebuilt from Claude Code's session transcripts by `claude-watch episodes --import`.
    Transcript,
}

impl EpisodeSource {
    /// `live` or `transcript`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Transcript => "transcript",
        }
    }
}

/// One latch episode: from the first 401 of the window to its end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// Unique id: `<instance>@<first 401 wall ms>`; later snapshots of the same episode share it.
    pub id: String,
    /// Instance name.
    pub instance: String,
    /// systemd unit, when the instance is one.
    pub unit: Option<String>,
    /// PIDs whose 401s belong to the episode.
    pub pids: Vec<u32>,
    /// Session ids (`X-Claude-Code-Session-Id`) seen on its 401s.
    pub session_ids: Vec<String>,
    /// Models of its 401 requests.
    pub models: Vec<String>,
    /// Wall time (ms since epoch) of the first 401.
    pub first_401_ms: u64,
    /// Wall time of the last 401.
    pub last_401_ms: u64,
    /// Monotonic time (ns) of the first 401.
    pub first_401_mono_ns: u64,
    /// Monotonic time of the last 401.
    pub last_401_mono_ns: u64,
    /// Number of 401 answers in the episode.
    pub count_401: u64,
    /// Request ids of the first 401s (at most [`REQUEST_IDS_KEPT`]).
    pub first_request_ids: Vec<String>,
    /// Request ids of the latest 401s (at most [`REQUEST_IDS_KEPT`]; overlaps `first_*` when the
    /// episode is short).
    pub last_request_ids: Vec<String>,
    /// Time between the instance's previous API exchange and the first 401, in ms; `None` when
    /// no earlier exchange was seen.
    pub idle_before_ms: Option<u64>,
    /// Restarts attempted during the episode.
    pub restarts: u32,
    /// How it ended.
    pub end: EpisodeEnd,
    /// Wall time it ended (ms), when it has.
    pub ended_ms: Option<u64>,
    /// After a confirmed recovery: first non-401 time minus the (last) restart time, in ms.
    pub time_to_recovery_ms: Option<u64>,
    /// Wall time (ms) the instance was escalated during the episode (a notice: restarts went on
    /// unless `give_up`), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_ms: Option<u64>,
    /// The host whose daemon saw it (`[fleet] host`, the host name by default), so that the
    /// journals of a fleet make one report (absent in journals written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Where the episode comes from (`live` when absent, as in journals written before it).
    #[serde(default)]
    pub source: EpisodeSource,
    /// Claude Code version of the instance when the window opened (from `User-Agent:
    /// claude-cli/<version>`, or a transcript's `version`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// What the episode's lists did not keep, beyond [`EPISODE_LIST_KEPT`] (absent when
    /// nothing was left out).
    #[serde(default, skip_serializing_if = "NotKept::is_empty")]
    pub not_kept: NotKept,
}

/// 401s of an episode whose session id, model or pid its lists had no room left for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotKept {
    /// 401s whose session id was not among the kept ones (the list was full).
    pub session_ids: u64,
    /// 401s whose model was not among the kept ones.
    pub models: u64,
    /// Pids dropped from the list (the oldest first: the restart target is the newest).
    pub pids: u64,
}

impl NotKept {
    /// Whether nothing was left out.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Episode {
    /// Duration in ms: first 401 to the end, or to the last 401 while still open.
    pub fn duration_ms(&self) -> u64 {
        self.ended_ms
            .unwrap_or(self.last_401_ms)
            .saturating_sub(self.first_401_ms)
    }

    /// Whether the episode has ended.
    pub fn is_closed(&self) -> bool {
        self.end != EpisodeEnd::StillOpen
    }

    /// All request ids kept, first ones then last ones, without duplicates.
    pub fn request_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.first_request_ids.iter().map(String::as_str).collect();
        for id in &self.last_request_ids {
            if !ids.contains(&id.as_str()) {
                ids.push(id);
            }
        }
        ids
    }
}
