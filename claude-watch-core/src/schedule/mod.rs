//! When the shell acts, decided on the monotonic clock the shell passes in ([`MonoNs`]): which
//! locate runs next and for whom ([`locate`]), which of discovery's looks ([`look`]), when a
//! script's files are looked at again ([`rescan`]), and [`Throttle`], the one throttle of every repeated look and warning (kernel
//! drop counters, the rescan after dropped execs, the engine socket's poll, the coverage
//! audit). The shell reads the clock once and does the I/O these say is due.

pub mod locate;
pub mod look;
pub mod rescan;

use std::time::Duration;

use crate::time::MonoNs;

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
        let every = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
        if self.at.is_some_and(|at| now.saturating_sub(at) < every) {
            return false;
        }
        self.at = Some(now);
        true
    }

    /// Whether to act on a counter now, and if so noted as done: `count` grew past what was
    /// seen (or `still` says something is still listed), and `every` has passed since the last
    /// time.
    pub fn grew(&mut self, count: u64, still: bool, now: MonoNs, every: Duration) -> bool {
        if count <= self.seen && !still || !self.due(now, every) {
            return false;
        }
        self.seen = count;
        true
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
}
