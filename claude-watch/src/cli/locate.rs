//! `claude-watch locate BINARY [--json]`: where the TLS functions are in a binary, and why.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use crate::locate::{self, Cache, report};

/// The examples `claude-watch locate --help` ends with.
pub const EXAMPLES: &str = "Examples:
  claude-watch locate ~/.local/bin/claude          the native installer's binary (links are followed)
  claude-watch locate $(which claude) --json       one JSON object: offsets, method, build id
  claude-watch locate /usr/lib/x86_64-linux-gnu/libssl.so.3   a shared library with symbols
  claude-watch locate ./claude --no-cache          locate again, ignoring the cache";

/// Arguments of `claude-watch locate`.
#[derive(Debug, clap::Args)]
pub struct LocateArgs {
    /// The ELF executable or shared library to inspect (e.g. a `claude` or `bun` binary).
    pub binary: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Cache directory for results keyed by GNU build id.
    #[arg(long, value_name = "DIR", default_value = locate::cache::DEFAULT_DIR)]
    pub cache_dir: PathBuf,
    /// Neither read nor write the cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// Runs `claude-watch locate`.
///
/// # Errors
/// When the binary cannot be located (the error says why) or output cannot be written.
pub fn run(args: LocateArgs) -> anyhow::Result<()> {
    let cache = (!args.no_cache).then(|| Cache::new(&args.cache_dir));
    let started = Instant::now();
    // The operator named this file: links are followed (an installer's `~/.local/bin/claude`
    // is one), unlike the daemon's looks, which never follow a path a process chose.
    let binary = std::fs::canonicalize(&args.binary)
        .with_context(|| format!("{}: cannot resolve", args.binary.display()))?;
    let located = locate::locate_file(&binary, cache.as_ref())?;
    let elapsed = started.elapsed();
    tracing::info!(binary = %args.binary.display(), method = %located.method, elapsed_ms = elapsed.as_secs_f64() * 1e3, "located");
    let text = if args.json {
        serde_json::to_string(&report::json(&located)).context("encoding JSON")?
    } else {
        format!(
            "{}elapsed:  {:.1} ms",
            report::human(&args.binary, &located),
            elapsed.as_secs_f64() * 1e3
        )
    };
    println!("{text}");
    Ok(())
}
