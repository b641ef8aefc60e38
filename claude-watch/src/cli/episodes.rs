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
    print!("{}", report_text(&args, now_ms)?);
    Ok(())
}

/// The report `run` prints, as of `now_ms` (human text, or one JSON object with `--json`).
pub fn report_text(args: &EpisodesArgs, now_ms: u64) -> anyhow::Result<String> {
    let since = args
        .since
        .as_deref()
        .map(|s| report::parse_since(s, now_ms))
        .transpose()?;
    let records = journal::read_records(&args.journal)
        .with_context(|| format!("reading journal {}", args.journal.display()))?;
    let episodes = journal::episodes(&records);
    let report = report::build(&episodes, since, now_ms, local_utc_offset_s);
    Ok(if args.json {
        let mut s = serde_json::to_string_pretty(&report).context("encoding report")?;
        s.push('\n');
        s
    } else {
        report::render(&report)
    })
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

    #[test]
    fn report_from_a_real_journal() {
        use crate::detect::{Detector, Event};
        use crate::http::Exchange;
        use crate::instance::InstanceId;
        use crate::journal::{Journal, JournalOptions, Record};

        let dir = std::env::temp_dir().join(format!("cw-episodes-{}", std::process::id()));
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        let path = dir.join("journal.jsonl");
        let mut journal = Journal::open(&path, JournalOptions::default()).unwrap();

        // Drive the detector through one latch that self-recovers; journal what it reports.
        let s = 1_000_000_000u64;
        let wall0 = 1_782_604_800_000u64;
        let id = InstanceId::unit("agent.service");
        let mut d = Detector::default();
        let mut events = Vec::new();
        for (i, t) in [0u64, 1, 2, 5, 9, 17].into_iter().enumerate() {
            let ex = Exchange {
                ts_ms: wall0 + t * 1000,
                mono_ns: t * s,
                pid: 7,
                tid: 7,
                conn: 1,
                method: Some("POST".into()),
                path: Some("/v1/messages?beta=true".into()),
                status: if t == 17 { 200 } else { 401 },
                latency_ms: None,
                request_id: Some(format!("req_standin_{i}")),
                retry_after: None,
                should_retry: None,
                session_id: Some("sess".into()),
                model: Some("claude-opus-4-8".into()),
                user_agent: None,
            };
            events.extend(d.tick(t * s));
            events.extend(d.observe(&id, 7, &ex, t * s));
        }
        for e in &events {
            if let Event::EpisodeOpened(ep) | Event::EpisodeUpdated(ep) | Event::EpisodeClosed(ep) =
                e
            {
                journal
                    .append(&Record::Episode {
                        at_ms: ep.last_401_ms,
                        episode: ep.clone(),
                    })
                    .unwrap();
            }
        }
        drop(journal);

        let now = wall0 + 3_600_000;
        let args = EpisodesArgs {
            journal: path.clone(),
            since: Some("1d".into()),
            json: true,
        };
        let json: serde_json::Value =
            serde_json::from_str(&report_text(&args, now).unwrap()).unwrap();
        assert_eq!(json["windows"], 1);
        assert_eq!(json["self_recovered_without_restart"], 1);
        assert_eq!(json["duration"]["max_ms"], 17_000);
        assert_eq!(json["episodes"][0]["request_ids"][0], "req_standin_0");
        let human = report_text(
            &EpisodesArgs {
                json: false,
                ..args
            },
            now,
        )
        .unwrap();
        assert!(human.contains("req_standin_4"), "{human}");
        assert!(human.contains("windows:           1"), "{human}");
        let later = EpisodesArgs {
            journal: path,
            since: Some("2026-06-29T00:00:00Z".into()),
            json: true,
        };
        let json: serde_json::Value =
            serde_json::from_str(&report_text(&later, now).unwrap()).unwrap();
        assert_eq!(json["windows"], 0);
    }
}
