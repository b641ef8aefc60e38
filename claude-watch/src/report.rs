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

use crate::detect::{Episode, EpisodeEnd, EpisodeSource};
use crate::journal::ThrottleRecord;
use crate::time::{LocalTime, local_time, offset_text, parse_rfc3339};

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
pub const MORNING_HOURS: std::ops::Range<i8> = 5..12;

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
    /// Restarts gave up (escalated with `give_up`).
    pub escalated: usize,
    /// Not ended.
    pub still_open: usize,
    /// Episodes (of any end) during which the instance was escalated: a notice was sent.
    pub notified: usize,
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
    /// Where the episode comes from (`live` or `transcript`).
    pub source: EpisodeSource,
    /// Claude Code version, when known.
    pub client_version: Option<String>,
    /// Last 401, local time (`YYYY-MM-DD HH:MM:SS±hh:mm`).
    pub last_401: String,
}

/// A request id of an episode with the time it was answered, for tracing upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestIdTime {
    /// The `request-id`.
    pub request_id: String,
    /// Instance.
    pub instance: String,
    /// When it was answered (local, `YYYY-MM-DD HH:MM:SS±hh:mm`): exact for an episode's first
    /// and last 401; for the ones between, the start of the window (see `exact`).
    pub time: String,
    /// Whether `time` is the request's own time rather than its window's start.
    pub exact: bool,
    /// Last 401 of its window, local time.
    pub window_end: String,
}

/// A throttle window in the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThrottleLine {
    /// Instance.
    pub instance: String,
    /// The throttled model.
    pub model: String,
    /// First 429, local time.
    pub started: String,
    /// 429 answers.
    pub count_429: u64,
    /// First 429 to the model's next answer (or to the last 429), ms.
    pub duration_ms: u64,
    /// Whether the model answered again.
    pub ended: bool,
    /// Where it comes from.
    pub source: EpisodeSource,
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
    /// Episodes per source (`live`, `transcript`).
    pub sources: BTreeMap<String, usize>,
    /// Episodes per host (`unknown` for journals written before episodes kept their host).
    pub hosts: BTreeMap<String, usize>,
    /// Episodes per Claude Code version (`unknown` when not known).
    pub versions: BTreeMap<String, usize>,
    /// Request ids of every episode with their local times, oldest first.
    pub request_ids: Vec<RequestIdTime>,
    /// Throttle windows (429) in the period, oldest first.
    pub throttles: Vec<ThrottleLine>,
    /// The host's UTC offset now, in seconds (what "local" means in this report).
    pub utc_offset_s: i64,
}

/// Nearest-rank percentile of sorted values (`None` when there are none).
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
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

