//! The operator's commands read the daemon's configuration, and say so when an input is missing
//! (#30): the released binary run as a user would, no daemon needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use claude_watch_tests::deps::assets_dir;
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::watch::bin;
use serde_json::Value;

#[track_caller]
fn cw(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("CLAUDE_WATCH_JOURNAL")
        .output()
        .unwrap_or_else(|e| panic!("cannot run claude-watch {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A home whose `~/.claude/projects` holds the real transcripts of the fixtures.
fn home_with_transcripts(dir: &Path) -> PathBuf {
    let home = dir.join("home/agent");
    let from = assets_dir().join("fixtures/transcripts/projects");
    for project in std::fs::read_dir(&from).expect("fixtures exist") {
        let project = project.expect("entry").path();
        let to = home
            .join(".claude/projects")
            .join(project.file_name().expect("name"));
        std::fs::create_dir_all(&to).expect("create a project");
        for f in std::fs::read_dir(&project).expect("project") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, to.join(f.file_name().expect("name"))).expect("copy");
        }
    }
    home
}

#[test]
fn episodes_reads_the_configured_journal_and_a_home_is_imported() {
    let dir = ScratchDir::new("cw-cli-config");
    let journal = dir.path().join("state/journal.jsonl");
    let config = dir.path().join("cw.toml");
    std::fs::write(
        &config,
        format!("[daemon]\njournal = \"{}\"\n", journal.display()),
    )
    .expect("write the config");
    let config = config.to_str().expect("utf-8");

    // No journal there yet: an error that says where it looked and what to give, not an empty
    // report.
    let missing = cw(&["episodes", "--config", config]);
    assert!(!missing.status.success(), "a missing journal is an error");
    let stderr = text(&missing.stderr);
    assert!(
        stderr.contains(&format!("no journal at {}", journal.display()))
            && stderr.contains("--journal"),
        "{stderr}"
    );

    // `--import` given a home (as one naturally passes it) finds its ~/.claude/projects, and
    // stores into the configured journal.
    let home = home_with_transcripts(dir.path());
    let imported = cw(&[
        "episodes",
        "--config",
        config,
        "--json",
        "--import",
        home.to_str().expect("utf-8"),
    ]);
    let stderr = text(&imported.stderr);
    assert!(imported.status.success(), "{stderr}");
    assert!(stderr.contains("5 episodes added"), "{stderr}");
    assert!(journal.is_file(), "the configured journal was written");

    // The report reads the configured journal without --journal.
    let report = cw(&["episodes", "--config", config, "--json"]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let report: Value = serde_json::from_slice(&report.stdout).expect("one JSON object");
    assert_eq!(
        report["episodes"].as_array().map(Vec::len),
        Some(5),
        "{report}"
    );

    // A directory with no transcripts says so.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let nothing = cw(&[
        "episodes",
        "--config",
        config,
        "--import",
        empty.to_str().expect("utf-8"),
    ]);
    let stderr = text(&nothing.stderr);
    assert!(
        nothing.status.success() && stderr.contains("no transcripts under"),
        "{stderr}"
    );
}

#[test]
fn status_asks_the_configured_socket() {
    let dir = ScratchDir::new("cw-cli-status");
    let socket = dir.path().join("control.sock");
    let config = dir.path().join("cw.toml");
    std::fs::write(
        &config,
        format!("[daemon]\ncontrol_socket = \"{}\"\n", socket.display()),
    )
    .expect("write the config");
    let out = cw(&["status", "--config", config.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "no claude-watch daemon answers on {}",
            socket.display()
        )),
        "{stderr}"
    );
    // An explicit --socket wins over the configuration.
    let other = dir.path().join("other.sock");
    let out = cw(&[
        "status",
        "--config",
        config.to_str().expect("utf-8"),
        "--socket",
        other.to_str().expect("utf-8"),
    ]);
    assert!(
        text(&out.stderr).contains(&other.display().to_string()),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn config_check_without_a_file_says_the_built_in_one_runs() {
    if Path::new("/etc/claude-watch/config.toml").exists() {
        eprintln!("skipped: this host has /etc/claude-watch/config.toml");
        return;
    }
    let out = cw(&["config", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("the daemon runs on the built-in configuration"),
        "{}",
        text(&out.stdout)
    );
    // A file named but missing is still an error.
    let out = cw(&["config", "check", "/nonexistent/cw.toml"]);
    assert!(!out.status.success());
}

#[test]
fn the_shown_configuration_is_what_a_file_would_say() {
    let dir = ScratchDir::new("cw-cli-show");
    let shown = cw(&["config", "show"]);
    assert!(shown.status.success());
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &shown.stdout).expect("write");
    let check = cw(&["config", "check", file.to_str().expect("utf-8")]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("ring_mib = 4") && shown.contains("[fleet]"),
        "{shown}"
    );
}

#[test]
fn locate_follows_a_link_the_operator_gives() {
    let lib = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
        .iter()
        .map(|d| Path::new(d).join("libssl.so.3"))
        .find(|p| p.is_file())
        .expect("libssl.so.3 (Debian's libssl3) is installed");
    let dir = ScratchDir::new("cw-cli-locate");
    let link = dir.path().join("claude");
    std::os::unix::fs::symlink(&lib, &link).expect("link");
    let out = cw(&[
        "locate",
        "--no-cache",
        "--json",
        link.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(report.to_string().contains("SSL_write"), "{report}");
}
