//! Command-line interface: one file per subcommand.

pub mod completions;
pub mod config;
pub mod daemon;
pub mod episodes;
pub mod locate;
pub mod replay;
pub mod status;
pub mod trace;

use clap::{Parser, Subcommand};

/// Watch headless Claude Code agents from the kernel: see every API request and status of every
/// claude process, tell a 401 latch from a 429 throttle, and recover latched instances.
#[derive(Debug, Parser)]
#[command(
    name = "claude-watch",
    version,
    propagate_version = true,
    after_help = "Examples:\n  claude-watch daemon                   watch every claude process, recover latched ones (root)\n  claude-watch status                   what the daemon sees, like systemctl status for the fleet\n  claude-watch trace --json             every API call of every claude process, live (root)\n  claude-watch episodes --since 7d      the episode report to send upstream, with request ids\n  claude-watch locate ~/.local/bin/claude  where SSL_write/SSL_read are in a stripped binary\n  claude-watch config check /etc/claude-watch/config.toml\n  claude-watch status --config ./cw.toml  every command reads the daemon's configuration\n  claude-watch replay                   what the recovery settings do over weeks of upstream windows\n\nEach command has --help with more."
)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. Those with an `about` here take their long help (with examples) from their
/// arguments' doc comment: a variant's doc comment would hide it.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(
        about = "Run the watchdog daemon (needs root): detect latches, recover them (`cargo xtask run`)"
    )]
    Daemon(daemon::DaemonArgs),
    #[command(about = "Show the instances the running daemon watches, and their state")]
    Status(status::StatusArgs),
    #[command(about = "Show every HTTP exchange of TLS clients live, one line each (needs root)")]
    Trace(trace::TraceArgs),
    /// Find SSL_write/SSL_read in an executable or library, with or without symbols.
    #[command(after_help = locate::EXAMPLES)]
    Locate(locate::LocateArgs),
    /// Report latch episodes from the journal, as you would send them upstream.
    #[command(long_about = episodes::LONG_ABOUT, after_help = episodes::EXAMPLES)]
    Episodes(episodes::EpisodesArgs),
    /// Check a configuration file, or print the built-in one.
    #[command(after_help = config::EXAMPLES)]
    Config(config::ConfigArgs),
    #[command(
        about = "Replay weeks of upstream windows against a recovery configuration (no root, no I/O)"
    )]
    Replay(replay::ReplayArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = completions::EXAMPLES)]
    Completions(completions::CompletionsArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Daemon(_)) {
        // A report piped into `head` ends quietly when the reader goes, as other tools do
        // (Rust ignores SIGPIPE, and `print!` then panics). The daemon keeps ignoring it: a
        // client that hangs up is an error on that write, not a reason to stop.
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Daemon(args) => daemon::run(args),
        Command::Status(args) => status::run(args),
        Command::Config(args) => config::run(args),
        Command::Completions(args) => completions::run(&args),
        Command::Trace(args) => trace::run(args),
        Command::Locate(args) => locate::run(args),
        Command::Episodes(args) => episodes::run(args),
        Command::Replay(args) => replay::run(&args),
    }
}

/// Logs go to stderr through `tracing`; `RUST_LOG` wins over `-v`.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// `rows` under `header` in columns as wide as their widest cell, two spaces apart, each line
/// trimmed at its end (the tables of `status` and `replay`).
pub(crate) fn columns(header: &[&str], rows: &[impl AsRef<[String]>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref()[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        format!("{}\n", l.trim_end())
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.as_ref().iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every command's `--help` ends with examples of that very command.
    #[test]
    fn every_command_has_examples_in_its_help() {
        let mut root = Cli::command();
        root.build();
        let mut stack: Vec<(String, clap::Command)> = root
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .map(|c| (format!("claude-watch {}", c.get_name()), c.clone()))
            .collect();
        let mut seen = 0;
        while let Some((path, mut command)) = stack.pop() {
            stack.extend(
                command
                    .get_subcommands()
                    .filter(|c| c.get_name() != "help")
                    .map(|c| (format!("{path} {}", c.get_name()), c.clone())),
            );
            let help = command.render_long_help().to_string();
            let examples = help
                .split_once("Examples:")
                .map(|(_, e)| e)
                .unwrap_or_else(|| panic!("`{path} --help` has no examples:\n{help}"));
            assert!(
                examples.lines().any(|l| l.trim_start().starts_with(&path)),
                "`{path} --help`: no example runs {path}:\n{examples}"
            );
            seen += 1;
        }
        assert!(seen >= 10, "{seen} commands");
    }
}
