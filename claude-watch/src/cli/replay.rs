//! `claude-watch replay`: the recovery configuration replayed against the write-up's window
//! history on a fake clock, beside the policy before escalation became a notice and a naive
//! fixed-interval watchdog.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::report::percentile;
use crate::time::human;
use crate::watch::replay::{self, Outcome, Policy, Scenario, Timing};

/// Replay weeks of upstream rejection windows against a recovery configuration, in a second,
/// and compare it with the policy before escalation became a notice (1 m doubling to 30 m,
/// restarts given up after 3) and a naive watchdog (a restart every minute).
///
/// The history is the write-up's: about 8 windows a day, from 5 s to 125 minutes, 3% of them 2
/// to 7 hours, half hitting every agent of the host at once, half a single one; and a bad
/// credential persisted for 6 hours. The decisions are the daemon's own core, fed the agents'
/// answers; nothing is started or restarted. Columns: restarts into open windows (all of them,
/// the most in one window, windows over log2(window / backoff_initial) + 2), notices (hooks
/// run), extra downtime from a window's close to the agent's next accepted answer, agents left
/// down long after the last window.
///
/// Examples:
///   claude-watch replay
///   claude-watch replay --config /etc/claude-watch/config.toml --instances 10
///   claude-watch replay --days 28 --seed 7 --format markdown
///   claude-watch replay --grid          which backoff_initial / backoff_max / max_restarts
///   claude-watch replay --instances 30 --journal replay.jsonl
///   claude-watch episodes --journal replay.jsonl --svg replay.svg    the two weeks, drawn
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ReplayArgs {
    /// The configuration to replay (its `[detector]` and `[recovery]`; default: the built-in one).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Days of history per host.
    #[arg(long, default_value_t = 14, value_name = "N")]
    pub days: u32,
    /// Agents per host, one replay each (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,5,30",
        value_name = "N,..."
    )]
    pub instances: Vec<usize>,
    /// Seed of the history (the same seed, the same windows).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// `text`, `markdown` (tables for BENCHMARKS.md) or `json` (one object: the rows).
    #[arg(long, default_value = "text", value_parser = ["text", "markdown", "json"])]
    pub format: String,
    /// Also sweep backoff_initial, backoff_max and max_restarts around the configuration.
    #[arg(long)]
    pub grid: bool,
    /// Also write the journal this configuration would have written on the largest host of
    /// `--instances` over the last `--days` (episodes, restarts, incidents, as the daemon
    /// writes them; the history ends now), for
    /// `claude-watch episodes --journal FILE` and its `--svg` picture. Replaced if it exists.
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,
}

/// Runs the replay and prints the tables.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    if args.days == 0 || args.instances.iter().any(|n| *n == 0 || *n > 1000) {
        anyhow::bail!("--days must be at least 1 and --instances between 1 and 1000");
    }
    let config = match &args.config {
        Some(path) => crate::config::load(path)?,
        None => Config::builtin(),
    };
    let name = args
        .config
        .as_ref()
        .map_or_else(|| "built-in".to_owned(), |p| p.display().to_string());
    // The core logs every decision; a replay makes thousands.
    let (text, journalled) =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            render(args, &config, &name)
        });
    print!("{text}");
    if let (Some(path), Some(journalled)) = (&args.journal, journalled) {
        write_journal(args, &journalled, path)?;
    }
    Ok(())
}

/// The configuration's replay on the largest host, kept with its journal for `--journal`.
struct Journalled {
    agents: usize,
    windows: usize,
    outcome: Outcome,
}

/// Writes the journal of the configuration's replay on the largest host of `--instances`.
fn write_journal(
    args: &ReplayArgs,
    journalled: &Journalled,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let outcome = &journalled.outcome;
    let mut text = Vec::new();
    for record in &outcome.journal {
        serde_json::to_writer(&mut text, record)?;
        text.push(b'\n');
    }
    std::fs::write(path, text)
        .with_context(|| format!("cannot write the replayed journal to {}", path.display()))?;
    let episodes: std::collections::BTreeSet<(&str, u64)> = outcome
        .journal
        .iter()
        .filter_map(|r| match r {
            crate::journal::Record::Episode { episode, .. } => {
                Some((episode.instance.as_str(), episode.first_401_ms))
            }
            _ => None,
        })
        .collect();
    eprintln!(
        "wrote {} journal records ({} episodes of {} agents, {} windows, {} days) to {}\n\
         report and picture: claude-watch episodes --journal {} --svg replay.svg",
        outcome.journal.len(),
        episodes.len(),
        journalled.agents,
        journalled.windows,
        args.days,
        path.display(),
        path.display()
    );
    Ok(())
}

