//! The `episodes` report: statistics over journalled episodes, in the seed article's terms
//! (windows and windows per day, duration median / p90 / max, self-recoveries without a restart,
//! idle-wake versus mid-use episodes and their morning share, request ids for tracing).
//!
//! Pure: the caller passes the episodes, "now", and the local UTC offset for an instant.
//!
//! Definitions:
//! - an episode is in the report when its first 401 is at or after `since`;
//! - days = (now − start) / 24 h with start = `since`, or the first episode's first 401 when no
//!   `since` is given, and at least 1 day; per day = windows / days;
//! - durations (first 401 to end) are over closed episodes only; percentiles are nearest-rank;
//! - idle-wake: idle before the first 401 longer than 1 h; mid-use: 1 h or less; episodes with
//!   unknown idle time (the daemon saw no earlier exchange) are counted apart;
//! - morning: the first 401 falls in local time 05:00 to 11:59.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::detect::{Episode, EpisodeEnd};

/// Errors of the report's inputs.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// `--since` was neither RFC 3339 nor a relative duration like `24h`.
    #[error(
        "cannot read time {input:?}: expected RFC 3339 (2026-06-13T00:00:00Z) or a duration like 90m, 24h, 7d"
    )]
    Since {
        /// What was given.
        input: String,
    },
}

/// Idle time above which an episode is an idle-wake episode: 1 h.
pub const IDLE_WAKE_MS: u64 = 3_600_000;
/// Local hours counted as morning: `[5, 12)`.
pub const MORNING_HOURS: std::ops::Range<u32> = 5..12;

const DAY_MS: u64 = 86_400_000;

/// Duration statistics in ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DurationStats {
    /// Closed episodes the statistics are over.
    pub closed: usize,
    /// Median (nearest rank).
    pub median_ms: Option<u64>,
    /// 90th percentile (nearest rank).
    pub p90_ms: Option<u64>,
    /// Longest.
    pub max_ms: Option<u64>,
}

/// A group of episodes by idle time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IdleGroup {
    /// Episodes in the group.
    pub episodes: usize,
    /// Of which started in the morning.
    pub morning: usize,
    /// `morning / episodes`, when there are episodes.
    pub morning_share: Option<f64>,
}

/// How the episodes ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ends {
    /// Recovered on their own, without any restart.
    pub self_recovered: usize,
    /// Recovered after a restart, confirmed by the new process's own answer.
    pub recovered_after_restart: usize,
    /// The process exited while latched.
    pub process_exited: usize,
    /// Restarts gave up.
    pub escalated: usize,
    /// Not ended.
    pub still_open: usize,
}

/// One episode's line in the report, for tracing upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EpisodeLine {
    /// Episode id.
    pub id: String,
    /// Instance.
    pub instance: String,
    /// First 401, RFC 3339 in local time.
    pub started: String,
    /// Duration in ms.
    pub duration_ms: u64,
    /// 401 answers.
    pub count_401: u64,
    /// How it ended.
    pub end: EpisodeEnd,
    /// Restarts attempted.
    pub restarts: u32,
    /// Idle time before, ms.
    pub idle_before_ms: Option<u64>,
    /// Request ids (first and last ones).
    pub request_ids: Vec<String>,
}

