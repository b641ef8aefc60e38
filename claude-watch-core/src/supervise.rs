//! Which supervisor restarts an instance, as plain values: the restart target, each adapter's
//! settings (systemd's bus and mode, the engine's socket, a command's argv, ...), and the
//! choice among them for an instance ([`Supervisor::resolve`], pure: from the configuration,
//! where the process lives, and where systemd and the engine were found). The shell's
//! `supervise` runs them (the one I/O seam of recovery, its `Restarter`); a restart's effect
//! carries these values and nothing that acts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{SupervisorSpec, SystemdModeSpec};
use crate::instance::{Manager, Placement, SystemdUnit};

/// The instance to restart, as the daemon knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The instance's name in the configuration (what `{instance}` stands for).
    pub instance: String,
    /// The supervisor's unit or program name, when known (what `{unit}` stands for).
    pub unit: Option<String>,
    /// Host PID of the instance's process (what `{pid}` stands for).
    pub pid: u32,
    /// Start time of that process (field 22 of `/proc/<pid>/stat`, clock ticks since boot), so a
    /// reused PID is never mistaken for the instance. `None` skips the check.
    pub start_time: Option<u64>,
    /// The process's owner (real uid), when known: adapters act as this user where they can,
    /// and check that the supervisor they ask belongs to it.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Where the process lives, as discovery read it (to be confirmed by the supervisor right
    /// before acting).
    #[serde(default)]
    pub placement: Placement,
}

impl Target {
    /// The same target with its supervisor unit set.
    #[must_use]
    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }
}

/// What a restart did, for the journal and for confirming the new process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartOutcome {
    /// `false` when nothing was done (observe-only, dry run).
    pub acted: bool,
    /// The supervisor unit that was restarted, when there is one.
    pub unit: Option<String>,
    /// Host PID of the new main process, when the supervisor tells it.
    pub new_pid: Option<u32>,
    /// systemd's `InvocationID` of the new run of the unit (32 hex digits).
    pub invocation_id: Option<String>,
    /// One line saying what was done (or would have been done), without secrets.
    pub summary: String,
}

impl RestartOutcome {
    /// A restart done by the supervisor: `unit` restarted (when there is one), its new main
    /// process `new_pid` (when told), `summary` saying what was done.
    #[must_use]
    pub fn acted(unit: Option<String>, new_pid: Option<u32>, summary: String) -> Self {
        Self {
            acted: true,
            unit,
            new_pid,
            invocation_id: None,
            summary,
        }
    }
}

/// How the unit is made to start a new process (`mode` of a systemd supervisor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemdMode {
    /// `RestartUnit(name, "replace")` and wait for the job.
    #[default]
    Restart,
    /// `KillUnit(name, "main", SIGTERM)` and wait for the unit's own `Restart=` to bring a new
    /// main process (for units whose restart logic must run, e.g. `ExecStopPost`).
    Kill,
}

/// Restarts instances that live in systemd units.
#[derive(Clone, Debug)]
pub struct SystemdRestarter {
    /// D-Bus address of systemd's bus; `None` is the system bus.
    pub address: Option<String>,
    /// Talk to this user's manager instead (on the user's bus, as the user); `address` is then
    /// unused.
    pub user: Option<u32>,
    /// Restart or kill.
    pub mode: SystemdMode,
    /// How long to wait for the job (or the new main process).
    pub timeout: Duration,
}

impl Default for SystemdRestarter {
    fn default() -> Self {
        Self {
            address: None,
            user: None,
            mode: SystemdMode::Restart,
            timeout: Duration::from_secs(90),
        }
    }
}

impl SystemdRestarter {
    /// A restarter talking to systemd at `address` (e.g. `unix:path=/run/dbus/system_bus_socket`).
    #[must_use]
    pub fn with_address(address: impl Into<String>) -> Self {
        Self {
            address: Some(address.into()),
            ..Self::default()
        }
    }

