use std::path::{Path, PathBuf};

use super::*;

/// The name-only instance rule: Claude Code by [`classify`], with no ancestor that is.
fn is_instance(p: &ProcessInfo, ancestors: &[ProcessInfo]) -> Option<ClaudeKind> {
    classify(&p.exe, &p.cmdline)
        .filter(|_| is_outermost(ancestors, |a| classify(&a.exe, &a.cmdline).is_some()))
}

fn proc_with(exe: &str, args: &[&str], cgroup: &str) -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        ppid: 1,
        start_time: 99,
        exe: PathBuf::from(exe),
        cmdline: args.iter().map(|s| (*s).to_owned()).collect(),
        cwd: Some(PathBuf::from("/srv/agents/alpha")),
        cgroup: cgroup.to_owned(),
    }
}

fn unit(cgroup: &str) -> Option<String> {
    systemd_unit(cgroup).map(|u| u.name)
}

#[test]
fn unit_from_plain_and_nested_cgroups() {
    assert_eq!(
        unit("0::/system.slice/foo.service\n").as_deref(),
        Some("foo.service")
    );
    assert_eq!(
        unit("0::/testbed/system.slice/looper.service\n").as_deref(),
        Some("looper.service")
    );
    let docker = "0::/system.slice/docker-0123abcd.scope/system.slice/x.service\n";
    assert_eq!(unit(docker).as_deref(), Some("x.service"));
    assert_eq!(
        unit("0::/system.slice/agent@7.service\n").as_deref(),
        Some("agent@7.service")
    );
    let delegated = "0::/system.slice/foo.service/payload\n";
    assert_eq!(unit(delegated).as_deref(), Some("foo.service"));
    let full = systemd_unit("0::/testbed/system.slice/looper.service").unwrap();
    assert_eq!(full.manager, Manager::System);
    assert_eq!(full.cgroup, "/testbed/system.slice/looper.service");
}

#[test]
fn user_units_name_their_manager() {
    let u = systemd_unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service")
        .unwrap();
    assert_eq!(u.name, "x.service");
    assert_eq!(u.manager, Manager::User { uid: 1000 });
}

#[test]
fn scopes_and_managers_are_not_units() {
    assert_eq!(
        unit("0::/user.slice/user-1000.slice/session-3.scope\n"),
        None
    );
    assert_eq!(unit("0::/system.slice/docker-0123abcd.scope\n"), None);
    assert_eq!(
        unit("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"),
        None
    );
    assert_eq!(
        unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-x-12.scope\n"),
        None
    );
    assert_eq!(unit("0::/\n"), None);
    assert_eq!(unit(""), None);
}

#[test]
fn cgroup_v1_uses_the_name_systemd_line() {
    let v1 = "12:memory:/system.slice/a.service\n1:name=systemd:/system.slice/b.service\n";
    assert_eq!(unit(v1).as_deref(), Some("b.service"));
}

#[test]
fn identify_prefers_unit_then_rule_then_pid() {
    let rules = vec![
        MatchRule {
            name: "by-cwd".into(),
            cwd: Some("/srv/agents/beta".into()),
            ..Default::default()
        },
        MatchRule {
            name: "alpha".into(),
            exe: Some("*/claude-code-linux-x64/claude".into()),
            arg: Some("stream-json".into()),
            cwd: Some("/srv/agents".into()),
            ..Default::default()
        },
    ];
    let exe = "/opt/n/node_modules/@anthropic-ai/claude-code-linux-x64/claude";
    let args = ["claude", "-p", "--input-format", "stream-json"];
    let in_unit = proc_with(exe, &args, "0::/system.slice/agent.service\n");
    assert_eq!(
        identify(&in_unit, &rules),
        InstanceId::unit("agent.service")
    );
    assert_eq!(
        identify(&in_unit, &rules).unit_name(),
        Some("agent.service")
    );

    let bare = proc_with(exe, &args, "0::/user.slice/user-0.slice/session-1.scope\n");
    assert_eq!(identify(&bare, &rules), InstanceId::rule("alpha"));
    assert_eq!(identify(&bare, &rules).unit_name(), None);

    let other_args = proc_with(exe, &["claude", "-p", "hi"], "0::/\n");
    assert_eq!(identify(&other_args, &rules), InstanceId::pid(4242));
    assert_eq!(InstanceId::pid(4242).to_string(), "pid:4242");
}

