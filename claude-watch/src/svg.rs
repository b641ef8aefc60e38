//! The episode picture: a timeline (one row per instance; latch episodes as bars coloured by how
//! they ended, throttles as thinner bars of their own colour, restarts as ticks) above a
//! windows-per-day histogram. Hand-written SVG 1.1, deterministic for the same input, with a
//! `<title>` on the picture and on every mark for screen readers and tooltips. Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::detect::{Episode, EpisodeEnd};
use crate::journal::{ActionRecord, ThrottleRecord};
use crate::time::{local_time, offset_text};

/// Colour of episodes that healed on their own.
pub const SELF_RECOVERED: &str = "#2e7d32";
/// Colour of episodes a restart healed.
pub const AFTER_RESTART: &str = "#1565c0";
/// Colour of episodes that never recovered (the process exited latched, or restarts gave up).
pub const NEVER: &str = "#c62828";
/// Colour of episodes still open.
pub const STILL_OPEN: &str = "#ef6c00";
/// Colour of model throttles (429).
pub const THROTTLE: &str = "#8e24aa";
/// Colour of restart ticks.
pub const RESTART: &str = "#212121";
/// Colour of the histogram's bars.
pub const HISTOGRAM: &str = "#546e7a";

/// Width of the picture, px.
pub const WIDTH: u32 = 960;
const LABEL_W: f64 = 150.0;
const RIGHT_PAD: f64 = 20.0;
const ROW_H: f64 = 30.0;
const TOP: f64 = 70.0;
/// Height of the windows-per-day histogram (half of it for one or two days).
const HIST_H: f64 = 160.0;
const MIN_BAR_W: f64 = 4.0;

/// What the picture shows.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Latch episodes.
    pub episodes: &'a [Episode],
    /// Throttle windows.
    pub throttles: &'a [ThrottleRecord],
    /// Restarts (journal actions of kind restart).
    pub restarts: &'a [ActionRecord],
    /// Windows per local day (`YYYY-MM-DD` → count), as in the report.
    pub by_day: &'a BTreeMap<String, usize>,
    /// The host's UTC offset (s) for the labels.
    pub utc_offset_s: i64,
    /// Idle-wake episodes (idle over an hour before their first 401), and how many of them
    /// started in the morning, as in the report.
    pub idle_wake: (usize, usize),
    /// Mid-use episodes, and how many of them started in the morning.
    pub mid_use: (usize, usize),
}

/// The duration classes of the "how long windows last" panel: upper bounds (ms) and labels,
/// seconds to hours on a roughly logarithmic scale.
const DURATION_CLASSES: [(u64, &str); 8] = [
    (10_000, "< 10 s"),
    (30_000, "10-30 s"),
    (120_000, "30 s-2 m"),
    (600_000, "2-10 m"),
    (1_800_000, "10-30 m"),
    (3_600_000, "30 m-1 h"),
    (7_200_000, "1-2 h"),
    (u64::MAX, "> 2 h"),
];

/// Height of the lower panels (durations, idle-wake / mid-use).
const PANEL_H: f64 = 120.0;

/// The colour of an episode's bar.
pub fn end_colour(end: EpisodeEnd) -> &'static str {
    match end {
        EpisodeEnd::SelfRecovered => SELF_RECOVERED,
        EpisodeEnd::RecoveredAfterRestart => AFTER_RESTART,
        EpisodeEnd::ProcessExited | EpisodeEnd::Escalated => NEVER,
        EpisodeEnd::StillOpen => STILL_OPEN,
    }
}

/// `s` as SVG text or an attribute value: XML's five special characters escaped (quick-xml's
/// `escape`), control and invisible formatting characters made spaces first.
fn esc(s: &str) -> String {
    let safe: String = s
        .chars()
        .map(|c| if crate::text::is_unsafe(c) { ' ' } else { c })
        .collect();
    quick_xml::escape::escape(safe).into_owned()
}

fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn end_text(end: EpisodeEnd) -> &'static str {
    match end {
        EpisodeEnd::SelfRecovered => "self-recovered",
        EpisodeEnd::RecoveredAfterRestart => "recovered after restart",
        EpisodeEnd::ProcessExited => "never recovered (process exited)",
        EpisodeEnd::Escalated => "never recovered (escalated)",
        EpisodeEnd::StillOpen => "still open",
    }
}

/// A tick step for a time range: the first of 5 s ... 30 days giving at most 8 ticks (a live
/// journal of two minutes gets 15 s ticks, two weeks 2 days).
fn tick_step_ms(range_ms: u64) -> u64 {
    const S: u64 = 1000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;
    [
        5 * S,
        10 * S,
        15 * S,
        30 * S,
        M,
        2 * M,
        5 * M,
        10 * M,
        15 * M,
        30 * M,
        H,
        3 * H,
        6 * H,
        12 * H,
        D,
        2 * D,
        7 * D,
        30 * D,
    ]
    .into_iter()
    .find(|s| range_ms / s <= 8)
    .unwrap_or(30 * D)
}

