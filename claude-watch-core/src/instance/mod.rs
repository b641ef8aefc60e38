//! Instance identity: which processes are Claude Code instances, and what to call each one.
//!
//! Everything here is pure (the shell's `instance::proc` reads `/proc`; [`procfs`] parses what it
//! read). An instance is named, in order:
//! 1. by its systemd unit, parsed from `/proc/<pid>/cgroup` ([`systemd_unit`]);
//! 2. by the first configured [`MatchRule`] that matches;
//! 3. by its PID (`pid:<pid>`).
//!
//! Processes that an instance spawns (shells, MCP servers, ripgrep, even the claude binary
//! re-executing itself as a helper) are never instances themselves ([`is_outermost`]).

pub mod bg;
pub mod procfs;
pub mod table;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use bg::BgSession;

/// What a process is, as far as `/proc` tells: the inputs of [`identify`] and [`is_outermost`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id (thread group id), as the host sees it.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`); with `pid` it
    /// names a process uniquely, so a reused PID is told apart.
    pub start_time: u64,
    /// Target of `/proc/<pid>/exe`, with a trailing ` (deleted)` removed (binary replaced by an
    /// update while running).
    pub exe: PathBuf,
    /// `/proc/<pid>/cmdline`, split at NULs.
    pub cmdline: Vec<String>,
    /// Target of `/proc/<pid>/cwd`, when readable.
    pub cwd: Option<PathBuf>,
    /// Content of `/proc/<pid>/cgroup`.
    pub cgroup: String,
    /// Real user id (first field of `Uid:` in `/proc/<pid>/status`): the process's owner.
    pub uid: u32,
    /// What a process manager (pm2, supervisord) told it through its environment; nothing else
    /// of the environment is read (it holds credentials).
    pub env: SupervisorEnv,
}

/// The environment variables process managers set on the programs they run, read from
/// `/proc/<pid>/environ` by [`procfs::parse_environ`]. The process controls them: they only
/// *suggest* a supervisor, which is asked before anything is done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorEnv {
    /// pm2's `pm_id`.
    pub pm2_id: Option<u32>,
    /// pm2's `name` (only read together with `pm_id`).
    pub pm2_name: Option<String>,
    /// pm2's `PM2_HOME`: the pm2 daemon that runs it.
    pub pm2_home: Option<PathBuf>,
    /// supervisord's `SUPERVISOR_PROCESS_NAME`.
    pub supervisord_program: Option<String>,
    /// supervisord's `SUPERVISOR_GROUP_NAME`.
    pub supervisord_group: Option<String>,
    /// supervisord's `SUPERVISOR_SERVER_URL` (`unix:///...` or `http://...`).
    pub supervisord_url: Option<String>,
    /// `ANTHROPIC_BASE_URL` when it is plain `http://` (a gateway on loopback, say): scheme,
    /// host and port only. Such a process's API calls never pass through TLS, so the probes
    /// cannot see them.
    pub plain_http_base: Option<String>,
}

/// How an [`InstanceId`] was derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    /// The name is a systemd unit (`foo.service`).
    Unit,
    /// The name comes from a configured [`MatchRule`].
    Rule,
    /// The name is `pid:<pid>`: nothing better was known.
    Pid,
    /// The name is a container's (`docker:<name>`, `podman:<name>`, `k8s:<pod>/<container>`).
    Container,
    /// The name is a unit of a user's systemd manager: `user:<uid>:<unit>`.
    UserUnit,
    /// The name is a program of a process manager: `pm2:<name>`, `supervisord:<program>`.
    Program,
    /// The name is a background session of Claude Code's own daemon: `claude-bg:<short id>`.
    BgSession,
    /// The name is Claude Code's background machinery of one user (its daemon, pty hosts and
    /// unclaimed spares), observed only: `claude-bg-daemon:<uid>`.
    BgMachinery,
}

/// The stable name of one Claude Code instance (survives restarts of its process, except for
/// `pid:` names).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    /// The name: a unit name, a rule name, or `pid:<pid>`.
    pub name: String,
    /// Where the name came from.
    pub source: IdSource,
}

