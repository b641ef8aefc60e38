//! Part 11: the fleet (`[fleet]`): five daemons standing for five hosts, a real Prometheus and
//! Alertmanager, one 60 s upstream window over every agent, run once with `[fleet]` and once
//! without. The scenario is the integration test's (`tests/tests/fleet.rs`, `fleet_figures`),
//! run here for its figures: how long from the upstream rejecting everyone to the last host
//! holding, the restarts into the window with and without, the daemons' added CPU.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{BenchEnv, Report};

/// The figures of both runs.
pub(super) struct Fleet {
    with: Value,
    without: Value,
}

/// Runs the scenario twice through the test harness.
pub(super) fn fleet(env: &BenchEnv, root: &Path) -> anyhow::Result<Fleet> {
    let out = env.scratch.0.join("fleet-figures.json");
    let status = Command::new("cargo")
        .args([
            "test",
            "--release",
            "--quiet",
            "--test",
            "fleet",
            "fleet_figures",
            "--",
            "--ignored",
            "--exact",
        ])
        .current_dir(root)
        .env("CLAUDE_WATCH_FLEET_FIGURES", &out)
        .env("CLAUDE_WATCH_BIN", &env.claude_watch)
        .env("CLAUDE_WATCH_TEST_DEPS", root.join(".test-deps"))
        .status()
        .context("running the fleet scenario (tests/tests/fleet.rs)")?;
    if !status.success() {
        bail!("the fleet scenario failed ({status})");
    }
    let figures: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).context("reading the fleet figures")?)
            .context("the fleet figures")?;
    Ok(Fleet {
        with: figures["with"].clone(),
        without: figures["without"].clone(),
    })
}

fn mean(v: &Value) -> f64 {
    let xs: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    #[expect(clippy::cast_precision_loss, reason = "a handful of daemons")]
    let n = xs.len().max(1) as f64;
    xs.iter().sum::<f64>() / n
}

impl Fleet {
    pub(super) fn report(&self, report: &mut Report) {
        let (w, wo) = (&self.with, &self.without);
        let what = "fleet: 5 hosts × 2 agents, one 60 s window over all, Prometheus scraping and evaluating every 1 s, Alertmanager asked every 1 s";
        report.row(
            11,
            &format!("{what}: from the upstream rejecting everyone to the last host holding"),
            &format!("{} ms", w["held_after_ms"].as_u64().unwrap_or(0)),
            "—",
            None,
        );
        let (a, b) = (
            w["restarts_into_window"].as_u64().unwrap_or(0),
            wo["restarts_into_window"].as_u64().unwrap_or(0),
        );
        report.row(
            11,
            "… restarts into the open window, with [fleet] / without (each host one canary per quiet window)",
            &format!("{a} / {b} ({} avoided)", b.saturating_sub(a)),
            "fewer with",
            Some(a < b),
        );
        let (cw, cwo) = (mean(&w["daemon_cpu_ms"]), mean(&wo["daemon_cpu_ms"]));
        let seconds = w["scenario_ms"].as_f64().unwrap_or(1.0) / 1000.0;
        report.row(
            11,
            "… CPU per daemon over the scenario, with [fleet] / without",
            &format!(
                "{cw:.0} ms / {cwo:.0} ms over {seconds:.0} s ({:+.0} ms)",
                cw - cwo
            ),
            "—",
            None,
        );
        report.row(
            11,
            "… every agent back after the window closed, with [fleet] / without",
            &format!(
                "{:.1} s / {:.1} s",
                w["back_after_close_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                wo["back_after_close_ms"].as_f64().unwrap_or(0.0) / 1000.0
            ),
            "—",
            None,
        );
        report.note(format!(
            "Fleet (11): the shipped rules with the incident's 10-minute rejection horizon cut to 15 s, [fleet] stagger 10 s and stale_after 5 s; each daemon scoped to its own systemd test bed. Raw figures: with {w}; without {wo}."
        ));
    }
}
