//! Looks at processes' files waiting for a thread. At most [`WORKERS`] run at once on blocking
//! threads (the locator reads one file at a time anyway); the rest wait here, one entry per
//! process, in a queue per user served in turn, so one user starting many processes (each a
//! file to read, up to the locator's budget) delays another user's next look by at most one of
//! theirs. A process that has exited (or whose pid was reused) by its turn is skipped, and one
//! that exits while it waits is forgotten at once.
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

/// The waiting looks: by pid (a live pid is one process; a repeat is found without a scan,
/// even when a user starts thousands of processes), each user's pids in order, and the users
/// with looks waiting in the order of their turns; and how many looks run.
#[derive(Debug, Default)]
pub(super) struct LocateQueue {
    waiting: HashMap<u32, Look>,
    /// Per uid, its pids in order (a pid whose look was forgotten stays until its turn, and is
    /// passed over).
    queues: HashMap<u32, VecDeque<u32>>,
    /// The uids of `queues`, each once, the next to be served first.
    turns: VecDeque<u32>,
    running: usize,
}

impl LocateQueue {
    /// Queues a look at `found`'s files, in the queue of the user running it. A process
    /// already waiting keeps its place, with the newer `found`; the look is the last if either
    /// says so. A pid waiting for another process (reused) keeps its place for the new one.
    pub fn push(&mut self, found: Found, last: bool) {
        let (pid, uid) = (found.info.pid, found.info.uid);
        let enqueue = match self.waiting.entry(pid) {
            Entry::Occupied(mut waiting) => {
                let waiting = waiting.get_mut();
                let same = waiting.found.info.start_time == found.info.start_time;
                // A set-uid exec (same process, another user) waits in its new user's queue.
                let moved = waiting.found.info.uid != uid;
                waiting.last = last || (same && waiting.last);
                waiting.found = found;
                moved
            }
            Entry::Vacant(slot) => {
                slot.insert(Look { found, last });
                true
            }
        };
        if enqueue {
            self.queues
                .entry(uid)
                .or_insert_with(|| {
                    self.turns.push_back(uid);
                    VecDeque::new()
                })
                .push_back(pid);
        }
    }

    /// Process `pid` exited: its waiting look, if any, is dropped.
    pub fn forget(&mut self, pid: u32) {
        self.waiting.remove(&pid);
    }

    /// The next look to start when a worker is free (counted running until
    /// [`finished`](Self::finished)): the oldest of the user whose turn it is; looks for which
    /// `current` is false are dropped.
    pub fn next(&mut self, current: impl Fn(&Found) -> bool) -> Option<Look> {
        if self.running >= WORKERS {
            return None;
        }
        let mut next = None;
        while next.is_none() {
            let Some(uid) = self.turns.pop_front() else {
                break;
            };
            let Some(queue) = self.queues.get_mut(&uid) else {
                continue;
            };
            while let Some(pid) = queue.pop_front() {
                // An entry whose look is gone (forgotten) or is now another user's is passed.
                let Entry::Occupied(entry) = self.waiting.entry(pid) else {
                    continue;
                };
                if entry.get().found.info.uid != uid {
                    continue;
                }
                let look = entry.remove();
                if current(&look.found) {
                    next = Some(look);
                    break;
                }
            }
            if queue.is_empty() {
                self.queues.remove(&uid);
            } else {
                self.turns.push_back(uid);
            }
        }
        if self.waiting.is_empty()
            && self.turns.is_empty()
            && self.waiting.capacity() > IDLE_CAPACITY
        {
            // A burst (a fleet coming up) queued a thousand: that room is not kept.
            *self = Self {
                running: self.running,
                ..Self::default()
            };
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
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{ClaudeKind, InstanceId, Placement, ProcessInfo};

    fn found(pid: u32, start_time: u64) -> Found {
        found_as(pid, start_time, 1000)
    }

    fn found_as(pid: u32, start_time: u64, uid: u32) -> Found {
        Found {
            info: ProcessInfo {
                pid,
                start_time,
                uid,
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
        // The same pid, another process (the first exited, its pid reused): the new process
        // takes the waiting place, and the old look's `last` does not carry over.
        q.push(found(8, 1), true);
        q.push(found(8, 2), false);
        assert_eq!(q.waiting(), 1);
        let second = q.next(|_| true).expect("a look");
        assert_eq!((second.found.info.start_time, second.last), (2, false));
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
        assert!(q.waiting.capacity() <= IDLE_CAPACITY);
        assert!(q.queues.capacity() <= IDLE_CAPACITY);
        assert!(q.turns.capacity() <= IDLE_CAPACITY);
    }

    /// The pids started, one look finishing before the next is asked for.
    fn served(q: &mut LocateQueue) -> Vec<u32> {
        served_as(q, |f| f.info.pid)
    }

    /// What `what` takes of each look started, one finishing before the next is asked for.
    fn served_as<T>(q: &mut LocateQueue, what: impl Fn(&Found) -> T) -> Vec<T> {
        std::iter::from_fn(|| {
            let look = q.next(|_| true)?;
            q.finished();
            Some(what(&look.found))
        })
        .collect()
    }

    #[test]
    fn users_are_served_in_turn_so_a_flood_of_one_delays_another_by_one_look() {
        let mut q = LocateQueue::default();
        for pid in 1..=6 {
            q.push(found_as(pid, 1, 1001), false);
        }
        q.push(found_as(50, 1, 1002), false);
        q.push(found_as(51, 1, 1002), false);
        q.push(found_as(90, 1, 0), false);
        assert_eq!(served(&mut q), vec![1, 50, 90, 2, 51, 3, 4, 5, 6]);
        // Once all have drained, turns start over with whoever waits, in the order they came.
        q.push(found_as(7, 1, 1001), false);
        q.push(found_as(8, 1, 1001), false);
        q.push(found_as(52, 1, 1002), false);
        assert_eq!(served(&mut q), vec![7, 52, 8]);
    }

    #[test]
    fn a_process_that_exits_while_waiting_is_forgotten_at_once() {
        let mut q = LocateQueue::default();
        for pid in 1..=3 {
            q.push(found(pid, 1), false);
        }
        q.forget(2);
        q.forget(99);
        assert_eq!(q.waiting(), 2);
        assert_eq!(served(&mut q), vec![1, 3]);
        // Its pid, given to a new process, waits again (once).
        q.push(found(2, 5), false);
        q.push(found(2, 5), true);
        let look = q.next(|_| true).expect("the new process");
        assert_eq!((look.found.info.start_time, look.last), (5, true));
        assert!(q.next(|_| true).is_none());
    }

    #[test]
    fn a_set_uid_exec_waits_in_its_new_users_queue_once() {
        let mut q = LocateQueue::default();
        q.push(found_as(1, 1, 1001), false);
        q.push(found_as(2, 1, 1001), false);
        q.push(found_as(3, 1, 1002), false);
        q.push(found_as(1, 1, 0), false);
        assert_eq!(q.waiting(), 3);
        assert_eq!(
            served_as(&mut q, |f| (f.info.pid, f.info.uid)),
            vec![(2, 1001), (3, 1002), (1, 0)]
        );
    }
}
