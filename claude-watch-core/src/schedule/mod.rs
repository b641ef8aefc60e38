//! When the shell acts, decided on the monotonic clock the shell passes in ([`MonoNs`]): which
//! locate runs next and for whom ([`locate`]), which of discovery's looks ([`look`]), when a
//! script's files are looked at again ([`rescan`]); [`Throttle`], the one throttle of every
//! repeated look and warning (kernel drop counters, the rescan after dropped execs, the engine
//! socket's poll, the coverage audit); who is over a record budget and which of them to say
//! ([`OverBudgetList`]); and users served in turn ([`Turns`]). The shell reads the clock and
//! does the I/O these say is due.

pub mod locate;
pub mod look;
pub mod rescan;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::time::{MonoNs, nanos};

/// How often at most the kernel's drop counters are acted on (processes and users over their
/// record budget read again, each new one said once).
pub const KERNEL_DROPS_EVERY: Duration = Duration::from_secs(1);

/// How often at most every process is looked at again while the kernel drops execs over a
/// user's budget (a Claude Code started meanwhile is found this way, only later).
pub const RESCAN_AFTER_DROPPED_EXECS: Duration = Duration::from_secs(5);

/// How often at most the container engine's socket is looked for (on the daemon's 250 ms
/// tick: every tick, whatever its jitter), so an engine started after the daemon is picked up.
pub const ENGINE_POLL_EVERY: Duration = Duration::from_millis(200);

/// An action taken at most once per period: a warning, a look at a kernel counter, a poll.
/// For a counter, also only when it grew since the last time (or something is still listed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Throttle {
    /// When it last let the action through.
    at: Option<MonoNs>,
    /// The counter's value then.
    seen: u64,
}

impl Throttle {
    /// Whether `every` has passed since the last time (the first time always does); if so,
    /// noted as done at `now`.
    pub fn due(&mut self, now: MonoNs, every: Duration) -> bool {
        if self
            .at
            .is_some_and(|at| now.saturating_sub(at) < nanos(every))
        {
            return false;
        }
        self.at = Some(now);
        true
    }

    /// Whether to act on a counter now, and if so noted as done: `count` grew past what was
    /// seen (or `still` says something is still listed), and `every` has passed since the last
    /// time.
    pub fn grew(&mut self, count: u64, still: bool, now: MonoNs, every: Duration) -> bool {
        if (count <= self.seen && !still) || !self.due(now, every) {
            return false;
        }
        self.seen = count;
        true
    }
}

/// Who is over a record budget (processes or users), as last read from the kernel: read again
/// when the kernel's drop counter grew or some are still listed, at most every
/// [`KERNEL_DROPS_EVERY`]; each one not listed at the last read is said once.
#[derive(Debug, Default)]
pub struct OverBudgetList<T> {
    /// As last read.
    pub listed: Vec<T>,
    look: Throttle,
}

impl<T> OverBudgetList<T> {
    /// Whether to read the list again now, the kernel's drop counter at `dropped`.
    pub fn due(&mut self, dropped: u64, now: MonoNs) -> bool {
        let still = !self.listed.is_empty();
        self.look.grew(dropped, still, now, KERNEL_DROPS_EVERY)
    }

    /// The list read again: those in it not listed before (by `key`), to say.
    pub fn read<K: PartialEq>(&mut self, fresh: Vec<T>, key: impl Fn(&T) -> K) -> Vec<&T> {
        let old = std::mem::replace(&mut self.listed, fresh);
        let new = |f: &&T| !old.iter().any(|o| key(o) == key(f));
        self.listed.iter().filter(new).collect()
    }
}