/// One host size under one policy.
#[derive(Debug, serde::Serialize)]
struct Row {
    agents: usize,
    policy: String,
    windows: usize,
    /// Restarts whose new process an open window rejected.
    restarts_into: u32,
    most_in_one_window: u32,
    /// Windows up to 2 h, and those of them over log2(window / backoff_initial) + 2.
    windows_up_to_2h: usize,
    over_bound_up_to_2h: usize,
    windows_over_2h: usize,
    over_bound_over_2h: usize,
    notices: usize,
    /// Extra downtime after a window's close, seconds.
    downtime_median_s: Option<u64>,
    downtime_p95_s: Option<u64>,
    downtime_max_s: Option<u64>,
    left_down: usize,
}

impl Row {
    fn new(agents: usize, policy: &Policy, o: &Outcome) -> Self {
        let d: Vec<u64> = o.downtimes().iter().map(Duration::as_secs).collect();
        let two_hours = Duration::from_secs(2 * 3600);
        let (short_over, short) = o.over_bound(policy.initial(), two_hours);
        let (all_over, all) = o.over_bound(policy.initial(), Duration::MAX);
        Self {
            agents,
            policy: policy.name.clone(),
            windows: o.windows.len(),
            restarts_into: o.windows.iter().map(|w| w.restarts_into).sum(),
            most_in_one_window: o.windows.iter().map(|w| w.restarts_into).max().unwrap_or(0),
            windows_up_to_2h: short,
            over_bound_up_to_2h: short_over,
            windows_over_2h: all - short,
            over_bound_over_2h: all_over - short_over,
            notices: o.notices.len(),
            downtime_median_s: percentile(&d, 0.5),
            downtime_p95_s: percentile(&d, 0.95),
            downtime_max_s: d.last().copied(),
            left_down: o.left_down,
        }
    }

    fn downtimes(&self) -> String {
        format!(
            "{} / {} / {}",
            secs(self.downtime_median_s, "-"),
            secs(self.downtime_p95_s, "-"),
            secs(self.downtime_max_s, "-")
        )
    }

    fn over_bound(&self) -> String {
        format!(
            "{} of {} / {} of {}",
            self.over_bound_up_to_2h,
            self.windows_up_to_2h,
            self.over_bound_over_2h,
            self.windows_over_2h
        )
    }
}

/// `s` seconds for a person, `none` when absent.
fn secs(s: Option<u64>, none: &str) -> String {
    s.map_or_else(|| none.to_owned(), |s| human(Duration::from_secs(s)))
}

/// A persisted bad credential under one policy.
#[derive(Debug, serde::Serialize)]
struct CredentialRow {
    policy: String,
    /// Restarts while it persisted (6 h).
    restarts: u32,
    noticed_after_s: Option<u64>,
    /// `None`: left down.
    down_after_fix_s: Option<u64>,
}

/// The whole replay, as `--format json` prints it.
#[derive(Debug, serde::Serialize)]
struct Replayed {
    days: u32,
    seed: u64,
    /// The configuration replayed (the last policy of each host's rows).
    backoff_initial_s: u64,
    backoff_max_s: u64,
    max_restarts: u32,
    rows: Vec<Row>,
    credential: Vec<CredentialRow>,
}

