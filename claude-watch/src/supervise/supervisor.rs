//! Running restarts and the escalation hook through each instance's supervisor. Which
//! supervisor an instance gets is the core's choice ([`claude_watch_core::supervise`],
//! re-exported here); where systemd and the container engine are is looked at here.

use std::path::Path;
use std::time::Duration;

pub use claude_watch_core::supervise::{Choice, EngineSocket, Supervisor, SystemdBus, misfit};

use super::command::{CommandIo as _, CommandRestarter};
use super::{RestartOutcome, Restarter, SuperviseError, Target};

/// The system bus socket systemd listens on.
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// Where systemd can be reached, from the configuration, checking that the host runs systemd.
pub fn detect_bus(configured: Option<&str>) -> SystemdBus {
    if let Some(address) = configured {
        return SystemdBus::Address(address.to_owned());
    }
    if !Path::new("/run/systemd/system").exists() {
        return SystemdBus::Unavailable("PID 1 is not systemd (no /run/systemd/system)".into());
    }
    if !Path::new(SYSTEM_BUS).exists() {
        return SystemdBus::Unavailable(format!("no D-Bus system bus at {SYSTEM_BUS}"));
    }
    SystemdBus::System
}

/// The container engine's socket at `path`, and whether a unix socket is there (checked at
/// start and on reload, so that resolving stays pure).
pub fn detect_engine(path: &Path) -> EngineSocket {
    use std::os::unix::fs::FileTypeExt as _;
    EngineSocket {
        path: path.to_owned(),
        present: std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()),
    }
}

/// Restarts `target` through `supervisor`, giving up with [`SuperviseError::Timeout`] after
/// `timeout`.
pub async fn restart_within(
    supervisor: &Supervisor,
    target: &Target,
    timeout: Duration,
) -> Result<RestartOutcome, SuperviseError> {
    match tokio::time::timeout(timeout, supervisor.restart(target)).await {
        Ok(result) => result,
        Err(_) => Err(SuperviseError::Timeout {
            what: format!("{} restart", supervisor.kind()),
            timeout,
        }),
    }
}

impl Restarter for Supervisor {
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        match self {
            Self::Systemd(s) => s.restart(target).await,
            Self::Docker(s) => s.restart(target).await,
            Self::Command(s) => s.restart(target).await,
            Self::Signal(s) => s.restart(target).await,
            Self::Pm2(s) => s.restart(target).await,
            Self::Supervisord(s) => s.restart(target).await,
            Self::Observe(s) => s.restart(target).await,
            Self::ClaudeBg(s) => s.restart(target).await,
        }
    }
}

/// Runs the escalation hook (an argv template) for `target`, without a shell, with a timeout;
/// `{reason}` and `{instances}` stand for `reason` and `instances` (comma-separated).
pub async fn run_hook(
    argv: &[String],
    timeout: Duration,
    target: &Target,
    reason: &str,
    instances: &[String],
) -> Result<RestartOutcome, SuperviseError> {
    let hook = CommandRestarter::new(argv.to_vec(), timeout);
    let instances = instances.join(",");
    let argv = hook.render_with(target, &[("{reason}", reason), ("{instances}", &instances)])?;
    hook.run(argv, target).await
}
