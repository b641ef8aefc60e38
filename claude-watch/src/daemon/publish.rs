//! The status snapshot served on the control socket, and the gauges refreshed with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::metrics::{Metrics, labels};
use super::status::{CaptureView, InstanceView, Snapshot};
use super::{Daemon, instance_id_of, now_ms};
use crate::detect::State;
use crate::supervise::policy::Phase;

impl Daemon {
    /// Publishes the status snapshot and refreshes the gauges.
    pub(super) fn publish(&mut self) {
        let stats = self.probes.stats();
        let now = Instant::now();
        let wall = now_ms();
        let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();
        for found in self.discovery.all() {
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
            if let Some(why) = self.unobserved.get(&found.info.pid) {
                view.unobserved = Some(why.clone());
            }
            if view.version.is_none() {
                view.version = found.version();
            }
        }
        for s in self.detector.statuses() {
            let name = s.instance.name.clone();
            let view = instances
                .entry(name.clone())
                .or_insert_with(|| InstanceView {
                    name: name.clone(),
                    unit: s.instance.unit_name().map(str::to_owned),
                    ..InstanceView::default()
                });
            view.state = serde_json::to_value(s.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if view.pids.is_empty() {
                view.pids = s.pids.clone();
            }
            view.session_id = s.session_id.clone();
            if s.client_version.is_some() {
                view.version = s.client_version.clone();
            }
            view.throttled = s.throttled.clone();
            view.tier_throttle = s.tier_throttle;
            view.window_401s = s.window.as_ref().map(|w| w.count_401);
            view.episode = s
                .window
                .as_ref()
                .filter(|_| matches!(s.state, State::Latched | State::Recovering))
                .map(|w| w.id.clone());
            if let Some(last) = self.last_seen.get(&s.instance) {
                view.last_status = Some(last.status);
                view.last_seen_ms = Some(last.ts_ms);
            }
        }
        for view in instances.values_mut() {
            view.pids.sort_unstable();
            view.pids.dedup();
            let id = self
                .ids
                .get(&view.name)
                .cloned()
                .unwrap_or_else(|| instance_id_of(&view.name, view.unit.as_deref()));
            view.supervisor = if self.config.daemon.dry_run {
                "dry-run".into()
            } else {
                self.supervisor(&id).kind().into()
            };
            view.restarts = self.policy.restarts(&view.name);
            view.backoff_until_ms = self
                .policy
                .not_before(&view.name)
                .filter(|t| *t > now)
                .map(|t| wall + u64::try_from(t.duration_since(now).as_millis()).unwrap_or(0));
            if view.binary.is_none() {
                view.binary = self.binaries.get(&id).cloned();
            }
            if matches!(self.policy.phase(&view.name), Some(Phase::Escalated))
                && view.state == "latched"
            {
                view.state = "escalated".into();
            }
        }
        let throttled: BTreeMap<String, f64> = instances
            .values()
            .flat_map(|v| {
                v.throttled
                    .iter()
                    .map(move |m| (labels(&[("agent", &v.name), ("model", m)]), 1.0))
            })
            .collect();
        self.metrics.set_all(
            "claude_watch_throttled",
            "1 for each model an instance gets 429 for (a throttle, not a latch).",
            throttled,
        );
        let mut states = BTreeMap::new();
        for view in instances.values() {
            for state in [
                "observed",
                "healthy",
                "suspect",
                "latched",
                "recovering",
                "escalated",
            ] {
                states.insert(
                    labels(&[("agent", &view.name), ("state", state)]),
                    f64::from(u8::from(view.state == state)),
                );
            }
        }
        self.metrics.set_all(
            "claude_watch_instance_state",
            "1 for the state each instance is in.",
            states,
        );
        #[expect(clippy::cast_precision_loss, reason = "counters as Prometheus floats")]
        {
            self.metrics.set(
                "claude_watch_instances",
                "Claude instances known.",
                String::new(),
                instances.len() as f64,
            );
            self.metrics.set_counter(
                "claude_watch_lost_events_total",
                "Kernel records lost (ring buffer full).",
                String::new(),
                stats.lost as f64,
            );
            self.metrics.set_counter(
                "claude_watch_kernel_records_total",
                "Records the kernel sent to user space.",
                String::new(),
                stats.sent as f64,
            );
            self.metrics.set(
                "claude_watch_probe_attachments",
                "Files (or processes) with probes attached.",
                String::new(),
                self.probes.attachments() as f64,
            );
        }
        let snapshot = Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            now_ms: wall,
            dry_run: self.config.daemon.dry_run,
            config: self.origin.clone(),
            capture: CaptureView {
                attachments: self.probes.attachments(),
                sent: stats.sent,
                lost: stats.lost,
                exchanges: self.exchanges,
            },
            instances: instances.into_values().collect(),
        };
        self.snapshots.send_replace(Arc::new(snapshot));
    }
}

/// Every metric family, exported from the start (counters and histograms before their first
/// event), so dashboards and alerts find them.
pub(super) fn declare_metrics(m: &Metrics) {
    m.declare_counter("claude_watch_exchanges_total", EXCHANGES_HELP);
    m.declare_counter("claude_watch_episodes_total", EPISODES_HELP);
    m.declare_counter("claude_watch_restarts_total", RESTARTS_HELP);
    m.declare_counter("claude_watch_recoveries_total", RECOVERIES_HELP);
    m.declare_counter("claude_watch_escalations_total", ESCALATIONS_HELP);
    m.declare_histogram("claude_watch_detection_seconds", DETECTION_HELP);
    m.declare_histogram("claude_watch_recovery_seconds", RECOVERY_HELP);
}

pub(super) const EXCHANGES_HELP: &str = "HTTP exchanges of claude instances, by status and model.";
pub(super) const EPISODES_HELP: &str = "Latch episodes opened.";
pub(super) const RESTARTS_HELP: &str = "Restarts requested from supervisors, by result.";
pub(super) const RECOVERIES_HELP: &str =
    "Confirmed recoveries (a non-401 from the instance itself).";
pub(super) const ESCALATIONS_HELP: &str = "Instances escalated after restarts did not heal them.";
pub(super) const DETECTION_HELP: &str =
    "From the latch condition holding to the detector's decision.";
pub(super) const RECOVERY_HELP: &str = "Restart to the new process's first accepted answer.";
