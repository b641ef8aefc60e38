//! The one reader of `/proc`: every `/proc` fact the daemon uses (a process's identity for
//! discovery and instances, start times, owners, namespaces, cgroups, children and mappings for
//! the supervisors and the probes) is read here, each file through the door for files others
//! control ([`crate::untrusted`]: a regular file, never a terminal). Every read is bounded, every
//! byte is taken as hostile (decoded lossily, parsed by the pure functions below), and a process
//! that is gone is an error or an empty answer, never a panic.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::ProcessInfo;
use crate::untrusted::{self, Limits, Resolve, UntrustedError};
pub use claude_watch_core::instance::procfs::{
    Owner, parse_environ, parse_nspid, parse_owner, parse_stat, plain_http_origin,
};

/// Where `/proc` is mounted on the host.
pub const ROOT: &str = "/proc";

/// Most bytes read of a `/proc` text file (`stat`, `status`, `cgroup`, `children`, `cmdline`):
/// far more than any real one holds, and a process cannot make the daemon read more.
const MAX_FILE: u64 = 64 * 1024;

/// Why `/proc` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A `/proc/<pid>/...` link or directory could not be read (the process may have exited).
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A `/proc/<pid>/...` file could not be read (the process may have exited).
    #[error(transparent)]
    File(#[from] UntrustedError),
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

/// `<root>/<pid>`.
fn dir_of(root: &Path, pid: u32) -> PathBuf {
    root.join(pid.to_string())
}

/// At most `limit` bytes of `path` (a `/proc` file).
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, UntrustedError> {
    untrusted::read_head(path, Resolve::Proc, Limits::bytes(limit))
}

/// A host-wide `/proc` text file (`/proc/net/unix`, `/proc/sys/kernel/hostname`): at most
/// `limit` bytes, decoded lossily; empty when it cannot be read.
pub fn read_host_text(path: &str, limit: u64) -> String {
    read_bounded(Path::new(path), limit)
        .map(|raw| String::from_utf8_lossy(&raw).into_owned())
        .unwrap_or_default()
}

/// At most `limit` bytes of `<root>/<pid>/<file>`.
///
/// # Errors
/// [`ProcError::File`] when it cannot be read (the process is gone, or not ours to read).
pub fn read_file(root: &Path, pid: u32, file: &str, limit: u64) -> Result<Vec<u8>, ProcError> {
    Ok(read_bounded(&dir_of(root, pid).join(file), limit)?)
}

/// `<root>/<pid>/<file>`, a text file, at most [`MAX_FILE`] bytes, decoded lossily.
///
/// # Errors
/// [`ProcError::File`] when it cannot be read (the process is gone).
pub fn read_text_in(root: &Path, pid: u32, file: &str) -> Result<String, ProcError> {
    read_file(root, pid, file, MAX_FILE).map(|raw| String::from_utf8_lossy(&raw).into_owned())
}

/// A `/proc/<pid>` text file of the host (see [`read_text_in`]).
fn read_text(pid: u32, file: &str) -> Result<String, ProcError> {
    read_text_in(Path::new(ROOT), pid, file)
}

/// The link `<root>/<pid>/<name>` points to.
fn read_link(root: &Path, pid: u32, name: &str) -> Result<PathBuf, ProcError> {
    let path = dir_of(root, pid).join(name);
    std::fs::read_link(&path).map_err(|source| ProcError::Read { path, source })
}

/// The PIDs under `root`, in no order (empty when it cannot be listed).
pub fn pids(root: &Path) -> Vec<u32> {
    std::fs::read_dir(root).map_or_else(
        |_| Vec::new(),
        |entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        },
    )
}

/// The `exe` link of the process directory `dir`, without the ` (deleted)` of a binary
/// replaced while running (empty when unreadable).
pub fn exe_in(dir: &Path) -> PathBuf {
    std::fs::read_link(dir.join("exe"))
        .map(|p| {
            p.to_str()
                .and_then(|s| s.strip_suffix(" (deleted)"))
                .map_or(p.clone(), PathBuf::from)
        })
        .unwrap_or_default()
}