/// The rows, and with `--journal` the last policy's replay on the largest host with its
/// journal (the same replay as its row: its wall times end now).
fn replayed(
    args: &ReplayArgs,
    policies: &[Policy],
    timing: &Timing,
) -> (Replayed, Option<Journalled>) {
    let mut rows = Vec::new();
    let mut journalled = None;
    let largest = args.instances.iter().copied().max();
    for &n in &args.instances {
        let scenario = Scenario::writeup(args.seed, args.days, n);
        for (k, policy) in policies.iter().enumerate() {
            let keep = args.journal.is_some()
                && Some(n) == largest
                && k + 1 == policies.len()
                && journalled.is_none();
            let outcome = if keep {
                replay::run_journalled(
                    &policy.config,
                    &scenario,
                    timing,
                    crate::time::wall_now_ms(),
                )
            } else {
                replay::run(&policy.config, &scenario, timing)
            };
            rows.push(Row::new(n, policy, &outcome));
            if keep {
                journalled = Some(Journalled {
                    agents: n,
                    windows: scenario.windows.len(),
                    outcome,
                });
            }
        }
    }
    let scenario = Scenario::poisoned(Duration::from_secs(6 * 3600), 5);
    let credential = policies
        .iter()
        .map(|policy| {
            let o = replay::run(&policy.config, &scenario, timing);
            let p = &o.poisons[0];
            CredentialRow {
                policy: policy.name.clone(),
                restarts: p.restarts,
                noticed_after_s: p.noticed_after.map(|d| d.as_secs()),
                down_after_fix_s: p.down_after_fix.map(|d| d.as_secs()),
            }
        })
        .collect();
    let r = policies.last().map(|p| &p.config.recovery);
    let replayed = Replayed {
        days: args.days,
        seed: args.seed,
        backoff_initial_s: r.map_or(0, |r| r.backoff_initial.as_secs()),
        backoff_max_s: r.map_or(0, |r| r.backoff_max.get_ref().as_secs()),
        max_restarts: r.map_or(0, |r| r.max_restarts.get()),
        rows,
        credential,
    };
    (replayed, journalled)
}

