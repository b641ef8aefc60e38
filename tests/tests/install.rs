//! Claude Code as users really install and run it, each watched live by `claude-watch daemon`
//! with its built-in configuration (only where to keep its state is given; the Docker case in dry
//! run, since `auto` restarts containers): npm's global install
//! (`bin/claude.exe`, linked or copied by the postinstall), the native installer's layout and an
//! update under it, the TypeScript and Python Agent SDKs, the musl build, the node-era `cli.js`
//! under Debian's own node (shared `libssl.so.3`), and a Docker container.
//!
//! Each case: one turn answered 200, the instance listed with its pid, version and session; then
//! the stand-in latches that session and the daemon reports the instance latched within T + 1 s
//! (T = 10 s, the built-in `latch_min_span`) of the first 401.
//!
//! Also, without root: the content check on every Claude Code binary the tests have, and on
//! programs that are not Claude Code.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`). The live cases run one at a
//! time: each takes the built-in 10 s span, and several real Claude Codes starting at once on a
//! 2-core machine would measure the machine, not claude-watch.

use claude_watch_tests::wait::one_at_a_time;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use claude_watch::discover::content;
use claude_watch::watch::status::InstanceView;
use claude_watch_tests::agents::{ClaudeAgent, FAKE_API_KEY, STREAM_ARGS, base_env};
use claude_watch_tests::deps::{self, Bun, ClaudeCode, LATEST};
use claude_watch_tests::docker;
use claude_watch_tests::process::{ScratchDir, processes_in_group};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::Daemon;

/// T: the built-in configuration's `latch_min_span`.
const SPAN: Duration = Duration::from_secs(10);
const TURN: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(30);

fn wall_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

/// The daemon with its built-in configuration; only where to keep its state is given.
fn daemon() -> Daemon {
    Daemon::start("", "")
}

/// An agent under test: the driver process, and the Claude Code process it runs (the same
/// process for the CLI started directly).
struct Watched {
    agent: ClaudeAgent,
    claude_pid: u32,
    session: String,
}