impl InstanceId {
    /// The id `name`, derived as `source` says.
    fn new(name: impl Into<String>, source: IdSource) -> Self {
        Self {
            name: name.into(),
            source,
        }
    }

    /// An instance named after a systemd unit.
    pub fn unit(name: impl Into<String>) -> Self {
        Self::new(name, IdSource::Unit)
    }

    /// An instance named by a configured rule.
    pub fn rule(name: impl Into<String>) -> Self {
        Self::new(name, IdSource::Rule)
    }

    /// The fallback name of a process without unit or rule.
    pub fn pid(pid: u32) -> Self {
        Self::new(format!("pid:{pid}"), IdSource::Pid)
    }

    /// An instance named after the container it runs in, e.g. `docker:reviewer`.
    pub fn container(name: impl Into<String>) -> Self {
        Self::new(name, IdSource::Container)
    }

    /// A unit of user `uid`'s systemd manager, named `user:<uid>:<unit>`.
    pub fn user_unit(uid: u32, unit: &str) -> Self {
        Self::new(format!("user:{uid}:{unit}"), IdSource::UserUnit)
    }

    /// A program of a process manager, e.g. `pm2:reviewer`.
    pub fn program(name: impl Into<String>) -> Self {
        Self::new(name, IdSource::Program)
    }

    /// A background session of Claude Code's own daemon, named `claude-bg:<short id>`.
    pub fn bg_session(short_id: &str) -> Self {
        Self::new(format!("claude-bg:{short_id}"), IdSource::BgSession)
    }

    /// The observe-only instance of user `uid`'s background machinery (see
    /// [`Placement::BgMachinery`]).
    pub fn bg_machinery(uid: u32) -> Self {
        Self::new(format!("claude-bg-daemon:{uid}"), IdSource::BgMachinery)
    }

    /// The systemd unit, when the name is one (of the system's or a user's manager).
    pub fn unit_name(&self) -> Option<&str> {
        match self.source {
            IdSource::Unit => Some(self.name.as_str()),
            IdSource::UserUnit => self.name.splitn(3, ':').nth(2),
            _ => None,
        }
    }

    /// What the name alone says about where the instance lives: its unit for unit names
    /// (under the system's manager, or `user:<uid>:`'s), the background machinery for
    /// `claude-bg-daemon:<uid>`, nothing otherwise.
    pub fn placement(&self) -> Placement {
        if self.source == IdSource::BgMachinery {
            return self
                .name
                .strip_prefix("claude-bg-daemon:")
                .and_then(|uid| uid.parse().ok())
                .map_or(Placement::Unsupervised, |uid| Placement::BgMachinery {
                    uid,
                });
        }
        let unit = self.unit_name().map(str::to_owned);
        let manager = match self.source {
            IdSource::UserUnit => self
                .name
                .split(':')
                .nth(1)
                .and_then(|u| u.parse().ok())
                .map(|uid| Manager::User { uid }),
            _ => Some(Manager::System),
        };
        match (unit, manager) {
            (Some(name), Some(manager)) => Placement::Unit(SystemdUnit {
                cgroup: String::new(),
                name,
                manager,
            }),
            _ => Placement::Unsupervised,
        }
    }

