//! The clocks (the shell owns them): the kernel stamps records with CLOCK_MONOTONIC; people
//! read wall time. How time is written for people is in the core ([`claude_watch_core::time`]).

pub use claude_watch_core::time::*;

/// `clock` now, in nanoseconds.
fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The wall clock as seen from the monotonic one now (CLOCK_REALTIME minus CLOCK_MONOTONIC):
/// what turns monotonic stamps into wall time.
pub fn wall_clock() -> WallClock {
    WallClock {
        wall_minus_mono_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_MONOTONIC),
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn mono_now_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// The wall clock now, in milliseconds since the Unix epoch (0 before 1970).
pub fn wall_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