/// Sends a turn that must succeed, then waits until the daemon lists Claude Code's process with
/// its version and session (another turn, up to three, when the first went out before the
/// probes were attached).
#[track_caller]
fn turn_and_listed(
    daemon: &Daemon,
    mut agent: ClaudeAgent,
    find_claude: impl Fn(&ClaudeAgent) -> Option<u32>,
    version: &str,
) -> (Watched, InstanceView) {
    // A process's first request can go out before the daemon has located and attached its
    // binary (a cold locate of a 400 MB executable takes a second or more on a loaded machine):
    // what is asserted is that its requests are seen, so a later turn of the same session may
    // be the one seen.
    let mut turns = 0;
    let (result, claude_pid, listed) = loop {
        turns += 1;
        let from = agent.send_turn("say hi");
        let result = agent.wait_for_result(from, TURN);
        assert!(
            !result.is_error,
            "the turn should succeed: {result:?}\n{}",
            agent.stderr().join("\n")
        );
        let claude_pid = wait_until(WAIT, "the Claude Code process", || find_claude(&agent));
        let listed = |daemon: &Daemon| {
            daemon.instance_with_pid(claude_pid).filter(|i| {
                i.version.as_deref() == Some(version)
                    && i.session_id.as_deref() == Some(result.session_id.as_str())
                    && i.state == "healthy"
                    && i.unobserved.is_none()
            })
        };
        if turns == 3 {
            let listed = wait_until(
                WAIT,
                "the instance listed with its pid, version and session",
                || listed(daemon),
            );
            break (result, claude_pid, listed);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let seen = loop {
            if let Some(found) = listed(daemon) {
                break Some(found);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if let Some(listed) = seen {
            break (result, claude_pid, listed);
        }
    };
    (
        Watched {
            agent,
            claude_pid,
            session: result.session_id,
        },
        listed,
    )
}

/// The stand-in latches each agent's session and each gets a turn: every one is reported
/// latched within T + 1 s of its first 401.
#[track_caller]
fn latched_in_time(daemon: &Daemon, standin: &StandIn, agents: &mut [&mut Watched]) {
    let from = standin.log().len();
    for w in agents.iter_mut() {
        standin.latch_session(&w.session);
        w.agent.send_turn("are you there?");
    }
    for w in agents.iter() {
        let reported = wait_until(SPAN + WAIT, "the instance reported latched", || {
            daemon
                .instance_with_pid(w.claude_pid)
                .filter(|i| i.state == "latched")
        });
        let reported_at = wall_s();
        let first_401 = standin
            .log_since(from)
            .into_iter()
            .find(|l| l.status == 401 && l.session.as_deref() == Some(w.session.as_str()))
            .expect("the stand-in answered its session 401");
        let delay = reported_at - first_401.time;
        assert!(
            delay <= SPAN.as_secs_f64() + 1.0,
            "{}: latched reported {delay:.2}s after the first 401 (T = {SPAN:?}, + 1 s)",
            reported.name
        );
        assert!(reported.window_401s.is_some_and(|n| n >= 3), "{reported:?}");
    }
}

/// The live process whose executable path ends with `suffix` in the agent's process group.
fn in_group(agent: &ClaudeAgent, suffix: &str) -> Option<u32> {
    processes_in_group(agent.pid()).into_iter().find(|pid| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.to_string_lossy().ends_with(suffix))
    })
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn npm_global_install_linked_and_copied() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let daemon = daemon();
    // What `npm install -g` left: `bin/claude` -> `../lib/node_modules/@anthropic-ai/claude-code/
    // bin/claude.exe`, hard-linked by the postinstall from the platform package.
    let prefix = deps::npm_global_prefix();
    let exe = prefix.join("lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe");
    assert!(
        std::fs::metadata(&exe).expect("claude.exe").nlink() >= 2,
        "the postinstall hard-linked claude.exe"
    );
    let linked = start_via_symlink(&standin, &prefix.join("bin"));

    // The same layout when the postinstall copied instead (cross-device, no link permission):
    // a file of its own.
    let copied_prefix = ScratchDir::new("claude-watch-npm-copy");
    let package = copied_prefix
        .path()
        .join("lib/node_modules/@anthropic-ai/claude-code/bin");
    std::fs::create_dir_all(&package).expect("mkdir");
    std::fs::copy(&exe, package.join("claude.exe")).expect("copy claude.exe");
    std::fs::create_dir_all(copied_prefix.path().join("bin")).expect("mkdir bin");
    std::os::unix::fs::symlink(
        "../lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe",
        copied_prefix.path().join("bin/claude"),
    )
    .expect("symlink");
    assert_eq!(
        std::fs::metadata(package.join("claude.exe"))
            .expect("copy")
            .nlink(),
        1
    );
    let copied = start_via_symlink(&standin, &copied_prefix.path().join("bin"));

    let (mut a, listed_a) = turn_and_listed(&daemon, linked, |a| Some(a.pid()), LATEST);
    let (mut b, listed_b) = turn_and_listed(&daemon, copied, |a| Some(a.pid()), LATEST);
    for (w, listed) in [(&a, &listed_a), (&b, &listed_b)] {
        assert!(
            exe_of(w.claude_pid).ends_with("/bin/claude.exe"),
            "runs as bin/claude.exe: {}",
            exe_of(w.claude_pid)
        );
        assert_eq!(listed.name, format!("pid:{}", w.claude_pid), "{listed:?}");
    }
    latched_in_time(&daemon, &standin, &mut [&mut a, &mut b]);
}

/// `claude` started the way a user types it: the first `claude` on a PATH holding `bin`.
fn start_via_symlink(standin: &StandIn, bin: &Path) -> ClaudeAgent {
    let home = ScratchDir::new("claude-watch-claude");
    let mut env = base_env(standin, &home, FAKE_API_KEY);
    let path = std::env::join_paths(std::iter::once(bin.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    env.retain(|(k, _)| *k != "PATH");
    env.push(("PATH", path));
    let mut command = Command::new(bin.join("claude"));
    command
        .args(STREAM_ARGS)
        .env_clear()
        .envs(env)
        .current_dir(home.path());
    ClaudeAgent::spawn("claude (npm -g)", &mut command, home)
}

#[test]
fn native_installer_layout_and_an_update_while_the_old_version_runs() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let daemon = daemon();
    // ~/.local/share/claude/versions/<version>, and ~/.local/bin/claude pointing at it.
    let home = ScratchDir::new("claude-watch-native-installer");
    let versions = home.path().join(".local/share/claude/versions");
    let bin = home.path().join(".local/bin");
    std::fs::create_dir_all(&versions).expect("mkdir");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let install = |version: &str, from: &Path| {
        std::fs::copy(from, versions.join(version)).expect("install a version");
        let staged = bin.join(".claude.new");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(versions.join(version), &staged).expect("symlink");
        std::fs::rename(&staged, bin.join("claude")).expect("switch the symlink");
    };
    let (old_binary, _) = ClaudeCode::Native2_1_331.command();
    install("2.1.331", &old_binary);
    let old = ClaudeAgent::start_program(&standin, &bin.join("claude"), &[], FAKE_API_KEY);
    let (mut old, _) = turn_and_listed(&daemon, old, |a| Some(a.pid()), "2.1.331");
    assert!(exe_of(old.claude_pid).ends_with("versions/2.1.331"));

    // The updater installs the new version and switches the symlink; the old one keeps running.
    install(LATEST, &deps::native_latest());
    let new = ClaudeAgent::start_program(&standin, &bin.join("claude"), &[], FAKE_API_KEY);
    let (mut new, _) = turn_and_listed(&daemon, new, |a| Some(a.pid()), LATEST);
    assert!(exe_of(new.claude_pid).ends_with(&format!("versions/{LATEST}")));
    latched_in_time(&daemon, &standin, &mut [&mut old, &mut new]);
}

#[test]
fn typescript_agent_sdk_query() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let daemon = daemon();
    let modules = deps::agent_sdk_modules();
    let home = ScratchDir::new("claude-watch-ts-sdk");
    let mut command = Command::new(deps::node());
    command
        .arg(deps::assets_dir().join("agents/sdk-agent.mjs"))
        .env_clear()
        .envs(base_env(&standin, &home, FAKE_API_KEY))
        .env("AGENT_SDK_MODULES", &modules)
        .current_dir(home.path());
    let agent = ClaudeAgent::spawn("TypeScript Agent SDK", &mut command, home);
    let (mut w, listed) = turn_and_listed(
        &daemon,
        agent,
        |a| in_group(a, "claude-agent-sdk-linux-x64/claude"),
        LATEST,
    );
    assert_ne!(w.claude_pid, w.agent.pid(), "the SDK spawned the CLI");
    assert_eq!(listed.name, format!("pid:{}", w.claude_pid));
    latched_in_time(&daemon, &standin, &mut [&mut w]);
}

#[test]
fn python_agent_sdk_client() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let daemon = daemon();
    let (python, site) = deps::python_agent_sdk();
    let home = ScratchDir::new("claude-watch-py-sdk");
    let mut command = Command::new(python);
    command
        .arg(deps::assets_dir().join("agents/sdk_agent.py"))
        .env_clear()
        .envs(base_env(&standin, &home, FAKE_API_KEY))
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(home.path());
    let agent = ClaudeAgent::spawn("Python Agent SDK", &mut command, home);
    let (mut w, _) = turn_and_listed(&daemon, agent, |a| in_group(a, "_bundled/claude"), LATEST);
    assert_ne!(w.claude_pid, w.agent.pid(), "the SDK spawned the CLI");
    latched_in_time(&daemon, &standin, &mut [&mut w]);
}

