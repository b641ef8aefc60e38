//! Looks at processes' files waiting for a thread. At most [`WORKERS`] run at once on blocking
//! threads (the locator reads one file at a time anyway); the rest wait here, one entry per
//! process, and a process that has exited (or whose pid was reused) by its turn is skipped.
//!
//! Without it, a burst of starts or of due rescans (200 agents started together are rescanned
//! together) took one blocking thread each: 130 threads at once were seen in the fleet soak,
//! each waiting on the locator with its allocations live, and every exited thread's stack kept
//! in the C library's cache.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use crate::discover::Found;

/// Looks that run at once: one reads a file, one can read `/proc` meanwhile.
pub(super) const WORKERS: usize = 2;

/// Room kept for waiting looks once none waits.
const IDLE_CAPACITY: usize = 16;

/// A look to start: the process, and whether it is the last look (a failure is then said).
#[derive(Debug)]
pub(super) struct Look {
    pub found: Found,
    pub last: bool,
}

/// A process: its pid and start time.
type Key = (u32, u64);

fn key(found: &Found) -> Key {
    (found.info.pid, found.info.start_time)
}

/// The waiting looks (in order, each process once: a queue of keys and the looks by key, so a
/// repeat is found without a scan, even when a user starts thousands of processes) and how
/// many run.
#[derive(Debug, Default)]
pub(super) struct LocateQueue {
    order: VecDeque<Key>,
    waiting: HashMap<Key, Look>,
    running: usize,
}

impl LocateQueue {
    /// Queues a look at `found`'s files. A process already waiting keeps its place, with the
    /// newer `found`; the look is the last if either says so.
    pub fn push(&mut self, found: Found, last: bool) {
        match self.waiting.entry(key(&found)) {
            Entry::Occupied(mut waiting) => {
                let waiting = waiting.get_mut();
                waiting.last |= last;
                waiting.found = found;
            }
            Entry::Vacant(slot) => {
                self.order.push_back(*slot.key());
                slot.insert(Look { found, last });
            }
        }
    }

    /// The next look to start when a worker is free (counted running until
    /// [`finished`](Self::finished)); looks for which `current` is false are dropped.
    pub fn next(&mut self, current: impl Fn(&Found) -> bool) -> Option<Look> {
        if self.running >= WORKERS {
            return None;
        }
        let waiting = &mut self.waiting;
        let next = std::iter::from_fn(|| self.order.pop_front())
            .filter_map(|k| waiting.remove(&k))
            .find(|l| current(&l.found));
        if self.order.is_empty() && self.order.capacity() > IDLE_CAPACITY {
            // A burst (a fleet coming up) queued a thousand: that room is not kept.
            self.order = VecDeque::new();
            self.waiting = HashMap::new();
        }
        self.running += usize::from(next.is_some());
        next
    }

    /// A started look is done.
    pub fn finished(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Looks waiting for a worker.
    pub fn waiting(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{ClaudeKind, InstanceId, Placement, ProcessInfo};

    fn found(pid: u32, start_time: u64) -> Found {
        Found {
            info: ProcessInfo {
                pid,
                start_time,
                ..ProcessInfo::default()
            },
            kind: ClaudeKind::Script,
            instance: InstanceId::pid(pid),
            release: None,
            placement: Placement::default(),
            exe_id: None,
        }
    }

    #[test]
    fn at_most_workers_run_and_the_rest_wait_in_order() {
        let mut q = LocateQueue::default();
        for pid in 1..=5 {
            q.push(found(pid, 1), false);
        }
        let started: Vec<u32> = std::iter::from_fn(|| q.next(|_| true))
            .map(|l| l.found.info.pid)
            .collect();
        assert_eq!(started, vec![1, 2]);
        assert_eq!(q.waiting(), 3);
        q.finished();
        assert_eq!(q.next(|_| true).map(|l| l.found.info.pid), Some(3));
        assert!(q.next(|_| true).is_none());
    }

    #[test]
    fn a_process_waits_once_and_its_look_is_last_if_any_was() {
        let mut q = LocateQueue::default();
        q.push(found(7, 1), false);
        q.push(found(8, 1), false);
        q.push(found(7, 1), true);
        q.push(found(7, 1), false);
        assert_eq!(q.waiting(), 2);
        let first = q.next(|_| true).expect("a look");
        assert_eq!((first.found.info.pid, first.last), (7, true));
        // The same pid, another process (reused): waits on its own.
        q.push(found(8, 2), false);
        assert_eq!(q.waiting(), 2);
    }

    #[test]
    fn gone_processes_are_skipped_without_taking_a_worker() {
        let mut q = LocateQueue::default();
        for pid in 1..=4 {
            q.push(found(pid, 1), false);
        }
        let look = q.next(|f| f.info.pid > 2).expect("a live one");
        assert_eq!(look.found.info.pid, 3);
        assert_eq!(q.waiting(), 1);
        assert_eq!(q.next(|_| false).map(|l| l.found.info.pid), None);
        assert_eq!(q.waiting(), 0);
        q.finished();
        q.finished();
        q.finished();
        q.push(found(9, 1), false);
        assert_eq!(q.next(|_| true).map(|l| l.found.info.pid), Some(9));
    }

    #[test]
    fn the_room_of_a_burst_is_given_back_once_it_has_drained() {
        let mut q = LocateQueue::default();
        for pid in 1..=1000 {
            q.push(found(pid, 1), false);
        }
        while let Some(_look) = q.next(|_| true) {
            q.finished();
        }
        assert_eq!(q.waiting(), 0);
        assert!(q.order.capacity() <= IDLE_CAPACITY);
        assert!(q.waiting.capacity() <= IDLE_CAPACITY);
    }
}
