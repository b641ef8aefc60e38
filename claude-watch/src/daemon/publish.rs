//! The core's metric events and status rendered for the Prometheus registry: names, help texts
//! and labels live here, decisions do not.

use std::collections::BTreeMap;

use super::metrics::{Metrics, labels};
use crate::capture::probes::KernelStats;
use crate::watch::Metric;
use crate::watch::status::{STATES, Status};

/// Counts or observes one metric event of the core.
pub(super) fn record(m: &Metrics, metric: &Metric) {
    let of_agent = |agent: &str| labels(&[("agent", agent)]);
    let ((name, help), labels) = match metric {
        Metric::Exchange {
            agent,
            status,
            model,
        } => (
            EXCHANGES,
            labels(&[
                ("agent", agent),
                ("status", &status.to_string()),
                ("model", model),
            ]),
        ),
        Metric::EpisodeOpened { agent } => (EPISODES, of_agent(agent)),
        Metric::Restart { agent, ok } => {
            let result = if *ok { "ok" } else { "error" };
            (RESTARTS, labels(&[("agent", agent), ("result", result)]))
        }
        Metric::Recovery { agent } => (RECOVERIES, of_agent(agent)),
        Metric::Escalation { agent } => (ESCALATIONS, of_agent(agent)),
        Metric::RestartRejected { agent } => (REJECTED, of_agent(agent)),
        Metric::IncidentOpened => (INCIDENTS, String::new()),
        Metric::IncidentEscalated => (INCIDENT_ESCALATIONS, String::new()),
        Metric::InstanceRefused => (INSTANCES_REFUSED, String::new()),
        Metric::DetectionSeconds(s) => return m.observe(DETECTION.0, DETECTION.1, *s),
        Metric::RecoverySeconds(s) => return m.observe(RECOVERY.0, RECOVERY.1, *s),
        Metric::Forgotten { agent } => return m.forget_agent(agent),
    };
    m.inc(name, help, labels, 1.0);
}

/// What the capture path reports besides the status: the kernel's counters and the
/// attachments.
pub(super) struct CaptureFigures<'a> {
    /// The kernel's counters.
    pub stats: &'a KernelStats,
    /// Attachments in place.
    pub attachments: usize,
    /// The attachment cap.
    pub max_attachments: usize,
    /// Attachments refused for the cap since the start.
    pub refused_attachments: u64,
    /// Live processes over their record budget.
    pub over_budget_processes: usize,
    /// Users over their record budget.
    pub over_budget_users: usize,
    /// Files whose verdict (Claude Code or not) discovery keeps, and files it read.
    pub files: (usize, u64),
    /// Images the kernel's exec filter knows not to be Claude Code (`None`: the filter is off).
    pub exec_images: Option<usize>,
    /// The last coverage audit: how long it took, over how many processes.
    pub audit: (std::time::Duration, usize),
}