#[test]
fn musl_build() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let daemon = daemon();
    let agent = ClaudeAgent::start_program(&standin, &deps::native_musl(), &[], FAKE_API_KEY);
    let (mut w, listed) = turn_and_listed(&daemon, agent, |a| Some(a.pid()), LATEST);
    assert!(
        listed
            .binary
            .as_deref()
            .is_some_and(|b| b.ends_with("claude-code-linux-x64-musl/claude")),
        "{listed:?}"
    );
    latched_in_time(&daemon, &standin, &mut [&mut w]);
}

#[test]
fn cli_js_under_a_node_with_the_shared_libssl() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let daemon = daemon();
    // Debian's node 18 (unpacked), run in a mount namespace where its externalized builtins are
    // at /usr/share/nodejs, where Debian puts them.
    let root = deps::debian_node_root();
    let (_, leading) = ClaudeCode::Node2_0_77.command();
    let cli = &leading[0];
    std::fs::create_dir_all("/usr/share/nodejs").expect("mountpoint for the builtins");
    let home = ScratchDir::new("claude-watch-debian-node");
    let script = format!(
        "mount --bind '{share}' /usr/share/nodejs && LD_LIBRARY_PATH='{lib}' exec '{node}' \"$@\"",
        share = root.join("usr/share/nodejs").display(),
        lib = root.join("usr/lib/x86_64-linux-gnu").display(),
        node = root.join("usr/bin/node").display(),
    );
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "node",
        ])
        .arg(cli)
        .args(STREAM_ARGS)
        .env_clear()
        .envs(base_env(&standin, &home, FAKE_API_KEY))
        .current_dir(home.path());
    let mut agent = ClaudeAgent::spawn("cli.js under Debian's node", &mut command, home);
    let from = agent.send_turn("say hi");
    let result = agent.wait_for_result(from, TURN);
    assert!(
        !result.is_error,
        "{result:?}\n{}",
        agent.stderr().join("\n")
    );
    let pid = agent.pid();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    assert!(
        maps.contains("libssl.so.3") && exe_of(pid).ends_with("/usr/bin/node"),
        "Debian's node with the shared libssl: {}",
        exe_of(pid)
    );
    // This release sends no session header: the instance is listed with its pid and version
    // (from cli.js's banner), and it is latched by its connection's process.
    let listed = wait_until(WAIT, "the node instance listed, observed", || {
        daemon.instance_with_pid(pid).filter(|i| {
            i.version.as_deref() == Some("2.0.77")
                && i.state == "healthy"
                && i.last_status == Some(200)
        })
    });
    assert!(listed.unobserved.is_none(), "{listed:?}");
    let from_log = standin.log().len();
    standin.latch_pid(pid);
    agent.send_turn("are you there?");
    wait_until(SPAN + WAIT, "the node instance reported latched", || {
        daemon
            .instance_with_pid(pid)
            .filter(|i| i.state == "latched")
    });
    let reported_at = wall_s();
    let first_401 = standin
        .log_since(from_log)
        .into_iter()
        .find(|l| l.status == 401 && l.pid == Some(pid))
        .expect("401s for the node claude");
    let delay = reported_at - first_401.time;
    assert!(
        delay <= SPAN.as_secs_f64() + 1.0,
        "latched reported {delay:.2}s after the first 401"
    );
}