    /// The id of a name written by an earlier run (journal, state file): the source follows
    /// from the name's shape, and `unit` (what the record saved as the unit) tells system
    /// units from rules.
    pub fn from_saved(name: &str, unit: Option<&str>) -> Self {
        let source = if name.starts_with("pid:") {
            IdSource::Pid
        } else if ["docker:", "podman:", "k8s:"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            IdSource::Container
        } else if name.starts_with("user:") && name.splitn(3, ':').count() == 3 {
            IdSource::UserUnit
        } else if name.starts_with("pm2:") || name.starts_with("supervisord:") {
            IdSource::Program
        } else if name.starts_with("claude-bg-daemon:") {
            IdSource::BgMachinery
        } else if name.starts_with("claude-bg:") {
            IdSource::BgSession
        } else if unit == Some(name) {
            IdSource::Unit
        } else {
            IdSource::Rule
        };
        Self::new(name, source)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Which systemd manager owns a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Manager {
    /// The system manager (PID 1 of the host, or of the container / nested cgroup namespace
    /// whose path prefixes the unit).
    System,
    /// The per-user manager `user@<uid>.service`.
    User {
        /// The user id of that manager.
        uid: u32,
    },
}

/// A systemd unit a process lives in, as read from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdUnit {
    /// Unit name, e.g. `looper.service` or `agent@7.service`.
    pub name: String,
    /// The manager that owns it.
    pub manager: Manager,
    /// The cgroup path up to and including the unit, e.g. `/testbed/system.slice/looper.service`;
    /// a prefix before the `*.slice` chain means a nested manager (container, test bed).
    pub cgroup: String,
}

/// The systemd unit of a process from the content of `/proc/<pid>/cgroup`.
///
/// Uses the unified (`0::`) line, else the cgroup-v1 `name=systemd` line. The innermost
/// `*.service` segment wins, so a service inside a container (`docker-<id>.scope/system.slice/
/// x.service`) or inside a user manager (`user@1000.service/app.slice/x.service`) is found.
/// Returns `None` when there is no service, when a `*.scope` lies below the innermost service
/// (a transient scope: nothing to restart, and restarting the enclosing service, e.g. a user
/// manager, would hit far more than the instance), and for `user@<uid>.service` itself.
/// Sub-cgroups below a service (`Delegate=yes`) still belong to it.
pub fn systemd_unit(cgroup: &str) -> Option<SystemdUnit> {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            cgroup.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
                (ctrl == "name=systemd").then_some(path)
            })
        })?
        .trim();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let idx = segments.iter().rposition(|s| s.ends_with(".service"))?;
    if segments[idx + 1..].iter().any(|s| s.ends_with(".scope")) {
        return None;
    }
    let name = segments[idx];
    if user_manager_uid(name).is_some() {
        return None;
    }
    let manager = segments[..idx]
        .iter()
        .rev()
        .find_map(|s| user_manager_uid(s))
        .map_or(Manager::System, |uid| Manager::User { uid });
    Some(SystemdUnit {
        name: name.to_owned(),
        manager,
        cgroup: format!("/{}", segments[..=idx].join("/")),
    })
}

/// The container engine a process runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Docker (`/docker/<id>` with the cgroupfs driver, `docker-<id>.scope` with systemd's).
    Docker,
    /// Podman (`libpod-<id>.scope`, `/libpod_parent/libpod-<id>`).
    Podman,
}

impl Engine {
    /// The prefix of instance names in this engine (`docker`, `podman`).
    pub fn label(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// A container a process runs in, as read from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Container {
    /// Which engine.
    pub engine: Engine,
    /// The full container id (64 hex digits).
    pub id: String,
}

impl Container {
    /// The first 12 digits of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

/// Whether a cgroup path's `segments` before `index` pass through a user's own manager
/// (`user@<uid>.service`): a subtree delegated to that user, where they may create cgroups of
/// any name (`docker-<a real id>.scope` included).
fn in_user_subtree(segments: &[&str], index: usize) -> bool {
    segments[..index]
        .iter()
        .any(|s| user_manager_uid(s).is_some())
}

/// The container of a process from the content of `/proc/<pid>/cgroup`: the innermost path
/// segment naming a Docker or Podman container id (`/docker/<id>`, `docker-<id>.scope`,
/// `libpod-<id>.scope`, `libpod-<id>`). Only 64-hex-digit ids count, so a process cannot name
/// a container by choosing a cgroup called `docker-x`; and none inside a user's own manager
/// (`user@<uid>.service/...`), whose cgroups that user names, so a process there cannot join a
/// container's instance by naming its real id (a rootless container is watched per process).
pub fn container(cgroup: &str) -> Option<Container> {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| cgroup.lines().find_map(|l| l.splitn(3, ':').nth(2)))?
        .trim();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    (0..segments.len())
        .rev()
        .find_map(|i| container_segment(&segments, i).map(|found| (i, found)))
        .filter(|&(i, _)| !in_user_subtree(&segments, i))
        .map(|(_, (engine, id))| Container {
            engine,
            id: id.to_ascii_lowercase(),
        })
}

/// The container segment `i` of a cgroup path's `segments` names, if any: `docker-<id>.scope`
/// and `libpod-<id>.scope` (systemd's drivers), `libpod-<id>` (Podman's cgroupfs), `<id>` right
/// below `docker` (Docker's cgroupfs); only 64-hex-digit ids count.
fn container_segment<'a>(segments: &[&'a str], i: usize) -> Option<(Engine, &'a str)> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let seg = segments[i];
    let scoped = |prefix: &str| {
        seg.strip_prefix(prefix)
            .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
            .filter(|id| is_id(id))
    };
    if let Some(id) = scoped("docker-") {
        return Some((Engine::Docker, id));
    }
    if let Some(id) = scoped("libpod-") {
        return Some((Engine::Podman, id));
    }
    (is_id(seg) && i > 0 && segments[i - 1] == "docker").then_some((Engine::Docker, seg))
}

