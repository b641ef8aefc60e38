//! Which of discovery's looks runs next (the shell's `discover::Look`: a file another user
//! chose, read to judge a process, or a container engine asked for a name), on the shell's
//! blocking threads, never on the event loop.
//!
//! Each user has a share: at most one look of theirs runs at a time, and users are served in
//! turn, so a user whose files answer slowly (a FUSE mount that never answers, a network file
//! system) delays only their own processes. A look that runs over [`BUDGET`] is given up: its
//! worker slot goes back to the others, but its user's next looks wait until the stuck call
//! returns. At most [`MAX_STUCK`] looks may be stuck at once (each holds a blocking thread);
//! beyond that no new look starts until one returns. A user's queue holds at most
//! [`MAX_WAITING_PER_USER`] looks; more are dropped and counted (the user's own processes go
//! unjudged until they exec or send again), and said at most every [`FULL_SAID_EVERY`]. At
//! start, the looks may hold readiness back until a deadline ([`LookQueue::settle`]).

use std::collections::HashSet;
use std::time::Duration;

use super::{Throttle, Turns, nanos};
use crate::time::MonoNs;

/// Looks that run at once (of different users).
pub const WORKERS: usize = 2;
/// How long a look may take before it is given up.
pub const BUDGET: Duration = Duration::from_secs(2);
/// Looks given up and still running (stuck in a system call) at most.
pub const MAX_STUCK: usize = 4;
/// Looks waiting per user at most.
pub const MAX_WAITING_PER_USER: usize = 4096;
/// How long discovery's looks may hold readiness back at start, for all processes together
/// (the processes running then are judged, and attached, before the daemon says it watches).
pub const STARTUP_BUDGET: Duration = Duration::from_secs(10);
/// How often at most the drops of a full queue are said.
pub const FULL_SAID_EVERY: Duration = Duration::from_secs(10);

/// Where the looks of the start stand ([`LookQueue::settle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// None waits or runs: the daemon may say it watches.
    Done,
    /// Some wait or run: wait for their answers until this deadline at most.
    Until(MonoNs),
    /// [`STARTUP_BUDGET`] has passed: the rest are judged after readiness.
    OutOfTime,
}

/// The waiting looks (the shell's, `T`) per user, the users' turns, and what runs.
#[derive(Debug)]
pub struct LookQueue<T> {
    turns: Turns<T>,
    /// Uids with a look running or stuck.
    busy: HashSet<u32>,
    /// Looks running within their budget.
    running: usize,
    /// Looks given up that have not returned.
    stuck: usize,
    /// Looks dropped because their user's queue was full.
    dropped: u64,
    /// When the drops were last said.
    full_said: Throttle,
    /// The end of the start's budget, from the first [`Self::settle`].
    settle_by: Option<MonoNs>,
}

impl<T> Default for LookQueue<T> {
    fn default() -> Self {
        Self {
            turns: Turns::default(),
            busy: HashSet::new(),
            running: 0,
            stuck: 0,
            dropped: 0,
            full_said: Throttle::default(),
            settle_by: None,
        }
    }
}

impl<T> LookQueue<T> {
    /// Queues `look` in the queue of `uid`, whose process it looks at; `false` when that queue
    /// is full (dropped, counted).
    pub fn push(&mut self, uid: u32, look: T) -> bool {
        if self.turns.waiting_of(uid) >= MAX_WAITING_PER_USER {
            self.dropped += 1;
            return false;
        }
        self.turns.push(uid, look);
        true
    }

    /// The next look to start, if a worker is free: the oldest of the next user in turn who
    /// has none running. It counts as running until [`Self::finished`] or [`Self::overran`].
    pub fn start(&mut self) -> Option<T> {
        if self.running >= WORKERS || self.stuck >= MAX_STUCK {
            return None;
        }
        let busy = &self.busy;
        let (uid, look) = self
            .turns
            .next(|uid| !busy.contains(&uid), |uid, look| Some((uid, look)))?;
        self.busy.insert(uid);
        self.running += 1;
        Some(look)
    }

    /// A running look ran over its budget: its worker slot is free, its user (still busy)
    /// waits for it.
    pub fn overran(&mut self) {
        self.running = self.running.saturating_sub(1);
        self.stuck += 1;
    }

    /// A look of `uid` returned (`overran`: after it was given up).
    pub fn finished(&mut self, uid: u32, overran: bool) {
        if overran {
            self.stuck = self.stuck.saturating_sub(1);
        } else {
            self.running = self.running.saturating_sub(1);
        }
        self.busy.remove(&uid);
    }

    /// Looks waiting.
    pub fn waiting(&self) -> usize {
        self.turns.waiting()
    }

    /// Whether nothing waits or runs (stuck looks aside).
    pub fn idle(&self) -> bool {
        self.running == 0 && self.turns.is_empty()
    }

    /// Looks given up that have not returned.
    pub fn stuck(&self) -> usize {
        self.stuck
    }

    /// Looks dropped for a full queue since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether to say the drops now: some since they were last said, which was at least
    /// [`FULL_SAID_EVERY`] ago.
    pub fn say_dropped(&mut self, now: MonoNs) -> bool {
        self.full_said
            .grew(self.dropped, false, now, FULL_SAID_EVERY)
    }