#[test]
fn agent_in_a_docker_container() {
    let _serial = one_at_a_time();
    let standin = StandIn::start();
    let engine = docker::Engine::start();
    // Detection only: `auto` would restart the latched container through the engine at once
    // (tests/tests/docker.rs proves that), and the instance would not stay latched to be seen.
    let daemon = Daemon::start("dry_run = true", "");
    let image = engine.claude_image(
        &format!("claude-watch-test/claude:{LATEST}"),
        &deps::native_latest(),
    );
    let container = docker::Container::named(&format!("cw-agent-{}", std::process::id()));
    let mut env: Vec<(&str, String)> = base_env(&standin, &ScratchDir::new("unused"), FAKE_API_KEY)
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "PATH" | "HOME"))
        .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
        .collect();
    env.push(("HOME", "/root".into()));
    let (client, client_env) = docker::client();
    let home = ScratchDir::new("claude-watch-docker-agent");
    let mut command = Command::new(client);
    command
        .args(container.run_args(&image, &env))
        .arg("/usr/local/bin/claude")
        .args(STREAM_ARGS)
        .envs(client_env)
        .current_dir(home.path());
    let agent = ClaudeAgent::spawn("claude in docker", &mut command, home);
    let (mut w, listed) = turn_and_listed(&daemon, agent, |_| Some(container.main_pid()), LATEST);
    assert_eq!(
        listed.name,
        format!("docker:{}", container.name()),
        "named after the container: {listed:?}"
    );
    latched_in_time(&daemon, &standin, &mut [&mut w]);
}

