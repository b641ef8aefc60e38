//! `claude-watch episodes`: the episode report from the journal, as text, JSON, Markdown or an
//! SVG picture; and the import of the history Claude Code's transcripts already hold.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::Config;
use crate::detect::DetectorConfig;
use crate::journal::{self, Journal, JournalOptions};
use crate::{history, report, svg};

/// How the report is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text for a terminal.
    #[default]
    Text,
    /// One JSON object.
    Json,
    /// Markdown to attach to an upstream issue.
    Markdown,
}

/// What `claude-watch episodes --help` says beyond the one-line summary.
pub const LONG_ABOUT: &str =
    "Report 401 latch episodes from the journal, as you would send them upstream: windows per
day, duration median/p90/max, recoveries by kind, idle-wake vs mid-use and their morning share,
Claude Code versions, and request ids with their local times.

--import first rebuilds the history Claude Code's own session transcripts hold
(~/.claude/projects/<project>/<session>.jsonl): 401 and 429 answers per session, turned into
episodes by the daemon's own detector and thresholds ([detector] of --config), and stored in the
journal as source \"transcript\". Episodes the daemon saw live (same request ids, or same session
at the same time) and earlier imports are not stored twice. Only times, session ids, request ids,
models, statuses and versions are read, never prompts or answers. Without DIR: every user's
~/.claude/projects and $CLAUDE_CONFIG_DIR/projects.";

/// The examples `claude-watch episodes --help` ends with.
pub const EXAMPLES: &str = "Examples:
  claude-watch episodes --since 7d                     text report of the last week
  claude-watch episodes --import                       import every user's transcripts (root)
  claude-watch episodes --import /home/ci/.claude --format markdown > report.md
  claude-watch episodes --format markdown --redact-instances > upstream.md
  claude-watch episodes --svg episodes.svg             timeline per instance, windows per day
  claude-watch episodes --json                         one JSON object (same as --format json)
  claude-watch episodes --journal host-1.jsonl --journal host-2.jsonl   one report for a fleet";

/// Arguments of `claude-watch episodes` (see [`LONG_ABOUT`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EpisodesArgs {
    /// The journal file (rotated files `PATH.1`, `PATH.2`... are read too; default: the
    /// configuration's `[daemon] journal`). Repeat it for a fleet's journals: one report over
    /// all of them, each instance named `host/instance` (an `--import` goes into the first).
    #[arg(long, env = "CLAUDE_WATCH_JOURNAL", action = clap::ArgAction::Append)]
    pub journal: Vec<PathBuf>,
    /// Only episodes that started at or after this time: RFC 3339 (`2026-06-13T00:00:00Z`) or a
    /// duration before now (`24h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Print the report as one JSON object (same as `--format json`).
    #[arg(long)]
    pub json: bool,
    /// How to print the report.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Import episodes from Claude Code transcripts into the journal first. DIR is a
    /// `projects` directory, or a `~/.claude` / `$CLAUDE_CONFIG_DIR` holding one; without DIR,
    /// every user's `~/.claude/projects` and `$CLAUDE_CONFIG_DIR/projects`.
    #[arg(long, value_name = "DIR", num_args = 0..)]
    pub import: Option<Vec<PathBuf>>,
    /// Also draw the episodes as an SVG picture into FILE (timeline per instance and windows
    /// per day).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Name instances `instance-1`, `instance-2`... in the report and the picture.
    #[arg(long)]
    pub redact_instances: bool,
    /// The daemon's configuration: its journal is the one read (unless `--journal` is given),
    /// its `[detector]` thresholds and rotation are the import's (default:
    /// /etc/claude-watch/config.toml when it exists, else the built-in one).
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
impl EpisodesArgs {
    /// Arguments for a plain report of `journal` (the tests' starting point).
    pub fn for_journal(journal: impl Into<PathBuf>) -> Self {
        Self {
            journal: vec![journal.into()],
            ..Self::default()
        }
    }
}

/// The local UTC offset in seconds at `ms` since the epoch (the C library's `localtime_r`, so
/// `TZ` is honoured); 0 when it cannot be determined.
pub fn local_utc_offset_s(ms: u64) -> i64 {
    local_tm(ms).map_or(0, |tm| tm.tm_gmtoff)
}

