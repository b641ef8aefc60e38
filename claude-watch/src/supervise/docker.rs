//! Docker (and Podman's Docker-compatible API): restart the container an instance runs in
//! through the engine's socket, after checking that the engine really runs the latched process.
//!
//! The container id comes from the process's cgroup, which a local user can forge (a cgroup named
//! `docker-<a real id>.scope` under their own delegated subtree). So right before acting, the
//! engine is asked about that container ([`super::super::discover::engine::inspect`]): it must
//! run, and the target must share the PID namespace of the container's main process and live in
//! its cgroup (at or below it, in every hierarchy). Only then is `POST /containers/<id>/restart`
//! sent, and the new main process (`State.Pid`) awaited and handed back for inspection.
//!
//! The exchanges are blocking (short, bounded) and run on a blocking thread.

use std::time::{Duration, Instant};

use tracing::{info, instrument};

use super::{RestartFailure, RestartOutcome, Restarter, SuperviseError, Target, verify_start_time};
use crate::discover::engine::{self, EngineError, Inspect};
use crate::instance::proc;
use crate::instance::{Container, Placement};
pub use claude_watch_core::supervise::DockerRestarter;

/// How often the engine is asked whether the container runs again.
const POLL: Duration = Duration::from_millis(100);

impl Restarter for DockerRestarter {
    #[instrument(skip_all, fields(instance = %target.instance, pid = target.pid))]
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        let this = self.clone();
        let target = target.clone();
        tokio::task::spawn_blocking(move || restart_blocking(&this, &target))
            .await
            .map_err(|e| SuperviseError::RestartFailed {
                unit: "container".into(),
                source: RestartFailure::Task(e),
            })?
    }
}

/// `name (0123abcd4567)`, or the short id alone when the engine gave no valid name.
fn describe(container: &Container, inspect: &Inspect) -> String {
    match &inspect.name {
        Some(name) => format!("{name} ({})", container.short_id()),
        None => container.short_id().to_owned(),
    }
}

/// Why a process is not within the cgroups of a container's main process ([`cgroup_within`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotWithin {
    /// The main process is in no cgroup of its own (only root paths): it confines nothing.
    #[error("the container's main process is in no cgroup of its own")]
    MainAtRoot,
    /// The process is in no cgroup of a hierarchy the main process is in.
    #[error("{hierarchy}: not in this hierarchy")]
    NoHierarchy {
        /// The hierarchy: its controllers, or `unified`.
        hierarchy: String,
    },
    /// The process's cgroup is outside the main process's in one hierarchy.
    #[error("{hierarchy}: {path} is not within {main}")]
    Outside {
        /// The hierarchy: its controllers, or `unified`.
        hierarchy: String,
        /// The process's cgroup there.
        path: String,
        /// The main process's cgroup there.
        main: String,
    },
}

/// Whether a process with cgroup file `target` lives at or below the cgroups of a process with
/// cgroup file `main`, in every hierarchy `main` is in (cgroup v1 controllers, named hierarchies
/// and the unified one alike). Each line is `<hierarchy id>:<controllers>:<path>`. A `main`
/// in no cgroup of its own (only root paths) confines nothing and is refused.
///
/// # Errors
/// [`NotWithin`]: the first hierarchy where it does not.
pub fn cgroup_within(target: &str, main: &str) -> Result<(), NotWithin> {
    let split = |line: &str| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        Some((format!("{id}:{controllers}"), path.trim().to_owned()))
    };
    let targets: Vec<(String, String)> = target.lines().filter_map(split).collect();
    let mains: Vec<(String, String)> = main.lines().filter_map(split).collect();
    if mains.iter().all(|(_, path)| path == "/") {
        return Err(NotWithin::MainAtRoot);
    }
    for (key, main_path) in mains {
        let hierarchy = match key.split_once(':') {
            Some((_, "")) | None => "unified".to_owned(),
            Some((_, controllers)) => controllers.to_owned(),
        };
        let Some((_, path)) = targets.iter().find(|(k, _)| *k == key) else {
            return Err(NotWithin::NoHierarchy { hierarchy });
        };
        let within = main_path == "/"
            || *path == main_path
            || path
                .strip_prefix(main_path.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if !within {
            return Err(NotWithin::Outside {
                hierarchy,
                path: path.clone(),
                main: main_path,
            });
        }
    }
    Ok(())
}

/// What asking the container engine takes (the restarter's values are the core's).
#[allow(
    async_fn_in_trait,
    reason = "used on the concrete type only, whose futures are Send"
)]
pub trait DockerIo {
    /// The container `target` runs in, confirmed by the engine: its description now.
    ///
    /// # Errors
    /// [`SuperviseError::NotInContainer`] when the engine does not confirm it, and the errors of
    /// asking.
    fn confirm(&self, target: &Target) -> Result<(Container, Inspect), SuperviseError>;
}

