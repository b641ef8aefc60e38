//! When a script instance's mapped files are looked at again: the interpreter maps its TLS
//! library (a distro node's `libssl.so.3`) only after the exec, so a script found is looked at
//! [`RESCAN_AFTER`] after it was found, the last look marked final (its failure is said).

use std::time::Duration;

use crate::time::MonoNs;

/// When a script instance's files are looked at again, after it was found.
pub const RESCAN_AFTER: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// One process to look at again.
#[derive(Clone, Copy, Debug)]
struct Rescan {
    pid: u32,
    /// The process's start time (a pid reused is another process).
    start_time: u64,
    /// When its next look is due.
    at: MonoNs,
    /// Looks done.
    done: usize,
}

/// The script instances to look at again.
#[derive(Debug, Default)]
pub struct Rescans {
    due: Vec<Rescan>,
}

impl Rescans {
    /// Script instance `pid` (started at `start_time`) was found at `now`.
    pub fn push(&mut self, pid: u32, start_time: u64, now: MonoNs) {
        self.due.push(Rescan {
            pid,
            start_time,
            at: now.saturating_add(nanos(RESCAN_AFTER[0])),
            done: 0,
        });
    }

    /// The processes due for a look at `now`, with whether it is the last one; a process
    /// for which `current(pid, start_time)` is false (exited, pid reused) is dropped.
    pub fn due(&mut self, now: MonoNs, current: impl Fn(u32, u64) -> bool) -> Vec<(u32, bool)> {
        let mut due = Vec::new();
        self.due.retain_mut(|r| {
            if !current(r.pid, r.start_time) {
                return false;
            }
            if r.at > now {
                return true;
            }
            r.done += 1;
            let last = r.done >= RESCAN_AFTER.len();
            due.push((r.pid, last));
            if let Some(next) = RESCAN_AFTER.get(r.done) {
                let gap = next.saturating_sub(RESCAN_AFTER[r.done - 1]);
                r.at = now.saturating_add(nanos(gap));
            }
            !last
        });
        due
    }

    /// Whether process `pid` will be looked at again.
    pub fn pending(&self, pid: u32) -> bool {
        self.due.iter().any(|r| r.pid == pid)
    }
}

fn nanos(d: Duration) -> MonoNs {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: MonoNs = 1_000_000;

    #[test]
    fn a_script_is_looked_at_again_three_times_the_last_marked() {
        let mut r = Rescans::default();
        r.push(7, 1, 1000 * MS);
        let live = |_, _| true;
        assert!(r.due(1299 * MS, live).is_empty());
        assert_eq!(r.due(1300 * MS, live), vec![(7, false)]);
        assert!(r.due(1999 * MS, live).is_empty(), "1 s after it was found");
        assert_eq!(r.due(2000 * MS, live), vec![(7, false)]);
        assert!(r.pending(7));
        assert!(r.due(3999 * MS, live).is_empty());
        assert_eq!(r.due(4000 * MS, live), vec![(7, true)]);
        assert!(!r.pending(7));
        assert!(r.due(u64::MAX, live).is_empty());
    }

    #[test]
    fn a_process_gone_or_its_pid_reused_is_dropped() {
        let mut r = Rescans::default();
        r.push(7, 1, 0);
        r.push(8, 1, 0);
        assert_eq!(
            r.due(300 * MS, |pid, start| pid == 8 && start == 1),
            vec![(8, false)]
        );
        assert!(!r.pending(7));
        assert!(r.due(10_000 * MS, |_, start| start == 2).is_empty());
        assert!(!r.pending(8));
    }
}