/// Refreshes the gauges from the published status and the kernel's counters.
pub(super) fn gauges(m: &Metrics, status: &Status, capture: &CaptureFigures<'_>) {
    let throttled: BTreeMap<String, f64> = status
        .instances
        .iter()
        .flat_map(|v| {
            v.throttled
                .iter()
                .map(move |model| (labels(&[("agent", &v.name), ("model", model)]), 1.0))
        })
        .collect();
    m.set_all(
        "claude_watch_throttled",
        "1 for each model an instance gets 429 for (a throttle, not a latch).",
        throttled,
    );
    let mut states = BTreeMap::new();
    for view in &status.instances {
        for state in STATES {
            states.insert(
                labels(&[("agent", &view.name), ("state", state)]),
                f64::from(u8::from(view.state == state)),
            );
        }
    }
    m.set_all(
        "claude_watch_instance_state",
        "1 for the state each instance is in.",
        states,
    );
    let members: BTreeMap<String, f64> = status
        .instances
        .iter()
        .map(|v| {
            (
                labels(&[("agent", &v.name)]),
                f64::from(u8::from(v.incident.is_some())),
            )
        })
        .collect();
    m.set_all(
        "claude_watch_instance_in_incident",
        "1 for each instance waiting in the host's upstream incident (its alerts are the incident's).",
        members,
    );
    let incident = status.incident.as_ref();
    // Without [fleet] the families are exported empty (no series): nothing to alert on.
    let fleet = status.fleet.as_ref();
    #[expect(
        clippy::cast_precision_loss,
        reason = "ms since the epoch as float seconds"
    )]
    for (name, help, value) in [
        (
            "claude_watch_fleet_hold",
            "1 while the fleet's incident alert holds this host's restarts ([fleet]).",
            fleet.map(|f| f64::from(u8::from(f.state == "held"))),
        ),
        (
            "claude_watch_fleet_reachable",
            "1 while an Alertmanager of [fleet] answers within stale_after (0: recovering locally, the fleet's hold is off).",
            fleet.map(|f| f64::from(u8::from(f.state != "unreachable"))),
        ),
        (
            "claude_watch_fleet_last_answer_timestamp_seconds",
            "When an Alertmanager of [fleet] last answered, seconds since the epoch.",
            fleet.map(|f| f.last_answer_ms.map_or(0.0, |ms| ms as f64 / 1000.0)),
        ),
    ] {
        let series: BTreeMap<String, f64> = value.map(|v| (String::new(), v)).into_iter().collect();
        m.set_all(name, help, series);
    }
    let stats = capture.stats;
    #[expect(clippy::cast_precision_loss, reason = "counts as Prometheus floats")]
    {
        for (name, help, value) in [
            (
                "claude_watch_lost_events_total",
                "Kernel records lost because the ring buffer was full (any rise means exchanges went unseen: alert).",
                stats.lost,
            ),
            (
                "claude_watch_kernel_records_total",
                "HTTP heads the kernel sent to user space.",
                stats.sent,
            ),
            (
                "claude_watch_kernel_skipped_total",
                "TLS buffers the kernel kept because they are not HTTP heads (bodies, streamed events).",
                stats.skipped,
            ),
            (
                "claude_watch_kernel_body_reads_total",
                "Of the skipped buffers, reads of a response body skipped at their entry (one lookup each).",
                stats.body_reads,
            ),
            (
                "claude_watch_kernel_orphan_returns_total",
                "SSL_read returns without their entry (a probe attached mid-call; a steady rise means reads go unseen).",
                stats.orphan_returns,
            ),
            (
                "claude_watch_kernel_over_budget_total",
                "HTTP heads dropped in the kernel because their process exceeded its record budget (a process flooding TLS writes).",
                stats.over_budget,
            ),
            (
                "claude_watch_kernel_over_user_budget_total",
                "HTTP heads dropped in the kernel because their user (not root) exceeded its record budget (one user's many flooding processes).",
                stats.over_user_budget,
            ),
            (
                "claude_watch_kernel_execs_over_budget_total",
                "Execs of images not judged yet dropped in the kernel because their user (not root) exceeded its record budget; every process is looked at again after.",
                stats.execs_over_budget,
            ),
            (
                "claude_watch_probe_attachments_refused_total",
                "Attachments refused because [daemon] max_attachments were in place (those processes are unobserved).",
                capture.refused_attachments,
            ),
            (
                "claude_watch_kernel_execs_filtered_total",
                "Execs of images known not to be Claude Code, decided in the kernel and never sent to user space.",
                stats.execs_filtered,
            ),
            (
                "claude_watch_kernel_execs_sent_total",
                "Execs sent to user space (images not judged yet, Claude Code, interpreters, and watched processes).",
                stats.execs_sent,
            ),
            (
                "claude_watch_discovery_file_reads_total",
                "Executables and scripts discovery read to tell whether they are Claude Code (each file once while its verdict is kept).",
                capture.files.1,
            ),
        ] {
            m.set_counter(name, help, String::new(), value as f64);
        }
        for (name, help, value) in [
            (
                "claude_watch_incident_open",
                "1 while the host is in an upstream incident (several instances latched together: one canary restart per quiet window).",
                f64::from(u8::from(incident.is_some())),
            ),
            (
                "claude_watch_incident_instances",
                "Instances in the host's upstream incident.",
                incident.map_or(0.0, |i| i.members.len() as f64),
            ),
            (
                "claude_watch_incident_tries",
                "Canary restarts of the open incident that did not heal (restarts into the open window).",
                incident.map_or(0.0, |i| f64::from(i.tries)),
            ),
            (
                "claude_watch_incident_escalated",
                "1 while the host's upstream incident is escalated (one notice for all its instances).",
                f64::from(u8::from(incident.is_some_and(|i| i.escalated_ms.is_some()))),
            ),
            (
                "claude_watch_last_rejected_restart_timestamp_seconds",
                "When a restart was last rejected on this host (its new process got 401: the upstream window is open), seconds since the epoch; 0 if never. The fleet's rules read it.",
                status.last_rejected_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
            ),
            (
                "claude_watch_instances",
                "Claude instances known.",
                status.instances.len() as f64,
            ),
            (
                "claude_watch_coverage_audit_seconds",
                "How long the last coverage audit took (one sock_diag dump and each watched process's descriptors, on a blocking thread).",
                capture.audit.0.as_secs_f64(),
            ),
            (
                "claude_watch_coverage_audit_processes",
                "Processes the last coverage audit looked at.",
                capture.audit.1 as f64,
            ),
            (
                "claude_watch_exec_filter_images",
                "Images the kernel's exec filter knows not to be Claude Code; -1 when the filter is off (no kernel BTF).",
                capture.exec_images.map_or(-1.0, |n| n as f64),
            ),
            (
                "claude_watch_probe_attachments",
                "Files (or processes) with probes attached.",
                capture.attachments as f64,
            ),
            (
                "claude_watch_probe_attachments_max",
                "The attachment cap ([daemon] max_attachments).",
                capture.max_attachments as f64,
            ),
            (
                "claude_watch_discovery_files_cached",
                "Files whose verdict (Claude Code or not) discovery keeps (bounded: the oldest are forgotten first).",
                capture.files.0 as f64,
            ),
            (
                "claude_watch_over_budget_processes",
                "Live processes whose records the kernel drops or dropped over their budget.",
                capture.over_budget_processes as f64,
            ),
            (
                "claude_watch_over_budget_users",
                "Users (not root) whose records the kernel drops or dropped over their budget ([daemon] record_budget_per_user).",
                capture.over_budget_users as f64,
            ),
        ] {
            m.set(name, help, String::new(), value);
        }
    }
}

