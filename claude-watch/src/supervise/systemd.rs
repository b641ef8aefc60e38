//! systemd over D-Bus: find the unit of a PID, restart it (or kill its main process when the unit
//! restarts itself), wait for the job, and read back the new `MainPID` and `InvocationID`.
//!
//! systemd speaks PIDs of its own PID namespace; [`procfs`] translates both ways, so a systemd in
//! a container (or the test bed) works like the host's.

use std::time::Duration;

use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, Proxy};

use super::{RestartOutcome, Restarter, SuperviseError, Target, procfs};

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const JOB: &str = "org.freedesktop.systemd1.Job";

/// How the unit is made to start a new process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Restart or kill.
    pub mode: SystemdMode,
    /// How long to wait for the job (or the new main process).
    pub timeout: Duration,
}

impl Default for SystemdRestarter {
    fn default() -> Self {
        Self {
            address: None,
            mode: SystemdMode::Restart,
            timeout: Duration::from_secs(90),
        }
    }
}

fn bus_err(method: &'static str) -> impl FnOnce(zbus::Error) -> SuperviseError {
    move |source| SuperviseError::Bus {
        method,
        source: Box::new(source),
    }
}

/// The D-Bus error name of a failed method call, if that is what `e` is.
fn error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
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

    async fn connect(&self) -> Result<Connection, SuperviseError> {
        let address = self
            .address
            .clone()
            .unwrap_or_else(|| "system bus".to_owned());
        let unavailable = |source| SuperviseError::BusUnavailable {
            address: address.clone(),
            source: Box::new(source),
        };
        match &self.address {
            Some(a) => zbus::connection::Builder::address(a.as_str())
                .map_err(unavailable)?
                .build()
                .await
                .map_err(unavailable),
            None => Connection::system().await.map_err(unavailable),
        }
    }

    /// The unit that holds host process `pid` (its name, e.g. `agent.service`).
    ///
    /// # Errors
    /// [`SuperviseError::UnitNotFound`] when systemd has none, bus errors otherwise.
    pub async fn unit_of_pid(&self, instance: &str, pid: u32) -> Result<String, SuperviseError> {
        let conn = self.connect().await?;
        let manager = proxy(&conn, MANAGER_PATH, MANAGER).await?;
        let path = unit_path_of_pid(&manager, instance, pid).await?;
        unit_id(&conn, &path).await
    }
}

async fn proxy<'a>(
    conn: &Connection,
    path: &'a str,
    interface: &'a str,
) -> Result<Proxy<'a>, SuperviseError> {
    zbus::proxy::Builder::<Proxy<'a>>::new(conn)
        .destination(DEST)
        .and_then(|b| b.path(path))
        .and_then(|b| b.interface(interface))
        .map(|b| b.cache_properties(CacheProperties::No))
        .map_err(bus_err("proxy"))?
        .build()
        .await
        .map_err(bus_err("proxy"))
}

async fn unit_path_of_pid(
    manager: &Proxy<'_>,
    instance: &str,
    pid: u32,
) -> Result<OwnedObjectPath, SuperviseError> {
    let ns_pid = procfs::namespace_pid(pid)?;
    manager
        .call::<_, _, OwnedObjectPath>("GetUnitByPID", &(ns_pid,))
        .await
        .map_err(|e| match error_name(&e) {
            Some(
                "org.freedesktop.systemd1.NoUnitForPID" | "org.freedesktop.systemd1.NoSuchProcess",
            ) => SuperviseError::UnitNotFound {
                instance: instance.to_owned(),
                pid,
                source: Box::new(e),
            },
            _ => SuperviseError::Bus {
                method: "GetUnitByPID",
                source: Box::new(e),
            },
        })
}

async fn unit_id(conn: &Connection, path: &OwnedObjectPath) -> Result<String, SuperviseError> {
    proxy(conn, path.as_str(), UNIT)
        .await?
        .get_property::<String>("Id")
        .await
        .map_err(bus_err("Unit.Id"))
}

