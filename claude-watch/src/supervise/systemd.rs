//! systemd over D-Bus: find the unit of a PID, restart it (or kill its main process when the unit
//! restarts itself), wait for the job, and read back the new `MainPID` and `InvocationID`.
//!
//! systemd speaks PIDs of its own PID namespace; [`proc`] translates both ways, so a systemd in a
//! container (or the test bed) works like the host's.
//!
//! Before acting, the manager itself is asked which unit holds the latched PID
//! (`GetUnitByPID`); a unit other than the one about to be restarted is refused
//! ([`SuperviseError::NotOwner`]): a user unit or a delegated sub-cgroup named like a system
//! unit never gets the system's unit restarted.
//!
//! A user's manager (`user@<uid>.service`) is reached on that user's bus,
//! `/proc/<pid>/root/run/user/<uid>/bus` (the process's own view of the filesystem, so a test
//! bed or a container works like the host), connected from a short-lived thread that has
//! dropped to the user's uid and gid: the bus sees that user, not root, so whatever the user
//! put at that path is talked to with their rights only (dbus-daemon's session bus refuses
//! root anyway). The path must be a socket the user owns, opened without following a final
//! link: an absolute link there would resolve in the daemon's root, not the process's (seen
//! through `/proc/<pid>/root`), and a link or bind mount to the system bus is refused.

use std::time::Duration;

use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, Proxy};

use super::{RestartFailure, RestartOutcome, Restarter, SuperviseError, Target};
use crate::instance::proc;
pub use claude_watch_core::supervise::{SystemdMode, SystemdRestarter};

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const JOB: &str = "org.freedesktop.systemd1.Job";

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

/// What talking to systemd takes (the restarter's values are the core's).
#[allow(
    async_fn_in_trait,
    reason = "used on the concrete type only, whose futures are Send"
)]
pub trait SystemdIo {
    /// The unit that holds host process `pid` (its name, e.g. `agent.service`).
    ///
    /// # Errors
    /// [`SuperviseError::UnitNotFound`] when systemd has none, bus errors otherwise.
    async fn unit_of_pid(&self, instance: &str, pid: u32) -> Result<String, SuperviseError>;
}

impl SystemdIo for SystemdRestarter {
    async fn unit_of_pid(&self, instance: &str, pid: u32) -> Result<String, SuperviseError> {
        let conn = connect_for(self, pid).await?;
        let manager = proxy(&conn, MANAGER_PATH, MANAGER).await?;
        let path = unit_path_of_pid(&manager, instance, pid).await?;
        unit_id(&conn, &path).await
    }
}

async fn connect(r: &SystemdRestarter) -> Result<Connection, SuperviseError> {
    let address = r.address.clone().unwrap_or_else(|| "system bus".to_owned());
    let unavailable = |source| SuperviseError::BusUnavailable {
        address: address.clone(),
        source: Box::new(source),
    };
    match &r.address {
        Some(a) => zbus::connection::Builder::address(a.as_str())
            .map_err(unavailable)?
            .build()
            .await
            .map_err(unavailable),
        None => Connection::system().await.map_err(unavailable),
    }
}

/// A connection to the manager that is to act on host process `pid`.
async fn connect_for(r: &SystemdRestarter, pid: u32) -> Result<Connection, SuperviseError> {
    match r.user {
        Some(uid) => connect_user_bus(uid, pid).await,
        None => connect(r).await,
    }
}

