//! `claude-watch replay`: the recovery configuration replayed against the write-up's window
//! history on a fake clock, beside the policy before escalation became a notice and a naive
//! fixed-interval watchdog.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
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
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ReplayArgs {
    /// The configuration to replay (its [detector] and [recovery]; default: the built-in one).
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
    /// `text` or `markdown` (tables for BENCHMARKS.md).
    #[arg(long, default_value = "text", value_parser = ["text", "markdown"])]
    pub format: String,
    /// Also sweep backoff_initial, backoff_max and max_restarts around the configuration.
    #[arg(long)]
    pub grid: bool,
}

/// Runs the replay and prints the tables.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    if args.days == 0 || args.instances.iter().any(|n| *n == 0 || *n > 1000) {
        anyhow::bail!("--days must be at least 1 and --instances between 1 and 1000");
    }
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::builtin(),
    };
    let name = args
        .config
        .as_ref()
        .map_or_else(|| "built-in".to_owned(), |p| p.display().to_string());
    // The core logs every decision; a replay makes thousands.
    let text =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            render(args, &config, &name)
        });
    print!("{text}");
    Ok(())
}

fn render(args: &ReplayArgs, config: &Config, name: &str) -> String {
    let md = args.format == "markdown";
    let timing = Timing::default();
    let configured = Policy {
        name: format!("this configuration ({name})"),
        config: config.clone(),
    };
    let policies = [
        Policy::before(config),
        Policy::naive(config),
        configured.clone(),
    ];
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
    let mut rows = Vec::new();
    for &n in &args.instances {
        let scenario = Scenario::writeup(args.seed, args.days, n);
        for policy in &policies {
            let outcome = replay::run(&policy.config, &scenario, &timing);
            rows.push(row(n, policy, &outcome, args.days));
        }
    }
    out.push_str(&table(&header, &rows, md));

    // A persisted bad credential, fixed after 6 hours.
    out.push('\n');
    let header = [
        "policy",
        "restarts in 6 h",
        "first notice after",
        "down after the fix",
    ];
    let scenario = Scenario::poisoned(Duration::from_secs(6 * 3600), 5);
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|policy| {
            let o = replay::run(&policy.config, &scenario, &timing);
            let p = &o.poisons[0];
            vec![
                policy.name.clone(),
                p.restarts.to_string(),
                p.noticed_after.map_or_else(|| "never".into(), human),
                p.down_after_fix.map_or_else(|| "left down".into(), human),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "A bad credential persisted in one of 5 agents, fixed after 6 h:"
    );
    out.push_str(&table(&header, &rows, md));

    if args.grid {
        out.push('\n');
        out.push_str(&grid(args, config, &timing, md));
    }
    out
}

/// Windows over the bound among those up to 2 h and those longer: `3 of 110 / 2 of 3`.
fn over_bound(o: &Outcome, initial: Duration) -> String {
    let two_hours = Duration::from_secs(2 * 3600);
    let (short_over, short) = o.over_bound(initial, two_hours);
    let (all_over, all) = o.over_bound(initial, Duration::MAX);
    format!(
        "{short_over} of {short} / {} of {}",
        all_over - short_over,
        all - short
    )
}

fn row(agents: usize, policy: &Policy, o: &Outcome, days: u32) -> Vec<String> {
    let downtimes = o.downtimes();
    let most = o.windows.iter().map(|w| w.restarts_into).max().unwrap_or(0);
    let into: u32 = o.windows.iter().map(|w| w.restarts_into).sum();
    #[expect(clippy::cast_precision_loss, reason = "a count of notices")]
    let per_day = o.notices.len() as f64 / f64::from(days);
    vec![
        agents.to_string(),
        policy.name.clone(),
        o.windows.len().to_string(),
        format!("{into} / {most}"),
        over_bound(o, policy.initial()),
        format!("{} ({per_day:.1})", o.notices.len()),
        format!(
            "{} / {} / {}",
            quantile(&downtimes, 0.5),
            quantile(&downtimes, 0.95),
            downtimes.last().map_or_else(|| "-".into(), |d| human(*d))
        ),
        o.left_down.to_string(),
    ]
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
    let mut out = format!(
        "backoff_initial x backoff_max, hosts of {} agents together, max_restarts {k}, canary {}:\n",
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
            let d = o.downtimes();
            let into: u32 = o.windows.iter().map(|w| w.restarts_into).sum();
            rows.push(vec![
                human(Duration::from_secs(initial)),
                human(Duration::from_secs(cap * 60)),
                into.to_string(),
                over_bound(&o, policy.initial()),
                format!(
                    "{} / {} / {}",
                    quantile(&d, 0.5),
                    quantile(&d, 0.95),
                    d.last().map_or_else(|| "-".into(), |x| human(*x))
                ),
                o.notices.len().to_string(),
                o.left_down.to_string(),
            ]);
        }
    }
    out.push_str(&table(&header, &rows, md));
    out.push_str(&format!(
        "\nmax_restarts, {n} agents, backoff_initial {} and backoff_max {}: notices, and when a persisted bad credential is first noticed:\n",
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

/// The `q` quantile of sorted `xs` (nearest rank), `-` when empty.
fn quantile(xs: &[Duration], q: f64) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let i = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
    human(xs[i])
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
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
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
    out.push_str(&line(header.to_vec()));
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