/// `exe` ([`exe_in`]) and `cmdline` (split at NULs) of the process directory `dir`: all
/// [`super::classify`] needs.
pub fn read_exe_and_cmdline(dir: &Path) -> (PathBuf, Vec<String>) {
    let exe = exe_in(dir);
    let cmdline = read_bounded(&dir.join("cmdline"), MAX_FILE)
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    (exe, cmdline)
}

/// The start time of the process whose directory is `dir` (`/proc/<pid>`), `None` when gone.
pub fn start_time_in(dir: &Path) -> Option<u64> {
    let raw = read_bounded(&dir.join("stat"), MAX_FILE).ok()?;
    parse_stat(&String::from_utf8_lossy(&raw)).map(|(_, start)| start)
}

/// Reads `/proc/<pid>/{stat,exe,cmdline,cwd,cgroup,status}` and the process-manager variables
/// of `environ` under `proc_root` (normally `/proc`).
///
/// `exe` and `cwd` may be unreadable for another user's or a zombie process: they are then left
/// empty / `None` rather than failing; `stat` and `cgroup` must be readable.
pub fn read_process_info(proc_root: &Path, pid: u32) -> Result<ProcessInfo, ProcError> {
    let dir = dir_of(proc_root, pid);
    let read = |name: &str| read_text_in(proc_root, pid, name);
    let (ppid, start_time) =
        parse_stat(&read("stat")?).ok_or(ProcError::Malformed { pid, file: "stat" })?;
    let cgroup = read("cgroup")?;
    let (exe, cmdline) = read_exe_and_cmdline(&dir);
    let cwd = std::fs::read_link(dir.join("cwd")).ok();
    let uid = parse_owner(&read("status")?)
        .map(|o| o.uid)
        .ok_or(ProcError::Malformed {
            pid,
            file: "status",
        })?;
    let env = environ(proc_root, pid)
        .map(|raw| parse_environ(&raw))
        .unwrap_or_default();
    Ok(ProcessInfo {
        pid,
        ppid,
        start_time,
        exe,
        cmdline,
        cwd,
        cgroup,
        uid,
        env,
    })
}

/// Most bytes of `/proc/<pid>/environ` read: process managers, `HOME` and
/// `CLAUDE_CONFIG_DIR` are among the first variables, and a process cannot make the daemon
/// read megabytes.
pub const MAX_ENVIRON: u64 = 64 * 1024;

/// The raw environment block of `pid` under `root`, at most [`MAX_ENVIRON`] bytes. It holds
/// credentials: callers parse out the few variables they need and drop it.
///
/// # Errors
/// [`ProcError::Read`] when it cannot be read.
pub fn environ(root: &Path, pid: u32) -> Result<Vec<u8>, ProcError> {
    read_file(root, pid, "environ", MAX_ENVIRON)
}

/// The parent chain of `pid`, nearest first, up to (excluding) PID 1 or `max_depth` entries.
/// Stops quietly at a parent that has already gone.
pub fn read_ancestry(proc_root: &Path, pid: u32, max_depth: usize) -> Vec<ProcessInfo> {
    let mut chain = Vec::new();
    let mut ppid = match read_process_info(proc_root, pid) {
        Ok(p) => p.ppid,
        Err(_) => return chain,
    };
    while ppid > 1 && chain.len() < max_depth {
        match read_process_info(proc_root, ppid) {
            Ok(parent) => {
                ppid = parent.ppid;
                chain.push(parent);
            }
            Err(_) => break,
        }
    }
    chain
}