/// The report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Start of the period (ms since epoch), when given.
    pub since_ms: Option<u64>,
    /// When the report was made (ms since epoch).
    pub now_ms: u64,
    /// Number of 401 windows (episodes).
    pub windows: usize,
    /// Days covered.
    pub days: f64,
    /// Windows per day.
    pub per_day: f64,
    /// Windows per local calendar day (`YYYY-MM-DD`).
    pub by_day: BTreeMap<String, usize>,
    /// Durations.
    pub duration: DurationStats,
    /// Endings.
    pub ends: Ends,
    /// Episodes that ended with no restart at all (self-recovered).
    pub self_recovered_without_restart: usize,
    /// Idle more than 1 h before the first 401.
    pub idle_wake: IdleGroup,
    /// Idle 1 h or less.
    pub mid_use: IdleGroup,
    /// Idle time unknown.
    pub idle_unknown: usize,
    /// Every episode, oldest first.
    pub episodes: Vec<EpisodeLine>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "small counts"
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn share(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Builds the report. `utc_offset_s(ms)` gives the local offset from UTC at an instant.
pub fn build(
    episodes: &[Episode],
    since_ms: Option<u64>,
    now_ms: u64,
    utc_offset_s: impl Fn(u64) -> i64,
) -> Report {
    let eps: Vec<&Episode> = episodes
        .iter()
        .filter(|e| since_ms.is_none_or(|s| e.first_401_ms >= s))
        .collect();
    let start = since_ms
        .or_else(|| eps.iter().map(|e| e.first_401_ms).min())
        .unwrap_or(now_ms);
    #[expect(clippy::cast_precision_loss, reason = "ms spans far below 2^52")]
    let days = (now_ms.saturating_sub(start) as f64 / DAY_MS as f64).max(1.0);
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let per_day = eps.len() as f64 / days;

    let mut durations: Vec<u64> = eps
        .iter()
        .filter(|e| e.is_closed())
        .map(|e| e.duration_ms())
        .collect();
    durations.sort_unstable();
    let duration = DurationStats {
        closed: durations.len(),
        median_ms: percentile(&durations, 0.5),
        p90_ms: percentile(&durations, 0.9),
        max_ms: durations.last().copied(),
    };

    let mut ends = Ends::default();
    let (mut idle_wake, mut mid_use, mut idle_unknown) =
        (IdleGroup::default(), IdleGroup::default(), 0);
    let mut by_day = BTreeMap::new();
    let mut lines = Vec::new();
    for e in &eps {
        match e.end {
            EpisodeEnd::SelfRecovered => ends.self_recovered += 1,
            EpisodeEnd::RecoveredAfterRestart => ends.recovered_after_restart += 1,
            EpisodeEnd::ProcessExited => ends.process_exited += 1,
            EpisodeEnd::Escalated => ends.escalated += 1,
            EpisodeEnd::StillOpen => ends.still_open += 1,
        }
        let local = local_time(e.first_401_ms, utc_offset_s(e.first_401_ms));
        *by_day.entry(local.date()).or_insert(0) += 1;
        let group = match e.idle_before_ms {
            Some(idle) if idle > IDLE_WAKE_MS => &mut idle_wake,
            Some(_) => &mut mid_use,
            None => {
                idle_unknown += 1;
                lines.push(line(e, &local));
                continue;
            }
        };
        group.episodes += 1;
        if MORNING_HOURS.contains(&local.hour) {
            group.morning += 1;
        }
        lines.push(line(e, &local));
    }
    for g in [&mut idle_wake, &mut mid_use] {
        g.morning_share = share(g.morning, g.episodes);
    }
    Report {
        since_ms,
        now_ms,
        windows: eps.len(),
        days,
        per_day,
        by_day,
        duration,
        self_recovered_without_restart: eps
            .iter()
            .filter(|e| e.end == EpisodeEnd::SelfRecovered && e.restarts == 0)
            .count(),
        ends,
        idle_wake,
        mid_use,
        idle_unknown,
        episodes: lines,
    }
}

fn line(e: &Episode, local: &LocalTime) -> EpisodeLine {
    EpisodeLine {
        id: e.id.clone(),
        instance: e.instance.clone(),
        started: local.rfc3339(),
        duration_ms: e.duration_ms(),
        count_401: e.count_401,
        end: e.end,
        restarts: e.restarts,
        idle_before_ms: e.idle_before_ms,
        request_ids: e.request_ids().into_iter().map(str::to_owned).collect(),
    }
}

/// A civil time with its UTC offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    /// Year.
    pub year: i64,
    /// Month 1..=12.
    pub month: u32,
    /// Day 1..=31.
    pub day: u32,
    /// Hour 0..=23.
    pub hour: u32,
    /// Minute.
    pub minute: u32,
    /// Second.
    pub second: u32,
    /// Offset from UTC in seconds.
    pub offset_s: i64,
}

