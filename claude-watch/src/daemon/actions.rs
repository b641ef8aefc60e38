//! What the daemon does about latches: restarts through each instance's supervisor, the
//! escalation hook, and the durable record of both (journal actions, persisted policy state).

use std::path::Path;
use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};

use super::publish::{ESCALATIONS_HELP, RESTARTS_HELP};
use super::recovery::{self, Supervisor};
use super::{Daemon, RestartDone, metrics::labels, now_ms};
use crate::instance::InstanceId;
use crate::journal::{ActionKind, ActionRecord, Record as JournalRecord};
use crate::supervise::policy::{Action, Policy, PolicySnapshot};
use crate::supervise::{SuperviseError, Target};
use crate::time::mono_now_ns;

impl Daemon {
    pub(super) fn journal_episode(&mut self, episode: &crate::detect::Episode) {
        let record = JournalRecord::Episode {
            at_ms: now_ms(),
            episode: episode.clone(),
        };
        if let Err(e) = self.journal.append(&record) {
            error!(episode = %episode.id, "cannot write the journal: {e}");
        }
    }

    pub(super) fn journal_action(
        &mut self,
        instance: &str,
        kind: ActionKind,
        ok: bool,
        until_ms: Option<u64>,
        detail: String,
    ) {
        let episode_id = self
            .ids
            .get(instance)
            .and_then(|id| self.detector.status(id))
            .and_then(|s| s.window)
            .map(|w| w.id);
        let record = JournalRecord::Action(ActionRecord {
            at_ms: now_ms(),
            instance: instance.to_owned(),
            episode_id,
            kind,
            ok,
            until_ms,
            detail: Some(detail),
        });
        if let Err(e) = self.journal.append(&record) {
            error!(instance, "cannot write the journal: {e}");
        }
    }

    pub(super) fn supervisor(&self, instance: &InstanceId) -> Supervisor {
        Supervisor::resolve(
            self.config.supervisor_for(&instance.name),
            instance,
            &self.bus,
            self.config.recovery.restart_timeout,
        )
    }

    pub(super) fn drive_policy(&mut self) {
        for action in self.policy.poll(Instant::now()) {
            match action {
                Action::Restart(name) => self.start_restart(&name),
                Action::Escalate(name) => self.escalate(&name),
                Action::Wait { .. } => {}
            }
        }
    }

    /// The restart target of an instance: its newest live process.
    pub(super) fn target(&self, id: &InstanceId) -> Result<Target, SuperviseError> {
        let status = self.detector.status(id);
        let pid = status
            .as_ref()
            .and_then(|s| {
                s.window.as_ref().and_then(|w| {
                    w.pids
                        .iter()
                        .rev()
                        .find(|p| self.discovery.get(**p).is_some())
                        .copied()
                })
            })
            .or_else(|| {
                self.discovery
                    .all()
                    .filter(|f| &f.instance == id)
                    .map(|f| f.info.pid)
                    .max()
            })
            .ok_or_else(|| SuperviseError::UnitNotFound {
                instance: id.name.clone(),
                pid: 0,
                reason: "no live process of the instance is known".into(),
            })?;
        let target = Target::for_pid(id.name.clone(), pid)?;
        Ok(match id.unit_name() {
            Some(unit) => target.with_unit(unit),
            None => target,
        })
    }

