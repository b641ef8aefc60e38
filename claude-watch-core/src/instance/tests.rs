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
        ..ProcessInfo::default()
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

/// Only `*` and `?` are special, as `MatchRule::exe` says: brackets, braces and backslashes in a
/// path stand for themselves, and `**` is `*`.
#[test]
fn glob_has_no_other_syntax() {
    assert!(glob_match("/opt/[x]/claude", "/opt/[x]/claude"));
    assert!(!glob_match("/opt/[x]/claude", "/opt/x/claude"));
    assert!(glob_match("/opt/{a,b}/c\\d", "/opt/{a,b}/c\\d"));
    assert!(glob_match("/a**b/***", "/a/x/b/y/z"));
    assert!(glob_match("", "") && !glob_match("", "x"));
    assert!(glob_match("/é?/*", "/éü/ö"));
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
    assert_eq!(procfs::parse_stat(stat), Some((17, 987_654)));
    assert_eq!(procfs::parse_stat("garbage"), None);
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
        // A real container's id, named by a user in their own manager's subtree (forged, or a
        // rootless container the host's engine does not know).
        &format!("0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{id}.scope\n"),
        &format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{id}.scope\n"),
        &format!("0::/user.slice/user-1000.slice/user@1000.service/docker/{id}\n"),
        "0::/\n",
        "",
    ] {
        assert_eq!(container(other), None, "{other}");
    }
}

/// A member as [`container_member`] sees it: the container its path names, then the verdict.
fn member(candidate: &str, main: &str) -> Result<(), NotVouched> {
    let claimed = container(candidate).expect("the candidate's path names a container");
    container_member(&claimed, candidate, main)
}

#[test]
fn the_engine_vouches_for_its_containers_cgroup_and_below() {
    let id = "3f1c2a9be0d4c5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0";
    for main in [
        // Docker: systemd driver, cgroupfs driver (v2, and v1 with every controller).
        format!("0::/system.slice/docker-{id}.scope\n"),
        format!("0::/docker/{id}\n"),
        format!("12:pids:/docker/{id}\n4:memory:/docker/{id}\n1:name=systemd:/docker/{id}\n"),
        // Podman: systemd driver, cgroupfs driver; a container nested in a test bed's slice.
        format!("0::/machine.slice/libpod-{id}.scope\n"),
        format!("0::/libpod_parent/libpod-{id}\n"),
        format!("0::/testbed/system.slice/docker-{id}.scope\n"),
    ] {
        assert_eq!(member(&main, &main), Ok(()), "{main}");
        let below: String = main.lines().map(|l| format!("{l}/app\n")).collect();
        assert_eq!(member(&below, &main), Ok(()), "{below}");
    }
    // The main process below the container's cgroup (systemd as the container's init, Podman's
    // `container` sub-cgroup): the container's other cgroups are its own too.
    let init = format!("0::/system.slice/docker-{id}.scope/init.scope\n");
    let service = format!("0::/system.slice/docker-{id}.scope/system.slice/claude.service\n");
    assert_eq!(member(&service, &init), Ok(()));
    let podman = format!("0::/machine.slice/libpod-{id}.scope/container\n");
    let exec = format!("0::/machine.slice/libpod-{id}.scope\n");
    assert_eq!(member(&exec, &podman), Ok(()));
}