/// Why the engine does not vouch for a process that claims a container by its cgroup path
/// ([`container_member`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotVouched {
    /// The cgroup of the process the engine calls the container's main one (`State.Pid`)
    /// names the container in no hierarchy: a pid the engine has not seen end yet, or a setup
    /// this check does not know; nothing to compare with, so nothing is vouched for.
    #[error("the container's main process is in no cgroup of the container")]
    MainElsewhere,
    /// A cgroup file lists a hierarchy twice: a cgroup name holding a line break (the kernel
    /// prints names unescaped), which would make the lines after it say anything.
    #[error("{hierarchy}: listed twice, a cgroup name with a line break")]
    Repeated {
        /// The hierarchy: its controllers, or `unified`.
        hierarchy: String,
    },
    /// The process is in no cgroup of a hierarchy the container's main process is in.
    #[error("{hierarchy}: not in this hierarchy")]
    NoHierarchy {
        /// The hierarchy: its controllers, or `unified`.
        hierarchy: String,
    },
    /// The process's cgroup is outside the container's in one hierarchy.
    #[error("{hierarchy}: {path} is not within the container's {container}")]
    Outside {
        /// The hierarchy: its controllers, or `unified`.
        hierarchy: String,
        /// The process's cgroup there.
        path: String,
        /// The container's cgroup there (or its main process's, where the main process's path
        /// does not name the container).
        container: String,
    },
}

