//! The clocks (the shell owns them): the kernel stamps records with CLOCK_MONOTONIC; people
//! read wall time. How time is written for people is in the core ([`claude_watch_core::time`]).

pub use claude_watch_core::time::*;

/// The wall clock as seen from the monotonic one now (CLOCK_REALTIME minus CLOCK_MONOTONIC):
/// what turns monotonic stamps into wall time.
pub fn wall_clock() -> WallClock {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }
    WallClock {
        wall_minus_mono_ns: now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC),
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The wall clock now, in milliseconds since the Unix epoch (0 before 1970).
pub fn wall_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
