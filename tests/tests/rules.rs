//! The shipped Prometheus rules (`packaging/prometheus/`), checked and unit-tested by Prometheus'
//! own `promtool` (Debian's `prometheus` package, installed by `cargo xtask setup --tests`): the
//! alerts a fleet pages on are part of what claude-watch ships.

use std::path::PathBuf;
use std::process::Command;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool runs (cargo xtask setup --tests installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_shipped_rules_are_valid() {
    let text = promtool(&["check", "rules", "claude-watch.rules.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// An upstream incident pages once per host, not once per instance; an instance latched on
/// its own still pages on its own (`claude-watch.rules.test.yml`).
#[test]
fn an_incident_alerts_once_per_host_and_a_lone_latch_on_its_own() {
    let text = promtool(&["test", "rules", "claude-watch.rules.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}