#[expect(clippy::cast_precision_loss, reason = "ms spans far below 2^52")]
fn f(v: u64) -> f64 {
    v as f64
}

/// Histories longer than this are drawn folded by day (a row per local day, a lane per
/// instance in it, time of day across): two weeks unfolded would give a window of seconds a
/// hundredth of a pixel, and an instance's windows of one day would touch.
const FOLD_AFTER_MS: u64 = 2 * DAY_MS;
const DAY_MS: u64 = 86_400_000;
/// Space between two day rows of the folded timeline.
const DAY_GAP: f64 = 6.0;
/// Narrowest mark of the folded timeline.
const MIN_FOLDED_W: f64 = 3.0;

/// The timeline's layout: linear (a row per instance, time across) or folded by day.
enum Layout {
    Linear {
        /// Plotted range (ms), margins included.
        t0: u64,
        t1: u64,
    },
    Folded {
        /// First and last local day (days since the epoch, local time).
        d0: i64,
        d1: i64,
        /// Height of an instance's lane in a day row.
        lane_h: f64,
        /// Height of a day row.
        day_h: f64,
    },
}

impl Layout {
    fn new(data: (u64, u64), instances: usize, off: i64) -> Self {
        let (t0, t1) = data;
        if t1 - t0 > FOLD_AFTER_MS {
            #[expect(clippy::cast_precision_loss, reason = "few instances")]
            let lane_h = (72.0 / instances.max(1) as f64).clamp(3.0, 12.0);
            #[expect(clippy::cast_precision_loss, reason = "few instances")]
            let day_h = (lane_h * instances.max(1) as f64).max(18.0);
            return Self::Folded {
                d0: local_day(t0, off),
                d1: local_day(t1, off),
                lane_h,
                day_h,
            };
        }
        // A margin of 3 % each side, at least a minute of range.
        let span = (t1 - t0).max(60_000);
        let pad = span / 33;
        Self::Linear {
            t0: t0.saturating_sub(pad),
            t1: t0 + span + pad,
        }
    }

    /// From the timeline's top to the last line of its axis labels.
    fn height(&self, instances: usize) -> f64 {
        match self {
            #[expect(clippy::cast_precision_loss, reason = "few rows")]
            Self::Linear { .. } => instances.max(1) as f64 * ROW_H + 34.0,
            #[expect(clippy::cast_precision_loss, reason = "days of a journal")]
            Self::Folded { d0, d1, day_h, .. } => {
                20.0 + (d1 - d0 + 1) as f64 * (day_h + DAY_GAP) + 20.0
            }
        }
    }
}

/// The local day (days since 1970-01-01, local time) of wall time `ms`.
fn local_day(ms: u64, off: i64) -> i64 {
    #[expect(clippy::cast_possible_wrap, reason = "wall times far below 2^63")]
    (ms as i64 + off * 1000).div_euclid(DAY_MS as i64)
}

/// The pieces of `[a, b]` (wall ms) on each local day: (day, from, to), times of day in ms.
fn by_local_day(a: u64, b: u64, off: i64) -> Vec<(i64, u64, u64)> {
    #[expect(clippy::cast_possible_wrap, reason = "wall times far below 2^63")]
    let (la, lb) = (a as i64 + off * 1000, b.max(a) as i64 + off * 1000);
    #[expect(clippy::cast_possible_wrap, reason = "a constant")]
    let day = DAY_MS as i64;
    let mut out = Vec::new();
    let mut d = la.div_euclid(day);
    while d <= lb.div_euclid(day) {
        let from = la.max(d * day) - d * day;
        let to = lb.min((d + 1) * day) - d * day;
        #[expect(clippy::cast_sign_loss, reason = "both within the day, from 0")]
        out.push((d, from as u64, to as u64));
        d += 1;
    }
    out
}

/// `Mon 11-23` for a local day.
fn day_label(d: i64) -> String {
    #[expect(clippy::cast_sign_loss, reason = "days after 1970")]
    local_time(d.max(0) as u64 * DAY_MS, 0)
        .at
        .strftime("%a %m-%d")
        .to_string()
}

fn episode_title(name: &str, e: &Episode, off: i64) -> String {
    format!(
        "{}: 401 window from {} for {}, {} × 401, {} restart(s), {}{}",
        esc(name),
        local_time(e.first_401_ms, off).civil(),
        human(e.duration_ms()),
        e.count_401,
        e.restarts,
        end_text(e.end),
        if e.source == crate::detect::EpisodeSource::Transcript {
            " (from transcripts)"
        } else {
            ""
        }
    )
}

fn throttle_title(name: &str, t: &ThrottleRecord, off: i64) -> String {
    let end = t.ended_ms.unwrap_or(t.last_429_ms);
    format!(
        "{}: {} throttled from {} for {} ({} × 429{})",
        esc(name),
        esc(&t.model),
        local_time(t.first_429_ms, off).civil(),
        human(end.saturating_sub(t.first_429_ms)),
        t.count_429,
        if t.ended_ms.is_some() {
            ", answered again"
        } else {
            ""
        }
    )
}

