//! Finding the claude processes on the host and what to attach for each.
//!
//! A full `/proc` scan at start, then one check per exec the kernel reports. A native claude
//! binary is attached once per file (inode), which covers every process running it, started
//! now or later; a `cli.js` run by node (or bun) is attached per process, so the other node
//! programs on the host never hit a probe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::capture::{CaptureError, Target, targets};
use crate::instance::{self, ClaudeKind, InstanceId, MatchRule, ProcessInfo};

/// How far up the parent chain to look for an enclosing claude.
const MAX_ANCESTRY: usize = 16;

/// A claude process that is an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// What `/proc` said about it.
    pub info: ProcessInfo,
    /// Native binary or script.
    pub kind: ClaudeKind,
    /// The instance it belongs to.
    pub instance: InstanceId,
}

impl Found {
    /// The version, when the path says it (npm and native-installer layouts), e.g. `2.1.197`.
    pub fn version(&self) -> Option<String> {
        version_from_path(&self.info.exe).or_else(|| {
            self.info
                .cmdline
                .iter()
                .find_map(|a| version_from_path(Path::new(a)))
        })
    }
}

/// Known claude processes, keyed by pid.
#[derive(Debug)]
pub struct Discovery {
    proc_root: PathBuf,
    rules: Vec<MatchRule>,
    known: HashMap<u32, Found>,
}

impl Discovery {
    /// Discovery over `proc_root` (normally `/proc`) naming instances with `rules`.
    pub fn new(proc_root: impl Into<PathBuf>, rules: Vec<MatchRule>) -> Self {
        Self {
            proc_root: proc_root.into(),
            rules,
            known: HashMap::new(),
        }
    }

    /// Replaces the match rules (configuration reload); known processes keep their names.
    pub fn set_rules(&mut self, rules: Vec<MatchRule>) {
        self.rules = rules;
    }

    /// Every claude instance running now that was not known yet.
    pub fn scan(&mut self) -> Vec<Found> {
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.into_iter().filter_map(|pid| self.check(pid)).collect()
    }

    /// Checks one process (after an exec, or a record from an unknown pid); returns it when it
    /// is a claude instance not known before. A known pid whose start time changed (reused) is
    /// looked at anew.
    pub fn check(&mut self, pid: u32) -> Option<Found> {
        // Every exec on the host lands here: rule most out with two cheap reads first.
        if !self.known.contains_key(&pid) && !self.might_be_claude(pid) {
            return None;
        }
        let info = instance::read_process_info(&self.proc_root, pid).ok()?;
        if let Some(known) = self.known.get(&pid) {
            if known.info.start_time == info.start_time && known.info.exe == info.exe {
                return None;
            }
            self.known.remove(&pid);
        }
        let kind = instance::classify(&info.exe, &info.cmdline)?;
        let ancestors = instance::read_ancestry(&self.proc_root, pid, MAX_ANCESTRY);
        instance::is_instance(&info, &ancestors)?;
        let found = Found {
            instance: instance::identify(&info, &self.rules),
            kind,
            info,
        };
        debug!(pid, instance = %found.instance, exe = %found.info.exe.display(), "claude process found");
        self.known.insert(pid, found.clone());
        Some(found)
    }

    /// Whether the executable and command line alone say claude (no cgroup, cwd or stat read).
    fn might_be_claude(&self, pid: u32) -> bool {
        let dir = self.proc_root.join(pid.to_string());
        let (exe, cmdline) = instance::proc::read_exe_and_cmdline(&dir);
        instance::classify(&exe, &cmdline).is_some()
    }

    /// Forgets a process that exited; returns it if it was an instance.
    pub fn exited(&mut self, pid: u32) -> Option<Found> {
        self.known.remove(&pid)
    }

    /// The instance process `pid` belongs to, if known.
    pub fn get(&self, pid: u32) -> Option<&Found> {
        self.known.get(&pid)
    }

    /// All known instance processes.
    pub fn all(&self) -> impl Iterator<Item = &Found> {
        self.known.values()
    }
}

/// What to attach for a found process: its executable through `/proc/<pid>/exe` (which works
/// across mount namespaces and for replaced binaries), for every process running that file
/// when it is the native binary, for this process only when it is an interpreter.
pub fn target(found: &Found) -> Result<Target, CaptureError> {
    let exe = PathBuf::from(format!("/proc/{}/exe", found.info.pid));
    let mut target = targets::binary(&exe)?;
    if found.kind == ClaudeKind::Script {
        target.pid = Some(found.info.pid);
    }
    Ok(target)
}

/// A `x.y.z` path component (or file name) of `path`, e.g. npm's
/// `.../claude-code-2.1.197/...` is not matched but `versions/2.1.197` is.
fn version_from_path(path: &Path) -> Option<String> {
    path.components().rev().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        let mut parts = s.split('.');
        let ok = parts.clone().count() == 3
            && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| s.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_install_paths() {
        assert_eq!(
            version_from_path(Path::new("/root/.local/share/claude/versions/2.1.197")).as_deref(),
            Some("2.1.197")
        );
        assert_eq!(
            version_from_path(Path::new(
                "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"
            )),
            None
        );
    }

    #[test]
    fn scan_of_this_machine_finds_no_test_runner() {
        // The test binary is not claude: a scan must not call it an instance.
        let mut discovery = Discovery::new("/proc", Vec::new());
        let me = std::process::id();
        assert!(discovery.scan().iter().all(|f| f.info.pid != me));
        assert!(discovery.check(me).is_none());
    }
}
