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

/// Reads `/proc/<pid>/{stat,exe,cmdline,cwd,cgroup,status}` and the process-manager variables
/// of `environ` under `proc_root` (normally `/proc`).
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
    let status = String::from_utf8_lossy(&read("status")?).into_owned();
    let uid = parse_uid(&status).ok_or(InstanceError::Stat { pid })?;
    let env = read_bounded(&dir.join("environ"), MAX_ENVIRON)
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

/// Most bytes of `/proc/<pid>/environ` read: process managers put their variables among the
/// first ones, and a process cannot make the daemon read megabytes.
const MAX_ENVIRON: u64 = 64 * 1024;
/// Longest value kept from a process manager's variable.
const MAX_VALUE: usize = 256;

fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut raw)?;
    Ok(raw)
}

/// The real uid (first field of `Uid:`) from the content of `/proc/<pid>/status`.
pub fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process-manager variables of an environment block (`KEY=value` entries split at NULs).
/// Every other variable is skipped unread beyond its key (the environment holds credentials);
/// values that are too long or hold control characters are ignored.
pub fn parse_environ(raw: &[u8]) -> super::SupervisorEnv {
    let mut env = super::SupervisorEnv::default();
    for entry in raw.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        let slot = match key {
            b"pm_id"
            | b"name"
            | b"PM2_HOME"
            | b"SUPERVISOR_PROCESS_NAME"
            | b"SUPERVISOR_GROUP_NAME"
            | b"SUPERVISOR_SERVER_URL" => key,
            _ => continue,
        };
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if value.is_empty() || value.len() > MAX_VALUE || value.chars().any(char::is_control) {
            continue;
        }
        let value = value.to_owned();
        match slot {
            b"pm_id" => env.pm2_id = value.parse().ok(),
            b"name" => env.pm2_name = Some(value),
            b"PM2_HOME" => env.pm2_home = Some(PathBuf::from(value)),
            b"SUPERVISOR_PROCESS_NAME" => env.supervisord_program = Some(value),
            b"SUPERVISOR_GROUP_NAME" => env.supervisord_group = Some(value),
            _ => env.supervisord_url = Some(value),
        }
    }
    if env.pm2_id.is_none() {
        // `name` alone is too common a variable to mean pm2.
        env.pm2_name = None;
        env.pm2_home = None;
    }
    env
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