impl LocalTime {
    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// RFC 3339 with the offset (`Z` for UTC).
    pub fn rfc3339(&self) -> String {
        let off = if self.offset_s == 0 {
            "Z".to_owned()
        } else {
            let a = self.offset_s.abs();
            format!(
                "{}{:02}:{:02}",
                if self.offset_s < 0 { '-' } else { '+' },
                a / 3600,
                a % 3600 / 60
            )
        };
        format!(
            "{}T{:02}:{:02}:{:02}{off}",
            self.date(),
            self.hour,
            self.minute,
            self.second
        )
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "bounded by the algorithm"
)]
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// The local civil time of `ms` (since epoch) at UTC offset `offset_s`.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "bounded values"
)]
pub fn local_time(ms: u64, offset_s: i64) -> LocalTime {
    let secs = (ms / 1000) as i64 + offset_s;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    LocalTime {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
        offset_s,
    }
}

/// Parses RFC 3339 (`2026-06-13T01:52:00Z`, `2026-06-13 01:52:00.5-05:00`) into ms since epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if s.as_bytes().get(4) != Some(&b'-')
        || s.as_bytes().get(7) != Some(&b'-')
        || !matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' '))
        || s.as_bytes().get(13) != Some(&b':')
        || s.as_bytes().get(16) != Some(&b':')
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac_ms = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &f[..digits.min(3)]);
        frac_ms = padded.parse().ok()?;
        rest = &f[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let hh: i64 = o[1..3].parse().ok()?;
            let mm: i64 = o[4..6].parse().ok()?;
            let v = hh * 3600 + mm * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "validated ranges"
    )]
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    u64::try_from(secs * 1000 + frac_ms).ok()
}

/// Parses `--since`: RFC 3339, or a duration before `now_ms` such as `30m`, `24h`, `7d`, `2w`,
/// `45s`.
pub fn parse_since(input: &str, now_ms: u64) -> Result<u64, ReportError> {
    let err = || ReportError::Since {
        input: input.to_owned(),
    };
    if let Some(ms) = parse_rfc3339(input) {
        return Ok(ms);
    }
    let t = input.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let n: u64 = t[..split].parse().map_err(|_| err())?;
    let unit_ms = match &t[split..] {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        _ => return Err(err()),
    };
    Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)))
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{}s", s, ms % 1000 / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), human_ms)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{:.0}%", x * 100.0))
}