/// Whether a process with cgroup file `candidate`, whose path names `container`, is in that
/// container by the engine's word: its cgroup must be at or below the container's cgroup *as
/// the cgroup file `main` of the container's main process (`State.Pid`) shows it*, in every
/// hierarchy `main` is in (`<hierarchy id>:<controllers>:<path>` lines).
///
/// The container's cgroup is `main`'s path cut after the segment naming the container
/// (`/system.slice/docker-<id>.scope` with Docker's systemd driver, `/docker/<id>` with its
/// cgroupfs driver, `/machine.slice/libpod-<id>.scope` or `/libpod_parent/libpod-<id>` with
/// Podman's), not `main`'s own cgroup: a container whose init is systemd keeps it in
/// `<container>/init.scope` and its services in `<container>/system.slice/x.service`, and Podman
/// may keep the container's processes in `<container>/container`; all of them are the
/// container's. Anything at or below the container's cgroup was put there by the engine or by
/// root: moving a process into a cgroup takes write access to the `cgroup.procs` of the
/// nearest cgroup above both the source and the destination, which no user outside the
/// container has (the container's cgroup and its parent belong to root). A same-named cgroup
/// elsewhere (`/system.slice/evil.service/docker-<id>.scope` under a unit delegated to a user)
/// is outside it. Where `main`'s path does not name the container (a cgroup v1 controller the
/// engine left at `/`), the candidate must be at or below `main`'s path there.
///
/// # Errors
/// [`NotVouched`]: the first hierarchy where the candidate is outside, or `main` naming the
/// container nowhere.
pub fn container_member(
    container: &Container,
    candidate: &str,
    main: &str,
) -> Result<(), NotVouched> {
    fn split(line: &str) -> Option<(&str, &str, &str)> {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        Some((id, controllers, path.trim()))
    }
    let name = |controllers: &str| {
        if controllers.is_empty() {
            "unified".to_owned()
        } else {
            controllers.to_owned()
        }
    };
    for file in [candidate, main] {
        let mut seen = std::collections::HashSet::new();
        for (id, controllers, _) in file.lines().filter_map(split) {
            if !seen.insert((id, controllers)) {
                return Err(NotVouched::Repeated {
                    hierarchy: name(controllers),
                });
            }
        }
    }
    // Per hierarchy of `main`: the cgroup the candidate must be in, and whether it is the
    // container's (cut at the segment naming it) or only the main process's.
    let mains: Vec<(&str, &str, String, bool)> = main
        .lines()
        .filter_map(split)
        .map(|(id, controllers, path)| {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let cut = (0..segments.len()).rev().find(|&i| {
                container_segment(&segments, i)
                    .is_some_and(|(_, named)| named.eq_ignore_ascii_case(&container.id))
            });
            match cut {
                Some(i) => (
                    id,
                    controllers,
                    format!("/{}", segments[..=i].join("/")),
                    true,
                ),
                None => (id, controllers, path.to_owned(), false),
            }
        })
        .collect();
    if !mains.iter().any(|(.., named)| *named) {
        return Err(NotVouched::MainElsewhere);
    }
    let candidates: Vec<_> = candidate.lines().filter_map(split).collect();
    for (id, controllers, root, _) in mains {
        let hierarchy = name(controllers);
        let Some(&(.., path)) = candidates
            .iter()
            .find(|(i, c, _)| *i == id && *c == controllers)
        else {
            return Err(NotVouched::NoHierarchy { hierarchy });
        };
        let within = root == "/"
            || path == root
            || path
                .strip_prefix(root.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if !within {
            return Err(NotVouched::Outside {
                hierarchy,
                path: path.to_owned(),
                container: root,
            });
        }
    }
    Ok(())
}

/// A Kubernetes pod container a process runs in, as read from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's uid (with dashes, as `kubectl get pod -o jsonpath={.metadata.uid}` shows it).
    pub uid: String,
    /// The container id (64 hex digits), which changes with every restart of the container.
    pub container_id: String,
    /// The runtime, from the scope's prefix (`cri-containerd`, `crio`, `docker`), when known.
    pub runtime: Option<String>,
}

/// The pod container of a process from the content of `/proc/<pid>/cgroup`, for both cgroup
/// drivers: systemd's (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
/// underscores>.slice/cri-containerd-<id>.scope`, `crio-<id>.scope`) and cgroupfs's
/// (`/kubepods/burstable/pod<uid>/<id>`). The pod segment must sit under a `kubepods` root and
/// the container segment right below it, with a 64-hex-digit id.
pub fn pod(cgroup: &str) -> Option<Pod> {
    // Any line: on a hybrid host the unified line is `0::/` and a v1 controller has the path.
    cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(|path| pod_of_path(path.trim()))
}

fn pod_of_path(path: &str) -> Option<Pod> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let root = segments
        .iter()
        .position(|s| *s == "kubepods" || *s == "kubepods.slice")?;
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (i, uid) = segments
        .iter()
        .enumerate()
        .skip(root + 1)
        .find_map(|(i, s)| {
            let uid = match s.strip_suffix(".slice") {
                // kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice
                Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
                None => s.strip_prefix("pod")?.to_owned(),
            };
            bg::is_uuid(&uid).then(|| (i, uid.to_ascii_lowercase()))
        })?;
    if in_user_subtree(&segments, i) {
        return None;
    }
    let leaf = segments.get(i + 1)?;
    let (runtime, id) = match leaf.strip_suffix(".scope") {
        Some(scope) => {
            let (runtime, id) = scope.rsplit_once('-')?;
            (Some(runtime.to_owned()), id)
        }
        None => (None, *leaf),
    };
    is_id(id).then(|| Pod {
        uid,
        container_id: id.to_ascii_lowercase(),
        runtime,
    })
}