    /// At start, where the looks stand at `now`; the first call starts [`STARTUP_BUDGET`].
    pub fn settle(&mut self, now: MonoNs) -> Settle {
        let by = *self
            .settle_by
            .get_or_insert(now.saturating_add(nanos(STARTUP_BUDGET)));
        if self.idle() {
            Settle::Done
        } else if now >= by {
            Settle::OutOfTime
        } else {
            Settle::Until(by)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues a look at `pid` of `uid` (the shell's look, here the pid and uid).
    fn push(q: &mut LookQueue<(u32, u32)>, pid: u32, uid: u32) -> bool {
        q.push(uid, (pid, uid))
    }

    /// The pids started, each finishing before the next is asked for.
    fn served(q: &mut LookQueue<(u32, u32)>) -> Vec<u32> {
        std::iter::from_fn(|| {
            let (pid, uid) = q.start()?;
            q.finished(uid, false);
            Some(pid)
        })
        .collect()
    }

    #[test]
    fn users_take_turns_and_run_one_look_each() {
        let mut q = LookQueue::<(u32, u32)>::default();
        for pid in 1..=4 {
            push(&mut q, pid, 1001);
        }
        push(&mut q, 50, 0);
        push(&mut q, 51, 0);
        // One of 1001's runs: the next is root's, and then nothing (both users busy).
        let a = q.start().expect("a look");
        let b = q.start().expect("another user's");
        assert_eq!((a.0, b.0), (1, 50));
        assert!(q.start().is_none(), "at most {WORKERS} at once");
        q.finished(a.1, false);
        q.finished(b.1, false);
        assert_eq!(served(&mut q), vec![2, 51, 3, 4]);
        assert!(q.idle());
    }

    #[test]
    fn a_stuck_look_stalls_only_its_user() {
        let mut q = LookQueue::<(u32, u32)>::default();
        push(&mut q, 1, 1001);
        push(&mut q, 2, 1001);
        push(&mut q, 3, 1002);
        let stuck = q.start().expect("the attacker's look");
        assert_eq!(stuck.0, 1);
        q.overran();
        // The worker slot is back; 1001 waits for its stuck look, 1002 is served.
        assert_eq!(served(&mut q), vec![3]);
        push(&mut q, 4, 1002);
        assert_eq!(served(&mut q), vec![4]);
        assert_eq!(q.waiting(), 1);
        // When the stuck call returns, 1001's next look runs.
        q.finished(1001, true);
        assert_eq!(served(&mut q), vec![2]);
        assert_eq!(q.stuck(), 0);
    }

    #[test]
    fn stuck_looks_are_bounded_and_queues_too() {
        let mut q = LookQueue::<(u32, u32)>::default();
        for uid in 0..u32::try_from(MAX_STUCK).unwrap() + 1 {
            push(&mut q, uid + 1, 2000 + uid);
        }
        for _ in 0..MAX_STUCK {
            q.start().expect("a look");
            q.overran();
        }
        assert!(q.start().is_none(), "no thread left for looks");
        q.finished(2000, true);
        assert!(q.start().is_some());
        let mut q = LookQueue::<(u32, u32)>::default();
        for pid in 0..u32::try_from(MAX_WAITING_PER_USER).unwrap() + 10 {
            push(&mut q, pid, 1001);
        }
        assert_eq!(q.waiting(), MAX_WAITING_PER_USER);
        assert_eq!(q.dropped(), 10);
    }

    #[test]
    fn drops_are_said_at_most_every_period_and_only_new_ones() {
        const S: MonoNs = 1_000_000_000;
        let mut q = LookQueue::<(u32, u32)>::default();
        let full = u32::try_from(MAX_WAITING_PER_USER).unwrap();
        for pid in 0..full {
            push(&mut q, pid, 1001);
        }
        assert!(!q.say_dropped(0), "nothing dropped yet");
        assert!(!push(&mut q, full, 1001));
        assert!(q.say_dropped(S), "the first drop is said");
        assert!(!push(&mut q, full + 1, 1001));
        assert!(!q.say_dropped(5 * S), "not again within the period");
        assert!(q.say_dropped(11 * S), "the period passed, one more dropped");
        assert!(!q.say_dropped(30 * S), "none dropped since");
    }

    #[test]
    fn the_start_waits_for_looks_until_its_budget_ends() {
        const S: MonoNs = 1_000_000_000;
        let mut q = LookQueue::<(u32, u32)>::default();
        push(&mut q, 1, 1001);
        push(&mut q, 2, 1002);
        let (_, uid) = q.start().expect("a look");
        let by = 3 * S + nanos(STARTUP_BUDGET);
        assert_eq!(q.settle(3 * S), Settle::Until(by), "the budget starts now");
        q.finished(uid, false);
        assert_eq!(q.settle(by - 1), Settle::Until(by), "one still waits");
        assert_eq!(q.settle(by), Settle::OutOfTime);
        assert_eq!(served(&mut q), vec![2]);
        assert_eq!(q.settle(by + S), Settle::Done);
        let mut q = LookQueue::<(u32, u32)>::default();
        assert_eq!(q.settle(0), Settle::Done, "nothing to look at");
    }
}
