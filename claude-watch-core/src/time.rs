//! Time: the one conversion of a monotonic stamp to wall time ([`WallClock`]), and time for
//! people: instants as RFC 3339 and as civil times at a UTC offset, durations as `3m20s` (the
//! clocks themselves, and the local time zone, are read by the shell, `claude_watch::time`).
//! The calendar is jiff's.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::fmt::strtime::BrokenDownTime;
use jiff::tz::Offset;

/// Monotonic time in nanoseconds (CLOCK_MONOTONIC, the clock the kernel stamps records with and
/// the core's only clock).
pub type MonoNs = u64;

const NS_PER_MS: i128 = 1_000_000;

/// The wall clock as seen from the monotonic one: every monotonic stamp that a journal record,
/// an exchange or the persisted recovery state shows as wall time is converted by this, one
/// way. The shell measures it (`claude_watch::time::wall_clock`) and hands it in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    pub wall_minus_mono_ns: i128,
}

impl WallClock {
    /// The clock on which monotonic `mono` is wall time `wall_ms` (both read at one moment).
    #[must_use]
    pub fn at(wall_ms: u64, mono: MonoNs) -> Self {
        Self {
            wall_minus_mono_ns: i128::from(wall_ms) * NS_PER_MS - i128::from(mono),
        }
    }

