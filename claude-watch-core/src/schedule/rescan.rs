//! When a script instance's mapped files are looked at again: the interpreter maps its TLS
//! library (a distro node's `libssl.so.3`) only after the exec, so a script found is looked at
//! [`RESCAN_AFTER`] after it was found, the last look marked final (its failure is said).

use std::time::Duration;

use super::nanos;
use crate::time::MonoNs;

/// When a script instance's files are looked at again, after it was found.
pub const RESCAN_AFTER: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// The script instances to look at again: pid, start time (a pid reused is another process),
/// when the next look is due, and how many were done.
#[derive(Debug, Default)]
pub struct Rescans {
    due: Vec<(u32, u64, MonoNs, usize)>,
}

impl Rescans {
    /// Script instance `pid` (started at `start_time`) was found at `now`.
    pub fn push(&mut self, pid: u32, start_time: u64, now: MonoNs) {
        let at = now.saturating_add(nanos(RESCAN_AFTER[0]));
        self.due.push((pid, start_time, at, 0));
    }

    /// The processes due for a look at `now`, with whether it is the last one; a process
    /// for which `current(pid, start_time)` is false (exited, pid reused) is dropped.
    pub fn due(&mut self, now: MonoNs, current: impl Fn(u32, u64) -> bool) -> Vec<(u32, bool)> {
        let mut due = Vec::new();
        self.due.retain_mut(|(pid, start_time, at, done)| {
            if !current(*pid, *start_time) {
                return false;
            }
            if *at > now {
                return true;
            }
            *done += 1;
            let last = *done >= RESCAN_AFTER.len();
            due.push((*pid, last));
            if let Some(next) = RESCAN_AFTER.get(*done) {
                *at = now.saturating_add(nanos(next.saturating_sub(RESCAN_AFTER[*done - 1])));
            }
            !last
        });
        due
    }
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
        assert!(r.due(3999 * MS, live).is_empty());
        assert_eq!(r.due(4000 * MS, live), vec![(7, true)]);
        assert!(
            r.due(u64::MAX, live).is_empty(),
            "the last look was the last"
        );
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
        assert!(r.due(10_000 * MS, |_, start| start == 2).is_empty());
        assert!(r.due(10_000 * MS, |_, _| true).is_empty(), "both dropped");
    }
}
