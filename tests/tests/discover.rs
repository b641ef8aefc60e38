//! Discovery on live processes (no probes, no root needed): real Claude Code processes are
//! found, as the kind they are, with the release their file names; other programs are not,
//! whatever they are called.
//!
//! Needs the pinned clients (`cargo xtask setup --tests`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use claude_watch::discover::{Checked, Discovery, Processes as _};
use claude_watch::instance::table::PidTable;
use claude_watch::instance::{ClaudeKind, IdSource, InstanceId, MatchRule};
use claude_watch_tests::agents::{ClaudeAgent, FAKE_API_KEY};
use claude_watch_tests::deps::{self, ClaudeCode, LATEST};
use claude_watch_tests::process::{ChildGuard, ScratchDir};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::wait::wait_until;

/// Waits until `pid` has exec'd `exe_suffix` (right after spawn it may still be the parent's
/// image), then asks a fresh discovery about it.
fn discover(
    pid: u32,
    exe_suffix: &str,
    rules: Vec<MatchRule>,
) -> Option<claude_watch::discover::Found> {
    wait_until(Duration::from_secs(10), "the process to exec", || {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .filter(|e| e.to_string_lossy().ends_with(exe_suffix))
    });
    match Discovery::new("/proc", rules).check(pid, &PidTable::default()) {
        Checked::Found(found) => Some(found),
        Checked::Left | Checked::Nothing => None,
    }
}

#[test]
fn real_claude_processes_are_found_with_their_kind_and_release() {
    let standin = StandIn::start();
    let native = ClaudeAgent::start(&standin, ClaudeCode::Native2_1_331, FAKE_API_KEY);
    let rule = MatchRule {
        name: "agent".into(),
        arg: Some("stream-json".into()),
        ..MatchRule::default()
    };
    let found = discover(native.pid(), "/claude", vec![rule]).expect("native claude found");
    assert_eq!(found.kind, ClaudeKind::Native);
    assert_eq!(found.version().as_deref(), Some("2.1.331"));
    // Named by its unit when it has one (CI runs outside systemd), else by the rule.
    if found.instance.source != IdSource::Unit {
        assert_eq!(found.instance, InstanceId::rule("agent"));
    }

    // npm's `bin/claude.exe`: found by what the file is.
    let exe =
        deps::npm_global_prefix().join("lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe");
    let npm = ClaudeAgent::start_program(&standin, &exe, &[], FAKE_API_KEY);
    let found = discover(npm.pid(), "/claude.exe", Vec::new()).expect("claude.exe found");
    assert_eq!(
        (found.kind, found.version().as_deref()),
        (ClaudeKind::Native, Some(LATEST))
    );
    assert_eq!(found.instance, InstanceId::pid(npm.pid()));

    // `cli.js` under node: a script instance, its release from the banner.
    let (node, leading) = ClaudeCode::Node2_0_77.command();
    let script = ClaudeAgent::start_program(&standin, &node, &leading, FAKE_API_KEY);
    let found = discover(script.pid(), "/node", Vec::new()).expect("cli.js found");
    assert_eq!(
        (found.kind, found.version().as_deref()),
        (ClaudeKind::Script, Some("2.0.77"))
    );

    // The same cli.js copied where no path says Claude Code (an npx cache, say).
    let scratch = ScratchDir::new("claude-watch-npx");
    let hidden = scratch.path().join("_npx/5f2a/node_modules/.bin/entry.mjs");
    std::fs::create_dir_all(hidden.parent().expect("parent")).expect("mkdir");
    std::fs::copy(&leading[0], &hidden).expect("copy cli.js");
    let copied = ClaudeAgent::start_program(&standin, &node, &[hidden], FAKE_API_KEY);
    let found = discover(copied.pid(), "/node", Vec::new()).expect("renamed cli.js found");
    assert_eq!(found.kind, ClaudeKind::Script);
}

#[test]
fn other_programs_are_not_claude_whatever_their_name() {
    let scratch = ScratchDir::new("claude-watch-not-claude");
    // A Bun program compiled into one file, named like a Claude helper; node running another
    // script; sleep.
    let (app, compiled) = deps::compile_bun_program(
        scratch.path(),
        "setTimeout(() => {}, 30000);\n",
        "claude.exe",
    );
    let cases: [(PathBuf, Vec<PathBuf>, &str); 3] = [
        (compiled, vec![], "/claude.exe"),
        (deps::node(), vec![app], "/node"),
        (
            PathBuf::from("/bin/sleep"),
            vec![PathBuf::from("30")],
            "/sleep",
        ),
    ];
    for (program, args, suffix) in cases {
        let mut command = Command::new(&program);
        command.args(&args);
        let child = ChildGuard::spawn("not claude", &mut command);
        assert_eq!(
            discover(child.pid(), suffix, Vec::new()).map(|f| f.kind),
            None,
            "{} is not Claude Code",
            Path::new(&program).display()
        );
    }
}
