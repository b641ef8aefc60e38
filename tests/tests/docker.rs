//! Recovery through Docker's Engine API: a real `dockerd` (Debian's `docker.io`, no bridge, no
//! iptables), containers of a locally imported image (no pulls) on the host network running a
//! light agent (Bun running the agent as npm's `claude-code/cli.js`) against the stand-in on
//! 127.0.0.1, real probes, and the daemon restarting the containers with `auto` (→ `docker`).
//!
//! - a latched container is restarted and recovery is confirmed by the new process's own 200;
//! - two containers latched by an open upstream window are restarted one at a time, again only
//!   after growing quiet windows, and both recover once the window closes;
//! - the same through Podman's Docker-compatible API (`podman system service`, rootful);
//! - a process outside a container, in a cgroup forged to name that container, is refused by the
//!   adapter and the container is left alone.
//!
//! Needs root and the pinned clients (`cargo xtask setup --tests`).

use claude_watch_tests::wait::now_ms;
use claude_watch_tests::wait::one_at_a_time as serial;
use std::path::Path;
use std::time::Duration;

use claude_watch::detect::{Episode, EpisodeEnd};
use claude_watch::instance::{Placement, container};
use claude_watch::journal::ActionKind;
use claude_watch::supervise::docker::{DockerIo as _, DockerRestarter};
use claude_watch::supervise::{Restarter as _, SuperviseError, Target};
use claude_watch_tests::agents::{AgentConfig, agent_env, agent_script};
use claude_watch_tests::deps::{self, Bun, LATEST};
use claude_watch_tests::docker::{self, Container, Engine, Podman};
use claude_watch_tests::process::{ChildGuard, ScratchDir};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::testbed::cgroup2_root;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::Daemon;

const WAIT: Duration = Duration::from_secs(45);
/// Where the agent's package is mounted in the container.
const AGENT_DIR: &str = "/opt/agent/node_modules";
const CLI: &str = "/opt/agent/node_modules/@anthropic-ai/claude-code/cli.js";

/// The image: busybox, glibc and a Claude Code binary (the agent's Bun is mounted in).
fn image(engine: &Engine) -> String {
    engine.claude_image(
        &format!("claude-watch-test/claude:{LATEST}"),
        &deps::native_latest(),
    )
}

/// Starts container `name` running the light agent (taken for Claude Code) under Bun against
/// `standin`; its files under `dir`. SIGTERM is ignored by a PID 1 without a handler, so the
/// container's stop timeout is 1 s (the engine then kills it).
fn agent_container(image: &str, standin: &StandIn, name: &str, dir: &Path) -> (Container, String) {
    let container = Container::named(name);
    agent_in(&container, image, standin, dir);
    (container, format!("docker:{name}"))
}