#[test]
fn rule_conditions_are_all_required() {
    let r = MatchRule {
        name: "c".into(),
        cgroup: Some("docker-".into()),
        cwd: Some("/srv/agents/alpha".into()),
        ..Default::default()
    };
    let mut p = proc_with(
        "/usr/bin/claude",
        &["claude"],
        "0::/system.slice/docker-1.scope\n",
    );
    assert!(r.matches(&p));
    p.cwd = Some("/srv/agents/alphabet".into());
    assert!(
        !r.matches(&p),
        "cwd must be the directory or below, not a string prefix"
    );
    p.cwd = None;
    assert!(!r.matches(&p));
}

#[test]
fn glob_behaves() {
    assert!(glob_match("/usr/*/claude", "/usr/local/bin/claude"));
    assert!(glob_match("*claude", "claude"));
    assert!(glob_match("/a/?/c", "/a/b/c"));
    assert!(!glob_match("/a/?/c", "/a/bb/c"));
    assert!(!glob_match("*/claude", "/usr/bin/claude-helper"));
}

#[test]
fn classify_claude_installs() {
    let native = [
        "/work/.test-deps/npm/claude-2.1.331/node_modules/@anthropic-ai/claude-code-linux-x64/claude",
        "/home/a/.local/bin/claude",
        "/home/a/.claude/local/claude",
        "/home/a/.local/share/claude/versions/2.1.197",
    ];
    for exe in native {
        assert_eq!(
            classify(Path::new(exe), &["claude".into()]),
            Some(ClaudeKind::Native),
            "{exe}"
        );
    }
    let node_cli = [
        "node",
        "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
        "-p",
    ];
    let args: Vec<String> = node_cli.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        classify(Path::new("/usr/bin/node"), &args),
        Some(ClaudeKind::Script)
    );
    let shim: Vec<String> = ["node", "--no-warnings", "/usr/local/bin/claude"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        classify(Path::new("/usr/bin/node"), &shim),
        Some(ClaudeKind::Script)
    );
}

#[test]
fn classify_rejects_tools_and_other_scripts() {
    let mcp: Vec<String> = ["node", "/opt/mcp/server.js"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(classify(Path::new("/usr/bin/node"), &mcp), None);
    assert_eq!(
        classify(Path::new("/bin/bash"), &["bash".into(), "-c".into()]),
        None
    );
    assert_eq!(classify(Path::new("/usr/bin/rg"), &["rg".into()]), None);
    assert_eq!(
        classify(Path::new("/usr/lib/python3/versions/3.11"), &[]),
        None
    );
}

#[test]
fn children_of_an_instance_are_not_instances() {
    let claude = proc_with(
        "/usr/local/bin/claude",
        &["claude", "-p"],
        "0::/system.slice/a.service",
    );
    let bash = proc_with(
        "/bin/bash",
        &["bash", "-c", "ls"],
        "0::/system.slice/a.service",
    );
    let helper = proc_with(
        "/usr/local/bin/claude",
        &["rg", "foo"],
        "0::/system.slice/a.service",
    );
    assert_eq!(is_instance(&claude, &[]), Some(ClaudeKind::Native));
    assert_eq!(is_instance(&bash, std::slice::from_ref(&claude)), None);
    assert_eq!(is_instance(&helper, &[bash.clone(), claude.clone()]), None);
}

#[test]
fn stat_fields_after_a_tricky_comm() {
    let stat = "4242 (we(ird) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 12 0 \
                987654 1000 100 18446744073709551615";
    assert_eq!(proc::parse_stat(stat), Some((17, 987_654)));
    assert_eq!(proc::parse_stat("garbage"), None);
}

#[test]
fn reads_this_very_process() {
    let me = std::process::id();
    let info = read_process_info(Path::new("/proc"), me).expect("own /proc entry");
    assert_eq!(info.pid, me);
    assert!(info.start_time > 0);
    assert_eq!(info.exe, std::env::current_exe().unwrap());
    assert_eq!(
        info.cwd.as_deref(),
        Some(std::env::current_dir().unwrap().as_path())
    );
    let ancestry = read_ancestry(Path::new("/proc"), me, 64);
    assert_eq!(ancestry.first().map(|p| p.pid), Some(info.ppid));
    assert!(matches!(
        read_process_info(Path::new("/proc"), u32::MAX),
        Err(InstanceError::Read { .. })
    ));
}

/// Where the pinned real clients are (`CLAUDE_WATCH_TEST_DEPS`, default `<workspace>/.test-deps`).
fn test_deps() -> PathBuf {
    std::env::var_os("CLAUDE_WATCH_TEST_DEPS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-deps"),
        PathBuf::from,
    )
}