/// Queues per user served in turn, so that one user's flood delays another user's next item by
/// one of theirs: each user's items in order, and the users with items waiting in the order of
/// their turns.
#[derive(Debug)]
pub struct Turns<T> {
    queues: HashMap<u32, VecDeque<T>>,
    /// The uids of `queues`, each once, the next to be served first.
    order: VecDeque<u32>,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        Self {
            queues: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T> Turns<T> {
    /// Queues `item` last in the queue of `uid`.
    pub fn push(&mut self, uid: u32, item: T) {
        let order = &mut self.order;
        let queue = self.queues.entry(uid).or_insert_with(|| {
            order.push_back(uid);
            VecDeque::new()
        });
        queue.push_back(item);
    }

    /// The next item: of the first user in turn whom `ready` admits (the others keep their
    /// place), the first for which `take` answers (those it does not are dropped); the user
    /// served goes last.
    pub fn next<R>(
        &mut self,
        ready: impl Fn(u32) -> bool,
        mut take: impl FnMut(u32, T) -> Option<R>,
    ) -> Option<R> {
        for _ in 0..self.order.len() {
            let uid = self.order.pop_front()?;
            let queue = self.queues.entry(uid).or_default();
            let mut items = std::iter::from_fn(|| queue.pop_front());
            let taken = ready(uid).then(|| items.find_map(|item| take(uid, item)));
            if queue.is_empty() {
                self.queues.remove(&uid);
            } else {
                self.order.push_back(uid);
            }
            if let Some(taken) = taken.flatten() {
                return Some(taken);
            }
        }
        None
    }

    /// Items waiting in the queue of `uid`.
    pub fn waiting_of(&self, uid: u32) -> usize {
        self.queues.get(&uid).map_or(0, VecDeque::len)
    }

    /// Items waiting in all.
    pub fn waiting(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Whether no item waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: MonoNs = 1_000_000_000;

    #[test]
    fn a_throttle_lets_one_through_per_period_on_the_clock_it_is_given() {
        let mut t = Throttle::default();
        let second = Duration::from_secs(1);
        assert!(t.due(5 * S, second), "the first time");
        assert!(!t.due(5 * S + S / 2, second), "within the period");
        assert!(t.due(6 * S, second), "a period later");
        assert!(!t.due(6 * S, second));
        assert!(t.due(6 * S, Duration::ZERO), "no period: every time");
    }

    #[test]
    fn a_drop_counter_is_acted_on_when_it_grows_at_most_once_per_period() {
        let mut look = Throttle::default();
        let hour = Duration::from_secs(3600);
        assert!(!look.grew(0, false, S, hour), "nothing dropped");
        assert!(look.grew(5, false, S, hour), "grew");
        assert!(
            !look.grew(9, true, 2 * S, hour),
            "grew again, within the period"
        );
        assert!(look.grew(9, false, 3601 * S, hour), "a period later");
        let mut look = Throttle::default();
        assert!(look.grew(5, false, S, Duration::ZERO));
        assert!(!look.grew(5, false, S, Duration::ZERO), "the same count");
        assert!(look.grew(5, true, S, Duration::ZERO), "still listed");
        assert!(look.grew(6, false, S, Duration::ZERO), "grew");
    }

    #[test]
    fn users_take_turns_the_unready_keep_their_place_and_declined_items_go() {
        let mut t = Turns::default();
        for (uid, item) in [(1, 10), (1, 11), (1, 12), (2, 20), (3, 30)] {
            t.push(uid, item);
        }
        let any = |_| true;
        let mut served = Vec::new();
        served.extend(t.next(|uid| uid != 1, |_, i| Some(i)));
        served.extend(t.next(any, |_, i| Some(i)));
        served.extend(t.next(any, |_, i| (i != 10).then_some(i)));
        served.extend(t.next(any, |_, i| Some(i)));
        assert_eq!(served, vec![20, 30, 11, 12]);
        assert!(t.is_empty() && t.next(any, |_, i| Some(i)).is_none());
        t.push(4, 40);
        assert_eq!((t.waiting_of(4), t.waiting_of(1), t.waiting()), (1, 0, 1));
    }

    #[test]
    fn who_is_over_budget_is_read_when_the_counter_grows_and_each_said_once() {
        let mut over = OverBudgetList::<(u32, u64)>::default();
        assert!(!over.due(0, S), "nothing dropped");
        assert!(over.due(10, S));
        assert_eq!(over.read(vec![(7, 10)], |o| o.0), vec![&(7, 10)]);
        assert!(!over.due(20, S + S / 2), "at most once a second");
        assert!(over.due(10, 3 * S), "7 is still listed: read again");
        assert!(over.read(vec![(7, 20)], |o| o.0).is_empty(), "said once");
        assert_eq!(over.read(vec![(8, 5), (7, 20)], |o| o.0), vec![&(8, 5)]);
        assert!(over.read(Vec::new(), |o| o.0).is_empty());
        assert!(over.due(20, 9 * S), "grew");
        assert!(!over.due(20, 11 * S), "none listed, the counter still");
    }
}
