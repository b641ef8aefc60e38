//! The pid table: every claude process the core was told of, by pid, one entry each.
//!
//! The core ([`crate::watch::Watch`]) owns it; discovery reads it to classify (a process
//! already known with the same start and executable is not looked at again, the uids of an
//! instance's members decide who may join it) and keeps no table of its own. `trace`, which has
//! no core, keeps one the same way.

use std::collections::BTreeMap;

use super::{Found, InstanceId};

/// What the core does with a claude process it was told of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Watched: a member of its instance's record, its probes attached.
    Watched,
    /// Outside this daemon's `[daemon] scope` (another daemon's): its traffic is ignored.
    Outside,
    /// Its instance was refused at the core's cap: its traffic is ignored until it exits.
    Refused,
}

/// Claude processes by pid, with what the core does with each.
#[derive(Debug, Default)]
pub struct PidTable {
    procs: BTreeMap<u32, (Found, Standing)>,
}

impl PidTable {
    /// Process `pid`, whatever its standing.
    #[must_use]
    pub fn get(&self, pid: u32) -> Option<&Found> {
        self.procs.get(&pid).map(|(found, _)| found)
    }

    /// Process `pid` when it is watched.
    #[must_use]
    pub fn watched(&self, pid: u32) -> Option<&Found> {
        self.procs
            .get(&pid)
            .filter(|(_, s)| *s == Standing::Watched)
            .map(|(found, _)| found)
    }

    /// Enters `found` (replacing what its pid held).
    pub fn insert(&mut self, found: Found, standing: Standing) {
        self.procs.insert(found.info.pid, (found, standing));
    }

    /// Takes process `pid` out.
    pub fn remove(&mut self, pid: u32) -> Option<(Found, Standing)> {
        self.procs.remove(&pid)
    }

    /// Whether `found` is still a watched process: it has not exited, its pid is not reused.
    #[must_use]
    pub fn is_current(&self, found: &Found) -> bool {
        self.watched(found.info.pid)
            .is_some_and(|f| f.info.start_time == found.info.start_time)
    }

    /// The uids of `instance`'s processes, whatever their standing.
    pub fn uids_of<'a>(&'a self, instance: &'a InstanceId) -> impl Iterator<Item = u32> + 'a {
        self.procs
            .values()
            .filter(move |(f, _)| &f.instance == instance)
            .map(|(f, _)| f.info.uid)
    }

    /// The watched pids, in order.
    pub fn watched_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs
            .iter()
            .filter(|(_, (_, s))| *s == Standing::Watched)
            .map(|(pid, _)| *pid)
    }

    /// How many processes of each standing are in the table: (watched, outside, refused).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        self.procs
            .values()
            .fold((0, 0, 0), |(w, o, r), (_, s)| match s {
                Standing::Watched => (w + 1, o, r),
                Standing::Outside => (w, o + 1, r),
                Standing::Refused => (w, o, r + 1),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{ClaudeKind, Placement, ProcessInfo};

    fn found(pid: u32, uid: u32, start_time: u64, name: &str) -> Found {
        Found {
            info: ProcessInfo {
                pid,
                uid,
                start_time,
                ..ProcessInfo::default()
            },
            kind: ClaudeKind::Native,
            instance: InstanceId::rule(name),
            release: None,
            placement: Placement::Unsupervised,
            exe_id: None,
        }
    }

    #[test]
    fn one_entry_per_pid_with_its_standing() {
        let mut t = PidTable::default();
        t.insert(found(10, 1000, 5, "writer"), Standing::Watched);
        t.insert(found(11, 1001, 6, "writer"), Standing::Refused);
        t.insert(found(12, 0, 7, "other"), Standing::Outside);
        assert_eq!(t.counts(), (1, 1, 1));
        // Discovery sees every process; the core acts only on watched ones.
        assert!(t.get(11).is_some() && t.watched(11).is_none());
        assert!(t.get(12).is_some() && t.watched(12).is_none());
        assert_eq!(t.watched_pids().collect::<Vec<_>>(), [10]);
        let writer = InstanceId::rule("writer");
        assert_eq!(t.uids_of(&writer).collect::<Vec<_>>(), [1000, 1001]);
        // A pid reused is a new process: not current.
        assert!(t.is_current(&found(10, 1000, 5, "writer")));
        assert!(!t.is_current(&found(10, 1000, 9, "writer")));
        assert!(!t.is_current(&found(11, 1001, 6, "writer")));
        // Entering a pid again replaces its entry.
        t.insert(found(10, 1000, 9, "reviewer"), Standing::Watched);
        assert_eq!(t.counts(), (1, 1, 1));
        assert_eq!(t.get(10).unwrap().instance, InstanceId::rule("reviewer"));
        assert_eq!(t.remove(10).map(|(_, s)| s), Some(Standing::Watched));
        assert_eq!(t.counts(), (0, 1, 1));
    }
}