/// Where a process lives, as far as its cgroup and the process-manager variables of its
/// environment tell: the supervisor that could restart it, before anyone asks that supervisor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Placement {
    /// A systemd unit (of the system's manager, a user's, or a nested one).
    Unit(SystemdUnit),
    /// A Docker or Podman container.
    Container(Container),
    /// A Kubernetes pod's container.
    Pod(Pod),
    /// A pm2 app.
    Pm2 {
        /// `pm_id`.
        id: u32,
        /// The app's name.
        name: String,
        /// The pm2 daemon's home (`PM2_HOME`), when given.
        home: Option<PathBuf>,
    },
    /// A supervisord program.
    Supervisord {
        /// The program's name.
        program: String,
        /// Its group, when given (`group:program` is what supervisorctl takes).
        group: Option<String>,
        /// The server's URL, when given.
        url: Option<String>,
    },
    /// A background session (worker) of Claude Code's own daemon (`claude --bg`), which
    /// `claude respawn <short id>` restarts. Found by discovery from the worker's session file,
    /// never from the cgroup or the environment alone.
    ClaudeBg(BgSession),
    /// Claude Code's background machinery of user `uid`: its daemon (`claude daemon run`), a
    /// pty host, or a spare no session has claimed. Never restarted (restarting the daemon
    /// would end every session it holds); when one of them makes API requests itself, they are
    /// attributed to the observe-only instance `claude-bg-daemon:<uid>`.
    BgMachinery {
        /// The owner (real uid).
        uid: u32,
    },
    /// None of the above.
    #[default]
    Unsupervised,
}

/// Where `p` lives: a pod, else a container, else a pm2 app, else a supervisord program, else
/// a systemd unit. The nearest supervisor wins: pm2 and supervisord often run inside a unit,
/// and restarting that unit would restart every program they run.
pub fn placement(p: &ProcessInfo) -> Placement {
    if let Some(pod) = pod(&p.cgroup) {
        return Placement::Pod(pod);
    }
    if let Some(c) = container(&p.cgroup) {
        return Placement::Container(c);
    }
    if let (Some(id), Some(name)) = (p.env.pm2_id, &p.env.pm2_name) {
        return Placement::Pm2 {
            id,
            name: name.clone(),
            home: p.env.pm2_home.clone(),
        };
    }
    if let Some(program) = &p.env.supervisord_program {
        return Placement::Supervisord {
            program: program.clone(),
            group: p.env.supervisord_group.clone(),
            url: p.env.supervisord_url.clone(),
        };
    }
    systemd_unit(&p.cgroup).map_or(Placement::Unsupervised, Placement::Unit)
}