    /// Monotonic `mono` as milliseconds since the Unix epoch, rounded down; saturating: 0
    /// before 1970, `u64::MAX` past what a `u64` holds.
    #[must_use]
    pub fn wall_ms(self, mono: MonoNs) -> u64 {
        let ms = (i128::from(mono) + self.wall_minus_mono_ns).max(0) / NS_PER_MS;
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// Wall time `wall_ms` on the monotonic clock; saturating: 0 before the monotonic clock's
    /// start, `MonoNs::MAX` past its end.
    #[must_use]
    pub fn mono(self, wall_ms: u64) -> MonoNs {
        let ns = (i128::from(wall_ms) * NS_PER_MS - self.wall_minus_mono_ns).max(0);
        u64::try_from(ns).unwrap_or(MonoNs::MAX)
    }
}

/// `d` on the monotonic clock, in nanoseconds; `MonoNs::MAX` past what a `u64` holds.
#[must_use]
pub fn nanos(d: std::time::Duration) -> MonoNs {
    u64::try_from(d.as_nanos()).unwrap_or(MonoNs::MAX)
}

/// The instant `ms` milliseconds after the Unix epoch; past jiff's last instant (the end of
/// year 9999), that one.
fn instant(ms: u64) -> Timestamp {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2026-06-28T06:52:01.123Z`.
#[must_use]
pub fn rfc3339_ms(ms: u64) -> String {
    format!("{:.3}", instant(ms))
}

/// Parses RFC 3339 (`2026-06-13T01:52:00Z`, `2026-06-13 01:52:00.5-05:00`; jiff's Temporal
/// grammar, a superset) into ms since the epoch; `None` for anything else or before 1970.
#[must_use]
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t: Timestamp = s.trim().parse().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

/// An offset from UTC in seconds (UTC when beyond ±25:59:59, which no time zone has).
fn offset(offset_s: i64) -> Offset {
    i32::try_from(offset_s)
        .ok()
        .and_then(|s| Offset::from_seconds(s).ok())
        .unwrap_or(Offset::UTC)
}

/// `+hh:mm` / `-hh:mm` of an offset in seconds (`+hh:mm:ss` when it has seconds).
#[must_use]
pub fn offset_text(offset_s: i64) -> String {
    let mut tm = BrokenDownTime::default();
    tm.set_offset(Some(offset(offset_s)));
    tm.to_string("%:z").unwrap_or_default()
}

/// A civil time with its UTC offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    /// The civil date and time.
    pub at: DateTime,
    /// Offset from UTC in seconds.
    pub offset_s: i64,
}

/// The civil time of `ms` (since epoch) at UTC offset `offset_s`.
#[must_use]
pub fn local_time(ms: u64, offset_s: i64) -> LocalTime {
    LocalTime {
        at: offset(offset_s).to_datetime(instant(ms)),
        offset_s,
    }
}

impl LocalTime {
    /// `YYYY-MM-DD`.
    #[must_use]
    pub fn date(&self) -> String {
        self.at.date().to_string()
    }

    /// `YYYY-MM-DD HH:MM:SS±hh:mm`, for people.
    #[must_use]
    pub fn civil(&self) -> String {
        format!(
            "{}{}",
            self.at.strftime("%Y-%m-%d %H:%M:%S"),
            offset_text(self.offset_s)
        )
    }

    /// RFC 3339 to the second, with the offset (`Z` for UTC).
    #[must_use]
    pub fn rfc3339(&self) -> String {
        let off = if self.offset_s == 0 {
            "Z".to_owned()
        } else {
            offset_text(self.offset_s)
        };
        format!("{}{off}", self.at.strftime("%Y-%m-%dT%H:%M:%S"))
    }
}

/// A duration for a person, to the second below an hour and to the minute above: `45s`, `5m`,
/// `3m20s`, `2h`, `1h05m`.
#[must_use]
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-06-28T00:00:00Z.
    const DAY0: u64 = 1_782_604_800_000;

    #[test]
    fn monotonic_to_wall_and_back_saturates_one_way() {
        let boot = WallClock::at(DAY0, 5_000_000_000);
        assert_eq!(boot.wall_ms(5_000_000_000), DAY0);
        assert_eq!(boot.wall_ms(5_001_999_999), DAY0 + 1);
        assert_eq!(boot.wall_ms(0), DAY0 - 5_000);
        assert_eq!(boot.mono(DAY0 + 1), 5_001_000_000);
        assert_eq!(boot.mono(0), 0, "before boot");
        assert_eq!(boot.mono(u64::MAX), MonoNs::MAX);
        let before_1970 = WallClock {
            wall_minus_mono_ns: -1_000_000_000,
        };
        assert_eq!(before_1970.wall_ms(999_999_999), 0);
        assert_eq!(before_1970.wall_ms(1_002_000_000), 2);
        let far = WallClock {
            wall_minus_mono_ns: i128::MAX / 2,
        };
        assert_eq!(far.wall_ms(MonoNs::MAX), u64::MAX);
        assert_eq!(
            WallClock::default().wall_ms(MonoNs::MAX),
            MonoNs::MAX / 1_000_000
        );
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_782_629_521_005), "2026-06-28T06:52:01.005Z");
        assert_eq!(rfc3339_ms(u64::MAX), rfc3339_ms(253_402_207_200_999));
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("2026-06-28T00:00:00Z"), Some(DAY0));
        assert_eq!(parse_rfc3339("2026-06-27T19:00:00-05:00"), Some(DAY0));
        assert_eq!(parse_rfc3339(" 2026-06-28t00:00:00z\n"), Some(DAY0));
        assert_eq!(
            parse_rfc3339("2026-06-28 00:00:01.25+00:00"),
            Some(DAY0 + 1250)
        );
        assert_eq!(
            parse_rfc3339("2026-06-28T00:00:00.999999999Z"),
            Some(DAY0 + 999)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-06-28"), None);
        assert_eq!(parse_rfc3339("2026-06-28T00:00:00"), None);
    }

    #[test]
    fn civil_times_at_an_offset() {
        let t = DAY0 + 6 * 3_600_000 + 52 * 60_000 + 1_005;
        assert_eq!(local_time(t, 0).civil(), "2026-06-28 06:52:01+00:00");
        assert_eq!(local_time(t, 0).rfc3339(), "2026-06-28T06:52:01Z");
        let cdt = local_time(t, -5 * 3600);
        assert_eq!(cdt.date(), "2026-06-28");
        assert_eq!(cdt.civil(), "2026-06-28 01:52:01-05:00");
        assert_eq!(cdt.rfc3339(), "2026-06-28T01:52:01-05:00");
        assert_eq!(local_time(DAY0, -1).date(), "2026-06-27");
        assert_eq!(
            local_time(DAY0, 19_800).rfc3339(),
            "2026-06-28T05:30:00+05:30"
        );
        assert_eq!(offset_text(-5 * 3600), "-05:00");
        assert_eq!(offset_text(0), "+00:00");
        assert_eq!(offset_text(i64::MAX), "+00:00");
    }
}