/// Starts `container` (Docker's or Podman's) running the light agent, as [`agent_container`].
fn agent_in(container: &Container, image: &str, standin: &StandIn, dir: &Path) {
    let config = AgentConfig::haiku_as_claude();
    agent_script(dir, true);
    let mut args: Vec<String> = vec![
        "--stop-timeout".into(),
        "1".into(),
        "-v".into(),
        format!("{}:/usr/local/bin/bun:ro", Bun::V1_4_5.path().display()),
        "-v".into(),
        format!("{}:{AGENT_DIR}:ro", dir.join("node_modules").display()),
        "-w".into(),
        "/root".into(),
    ];
    let env: Vec<(&str, String)> = vec![
        ("HOME", "/root".into()),
        ("ANTHROPIC_BASE_URL", standin.base_url()),
        ("ANTHROPIC_API_KEY", config.api_key.clone()),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0".into()),
    ];
    for (k, v) in env.into_iter().chain(agent_env(&config)) {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    container.run_detached(image, &args, &["/usr/local/bin/bun", CLI]);
}

/// Daemon configuration: fast detection, short quiet windows, the engine at its default socket.
fn config(extra: &str) -> String {
    format!(
        "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nrestart_timeout = \"20s\"\n{extra}\n"
    )
}

/// `(main pid, StartedAt)` of a container.
fn run_of(container: &Container) -> (u32, String) {
    let out = container.inspect("{{.State.Pid}} {{.State.StartedAt}}");
    let (pid, started) = out.split_once(' ').expect("pid and start");
    (pid.parse().expect("a pid"), started.to_owned())
}

#[test]
fn a_latched_container_is_restarted_through_the_engine_api_and_recovers_with_its_own_200() {
    let _serial = serial();
    let standin = StandIn::start();
    let engine = Engine::start();
    let image = image(&engine);
    let dir = ScratchDir::new("cw-docker-recover");
    let name = format!("cw-recover-{}", std::process::id());
    let (container, instance) = agent_container(&image, &standin, &name, dir.path());
    let daemon = Daemon::start("", &config("backoff_initial = \"3s\""));

    let healthy = daemon.wait_for(&instance, WAIT, "the container's agent healthy", |i| {
        i.last_status == Some(200)
    });
    let id = container.id();
    assert_eq!(healthy.supervisor, "docker", "{healthy:?}");
    assert_eq!(
        healthy.supervisor_reason,
        format!(
            "auto → docker (docker container {} on {})",
            &id[..12],
            docker::SOCKET
        ),
        "{healthy:?}"
    );
    let old_session = healthy.session_id.clone().expect("session");
    let (old_pid, old_started) = run_of(&container);
    let latched_at = now_ms();
    standin.latch_session(&old_session);

    let episode =
        daemon.wait_closed_episode(Some(&instance), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.restarts, 1, "{episode:?}");
    let (new_pid, new_started) = run_of(&container);
    assert_ne!(new_pid, old_pid, "the engine restarted the container");
    assert_ne!(new_started, old_started);
    let restarts = daemon.actions(ActionKind::Restart);
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok, "{restarts:?}");
    assert_eq!(restarts[0].instance, instance);
    assert_eq!(restarts[0].episode_id.as_deref(), Some(episode.id.as_str()));
    let detail = restarts[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("container {name} ({})", &id[..12]))
            && detail.contains(&format!("→ {new_pid}")),
        "{detail}"
    );
    // Confirmed by the new process's own request: a new session answered 200 after the latch.
    let now =
        daemon.assert_recovered_by_new_session(&standin, &instance, &old_session, latched_at, WAIT);
    assert!(
        now.pids.contains(&new_pid),
        "the new main process is the instance's: {now:?}"
    );
}

#[test]
fn a_latched_podman_container_is_restarted_through_its_docker_compatible_api() {
    let _serial = serial();
    let standin = StandIn::start();
    let podman = Podman::start();
    let image = podman.claude_image(
        &format!("claude-watch-test/claude:{LATEST}"),
        &deps::native_latest(),
    );
    let dir = ScratchDir::new("cw-podman-recover");
    let name = format!("cw-podman-{}", std::process::id());
    let container = Container::podman(&name, &podman);
    agent_in(&container, &image, &standin, dir.path());
    let instance = format!("podman:{name}");
    let daemon = Daemon::start(
        &format!("docker_socket = \"{}\"", podman.socket().display()),
        &config("backoff_initial = \"3s\""),
    );

    let healthy = daemon.wait_for(&instance, WAIT, "the container's agent healthy", |i| {
        i.last_status == Some(200)
    });
    let id = container.id();
    assert_eq!(healthy.supervisor, "docker", "{healthy:?}");
    assert_eq!(
        healthy.supervisor_reason,
        format!(
            "auto → docker (podman container {} on {})",
            &id[..12],
            podman.socket().display()
        ),
        "{healthy:?}"
    );
    let old_session = healthy.session_id.clone().expect("session");
    let (old_pid, _) = run_of(&container);
    let latched_at = now_ms();
    standin.latch_session(&old_session);

    let episode =
        daemon.wait_closed_episode(Some(&instance), EpisodeEnd::RecoveredAfterRestart, WAIT);
    assert_eq!(episode.restarts, 1, "{episode:?}");
    let (new_pid, _) = run_of(&container);
    assert_ne!(new_pid, old_pid, "Podman restarted the container");
    let restarts = daemon.actions(ActionKind::Restart);
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ok, "{restarts:?}");
    let detail = restarts[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains(&format!("podman container {name} ({})", &id[..12]))
            && detail.contains(&format!("→ {new_pid}")),
        "{detail}"
    );
    daemon.assert_recovered_by_new_session(&standin, &instance, &old_session, latched_at, WAIT);
}

