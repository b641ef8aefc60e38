//! What `claude-watch status` shows: a snapshot of the fleet the daemon publishes after every
//! change, served over the control socket as JSON, and [`merge`], the one place where the
//! processes, the detector and the recovery policy are joined into each instance's status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Watch;
use crate::detect::{MonoNs, State};
use crate::instance::Placement;

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
    /// New instances refused because too many were tracked ([`super::MAX_INSTANCES`]).
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

/// Every instance's status at `now`: live processes, detector state, recovery phase and
/// supervisor merged. The state is the detector's: the core keeps it in step with the policy
/// (an escalation, or a restored one, escalates the detector too).
pub(super) fn merge(watch: &Watch, now: MonoNs) -> Status {
    let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();
    for found in watch.procs.values() {
        let view = instances
            .entry(found.instance.name.clone())
            .or_insert_with(|| InstanceView {
                name: found.instance.name.clone(),
                unit: found.instance.unit_name().map(str::to_owned),
                state: "observed".into(),
                ..InstanceView::default()
            });
        view.pids.push(found.info.pid);
        view.binary = Some(found.info.exe.display().to_string());
        if let Some(why) = watch.unobserved.get(&found.info.pid) {
            view.unobserved = Some(why.clone());
        }
        if let Some(origin) = &found.info.env.plain_http_base {
            view.blind = Some(format!(
                "ANTHROPIC_BASE_URL is plain {origin}: its API calls never pass through TLS, so the probes cannot see them"
            ));
        } else if let Some(why) = watch.blind_reason(found.info.pid, now) {
            view.blind = Some(why);
        }
        if view.version.is_none() {
            view.version = found.version();
        }
    }
    let mut ids = BTreeMap::new();
    for found in watch.procs.values() {
        ids.insert(found.instance.name.clone(), found.instance.clone());
    }
    for s in watch.detector.statuses() {
        ids.insert(s.instance.name.clone(), s.instance.clone());
        let name = s.instance.name.clone();
        let view = instances
            .entry(name.clone())
            .or_insert_with(|| InstanceView {
                name: name.clone(),
                unit: s.instance.unit_name().map(str::to_owned),
                ..InstanceView::default()
            });
        view.state = s.state.as_str().to_owned();
        if s.state == State::Healthy && !watch.last_seen.contains_key(&s.instance) {
            // No answer of its own was ever seen: nothing says it is healthy.
            view.state = "observed".into();
        }
        view.session_id.clone_from(&s.session_id);
        if s.client_version.is_some() {
            view.version.clone_from(&s.client_version);
        }
        view.throttled.clone_from(&s.throttled);
        view.tier_throttle = s.tier_throttle;
        view.window_401s = s.window.as_ref().map(|w| w.count_401);
        view.episode = s
            .window
            .as_ref()
            .filter(|_| matches!(s.state, State::Latched | State::Recovering))
            .map(|w| w.id.clone());
        if let Some(last) = watch.last_seen.get(&s.instance) {
            view.last_status = Some(last.status);
            view.last_seen_ms = Some(last.ts_ms);
        }
    }
    let dry_run = watch.config.daemon.dry_run;
    let fleet = watch.fleet.as_ref().map(|f| {
        use super::fleet::FleetState;
        let (state, firing_since_ms, resume_at_ms) = match f.state() {
            FleetState::Waiting => ("waiting", None, None),
            FleetState::Clear => ("clear", None, None),
            FleetState::Held { since_ms, .. } => ("held", Some(*since_ms), None),
            FleetState::Resuming { until } => ("resuming", None, Some(watch.wall_ms(*until))),
            FleetState::Unreachable { .. } => ("unreachable", None, None),
        };
        FleetStatus {
            host: f.config().host.clone(),
            state: state.to_owned(),
            alert: f.config().alert.clone(),
            firing_since_ms,
            resume_at_ms,
            last_answer_ms: f.last_answer().map(|(t, _)| watch.wall_ms(*t)),
            answered_by: f.last_answer().map(|(_, from)| from.clone()),
            error: f.last_error().map(str::to_owned),
        }
    });
    let held = watch
        .fleet
        .as_ref()
        .is_some_and(|f| matches!(f.state(), super::fleet::FleetState::Held { .. }));
    let incident = watch.policy.incident().map(|i| IncidentStatus {
        id: watch.incident_id(i.opened),
        since_ms: watch.wall_ms(i.opened),
        members: i.members.iter().map(|m| m.name.clone()).collect(),
        canary: i.canary.map(|c| c.name),
        tries: i.tries,
        next_try_ms: i.next_try.map(|t| watch.wall_ms(t.max(now))),
        escalated_ms: i.escalated.map(|t| watch.wall_ms(t)),
    });
    for view in instances.values_mut() {
        view.pids.sort_unstable();
        view.pids.dedup();
        let Some(id) = ids.get(&view.name) else {
            continue;
        };
        let choice = watch.choice(id);
        if dry_run {
            view.supervisor = "dry-run".into();
            view.supervisor_reason = format!("dry run (would be {})", choice.reason);
        } else {
            view.supervisor = choice.supervisor.kind().into();
            view.supervisor_reason = choice.reason;
        }
        if let Some(Placement::ClaudeBg(bg)) = watch.placements.get(id) {
            let cwd = bg.cwd.as_ref().map(|c| c.display().to_string());
            if view.state == State::Escalated.as_str() {
                view.advice = Some(bg_escalation_advice(&bg.short_id, cwd.as_deref()));
            }
            view.background = Some(BackgroundView {
                short_id: bg.short_id.clone(),
                session_id: bg.session_id.clone(),
                name: bg.name.clone(),
                cwd,
            });
        }
        let recovery = watch.policy.view(id);
        view.restarts = recovery.restarts;
        if let Some(r) = watch.recoveries.get(id) {
            view.restarts_total = r.restarts;
            view.last_recovery_ms = r.last.map(|(ms, _)| ms);
            view.last_recovery = r.last.map(|(_, end)| end.to_string());
        }
        if view.blind.is_some() && matches!(view.state.as_str(), "observed" | "healthy") {
            // Its own answers cannot be seen (or no longer are): it says why, never healthy.
            view.state = "blind".into();
        }
        if view.pids.is_empty() {
            view.exited_ms = watch.idle_since.get(id).map(|t| watch.wall_ms(*t));
            if matches!(view.state.as_str(), "healthy" | "observed" | "suspect") {
                view.state = "exited".into();
            }
        }
        view.last_error = watch.restart_errors.get(id).cloned();
        view.backoff_until_ms = recovery
            .not_before
            .filter(|t| *t > now)
            .map(|t| watch.wall_ms(t));
        view.escalated_ms = recovery.escalated.map(|t| watch.wall_ms(t));
        if view.escalated_ms.is_some()
            && matches!(view.state.as_str(), "latched" | "recovering" | "suspect")
        {
            // A notice was given and restarts go on: escalated until a confirmed recovery,
            // whatever the restart in between (an alert on the state must not flap).
            view.state = State::Escalated.as_str().to_owned();
        }
        if recovery.in_incident {
            view.incident = incident.as_ref().map(|i| i.id.clone());
            view.canary = recovery.canary;
        }
        view.fleet_hold =
            held && matches!(view.state.as_str(), "latched" | "recovering" | "escalated");
        if view.binary.is_none() {
            view.binary = watch.binaries.get(id).cloned();
        }
    }
    Status {
        instances: instances.into_values().collect(),
        exchanges: watch.exchanges,
        dry_run,
        instances_refused: watch.refused,
        incident,
        fleet,
        last_rejected_ms: watch.last_rejected_ms,
    }
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
    pub over_budget_pids: Vec<crate::capture::probes::OverBudget>,
    /// Records (heads and execs of images not judged yet) the kernel dropped because their
    /// user went over its budget.
    #[serde(default)]
    pub over_user_budget: u64,
    /// Users over their budget, most dropped first (bounded).
    #[serde(default)]
    pub over_budget_users: Vec<crate::capture::probes::OverUserBudget>,
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