    /// A restarter talking to the manager of user `uid` (on the user's bus, as the user).
    #[must_use]
    pub fn for_user(uid: u32) -> Self {
        Self {
            user: Some(uid),
            ..Self::default()
        }
    }

    /// The manager this restarter talks to, for messages.
    #[must_use]
    pub fn manager_label(&self) -> String {
        match (self.user, &self.address) {
            (Some(uid), _) => format!("user@{uid}'s manager"),
            (None, Some(address)) => format!("the system manager at {address}"),
            (None, None) => "the system manager".to_owned(),
        }
    }
}

/// A restarter (the shell's `Restarter`) that restarts the instance's container through the
/// engine on `socket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerRestarter {
    /// The engine's API socket (Docker's, or a Podman service's).
    pub socket: PathBuf,
    /// Time between SIGTERM and SIGKILL (`?t=`); `None` keeps the container's own stop timeout.
    pub grace: Option<Duration>,
    /// How long the restart and the wait for the new main process may take.
    pub timeout: Duration,
}

/// Runs a configured argv to restart an instance.
#[derive(Clone, Debug)]
pub struct CommandRestarter {
    /// The argv template; `argv[0]` is the program (looked up in `PATH`).
    pub argv: Vec<String>,
    /// How long the command may run before it (and its process group) is killed.
    pub timeout: Duration,
}

impl CommandRestarter {
    /// A command restarter for `argv` with `timeout`.
    #[must_use]
    pub fn new(argv: Vec<String>, timeout: Duration) -> Self {
        Self { argv, timeout }
    }
}

/// Restarts a background session with `claude respawn` (or, opted in, a fresh session).
#[derive(Clone, Debug)]
pub struct ClaudeBgRestarter {
    /// Limit of each `claude` command.
    pub timeout: Duration,
    /// Instead of `claude respawn` (same session id): `claude stop <id>`, then `claude --bg`
    /// in the session's directory, a new session (the conversation is not carried over).
    pub fresh_session: bool,
}

/// Restarts supervisord programs over XML-RPC.
#[derive(Clone, Debug)]
pub struct SupervisordRestarter {
    /// A configured server URL (`unix:///path`), used instead of the process's.
    pub url: Option<String>,
    /// How long each call may take.
    pub timeout: Duration,
}

/// The name supervisord knows a process by: `group:program`, or `program` alone when the group
/// is the program's own (a `[program:x]` section has group `x`).
pub fn process_name(program: &str, group: Option<&str>) -> String {
    match group {
        Some(g) if g != program => format!("{g}:{program}"),
        _ => program.to_owned(),
    }
}

/// Restarts pm2 apps through the owner's pm2.
#[derive(Clone, Debug)]
pub struct Pm2Restarter {
    /// A configured `pm2` executable; found as described in the module docs when `None`.
    pub pm2: Option<PathBuf>,
    /// How long each pm2 command may run.
    pub timeout: Duration,
}

/// Signals the instance's process and lets its parent respawn it.
#[derive(Clone, Debug)]
pub struct SignalRestarter {
    /// How long to wait after SIGTERM (and again after SIGKILL) for the process to exit.
    pub grace: Duration,
    /// How long to look for the respawned child of the old process's parent.
    pub respawn_wait: Duration,
}

impl Default for SignalRestarter {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
            respawn_wait: Duration::from_secs(10),
        }
    }
}

/// A restarter (the shell's `Restarter`) that never acts and says what it would have done.
#[derive(Clone, Debug, Default)]
pub struct ObserveOnly;

/// Where systemd can be reached for restarts, decided at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemdBus {
    /// A configured address (e.g. a container's or a test bed's bus).
    Address(String),
    /// The host's system bus (PID 1 is systemd).
    System,
    /// No systemd here: instances in units are observed only unless configured otherwise.
    Unavailable(String),
}

/// The container engine's API socket (`[daemon] docker_socket`), and whether it exists: checked
/// at start and on reload, so that resolving stays pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSocket {
    /// The socket's path.
    pub path: PathBuf,
    /// Whether a unix socket is there.
    pub present: bool,
}