#[test]
fn a_forged_container_cgroup_is_not_vouched_for() {
    let id = "3f1c2a9be0d4c5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0";
    let main = format!("0::/system.slice/docker-{id}.scope\n");
    // A scope named after the real container under a system unit delegated to a user
    // (`User=` with `Delegate=yes`): the user may create it, but it is not the container's.
    let forged = format!("0::/system.slice/evil.service/docker-{id}.scope\n");
    assert_eq!(
        member(&forged, &main),
        Err(NotVouched::Outside {
            hierarchy: "unified".into(),
            path: format!("/system.slice/evil.service/docker-{id}.scope"),
            container: format!("/system.slice/docker-{id}.scope"),
        })
    );
    // The same with the cgroupfs driver, and one hidden deeper under the delegated unit.
    let main_fs = format!("0::/docker/{id}\n");
    for forged in [
        format!("0::/system.slice/evil.service/docker/{id}\n"),
        format!(
            "0::/system.slice/evil.service/x/docker-{id}.scope/system.slice/docker-{id}.scope\n"
        ),
        format!("0::/docker/{id}-x/docker/{id}\n"),
    ] {
        assert!(member(&forged, &main_fs).is_err(), "{forged}");
        assert!(member(&forged, &main).is_err(), "{forged}");
    }
    // The id in capitals names the same container but is another cgroup (paths are compared
    // as the kernel does, byte for byte).
    let upper = format!("0::/docker/{}\n", id.to_ascii_uppercase());
    assert!(member(&upper, &main_fs).is_err());
    // A sibling whose name only starts like the container's cgroup.
    let sibling = format!("0::/docker/{id}0/docker/{id}\n");
    assert!(member(&sibling, &main_fs).is_err());
    // Hybrid: the unified line forged, a v1 controller elsewhere than the container.
    let main_v1 = format!("4:memory:/docker/{id}\n0::/\n");
    let forged_v1 = format!(
        "4:memory:/system.slice/evil.service\n0::/system.slice/evil.service/docker-{id}.scope\n"
    );
    assert_eq!(
        member(&forged_v1, &main_v1),
        Err(NotVouched::Outside {
            hierarchy: "memory".into(),
            path: "/system.slice/evil.service".into(),
            container: format!("/docker/{id}"),
        })
    );
    // A cgroup named with a line break under the delegated unit (the kernel prints it as is):
    // the lines after it would say anything, so a file listing a hierarchy twice is refused.
    let injected = format!("0::/system.slice/evil.service/x\n0::/system.slice/docker-{id}.scope\n");
    assert_eq!(
        container_member(&container(&main).unwrap(), &injected, &main),
        Err(NotVouched::Repeated {
            hierarchy: "unified".into()
        })
    );
    let v1_injected = format!(
        "12:pids:/system.slice/evil.service/x\n4:memory:/docker/{id}\n4:memory:/system.slice/evil.service\n0::/docker/{id}\n"
    );
    assert_eq!(
        member(
            &v1_injected,
            &format!("4:memory:/docker/{id}\n0::/docker/{id}\n")
        ),
        Err(NotVouched::Repeated {
            hierarchy: "memory".into()
        })
    );
    // A hierarchy the candidate is not in at all.
    assert_eq!(
        member(
            &format!("0::/docker/{id}\n"),
            &format!("4:memory:/docker/{id}\n0::/docker/{id}\n")
        ),
        Err(NotVouched::NoHierarchy {
            hierarchy: "memory".into()
        })
    );
    // The engine's main process in no cgroup of the container (a pid reused, the forger's own
    // process, an empty or root-only file): nothing is vouched for, not even the same path.
    for main in [
        forged.clone().replace(id, &"0".repeat(64)),
        "0::/system.slice/other.service\n".to_owned(),
        "0::/\n".to_owned(),
        String::new(),
    ] {
        assert_eq!(
            member(&forged, &main),
            Err(NotVouched::MainElsewhere),
            "{main}"
        );
    }
    let other = format!("0::/system.slice/docker-{}.scope\n", "b".repeat(64));
    assert_eq!(member(&main, &other), Err(NotVouched::MainElsewhere));
}

#[test]
fn no_pod_in_a_users_own_subtree() {
    let id = "a".repeat(64);
    let forged = format!(
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods.slice/kubepods-pod1c2d3e4f_aaaa_bbbb_cccc_0123456789ab.slice/cri-containerd-{id}.scope\n"
    );
    assert_eq!(pod(&forged), None);
}

