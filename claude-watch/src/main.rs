//! The `claude-watch` command: parse arguments, set up logging, run the subcommand.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = claude_watch::cli::Cli::parse();
    claude_watch::cli::init_logging(cli.verbose);
    match claude_watch::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("claude-watch: {err:#}");
            ExitCode::FAILURE
        }
    }
}
