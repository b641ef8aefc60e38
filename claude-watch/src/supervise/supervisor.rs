//! Choosing each instance's supervisor (pure, from the configuration and where systemd is
//! reachable) and running restarts and the escalation hook through it.

use std::path::Path;
use std::time::Duration;

use super::claude_bg::ClaudeBgRestarter;
use super::command::CommandRestarter;
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
    /// A configured command.
    Command(CommandRestarter),
    /// SIGTERM/SIGKILL through a pidfd.
    Signal(SignalRestarter),
    /// Never acts.
    Observe(ObserveOnly),
    /// `claude respawn` of a background session, as its owner.
    ClaudeBg(ClaudeBgRestarter),
}

impl Supervisor {
    /// Resolves `spec` for an instance whose newest process lives at `placement`, and says
    /// why (`auto → systemd (unit agent.service in the system manager)`), for status and logs.
    pub fn resolve(
        spec: &SupervisorSpec,
        placement: &Placement,
        bus: &SystemdBus,
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
                Placement::Container(c) => auto(
                    Self::Observe(ObserveOnly),
                    format!(
                        "{} container {}, which is not supported yet",
                        c.engine.label(),
                        c.short_id()
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
            Self::Command(_) => "command",
            Self::Signal(_) => "signal",
            Self::Observe(_) => "observe",
            Self::ClaudeBg(_) => "claude-bg",
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
            Self::Command(s) => s.restart(target).await,
            Self::Signal(s) => s.restart(target).await,
            Self::Observe(s) => s.restart(target).await,
            Self::ClaudeBg(s) => s.restart(target).await,
        }
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
