//! `claude-watch completions SHELL`: shell completion scripts.

use clap::CommandFactory as _;

/// The examples `claude-watch completions --help` ends with.
pub const EXAMPLES: &str = "Examples:
  claude-watch completions bash > /etc/bash_completion.d/claude-watch
  claude-watch completions zsh > \"${fpath[1]}/_claude-watch\"
  claude-watch completions fish > ~/.config/fish/completions/claude-watch.fish";

/// Print a completion script, e.g. `claude-watch completions bash > /etc/bash_completion.d/claude-watch`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Prints the script.
pub fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    clap_complete::generate(
        args.shell,
        &mut super::Cli::command(),
        "claude-watch",
        &mut std::io::stdout(),
    );
    Ok(())
}