/// A supervisor chosen for an instance, and why it was.
#[derive(Clone, Debug)]
pub struct Choice {
    /// The supervisor.
    pub supervisor: Supervisor,
    /// `configured: command`, `auto → systemd (unit a.service in the system manager)`, ...
    pub reason: String,
}

/// The supervisor of one instance.
#[derive(Clone, Debug)]
pub enum Supervisor {
    /// systemd over D-Bus.
    Systemd(SystemdRestarter),
    /// A container engine's API (Docker, or Podman's compatible one).
    Docker(DockerRestarter),
    /// A configured command.
    Command(CommandRestarter),
    /// SIGTERM/SIGKILL through a pidfd.
    Signal(SignalRestarter),
    /// `pm2 restart` as the app's owner.
    Pm2(Pm2Restarter),
    /// supervisord over XML-RPC.
    Supervisord(SupervisordRestarter),
    /// Never acts.
    Observe(ObserveOnly),
    /// `claude respawn` of a background session, as its owner.
    ClaudeBg(ClaudeBgRestarter),
}

impl Supervisor {
    /// Resolves `spec` for an instance whose newest process lives at `placement`, and says
    /// why (`auto → systemd (unit agent.service in the system manager)`), for status and logs.
    /// `engine` is the container engine's socket, for containers.
    pub fn resolve(
        spec: &SupervisorSpec,
        placement: &Placement,
        bus: &SystemdBus,
        engine: &EngineSocket,
        timeout: Duration,
    ) -> Choice {
        let systemd = |mode: SystemdModeSpec| {
            let address = match bus {
                SystemdBus::Address(a) => Some(a.clone()),
                SystemdBus::System | SystemdBus::Unavailable(_) => None,
            };
            // A unit of a user's manager is restarted through that manager, configured or not.
            let user = match placement {
                Placement::Unit(SystemdUnit {
                    manager: Manager::User { uid },
                    ..
                }) => Some(*uid),
                _ => None,
            };
            Self::Systemd(SystemdRestarter {
                address,
                user,
                mode,
                timeout,
            })
        };
        let configured = |supervisor: Self| Choice {
            reason: format!("configured: {}", supervisor.kind()),
            supervisor,
        };
        let auto = |supervisor: Self, why: String| Choice {
            reason: format!("auto → {} ({why})", supervisor.kind()),
            supervisor,
        };
        // Restarting Claude Code's background daemon would end every session it holds,
        // whatever supervisor is configured.
        if let Placement::BgMachinery { uid } = placement {
            return Choice {
                supervisor: Self::Observe(ObserveOnly),
                reason: format!(
                    "observe: Claude Code's background daemon of uid {uid} (its own requests), never restarted"
                ),
            };
        }
        match spec {
            SupervisorSpec::Auto => match placement {
                Placement::Unit(SystemdUnit {
                    name,
                    manager: Manager::System,
                    ..
                }) => match bus {
                    SystemdBus::Unavailable(why) => auto(
                        Self::Observe(ObserveOnly),
                        format!("unit {name}, but systemd is not reachable: {why}"),
                    ),
                    _ => auto(
                        systemd(SystemdModeSpec::Restart),
                        format!("unit {name} in the system manager"),
                    ),
                },
                Placement::Unit(SystemdUnit {
                    name,
                    manager: Manager::User { uid },
                    ..
                }) => auto(
                    systemd(SystemdModeSpec::Restart),
                    format!("unit {name} in user@{uid}'s manager"),
                ),
                Placement::Container(c) if engine.present => auto(
                    Self::Docker(DockerRestarter {
                        socket: engine.path.clone(),
                        grace: None,
                        timeout,
                    }),
                    format!(
                        "{} container {} on {}",
                        c.engine.label(),
                        c.short_id(),
                        engine.path.display()
                    ),
                ),
                Placement::Container(c) => auto(
                    Self::Observe(ObserveOnly),
                    format!(
                        "{} container {}, but no engine socket at {}",
                        c.engine.label(),
                        c.short_id(),
                        engine.path.display()
                    ),
                ),
                Placement::Pod(pod) => auto(
                    Self::Signal(SignalRestarter::default()),
                    format!(
                        "pod {}: the kubelet restarts the container when its process ends",
                        pod.uid
                    ),
                ),
                Placement::Pm2 { id, name, .. } => auto(
                    Self::Pm2(Pm2Restarter { pm2: None, timeout }),
                    format!("pm2 app {id} ({name}) in the process's environment"),
                ),
                Placement::Supervisord { program, group, .. } => auto(
                    Self::Supervisord(SupervisordRestarter { url: None, timeout }),
                    format!(
                        "supervisord program {} in the process's environment",
                        process_name(program, group.as_deref())
                    ),
                ),
                Placement::ClaudeBg(bg) => auto(
                    Self::ClaudeBg(ClaudeBgRestarter {
                        timeout,
                        fresh_session: false,
                    }),
                    format!(
                        "background session {} of Claude Code's daemon, respawned as uid {}",
                        bg.short_id, bg.uid
                    ),
                ),
                Placement::BgMachinery { .. } | Placement::Unsupervised => auto(
                    Self::Observe(ObserveOnly),
                    "no supervisor found: not in a unit, container or process manager".into(),
                ),
            },
            SupervisorSpec::Observe => configured(Self::Observe(ObserveOnly)),
            SupervisorSpec::Pm2 { pm2 } => configured(Self::Pm2(Pm2Restarter {
                pm2: pm2.clone(),
                timeout,
            })),
            SupervisorSpec::Supervisord { url } => {
                configured(Self::Supervisord(SupervisordRestarter {
                    url: url.clone(),
                    timeout,
                }))
            }
            SupervisorSpec::Systemd { mode } => configured(systemd(*mode)),
            SupervisorSpec::Command { argv, timeout } => {
                configured(Self::Command(CommandRestarter::new(argv.clone(), *timeout)))
            }
            SupervisorSpec::Docker { socket, grace } => configured(Self::Docker(DockerRestarter {
                socket: socket.clone().unwrap_or_else(|| engine.path.clone()),
                grace: *grace,
                timeout,
            })),
            SupervisorSpec::Signal { grace } => configured(Self::Signal(SignalRestarter {
                grace: *grace,
                ..SignalRestarter::default()
            })),
        }
    }