/// A scratch directory and a running child, both cleaned up on drop.
struct Running {
    child: std::process::Child,
    home: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Starts a real Claude Code as a long-running stream-json agent that only ever talks to a
/// closed loopback port, and waits until its `/proc` entry shows the final executable.
fn start_real_claude(program: &Path, pre_args: &[&Path], tag: &str) -> Running {
    assert!(
        program.exists() && pre_args.iter().all(|p| p.exists()),
        "pinned client missing under {} (run `cargo xtask setup`)",
        test_deps().display()
    );
    let home = std::env::temp_dir().join(format!("cw-inst-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let child = std::process::Command::new(program)
        .args(pre_args)
        .args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", "https://127.0.0.1:9")
        .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
        .env("ANTHROPIC_API_KEY", "sk-ant-api03-test-not-a-key")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    Running { child, home }
}

fn classify_running(run: &Running) -> (ProcessInfo, Option<ClaudeKind>) {
    let pid = run.child.id();
    let proc_root = Path::new("/proc");
    // Right after a vfork-style spawn returns, the kernel may not have set up the new argv
    // yet (cmdline reads empty): wait for it, and for the process to still be alive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let info = loop {
        let info = read_process_info(proc_root, pid).expect("child readable");
        if !info.cmdline.is_empty() {
            break info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child {pid} never showed its argv (exited?)"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let ancestry = read_ancestry(proc_root, pid, 64);
    assert_eq!(ancestry.first().map(|p| p.pid), Some(std::process::id()));
    let kind = is_instance(&info, &ancestry);
    (info, kind)
}

#[test]
fn real_native_claude_is_an_instance_and_its_children_are_not() {
    let exe = test_deps()
        .join("npm/claude-2.1.331/node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    let run = start_real_claude(&exe, &[], "native");
    let (info, kind) = classify_running(&run);
    assert_eq!(kind, Some(ClaudeKind::Native), "exe {}", info.exe.display());
    assert_eq!(
        identify(&info, &[]).source,
        if systemd_unit(&info.cgroup).is_some() {
            IdSource::Unit
        } else {
            IdSource::Pid
        }
    );
    let rule = MatchRule {
        name: "agent".into(),
        arg: Some("stream-json".into()),
        ..Default::default()
    };
    if systemd_unit(&info.cgroup).is_none() {
        assert_eq!(identify(&info, &[rule]), InstanceId::rule("agent"));
    }
    // A shell started under the instance is not one, whatever it runs.
    let bash = ProcessInfo {
        pid: 1,
        ppid: info.pid,
        exe: "/bin/bash".into(),
        ..Default::default()
    };
    assert_eq!(is_instance(&bash, std::slice::from_ref(&info)), None);
    let nested = ProcessInfo {
        ppid: info.pid,
        ..info.clone()
    };
    assert_eq!(is_instance(&nested, &[info]), None);
}

#[test]
fn real_node_claude_is_an_instance() {
    let cli =
        test_deps().join("npm/claude-node-2.0.77/node_modules/@anthropic-ai/claude-code/cli.js");
    let run = start_real_claude(Path::new("/usr/bin/node"), &[cli.as_path()], "node");
    let (info, kind) = classify_running(&run);
    assert_eq!(kind, Some(ClaudeKind::Script), "cmdline {:?}", info.cmdline);
}

#[test]
fn containers_from_real_cgroup_shapes() {
    let id = "3f1c2a9be0d4c5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0";
    // Docker with the cgroupfs driver (these machines), v2 and v1.
    let c = container(&format!("0::/docker/{id}\n")).expect("docker cgroupfs");
    assert_eq!(
        (c.engine, c.id.as_str(), c.short_id()),
        (Engine::Docker, id, &id[..12])
    );
    assert_eq!(
        container(&format!("12:pids:/docker/{id}\n11:memory:/docker/{id}\n")).map(|c| c.engine),
        Some(Engine::Docker)
    );
    // Docker with the systemd driver, and a container nested in a test bed's slice.
    assert_eq!(
        container(&format!("0::/system.slice/docker-{id}.scope\n")).map(|c| c.id),
        Some(id.to_owned())
    );
    // Podman (rootful systemd driver, and cgroupfs).
    assert_eq!(
        container(&format!("0::/machine.slice/libpod-{id}.scope/container\n")).map(|c| c.engine),
        Some(Engine::Podman)
    );
    assert_eq!(
        container(&format!("0::/libpod_parent/libpod-{id}\n")).map(|c| c.engine),
        Some(Engine::Podman)
    );
    // Not containers: units, user sessions, a cgroup a user named to look like one.
    for other in [
        "0::/system.slice/looper.service\n",
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-abc.scope\n",
        "0::/docker/not-a-container-id\n",
        "0::/\n",
        "",
    ] {
        assert_eq!(container(other), None, "{other}");
    }
}
