//! `claude-watch episodes`: the episode report from the journal.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::{journal, report};

/// Where the daemon keeps its journal by default.
pub const DEFAULT_JOURNAL: &str = "/var/lib/claude-watch/journal.jsonl";

/// Arguments of `claude-watch episodes`.
#[derive(Clone, Debug, clap::Args)]
pub struct EpisodesArgs {
    /// The journal file (rotated files `PATH.1`, `PATH.2`... are read too).
    #[arg(long, default_value = DEFAULT_JOURNAL, env = "CLAUDE_WATCH_JOURNAL")]
    pub journal: PathBuf,
    /// Only episodes that started at or after this time: RFC 3339 (`2026-06-13T00:00:00Z`) or a
    /// duration before now (`24h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The local UTC offset in seconds at `ms` since the epoch (the C library's `localtime_r`, so
/// `TZ` is honoured); 0 when it cannot be determined.
pub fn local_utc_offset_s(ms: u64) -> i64 {
    let Ok(t) = libc::time_t::try_from(ms / 1000) else {
        return 0;
    };
    // SAFETY: `tm` is a plain C struct for which all-zero is valid; `localtime_r` writes only
    // into it and reads `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let r = unsafe { libc::localtime_r(&raw const t, &raw mut tm) };
    if r.is_null() { 0 } else { tm.tm_gmtoff }
}

/// Runs the subcommand: reads the journal, prints the report.
pub fn run(args: EpisodesArgs) -> anyhow::Result<()> {
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_millis(),
    )
    .context("system clock out of range")?;
    let since = args
        .since
        .as_deref()
        .map(|s| report::parse_since(s, now_ms))
        .transpose()?;
    let records = journal::read_records(&args.journal)
        .with_context(|| format!("reading journal {}", args.journal.display()))?;
    let episodes = journal::episodes(&records);
    let report = report::build(&episodes, since, now_ms, local_utc_offset_s);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding report")?
        );
    } else {
        print!("{}", report::render(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_that_of_tz() {
        // The test process's TZ is whatever the machine has; UTC machines give 0, and the
        // offset is always a whole number of minutes within a day.
        let off = local_utc_offset_s(1_782_604_800_000);
        assert!(off.abs() < 86_400 && off % 60 == 0, "{off}");
    }

    #[test]
    fn args_parse() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: EpisodesArgs,
        }
        let cli =
            Cli::try_parse_from(["x", "--journal", "/tmp/j.jsonl", "--since", "7d", "--json"])
                .unwrap();
        assert_eq!(cli.args.journal, PathBuf::from("/tmp/j.jsonl"));
        assert_eq!(cli.args.since.as_deref(), Some("7d"));
        assert!(cli.args.json);
        let missing = EpisodesArgs {
            journal: "/nonexistent/dir/j.jsonl".into(),
            since: None,
            json: true,
        };
        run(missing).expect("a missing journal is an empty report");
        let bad = EpisodesArgs {
            journal: "/nonexistent/j".into(),
            since: Some("soon".into()),
            json: false,
        };
        assert!(run(bad).is_err());
    }
}