#[test]
fn two_containers_in_an_open_window_are_restarted_one_at_a_time_behind_growing_quiet_windows() {
    let _serial = serial();
    let standin = StandIn::start();
    let engine = Engine::start();
    let image = image(&engine);
    let dirs = [
        ScratchDir::new("cw-docker-window-a"),
        ScratchDir::new("cw-docker-window-b"),
    ];
    let pid = std::process::id();
    let started_s = now_ms() / 1000;
    let containers: Vec<(Container, String)> = ["a", "b"]
        .iter()
        .zip(&dirs)
        .map(|(n, dir)| {
            agent_container(
                &image,
                &standin,
                &format!("cw-window-{n}-{pid}"),
                dir.path(),
            )
        })
        .collect();
    let daemon = Daemon::start(
        "",
        &config("backoff_initial = \"2s\"\nbackoff_max = \"16s\"\nmax_restarts = 10"),
    );
    for (_, instance) in &containers {
        daemon.wait_for(instance, WAIT, "healthy", |i| i.last_status == Some(200));
    }
    // Every session making a request inside the window latches, the restarted ones too.
    let window = Duration::from_secs(25);
    standin.open_window_for_all(window);
    let window_closes = now_ms() + u64::try_from(window.as_millis()).expect("fits");

    let recovered = wait_until(WAIT + window, "both containers recovered", || {
        let eps = daemon.episodes();
        let done: Vec<Episode> = containers
            .iter()
            .filter_map(|(_, instance)| {
                eps.iter()
                    .find(|e| &e.instance == instance && e.end == EpisodeEnd::RecoveredAfterRestart)
                    .cloned()
            })
            .collect();
        (done.len() == containers.len()).then_some(done)
    });
    for episode in &recovered {
        assert!(
            episode.ended_ms.expect("ended") >= window_closes,
            "recovered before the window closed: {episode:?}"
        );
    }
    let restarts = daemon.actions(ActionKind::Restart);
    let backoffs = daemon.actions(ActionKind::Backoff);
    assert!(restarts.iter().all(|r| r.ok), "{restarts:?}");

    // One at a time: the engine's own events show each restart (first kill to the restart
    // event) ending before the next one, of either container, begins.
    let mut runs: Vec<(u64, u64, String)> = Vec::new();
    for (container, instance) in &containers {
        let events = docker::container_events(container.name(), started_s, now_ms() / 1000 + 1);
        let mut begun = None;
        for (at, action) in events {
            match action.as_str() {
                a if a.starts_with("kill") && begun.is_none() => begun = Some(at),
                "restart" => runs.push((begun.take().expect("a kill first"), at, instance.clone())),
                _ => {}
            }
        }
        let journalled = restarts.iter().filter(|r| &r.instance == instance).count();
        let engine_restarts = runs.iter().filter(|r| &r.2 == instance).count();
        assert_eq!(
            engine_restarts, journalled,
            "{instance}: the engine's restarts are the journal's"
        );
        assert!(
            journalled >= 2,
            "{instance}: restarted into the window, then again"
        );
    }
    runs.sort();
    eprintln!("restarts (engine kill → restart, ms): {runs:?}");
    for pair in runs.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two restarts in flight at once: {runs:?}"
        );
    }

    // Quiet windows: each container backed off, longer each time, and was never restarted inside
    // one of its own windows.
    for (_, instance) in &containers {
        let waits: Vec<(u64, u64)> = backoffs
            .iter()
            .filter(|b| &b.instance == instance)
            .map(|b| (b.at_ms, b.until_ms.expect("until")))
            .collect();
        assert!(!waits.is_empty(), "{instance} backed off: {backoffs:?}");
        let lengths: Vec<u64> = waits.iter().map(|(at, until)| until - at).collect();
        eprintln!("{instance}: quiet windows (ms): {lengths:?}");
        assert!(
            lengths.windows(2).all(|w| w[1] > w[0] + 1000),
            "{instance}: quiet windows grow: {lengths:?}"
        );
        for (at, until) in &waits {
            assert!(
                runs.iter()
                    .filter(|r| &r.2 == instance)
                    .all(|r| r.0 <= *at || r.0 >= until.saturating_sub(300)),
                "{instance}: a restart inside the quiet window {at}..{until}: {runs:?}"
            );
        }
    }
    assert!(
        containers.iter().any(|(_, instance)| backoffs
            .iter()
            .filter(|b| &b.instance == instance)
            .count()
            >= 2),
        "a second, longer quiet window: {backoffs:?}"
    );
}

