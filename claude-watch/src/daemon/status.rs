//! What `claude-watch status` shows: a snapshot of the fleet the daemon publishes after every
//! change, served over the control socket as JSON.

use serde::{Deserialize, Serialize};

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
}

/// Capture counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureView {
    /// Files (or processes) with probes attached.
    pub attachments: usize,
    /// Records the kernel sent.
    pub sent: u64,
    /// Records lost because the ring buffer was full.
    pub lost: u64,
    /// Exchanges seen.
    pub exchanges: u64,
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
    /// healthy, suspect, latched, recovering, escalated (and `observed` for instances seen
    /// before their first API call).
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
    /// No restart before this (quiet window), ms since the epoch.
    pub backoff_until_ms: Option<u64>,
    /// How it would be restarted: systemd, command, signal, observe.
    pub supervisor: String,
    /// Why no probe could be attached to it (a binary or library that could not be
    /// verified): its traffic is not seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unobserved: Option<String>,
}

impl InstanceView {
    /// `throttled(opus)` etc. appended to the state when models are throttled; `unobserved
    /// (why)` for an instance whose traffic cannot be seen.
    pub fn state_label(&self) -> String {
        if let Some(why) = &self.unobserved {
            return format!("unobserved ({why})");
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