/// The local time zone's abbreviation at `ms` (`CDT`, `UTC`...), from `localtime_r`.
pub fn local_zone_name(ms: u64) -> String {
    local_tm(ms)
        .filter(|tm| !tm.tm_zone.is_null())
        // SAFETY: `tm_zone` points to a NUL-terminated static string of the C library's tz data.
        .map(|tm| {
            unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) }
                .to_string_lossy()
                .into_owned()
        })
        .filter(|z| !z.is_empty())
        .unwrap_or_else(|| crate::time::offset_text(local_utc_offset_s(ms)))
}

fn local_tm(ms: u64) -> Option<libc::tm> {
    let t = libc::time_t::try_from(ms / 1000).ok()?;
    // SAFETY: `tm` is a plain C struct for which all-zero is valid; `localtime_r` writes only
    // into it and reads `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let r = unsafe { libc::localtime_r(&raw const t, &raw mut tm) };
    (!r.is_null()).then_some(tm)
}

/// The import's settings from the configuration: the detector thresholds, and the journal's
/// rotation (the daemon's, so an import never rotates the journal differently).
fn import_settings(config: &Config) -> (DetectorConfig, JournalOptions) {
    let d = &config.daemon;
    (
        config.detector.detector_config(),
        JournalOptions {
            max_bytes: d.journal_max_bytes,
            keep: usize::try_from(d.journal_keep).unwrap_or(usize::MAX),
        },
    )
}