/// A host process started inside a cgroup forged to name a running container (a
/// `docker-<id>.scope` outside the engine's own) is not taken into the container's instance:
/// the engine's main process for that id is elsewhere, so the process is watched as `pid:N`
/// and not supervised by the engine, the refusal logged; the container's own agent keeps its
/// name and its supervisor.
#[test]
fn a_process_in_a_forged_container_cgroup_is_not_named_after_the_container() {
    let _serial = serial();
    let standin = StandIn::start();
    let engine = Engine::start();
    let image = image(&engine);
    let dir = ScratchDir::new("cw-docker-forged-name");
    let name = format!("cw-named-{}", std::process::id());
    let (container, instance) = agent_container(&image, &standin, &name, dir.path());
    let daemon = Daemon::start("", &config(""));
    daemon.wait_for(&instance, WAIT, "the container's agent healthy", |i| {
        i.last_status == Some(200)
    });
    let id = container.id();
    let forged = ForgedCgroup::new(&id);

    // The same program as the container's agent, started by a shell that first moves itself
    // into the forged cgroup, so discovery meets it there at its exec.
    let config = AgentConfig::haiku_as_claude();
    let cli = dir
        .path()
        .join("node_modules/@anthropic-ai/claude-code/cli.js");
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(r#"echo $$ > "$1" && exec "$2" "$3""#)
        .arg("sh")
        .arg(forged.dir.join("cgroup.procs"))
        .arg(Bun::V1_4_5.path())
        .arg(&cli)
        .env("ANTHROPIC_BASE_URL", standin.base_url())
        .env("ANTHROPIC_API_KEY", &config.api_key)
        .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
        .envs(agent_env(&config))
        .current_dir(dir.path());
    let mut impostor = ChildGuard::spawn("the impostor", &mut command);
    let own = daemon.wait_for(
        &format!("pid:{}", impostor.pid()),
        WAIT,
        "the impostor watched under its own pid",
        |i| i.last_status == Some(200),
    );
    assert_ne!(own.supervisor, "docker", "{own:?}");
    let real = daemon.wait_for(&instance, WAIT, "the container's instance", |_| true);
    assert!(!real.pids.contains(&impostor.pid()), "{real:?}");
    assert_eq!(real.supervisor, "docker", "{real:?}");
    assert!(
        daemon.log().iter().any(|l| l
            .contains("refused: a process whose cgroup names a container")
            && l.contains(&format!("pid={}", impostor.pid()))),
        "the refusal is logged: {:?}",
        daemon.log()
    );
    impostor.kill();
}

/// A cgroup (in the unified hierarchy) named like a container's systemd scope, outside it;
/// removed on drop once its processes are gone.
struct ForgedCgroup {
    dir: std::path::PathBuf,
}

impl ForgedCgroup {
    fn new(id: &str) -> Self {
        let base = cgroup2_root().join(format!("cw-forge-{}", std::process::id()));
        let dir = base.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for ForgedCgroup {
    fn drop(&mut self) {
        // Whatever is left in it (the test's own sleepers) is killed; no panic in a drop.
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let procs = self.dir.join("cgroup.procs");
        for _ in 0..100 {
            if std::fs::read_to_string(&procs).map_or(true, |p| p.trim().is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The target the daemon would build for `pid`, its container read from its cgroup.
fn target_of(pid: u32, expected_id: &str) -> Target {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let found = container(&cgroup).unwrap_or_else(|| panic!("no container in {cgroup}"));
    assert_eq!(found.id, expected_id, "the cgroup names the real container");
    let mut target =
        claude_watch_tests::target_for_pid(format!("docker:forged-{pid}"), pid).expect("target");
    target.placement = Placement::Container(found);
    target
}

fn restart(restarter: &DockerRestarter, target: &Target) -> Result<String, SuperviseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(restarter.restart(target))
        .map(|o| o.summary)
}

#[test]
fn a_process_in_a_forged_container_cgroup_is_refused_and_the_container_left_alone() {
    let _serial = serial();
    let engine = Engine::start();
    let image = image(&engine);
    let name = format!("cw-owner-{}", std::process::id());
    let container = Container::named(&name);
    container.run_detached(
        &image,
        &["--stop-timeout".into(), "1".into()],
        &["/bin/sh", "-c", "sleep 1000"],
    );
    let id = container.id();
    let main = container.main_pid();
    let before = run_of(&container);
    let forged = ForgedCgroup::new(&id);
    let restarter = DockerRestarter {
        socket: docker::SOCKET.into(),
        grace: Some(Duration::from_secs(1)),
        timeout: Duration::from_secs(20),
    };

    // A host process in the forged cgroup: another pid namespace.
    let mut outside = ChildGuard::spawn(
        "sleep outside",
        std::process::Command::new("sleep").arg("1000"),
    );
    forged.enter(outside.pid());
    let err = restart(&restarter, &target_of(outside.pid(), &id)).expect_err("refused");
    let text = err.to_string();
    assert!(
        matches!(err, SuperviseError::NotInContainer { .. })
            && text.contains(&format!("container {name} ({})", &id[..12]))
            && text.contains("pid namespace"),
        "{text}"
    );

    // A process that entered the container's pid namespace (only root can) but sits in the
    // forged cgroup: same namespace, wrong cgroup.
    let mut inside_ns = ChildGuard::spawn(
        "sleep in the container's pid namespace",
        std::process::Command::new("nsenter").args([
            "--target",
            &main.to_string(),
            "--pid",
            "--",
            "sleep",
            "1000",
        ]),
    );
    let sleeper = wait_until(Duration::from_secs(10), "nsenter's child", || {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", inside_ns.pid()))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok())
    });
    forged.enter(sleeper);
    let err = restart(&restarter, &target_of(sleeper, &id)).expect_err("refused");
    let text = err.to_string();
    assert!(
        matches!(err, SuperviseError::NotInContainer { .. })
            && text.contains(&format!("container {name} ({})", &id[..12]))
            && text.contains("outside the cgroup")
            && text.contains(&format!("is not within /docker/{id}")),
        "{text}"
    );
    assert_eq!(
        run_of(&container),
        before,
        "the container was not restarted"
    );

    // The real main process is confirmed (the check can pass), and restarting it works.
    let real = target_of(main, &id);
    restarter
        .confirm(&real)
        .expect("the container's own process is confirmed");
    let summary = restart(&restarter, &real).expect("restarted");
    let after = run_of(&container);
    assert_ne!(after.0, before.0, "{summary}");
    assert!(summary.contains(&format!("→ {}", after.0)), "{summary}");

    outside.kill();
    inside_ns.kill();
}
