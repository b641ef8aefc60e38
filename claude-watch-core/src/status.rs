//! What `claude-watch status` shows: a snapshot of the host the daemon publishes after every
//! change, served over the control socket as JSON, and each instance's view in it (the shell's
//! `watch::status::merge` joins processes, detector and policy into them).

use serde::{Deserialize, Serialize};

/// A live process that went over its record budget (from the kernel's `BUDGET` map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverBudget {
    /// The process.
    pub pid: u32,
    /// Records of it dropped so far.
    pub dropped: u64,
}

/// A user (not root) that went over its record budget (from the kernel's `USER_BUDGET` map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverUserBudget {
    /// The user.
    pub uid: u32,
    /// Records (heads and execs) of their processes dropped so far.
    pub dropped: u64,
}

/// The latest API answer of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastSeen {
    /// Its status.
    pub status: u16,
    /// When (wall ms).
    pub ts_ms: u64,
}

/// What the core publishes: every instance's view, and the exchange count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// One entry per instance, by name.
    pub instances: Vec<InstanceView>,
    /// Exchanges seen, of any process.
    pub exchanges: u64,
    /// Whether restarts are disabled.
    pub dry_run: bool,
    /// New instances refused because too many were tracked ([`crate::watch::MAX_INSTANCES`]).
    pub instances_refused: u64,
    /// The host's upstream incident, while one is open.
    pub incident: Option<IncidentStatus>,
    /// The fleet's hold, when `[fleet]` names an Alertmanager.
    pub fleet: Option<FleetStatus>,
    /// When a restart was last rejected (its new process got 401), wall ms.
    pub last_rejected_ms: Option<u64>,
}

/// The fleet's hold, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// This host's name in the fleet.
    pub host: String,
    /// `waiting` (no answer yet since the start), `clear`, `held`, `resuming` or
    /// `unreachable` (no answer for `stale_after`: local behaviour).
    pub state: String,
    /// The incident alert's matchers.
    pub alert: String,
    /// Held: the alert fires since (wall ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing_since_ms: Option<u64>,
    /// Resuming: this host's restarts resume at (wall ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at_ms: Option<u64>,
    /// The last answer (wall ms) and the Alertmanager that gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer_ms: Option<u64>,
    /// The Alertmanager that answered last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// Why the last attempt failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The host's upstream incident, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentStatus {
    /// `incident@<wall ms it opened>`, as in the journal.
    pub id: String,
    /// When it opened (ms since the epoch).
    pub since_ms: u64,
    /// The instances waiting in it.
    pub members: Vec<String>,
    /// The member whose restart is awaited now.
    pub canary: Option<String>,
    /// Canary restarts that did not heal (restarts into the open window).
    pub tries: u32,
    /// When the next canary restart is due (ms since the epoch), when none is awaited.
    pub next_try_ms: Option<u64>,
    /// When it was escalated (ms since the epoch): one notice for all its members.
    pub escalated_ms: Option<u64>,
}

/// Every state an instance can show, `observed` (no API call seen yet) first.
pub const STATES: [&str; 8] = [
    "observed",
    "healthy",
    "suspect",
    "latched",
    "recovering",
    "escalated",
    "blind",
    "exited",
];

/// The daemon's view of the host at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// claude-watch version.
    pub version: String,
    /// Daemon pid.
    pub pid: u32,
    /// When the daemon started (ms since the epoch).
    pub started_ms: u64,
    /// When this snapshot was taken.
    pub now_ms: u64,
    /// Whether restarts are disabled (`--dry-run`).
    pub dry_run: bool,
    /// The configuration file in use (`<built-in>` without one).
    pub config: String,
    /// Probe and pipeline counters.
    pub capture: CaptureView,
    /// One entry per instance, by name.
    pub instances: Vec<InstanceView>,
    /// New instances refused because too many were tracked (not watched; see the log).
    #[serde(default)]
    pub instances_refused: u64,
    /// The host's upstream incident, while one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentStatus>,
    /// The fleet's hold, when `[fleet]` names an Alertmanager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// Capture counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureView {
    /// Files (or processes) with probes attached.
    pub attachments: usize,
    /// HTTP heads the kernel sent.
    pub sent: u64,
    /// Records lost because the ring buffer was full.
    pub lost: u64,
    /// Exchanges seen.
    pub exchanges: u64,
    /// TLS buffers the kernel kept (not HTTP heads).
    #[serde(default)]
    pub skipped: u64,
    /// Read returns the kernel saw without their entry.
    #[serde(default)]
    pub orphan_returns: u64,
    /// Records the kernel dropped because their process went over its budget.
    #[serde(default)]
    pub over_budget: u64,
    /// Live processes over their budget, most dropped first (bounded).
    #[serde(default)]
    pub over_budget_pids: Vec<OverBudget>,
    /// Records (heads and execs of images not judged yet) the kernel dropped because their
    /// user went over its budget.
    #[serde(default)]
    pub over_user_budget: u64,
    /// Users over their budget, most dropped first (bounded).
    #[serde(default)]
    pub over_budget_users: Vec<OverUserBudget>,
    /// The attachment cap (`[daemon] max_attachments`).
    #[serde(default)]
    pub max_attachments: usize,
    /// Attachments refused for the cap since the start.
    #[serde(default)]
    pub refused_attachments: u64,
}

