//! `claude-watch config`: check a configuration file, or print the built-in one.

use std::path::PathBuf;

use crate::config::{Config, DEFAULT_TOML};
use crate::daemon::DEFAULT_CONFIG_PATH;

/// Check or show the configuration.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ConfigAction,
}

/// Configuration actions.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigAction {
    /// Check a file (default /etc/claude-watch/config.toml) the way the daemon would; exits 1
    /// with `file:line:column: key: problem` when it is wrong.
    Check {
        /// The file.
        path: Option<PathBuf>,
    },
    /// Print the built-in configuration, with every key and its default, commented.
    Show,
}

/// Runs the action.
pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.action {
        ConfigAction::Check { path } => {
            let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let config = Config::load(&path)?;
            println!(
                "{}: ok ({} instance rule(s), journal {}, {})",
                path.display(),
                config.instances.len(),
                config.daemon.journal.display(),
                if config.daemon.dry_run {
                    "dry run"
                } else {
                    "restarts enabled"
                }
            );
            Ok(())
        }
        ConfigAction::Show => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
    }
}