/// `Some(uid)` for `user@<uid>.service`.
fn user_manager_uid(segment: &str) -> Option<u32> {
    segment
        .strip_prefix("user@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

/// A configured rule naming the processes it matches. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    /// Instance name given to matching processes.
    pub name: String,
    /// Glob over the executable path (`*` any run of characters including `/`, `?` one).
    #[serde(default)]
    pub exe: Option<String>,
    /// Substring one of the arguments (after argv\[0\]) must contain.
    #[serde(default)]
    pub arg: Option<String>,
    /// Substring of the cgroup file content.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Working directory: the process's cwd must be this directory or below it.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The owner's user id: only processes of this user match.
    #[serde(default)]
    pub uid: Option<u32>,
}

impl MatchRule {
    /// Whether the process satisfies every condition of the rule.
    pub fn matches(&self, p: &ProcessInfo) -> bool {
        self.exe
            .as_deref()
            .is_none_or(|g| glob_match(g, &p.exe.to_string_lossy()))
            && self
                .arg
                .as_deref()
                .is_none_or(|a| p.cmdline.iter().skip(1).any(|x| x.contains(a)))
            && self.cgroup.as_deref().is_none_or(|c| p.cgroup.contains(c))
            && self
                .cwd
                .as_deref()
                .is_none_or(|dir| p.cwd.as_deref().is_some_and(|cwd| cwd.starts_with(dir)))
            && self.uid.is_none_or(|uid| p.uid == uid)
    }
}

/// The instance a (claude) process belongs to, after its [`placement`]: `k8s:<pod uid>`,
/// `pm2:<name>`, `supervisord:<program>`, its systemd unit (`user:<uid>:<unit>` under a user's
/// manager), else the first matching rule, else `pid:<pid>`. Containers are named by the
/// caller, which asks the engine for their names.
pub fn identify(p: &ProcessInfo, rules: &[MatchRule]) -> InstanceId {
    match placement(p) {
        Placement::Pod(pod) => return InstanceId::container(format!("k8s:{}", pod.uid)),
        Placement::Pm2 { name, .. } => return InstanceId::program(format!("pm2:{name}")),
        Placement::Supervisord { program, .. } => {
            return InstanceId::program(format!("supervisord:{program}"));
        }
        Placement::Unit(SystemdUnit {
            name,
            manager: Manager::User { uid },
            ..
        }) => return InstanceId::user_unit(uid, &name),
        Placement::Unit(unit) => return InstanceId::unit(unit.name),
        Placement::ClaudeBg(bg) => return InstanceId::bg_session(&bg.short_id),
        Placement::BgMachinery { uid } => return InstanceId::bg_machinery(uid),
        Placement::Container(_) | Placement::Unsupervised => {}
    }
    rules
        .iter()
        .find(|r| r.matches(p))
        .map_or_else(|| InstanceId::pid(p.pid), |r| InstanceId::rule(&r.name))
}

/// Whether a process of user `uid` may join `instance`, whose live members belong to
/// `member_uids`. Names a process chooses for itself (rules over its exe, arguments, cwd or
/// cgroup; pm2's and supervisord's environment variables) are not proof of belonging: a
/// process of another user than the instance's members would borrow the instance (latch it with
/// fake 401s, then have its restart fall on the real members), so it is refused and keeps a
/// name of its own. Names the kernel vouches for (a unit's or container's cgroup, `pid:`) and
/// rules that name the uid admit every process they match.
pub fn may_join(
    instance: &InstanceId,
    uid: u32,
    member_uids: impl IntoIterator<Item = u32>,
    rules: &[MatchRule],
) -> bool {
    !self_named(instance, rules) || member_uids.into_iter().all(|m| m == uid)
}

/// Whether `instance` is named by something its processes choose (a rule without a uid, a
/// pm2 or supervisord program, a background session), rather than by the kernel (a unit's or
/// container's cgroup, a pid, the uid of the background machinery) or a rule naming the uid.
#[must_use]
pub fn self_named(instance: &InstanceId, rules: &[MatchRule]) -> bool {
    match instance.source {
        IdSource::Rule => !rules
            .iter()
            .any(|r| r.name == instance.name && r.uid.is_some()),
        IdSource::Program | IdSource::BgSession => true,
        // The machinery's name carries the uid the kernel reports for the process.
        IdSource::Unit
        | IdSource::UserUnit
        | IdSource::Pid
        | IdSource::Container
        | IdSource::BgMachinery => false,
    }
}

/// How a process runs Claude Code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaudeKind {
    /// The native (Bun single-file) executable.
    Native,
    /// `cli.js` (or the npm `claude` shim) run by node or bun.
    Script,
}