/// Recognises a file the way discovery does (native, or a script's head).
fn recognise(path: &Path) -> Option<content::ClaudeFile> {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = file.metadata().expect("stat").len();
    if path.extension().is_some_and(|e| e == "js") {
        let mut head = vec![0; content::HEAD_BYTES];
        let n = std::io::Read::read(&mut file, &mut head).expect("read");
        return content::script(&head[..n]);
    }
    content::native(&mut file, len).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn content_check_on_real_binaries() {
    let _serial = one_at_a_time();
    let (_, site) = deps::python_agent_sdk();
    let claude: Vec<(PathBuf, &str)> = vec![
        (ClaudeCode::Native2_1_331.command().0, "2.1.331"),
        (ClaudeCode::Native2_1_197.command().0, "2.1.197"),
        (deps::native_latest(), LATEST),
        (
            deps::npm_global_prefix()
                .join("lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe"),
            LATEST,
        ),
        (deps::native_musl(), LATEST),
        (
            deps::agent_sdk_modules().join("@anthropic-ai/claude-agent-sdk-linux-x64/claude"),
            LATEST,
        ),
        (site.join("claude_agent_sdk/_bundled/claude"), LATEST),
        (ClaudeCode::Node2_0_77.command().1[0].clone(), "2.0.77"),
    ];
    for (path, version) in &claude {
        let found = recognise(path).unwrap_or_else(|| panic!("{} is Claude Code", path.display()));
        assert_eq!(
            found.version.as_deref(),
            Some(*version),
            "{}",
            path.display()
        );
    }
    // Not Claude Code: plain Bun builds, node, curl, and a Bun program compiled into a single
    // file and named like a claude helper.
    let scratch = ScratchDir::new("claude-watch-bun-app");
    let (_, compiled) = deps::compile_bun_program(
        scratch.path(),
        "console.log('a Bun app, not Claude Code')\n",
        "cc-agent",
    );
    let others = [
        Bun::V1_4_5.path(),
        Bun::Baseline1_3_11.path(),
        Bun::V1_2_23.path(),
        std::fs::canonicalize(deps::node()).expect("node"),
        deps::find_on_path("curl").expect("curl"),
        compiled,
    ];
    for path in &others {
        assert_eq!(
            recognise(path),
            None,
            "{} is not Claude Code",
            path.display()
        );
    }
}

#[test]
fn a_claude_whose_binary_cannot_be_verified_is_listed_unobserved() {
    let _serial = one_at_a_time();
    let daemon = daemon();
    // Named like Claude Code (the name rule takes it), but no TLS functions can be verified in
    // it: refused, said once in the log, and listed as unobserved rather than vanishing.
    let dir = ScratchDir::new("claude-watch-unverifiable");
    let fake = dir.path().join("claude");
    std::fs::copy("/bin/sleep", &fake).expect("copy sleep");
    let mut command = Command::new(&fake);
    command.arg("60");
    let child = claude_watch_tests::process::ChildGuard::spawn("fake claude", &mut command);
    let listed = wait_until(WAIT, "the instance listed as unobserved", || {
        daemon
            .instance_with_pid(child.pid())
            .filter(|i| i.unobserved.is_some())
    });
    let why = listed.unobserved.as_deref().expect("a reason");
    assert!(why.contains("no TLS library found"), "{why}");
    let text = daemon.status_text();
    assert!(text.contains("unobserved ("), "{text}");
    let lines = daemon
        .log()
        .into_iter()
        .filter(|l| l.contains("unobserved") && l.contains(&format!("pid={}", child.pid())))
        .count();
    assert_eq!(lines, 1, "one log line: {:?}", daemon.log());
}
