//! `claude-watch config`: check a configuration file, or print the built-in one.

use std::path::PathBuf;

use crate::config::{Config, DEFAULT_TOML};
use crate::daemon::DEFAULT_CONFIG_PATH;
use crate::supervise::supervisor::misfit;

/// The examples `claude-watch config --help` ends with.
pub const EXAMPLES: &str = "Examples:
  claude-watch config check                          the daemon's file (/etc/claude-watch/config.toml)
  claude-watch config check ./cw.toml                a file of your own: file:line:column: key: problem
  claude-watch config show > /etc/claude-watch/config.toml   start from every key and its default";

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
    /// with `file:line:column: key: problem` when it is wrong. Without a file and with none at
    /// the default place, says that the daemon runs on the built-in configuration.
    #[command(
        after_help = "Examples:\n  claude-watch config check\n  claude-watch config check ./cw.toml"
    )]
    Check {
        /// The file.
        path: Option<PathBuf>,
    },
    /// Print the built-in configuration, with every key and its default, commented.
    #[command(
        after_help = "Examples:\n  claude-watch config show\n  claude-watch config show > /etc/claude-watch/config.toml"
    )]
    Show,
}

/// Where the configured supervisors cannot restart the claude processes running now: one line
/// each. Reads `/proc` (as root it sees every process).
fn supervision_warnings(config: &Config) -> Vec<String> {
    let mut discovery = crate::discover::Discovery::new("/proc", config.rules())
        .with_docker_socket(config.daemon.docker_socket.clone());
    let found = discovery.scan(&mut crate::instance::table::PidTable::default());
    warnings(config, &found)
}

/// The pure half of [`supervision_warnings`].
fn warnings(config: &Config, found: &[crate::discover::Found]) -> Vec<String> {
    let mut out = Vec::new();
    for f in found {
        let spec = config.supervisor_for(&f.instance.name);
        if let Some(why) = misfit(spec, &f.placement) {
            out.push(format!(
                "{} (pid {}): the configured supervisor cannot restart it: {why}",
                f.instance, f.info.pid
            ));
        }
    }
    for rule in &config.instances {
        let name = rule.name.get_ref();
        if rule.supervisor.is_some() && !found.iter().any(|f| &f.instance.name == name) {
            out.push(format!(
                "[[instance]] {name} configures a supervisor but no running claude process is named {name}"
            ));
        }
    }
    out
}

/// Runs the action.
pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.action {
        ConfigAction::Check { path } => {
            if path.is_none() && !std::path::Path::new(DEFAULT_CONFIG_PATH).exists() {
                println!(
                    "no {DEFAULT_CONFIG_PATH}: the daemon runs on the built-in configuration (`claude-watch config show` prints it; copy it there to change anything)"
                );
                return Ok(());
            }
            let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let config = crate::config::load(&path)?;
            for warning in supervision_warnings(&config) {
                eprintln!("warning: {}", crate::text::printable(&warning));
            }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::discover::Found;
    use crate::instance::{
        ClaudeKind, InstanceId, Manager, Placement, ProcessInfo, SystemdUnit, identify,
    };

    fn found(pid: u32, cgroup: &str) -> Found {
        let info = ProcessInfo {
            pid,
            exe: PathBuf::from("/usr/bin/claude"),
            cgroup: cgroup.into(),
            ..ProcessInfo::default()
        };
        Found {
            instance: identify(&info, &[]),
            placement: crate::instance::placement(&info),
            kind: ClaudeKind::Native,
            release: None,
            exe_id: None,
            info,
        }
    }

    #[test]
    fn warns_where_a_configured_supervisor_cannot_own_the_running_processes() {
        let config = Config::parse(
            "[recovery]\nsupervisor = { kind = \"systemd\" }\n\
             [[instance]]\nname = \"ghost\"\nmatch = { arg = \"--ghost\" }\nsupervisor = { kind = \"signal\" }\n",
            "test",
        )
        .expect("valid");
        let running = [
            found(10, "0::/system.slice/agent.service\n"),
            found(
                11,
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/a.service\n",
            ),
            found(12, "0::/user.slice/user-1000.slice/session-3.scope\n"),
        ];
        assert_eq!(
            running[1].placement,
            Placement::Unit(SystemdUnit {
                name: "a.service".into(),
                manager: Manager::User { uid: 1000 },
                cgroup: "/user.slice/user-1000.slice/user@1000.service/app.slice/a.service".into(),
            })
        );
        assert_eq!(running[2].instance, InstanceId::pid(12));
        let w = warnings(&config, &running);
        // The user's unit is restarted through user@1000's manager: no warning.
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("pid:12 (pid 12)") && w[0].contains("not in a systemd unit"),
            "{w:?}"
        );
        assert!(w[1].contains("[[instance]] ghost"), "{w:?}");
    }
}