    pub(super) fn start_restart(&mut self, name: &str) {
        let Some(id) = self.ids.get(name).cloned() else {
            self.policy
                .restart_finished(name, Instant::now(), &Err::<(), _>("unknown instance"));
            return;
        };
        let supervisor = self.supervisor(&id);
        let target = match self.target(&id) {
            Ok(t) => t,
            Err(e) => {
                warn!(instance = name, "cannot restart: {e}");
                self.policy
                    .restart_finished(name, Instant::now(), &Err::<(), _>(e.to_string()));
                self.journal_action(
                    name,
                    ActionKind::Restart,
                    false,
                    None,
                    format!("no live process to restart: {e}"),
                );
                return;
            }
        };
        info!(instance = name, pid = target.pid, unit = ?target.unit, supervisor = supervisor.kind(), "restarting latched instance");
        let events = self.detector.restart_started(&id, mono_now_ns());
        self.on_events(events);
        self.save_policy();
        let tx = self.done_tx.clone();
        let instance = name.to_owned();
        let timeout = self.config.recovery.restart_timeout;
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, supervisor.restart(&target)).await {
                Ok(r) => r,
                Err(_) => Err(SuperviseError::Timeout {
                    what: format!("{} restart", supervisor.kind()),
                    timeout,
                }),
            };
            let _ = tx.send(RestartDone {
                instance,
                started,
                hook: false,
                result,
            });
        });
    }

    pub(super) fn on_restart_done(&mut self, done: RestartDone) {
        let name = done.instance.as_str();
        if done.hook {
            let (ok, detail) = match &done.result {
                Ok(outcome) => (true, outcome.summary.clone()),
                Err(e) => (false, e.to_string()),
            };
            if ok {
                info!(instance = name, "escalation hook ran: {detail}");
            } else {
                warn!(instance = name, "escalation hook failed: {detail}");
            }
            self.journal_action(name, ActionKind::Hook, ok, None, detail);
            return;
        }
        let now = Instant::now();
        self.policy.restart_finished(name, now, &done.result);
        let id = self.ids.get(name).cloned();
        match &done.result {
            Ok(outcome) => {
                info!(instance = name, new_pid = ?outcome.new_pid, took_ms = done.started.elapsed().as_millis() as u64, "{}", outcome.summary);
                self.metrics.inc(
                    "claude_watch_restarts_total",
                    RESTARTS_HELP,
                    labels(&[("agent", name), ("result", "ok")]),
                    1.0,
                );
                self.journal_action(
                    name,
                    ActionKind::Restart,
                    true,
                    None,
                    outcome.summary.clone(),
                );
                if let Some(pid) = outcome.new_pid
                    && let Some(found) = self.discovery.check(pid)
                {
                    self.adopt(&found);
                }
            }
            Err(e) => {
                warn!(instance = name, "restart failed: {e}");
                self.metrics.inc(
                    "claude_watch_restarts_total",
                    RESTARTS_HELP,
                    labels(&[("agent", name), ("result", "error")]),
                    1.0,
                );
                self.journal_action(name, ActionKind::Restart, false, None, e.to_string());
                if let Some(id) = id {
                    let events = self.detector.restart_failed(&id, mono_now_ns());
                    self.on_events(events);
                }
            }
        }
        self.journal_backoff(name, now);
        self.save_policy();
    }

    /// Journals the quiet window the policy set for `name`, if one runs past `now`.
    pub(super) fn journal_backoff(&mut self, name: &str, now: Instant) {
        if let Some(until) = self.policy.not_before(name).filter(|t| *t > now) {
            let wait = until.duration_since(now);
            let until_ms = now_ms() + u64::try_from(wait.as_millis()).unwrap_or(0);
            info!(
                instance = name,
                wait_s = wait.as_secs(),
                "quiet window before the next restart"
            );
            self.journal_action(
                name,
                ActionKind::Backoff,
                true,
                Some(until_ms),
                format!(
                    "quiet window of {}s before the next restart",
                    wait.as_secs()
                ),
            );
        }
    }

    pub(super) fn escalate(&mut self, name: &str) {
        warn!(
            instance = name,
            restarts = self.policy.restarts(name),
            "escalated: restarts did not heal it; no more restarts until it answers non-401"
        );
        self.metrics.inc(
            "claude_watch_escalations_total",
            ESCALATIONS_HELP,
            labels(&[("agent", name)]),
            1.0,
        );
        self.journal_action(
            name,
            ActionKind::Escalate,
            true,
            None,
            format!(
                "{} restarts without a confirmed recovery",
                self.policy.restarts(name)
            ),
        );
        if let Some(id) = self.ids.get(name).cloned() {
            let events = self.detector.escalate(&id, mono_now_ns());
            self.on_events(events);
            if let Some(hook) = self
                .config
                .recovery
                .escalation_hook
                .as_ref()
                .map(|h| h.get_ref().clone())
            {
                let target = self.target(&id).unwrap_or(Target {
                    instance: id.name.clone(),
                    unit: id.unit_name().map(str::to_owned),
                    pid: 0,
                    start_time: None,
                });
                let timeout = self.config.recovery.hook_timeout;
                let tx = self.done_tx.clone();
                let instance = name.to_owned();
                info!(instance = name, "running the escalation hook");
                tokio::spawn(async move {
                    let result = recovery::run_hook(&hook, timeout, &target).await;
                    let _ = tx.send(RestartDone {
                        instance,
                        started: Instant::now(),
                        hook: true,
                        result,
                    });
                });
            }
        }
        self.save_policy();
    }

    pub(super) fn save_policy(&self) {
        let snapshot = self.policy.snapshot(Instant::now(), SystemTime::now());
        if let Err(e) = write_atomic(&self.state_path, &snapshot) {
            error!(path = %self.state_path.display(), "cannot save recovery state: {e}");
        }
    }
}

pub(super) fn restore_policy(
    path: &Path,
    config: crate::supervise::policy::PolicyConfig,
) -> Policy {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Policy::new(config);
    };
    match serde_json::from_str::<PolicySnapshot>(&text) {
        Ok(snapshot) => {
            let mut policy = Policy::restore(snapshot, Instant::now(), SystemTime::now());
            policy.set_config(config);
            info!(path = %path.display(), "recovery state restored (quiet windows and escalations carry over)");
            policy
        }
        Err(e) => {
            warn!(path = %path.display(), "ignoring unreadable recovery state: {e}");
            Policy::new(config)
        }
    }
}

/// Writes JSON to `path` atomically and durably: temp file, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&mut file, value).map_err(std::io::Error::other)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