fn render(args: &ReplayArgs, config: &Config, name: &str) -> (String, Option<Journalled>) {
    let timing = Timing::default();
    let configured = Policy {
        name: format!("this configuration ({name})"),
        config: config.clone(),
    };
    let policies = [Policy::before(config), Policy::naive(config), configured];
    let (replayed, journalled) = replayed(args, &policies, &timing);
    if args.format == "json" {
        return (
            serde_json::to_string(&replayed).unwrap_or_default() + "\n",
            journalled,
        );
    }
    let md = args.format == "markdown";
    let mut out = String::new();
    let r = &config.recovery;
    let _ = writeln!(
        out,
        "Replay of the write-up's window history: {} days per host, seed {}; this configuration: backoff_initial {}, backoff_max {}, max_restarts {}, canary {}, give_up {}{}\n",
        args.days,
        args.seed,
        human(r.backoff_initial),
        human(*r.backoff_max.get_ref()),
        r.max_restarts,
        r.canary,
        r.give_up,
        r.escalate_after
            .map_or_else(String::new, |d| format!(", escalate_after {}", human(d)))
    );
    let header = [
        "agents",
        "policy",
        "windows",
        "restarts into windows (all / most in one)",
        "over log2 bound (windows <= 2h / > 2h)",
        "notices (per day)",
        "extra downtime after close (median / p95 / max)",
        "left down",
    ];
    let rows: Vec<Vec<String>> = replayed
        .rows
        .iter()
        .map(|row| {
            #[expect(clippy::cast_precision_loss, reason = "a count of notices")]
            let per_day = row.notices as f64 / f64::from(args.days);
            vec![
                row.agents.to_string(),
                row.policy.clone(),
                row.windows.to_string(),
                format!("{} / {}", row.restarts_into, row.most_in_one_window),
                row.over_bound(),
                format!("{} ({per_day:.1})", row.notices),
                row.downtimes(),
                row.left_down.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&header, &rows, md));

    out.push('\n');
    let _ = writeln!(
        out,
        "A bad credential persisted in one of 5 agents, fixed after 6 h:{}",
        if md { "\n" } else { "" }
    );
    let header = [
        "policy",
        "restarts in 6 h",
        "first notice after",
        "down after the fix",
    ];
    let rows: Vec<Vec<String>> = replayed
        .credential
        .iter()
        .map(|c| {
            vec![
                c.policy.clone(),
                c.restarts.to_string(),
                secs(c.noticed_after_s, "never"),
                secs(c.down_after_fix_s, "left down"),
            ]
        })
        .collect();
    out.push_str(&table(&header, &rows, md));

    if args.grid {
        out.push('\n');
        out.push_str(&grid(args, config, &timing, md));
    }
    (out, journalled)
}

/// backoff_initial × backoff_max over the hosts of `--instances` together, then max_restarts
/// on the largest host.
fn grid(args: &ReplayArgs, config: &Config, timing: &Timing, md: bool) -> String {
    let n = args.instances.iter().copied().max().unwrap_or(30);
    let hosts: Vec<Scenario> = args
        .instances
        .iter()
        .map(|&n| Scenario::writeup(args.seed, args.days, n))
        .collect();
    let scenario = Scenario::writeup(args.seed, args.days, n);
    let k = config.recovery.max_restarts.get();
    let sizes: Vec<String> = args.instances.iter().map(ToString::to_string).collect();
    let gap = if md { "\n" } else { "" };
    let mut out = format!(
        "backoff_initial x backoff_max, hosts of {} agents together, max_restarts {k}, canary {}:\n{gap}",
        sizes.join(", "),
        config.recovery.canary
    );
    let header = [
        "backoff_initial",
        "backoff_max",
        "restarts into windows",
        "over log2 bound (windows <= 2h / > 2h)",
        "extra downtime (median / p95 / max)",
        "notices",
        "left down",
    ];
    let mut rows = Vec::new();
    for initial in [15, 30, 60, 120] {
        for cap in [15, 30, 60, 90, 120] {
            let policy = Policy::with(
                "grid",
                config,
                Duration::from_secs(initial),
                Duration::from_secs(cap * 60),
                k,
                config.recovery.give_up,
                config.recovery.canary,
            );
            let mut o = Outcome::default();
            for host in &hosts {
                let one = replay::run(&policy.config, host, timing);
                o.windows.extend(one.windows);
                o.notices.extend(one.notices);
                o.left_down += one.left_down;
            }
            let row = Row::new(0, &policy, &o);
            rows.push(vec![
                human(Duration::from_secs(initial)),
                human(Duration::from_secs(cap * 60)),
                row.restarts_into.to_string(),
                row.over_bound(),
                row.downtimes(),
                row.notices.to_string(),
                row.left_down.to_string(),
            ]);
        }
    }
    out.push_str(&table(&header, &rows, md));
    out.push_str(&format!(
        "\nmax_restarts, {n} agents, backoff_initial {} and backoff_max {}: notices, and when a persisted bad credential is first noticed:\n{gap}",
        human(config.recovery.backoff_initial),
        human(*config.recovery.backoff_max.get_ref())
    ));
    let header = [
        "max_restarts",
        "notices",
        "per day",
        "credential noticed after",
    ];
    let poisoned = Scenario::poisoned(Duration::from_secs(6 * 3600), 5);
    let rows: Vec<Vec<String>> = [3, 4, 5, 6, 7, 8]
        .into_iter()
        .map(|k| {
            let policy = Policy::with(
                "k",
                config,
                config.recovery.backoff_initial,
                *config.recovery.backoff_max.get_ref(),
                k,
                config.recovery.give_up,
                config.recovery.canary,
            );
            let o = replay::run(&policy.config, &scenario, timing);
            let p = replay::run(&policy.config, &poisoned, timing);
            vec![
                k.to_string(),
                o.notices.len().to_string(),
                format!("{:.1}", o.notices.len() as f64 / f64::from(args.days)),
                p.poisons[0]
                    .noticed_after
                    .map_or_else(|| "never".into(), human),
            ]
        })
        .collect();
    out.push_str(&table(&header, &rows, md));
    out
}

fn table(header: &[&str], rows: &[Vec<String>], md: bool) -> String {
    let mut out = String::new();
    if md {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            header.iter().map(|_| "---|").collect::<String>()
        );
        for r in rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        return out;
    }
    super::columns(header, rows)
}