fn not_found_or<'a>(
    method: &'static str,
    target: &'a Target,
) -> impl FnOnce(zbus::Error) -> SuperviseError + 'a {
    move |e| match error_name(&e) {
        Some("org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.systemd1.LoadFailed") => {
            SuperviseError::UnitNotFound {
                instance: target.instance.clone(),
                pid: target.pid,
                source: Box::new(e),
            }
        }
        _ => SuperviseError::Bus {
            method,
            source: Box::new(e),
        },
    }
}

/// The unit's main PID (namespace PID; 0 when none) and invocation id (hex).
async fn main_pid_and_invocation(
    conn: &Connection,
    path: &OwnedObjectPath,
) -> Result<(u32, String, String), SuperviseError> {
    let service = proxy(conn, path.as_str(), SERVICE).await?;
    let main_pid: u32 = service
        .get_property("MainPID")
        .await
        .map_err(bus_err("Service.MainPID"))?;
    let unit = proxy(conn, path.as_str(), UNIT).await?;
    let invocation: Vec<u8> = unit
        .get_property("InvocationID")
        .await
        .map_err(bus_err("Unit.InvocationID"))?;
    let state: String = unit
        .get_property("ActiveState")
        .await
        .map_err(bus_err("Unit.ActiveState"))?;
    let hex = invocation.iter().map(|b| format!("{b:02x}")).collect();
    Ok((main_pid, hex, state))
}

impl Restarter for SystemdRestarter {
    #[tracing::instrument(skip_all, fields(instance = %target.instance, pid = target.pid))]
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        super::verify_start_time(target.pid, target.start_time)?;
        // Remember the namespace now: the old process is about to go.
        let namespace = procfs::pid_namespace(target.pid)?;
        let old_ns_pid = procfs::namespace_pid(target.pid)?;
        let conn = self.connect().await?;
        let manager = proxy(&conn, MANAGER_PATH, MANAGER).await?;
        let (unit, path) = match &target.unit {
            Some(unit) => {
                let path = manager
                    .call::<_, _, OwnedObjectPath>("GetUnit", &(unit.as_str(),))
                    .await
                    .map_err(not_found_or("GetUnit", target))?;
                (unit.clone(), path)
            }
            None => {
                let path = unit_path_of_pid(&manager, &target.instance, target.pid).await?;
                (unit_id(&conn, &path).await?, path)
            }
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = |what: &str| SuperviseError::Timeout {
            what: format!("{what} of {unit}"),
            timeout: self.timeout,
        };
        match self.mode {
            SystemdMode::Restart => {
                let job: OwnedObjectPath = manager
                    .call("RestartUnit", &(unit.as_str(), "replace"))
                    .await
                    .map_err(not_found_or("RestartUnit", target))?;
                tracing::info!(unit = %unit, job = %job.as_str(), "restart job queued");
                // The job object disappears when the job is done.
                let job_proxy = proxy(&conn, job.as_str(), JOB).await?;
                while job_proxy.get_property::<u32>("Id").await.is_ok() {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(timed_out("restart job"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            SystemdMode::Kill => {
                let () = manager
                    .call("KillUnit", &(unit.as_str(), "main", libc::SIGTERM))
                    .await
                    .map_err(not_found_or("KillUnit", target))?;
                tracing::info!(unit = %unit, "main process killed, waiting for the unit to restart it");
            }
        }
        // Wait for a new main process (immediate after a finished restart job).
        let (main_pid, invocation_id) = loop {
            let (main_pid, invocation, state) = main_pid_and_invocation(&conn, &path).await?;
            if main_pid != 0 && main_pid != old_ns_pid && state == "active" {
                break (main_pid, invocation);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(match self.mode {
                    SystemdMode::Restart => SuperviseError::RestartFailed {
                        unit: unit.clone(),
                        reason: format!("unit is {state} with main pid {main_pid} after the job"),
                    },
                    SystemdMode::Kill => timed_out("new main process"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let new_pid = procfs::host_pid(&namespace, main_pid).ok();
        tracing::info!(unit = %unit, main_pid, ?new_pid, invocation = %invocation_id, "unit restarted");
        Ok(RestartOutcome {
            acted: true,
            unit: Some(unit.clone()),
            new_pid,
            invocation_id: Some(invocation_id),
            summary: format!("restarted {unit} for instance {}", target.instance),
        })
    }
}
