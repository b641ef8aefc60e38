//! The few `/proc` facts recovery needs: a process's start time (to never act on a reused PID),
//! its PID as seen from its own PID namespace (systemd speaks those), and the way back.

use std::fs;
use std::path::Path;

/// Why `/proc` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process does not exist (any more).
    #[error("process {pid} does not exist")]
    NoProcess {
        /// The PID.
        pid: u32,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file had an unexpected shape.
    #[error("cannot parse {file} of process {pid}")]
    Malformed {
        /// The PID.
        pid: u32,
        /// The file, e.g. `stat`.
        file: &'static str,
    },
    /// No process of the namespace has this namespace PID.
    #[error("no host process has pid {ns_pid} in pid namespace {namespace}")]
    NotInNamespace {
        /// The PID inside the namespace.
        ns_pid: u32,
        /// The namespace, as `pid:[inode]`.
        namespace: String,
    },
}

fn read(pid: u32, file: &'static str) -> Result<String, ProcError> {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|source| ProcError::NoProcess { pid, source })
}

/// Start time of `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
///
/// # Errors
/// [`ProcError::NoProcess`] when it is gone, [`ProcError::Malformed`] on an odd `stat`.
pub fn start_time(pid: u32) -> Result<u64, ProcError> {
    parse_start_time(&read(pid, "stat")?).ok_or(ProcError::Malformed { pid, file: "stat" })
}

/// Field 22 of a `stat` line; the command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
#[must_use]
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3.. ; the start time is field 22, the 20th of those.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Parent PID of `pid` (field 4 of `stat`).
///
/// # Errors
/// As [`start_time`].
pub fn parent_pid(pid: u32) -> Result<u32, ProcError> {
    let stat = read(pid, "stat")?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse().ok())
        .ok_or(ProcError::Malformed { pid, file: "stat" })
}

/// The `NSpid:` line of a `status` file: the PID in each nested namespace, outermost first.
#[must_use]
pub fn parse_nspid(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Option<Vec<u32>> = line.split_whitespace().map(|p| p.parse().ok()).collect();
    pids.filter(|p| !p.is_empty())
}

/// The PID of host process `pid` inside its own (innermost) PID namespace.
///
/// # Errors
/// As [`start_time`].
pub fn namespace_pid(pid: u32) -> Result<u32, ProcError> {
    parse_nspid(&read(pid, "status")?)
        .and_then(|p| p.last().copied())
        .ok_or(ProcError::Malformed {
            pid,
            file: "status",
        })
}

/// The real uid and real gid of a `status` file (the first fields of its `Uid:` and `Gid:`).
#[must_use]
pub fn parse_owner(status: &str) -> Option<(u32, u32)> {
    let first = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((first("Uid:")?, first("Gid:")?))
}

/// The real uid and gid of `pid`.
///
/// # Errors
/// As [`start_time`].
pub fn owner(pid: u32) -> Result<(u32, u32), ProcError> {
    parse_owner(&read(pid, "status")?).ok_or(ProcError::Malformed {
        pid,
        file: "status",
    })
}

/// The PID namespace of `pid`, as `pid:[inode]`.
///
/// # Errors
/// [`ProcError::NoProcess`] when it is gone.
pub fn pid_namespace(pid: u32) -> Result<String, ProcError> {
    fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| ProcError::NoProcess { pid, source })
}

/// The host PID of the process whose PID is `ns_pid` inside PID namespace `namespace`
/// (as returned by [`pid_namespace`]), found by scanning `/proc`.
///
/// # Errors
/// [`ProcError::NotInNamespace`] when no such process exists.
pub fn host_pid(namespace: &str, ns_pid: u32) -> Result<u32, ProcError> {
    let not_found = || ProcError::NotInNamespace {
        ns_pid,
        namespace: namespace.to_owned(),
    };
    let entries = fs::read_dir("/proc").map_err(|_| not_found())?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) =
            fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        else {
            continue;
        };
        if parse_nspid(&status).and_then(|p| p.last().copied()) != Some(ns_pid) {
            continue;
        }
        if pid_namespace(pid).is_ok_and(|ns| ns == namespace) {
            return Ok(pid);
        }
    }
    Err(not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("12 (x) S 1"), None);
    }

    #[test]
    fn nspid_lists_outermost_first() {
        let status = "Name:\tsleep\nTgid:\t7\nNSpid:\t8762\t42\nPPid:\t1\n";
        assert_eq!(parse_nspid(status), Some(vec![8762, 42]));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }

    #[test]
    fn owner_is_the_real_uid_and_gid() {
        let status = "Name:\tnode\nUid:\t999\t0\t0\t0\nGid:\t995\t995\t995\t995\n";
        assert_eq!(parse_owner(status), Some((999, 995)));
        assert_eq!(parse_owner("Uid:\t999\n"), None);
        assert_eq!(parse_owner("Uid:\tx\nGid:\t1\n"), None);
    }

    #[test]
    fn own_process_round_trips() {
        let me = std::process::id();
        assert!(start_time(me).unwrap() > 0);
        assert_eq!(
            namespace_pid(me).unwrap(),
            me,
            "tests run in the host pid namespace"
        );
        let ns = pid_namespace(me).unwrap();
        assert_eq!(host_pid(&ns, me).unwrap(), me);
        assert!(matches!(
            start_time(u32::MAX),
            Err(ProcError::NoProcess { .. })
        ));
    }
}
