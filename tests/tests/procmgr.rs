//! Recovery through process managers, end to end with the real tools: pm2 (from npm, pinned in
//! `tests/npm-deps.txt`) run by an unprivileged user, and supervisord (Debian's). A light agent
//! taken for Claude Code runs under the manager, latches at the stand-in, claude-watch (`auto`)
//! restarts it through that manager, and the new process's own 200 confirms the recovery. A
//! process that only claims the manager's variables is refused and nothing is restarted.
//!
//! Needs root, `useradd`, supervisord and the pinned pm2 (`cargo xtask setup --tests`).

use claude_watch_tests::wait::now_ms;
use claude_watch_tests::wait::one_at_a_time as serial;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::ActionKind;
use claude_watch_tests::agents::{AgentConfig, FAKE_API_KEY, agent_env, agent_script};
use claude_watch_tests::deps;
use claude_watch_tests::process::{ChildGuard, ScratchDir, alive};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::supervisord::Supervisord;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::Daemon;
use serde_json::Value;

/// The pinned pm2 (`tests/npm-deps.txt`).
const PM2_DIR: &str = "npm/pm2-7.0.4";
/// The unprivileged user whose pm2 runs the agent.
const PM2_USER: &str = "cwtest-pm2";
const WAIT: Duration = Duration::from_secs(45);
/// Fast detection, short quiet windows; no systemd here.
const CONFIG: &str = "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nrestart_timeout = \"30s\"\nbackoff_initial = \"3s\"\n";

fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An account for the tests, created once (idempotently).
#[derive(Clone, Debug)]
struct User {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn test_user(name: &str) -> User {
    let getent = || {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .expect("getent");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let entry = getent().unwrap_or_else(|| {
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/usr/sbin/nologin", name])
            .output()
            .expect("useradd");
        // 9: it exists already (created meanwhile).
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        getent().expect("the user exists")
    });
    let f: Vec<&str> = entry.split(':').collect();
    User {
        uid: f[2].parse().expect("uid"),
        gid: f[3].parse().expect("gid"),
        home: PathBuf::from(f[5]),
    }
}

fn chown_tree(path: &Path, user: &User) {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).expect("chown");
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).expect("read_dir") {
            chown_tree(&e.expect("entry").path(), user);
        }
    }
}

/// The environment a light agent needs (loopback stand-in, fake key), taken for Claude Code.
fn agent_vars(standin: &StandIn, home: &Path) -> Vec<(&'static str, OsString)> {
    let config = AgentConfig::haiku_as_claude();
    let mut env: Vec<(&'static str, OsString)> = vec![
        ("HOME", home.into()),
        ("ANTHROPIC_BASE_URL", standin.base_url().into()),
        ("ANTHROPIC_API_KEY", FAKE_API_KEY.into()),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0".into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
    ];
    env.extend(agent_env(&config).into_iter().map(|(k, v)| (k, v.into())));
    env
}

/// A pm2 daemon with its own scratch `PM2_HOME`, run by `user` (root when `None`), killed
/// (`pm2 kill`) on drop.
struct Pm2 {
    home: PathBuf,
    user: Option<User>,
}