/// One instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Instance name (unit, rule name, or `pid:N`).
    pub name: String,
    /// systemd unit, when it lives in one.
    pub unit: Option<String>,
    /// Live pids.
    pub pids: Vec<u32>,
    /// Current `X-Claude-Code-Session-Id`.
    pub session_id: Option<String>,
    /// Claude Code version (from its User-Agent).
    pub version: Option<String>,
    /// The executable.
    pub binary: Option<String>,
    /// healthy (its own answers seen, the latest accepted), suspect, latched, recovering,
    /// escalated; `observed` for an instance whose answers were never seen (before its first
    /// API call, or not observable); `blind` for one whose answers cannot be seen (see
    /// [`Self::blind`]); `exited` for one whose processes all exited with nothing under way.
    pub state: String,
    /// Models currently answered with 429.
    pub throttled: Vec<String>,
    /// A throttled model while another model answers.
    pub tier_throttle: bool,
    /// Status of its latest API exchange.
    pub last_status: Option<u16>,
    /// When that was (ms since the epoch).
    pub last_seen_ms: Option<u64>,
    /// 401s in the open episode or suspect window.
    pub window_401s: Option<u64>,
    /// Id of the open episode.
    pub episode: Option<String>,
    /// Restarts since the last confirmed recovery.
    pub restarts: u32,
    /// Restarts made since the daemon started, healed or not.
    #[serde(default)]
    pub restarts_total: u32,
    /// The latest recovery since the daemon started: when (ms since the epoch)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recovery_ms: Option<u64>,
    /// ...and how: `self_recovered` or `recovered_after_restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recovery: Option<String>,
    /// When its last process exited (ms since the epoch), for an instance without a live
    /// process (state `exited` once nothing is under way; forgotten an hour later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_ms: Option<u64>,
    /// No restart before this (quiet window), ms since the epoch.
    pub backoff_until_ms: Option<u64>,
    /// How it would be restarted: systemd, command, signal, observe.
    pub supervisor: String,
    /// Why that supervisor: `auto → systemd (unit a.service in the system manager)`.
    #[serde(default)]
    pub supervisor_reason: String,
    /// Why its latest restart failed or was refused (until a restart succeeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was escalated (ms since the epoch), its own escalation or its incident's;
    /// until a confirmed recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_ms: Option<u64>,
    /// The upstream incident it waits in (its id), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// Whether it is that incident's canary (its restart is awaited now).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canary: bool,
    /// Whether the fleet's incident alert holds its restart now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet_hold: bool,
    /// Why its API traffic cannot be seen although probes are attached (its base URL is plain
    /// `http://`, so its requests never pass through TLS): state `blind`, never `healthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind: Option<String>,
    /// Why no probe could be attached to it (a binary or library that could not be
    /// verified): its traffic is not seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unobserved: Option<String>,
    /// A background session of Claude Code's own daemon (`claude --bg`): its short id, name
    /// and working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<BackgroundView>,
    /// What the operator can do when restarts did not heal it (set for escalated background
    /// sessions: a respawn keeps the session id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// A background session, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackgroundView {
    /// The short id (`claude agents`, `claude respawn <id>`).
    pub short_id: String,
    /// The session id, which `claude respawn` keeps.
    pub session_id: String,
    /// The session's name, when it has one.
    pub name: Option<String>,
    /// Its working directory.
    pub cwd: Option<String>,
}

/// What to tell the operator about an escalated background session: a respawn keeps the
/// session, so a latch bound upstream to the session id follows it.
#[must_use]
pub fn bg_escalation_advice(short_id: &str, cwd: Option<&str>) -> String {
    format!(
        "claude respawn keeps the session id, so a latch bound to the session survives it; \
         run `claude stop {short_id}` and start a new `claude --bg` session in {} (the \
         conversation is not carried over), or set fresh_session = true for claude-watch to \
         do that",
        cwd.unwrap_or("the same directory")
    )
}

impl InstanceView {
    /// `throttled(opus)` etc. appended to the state when models are throttled; `unobserved
    /// (why)` for an instance whose traffic cannot be seen.
    pub fn state_label(&self) -> String {
        if let Some(why) = &self.unobserved {
            return format!("unobserved ({why})");
        }
        if let (Some(why), "blind") = (&self.blind, self.state.as_str()) {
            return format!("blind ({why})");
        }
        if self.throttled.is_empty() {
            self.state.clone()
        } else {
            let what = if self.tier_throttle {
                "tier-throttled"
            } else {
                "throttled"
            };
            format!("{} {what}({})", self.state, self.throttled.join(","))
        }
    }
}
