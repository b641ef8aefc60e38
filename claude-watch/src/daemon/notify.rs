//! systemd's notification protocol (`sd_notify`): readiness, watchdog pings, reloading and
//! stopping, sent to `$NOTIFY_SOCKET` when the daemon runs as a `Type=notify` service.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::debug;

/// The notification socket, when systemd gave one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|name| {
            let addr = match name.strip_prefix('@') {
                Some(abstract_name) => {
                    SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?
                }
                None => SocketAddr::from_pathname(&name).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Self { socket }
    }

    /// Sends one state string, e.g. `READY=1`. Silently nothing without a socket.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            debug!("sd_notify {state:?} failed: {e}");
        }
    }

    /// Half the watchdog interval systemd asked for (`$WATCHDOG_USEC`), when it asked and the
    /// request is for this process.
    pub fn watchdog_period() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        Some(Duration::from_micros(usec / 2))
    }
}