fn restart_title(name: &str, r: &ActionRecord, off: i64) -> String {
    format!(
        "{}: restart at {}",
        esc(name),
        local_time(r.at_ms, off).civil()
    )
}

/// Draws the picture.
#[expect(clippy::too_many_lines, reason = "one element group after another")]
pub fn render(input: &Input<'_>) -> String {
    let off = input.utc_offset_s;
    let names: std::collections::BTreeSet<&str> = input
        .episodes
        .iter()
        .map(|e| e.instance.as_str())
        .chain(input.throttles.iter().map(|t| t.instance.as_str()))
        .chain(input.restarts.iter().map(|r| r.instance.as_str()))
        .collect();
    let instances: Vec<&str> = names.into_iter().collect();

    let ends = input
        .episodes
        .iter()
        .map(|e| (e.first_401_ms, e.ended_ms.unwrap_or(e.last_401_ms)))
        .chain(
            input
                .throttles
                .iter()
                .map(|t| (t.first_429_ms, t.ended_ms.unwrap_or(t.last_429_ms))),
        )
        .chain(input.restarts.iter().map(|r| (r.at_ms, r.at_ms)));
    let (mut t0, mut t1) = (u64::MAX, 0u64);
    for (a, b) in ends {
        t0 = t0.min(a);
        t1 = t1.max(b.max(a));
    }
    if t0 > t1 {
        (t0, t1) = (0, 60_000);
    }
    let layout = Layout::new((t0, t1), instances.len(), off);
    let plot_w = f64::from(WIDTH) - LABEL_W - RIGHT_PAD;
    let hist_top = TOP + layout.height(instances.len()) + 46.0;
    // A day or two of history needs no tall histogram.
    let hist_h = if input.by_day.len() <= 2 {
        HIST_H / 2.0
    } else {
        HIST_H
    };
    let panel_top = hist_top + hist_h + 80.0;
    let height = panel_top + PANEL_H + 50.0;

    let mut o = String::new();
    let n_eps = input.episodes.len();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" role="img" aria-labelledby="cw-title cw-desc" font-family="DejaVu Sans, Verdana, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        o,
        r#"<title id="cw-title">Claude Code 401 latch episodes: {n_eps} windows on {} instances</title>"#,
        instances.len()
    );
    let (heading, how) = match layout {
        Layout::Linear { .. } => ("401 latch episodes per instance", "Timeline per instance"),
        Layout::Folded { .. } => (
            "401 latch episodes by day (a lane per instance)",
            "Timeline folded by day (a row per local day, a lane per instance, time of day across)",
        ),
    };
    let _ = writeln!(
        o,
        r#"<desc id="cw-desc">{how} from {} to {} (UTC{}): latch episodes coloured by how they ended, model throttles, restarts as ticks; below, 401 windows per day, how long windows last, and idle-wake against mid-use windows with their morning share.</desc>"#,
        local_time(t0, off).civil(),
        local_time(t1, off).civil(),
        offset_text(off)
    );
    let _ = writeln!(
        o,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height:.0}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        o,
        r#"<text x="20" y="28" font-size="18" font-weight="bold">{heading}</text>"#
    );

    // Legend.
    let legend = [
        (SELF_RECOVERED, "self-recovered"),
        (AFTER_RESTART, "recovered after restart"),
        (NEVER, "never recovered"),
        (STILL_OPEN, "still open"),
        (THROTTLE, "429 throttle"),
    ];
    let mut lx = 20.0;
    let _ = writeln!(o, r#"<g id="legend">"#);
    for (colour, label) in legend {
        let _ = writeln!(
            o,
            r#"<rect x="{lx:.1}" y="42" width="14" height="14" fill="{colour}"><title>{label}</title></rect><text x="{:.1}" y="53">{label}</text>"#,
            lx + 18.0
        );
        #[expect(clippy::cast_precision_loss, reason = "short labels")]
        let w = label.len() as f64 * 7.0;
        lx += 18.0 + w + 18.0;
    }
    let _ = writeln!(
        o,
        r#"<line x1="{lx:.1}" y1="42" x2="{lx:.1}" y2="56" stroke="{RESTART}" stroke-width="2"><title>restart</title></line><text x="{:.1}" y="53">restart</text>"#,
        lx + 6.0
    );
    let _ = writeln!(o, "</g>");

    match layout {
        Layout::Linear { t0, t1 } => linear(&mut o, input, &instances, (t0, t1), plot_w),
        Layout::Folded {
            d0,
            d1,
            lane_h,
            day_h,
        } => folded(&mut o, input, &instances, (d0, d1), (lane_h, day_h), plot_w),
    }

    // Histogram of windows per day.
    let _ = writeln!(o, r#"<g id="histogram">"#);
    let max = input.by_day.values().copied().max().unwrap_or(0).max(1);
    let days = input.by_day.len().max(1);
    #[expect(clippy::cast_precision_loss, reason = "few days")]
    let slot = plot_w / days as f64;
    let bar_w = (slot * 0.7).clamp(4.0, 60.0);
    let base = hist_top + hist_h;
    panel_head(
        &mut o,
        "401 windows per day",
        20.0,
        hist_top,
        (LABEL_W, LABEL_W + plot_w),
        base,
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{max}</text><text x="{:.1}" y="{base:.1}" text-anchor="end">0</text>"#,
        LABEL_W - 8.0,
        hist_top + 10.0,
        LABEL_W - 8.0
    );
    let label_every = days.div_ceil(12);
    for (i, (day, n)) in input.by_day.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let h = (*n as f64 / max as f64) * (hist_h - 10.0);
        #[expect(clippy::cast_precision_loss, reason = "few days")]
        let bx = LABEL_W + slot * i as f64 + (slot - bar_w) / 2.0;
        let _ = writeln!(
            o,
            r#"<rect class="day" x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{HISTOGRAM}"><title>{day}: {n} window(s)</title></rect>"#,
            base - h
        );
        if i % label_every == 0 {
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bx + bar_w / 2.0,
                base + 16.0,
                &day[5..]
            );
        }
    }
    let _ = writeln!(o, "</g>");
    panels(&mut o, input, panel_top, plot_w);
    let _ = writeln!(o, "</svg>");
    o
}