    /// Short name for status and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Systemd(s) if s.user.is_some() => "systemd-user",
            Self::Systemd(_) => "systemd",
            Self::Docker(_) => "docker",
            Self::Command(_) => "command",
            Self::Signal(_) => "signal",
            Self::Pm2(_) => "pm2",
            Self::Supervisord(_) => "supervisord",
            Self::Observe(_) => "observe",
            Self::ClaudeBg(_) => "claude-bg",
        }
    }

    /// Whether it ever acts.
    pub fn acts(&self) -> bool {
        !matches!(self, Self::Observe(_))
    }
}

/// Why a configured `spec` cannot restart a process living at `placement`, if it cannot (for
/// `config check`): `None` when it can, or when only running it would tell (commands, signals).
#[must_use]
pub fn misfit(spec: &SupervisorSpec, placement: &Placement) -> Option<String> {
    match (spec, placement) {
        (SupervisorSpec::Auto | SupervisorSpec::Observe, _) => None,
        (_, Placement::BgMachinery { .. }) => {
            Some("it is Claude Code's background daemon, which is only observed".into())
        }
        // A user's unit too: `systemd` restarts it through that user's manager.
        (SupervisorSpec::Systemd { .. }, Placement::Unit(_)) => None,
        (SupervisorSpec::Systemd { .. }, _) => Some("it is not in a systemd unit".into()),
        (SupervisorSpec::Docker { .. }, Placement::Container(_)) => None,
        (SupervisorSpec::Docker { .. }, _) => {
            Some("it is not in a Docker or Podman container".into())
        }
        _ => None,
    }
}