/// Builds the report, throttle windows included. `utc_offset_s(ms)` gives the local offset from
/// UTC at an instant.
#[expect(
    clippy::too_many_lines,
    reason = "one pass per statistic, in report order"
)]
pub fn build(
    episodes: &[Episode],
    throttles: &[ThrottleRecord],
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
        ends.notified += usize::from(e.escalated_ms.is_some());
        let local = local_time(e.first_401_ms, utc_offset_s(e.first_401_ms));
        *by_day.entry(local.date()).or_insert(0) += 1;
        lines.push(line(e, &local));
        let group = match e.idle_before_ms {
            Some(idle) if idle > IDLE_WAKE_MS => &mut idle_wake,
            Some(_) => &mut mid_use,
            None => {
                idle_unknown += 1;
                continue;
            }
        };
        group.episodes += 1;
        if MORNING_HOURS.contains(&local.at.hour()) {
            group.morning += 1;
        }
    }
    for g in [&mut idle_wake, &mut mid_use] {
        g.morning_share = share(g.morning, g.episodes);
    }
    let mut sources = BTreeMap::new();
    let mut hosts = BTreeMap::new();
    let mut versions = BTreeMap::new();
    let mut request_ids = Vec::new();
    let known = |v: &Option<String>| v.as_deref().unwrap_or("unknown").to_owned();
    for e in &eps {
        *sources.entry(e.source.as_str().to_owned()).or_insert(0) += 1;
        *hosts.entry(known(&e.host)).or_insert(0) += 1;
        *versions.entry(known(&e.client_version)).or_insert(0) += 1;
        let first = local_time(e.first_401_ms, utc_offset_s(e.first_401_ms)).civil();
        let last = local_time(e.last_401_ms, utc_offset_s(e.last_401_ms)).civil();
        let ids = e.request_ids();
        let n = ids.len();
        for (i, id) in ids.into_iter().enumerate() {
            let (time, exact) = if i == 0
                && e.first_request_ids
                    .first()
                    .is_some_and(|f| f.as_str() == id)
            {
                (first.clone(), true)
            } else if i + 1 == n && e.last_request_ids.last().is_some_and(|l| l.as_str() == id) {
                (last.clone(), true)
            } else {
                (first.clone(), false)
            };
            request_ids.push(RequestIdTime {
                request_id: id.to_owned(),
                instance: e.instance.clone(),
                time,
                exact,
                window_end: last.clone(),
            });
        }
    }
    let throttles = throttles
        .iter()
        .filter(|t| since_ms.is_none_or(|s| t.first_429_ms >= s))
        .map(|t| ThrottleLine {
            instance: t.instance.clone(),
            model: t.model.clone(),
            started: local_time(t.first_429_ms, utc_offset_s(t.first_429_ms)).civil(),
            count_429: t.count_429,
            duration_ms: t
                .ended_ms
                .unwrap_or(t.last_429_ms)
                .saturating_sub(t.first_429_ms),
            ended: t.ended_ms.is_some(),
            source: t.source,
        })
        .collect();
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
        sources,
        hosts,
        versions,
        request_ids,
        throttles,
        utc_offset_s: utc_offset_s(now_ms),
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
        source: e.source,
        client_version: e.client_version.clone(),
        last_401: local_time(e.last_401_ms, local.offset_s).civil(),
    }
}

/// Parses `--since`: RFC 3339, or a duration before `now_ms` such as `30m`, `24h`, `7d`, `2w`,
/// `45s` (read by `humantime`).
pub fn parse_since(input: &str, now_ms: u64) -> Result<u64, ReportError> {
    if let Some(ms) = parse_rfc3339(input) {
        return Ok(ms);
    }
    let ago = humantime::parse_duration(input.trim()).map_err(|_| ReportError::Since {
        input: input.to_owned(),
    })?;
    Ok(now_ms.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)))
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
    if r.hosts.len() > 1 {
        let hosts: Vec<String> = r
            .hosts
            .iter()
            .map(|(h, n)| format!("{} {n}", crate::text::printable(h)))
            .collect();
        let _ = writeln!(
            o,
            "  hosts:             {} ({})",
            r.hosts.len(),
            hosts.join(", ")
        );
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
        "  ended: self-recovered without restart {}, recovered after restart (confirmed) {}, process exited {}, escalated {}, still open {}; escalation notices sent in {}",
        r.self_recovered_without_restart,
        e.recovered_after_restart,
        e.process_exited,
        e.escalated,
        e.still_open,
        e.notified
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
            l.end.as_str()
        );
        if !l.request_ids.is_empty() {
            let _ = writeln!(o, "    {}", l.request_ids.join(" "));
        }
    }
    o
}

/// Replaces instance names with `instance-1`, `instance-2`... (numbered in order of first
/// appearance: episodes by first 401, then throttles, then restarts), the same name everywhere
/// it appears (episode ids included); units are dropped. Returns the mapping.
pub fn redact_instances(
    episodes: &mut [Episode],
    throttles: &mut [ThrottleRecord],
    restarts: &mut [crate::journal::ActionRecord],
) -> BTreeMap<String, String> {
    let mut sorted: Vec<&Episode> = episodes.iter().collect();
    sorted.sort_by_key(|e| (e.first_401_ms, e.id.clone()));
    let names = sorted
        .iter()
        .map(|e| e.instance.clone())
        .chain(throttles.iter().map(|t| t.instance.clone()))
        .chain(restarts.iter().map(|r| r.instance.clone()));
    // Numbered in order of first appearance.
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for n in names {
        let next = format!("instance-{}", map.len() + 1);
        map.entry(n).or_insert(next);
    }
    let by_prefix = |id: &str| -> String {
        let (inst, ms) = id.rsplit_once('@').unwrap_or((id, ""));
        format!(
            "{}@{ms}",
            map.get(inst).map_or("instance-?", String::as_str)
        )
    };
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for e in episodes.iter_mut() {
        let new_id = format!("{}@{}", map[&e.instance], e.first_401_ms);
        ids.insert(std::mem::replace(&mut e.id, new_id.clone()), new_id);
        e.instance = map[&e.instance].clone();
        e.unit = None;
    }
    for t in throttles.iter_mut() {
        t.instance = map[&t.instance].clone();
    }
    for r in restarts.iter_mut() {
        r.instance = map[&r.instance].clone();
        r.episode_id = r
            .episode_id
            .as_deref()
            .map(|id| ids.get(id).cloned().unwrap_or_else(|| by_prefix(id)));
    }
    map
}