#[test]
fn pods_from_both_cgroup_drivers_and_runtimes() {
    let id = "a".repeat(64);
    let systemd = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1c2d3e4f_aaaa_bbbb_cccc_0123456789ab.slice/cri-containerd-{id}.scope\n"
    );
    let p = pod(&systemd).unwrap();
    assert_eq!(p.uid, "1c2d3e4f-aaaa-bbbb-cccc-0123456789ab");
    assert_eq!(p.container_id, id);
    assert_eq!(p.runtime.as_deref(), Some("cri-containerd"));
    let guaranteed = format!(
        "0::/kubepods.slice/kubepods-pod1c2d3e4f_aaaa_bbbb_cccc_0123456789ab.slice/crio-{id}.scope"
    );
    assert_eq!(pod(&guaranteed).unwrap().runtime.as_deref(), Some("crio"));
    let cgroupfs = format!(
        "12:memory:/kubepods/besteffort/pod1c2d3e4f-aaaa-bbbb-cccc-0123456789ab/{id}\n0::/\n"
    );
    let p = pod(&cgroupfs).unwrap();
    assert_eq!(p.uid, "1c2d3e4f-aaaa-bbbb-cccc-0123456789ab");
    assert_eq!(p.runtime, None);
    // Not under kubepods, a short id, a uid of the wrong shape: no pod.
    assert_eq!(
        pod(&format!(
            "0::/user.slice/pod1c2d3e4f-aaaa-bbbb-cccc-0123456789ab/{id}"
        )),
        None
    );
    assert_eq!(
        pod("0::/kubepods/pod1c2d3e4f-aaaa-bbbb-cccc-0123456789ab/abc"),
        None
    );
    assert_eq!(pod(&format!("0::/kubepods/podnotauid/{id}")), None);
    // A pod's container is named after the pod, not taken for a Docker container.
    let mut info = proc_with("/usr/bin/claude", &["claude"], &systemd);
    assert!(matches!(placement(&info), Placement::Pod(_)));
    assert_eq!(
        identify(&info, &[]),
        InstanceId::container("k8s:1c2d3e4f-aaaa-bbbb-cccc-0123456789ab")
    );
    info.cgroup = format!("0::/system.slice/docker-{id}.scope");
    assert!(matches!(placement(&info), Placement::Container(_)));
}

#[test]
fn environ_yields_only_process_manager_variables() {
    let raw = b"ANTHROPIC_API_KEY=sk-ant-secret\0pm_id=3\0name=reviewer\0PM2_HOME=/home/a/.pm2\0\
SUPERVISOR_PROCESS_NAME=agent\0SUPERVISOR_GROUP_NAME=agents\0SUPERVISOR_SERVER_URL=unix:///run/s.sock\0";
    let env = procfs::parse_environ(raw);
    assert_eq!(env.pm2_id, Some(3));
    assert_eq!(env.pm2_name.as_deref(), Some("reviewer"));
    assert_eq!(env.pm2_home.as_deref(), Some(Path::new("/home/a/.pm2")));
    assert_eq!(env.supervisord_program.as_deref(), Some("agent"));
    assert_eq!(env.supervisord_group.as_deref(), Some("agents"));
    assert!(!format!("{env:?}").contains("sk-ant"));
    // `name` without `pm_id` is not pm2; control characters and huge values are dropped.
    let env = procfs::parse_environ(b"name=x\0SUPERVISOR_PROCESS_NAME=a\x1b[2Jb\0");
    assert_eq!(env, SupervisorEnv::default());
    let long = format!("SUPERVISOR_PROCESS_NAME={}", "x".repeat(300));
    assert_eq!(
        procfs::parse_environ(long.as_bytes()),
        SupervisorEnv::default()
    );
    // Any bytes at all: no panic.
    for cut in 0..raw.len() {
        let _ = procfs::parse_environ(&raw[..cut]);
    }
}