/// Imports the transcripts under `dirs` (the default places when empty) into `journal_path`;
/// returns a one-paragraph summary for stderr.
pub fn import(
    journal_path: &Path,
    dirs: &[PathBuf],
    config: &Config,
    now_ms: u64,
) -> anyhow::Result<String> {
    let (cfg, options) = import_settings(config);
    let roots: Vec<PathBuf> = if dirs.is_empty() {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let config_dir = std::env::var_os("CLAUDE_CONFIG_DIR").map(PathBuf::from);
        history::default_roots(&passwd, config_dir.as_deref())
    } else {
        dirs.iter().map(|d| history::projects_dir(d)).collect()
    };
    let mut journal = Journal::open(journal_path, options)
        .with_context(|| format!("opening journal {}", journal_path.display()))?;
    let (loaded, history, outcome) = history::import_dirs(&mut journal, &roots, &cfg, now_ms)
        .with_context(|| format!("importing into {}", journal_path.display()))?;
    let c = loaded.counts;
    for skipped in &loaded.skipped {
        eprintln!("claude-watch: {}", crate::text::printable(skipped));
    }
    if loaded.files.is_empty() && !dirs.is_empty() {
        eprintln!(
            "claude-watch: no transcripts under {}: give a home, a ~/.claude (or $CLAUDE_CONFIG_DIR) or its projects directory",
            crate::text::printable(
                &dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
    }
    Ok(format!(
        "imported from {} transcript director{} ({} sessions, {} processes): {} episodes added, \
         {} already seen live, {} already imported; {} throttles and {} restarts added.\n\
         lines: {} read, {} used, {} ignored, {} malformed, {} truncated, {} from unknown versions (skipped)\n",
        roots.len(),
        if roots.len() == 1 { "y" } else { "ies" },
        history.sessions,
        history.processes,
        outcome.episodes_added,
        outcome.episodes_seen_live,
        outcome.episodes_already_imported,
        outcome.throttles_added,
        outcome.restarts_added,
        c.lines,
        c.used,
        c.ignored,
        c.malformed,
        c.truncated,
        c.unknown_version,
    ))
}

/// Runs the subcommand: imports if asked, prints the report, draws the picture if asked.
pub fn run(mut args: EpisodesArgs) -> anyhow::Result<()> {
    let now_ms = crate::time::wall_now_ms();
    // The configuration is read only when something comes from it: the journal (without
    // --journal), or the import's thresholds.
    let needs_config = args.journal.is_empty() || args.import.is_some() || args.config.is_some();
    let (config, origin) = if needs_config {
        crate::config::find(args.config.as_deref())?
    } else {
        (Config::default(), "--journal".to_owned())
    };
    if args.journal.is_empty() {
        args.journal.push(config.daemon.journal.clone());
    }
    if let Some(dirs) = &args.import {
        let first = args
            .journal
            .first()
            .context("--import needs a --journal to store into")?;
        eprint!("{}", import(first, dirs, &config, now_ms)?);
    }
    for path in &args.journal {
        if !journal::exists(path) {
            anyhow::bail!(
                "no journal at {} (from {origin}): no daemon has run with this configuration, which creates it at start. Give the daemon's configuration (--config FILE) or its journal (--journal FILE)",
                path.display()
            );
        }
    }
    print!("{}", report_text(&args, now_ms)?);
    Ok(())
}

/// The report `run` prints, as of `now_ms` (text, JSON or Markdown); also writes the SVG
/// picture when `--svg` is given.
pub fn report_text(args: &EpisodesArgs, now_ms: u64) -> anyhow::Result<String> {
    let since = args
        .since
        .as_deref()
        .map(|s| report::parse_since(s, now_ms))
        .transpose()?;
    let (mut episodes, mut throttles, mut restarts) = (Vec::new(), Vec::new(), Vec::new());
    let mut hosts = std::collections::BTreeSet::new();
    let mut per_journal = Vec::new();
    for path in &args.journal {
        let records = journal::read_records(path)
            .with_context(|| format!("reading journal {}", path.display()))?;
        let (e, t, r) = (
            journal::episodes(&records),
            journal::throttles(&records),
            journal::restarts(&records),
        );
        // The journal's host: the one its episodes name most, else its path.
        let mut named = std::collections::BTreeMap::<&str, usize>::new();
        for h in e.iter().filter_map(|e| e.host.as_deref()) {
            *named.entry(h).or_default() += 1;
        }
        let host = named
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or_else(|| path.display().to_string(), |(h, _)| h.to_owned());
        hosts.insert(host.clone());
        per_journal.push((host, e, t, r));
    }
    // A fleet's journals: every instance named by its host too (`host/instance`).
    let fleet = hosts.len() > 1;
    for (host, mut e, mut t, mut r) in per_journal {
        if fleet {
            for ep in &mut e {
                let h = ep.host.get_or_insert_with(|| host.clone()).clone();
                ep.instance = format!("{h}/{}", ep.instance);
                ep.id = format!("{h}/{}", ep.id);
            }
            for th in &mut t {
                th.instance = format!("{host}/{}", th.instance);
            }
            for rs in &mut r {
                rs.instance = format!("{host}/{}", rs.instance);
                rs.episode_id = rs.episode_id.take().map(|id| format!("{host}/{id}"));
            }
        }
        episodes.extend(e);
        throttles.extend(t);
        restarts.extend(r);
    }
    episodes.sort_by_key(|e| e.first_401_ms);
    throttles.sort_by_key(|t| t.first_429_ms);
    restarts.sort_by_key(|r| r.at_ms);
    if let Some(s) = since {
        restarts.retain(|r| r.at_ms >= s);
        episodes.retain(|e| e.first_401_ms >= s);
        throttles.retain(|t| t.first_429_ms >= s);
    }
    if args.redact_instances {
        report::redact_instances(&mut episodes, &mut throttles, &mut restarts);
    }
    let report = report::build(&episodes, &throttles, since, now_ms, local_utc_offset_s);
    if let Some(path) = &args.svg {
        let picture = svg::render(&svg::Input {
            episodes: &episodes,
            throttles: &throttles,
            restarts: &restarts,
            by_day: &report.by_day,
            utc_offset_s: local_utc_offset_s(now_ms),
            idle_wake: (report.idle_wake.episodes, report.idle_wake.morning),
            mid_use: (report.mid_use.episodes, report.mid_use.morning),
        });
        std::fs::write(path, picture).with_context(|| format!("writing {}", path.display()))?;
    }
    let format = if args.json { Format::Json } else { args.format };
    Ok(match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report).context("encoding report")?;
            s.push('\n');
            s
        }
        Format::Markdown => report::render_markdown(&report, &local_zone_name(now_ms)),
        Format::Text => crate::text::printable_lines(&report::render(&report)).into_owned(),
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
        assert_eq!(cli.args.journal, [PathBuf::from("/tmp/j.jsonl")]);
        assert_eq!(cli.args.since.as_deref(), Some("7d"));
        assert!(cli.args.json);
        assert_eq!(cli.args.import, None, "no import unless asked");
        let cli = Cli::try_parse_from(["x", "--import", "--format", "markdown"]).unwrap();
        assert_eq!(
            cli.args.import,
            Some(vec![]),
            "--import alone: the default places"
        );
        assert_eq!(cli.args.format, Format::Markdown);
        let cli = Cli::try_parse_from([
            "x",
            "--import",
            "/a",
            "/b",
            "--svg",
            "/tmp/e.svg",
            "--redact-instances",
        ])
        .unwrap();
        assert_eq!(cli.args.import, Some(vec!["/a".into(), "/b".into()]));
        assert_eq!(cli.args.svg, Some(PathBuf::from("/tmp/e.svg")));
        assert!(cli.args.redact_instances);
        assert!(Cli::try_parse_from(["x", "--format", "html"]).is_err());
        let help = crate::cli::Cli::try_parse_from(["claude-watch", "episodes", "--help"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            help.contains("Examples:") && help.contains("--import") && help.contains("--svg"),
            "{help}"
        );
        let missing = EpisodesArgs {
            json: true,
            ..EpisodesArgs::for_journal("/nonexistent/dir/j.jsonl")
        };
        let err = run(missing).expect_err("a missing journal is an error, not an empty report");
        assert!(
            err.to_string()
                .contains("no journal at /nonexistent/dir/j.jsonl"),
            "{err}"
        );
        let bad = EpisodesArgs {
            since: Some("soon".into()),
            ..EpisodesArgs::for_journal("/nonexistent/j")
        };
        assert!(run(bad).is_err());
    }

    #[test]
    fn import_uses_the_configured_thresholds_and_rotation() {
        let path =
            std::env::temp_dir().join(format!("cw-import-config-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[daemon]\njournal_max_bytes = 1048576\njournal_keep = 9\n[detector]\nlatch_min_401s = 7\nlatch_min_span = \"30s\"\n",
        )
        .unwrap();
        let (cfg, options) = import_settings(&crate::config::find(Some(&path)).unwrap().0);
        let _ = std::fs::remove_file(&path);
        assert_eq!(cfg.latch_min_401s, 7);
        assert_eq!(cfg.latch_min_span, std::time::Duration::from_secs(30));
        assert_eq!(
            options,
            JournalOptions {
                max_bytes: 1 << 20,
                keep: 9
            }
        );
        assert!(crate::config::find(Some(Path::new("/nonexistent/config.toml"))).is_err());
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
            since: Some("1d".into()),
            json: true,
            ..EpisodesArgs::for_journal(path.clone())
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
            since: Some("2026-06-29T00:00:00Z".into()),
            json: true,
            ..EpisodesArgs::for_journal(path.clone())
        };
        let json: serde_json::Value =
            serde_json::from_str(&report_text(&later, now).unwrap()).unwrap();
        assert_eq!(json["windows"], 0);

        // A fleet: the same history on two hosts, one report over both journals.
        let records = journal::read_records(&path).unwrap();
        let mut fleet = Vec::new();
        for host in ["host-1", "host-2"] {
            let p = dir.join(format!("{host}.jsonl"));
            let mut j = Journal::open(&p, JournalOptions::default()).unwrap();
            for r in &records {
                if let Record::Episode { at_ms, episode } = r {
                    let mut episode = episode.clone();
                    episode.host = Some(host.into());
                    j.append(&Record::Episode {
                        at_ms: *at_ms,
                        episode,
                    })
                    .unwrap();
                }
            }
            fleet.push(p);
        }
        let both = EpisodesArgs {
            journal: fleet,
            json: true,
            ..EpisodesArgs::for_journal(PathBuf::new())
        };
        let json: serde_json::Value =
            serde_json::from_str(&report_text(&both, now).unwrap()).unwrap();
        assert_eq!(json["windows"], 2);
        assert_eq!(json["hosts"]["host-1"], 1);
        assert_eq!(json["hosts"]["host-2"], 1);
        let names: Vec<&str> = json["episodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["instance"].as_str())
            .collect();
        assert_eq!(names, ["host-1/agent.service", "host-2/agent.service"]);
        let text = report_text(
            &EpisodesArgs {
                json: false,
                ..both
            },
            now,
        )
        .unwrap();
        assert!(
            text.contains("hosts:             2 (host-1 1, host-2 1)"),
            "{text}"
        );
    }
}