/// A Markdown table cell of the report's own text (times): `|` escaped, no line breaks.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// An observed value (a request id, a model, chosen by the process) as a table cell that
/// renders as itself and nothing else: a code span, in which Markdown makes no link, image,
/// emphasis or HTML, fenced by more backticks than any run inside it; `|` escaped for the
/// table (GitHub reads `\|` as `|` inside a code span in a table), control and invisible
/// formatting characters shown escaped ([`crate::text::printable`]).
fn code(s: &str) -> String {
    let s = crate::text::printable(s).replace('|', "\\|");
    if s.is_empty() {
        return "-".to_owned();
    }
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// An observed name (an instance, a version): as itself when it is made only of letters,
/// digits and `.:/+@=-` with no link in it (nothing Markdown reads as syntax), else as a
/// [`code`] span.
fn observed(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:/+@=- ".contains(c))
        && !s.contains("://")
        && !s.to_ascii_lowercase().contains("www.");
    if plain { s.to_owned() } else { code(s) }
}

fn end_name(e: EpisodeEnd) -> &'static str {
    match e {
        EpisodeEnd::StillOpen => "still open",
        EpisodeEnd::SelfRecovered => "self-recovered",
        EpisodeEnd::RecoveredAfterRestart => "recovered after restart",
        EpisodeEnd::ProcessExited => "never (process exited)",
        EpisodeEnd::Escalated => "never (escalated)",
    }
}