/// What `parse` reads in `/proc/<pid>/<file>` of the host; [`ProcError::Malformed`] when it
/// reads nothing.
fn parsed<T>(
    pid: u32,
    file: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ProcError> {
    parse(&read_text(pid, file)?).ok_or(ProcError::Malformed { pid, file })
}

/// Start time of `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
///
/// # Errors
/// [`ProcError::Read`] when it is gone, [`ProcError::Malformed`] on an odd `stat`.
pub fn start_time(pid: u32) -> Result<u64, ProcError> {
    parsed(pid, "stat", |stat| Some(parse_stat(stat)?.1))
}

/// Parent PID of `pid` (field 4 of `stat`).
///
/// # Errors
/// As [`start_time`].
pub fn parent_pid(pid: u32) -> Result<u32, ProcError> {
    parsed(pid, "stat", |stat| Some(parse_stat(stat)?.0))
}

/// The PID of host process `pid` inside its own (innermost) PID namespace.
///
/// # Errors
/// As [`start_time`].
pub fn namespace_pid(pid: u32) -> Result<u32, ProcError> {
    parsed(pid, "status", |status| parse_nspid(status)?.last().copied())
}

/// The owner of `pid`.
///
/// # Errors
/// As [`start_time`].
pub fn owner(pid: u32) -> Result<Owner, ProcError> {
    parsed(pid, "status", parse_owner)
}

/// The PID namespace of `pid`, as `pid:[inode]`.
///
/// # Errors
/// [`ProcError::Read`] when it is gone.
pub fn pid_namespace(pid: u32) -> Result<String, ProcError> {
    read_link(Path::new(ROOT), pid, "ns/pid").map(|p| p.to_string_lossy().into_owned())
}

/// The PID namespace of `pid` as the device and inode of `/proc/<pid>/ns/pid`.
///
/// # Errors
/// [`ProcError::Read`] when it is gone.
pub fn pid_namespace_id(pid: u32) -> Result<(u64, u64), ProcError> {
    let path = dir_of(Path::new(ROOT), pid).join("ns/pid");
    std::fs::metadata(&path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|source| ProcError::Read { path, source })
}

/// The host PID of the process whose PID is `ns_pid` inside PID namespace `namespace`
/// (as returned by [`pid_namespace`]), found by scanning `/proc`.
///
/// # Errors
/// [`ProcError::NotInNamespace`] when no such process exists.
pub fn host_pid(namespace: &str, ns_pid: u32) -> Result<u32, ProcError> {
    for pid in pids(Path::new(ROOT)) {
        let Ok(status) = read_text(pid, "status") else {
            continue;
        };
        if parse_nspid(&status).and_then(|p| p.last().copied()) != Some(ns_pid) {
            continue;
        }
        if pid_namespace(pid).is_ok_and(|ns| ns == namespace) {
            return Ok(pid);
        }
    }
    Err(ProcError::NotInNamespace {
        ns_pid,
        namespace: namespace.to_owned(),
    })
}

/// `/proc/<pid>/cgroup` (at most `MAX_FILE` bytes).
///
/// # Errors
/// [`ProcError::Read`] when it is gone.
pub fn cgroup(pid: u32) -> Result<String, ProcError> {
    read_text(pid, "cgroup")
}

/// The children of `parent`'s main thread (empty when it is gone).
pub fn children(parent: u32) -> Vec<u32> {
    read_text(parent, &format!("task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The executable `pid` runs, as `/proc/<pid>/exe` points to it (with ` (deleted)` when the
/// file was replaced or removed).
///
/// # Errors
/// [`ProcError::Read`] when it is gone or not readable.
pub fn exe(pid: u32) -> Result<PathBuf, ProcError> {
    read_link(Path::new(ROOT), pid, "exe")
}

/// The command name of `pid` (`comm`, at most 16 bytes), lossily decoded, without its newline.
pub fn comm(pid: u32) -> Option<String> {
    read_file(Path::new(ROOT), pid, "comm", 64)
        .ok()
        .map(|raw| String::from_utf8_lossy(&raw).trim_end().to_owned())
}

/// Most bytes of `/proc/<pid>/maps` read: some 10,000 mappings, far more than a TLS client
/// maps (a process mapping more is located from the first ones).
pub const MAX_MAPS: u64 = 1 << 20;

/// `/proc/<pid>/maps`, at most [`MAX_MAPS`] bytes (cut at the last whole line), lossily
/// decoded.
///
/// # Errors
/// [`ProcError::File`] when it is gone.
pub fn maps(pid: u32) -> Result<String, ProcError> {
    let mut raw = read_file(Path::new(ROOT), pid, "maps", MAX_MAPS)?;
    if raw.len() as u64 == MAX_MAPS {
        let whole = raw.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
        raw.truncate(whole);
    }
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// The inodes of the sockets among the first `max_fds` descriptors `pid` holds open.
pub fn socket_inodes(pid: u32, max_fds: usize) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(dir_of(Path::new(ROOT), pid).join("fd")) else {
        return HashSet::new();
    };
    fds.take(max_fds)
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executable_replaced_while_running_is_named_without_deleted() {
        let dir = crate::scratch::Scratch::new("proc-exe");
        let replaced = dir.0.join("replaced");
        std::fs::create_dir(&replaced).unwrap();
        std::os::unix::fs::symlink("/opt/x/bun (deleted)", replaced.join("exe")).unwrap();
        assert_eq!(exe_in(&replaced), PathBuf::from("/opt/x/bun"));
        let running = dir.0.join("running");
        std::fs::create_dir(&running).unwrap();
        std::os::unix::fs::symlink("/usr/bin/node", running.join("exe")).unwrap();
        assert_eq!(exe_in(&running), PathBuf::from("/usr/bin/node"));
        assert_eq!(exe_in(&dir.0.join("gone")), PathBuf::new());
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(stat), Some((1, 987_654)));
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[test]
    fn nspid_lists_outermost_first() {
        let status = "Name:\tsleep\nTgid:\t7\nNSpid:\t8762\t42\nPPid:\t1\n";
        assert_eq!(parse_nspid(status), Some(vec![8762, 42]));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }

    #[test]
    fn owner_from_status() {
        let status = "Name:\tclaude\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t24 27 100 \n";
        assert_eq!(
            parse_owner(status),
            Some(Owner {
                uid: 1000,
                gid: 100,
                groups: vec![24, 27, 100]
            })
        );
        let none = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        assert_eq!(parse_owner(none).unwrap().groups, Vec::<u32>::new());
        assert_eq!(parse_owner("Uid:\tx\n"), None);
    }

    #[test]
    fn own_process_round_trips() {
        let me = std::process::id();
        assert!(start_time(me).unwrap() > 0);
        assert_eq!(parent_pid(me).unwrap(), std::os::unix::process::parent_id());
        assert_eq!(
            namespace_pid(me).unwrap(),
            me,
            "tests run in the host pid namespace"
        );
        let ns = pid_namespace(me).unwrap();
        assert_eq!(host_pid(&ns, me).unwrap(), me);
        assert!(cgroup(me).unwrap().contains("::") || cgroup(me).unwrap().contains(':'));
        assert!(exe(me).unwrap().is_absolute());
        assert!(pids(Path::new(ROOT)).contains(&me));
        assert!(matches!(start_time(u32::MAX), Err(ProcError::File(e)) if e.is_gone()));
        assert!(maps(me).unwrap().contains(" r-xp "));
        assert!(children(u32::MAX).is_empty());
    }

    #[test]
    fn reads_this_very_process() {
        let me = std::process::id();
        let info = read_process_info(Path::new("/proc"), me).expect("own /proc entry");
        assert_eq!(info.pid, me);
        assert!(info.start_time > 0);
        assert_eq!(info.exe, std::env::current_exe().unwrap());
        assert_eq!(
            info.cwd.as_deref(),
            Some(std::env::current_dir().unwrap().as_path())
        );
        let ancestry = read_ancestry(Path::new("/proc"), me, 64);
        assert_eq!(ancestry.first().map(|p| p.pid), Some(info.ppid));
        assert!(matches!(
            read_process_info(Path::new("/proc"), u32::MAX),
            Err(ProcError::File(e)) if e.is_gone()
        ));
    }
}