/// Every metric family, exported from the start (counters and histograms before their first
/// event), so dashboards and alerts find them.
pub(super) fn declare_metrics(m: &Metrics) {
    for (name, help) in [
        EXCHANGES,
        EPISODES,
        RESTARTS,
        RECOVERIES,
        ESCALATIONS,
        INCIDENTS,
        REJECTED,
        INCIDENT_ESCALATIONS,
    ] {
        m.declare_counter(name, help);
    }
    for (name, help) in [DETECTION, RECOVERY, WRITE_AHEAD] {
        m.declare_histogram(name, help);
    }
}

/// A metric family's name and help text.
type Family = (&'static str, &'static str);

/// How long a restart waited for its records to be durable.
pub(super) const WRITE_AHEAD: Family = (
    "claude_watch_restart_sync_wait_seconds",
    "From a restart decision to its start, waiting for the decision's journal records to be durable.",
);
const EXCHANGES: Family = (
    "claude_watch_exchanges_total",
    "HTTP exchanges of claude instances, by status and model.",
);
const EPISODES: Family = ("claude_watch_episodes_total", "Latch episodes opened.");
const RESTARTS: Family = (
    "claude_watch_restarts_total",
    "Restarts requested from supervisors, by result.",
);
const RECOVERIES: Family = (
    "claude_watch_recoveries_total",
    "Confirmed recoveries (a non-401 from the instance itself).",
);
const ESCALATIONS: Family = (
    "claude_watch_escalations_total",
    "Instances escalated after restarts did not heal them (a notice: restarts go on unless give_up).",
);
const REJECTED: Family = (
    "claude_watch_restarts_rejected_total",
    "Restarts whose new process got 401 (the upstream window was still open).",
);
const INCIDENTS: Family = (
    "claude_watch_incidents_total",
    "Upstream incidents: several instances of the host latched together.",
);
const INCIDENT_ESCALATIONS: Family = (
    "claude_watch_incident_escalations_total",
    "Upstream incidents escalated (one notice per incident, not per instance).",
);
const INSTANCES_REFUSED: Family = (
    "claude_watch_instances_refused_total",
    "New claude instances not watched because too many instances were tracked.",
);
const DETECTION: Family = (
    "claude_watch_detection_seconds",
    "From the latch condition holding to the detector's decision.",
);
const RECOVERY: Family = (
    "claude_watch_recovery_seconds",
    "Restart to the new process's first accepted answer.",
);