/// The linear timeline: a row per instance, time across `(t0, t1)`, and its axis.
fn linear(
    o: &mut String,
    input: &Input<'_>,
    instances: &[&str],
    (t0, t1): (u64, u64),
    plot_w: f64,
) {
    let off = input.utc_offset_s;
    let x = |ms: u64| LABEL_W + (f(ms.saturating_sub(t0)) / f(t1 - t0)) * plot_w;
    #[expect(clippy::cast_precision_loss, reason = "few rows")]
    let axis_y = TOP + instances.len().max(1) as f64 * ROW_H;
    let _ = writeln!(o, r#"<g id="timeline">"#);
    for (i, name) in instances.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "few rows")]
        let y = TOP + i as f64 * ROW_H;
        let band = if i % 2 == 0 { "#f5f5f5" } else { "#ffffff" };
        let _ = writeln!(
            o,
            r#"<rect x="{LABEL_W}" y="{y:.1}" width="{plot_w:.1}" height="{ROW_H}" fill="{band}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + ROW_H / 2.0 + 4.0,
            esc(name)
        );
        for r in input.restarts.iter().filter(|r| r.instance == *name) {
            let rx = x(r.at_ms);
            let _ = writeln!(
                o,
                r#"<line class="restart" x1="{rx:.1}" y1="{:.1}" x2="{rx:.1}" y2="{:.1}" stroke="{RESTART}" stroke-width="1.5"><title>{}</title></line>"#,
                y + 1.0,
                y + ROW_H - 1.0,
                restart_title(name, r, off)
            );
        }
        for t in input.throttles.iter().filter(|t| t.instance == *name) {
            let a = x(t.first_429_ms);
            let w = (x(t.ended_ms.unwrap_or(t.last_429_ms)) - a).max(MIN_BAR_W);
            let _ = writeln!(
                o,
                r#"<rect class="throttle" x="{a:.1}" y="{:.1}" width="{w:.1}" height="8" fill="{THROTTLE}"><title>{}</title></rect>"#,
                y + ROW_H - 10.0,
                throttle_title(name, t, off)
            );
        }
        for e in input.episodes.iter().filter(|e| e.instance == *name) {
            let a = x(e.first_401_ms);
            let w = (x(e.ended_ms.unwrap_or(e.last_401_ms)) - a).max(MIN_BAR_W);
            let _ = writeln!(
                o,
                r#"<rect class="episode" data-end="{}" x="{a:.1}" y="{:.1}" width="{w:.1}" height="14" fill="{}"><title>{}</title></rect>"#,
                e.end.as_str(),
                y + 4.0,
                end_colour(e.end),
                episode_title(name, e, off)
            );
        }
    }
    let _ = writeln!(o, "</g>");

    // Time axis, ticks at whole local steps.
    let step = tick_step_ms(t1 - t0);
    let _ = writeln!(
        o,
        r##"<g id="axis"><line x1="{LABEL_W}" y1="{axis_y:.1}" x2="{:.1}" y2="{axis_y:.1}" stroke="#424242"/>"##,
        LABEL_W + plot_w
    );
    let off_ms = off * 1000;
    let local0 = i128::from(t0) + i128::from(off_ms);
    let step_i = i128::from(step);
    let mut tick = (local0 + step_i - 1).div_euclid(step_i) * step_i - i128::from(off_ms);
    let mut prev_day = String::new();
    while tick <= i128::from(t1) {
        let Ok(tms) = u64::try_from(tick) else {
            tick += step_i;
            continue;
        };
        let tx = x(tms);
        let lt = local_time(tms, off);
        let day = lt.date();
        let clock = lt
            .at
            .strftime(if step < 60_000 { "%H:%M:%S" } else { "%H:%M" })
            .to_string();
        let label = if step >= DAY_MS {
            day[5..].to_owned()
        } else if day == prev_day {
            clock
        } else {
            format!("{} {clock}", &day[5..])
        };
        prev_day = day;
        let _ = writeln!(
            o,
            r##"<line x1="{tx:.1}" y1="{axis_y:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#424242"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            axis_y + 5.0,
            axis_y + 18.0
        );
        tick += step_i;
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#616161">local time (UTC{})</text></g>"##,
        LABEL_W + plot_w,
        axis_y + 34.0,
        offset_text(off)
    );
}

