//! One daemon per scope: two daemons watching the same agents race each other's restarts, so
//! a daemon claims its scope (`[daemon] scope`, a cgroup subtree; the whole host without one)
//! by binding an abstract unix socket named after it, and refuses to start when another
//! daemon's claim overlaps its own. The kernel drops the claim with the process, crash
//! included; nothing is left on disk.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener};

/// The abstract socket names' prefix.
const PREFIX: &str = "claude-watch-daemon:";

/// Why the daemon may not start here.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Another daemon watches processes this one would.
    #[error(
        "another claude-watch daemon already watches {theirs} on this host, which overlaps this one's {ours}: two daemons on the same agents race each other's restarts. Give each daemon its own [daemon] scope (a cgroup subtree such as \"/system.slice/agents.slice\"), or stop the other one"
    )]
    Overlap {
        /// The other daemon's scope.
        theirs: String,
        /// This one's.
        ours: String,
    },
    /// The claim could not be made.
    #[error("cannot claim the scope {ours}")]
    Claim {
        /// This daemon's scope.
        ours: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A claim on a scope, held for the daemon's life.
#[derive(Debug)]
pub(super) struct Claim {
    _socket: UnixListener,
}

/// `/` for the whole host.
fn name(scope: Option<&str>) -> String {
    scope.unwrap_or("/").to_owned()
}

/// Whether two scopes share processes: one is the other or inside it.
fn overlap(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| {
        y == "/" || x == y || x.strip_prefix(y).is_some_and(|r| r.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
}

/// The scopes other daemons claimed, from `/proc/net/unix` (abstract names start with `@`).
fn claimed(net_unix: &str) -> Vec<String> {
    net_unix
        .lines()
        .skip(1)
        .filter_map(|l| {
            let path = l.split_whitespace().nth(7)?;
            path.strip_prefix('@')?
                .strip_prefix(PREFIX)
                .map(str::to_owned)
        })
        .collect()
}

/// Claims `scope` for this daemon, unless another daemon's claim overlaps it.
pub(super) fn claim(scope: Option<&str>) -> Result<Claim, GuardError> {
    let ours = name(scope);
    // The kernel's list of unix sockets (every process's: a busy host has thousands).
    let net_unix = crate::instance::proc::read_host_text("/proc/net/unix", 64 << 20);
    if let Some(theirs) = claimed(&net_unix).into_iter().find(|t| overlap(t, &ours)) {
        return Err(GuardError::Overlap { theirs, ours });
    }
    let bind = || {
        let addr = SocketAddr::from_abstract_name(format!("{PREFIX}{ours}").as_bytes())?;
        UnixListener::bind_addr(&addr)
    };
    match bind() {
        Ok(socket) => Ok(Claim { _socket: socket }),
        // Another daemon of the same scope won the race.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(GuardError::Overlap {
            theirs: ours.clone(),
            ours,
        }),
        Err(source) => Err(GuardError::Claim { ours, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_overlap_when_one_contains_the_other() {
        assert!(overlap("/", "/a"));
        assert!(overlap("/a", "/a"));
        assert!(overlap("/a/b", "/a"));
        assert!(!overlap("/a", "/ab"));
        assert!(!overlap("/bed-1", "/bed-2"));
    }

    #[test]
    fn claims_are_read_from_proc_net_unix() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 12345 @claude-watch-daemon:/bed-1\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 12346 /run/claude-watch/control.sock\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 12347\n";
        assert_eq!(claimed(text), ["/bed-1"]);
    }
}