impl DockerIo for DockerRestarter {
    fn confirm(&self, target: &Target) -> Result<(Container, Inspect), SuperviseError> {
        let Placement::Container(container) = &target.placement else {
            return Err(SuperviseError::NotInContainer {
                container: "(none)".into(),
                pid: target.pid,
                found: "its cgroup names no container".into(),
            });
        };
        verify_start_time(target.pid, target.start_time)?;
        let inspect = engine::inspect(&self.socket, container, engine::TIMEOUT)
            .map_err(|e| engine_error(self, e))?;
        let label = describe(container, &inspect);
        let refuse = |found: String| SuperviseError::NotInContainer {
            container: label.clone(),
            pid: target.pid,
            found,
        };
        if !inspect.running || inspect.pid == 0 {
            return Err(refuse(
                "the engine says the container is not running".into(),
            ));
        }
        let main = inspect.pid;
        let (target_ns, main_ns) = (
            proc::pid_namespace_id(target.pid)?,
            proc::pid_namespace_id(main)?,
        );
        if target_ns != main_ns {
            return Err(refuse(format!(
                "pid {} is in pid namespace {}, the container's main process {main} in {}",
                target.pid, target_ns.1, main_ns.1
            )));
        }
        let (target_cg, main_cg) = (proc::cgroup(target.pid)?, proc::cgroup(main)?);
        if let Err(why) = cgroup_within(&target_cg, &main_cg) {
            return Err(refuse(format!(
                "pid {} is outside the cgroup of the container's main process {main}: {why}",
                target.pid
            )));
        }
        // The checks above read the target by pid: it must still be the same process.
        verify_start_time(target.pid, target.start_time)?;
        Ok((container.clone(), inspect))
    }
}

fn engine_error(r: &DockerRestarter, source: EngineError) -> SuperviseError {
    SuperviseError::Engine {
        socket: r.socket.clone(),
        source: Box::new(source),
    }
}

fn restart_blocking(
    r: &DockerRestarter,
    target: &Target,
) -> Result<RestartOutcome, SuperviseError> {
    let deadline = Instant::now() + r.timeout;
    let (container, before) = r.confirm(target)?;
    let label = describe(&container, &before);
    let path = match r.grace {
        Some(grace) => format!("/containers/{}/restart?t={}", container.id, grace.as_secs()),
        None => format!("/containers/{}/restart", container.id),
    };
    info!(container = %label, socket = %r.socket.display(), "restarting the container");
    let answer =
        engine::request(&r.socket, "POST", &path, r.timeout).map_err(|e| engine_error(r, e))?;
    if !(200..300).contains(&answer.status) {
        return Err(SuperviseError::RestartFailed {
            unit: label,
            source: RestartFailure::Engine {
                status: answer.status,
                message: answer.message(),
            },
        });
    }
    let after = loop {
        let now = engine::inspect(&r.socket, &container, engine::TIMEOUT)
            .map_err(|e| engine_error(r, e))?;
        if now.running
            && now.pid != 0
            && (now.pid != before.pid || now.started_at != before.started_at)
        {
            break now;
        }
        if Instant::now() + POLL > deadline {
            return Err(SuperviseError::Timeout {
                what: format!("container {label} to run again"),
                timeout: r.timeout,
            });
        }
        std::thread::sleep(POLL);
    };
    Ok(RestartOutcome::acted(
        Some(label.clone()),
        Some(after.pid),
        format!(
            "restarted {} container {label} through {} (main pid {} → {})",
            container.engine.label(),
            r.socket.display(),
            before.pid,
            after.pid
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c0e9d2b7a4c8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

    #[test]
    fn the_container_and_below_it_are_within() {
        let main = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(cgroup_within(&main, &main), Ok(()));
        let below = format!("0::/system.slice/docker-{ID}.scope/app\n");
        assert_eq!(cgroup_within(&below, &main), Ok(()));
        let v1 = format!(
            "12:pids:/docker/{ID}\n4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/docker/{ID}\n"
        );
        assert_eq!(cgroup_within(&v1, &v1), Ok(()));
    }

    #[test]
    fn a_forged_scope_is_not_within() {
        let main = format!("0::/system.slice/docker-{ID}.scope\n");
        let forged = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope\n"
        );
        let err = cgroup_within(&forged, &main).unwrap_err();
        assert!(
            matches!(&err, NotWithin::Outside { hierarchy, path, .. }
                if hierarchy == "unified" && path.starts_with("/user.slice/")),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("unified: /user.slice/"),
            "{err}"
        );
        // A sibling whose name only starts like the container's.
        let sibling = format!("0::/system.slice/docker-{ID}.scope-x\n");
        assert!(cgroup_within(&sibling, &main).is_err());
        // Hybrid: the unified line forged, the v1 controllers elsewhere.
        let main = format!("4:memory:/docker/{ID}\n0::/docker/{ID}\n");
        let forged = format!("4:memory:/\n0::/forge/docker-{ID}.scope\n");
        let err = cgroup_within(&forged, &main).unwrap_err();
        assert_eq!(
            err,
            NotWithin::Outside {
                hierarchy: "memory".into(),
                path: "/".into(),
                main: format!("/docker/{ID}"),
            }
        );
        assert_eq!(
            err.to_string(),
            format!("memory: / is not within /docker/{ID}")
        );
        // A hierarchy the target is not in at all, or an empty main.
        assert_eq!(
            cgroup_within("0::/x\n", &format!("4:memory:/docker/{ID}\n")),
            Err(NotWithin::NoHierarchy {
                hierarchy: "memory".into()
            })
        );
        assert_eq!(cgroup_within("0::/x\n", ""), Err(NotWithin::MainAtRoot));
        assert_eq!(
            cgroup_within("0::/x\n", "0::/\n"),
            Err(NotWithin::MainAtRoot)
        );
        // A colon in a path is part of the path.
        let odd = "0::/docker/a:b\n";
        assert_eq!(cgroup_within(odd, odd), Ok(()));
    }
}