/// Connects to user `uid`'s bus as seen by process `pid`, as that user: the socket is
/// connected from a fresh thread whose own credentials are dropped to the process's uid and
/// gid (raw per-thread system calls; the rest of the daemon keeps its own), and the D-Bus
/// handshake claims that uid. The process must belong to `uid`.
async fn connect_user_bus(uid: u32, pid: u32) -> Result<Connection, SuperviseError> {
    let path = format!("/proc/{pid}/root/run/user/{uid}/bus");
    let proc::Owner {
        uid: owner, gid, ..
    } = proc::owner(pid)?;
    if owner != uid {
        return Err(SuperviseError::NotOwner {
            instance: String::new(),
            pid,
            manager: format!("user@{uid}'s manager"),
            expected: format!("a process of uid {uid}"),
            found: format!("a process of uid {owner}"),
        });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    let spawned = std::thread::Builder::new()
        .name("cw-user-bus".into())
        .spawn(move || {
            let _ = tx.send(connect_as(&thread_path, uid, gid));
        });
    let user_bus = |source| SuperviseError::UserBus {
        path: path.clone(),
        uid,
        source,
    };
    spawned.map_err(user_bus)?;
    let stream = rx
        .await
        .map_err(|_| user_bus(std::io::Error::other("connecting thread ended")))?
        .map_err(user_bus)?;
    let stream = tokio::net::UnixStream::from_std(stream).map_err(user_bus)?;
    zbus::connection::Builder::unix_stream(stream)
        .user_id(uid)
        .build()
        .await
        .map_err(|source| SuperviseError::BusUnavailable {
            address: format!("unix:path={path}"),
            source: Box::new(source),
        })
}

/// Drops THIS thread's credentials to `uid`/`gid` (no supplementary groups), opens `path`
/// without following a final symlink, checks it is a socket owned by `uid` (not a link to,
/// or a bind mount of, someone else's bus), and connects a non-blocking unix stream to it (a
/// socket that never accepts fails at once instead of blocking). Only for a thread that ends
/// right after: it cannot get root back.
fn connect_as(path: &str, uid: u32, gid: u32) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let os_error = std::io::Error::last_os_error;
    let check = |r: libc::c_long| if r == 0 { Ok(()) } else { Err(os_error()) };
    // SAFETY: plain system calls on this thread's own credentials (glibc's wrappers would
    // change every thread of the process; the raw calls change only the caller's).
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    let c_path = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path; the descriptor is owned right after.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fstat(2) into a zeroed stat of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(file.as_raw_fd(), &raw mut st) } != 0 {
        return Err(os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_uid != uid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "not a socket owned by uid {uid} (mode {:o}, owner {}): a link or another user's socket",
                st.st_mode, st.st_uid
            ),
        ));
    }
    // Connect through the descriptor, so what was checked is what is connected to.
    let via = format!("/proc/thread-self/fd/{}", file.as_raw_fd());
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied in bounds below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if via.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(via.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes.
    if unsafe { libc::connect(socket.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(os_error());
    }
    Ok(std::os::unix::net::UnixStream::from(socket))
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
    let ns_pid = proc::namespace_pid(pid)?;
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

/// Every name of the unit at `path` (its id and aliases).
async fn unit_names(
    conn: &Connection,
    path: &OwnedObjectPath,
) -> Result<Vec<String>, SuperviseError> {
    proxy(conn, path.as_str(), UNIT)
        .await?
        .get_property::<Vec<String>>("Names")
        .await
        .map_err(bus_err("Unit.Names"))
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
        let namespace = proc::pid_namespace(target.pid)?;
        let old_ns_pid = proc::namespace_pid(target.pid)?;
        let conn = connect_for(self, target.pid).await.map_err(|mut e| {
            if let SuperviseError::NotOwner { instance, .. } = &mut e {
                instance.clone_from(&target.instance);
            }
            e
        })?;
        let manager = proxy(&conn, MANAGER_PATH, MANAGER).await?;
        // Ask the manager which unit holds the process, right before acting on it.
        let path = unit_path_of_pid(&manager, &target.instance, target.pid).await?;
        let found = unit_id(&conn, &path).await?;
        let unit = match &target.unit {
            Some(unit) => {
                let names = unit_names(&conn, &path).await?;
                if !names.iter().any(|n| n == unit) {
                    return Err(SuperviseError::NotOwner {
                        instance: target.instance.clone(),
                        pid: target.pid,
                        manager: self.manager_label(),
                        expected: unit.clone(),
                        found,
                    });
                }
                unit.clone()
            }
            None => found,
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
                        source: RestartFailure::NotActive { state, main_pid },
                    },
                    SystemdMode::Kill => timed_out("new main process"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let new_pid = proc::host_pid(&namespace, main_pid).ok();
        tracing::info!(unit = %unit, main_pid, ?new_pid, invocation = %invocation_id, "unit restarted");
        Ok(RestartOutcome {
            acted: true,
            unit: Some(unit.clone()),
            new_pid,
            invocation_id: Some(invocation_id),
            summary: format!(
                "restarted {unit} in {} for instance {}",
                self.manager_label(),
                target.instance
            ),
        })
    }
}