#[test]
fn the_nearest_supervisor_names_the_instance() {
    let mut info = proc_with(
        "/usr/bin/claude",
        &["claude"],
        "0::/system.slice/pm2-root.service\n",
    );
    assert_eq!(identify(&info, &[]), InstanceId::unit("pm2-root.service"));
    info.env.pm2_id = Some(0);
    info.env.pm2_name = Some("reviewer".into());
    assert_eq!(identify(&info, &[]), InstanceId::program("pm2:reviewer"));
    info.env = SupervisorEnv {
        supervisord_program: Some("agent".into()),
        ..SupervisorEnv::default()
    };
    assert_eq!(
        identify(&info, &[]),
        InstanceId::program("supervisord:agent")
    );
    let user = proc_with(
        "/usr/bin/claude",
        &["claude"],
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service\n",
    );
    let id = identify(&user, &[]);
    assert_eq!(id, InstanceId::user_unit(1000, "nginx.service"));
    assert_eq!(id.name, "user:1000:nginx.service");
    assert_eq!(id.unit_name(), Some("nginx.service"));
}

#[test]
fn saved_names_keep_their_source() {
    for id in [
        InstanceId::unit("a.service"),
        InstanceId::user_unit(7, "a.service"),
        InstanceId::pid(9),
        InstanceId::container("docker:web"),
        InstanceId::container("k8s:1c2d3e4f-aaaa-bbbb-cccc-0123456789ab"),
        InstanceId::program("pm2:x"),
        InstanceId::program("supervisord:x"),
        InstanceId::rule("alpha"),
        InstanceId::bg_session("5c56ca27"),
        InstanceId::bg_machinery(1000),
    ] {
        assert_eq!(InstanceId::from_saved(&id.name, id.unit_name()), id, "{id}");
    }
    // A saved machinery instance stays observe-only after a daemon restart.
    assert_eq!(
        InstanceId::from_saved("claude-bg-daemon:1000", None).placement(),
        Placement::BgMachinery { uid: 1000 }
    );
}

#[test]
fn only_names_the_kernel_vouches_for_admit_processes_of_other_users() {
    let rules = [
        MatchRule {
            name: "open".into(),
            arg: Some("--x".into()),
            ..MatchRule::default()
        },
        MatchRule {
            name: "pinned".into(),
            arg: Some("--x".into()),
            uid: Some(1001),
            ..MatchRule::default()
        },
    ];
    let open = InstanceId::rule("open");
    assert!(may_join(&open, 1001, [], &rules), "the first member");
    assert!(may_join(&open, 1001, [1001, 1001], &rules));
    assert!(!may_join(&open, 1002, [1001], &rules), "another user");
    assert!(may_join(&InstanceId::rule("pinned"), 1001, [1001], &rules));
    assert!(!may_join(&InstanceId::program("pm2:a"), 0, [1001], &rules));
    for kernel in [
        InstanceId::unit("a.service"),
        InstanceId::user_unit(1001, "a.service"),
        InstanceId::container("docker:a"),
    ] {
        assert!(may_join(&kernel, 0, [1001], &rules), "{kernel}");
    }
    // A rule naming the uid matches only that user's processes.
    let mut p = proc_with("/usr/bin/claude", &["claude", "--x"], "0::/\n");
    p.uid = 1002;
    assert!(!rules[1].matches(&p));
    p.uid = 1001;
    assert!(rules[1].matches(&p));
}

#[test]
fn a_plain_http_base_url_is_kept_as_its_origin_only() {
    let env = procfs::parse_environ(
        b"ANTHROPIC_API_KEY=sk-ant-secret\0ANTHROPIC_BASE_URL=http://user:sk-ant-pw@127.0.0.1:4000/v1?key=sk-ant-q\0",
    );
    assert_eq!(
        env.plain_http_base.as_deref(),
        Some("http://127.0.0.1:4000")
    );
    let tls = procfs::parse_environ(b"ANTHROPIC_BASE_URL=https://127.0.0.1:4000\0");
    assert_eq!(tls.plain_http_base, None);
    assert_eq!(procfs::plain_http_origin("http://"), None);
    assert_eq!(
        procfs::plain_http_origin("http://gateway.local"),
        Some("http://gateway.local".into())
    );
}