/// The report as Markdown, to attach to an upstream issue: windows per day, durations,
/// recoveries by kind, idle-wake versus mid-use with their morning share, Claude Code versions,
/// throttles, every episode, and the request ids with their local times. `zone` names the
/// host's time zone (e.g. `CDT`); the offset is printed with every time.
#[expect(
    clippy::too_many_lines,
    reason = "one section after another, in report order"
)]
pub fn render_markdown(r: &Report, zone: &str) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let offset = offset_text(r.utc_offset_s);
    let _ = writeln!(o, "# Claude Code 401 latch episodes\n");
    let period_start = r
        .since_ms
        .map(|ms| local_time(ms, r.utc_offset_s).date())
        .or_else(|| r.by_day.keys().next().cloned());
    let _ = writeln!(
        o,
        "{} windows of HTTP 401 `authentication_error` over {:.1} days ({:.2} per day){}, made {} \
         by claude-watch {}. Times are the host's local time ({zone}, UTC{offset} now).\n",
        r.windows,
        r.days,
        r.per_day,
        period_start.map_or(String::new(), |d| format!(" since {d}")),
        local_time(r.now_ms, r.utc_offset_s).civil(),
        env!("CARGO_PKG_VERSION"),
    );
    let live = r.sources.get("live").copied().unwrap_or(0);
    let imported = r.sources.get("transcript").copied().unwrap_or(0);
    let _ = writeln!(
        o,
        "Sources: {live} seen live by claude-watch (eBPF, the instance's own requests), \
         {imported} rebuilt from Claude Code's session transcripts.\n"
    );
    let _ = writeln!(o, "## Windows per day\n");
    let _ = writeln!(o, "| day | windows |\n|---|---:|");
    for (day, n) in &r.by_day {
        let _ = writeln!(o, "| {day} | {n} |");
    }
    let _ = writeln!(o, "| **total** | **{}** |\n", r.windows);

    let d = &r.duration;
    let _ = writeln!(o, "## Duration\n");
    let _ = writeln!(
        o,
        "First 401 to the end of the window, over closed episodes.\n\n\
         | closed episodes | median | p90 | max |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} |\n",
        d.closed,
        opt_ms(d.median_ms),
        opt_ms(d.p90_ms),
        opt_ms(d.max_ms)
    );

    let e = &r.ends;
    let _ = writeln!(o, "## Recoveries\n");
    let _ = writeln!(o, "| how the episode ended | episodes |\n|---|---:|");
    for (what, n) in [
        (
            "self-recovered, no restart",
            r.self_recovered_without_restart,
        ),
        ("recovered after a restart", e.recovered_after_restart),
        ("never: the process exited latched", e.process_exited),
        ("never: restarts gave up (escalated, give_up)", e.escalated),
        ("still open", e.still_open),
    ] {
        let _ = writeln!(o, "| {what} | {n} |");
    }
    let _ = writeln!(
        o,
        "\nAn escalation notice (the hook) was sent during {} of them; restarts went on after it \
         unless `give_up` was set.",
        e.notified
    );
    let _ = writeln!(o);

    let _ = writeln!(o, "## Idle-wake vs mid-use\n");
    let _ = writeln!(
        o,
        "Idle time is from the instance's previous API answer to the first 401. Morning is \
         05:00-11:59 local time.\n"
    );
    let _ = writeln!(
        o,
        "| group | episodes | in the morning | morning share |\n|---|---:|---:|---:|"
    );
    for (what, g) in [
        ("idle-wake (idle > 1 h)", &r.idle_wake),
        ("mid-use (idle <= 1 h)", &r.mid_use),
    ] {
        let _ = writeln!(
            o,
            "| {what} | {} | {} | {} |",
            g.episodes,
            g.morning,
            pct(g.morning_share)
        );
    }
    if r.idle_unknown > 0 {
        let _ = writeln!(o, "| idle unknown | {} | - | - |", r.idle_unknown);
    }
    let _ = writeln!(o);

    let _ = writeln!(o, "## Claude Code versions\n");
    let _ = writeln!(o, "| version | episodes |\n|---|---:|");
    for (v, n) in &r.versions {
        let _ = writeln!(o, "| {} | {n} |", observed(v));
    }
    let _ = writeln!(o);

    if !r.throttles.is_empty() {
        let _ = writeln!(o, "## Model throttles (429 `rate_limit_error`)\n");
        let _ = writeln!(
            o,
            "Not latches: a restart does not help them, and they never count toward one.\n"
        );
        let _ = writeln!(
            o,
            "| started | instance | model | 429s | lasted | answered again | source |\n|---|---|---|---:|---:|---|---|"
        );
        for t in &r.throttles {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                t.started,
                observed(&t.instance),
                code(&t.model),
                t.count_429,
                human_ms(t.duration_ms),
                if t.ended { "yes" } else { "no" },
                t.source.as_str()
            );
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## Episodes\n");
    let _ = writeln!(
        o,
        "| started | instance | duration | 401s | restarts | idle before | ended | version | source |\n|---|---|---:|---:|---:|---:|---|---|---|"
    );
    for l in &r.episodes {
        let started = l.started.replacen('T', " ", 1);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&started),
            observed(&l.instance),
            human_ms(l.duration_ms),
            l.count_401,
            l.restarts,
            opt_ms(l.idle_before_ms),
            end_name(l.end),
            observed(l.client_version.as_deref().unwrap_or("-")),
            l.source.as_str()
        );
    }
    let _ = writeln!(o);

    let _ = writeln!(o, "## Request ids\n");
    let _ = writeln!(
        o,
        "Every kept request id of the episodes above (HTTP 401 `authentication_error`, the \
         instance's own requests), for tracing upstream. An episode keeps its first and last \
         {} ids; \"window from\" marks an id answered between its window's first and last 401.\n",
        crate::detect::REQUEST_IDS_KEPT
    );
    let _ = writeln!(
        o,
        "| request id | time ({zone}) | instance |\n|---|---|---|"
    );
    for q in &r.request_ids {
        let time = if q.exact {
            q.time.clone()
        } else {
            format!("window from {} to {}", q.time, q.window_end)
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            code(&q.request_id),
            cell(&time),
            observed(&q.instance)
        );
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
            escalated_ms: None,
            host: None,
            source: crate::detect::EpisodeSource::Live,
            client_version: None,
            not_kept: crate::detect::NotKept::default(),
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
        let r = build(&sample(), &[], None, DAY0 + 48 * H, |_| 0);
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
                still_open: 1,
                notified: 0,
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
        let r = build(&sample(), &[], None, DAY0 + 48 * H, |_| -5 * 3600);
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
        let r = build(&sample(), &[], Some(DAY0 + 24 * H), DAY0 + 48 * H, |_| 0);
        assert_eq!(r.windows, 2);
        assert!((r.days - 1.0).abs() < 1e-9);
        assert_eq!(r.duration.closed, 1);
        let empty = build(&[], &[], None, DAY0, |_| 0);
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
        let now = DAY0;
        assert_eq!(parse_since("2026-06-27T19:00:00-05:00", now).unwrap(), DAY0);
        assert_eq!(parse_since("24h", now).unwrap(), DAY0 - 24 * H);
        assert_eq!(parse_since("7d", now).unwrap(), DAY0 - 7 * 24 * H);
        assert_eq!(parse_since("90m", now).unwrap(), DAY0 - 90 * 60_000);
        assert!(matches!(
            parse_since("yesterday", now),
            Err(ReportError::Since { .. })
        ));
        assert!(parse_since("12x", now).is_err());
        assert!(parse_since("h", now).is_err());
        assert!(parse_since("2026-06-28", now).is_err());
    }

    #[test]
    fn human_report_names_the_numbers() {
        let text = render(&build(&sample(), &[], None, DAY0 + 48 * H, |_| 0));
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

    /// `line` without its code spans (a run of N backticks up to the next run of exactly N),
    /// as CommonMark reads them.
    fn outside_code_spans(line: &str) -> String {
        let b = line.as_bytes();
        let run = |at: usize| b[at..].iter().take_while(|&&c| c == b'`').count();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'`' {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let n = run(i);
            let mut j = i + n;
            let mut end = None;
            while j < b.len() {
                if b[j] == b'`' {
                    let m = run(j);
                    if m == n {
                        end = Some(j + m);
                        break;
                    }
                    j += m;
                } else {
                    j += 1;
                }
            }
            match end {
                Some(end) => i = end,
                None => {
                    out.extend_from_slice(&b[i..i + n]);
                    i += n;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn hostile_values_render_as_themselves_in_markdown_and_on_a_terminal() {
        let mut eps = sample();
        let image = "![](https://attacker.example/pixel.png)";
        let html = "<img src=x onerror=alert(1)>";
        let tick = "a`b``c";
        let bidi = "agent.\u{202E}ecivres";
        eps[0].instance = image.into();
        eps[1].instance = html.into();
        eps[2].client_version = Some("[click](javascript:alert(1))".into());
        eps[3].instance = bidi.into();
        eps[0].first_request_ids = vec![tick.into(), "req_<b>|x</b>".into()];
        let throttle = ThrottleRecord {
            instance: "https://attacker.example".into(),
            session_id: None,
            model: "claude-*opus*\n# forged heading".into(),
            first_429_ms: DAY0 + 6 * H,
            last_429_ms: DAY0 + 6 * H + 1000,
            count_429: 3,
            request_ids: vec![],
            ended_ms: None,
            source: EpisodeSource::Live,
        };
        let r = build(&eps, &[throttle], None, DAY0 + 48 * H, |_| 0);
        let md = render_markdown(&r, "UTC");
        // Each value is inside a code span whose fence is longer than any run of backticks in
        // it (Markdown makes no image, link, HTML or emphasis there), pipes escaped for the
        // table, line breaks and bidi controls shown escaped.
        for shown in [
            format!("`{image}`"),
            format!("`{html}`"),
            "```a`b``c```".to_owned(),
            "`req_<b>\\|x</b>`".to_owned(),
            "`[click](javascript:alert(1))`".to_owned(),
            "`agent.\\u{202e}ecivres`".to_owned(),
            "`https://attacker.example`".to_owned(),
            "`claude-*opus*\\n# forged heading`".to_owned(),
        ] {
            assert!(md.contains(&shown), "{shown} in:\n{md}");
        }
        for line in md.lines() {
            let outside = outside_code_spans(line);
            for raw in ["![", "<img", "<b>", "](", "\u{202E}", "https://"] {
                assert!(!outside.contains(raw), "{raw} outside a code span: {line}");
            }
            assert!(!line.starts_with("# forged"), "{line}");
        }
        // The text report, printed on a terminal, keeps its lines and escapes the rest.
        let text = crate::text::printable_lines(&render(&r)).into_owned();
        assert!(!text.contains('\u{202E}'), "{text}");
    }

    #[test]
    fn markdown_has_the_sections_and_the_request_ids() {
        let mut eps = sample();
        eps[1].source = EpisodeSource::Transcript;
        eps[1].client_version = Some("2.1.197".into());
        eps[0].instance = "a|b".into();
        let r = build(&eps, &[], None, DAY0 + 48 * H, |_| -5 * 3600);
        let md = render_markdown(&r, "CDT");
        for h in [
            "# Claude Code 401 latch episodes",
            "## Windows per day",
            "## Duration",
            "## Recoveries",
            "## Idle-wake vs mid-use",
            "## Claude Code versions",
            "## Episodes",
            "## Request ids",
        ] {
            assert!(md.lines().any(|l| l == h), "{h}: {md}");
        }
        assert!(
            !md.contains("## Model throttles"),
            "no throttles, no section"
        );
        assert!(md.contains("Sources: 5 seen live by claude-watch"), "{md}");
        assert!(
            md.contains("1 rebuilt from Claude Code's session transcripts"),
            "{md}"
        );
        assert!(
            md.contains("| 2.1.197 | 1 |") && md.contains("| unknown | 5 |"),
            "{md}"
        );
        assert!(
            md.contains("| idle-wake (idle > 1 h) | 3 | 1 | 33% |"),
            "{md}"
        );
        assert!(md.contains("a\\|b"), "a pipe in a name is escaped: {md}");
        // The first id at the first 401 (06:00Z = 01:00 at UTC-5), the last at the last 401,
        // the one between marked as within its window.
        let first = format!("| `req_{}_a` | 2026-06-28 01:00:00-05:00 |", DAY0 + 6 * H);
        let last = format!("| `req_{}_c` | 2026-06-28 01:00:10-05:00 |", DAY0 + 6 * H);
        let mid = format!(
            "| `req_{}_b` | window from 2026-06-28 01:00:00-05:00 to 2026-06-28 01:00:10-05:00 |",
            DAY0 + 6 * H
        );
        for row in [&first, &last, &mid] {
            assert!(md.contains(row.as_str()), "{row}\n{md}");
        }
        assert!(md.contains("| request id | time (CDT) | instance |"));
    }

    #[test]
    fn redaction_is_consistent() {
        let mut eps = sample();
        eps[0].instance = "z.service".into();
        eps[0].id = format!("z.service@{}", eps[0].first_401_ms);
        let mut th = vec![ThrottleRecord {
            instance: "y".into(),
            session_id: None,
            model: "m".into(),
            first_429_ms: 0,
            last_429_ms: 0,
            count_429: 1,
            request_ids: vec![],
            ended_ms: None,
            source: EpisodeSource::Live,
        }];
        let mut rs = vec![crate::journal::ActionRecord {
            at_ms: 1,
            instance: "a.service".into(),
            episode_id: Some(eps[1].id.clone()),
            kind: crate::journal::ActionKind::Restart,
            ok: true,
            until_ms: None,
            detail: None,
        }];
        let map = redact_instances(&mut eps, &mut th, &mut rs);
        assert_eq!(map["z.service"], "instance-1");
        assert_eq!(map["a.service"], "instance-2");
        assert_eq!(map["y"], "instance-3");
        assert!(eps[0].id.starts_with("instance-1@"));
        assert!(
            eps[1..]
                .iter()
                .all(|e| e.instance == "instance-2" && e.unit.is_none())
        );
        assert_eq!(rs[0].instance, "instance-2");
        assert_eq!(rs[0].episode_id.as_deref(), Some(eps[1].id.as_str()));
        assert_eq!(th[0].instance, "instance-3");
    }
}
