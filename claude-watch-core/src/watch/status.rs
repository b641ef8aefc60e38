//! `merge`, the one place where the processes, the detector and the recovery policy are
//! joined into each instance's status. The views themselves (what `claude-watch status`
//! shows, the snapshot the daemon publishes) are the core's ([`crate::status`],
//! re-exported here).

use std::collections::BTreeMap;

pub use crate::status::*;

use super::Watch;
use crate::detect::{MonoNs, State};
use crate::instance::Placement;

/// Every instance's status at `now`: live processes, detector state, recovery phase and
/// supervisor merged. The state is the detector's window (healthy, suspect, latched) as
/// recovery qualifies it: `recovering` while latched past a restart boundary, `escalated`
/// when restarts gave up (and from a notice until the confirmed recovery, below).
pub(super) fn merge(watch: &Watch, now: MonoNs) -> Status {
    let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();
    let mut ids = BTreeMap::new();
    for (id, record) in &watch.records {
        ids.insert(id.name.clone(), id.clone());
        let view = instances
            .entry(id.name.clone())
            .or_insert_with(|| InstanceView {
                name: id.name.clone(),
                unit: id.unit_name().map(str::to_owned),
                ..InstanceView::default()
            });
        for found in watch.members(id) {
            view.pids.push(found.info.pid);
            view.binary = Some(found.info.exe.display().to_string());
            if let Some(why) = watch.unobserved.get(&found.info.pid) {
                view.unobserved = Some(why.clone());
            }
            if let Some(origin) = &found.info.env.plain_http_base {
                view.blind = Some(format!(
                    "ANTHROPIC_BASE_URL is plain {origin}: its API calls never pass through TLS, so the probes cannot see them"
                ));
            } else if let Some(b) = watch.coverage.blind(found.info.pid) {
                view.blind = Some(b.reason(now));
            }
            if view.version.is_none() {
                view.version = found.version();
            }
        }
        let s = record.detection.status();
        let rec = record.recovery.detector();
        view.state = match s.state {
            _ if rec.gave_up => "escalated",
            State::Latched if rec.boundary.is_some() => "recovering",
            // No answer of its own was ever seen: nothing says it is healthy.
            State::Healthy if record.last_seen.is_none() => "observed",
            state => state.as_str(),
        }
        .to_owned();
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
            .filter(|_| s.state == State::Latched)
            .map(|w| w.id.clone());
        if let Some(last) = &record.last_seen {
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
            FleetState::Unreachable => ("unreachable", None, None),
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
    let held = watch.fleet.as_ref().is_some_and(super::fleet::Fleet::held);
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
        let record = &watch.records[id];
        let choice = watch.choice(id);
        if dry_run {
            view.supervisor = "dry-run".into();
            view.supervisor_reason = format!("dry run (would be {})", choice.reason);
        } else {
            view.supervisor = choice.supervisor.kind().into();
            view.supervisor_reason = choice.reason;
        }
        if let Some(Placement::ClaudeBg(bg)) = &record.placement {
            let cwd = bg.cwd.as_ref().map(|c| c.display().to_string());
            if view.state == "escalated" {
                view.advice = Some(bg_escalation_advice(&bg.short_id, cwd.as_deref()));
            }
            view.background = Some(BackgroundView {
                short_id: bg.short_id.clone(),
                session_id: bg.session_id.clone(),
                name: bg.name.clone(),
                cwd,
            });
        }
        let recovery = watch.policy.view(id, &record.recovery);
        view.restarts = recovery.restarts;
        let r = record.recoveries;
        view.restarts_total = r.restarts;
        view.last_recovery_ms = r.last.map(|(ms, _)| ms);
        view.last_recovery = r.last.map(|(_, end)| end.to_string());
        if view.blind.is_some() && matches!(view.state.as_str(), "observed" | "healthy") {
            // Its own answers cannot be seen (or no longer are): it says why, never healthy.
            view.state = "blind".into();
        }
        if view.pids.is_empty() {
            view.exited_ms = record.idle_since.map(|t| watch.wall_ms(t));
            if matches!(view.state.as_str(), "healthy" | "observed" | "suspect") {
                view.state = "exited".into();
            }
        }
        view.last_error.clone_from(&record.restart_error);
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
            view.state = "escalated".to_owned();
        }
        if recovery.in_incident {
            view.incident = incident.as_ref().map(|i| i.id.clone());
            view.canary = recovery.canary;
        }
        view.fleet_hold =
            held && matches!(view.state.as_str(), "latched" | "recovering" | "escalated");
        if view.binary.is_none() {
            view.binary.clone_from(&record.binary);
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
