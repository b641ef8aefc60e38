//! `claude-watch daemon`: watch every claude process, detect latches, recover them.

use std::path::PathBuf;

/// Run the watchdog: discover every Claude Code process, attach probes, detect 401 latches and
/// 429 throttles, and restart latched instances through their supervisor.
///
/// Without --config it reads /etc/claude-watch/config.toml if present, else the built-in
/// configuration (`claude-watch config show`). Instances in systemd units are restarted through
/// systemd when systemd is reachable; everything else is observed only unless configured.
///
/// Examples:
///   claude-watch daemon                                  # defaults
///   claude-watch daemon --config /etc/claude-watch/config.toml
///   claude-watch daemon --dry-run                        # detect and report, never restart
///   claude-watch daemon --probe-time                     # and what each eBPF program cost
///
/// Signals: SIGHUP reloads the configuration (a bad one is refused and the running one kept),
/// SIGTERM/SIGINT stop cleanly (probes detached, state saved).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DaemonArgs {
    /// Configuration file (TOML).
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Detect and report, never restart anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print each eBPF program's runs and average run time when stopping (turns the kernel's
    /// run-time statistics on while running: two clock reads per program run).
    #[arg(long)]
    pub probe_time: bool,
}

/// Runs the daemon until stopped.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    crate::daemon::run(crate::daemon::Options {
        config: args.config,
        dry_run: args.dry_run,
        probe_time: args.probe_time,
    })
}
