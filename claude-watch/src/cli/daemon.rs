//! `claude-watch daemon`: watch every claude process, detect latches, recover them.

pub use crate::daemon::Options as DaemonArgs;

/// Runs the daemon until stopped.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    crate::daemon::run(args)
}