/// The report as text for an operator (and to paste upstream).
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "401 latch episodes");
    let _ = writeln!(
        o,
        "  windows:           {} over {:.1} days ({:.2} per day)",
        r.windows, r.days, r.per_day
    );
    for (day, n) in &r.by_day {
        let _ = writeln!(o, "    {day}: {n}");
    }
    let d = &r.duration;
    let _ = writeln!(
        o,
        "  duration (closed {}): median {}, p90 {}, max {}",
        d.closed,
        opt_ms(d.median_ms),
        opt_ms(d.p90_ms),
        opt_ms(d.max_ms)
    );
    let e = &r.ends;
    let _ = writeln!(
        o,
        "  ended: self-recovered without restart {}, recovered after restart (confirmed) {}, process exited {}, escalated {}, still open {}",
        r.self_recovered_without_restart,
        e.recovered_after_restart,
        e.process_exited,
        e.escalated,
        e.still_open
    );
    let _ = writeln!(
        o,
        "  idle-wake (>1h idle): {} episodes, {} in the morning (05:00-12:00 local, {})",
        r.idle_wake.episodes,
        r.idle_wake.morning,
        pct(r.idle_wake.morning_share)
    );
    let _ = writeln!(
        o,
        "  mid-use (<=1h idle):  {} episodes, {} in the morning ({})",
        r.mid_use.episodes,
        r.mid_use.morning,
        pct(r.mid_use.morning_share)
    );
    if r.idle_unknown > 0 {
        let _ = writeln!(o, "  idle unknown:         {}", r.idle_unknown);
    }
    if !r.episodes.is_empty() {
        let _ = writeln!(o, "\nepisodes (request ids for tracing):");
    }
    for l in &r.episodes {
        let _ = writeln!(
            o,
            "  {} {} {} 401s={} restarts={} idle={} ended={}",
            l.started,
            l.instance,
            human_ms(l.duration_ms),
            l.count_401,
            l.restarts,
            opt_ms(l.idle_before_ms),
            serde_json::to_value(l.end)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
        if !l.request_ids.is_empty() {
            let _ = writeln!(o, "    {}", l.request_ids.join(" "));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    /// 2026-06-28T00:00:00Z.
    const DAY0: u64 = 1_782_604_800_000;

    fn ep(
        start_ms: u64,
        dur_ms: u64,
        idle: Option<u64>,
        end: EpisodeEnd,
        restarts: u32,
    ) -> Episode {
        Episode {
            id: format!("a@{start_ms}"),
            instance: "a.service".into(),
            unit: Some("a.service".into()),
            pids: vec![1],
            session_ids: vec![],
            models: vec![],
            first_401_ms: start_ms,
            last_401_ms: start_ms + dur_ms,
            first_401_mono_ns: 0,
            last_401_mono_ns: 0,
            count_401: 3,
            first_request_ids: vec![format!("req_{start_ms}_a"), format!("req_{start_ms}_b")],
            last_request_ids: vec![format!("req_{start_ms}_b"), format!("req_{start_ms}_c")],
            idle_before_ms: idle,
            restarts,
            end,
            ended_ms: (end != EpisodeEnd::StillOpen).then_some(start_ms + dur_ms),
            time_to_recovery_ms: None,
        }
    }

    fn sample() -> Vec<Episode> {
        use EpisodeEnd::*;
        vec![
            ep(DAY0 + 6 * H, 10_000, Some(3 * H), RecoveredAfterRestart, 1), // idle-wake, morning
            ep(DAY0 + 7 * H, 20_000, Some(2 * H), SelfRecovered, 0),         // idle-wake, morning
            ep(DAY0 + 15 * H, 30_000, Some(5 * H), Escalated, 3),            // idle-wake, afternoon
            ep(
                DAY0 + 16 * H,
                40_000,
                Some(60_000),
                RecoveredAfterRestart,
                1,
            ), // mid-use
            ep(DAY0 + 24 * H + 13 * H, 50_000, Some(H), ProcessExited, 0),   // mid-use (= 1 h)
            ep(DAY0 + 24 * H + 14 * H, 7_000_000, None, StillOpen, 0),       // unknown, open
        ]
    }

    #[test]
    fn statistics_over_constructed_episodes() {
        let r = build(&sample(), None, DAY0 + 48 * H, |_| 0);
        assert_eq!(r.windows, 6);
        assert!((r.days - 42.0 / 24.0).abs() < 1e-9, "days {}", r.days);
        assert!((r.per_day - 6.0 / (42.0 / 24.0)).abs() < 1e-9);
        assert_eq!(r.by_day.get("2026-06-28"), Some(&4));
        assert_eq!(r.by_day.get("2026-06-29"), Some(&2));
        assert_eq!(r.duration.closed, 5);
        assert_eq!(r.duration.median_ms, Some(30_000));
        assert_eq!(r.duration.p90_ms, Some(50_000));
        assert_eq!(
            r.duration.max_ms,
            Some(50_000),
            "the open episode is not in durations"
        );
        assert_eq!(r.self_recovered_without_restart, 1);
        assert_eq!(
            r.ends,
            Ends {
                self_recovered: 1,
                recovered_after_restart: 2,
                process_exited: 1,
                escalated: 1,
                still_open: 1
            }
        );
        assert_eq!(
            r.idle_wake,
            IdleGroup {
                episodes: 3,
                morning: 2,
                morning_share: Some(2.0 / 3.0)
            }
        );
        assert_eq!(
            r.mid_use,
            IdleGroup {
                episodes: 2,
                morning: 0,
                morning_share: Some(0.0)
            }
        );
        assert_eq!(r.idle_unknown, 1);
        assert_eq!(
            r.episodes[0].request_ids,
            [
                format!("req_{}_a", DAY0 + 6 * H),
                format!("req_{}_b", DAY0 + 6 * H),
                format!("req_{}_c", DAY0 + 6 * H)
            ]
        );
        assert_eq!(r.episodes[0].started, "2026-06-28T06:00:00Z");
    }

    #[test]
    fn morning_is_local_time() {
        // 15:00 UTC is 10:00 at UTC-5: the afternoon idle-wake episode becomes a morning one.
        let r = build(&sample(), None, DAY0 + 48 * H, |_| -5 * 3600);
        assert_eq!(
            r.idle_wake.morning, 1,
            "06:00Z and 07:00Z are 01:00/02:00 local; 15:00Z is 10:00"
        );
        assert_eq!(
            r.mid_use.morning, 2,
            "16:00Z = 11:00 local, 13:00Z = 08:00 local"
        );
        assert_eq!(r.episodes[2].started, "2026-06-28T10:00:00-05:00");
    }

    #[test]
    fn since_filters_and_sets_the_period() {
        let r = build(&sample(), Some(DAY0 + 24 * H), DAY0 + 48 * H, |_| 0);
        assert_eq!(r.windows, 2);
        assert!((r.days - 1.0).abs() < 1e-9);
        assert_eq!(r.duration.closed, 1);
        let empty = build(&[], None, DAY0, |_| 0);
        assert_eq!(empty.windows, 0);
        assert_eq!(empty.duration.median_ms, None);
        assert_eq!(empty.idle_wake.morning_share, None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 0.5), Some(5));
        assert_eq!(percentile(&v, 0.9), Some(9));
        assert_eq!(percentile(&[7], 0.9), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn since_parses_rfc3339_and_relative() {
        assert_eq!(parse_rfc3339("2026-06-28T00:00:00Z"), Some(DAY0));
        assert_eq!(parse_rfc3339("2026-06-27T19:00:00-05:00"), Some(DAY0));
        assert_eq!(
            parse_rfc3339("2026-06-28 00:00:01.25+00:00"),
            Some(DAY0 + 1250)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-06-28"), None);
        let now = DAY0;
        assert_eq!(parse_since("24h", now).unwrap(), DAY0 - 24 * H);
        assert_eq!(parse_since("7d", now).unwrap(), DAY0 - 7 * 24 * H);
        assert_eq!(parse_since("90m", now).unwrap(), DAY0 - 90 * 60_000);
        assert!(matches!(
            parse_since("yesterday", now),
            Err(ReportError::Since { .. })
        ));
        assert!(parse_since("12x", now).is_err());
        assert!(parse_since("h", now).is_err());
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1000, 0, 59, 365, 11_016, 20_632, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(local_time(DAY0, 0).date(), "2026-06-28");
    }

    #[test]
    fn human_report_names_the_numbers() {
        let text = render(&build(&sample(), None, DAY0 + 48 * H, |_| 0));
        assert!(
            text.contains("windows:           6 over 1.8 days"),
            "{text}"
        );
        assert!(
            text.contains("median 30.0s, p90 50.0s, max 50.0s"),
            "{text}"
        );
        assert!(text.contains("self-recovered without restart 1"), "{text}");
        assert!(
            text.contains("idle-wake (>1h idle): 3 episodes, 2 in the morning"),
            "{text}"
        );
        assert!(text.contains(&format!("req_{}_c", DAY0 + 6 * H)), "{text}");
    }
}
