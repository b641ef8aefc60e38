//! Which process's files are located next, and what a failure to attach means. At most
//! [`WORKERS`] locates run at once on the shell's blocking threads (the locator reads one file at
//! a time anyway); the rest wait here ([`Locate`] requests out, [`Locating::located`] when one
//! is done), one entry per process, in a queue per user served in turn ([`Turns`]), so one user
//! starting many processes (each a file to read, up to the locator's budget) delays another
//! user's next look by at most one of theirs. A process that has exited (or whose pid was
//! reused) by its turn is skipped, and one that exits while it waits is forgotten at once.
//!
//! Without it, a burst of starts or of due rescans (200 agents started together are rescanned
//! together) took one blocking thread each: 130 threads at once were seen in the fleet soak,
//! each waiting on the locator with its allocations live, and every exited thread's stack kept
//! in the C library's cache.
//!
//! While the daemon starts, locates run inline instead (attached by the time it says it
//! watches), for at most [`STARTUP_BUDGET`] in all: files that take long cannot hold readiness
//! back past the supervisor's start timeout.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use super::Turns;
use crate::instance::{ClaudeKind, Found};

/// Locates that run at once: one reads a file, one can read `/proc` meanwhile.
pub const WORKERS: usize = 2;

/// How long locating may hold readiness back at start, for all files together (one file's own
/// budget is the locator's 10 s).
pub const STARTUP_BUDGET: Duration = Duration::from_secs(20);

/// Room kept for waiting looks once none waits.
const IDLE_CAPACITY: usize = 16;

/// A locate to run: the process, and whether it is the last look at its files (a failure is
/// then final, see [`AttachFailure::is_final`]).
#[derive(Debug)]
pub struct Locate {
    /// The process whose TLS functions are located.
    pub found: Found,
    /// The last look at its files.
    pub last: bool,
}

/// Why probes could not be attached for a process, as far as what follows goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachFailure {
    /// The user's share of attachments is used up.
    UserShare,
    /// The attachment cap is reached.
    Cap,
    /// The file could not be located or verified, or the kernel refused.
    Other,
}

impl AttachFailure {
    /// Whether the failure is final, said as a warning: a share or the cap used up, or the
    /// last look at the process's files (a script's TLS library may load later: it is looked at
    /// again, see [`super::rescan`], and only its last failure is said).
    #[must_use]
    pub fn is_final(self, last: bool) -> bool {
        last || self != Self::Other
    }
}

/// The waiting locates: by pid (a live pid is one process; a repeat is found without a scan,
/// even when a user starts thousands of processes), each user's pids in order, and the users
/// with locates waiting in the order of their turns; how many run; and, until the daemon is
/// ready, how much of [`STARTUP_BUDGET`] inline locates took.
#[derive(Debug, Default)]
pub struct Locating {
    waiting: HashMap<u32, Locate>,
    /// Per uid, its pids in order (a pid whose look was forgotten stays until its turn, and is
    /// passed over).
    turns: Turns<u32>,
    running: usize,
    /// Time inline locates took while the daemon started.
    spent: Duration,
    /// The daemon is ready: no locate runs inline.
    ready: bool,
}

impl Locating {
    /// A process's files to locate (`last`: the last look; a process not a script is looked
    /// at once). While the daemon starts and the budget lasts, the locate to run now, inline
    /// (its time told back with [`Self::spent`]); else it is queued for [`Self::next`].
    pub fn request(&mut self, found: Found, last: bool) -> Option<Locate> {
        let last = last || found.kind != ClaudeKind::Script;
        if !self.ready && self.spent < STARTUP_BUDGET {
            return Some(Locate { found, last });
        }
        self.push(found, last);
        None
    }

    /// An inline locate took `took`; `true` when the startup budget ran out with it.
    pub fn spent(&mut self, took: Duration) -> bool {
        let before = self.spent;
        self.spent = before.saturating_add(took);
        !self.ready && before < STARTUP_BUDGET && self.spent >= STARTUP_BUDGET
    }

    /// The daemon is ready: locates wait for a blocking thread from now on.
    pub fn ready(&mut self) {
        self.ready = true;
    }

