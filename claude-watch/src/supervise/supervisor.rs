//! Choosing each instance's supervisor (pure, from the configuration and where systemd is
//! reachable) and running restarts and the escalation hook through it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::command::CommandRestarter;
use super::docker::DockerRestarter;
use super::observe::ObserveOnly;
use super::signal::SignalRestarter;
use super::systemd::{SystemdMode, SystemdRestarter};
use super::{RestartOutcome, Restarter as _, SuperviseError, Target};
use crate::config::{SupervisorSpec, SystemdModeSpec};
use crate::instance::{Manager, Placement, SystemdUnit};

/// The system bus socket systemd listens on.
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

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

impl SystemdBus {
    /// From the configuration, checking that the host runs systemd.
    pub fn detect(configured: Option<&str>) -> Self {
        if let Some(address) = configured {
            return Self::Address(address.to_owned());
        }
        if !Path::new("/run/systemd/system").exists() {
            return Self::Unavailable("PID 1 is not systemd (no /run/systemd/system)".into());
        }
        if !Path::new(SYSTEM_BUS).exists() {
            return Self::Unavailable(format!("no D-Bus system bus at {SYSTEM_BUS}"));
        }
        Self::System
    }
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

impl EngineSocket {
    /// Looks whether a unix socket exists at `path`.
    pub fn detect(path: &Path) -> Self {
        use std::os::unix::fs::FileTypeExt as _;
        Self {
            path: path.to_owned(),
            present: std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()),
        }
    }
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
    /// Never acts.
    Observe(ObserveOnly),
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
            let mode = match mode {
                SystemdModeSpec::Restart => SystemdMode::Restart,
                SystemdModeSpec::Kill => SystemdMode::Kill,
            };
            let address = match bus {
                SystemdBus::Address(a) => Some(a.clone()),
                SystemdBus::System | SystemdBus::Unavailable(_) => None,
            };
            Self::Systemd(SystemdRestarter {
                address,
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
                    Self::Observe(ObserveOnly),
                    format!("unit {name} in user@{uid}'s manager, which is not supported yet"),
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
                Placement::Pm2 { id, .. } => auto(
                    Self::Observe(ObserveOnly),
                    format!("pm2 app {id}, which is not supported yet"),
                ),
                Placement::Supervisord { program, .. } => auto(
                    Self::Observe(ObserveOnly),
                    format!("supervisord program {program}, which is not supported yet"),
                ),
                Placement::Unsupervised => auto(
                    Self::Observe(ObserveOnly),
                    "no supervisor found: not in a unit, container or process manager".into(),
                ),
            },
            SupervisorSpec::Observe => configured(Self::Observe(ObserveOnly)),
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
            Self::Systemd(_) => "systemd",
            Self::Docker(_) => "docker",
            Self::Command(_) => "command",
            Self::Signal(_) => "signal",
            Self::Observe(_) => "observe",
        }
    }

    /// Whether it ever acts.
    pub fn acts(&self) -> bool {
        !matches!(self, Self::Observe(_))
    }

    /// Restarts `target`, giving up with [`SuperviseError::Timeout`] after `timeout`.
    pub async fn restart_within(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<RestartOutcome, SuperviseError> {
        match tokio::time::timeout(timeout, self.restart(target)).await {
            Ok(result) => result,
            Err(_) => Err(SuperviseError::Timeout {
                what: format!("{} restart", self.kind()),
                timeout,
            }),
        }
    }

    /// Restarts `target`.
    pub async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        match self {
            Self::Systemd(s) => s.restart(target).await,
            Self::Docker(s) => s.restart(target).await,
            Self::Command(s) => s.restart(target).await,
            Self::Signal(s) => s.restart(target).await,
            Self::Observe(s) => s.restart(target).await,
        }
    }
}

/// Why a configured `spec` cannot restart a process living at `placement`, if it cannot (for
/// `config check`): `None` when it can, or when only running it would tell (commands, signals).
#[must_use]
pub fn misfit(spec: &SupervisorSpec, placement: &Placement) -> Option<String> {
    match (spec, placement) {
        (
            SupervisorSpec::Systemd { .. },
            Placement::Unit(SystemdUnit {
                manager: Manager::System,
                ..
            }),
        ) => None,
        (
            SupervisorSpec::Systemd { .. },
            Placement::Unit(SystemdUnit {
                name,
                manager: Manager::User { uid },
                ..
            }),
        ) => Some(format!(
            "its unit {name} belongs to user@{uid}'s manager, not the system's (`auto` restarts it there)"
        )),
        (SupervisorSpec::Systemd { .. }, _) => Some("it is not in a systemd unit".into()),
        (SupervisorSpec::Docker { .. }, Placement::Container(_)) => None,
        (SupervisorSpec::Docker { .. }, _) => {
            Some("it is not in a Docker or Podman container".into())
        }
        _ => None,
    }
}

/// Runs the escalation hook (an argv template) for `target`, without a shell, with a timeout.
pub async fn run_hook(
    argv: &[String],
    timeout: Duration,
    target: &Target,
) -> Result<RestartOutcome, SuperviseError> {
    CommandRestarter::new(argv.to_vec(), timeout)
        .restart(target)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{Container, Engine};

    const ID: &str = "0123abcd4567ef890123abcd4567ef890123abcd4567ef890123abcd4567ef89";

    fn resolve(spec: &SupervisorSpec, placement: &Placement, present: bool) -> Choice {
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
        let choice = resolve(&SupervisorSpec::Auto, &container(Engine::Docker), true);
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
        let podman = resolve(&SupervisorSpec::Auto, &container(Engine::Podman), true);
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
    fn auto_observes_containers_without_an_engine_socket() {
        let choice = resolve(&SupervisorSpec::Auto, &container(Engine::Docker), false);
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
        let choice = resolve(&spec, &Placement::Unsupervised, false);
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
        let Supervisor::Docker(d) = resolve(&default, &Placement::Unsupervised, true).supervisor
        else {
            panic!()
        };
        assert_eq!(d.socket, PathBuf::from("/var/run/docker.sock"));
    }
}