/// Why a restart (or the escalation hook) did not happen, as the shell's adapter said it: one
/// line, its causes each said once (what the journal's `detail` and the status's `last_error`
/// show).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct RestartFailed {
    /// The adapter's error and its causes.
    pub detail: String,
}

impl RestartFailed {
    /// A failure saying `detail`.
    #[must_use]
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, manager: Manager) -> Placement {
        Placement::Unit(SystemdUnit {
            name: name.into(),
            manager,
            cgroup: String::new(),
        })
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn a_user_unit_goes_to_its_users_manager_never_the_system_bus() {
        let bus = SystemdBus::Address("unix:path=/x".into());
        let choice = Supervisor::resolve(
            &SupervisorSpec::Auto,
            &unit("nginx.service", Manager::User { uid: 1000 }),
            &bus,
            &no_engine(),
            T,
        );
        assert_eq!(choice.supervisor.kind(), "systemd-user");
        assert_eq!(
            choice.reason,
            "auto → systemd-user (unit nginx.service in user@1000's manager)"
        );
        let Supervisor::Systemd(s) = &choice.supervisor else {
            panic!("{choice:?}")
        };
        assert_eq!(s.user, Some(1000));
        // Configured systemd too: the user's manager owns the unit.
        let choice = Supervisor::resolve(
            &SupervisorSpec::Systemd {
                mode: SystemdModeSpec::Kill,
            },
            &unit("nginx.service", Manager::User { uid: 1000 }),
            &bus,
            &no_engine(),
            T,
        );
        assert_eq!(choice.supervisor.kind(), "systemd-user");
        assert_eq!(choice.reason, "configured: systemd-user");
    }

    #[test]
    fn a_system_unit_goes_to_the_system_manager() {
        let choice = Supervisor::resolve(
            &SupervisorSpec::Auto,
            &unit("agent.service", Manager::System),
            &SystemdBus::System,
            &no_engine(),
            T,
        );
        assert_eq!(choice.supervisor.kind(), "systemd");
        assert_eq!(
            choice.reason,
            "auto → systemd (unit agent.service in the system manager)"
        );
        let Supervisor::Systemd(s) = &choice.supervisor else {
            panic!("{choice:?}")
        };
        assert_eq!((s.user, s.address.as_deref()), (None, None));
    }

    fn no_engine() -> EngineSocket {
        EngineSocket {
            path: "/var/run/docker.sock".into(),
            present: false,
        }
    }

    fn resolve(spec: &SupervisorSpec, placement: &Placement) -> Choice {
        Supervisor::resolve(
            spec,
            placement,
            &SystemdBus::System,
            &no_engine(),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn auto_picks_pm2_and_supervisord_from_the_placement() {
        let pm2 = Placement::Pm2 {
            id: 3,
            name: "reviewer".into(),
            home: None,
        };
        let c = resolve(&SupervisorSpec::Auto, &pm2);
        assert_eq!(c.supervisor.kind(), "pm2");
        assert_eq!(
            c.reason,
            "auto → pm2 (pm2 app 3 (reviewer) in the process's environment)"
        );
        let sup = Placement::Supervisord {
            program: "agent_01".into(),
            group: Some("fleet".into()),
            url: None,
        };
        let c = resolve(&SupervisorSpec::Auto, &sup);
        assert_eq!(c.supervisor.kind(), "supervisord");
        assert_eq!(
            c.reason,
            "auto → supervisord (supervisord program fleet:agent_01 in the process's environment)"
        );
        let c = resolve(
            &SupervisorSpec::Supervisord {
                url: Some("unix:///run/supervisor.sock".into()),
            },
            &Placement::Unsupervised,
        );
        assert_eq!(c.supervisor.kind(), "supervisord");
        assert_eq!(c.reason, "configured: supervisord");
        let c = resolve(&SupervisorSpec::Pm2 { pm2: None }, &pm2);
        assert_eq!(c.reason, "configured: pm2");
    }

    use crate::instance::{Container, Engine};

    const ID: &str = "0123abcd4567ef890123abcd4567ef890123abcd4567ef890123abcd4567ef89";

    fn resolve_engine(spec: &SupervisorSpec, placement: &Placement, present: bool) -> Choice {
        Supervisor::resolve(
            spec,
            placement,
            &SystemdBus::System,
            &EngineSocket {
                path: "/var/run/docker.sock".into(),
                present,
            },
            Duration::from_secs(30),
        )
    }

    fn container(engine: Engine) -> Placement {
        Placement::Container(Container {
            engine,
            id: ID.into(),
        })
    }

    #[test]
    fn auto_restarts_containers_through_the_engine_when_its_socket_is_there() {
        let choice = resolve_engine(&SupervisorSpec::Auto, &container(Engine::Docker), true);
        assert_eq!(
            choice.reason,
            "auto → docker (docker container 0123abcd4567 on /var/run/docker.sock)"
        );
        let Supervisor::Docker(d) = choice.supervisor else {
            panic!("{:?}", choice.supervisor)
        };
        assert_eq!(
            d,
            DockerRestarter {
                socket: "/var/run/docker.sock".into(),
                grace: None,
                timeout: Duration::from_secs(30)
            }
        );
        let podman = resolve_engine(&SupervisorSpec::Auto, &container(Engine::Podman), true);
        assert_eq!(podman.supervisor.kind(), "docker");
        assert!(podman.reason.contains("podman container 0123abcd4567"));
    }

    #[test]
    fn a_docker_supervisor_fits_containers_only() {
        let spec = SupervisorSpec::Docker {
            socket: None,
            grace: None,
        };
        assert_eq!(misfit(&spec, &container(Engine::Podman)), None);
        assert_eq!(
            misfit(&spec, &Placement::Unsupervised).as_deref(),
            Some("it is not in a Docker or Podman container")
        );
    }

    #[test]
    fn the_background_daemon_is_only_observed_whatever_is_configured() {
        let machinery = Placement::BgMachinery { uid: 1000 };
        for spec in [
            SupervisorSpec::Auto,
            SupervisorSpec::Systemd {
                mode: SystemdModeSpec::Restart,
            },
            SupervisorSpec::Signal {
                grace: Duration::from_secs(5),
            },
        ] {
            let choice = resolve(&spec, &machinery);
            assert!(!choice.supervisor.acts(), "{spec:?}");
            assert!(
                choice.reason.contains("background daemon of uid 1000"),
                "{}",
                choice.reason
            );
        }
    }

    #[test]
    fn auto_observes_containers_without_an_engine_socket() {
        let choice = resolve_engine(&SupervisorSpec::Auto, &container(Engine::Docker), false);
        assert!(!choice.supervisor.acts());
        assert_eq!(
            choice.reason,
            "auto → observe (docker container 0123abcd4567, but no engine socket at /var/run/docker.sock)"
        );
    }

    #[test]
    fn a_configured_docker_supervisor_takes_its_own_socket_and_grace() {
        let spec = SupervisorSpec::Docker {
            socket: Some("/run/podman/podman.sock".into()),
            grace: Some(Duration::from_secs(3)),
        };
        let choice = resolve_engine(&spec, &Placement::Unsupervised, false);
        assert_eq!(choice.reason, "configured: docker");
        let Supervisor::Docker(d) = choice.supervisor else {
            panic!("{:?}", choice.supervisor)
        };
        assert_eq!(d.socket, PathBuf::from("/run/podman/podman.sock"));
        assert_eq!(d.grace, Some(Duration::from_secs(3)));
        let default = SupervisorSpec::Docker {
            socket: None,
            grace: None,
        };
        let Supervisor::Docker(d) =
            resolve_engine(&default, &Placement::Unsupervised, true).supervisor
        else {
            panic!()
        };
        assert_eq!(d.socket, PathBuf::from("/var/run/docker.sock"));
    }
}