    /// Queues a look at `found`'s files, in the queue of the user running it. A process
    /// already waiting keeps its place, with the newer `found`; the look is the last if either
    /// says so. A pid waiting for another process (reused) keeps its place for the new one.
    fn push(&mut self, found: Found, last: bool) {
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
                slot.insert(Locate { found, last });
                true
            }
        };
        if enqueue {
            self.turns.push(uid, pid);
        }
    }

    /// Process `pid` exited: its waiting look, if any, is dropped.
    pub fn forget(&mut self, pid: u32) {
        self.waiting.remove(&pid);
    }

    /// The next locate to start when a worker is free (counted running until
    /// [`located`](Self::located)): the oldest of the user whose turn it is; those for which
    /// `current` is false (the process exited, its pid reused) are dropped.
    pub fn next(&mut self, current: impl Fn(&Found) -> bool) -> Option<Locate> {
        if self.running >= WORKERS {
            return None;
        }
        let waiting = &mut self.waiting;
        let next = self.turns.next(
            |_| true,
            |uid, pid| match waiting.entry(pid) {
                // An entry whose look is gone (forgotten) or is now another user's is passed.
                Entry::Occupied(e) if e.get().found.info.uid == uid => {
                    Some(e.remove()).filter(|l| current(&l.found))
                }
                _ => None,
            },
        );
        if self.waiting.is_empty()
            && self.turns.is_empty()
            && self.waiting.capacity() > IDLE_CAPACITY
        {
            // A burst (a fleet coming up) queued a thousand: that room is not kept.
            *self = Self {
                running: self.running,
                spent: self.spent,
                ready: self.ready,
                ..Self::default()
            };
        }
        self.running += usize::from(next.is_some());
        next
    }

    /// A started locate is done (located or not).
    pub fn located(&mut self) {
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
    use crate::instance::{InstanceId, Placement, ProcessInfo};

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
        let mut q = Locating::default();
        for pid in 1..=5 {
            q.push(found(pid, 1), false);
        }
        let started: Vec<u32> = std::iter::from_fn(|| q.next(|_| true))
            .map(|l| l.found.info.pid)
            .collect();
        assert_eq!(started, vec![1, 2]);
        assert_eq!(q.waiting(), 3);
        q.located();
        assert_eq!(q.next(|_| true).map(|l| l.found.info.pid), Some(3));
        assert!(q.next(|_| true).is_none());
    }

    #[test]
    fn a_process_waits_once_and_its_look_is_last_if_any_was() {
        let mut q = Locating::default();
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
        let mut q = Locating::default();
        for pid in 1..=4 {
            q.push(found(pid, 1), false);
        }
        let look = q.next(|f| f.info.pid > 2).expect("a live one");
        assert_eq!(look.found.info.pid, 3);
        assert_eq!(q.waiting(), 1);
        assert_eq!(q.next(|_| false).map(|l| l.found.info.pid), None);
        assert_eq!(q.waiting(), 0);
        q.located();
        q.located();
        q.located();
        q.push(found(9, 1), false);
        assert_eq!(q.next(|_| true).map(|l| l.found.info.pid), Some(9));
    }

    #[test]
    fn the_room_of_a_burst_is_given_back_once_it_has_drained() {
        let mut q = Locating::default();
        for pid in 1..=1000 {
            q.push(found(pid, 1), false);
        }
        while let Some(_look) = q.next(|_| true) {
            q.located();
        }
        assert_eq!(q.waiting(), 0);
        assert!(q.waiting.capacity() <= IDLE_CAPACITY);
        assert!(q.turns.queues.capacity() <= IDLE_CAPACITY);
        assert!(q.turns.order.capacity() <= IDLE_CAPACITY);
    }

    /// The pids started, one look finishing before the next is asked for.
    fn served(q: &mut Locating) -> Vec<u32> {
        served_as(q, |f| f.info.pid)
    }

    /// What `what` takes of each look started, one finishing before the next is asked for.
    fn served_as<T>(q: &mut Locating, what: impl Fn(&Found) -> T) -> Vec<T> {
        std::iter::from_fn(|| {
            let look = q.next(|_| true)?;
            q.located();
            Some(what(&look.found))
        })
        .collect()
    }

    #[test]
    fn users_are_served_in_turn_so_a_flood_of_one_delays_another_by_one_look() {
        let mut q = Locating::default();
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
        let mut q = Locating::default();
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
        let mut q = Locating::default();
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

    #[test]
    fn at_start_locates_run_inline_until_the_budget_is_spent() {
        let mut q = Locating::default();
        let mut native = found(1, 1);
        native.kind = ClaudeKind::Native;
        let now = q.request(native, false).expect("inline at start");
        assert!(now.last, "a process not a script is looked at once");
        assert!(!q.spent(STARTUP_BUDGET / 2));
        assert!(q.request(found(2, 1), false).is_some());
        assert!(q.spent(STARTUP_BUDGET), "ran out with this one");
        assert!(!q.spent(STARTUP_BUDGET), "said once");
        assert!(q.request(found(3, 1), false).is_none(), "queued");
        assert_eq!(q.waiting(), 1);
        let mut q = Locating::default();
        q.ready();
        assert!(q.request(found(4, 1), false).is_none(), "ready: queued");
        assert!(!q.spent(STARTUP_BUDGET));
        assert_eq!(served(&mut q), vec![4]);
    }

    #[test]
    fn a_script_waits_for_its_last_look_unless_it_is_given() {
        let mut q = Locating::default();
        q.ready();
        let script = found(5, 1);
        q.request(script.clone(), false);
        assert!(!q.next(|_| true).expect("a look").last);
        q.located();
        q.request(script, true);
        assert!(q.next(|_| true).expect("a look").last);
    }

    #[test]
    fn an_attach_failure_is_final_for_a_share_the_cap_or_the_last_look() {
        assert!(AttachFailure::UserShare.is_final(false));
        assert!(AttachFailure::Cap.is_final(false));
        assert!(!AttachFailure::Other.is_final(false));
        assert!(AttachFailure::Other.is_final(true));
    }
}