/// Whether a process runs Claude Code, from its executable path and command line alone.
///
/// Native: an executable named `claude` anywhere (npm's `@anthropic-ai/claude-code-linux-x64/
/// claude`, `~/.local/bin/claude`, `~/.claude/local/claude`), or a file in a `versions`
/// directory under a `claude` directory (the native installer's `~/.local/share/claude/versions/
/// <version>`). Script: a `node`/`bun` executable whose script argument is
/// `.../@anthropic-ai/claude-code/cli.js` (or `cli.mjs`) or the npm shim named `claude`.
pub fn classify(exe: &Path, cmdline: &[String]) -> Option<ClaudeKind> {
    let file = exe.file_name()?.to_string_lossy();
    if file == "claude" {
        return Some(ClaudeKind::Native);
    }
    let parent = exe.parent();
    if parent
        .and_then(Path::file_name)
        .is_some_and(|p| p == "versions")
        && parent
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .is_some_and(|g| {
                g.to_string_lossy()
                    .trim_start_matches('.')
                    .starts_with("claude")
            })
    {
        return Some(ClaudeKind::Native);
    }
    let interpreter = file.starts_with("node") || file == "bun";
    if interpreter {
        let script = cmdline.iter().skip(1).find(|a| !a.starts_with('-'))?;
        let is_cli = script.ends_with("claude-code/cli.js")
            || script.ends_with("claude-code/cli.mjs")
            || Path::new(script).file_name().is_some_and(|f| f == "claude");
        return is_cli.then_some(ClaudeKind::Script);
    }
    None
}

/// Whether a claude process is an instance of its own: none of its ancestors runs Claude Code
/// (`is_claude` tells, by name or content). A claude process started by another one (a helper
/// the binary spawns from itself, or `claude -p` run from an agent's shell) belongs to the
/// outer instance.
///
/// `ancestors` is the parent chain, nearest first (see the shell's `instance::proc::read_ancestry`).
pub fn is_outermost(
    ancestors: &[ProcessInfo],
    is_claude: impl FnMut(&ProcessInfo) -> bool,
) -> bool {
    !ancestors.iter().any(is_claude)
}

/// Glob match with `*` (any run, `/` included) and `?` (one character); every other character
/// stands for itself (`glob`'s own syntax escaped, a run of `*` one `*`).
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut escaped = String::with_capacity(pattern.len());
    for (i, c) in pattern.char_indices() {
        match c {
            '*' if pattern[..i].ends_with('*') => {}
            '*' | '?' => escaped.push(c),
            c => escaped.push_str(&glob::Pattern::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    glob::Pattern::new(&escaped).is_ok_and(|p| p.matches(text))
}

/// A file's identity: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The kernel's (and glibc's) encoding of a device number.
        let major = ((self.dev >> 8) & 0xfff) | ((self.dev >> 32) & !0xfff);
        let minor = (self.dev & 0xff) | ((self.dev >> 12) & !0xff);
        write!(f, "{major}:{minor} inode {}", self.ino)
    }
}

/// A claude process that is an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// What `/proc` said about it.
    pub info: ProcessInfo,
    /// Native binary or script.
    pub kind: ClaudeKind,
    /// The instance it belongs to.
    pub instance: InstanceId,
    /// The release, from the file's banner when it could be read.
    pub release: Option<String>,
    /// Where it lives: the supervisor that could restart it ([`placement`]).
    pub placement: Placement,
    /// The executable discovery read (device and inode of `/proc/<pid>/exe` when opened for
    /// the verdict): a native binary is attached only if its executable is still that file.
    pub exe_id: Option<FileId>,
}

impl Found {
    /// The version: from the file's banner, else from the path (npm and native-installer
    /// layouts), e.g. `2.1.197`.
    pub fn version(&self) -> Option<String> {
        self.release.clone().or_else(|| {
            version_from_path(&self.info.exe).or_else(|| {
                self.info
                    .cmdline
                    .iter()
                    .find_map(|a| version_from_path(Path::new(a)))
            })
        })
    }
}

/// A `x.y.z` path component (or file name) of `path`, e.g. npm's
/// `.../claude-code-2.1.197/...` is not matched but `versions/2.1.197` is.
pub fn version_from_path(path: &Path) -> Option<String> {
    path.components().rev().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        let mut parts = s.split('.');
        let ok = parts.clone().count() == 3
            && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| s.to_owned())
    })
}

#[cfg(test)]
mod tests;
