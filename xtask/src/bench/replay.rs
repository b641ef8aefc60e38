//! Part 10: the recovery policy replayed against the write-up's window history
//! (`claude-watch replay`): the daemon's own core on a fake clock, no root, no process, the
//! same numbers on every machine (the history is seeded). Its tables go to BENCHMARKS.md as
//! printed; the results table gets the goals of the recovery policy.

use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{BenchEnv, Report};

/// What the replay printed: the JSON rows and the Markdown tables.
pub(super) struct Replay {
    json: Value,
    markdown: String,
    /// The arguments of the Markdown run.
    args: Vec<String>,
}

/// Runs `claude-watch replay` (two weeks of hosts of 1, 5 and 30 agents, and the grid; a day
/// of 1 and 5 in the smoke run).
pub(super) fn replay(env: &BenchEnv, smoke: bool) -> anyhow::Result<Replay> {
    let mut args: Vec<String> = if smoke {
        vec![
            "--days".into(),
            "1".into(),
            "--instances".into(),
            "1,5".into(),
        ]
    } else {
        vec!["--grid".into()]
    };
    let run = |format: &str, args: &[String]| -> anyhow::Result<String> {
        let out = Command::new(&env.claude_watch)
            .arg("replay")
            .args(args)
            .args(["--format", format])
            .output()
            .context("running claude-watch replay")?;
        if !out.status.success() {
            bail!(
                "claude-watch replay failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let markdown = run("markdown", &args)?;
    let markdown_args = args.clone();
    args.retain(|a| a != "--grid");
    let json: Value =
        serde_json::from_str(&run("json", &args)?).context("claude-watch replay --format json")?;
    Ok(Replay {
        json,
        markdown,
        args: markdown_args,
    })
}

fn sum(rows: &[&Value], key: &str) -> u64 {
    rows.iter().filter_map(|r| r[key].as_u64()).sum()
}

fn human(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

impl Replay {
    pub(super) fn report(&self, report: &mut Report) -> anyhow::Result<()> {
        let j = &self.json;
        let rows = j["rows"].as_array().context("replay rows")?;
        let of = |name: &str| -> Vec<&Value> {
            rows.iter()
                .filter(|r| r["policy"].as_str().is_some_and(|p| p.starts_with(name)))
                .collect()
        };
        let (before, naive, now) = (of("before"), of("naive"), of("this configuration"));
        if now.is_empty() || before.is_empty() || naive.is_empty() {
            bail!("the replay printed no rows: {j}");
        }
        let hosts: Vec<String> = now
            .iter()
            .filter_map(|r| r["agents"].as_u64())
            .map(|n| n.to_string())
            .collect();
        let days = j["days"].as_u64().unwrap_or(0);
        let what = format!(
            "recovery replay: the write-up's windows (5 s to 7 h, ~8 a day), {days} days on hosts of {} agents, the defaults",
            hosts.join(", ")
        );
        let left = |rows: &[&Value]| sum(rows, "left_down");
        report.row(
            10,
            &format!("{what}: agents left down (before / naive / now)"),
            &format!("{} / {} / {}", left(&before), left(&naive), left(&now)),
            "0 now",
            Some(left(&now) == 0),
        );
        let (over, short) = (
            sum(&now, "over_bound_up_to_2h"),
            sum(&now, "windows_up_to_2h"),
        );
        let (over_long, long) = (
            sum(&now, "over_bound_over_2h"),
            sum(&now, "windows_over_2h"),
        );
        report.row(
            10,
            "… windows whose restarts exceed log2(window / backoff_initial) + 2 (per host): up to 2 h; longer (the 30 m cap's price, README)",
            &format!("{over} of {short}; {over_long} of {long}"),
            "0 up to 2 h",
            Some(over == 0),
        );
        let cap = j["backoff_max_s"].as_u64().unwrap_or(0);
        let worst = now
            .iter()
            .filter_map(|r| r["downtime_max_s"].as_u64())
            .max()
            .unwrap_or(0);
        let agents = now
            .iter()
            .filter_map(|r| r["agents"].as_u64())
            .max()
            .unwrap_or(1);
        // The others are restarted one at a time after the canary: about 8 s each here.
        let release = 8 * agents;
        report.row(
            10,
            "… extra downtime after a window's close, worst (now)",
            &format!(
                "{} (p95 per host: {})",
                human(worst),
                now.iter()
                    .filter_map(|r| r["downtime_p95_s"].as_u64())
                    .map(human)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &format!("≤ backoff_max ({}) + the release", human(cap)),
            Some(worst <= cap + release),
        );
        report.row(
            10,
            "… notices (before / now), and restarts into open windows (naive / now)",
            &format!(
                "{} / {}; {} / {}",
                sum(&before, "notices"),
                sum(&now, "notices"),
                sum(&naive, "restarts_into"),
                sum(&now, "restarts_into")
            ),
            "—",
            None,
        );
        report.section(
            10,
            "Recovery replay",
            format!(
                "`claude-watch replay {} --format markdown` (the defaults: backoff_initial {}, backoff_max {}, max_restarts {}):\n\n{}",
                self.args.join(" "),
                human(j["backoff_initial_s"].as_u64().unwrap_or(0)),
                human(cap),
                j["max_restarts"].as_u64().unwrap_or(0),
                self.markdown.trim_end()
            ),
        );
        Ok(())
    }
}