fn pm2_bin() -> PathBuf {
    let bin = deps::test_deps_dir().join(PM2_DIR).join("bin/pm2");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask setup --tests`",
        bin.display()
    );
    bin
}

impl Pm2 {
    fn new(home: PathBuf, user: Option<&User>) -> Self {
        std::fs::create_dir_all(&home).expect("create PM2_HOME");
        if let Some(u) = user {
            chown_tree(&home, u);
        }
        Self {
            home,
            user: user.cloned(),
        }
    }

    /// `pm2 <args>` as the daemon's user, with pm2 on `PATH` as a user who installed it has.
    fn command(&self, args: &[&Arg], env: &[(&str, OsString)]) -> Command {
        let bin = pm2_bin();
        let mut c = Command::new(&bin);
        c.args(args.iter().map(|a| a.as_ref()))
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", bin.parent().expect("bin dir").display()),
            )
            .env(
                "HOME",
                self.user
                    .as_ref()
                    .map_or_else(|| PathBuf::from("/root"), |u| u.home.clone()),
            )
            .env("PM2_HOME", &self.home)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home)
            .stdin(Stdio::null());
        if let Some(u) = &self.user {
            c.uid(u.uid).gid(u.gid);
        }
        c
    }

    #[track_caller]
    fn run(&self, args: &[&Arg], env: &[(&str, OsString)]) -> Output {
        let out = self.command(args, env).output().expect("run pm2");
        assert!(
            out.status.success(),
            "pm2 {:?}: {}\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn apps(&self) -> Vec<Value> {
        let out = self.run(&[&"jlist"], &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find('[').expect("jlist prints a JSON list");
        serde_json::from_str(&text[start..]).expect("jlist is JSON")
    }

    fn app(&self, name: &str) -> Option<Value> {
        self.apps().into_iter().find(|a| a["name"] == name)
    }

    /// The live pid of app `name`.
    fn pid(&self, name: &str) -> Option<u32> {
        self.app(name)
            .and_then(|a| a["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0 && alive(*p))
    }

    fn restarts(&self, name: &str) -> u64 {
        self.app(name).expect("app")["pm2_env"]["restart_time"]
            .as_u64()
            .expect("restart_time")
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = self.command(&[&"kill"], &[]).output();
        // Whatever `pm2 kill` left (it should leave nothing).
        if let Some(pid) = std::fs::read_to_string(self.home.join("pm2.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// An argument: a string or a path.
type Arg = dyn AsRef<OsStr>;

/// A supervisord program running a light agent against `standin`.
fn agent_program(name: &str, standin: &StandIn, dir: &Path) -> String {
    let cli = agent_script(dir, true);
    let environment: Vec<String> = agent_vars(standin, dir)
        .into_iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.to_string_lossy()))
        .collect();
    format!(
        "[program:{name}]\ncommand={} {}\nenvironment={}\nautorestart=true\nstartsecs=1\nstopwaitsecs=5\nredirect_stderr=true\nstdout_logfile={}/{name}.log\n",
        deps::node().display(),
        cli.display(),
        environment.join(","),
        dir.display()
    )
}

#[test]
fn a_latched_agent_under_a_users_pm2_is_restarted_by_that_users_pm2() {
    let _serial = serial();
    let user = test_user(PM2_USER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-pm2");
    let cli = agent_script(dir.path(), true);
    let agent_home = dir.path().join("home");
    std::fs::create_dir_all(&agent_home).expect("agent home");
    chown_tree(&agent_home, &user);
    // root's own pm2, with an app of the same name and pm_id: it must be left alone.
    let root_pm2 = Pm2::new(dir.path().join("pm2-root"), None);
    root_pm2.run(
        &[&"start", &"/bin/sleep", &"--name", &"agent", &"--", &"1000"],
        &[],
    );
    let root_pid = wait_until(WAIT, "root's app", || root_pm2.pid("agent"));
    let pm2 = Pm2::new(dir.path().join("pm2-user"), Some(&user));
    pm2.run(
        &[&"start", &deps::node(), &"--name", &"agent", &"--", &cli],
        &agent_vars(&standin, &agent_home),
    );
    let old_pid = wait_until(WAIT, "the user's app", || pm2.pid("agent"));
    assert_eq!(uid_of(old_pid), Some(user.uid), "pm2 runs it as {PM2_USER}");

    let daemon = Daemon::start("", CONFIG);
    let healthy = daemon.wait_for("pm2:agent", WAIT, "the pm2 agent healthy", |i| {
        i.last_status == Some(200)
    });
    assert_eq!(healthy.supervisor, "pm2", "{healthy:?}");
    assert_eq!(
        healthy.supervisor_reason,
        "auto → pm2 (pm2 app 0 (agent) in the process's environment)"
    );
    let old_session = healthy.session_id.clone().expect("session");
    let latched_at = now_ms();
    standin.latch_session(&old_session);

    let episode =
        daemon.wait_closed_episode(Some("pm2:agent"), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.restarts, 1, "{episode:?}");
    // The new process may answer before the restart call returns (supervisord's
    // `startProcess` waits `startsecs`): wait for the action's record too.
    let restarts = wait_until(WAIT, "the restart recorded", || {
        let r = daemon.actions_of("pm2:agent", ActionKind::Restart);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok, "{restarts:?}");
    let detail = restarts[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("pm2 restart 0 (agent) as {PM2_USER}")),
        "{detail}"
    );
    // The user's pm2 restarted its app, as that user; root's pm2 was not touched.
    let new_pid = wait_until(WAIT, "the restarted app", || {
        pm2.pid("agent").filter(|p| *p != old_pid)
    });
    assert_eq!(uid_of(new_pid), Some(user.uid));
    assert!(!alive(old_pid), "the old agent {old_pid} is gone");
    assert_eq!(pm2.restarts("agent"), 1);
    assert_eq!(
        root_pm2.pid("agent"),
        Some(root_pid),
        "root's app untouched"
    );
    assert_eq!(root_pm2.restarts("agent"), 0);
    daemon.assert_recovered_by_new_session(&standin, "pm2:agent", &old_session, latched_at, WAIT);
}

#[test]
fn a_process_faking_pm2_variables_is_refused_and_nothing_is_restarted() {
    let _serial = serial();
    let user = test_user(PM2_USER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-pm2-fake");
    let cli = agent_script(dir.path(), true);
    let agent_home = dir.path().join("home");
    std::fs::create_dir_all(&agent_home).expect("agent home");
    chown_tree(&agent_home, &user);
    let pm2 = Pm2::new(dir.path().join("pm2-user"), Some(&user));
    pm2.run(
        &[&"start", &"/bin/sleep", &"--name", &"agent", &"--", &"1000"],
        &[],
    );
    let real_pid = wait_until(WAIT, "the real app", || pm2.pid("agent"));
    // The same user's claude process, not run by pm2, claiming to be its app 0.
    let mut fake = Command::new(deps::node());
    fake.arg(&cli)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(agent_vars(&standin, &agent_home))
        .env("pm_id", "0")
        .env("name", "impostor")
        .env("PM2_HOME", &pm2.home)
        .current_dir(&agent_home)
        .uid(user.uid)
        .gid(user.gid);
    let impostor = ChildGuard::spawn("impostor", &mut fake);

    let daemon = Daemon::start("", CONFIG);
    let seen = daemon.wait_for("pm2:impostor", WAIT, "the impostor healthy", |i| {
        i.last_status == Some(200)
    });
    assert_eq!(seen.supervisor, "pm2", "{seen:?}");
    standin.latch_pid(impostor.pid());

    let refused = daemon.wait_refused_restart("pm2:impostor", WAIT);
    let detail = refused.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("does not own pid {}", impostor.pid()))
            && detail.contains(&format!("runs pid {real_pid} as app 0 (agent)")),
        "{detail}"
    );
    // Retried behind a quiet window, shown in status.
    daemon.wait_for("pm2:impostor", WAIT, "a quiet window", |i| {
        i.backoff_until_ms.is_some() && i.supervisor == "pm2"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pm2.pid("agent"),
        Some(real_pid),
        "the real app was not restarted"
    );
    assert_eq!(pm2.restarts("agent"), 0);
    assert!(alive(impostor.pid()), "the impostor was not touched either");
    assert!(
        daemon
            .actions_of("pm2:impostor", ActionKind::Restart)
            .iter()
            .all(|a| !a.ok)
    );
}

#[test]
fn a_latched_agent_under_supervisord_is_restarted_over_xml_rpc() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-supervisord");
    let sup = Supervisord::start(dir.path(), &agent_program("agent", &standin, dir.path()));
    let old_pid = wait_until(WAIT, "supervisord's agent", || sup.pid("agent"));

    let daemon = Daemon::start("", CONFIG);
    let healthy = daemon.wait_for("supervisord:agent", WAIT, "the agent healthy", |i| {
        i.last_status == Some(200)
    });
    assert_eq!(healthy.supervisor, "supervisord", "{healthy:?}");
    assert_eq!(
        healthy.supervisor_reason,
        "auto → supervisord (supervisord program agent in the process's environment)"
    );
    let old_session = healthy.session_id.clone().expect("session");
    let latched_at = now_ms();
    standin.latch_session(&old_session);

    let episode = daemon.wait_closed_episode(
        Some("supervisord:agent"),
        EpisodeEnd::RecoveredAfterRestart,
        WAIT,
    );
    assert_eq!(episode.restarts, 1, "{episode:?}");
    // The new process may answer before the restart call returns (supervisord's
    // `startProcess` waits `startsecs`): wait for the action's record too.
    let restarts = wait_until(WAIT, "the restart recorded", || {
        let r = daemon.actions_of("supervisord:agent", ActionKind::Restart);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok, "{restarts:?}");
    let new_pid = sup.pid("agent").expect("running again");
    assert_ne!(new_pid, old_pid, "supervisord restarted the program");
    assert!(!alive(old_pid));
    daemon.assert_recovered_by_new_session(
        &standin,
        "supervisord:agent",
        &old_session,
        latched_at,
        WAIT,
    );
}

#[test]
fn an_agent_under_a_wrapper_shell_of_supervisord_is_restarted_with_its_program() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-supervisord-wrap");
    // `sh -c "node cli.js; ..."` does not exec: supervisord's pid is the shell's, the agent is
    // its child. `stopasgroup` makes supervisord stop the agent with its shell.
    let program = agent_program("wrapped", &standin, dir.path())
        .replacen("command=", "command=/bin/sh -c \"", 1)
        .replacen("\nenvironment=", "; exit 3\"\nenvironment=", 1)
        + "stopasgroup=true\n";
    let sup = Supervisord::start(dir.path(), &program);
    let shell = wait_until(WAIT, "the wrapper shell", || sup.pid("wrapped"));

    let daemon = Daemon::start("", CONFIG);
    let healthy = daemon.wait_for("supervisord:wrapped", WAIT, "the agent healthy", |i| {
        i.last_status == Some(200)
    });
    let agent = healthy.pids[0];
    assert_ne!(agent, shell, "the agent is the shell's child");
    let old_session = healthy.session_id.clone().expect("session");
    let latched_at = now_ms();
    standin.latch_session(&old_session);

    daemon.wait_closed_episode(
        Some("supervisord:wrapped"),
        EpisodeEnd::RecoveredAfterRestart,
        WAIT,
    );
    let restarts = wait_until(WAIT, "the restart recorded", || {
        let r = daemon.actions_of("supervisord:wrapped", ActionKind::Restart);
        (!r.is_empty()).then_some(r)
    });
    assert!(restarts[0].ok, "{restarts:?}");
    assert_ne!(sup.pid("wrapped"), Some(shell), "a new shell");
    assert!(!alive(shell) && !alive(agent));
    daemon.assert_recovered_by_new_session(
        &standin,
        "supervisord:wrapped",
        &old_session,
        latched_at,
        WAIT,
    );
}

#[test]
fn processes_faking_supervisord_variables_are_refused_and_nothing_is_restarted() {
    let _serial = serial();
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-supervisord-fake");
    let socket = dir.path().join("supervisor.sock");
    // A program of supervisord that claims to be another one, `agent`.
    let cli = agent_script(dir.path(), true);
    let launcher = agent_program("launcher", &standin, dir.path()).replace(
        "command=",
        "command=/usr/bin/env SUPERVISOR_PROCESS_NAME=agent SUPERVISOR_GROUP_NAME=agent ",
    );
    let sup = Supervisord::start(
        dir.path(),
        &format!("[program:agent]\ncommand=/bin/sleep 1000\nstartsecs=0\n{launcher}"),
    );
    let real_pid = wait_until(WAIT, "the real program", || sup.pid("agent"));
    let inside = wait_until(WAIT, "the launcher", || sup.pid("launcher"));
    // And a process outside supervisord with its variables.
    let agent_home = dir.path().join("home");
    std::fs::create_dir_all(&agent_home).expect("home");
    let mut fake = Command::new(deps::node());
    fake.arg(&cli)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(agent_vars(&standin, &agent_home))
        .env("SUPERVISOR_PROCESS_NAME", "outsider")
        .env("SUPERVISOR_GROUP_NAME", "agent")
        .env(
            "SUPERVISOR_SERVER_URL",
            format!("unix://{}", socket.display()),
        );
    let outsider = ChildGuard::spawn("outsider", &mut fake);

    let daemon = Daemon::start("", CONFIG);
    for name in ["supervisord:agent", "supervisord:outsider"] {
        let seen = daemon.wait_for(name, WAIT, "healthy", |i| i.last_status == Some(200));
        assert_eq!(seen.supervisor, "supervisord", "{seen:?}");
    }
    standin.latch_pid(inside);
    standin.latch_pid(outsider.pid());

    let refused = daemon.wait_refused_restart("supervisord:agent", WAIT);
    let detail = refused.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("does not own pid {inside}"))
            && detail.contains(&format!("runs agent as pid {real_pid} (RUNNING)")),
        "{detail}"
    );
    let refused = daemon.wait_refused_restart("supervisord:outsider", WAIT);
    let detail = refused.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("no supervisord among the process's ancestors"),
        "{detail}"
    );
    // Retried behind a quiet window, shown in status.
    daemon.wait_for("supervisord:agent", WAIT, "a quiet window", |i| {
        i.backoff_until_ms.is_some() && i.supervisor == "supervisord"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sup.pid("agent"),
        Some(real_pid),
        "the real program was not restarted"
    );
    assert_eq!(sup.pid("launcher"), Some(inside), "nor the launcher");
    assert!(alive(outsider.pid()));
}
