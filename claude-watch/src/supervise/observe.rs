//! Observe-only: detect and report, never act (also what `--dry-run` uses).

use super::{RestartOutcome, Restarter, SuperviseError, Target};
pub use claude_watch_core::supervise::ObserveOnly;

impl Restarter for ObserveOnly {
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        tracing::info!(instance = %target.instance, pid = target.pid, "observe-only: would restart");
        Ok(RestartOutcome {
            acted: false,
            unit: target.unit.clone(),
            new_pid: None,
            invocation_id: None,
            summary: format!(
                "observe-only: would restart instance {} (pid {})",
                target.instance, target.pid
            ),
        })
    }
}
