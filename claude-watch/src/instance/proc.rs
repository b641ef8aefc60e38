//! Reading a process's identity from `/proc` (the only I/O of the instance module).

use std::io;
use std::path::{Path, PathBuf};

use super::ProcessInfo;

/// Errors reading a process from `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A `/proc/<pid>/...` file could not be read (the process may have exited).
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `/proc/<pid>/stat` did not have the expected shape.
    #[error("malformed stat of pid {pid}")]
    Stat {
        /// The process.
        pid: u32,
    },
}

/// Parent PID and start time (clock ticks after boot) from the content of `/proc/<pid>/stat`.
///
/// The command name (field 2) may hold spaces and parentheses, so fields are counted after the
/// last `)`: ppid is field 4, starttime field 22.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// `exe` (without the ` (deleted)` of a binary replaced while running; empty when unreadable)
/// and `cmdline` (split at NULs) of the process directory `dir`: all [`super::classify`] needs.
pub fn read_exe_and_cmdline(dir: &Path) -> (PathBuf, Vec<String>) {
    let exe = std::fs::read_link(dir.join("exe"))
        .map(|p| {
            p.to_str()
                .and_then(|s| s.strip_suffix(" (deleted)"))
                .map_or(p.clone(), PathBuf::from)
        })
        .unwrap_or_default();
    let cmdline = std::fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    (exe, cmdline)
}

/// Reads `/proc/<pid>/{stat,exe,cmdline,cwd,cgroup}` under `proc_root` (normally `/proc`).
///
/// `exe` and `cwd` may be unreadable for another user's or a zombie process: they are then left
/// empty / `None` rather than failing; `stat` and `cgroup` must be readable.
pub fn read_process_info(proc_root: &Path, pid: u32) -> Result<ProcessInfo, InstanceError> {
    let dir = proc_root.join(pid.to_string());
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| InstanceError::Read { path, source })
    };
    let stat = String::from_utf8_lossy(&read("stat")?).into_owned();
    let (ppid, start_time) = parse_stat(&stat).ok_or(InstanceError::Stat { pid })?;
    let cgroup = String::from_utf8_lossy(&read("cgroup")?).into_owned();
    let (exe, cmdline) = read_exe_and_cmdline(&dir);
    let cwd = std::fs::read_link(dir.join("cwd")).ok();
    Ok(ProcessInfo {
        pid,
        ppid,
        start_time,
        exe,
        cmdline,
        cwd,
        cgroup,
    })
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