/// The folded timeline: a row per local day from `d0` to `d1` (empty days too), a lane of
/// `lane_h` per instance in it, the time of day across with a line every hour; a mark that
/// crosses midnight goes on in the next row (its later pieces are `continued`).
fn folded(
    o: &mut String,
    input: &Input<'_>,
    instances: &[&str],
    (d0, d1): (i64, i64),
    (lane_h, day_h): (f64, f64),
    plot_w: f64,
) {
    let off = input.utc_offset_s;
    let top = TOP + 20.0;
    #[expect(clippy::cast_precision_loss, reason = "days of a journal")]
    let row_y = |d: i64| top + (d - d0) as f64 * (day_h + DAY_GAP);
    let bottom = row_y(d1 + 1) - DAY_GAP;
    let x = |tod: u64| LABEL_W + f(tod) / f(DAY_MS) * plot_w;
    let lane: BTreeMap<&str, usize> = instances.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    #[expect(clippy::cast_precision_loss, reason = "few instances")]
    let lane_y = |name: &str| lane.get(name).copied().unwrap_or(0) as f64 * lane_h;
    // Marks fill their lane; tall lanes keep a pixel between neighbours.
    let mark_h = if lane_h >= 6.0 { lane_h - 1.0 } else { lane_h };

    let _ = writeln!(o, r#"<g id="timeline">"#);
    for d in d0..=d1 {
        let y = row_y(d);
        let _ = writeln!(
            o,
            r##"<rect class="day-row" x="{LABEL_W}" y="{y:.1}" width="{plot_w:.1}" height="{day_h:.1}" fill="#f5f5f5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LABEL_W - 8.0,
            y + day_h / 2.0 + 4.0,
            day_label(d)
        );
    }
    // Hour lines over the rows, labels every 3 h above and below.
    for h in 0..=24u64 {
        let hx = x(h * 3_600_000);
        let (stroke, label) = if h % 3 == 0 {
            ("#bdbdbd", true)
        } else {
            ("#e0e0e0", false)
        };
        let _ = writeln!(
            o,
            r#"<line x1="{hx:.1}" y1="{:.1}" x2="{hx:.1}" y2="{bottom:.1}" stroke="{stroke}" stroke-width="0.5"/>"#,
            top - 4.0
        );
        if label {
            for ly in [top - 8.0, bottom + 16.0] {
                let _ = writeln!(
                    o,
                    r#"<text x="{hx:.1}" y="{ly:.1}" text-anchor="middle">{h:02}:00</text>"#
                );
            }
        }
    }
    let piece =
        |class: &str, a: u64, b: u64, name: &str, draw: &mut dyn FnMut(&str, f64, f64, f64)| {
            for (i, (d, from, to)) in by_local_day(a, b, off).into_iter().enumerate() {
                if d < d0 || d > d1 {
                    continue;
                }
                let class = if i == 0 {
                    class.to_owned()
                } else {
                    format!("{class} continued")
                };
                let xa = x(from);
                draw(
                    &class,
                    xa,
                    (x(to) - xa).max(MIN_FOLDED_W),
                    row_y(d) + lane_y(name),
                );
            }
        };
    for t in input.throttles {
        let name = t.instance.as_str();
        let end = t.ended_ms.unwrap_or(t.last_429_ms);
        piece(
            "throttle",
            t.first_429_ms,
            end,
            name,
            &mut |class, xa, w, y| {
                let _ = writeln!(
                    o,
                    r#"<rect class="{class}" x="{xa:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{THROTTLE}"><title>{}</title></rect>"#,
                    y + mark_h / 2.0,
                    (mark_h / 2.0).max(1.5),
                    throttle_title(name, t, off)
                );
            },
        );
    }
    for e in input.episodes {
        let name = e.instance.as_str();
        let end = e.ended_ms.unwrap_or(e.last_401_ms);
        piece(
            "episode",
            e.first_401_ms,
            end,
            name,
            &mut |class, xa, w, y| {
                let _ = writeln!(
                    o,
                    r#"<rect class="{class}" data-end="{}" x="{xa:.1}" y="{y:.1}" width="{w:.1}" height="{mark_h:.1}" fill="{}"><title>{}</title></rect>"#,
                    e.end.as_str(),
                    end_colour(e.end),
                    episode_title(name, e, off)
                );
            },
        );
    }
    // Restarts last: a tick over the episode it belongs to.
    for r in input.restarts {
        let name = r.instance.as_str();
        piece("restart", r.at_ms, r.at_ms, name, &mut |class, xa, _, y| {
            let _ = writeln!(
                o,
                r#"<line class="{class}" x1="{xa:.1}" y1="{y:.1}" x2="{xa:.1}" y2="{:.1}" stroke="{RESTART}" stroke-width="1"><title>{}</title></line>"#,
                y + lane_h,
                restart_title(name, r, off)
            );
        });
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#616161">time of day, local (UTC{}); lanes top to bottom: {}</text></g>"##,
        LABEL_W + plot_w,
        bottom + 34.0,
        offset_text(off),
        esc(&lane_order(instances))
    );
}

/// The lanes' order for the folded timeline's caption: all names when few, else the first and
/// the last.
fn lane_order(instances: &[&str]) -> String {
    match instances {
        [] => String::new(),
        few if few.len() <= 4 => few.join(", "),
        [first, .., last] => format!("{first} … {last} (sorted by name)"),
        [_] => unreachable!("one name is few"),
    }
}

/// The lower panels: how long windows last (closed ones, by duration class), and idle-wake
/// against mid-use windows with the morning's share of each.
fn panels(o: &mut String, input: &Input<'_>, top: f64, plot_w: f64) {
    let base = top + PANEL_H;
    // Durations.
    let mut counts = [0usize; DURATION_CLASSES.len()];
    for e in input.episodes.iter().filter(|e| e.is_closed()) {
        let d = e.duration_ms();
        let class = DURATION_CLASSES
            .iter()
            .position(|(upper, _)| d < *upper)
            .unwrap_or(DURATION_CLASSES.len() - 1);
        counts[class] += 1;
    }
    let width = plot_w * 0.6;
    let _ = writeln!(o, r#"<g id="durations">"#);
    panel_head(
        o,
        "How long windows last (closed)",
        20.0,
        top,
        (LABEL_W, LABEL_W + width),
        base,
    );
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    #[expect(clippy::cast_precision_loss, reason = "eight classes")]
    let slot = width / DURATION_CLASSES.len() as f64;
    for (i, ((_, label), n)) in DURATION_CLASSES.iter().zip(counts).enumerate() {
        let label = esc(label);
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let h = (n as f64 / max as f64) * (PANEL_H - 20.0);
        #[expect(clippy::cast_precision_loss, reason = "eight classes")]
        let bx = LABEL_W + slot * i as f64 + slot * 0.15;
        let bw = slot * 0.7;
        let _ = writeln!(
            o,
            r#"<rect class="duration" x="{bx:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{HISTOGRAM}"><title>{label}: {n} window(s)</title></rect>"#,
            base - h
        );
        bar_texts(o, bx + bw / 2.0, base - h, base, &n.to_string(), &label);
    }
    let _ = writeln!(o, "</g>");

    // Idle-wake against mid-use, each with its morning share.
    let left = LABEL_W + plot_w * 0.68;
    let width = plot_w * 0.32;
    let _ = writeln!(o, r#"<g id="idle">"#);
    panel_head(
        o,
        "Idle-wake or mid-use",
        left,
        top,
        (left, left + width),
        base,
    );
    let groups = [
        ("idle-wake", "idle over 1 h before", input.idle_wake),
        ("mid-use", "idle up to 1 h before", input.mid_use),
    ];
    let max = groups.iter().map(|g| g.2.0).max().unwrap_or(0).max(1);
    let slot = width / 2.0;
    for (i, (name, what, (n, morning))) in groups.into_iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let (h, hm) = (
            (n as f64 / max as f64) * (PANEL_H - 20.0),
            (morning as f64 / max as f64) * (PANEL_H - 20.0),
        );
        #[expect(clippy::cast_precision_loss, reason = "two groups")]
        let bx = left + slot * i as f64 + slot * 0.2;
        let bw = slot * 0.6;
        let share = (morning * 100)
            .checked_div(n)
            .map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
        let _ = writeln!(
            o,
            r#"<rect class="split" x="{bx:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{HISTOGRAM}"><title>{name} ({what}): {n} window(s), {morning} of them in the morning (05:00-12:00 local, {share})</title></rect>"#,
            base - h
        );
        let _ = writeln!(
            o,
            r#"<rect class="morning" x="{bx:.1}" y="{:.1}" width="{bw:.1}" height="{hm:.1}" fill="{STILL_OPEN}"><title>{name}: {morning} window(s) in the morning ({share})</title></rect>"#,
            base - hm
        );
        bar_texts(
            o,
            bx + bw / 2.0,
            base - h,
            base,
            &format!("{n} ({share} morning)"),
            name,
        );
    }
    let _ = writeln!(o, "</g>");
}

/// A panel's bold title at `title_x` above `top`, and its baseline from `x.0` to `x.1` at
/// `base`.
fn panel_head(o: &mut String, title: &str, title_x: f64, top: f64, x: (f64, f64), base: f64) {
    let _ = writeln!(
        o,
        r##"<text x="{title_x:.1}" y="{:.1}" font-size="15" font-weight="bold">{title}</text><line x1="{:.1}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#424242"/>"##,
        top - 14.0,
        x.0,
        x.1
    );
}

/// A bar's value above its top and its label under the baseline, centred on `cx` (both
/// already escaped).
fn bar_texts(o: &mut String, cx: f64, bar_top: f64, base: f64, value: &str, label: &str) {
    let _ = writeln!(
        o,
        r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{value}</text><text x="{cx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
        bar_top - 4.0,
        base + 16.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::EpisodeSource;
    use crate::journal::ActionKind;

    const T0: u64 = 1_782_604_800_000;

    fn ep(instance: &str, start: u64, dur: u64, end: EpisodeEnd) -> Episode {
        Episode {
            id: format!("{instance}@{start}"),
            instance: instance.into(),
            unit: None,
            pids: vec![],
            session_ids: vec![],
            models: vec![],
            first_401_ms: start,
            last_401_ms: start + dur,
            first_401_mono_ns: 0,
            last_401_mono_ns: 0,
            count_401: 4,
            first_request_ids: vec![],
            last_request_ids: vec![],
            idle_before_ms: None,
            restarts: 0,
            end,
            ended_ms: Some(start + dur),
            time_to_recovery_ms: None,
            escalated_ms: None,
            host: None,
            source: EpisodeSource::Transcript,
            client_version: None,
            not_kept: crate::detect::NotKept::default(),
        }
    }

    fn sample() -> (Vec<Episode>, Vec<ThrottleRecord>, Vec<ActionRecord>) {
        let eps = vec![
            ep("a<&>", T0, 60_000, EpisodeEnd::SelfRecovered),
            ep(
                "b",
                T0 + 3_600_000,
                600_000,
                EpisodeEnd::RecoveredAfterRestart,
            ),
            ep("b", T0 + 90_000_000, 20_000, EpisodeEnd::ProcessExited),
        ];
        let th = vec![ThrottleRecord {
            instance: "c".into(),
            session_id: None,
            model: "claude-opus-4-8".into(),
            first_429_ms: T0 + 7_200_000,
            last_429_ms: T0 + 7_300_000,
            count_429: 6,
            request_ids: vec![],
            ended_ms: None,
            source: EpisodeSource::Transcript,
        }];
        let rs = vec![ActionRecord {
            at_ms: T0 + 3_900_000,
            instance: "b".into(),
            episode_id: None,
            kind: ActionKind::Restart,
            ok: true,
            until_ms: None,
            detail: None,
        }];
        (eps, th, rs)
    }

    #[test]
    fn structure_and_determinism() {
        let (eps, th, rs) = sample();
        let by_day: BTreeMap<String, usize> =
            [("2026-06-28".to_owned(), 2), ("2026-06-29".to_owned(), 1)].into();
        let input = Input {
            episodes: &eps,
            throttles: &th,
            restarts: &rs,
            by_day: &by_day,
            utc_offset_s: -5 * 3600,
            idle_wake: (1, 1),
            mid_use: (2, 0),
        };
        let svg = render(&input);
        assert_eq!(svg, render(&input), "deterministic");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"episode\"").count(), 3);
        assert_eq!(svg.matches("class=\"throttle\"").count(), 1);
        assert_eq!(svg.matches("class=\"restart\"").count(), 1);
        assert_eq!(svg.matches("class=\"day\"").count(), 2);
        for c in [
            SELF_RECOVERED,
            AFTER_RESTART,
            NEVER,
            THROTTLE,
            RESTART,
            HISTOGRAM,
        ] {
            assert!(svg.contains(&format!("\"{c}\"")), "{c}");
        }
        assert!(svg.contains("a&lt;&amp;&gt;"), "names are escaped");
        assert!(!svg.contains("a<&>"));
        // How long windows last: one bar per class, the three closed windows in theirs.
        assert_eq!(
            svg.matches("class=\"duration\"").count(),
            DURATION_CLASSES.len()
        );
        for title in [
            "<title>10-30 s: 1 window(s)</title>",
            "<title>30 s-2 m: 1 window(s)</title>",
            "<title>10-30 m: 1 window(s)</title>",
            "<title>&lt; 10 s: 0 window(s)</title>",
        ] {
            assert!(svg.contains(title), "{title}");
        }
        // Idle-wake against mid-use, with the morning's share.
        assert!(svg.contains("idle-wake (idle over 1 h before): 1 window(s), 1 of them in the morning (05:00-12:00 local, 100%)"));
        assert!(svg.contains("mid-use (idle up to 1 h before): 2 window(s), 0 of them in the morning (05:00-12:00 local, 0%)"));
        // Every mark has a title; every opened element is closed.
        assert_eq!(svg.matches("<rect class=").count(), 6 + 8 + 4);
        assert!(svg.matches("<title>").count() >= 18 + 6);
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert_eq!(
            svg.matches("<title").count(),
            svg.matches("</title>").count()
        );
        assert!(svg.contains("UTC-05:00"));
    }

    #[test]
    fn an_empty_journal_still_draws() {
        let by_day = BTreeMap::new();
        let svg = render(&Input {
            episodes: &[],
            throttles: &[],
            restarts: &[],
            by_day: &by_day,
            utc_offset_s: 0,
            idle_wake: (0, 0),
            mid_use: (0, 0),
        });
        assert!(svg.contains("0 windows on 0 instances"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn ticks() {
        // A live journal of two minutes: several ticks, each with its seconds.
        assert_eq!(tick_step_ms(2 * 60_000), 15_000);
        assert_eq!(tick_step_ms(30_000), 5_000);
        assert_eq!(tick_step_ms(5 * 60_000), 60_000);
        assert_eq!(tick_step_ms(2 * 3_600_000), 15 * 60_000);
        assert_eq!(tick_step_ms(3 * 86_400_000), 12 * 3_600_000);
    }

    /// Longer than two days: folded by day, every day a row (empty ones too), every episode a
    /// mark of its own, one that crosses local midnight continued in the next row.
    #[test]
    fn a_long_history_is_folded_by_day() {
        const H: u64 = 3_600_000;
        let mut eps = vec![
            ep("a", T0 + 2 * H, 600_000, EpisodeEnd::SelfRecovered),
            ep(
                "b",
                T0 + 23 * H + H / 2,
                H,
                EpisodeEnd::RecoveredAfterRestart,
            ),
            ep("c", T0 + 4 * 24 * H + 12 * H, 30_000, EpisodeEnd::Escalated),
        ];
        eps[2].source = EpisodeSource::Live;
        let th = vec![ThrottleRecord {
            instance: "a".into(),
            session_id: None,
            model: "claude-opus-4-8".into(),
            first_429_ms: T0 + 49 * H,
            last_429_ms: T0 + 49 * H + 300_000,
            count_429: 6,
            request_ids: vec![],
            ended_ms: Some(T0 + 49 * H + 300_000),
            source: EpisodeSource::Live,
        }];
        let rs = vec![ActionRecord {
            at_ms: T0 + 23 * H + 3 * H / 4,
            instance: "b".into(),
            episode_id: None,
            kind: ActionKind::Restart,
            ok: true,
            until_ms: None,
            detail: None,
        }];
        let by_day: BTreeMap<String, usize> = BTreeMap::new();
        let draw = |utc_offset_s: i64| {
            render(&Input {
                episodes: &eps,
                throttles: &th,
                restarts: &rs,
                by_day: &by_day,
                utc_offset_s,
                idle_wake: (0, 0),
                mid_use: (0, 0),
            })
        };
        let svg = draw(0);
        assert!(svg.contains("401 latch episodes by day (a lane per instance)"));
        // 2026-06-28 (a Sunday) to 2026-07-02, the empty 06-30 and 07-01 included.
        assert_eq!(svg.matches("class=\"day-row\"").count(), 5, "{svg}");
        for label in [
            "Sun 06-28",
            "Mon 06-29",
            "Tue 06-30",
            "Wed 07-01",
            "Thu 07-02",
        ] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        assert_eq!(svg.matches("class=\"episode\"").count(), 3);
        assert_eq!(svg.matches("class=\"episode continued\"").count(), 1);
        assert_eq!(svg.matches("class=\"throttle\"").count(), 1);
        assert_eq!(svg.matches("class=\"restart\"").count(), 1);
        assert!(svg.contains("c: 401 window from 2026-07-02 12:00:00+00:00 for 30s"));
        // Hours across, labelled every three above and below the rows.
        for h in ["00:00", "03:00", "12:00", "24:00"] {
            assert_eq!(svg.matches(&format!(">{h}</text>")).count(), 2, "{h}");
        }
        assert!(svg.contains("lanes top to bottom: a, b, c"));
        for line in svg
            .lines()
            .filter(|l| l.contains("<rect class=\"episode") || l.contains("<line class="))
        {
            assert!(line.contains("<title>"), "mark without a title: {line}");
        }
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        // Five hours west, b's window ends before local midnight, and a's starts the day
        // before (21:00 on the 27th).
        let west = draw(-5 * 3600);
        assert_eq!(west.matches("class=\"episode continued\"").count(), 0);
        assert!(west.contains(">Sat 06-27</text>"));
        assert_eq!(
            west.matches("class=\"day-row\"").count(),
            6,
            "06-27 to 07-02"
        );
    }

    #[test]
    fn pieces_by_local_day() {
        const H: u64 = 3_600_000;
        let d = local_day(T0, 0);
        assert_eq!(
            by_local_day(T0 + 23 * H, T0 + 25 * H, 0),
            vec![(d, 23 * H, 24 * H), (d + 1, 0, H)]
        );
        assert_eq!(by_local_day(T0 + H, T0 + H, 0), vec![(d, H, H)]);
        // 01:00 UTC is 20:00 the day before, five hours west.
        assert_eq!(
            by_local_day(T0 + H, T0 + H, -5 * 3600),
            vec![(d - 1, 20 * H, 20 * H)]
        );
        assert_eq!(day_label(d), "Sun 06-28");
    }
}
