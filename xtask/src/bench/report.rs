//! The report.

use super::*;

/// A part of the bench as the table shows it: a number, and a letter for a sub-part ("4b").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Part(pub(super) u8, pub(super) Option<char>);

impl From<u8> for Part {
    fn from(n: u8) -> Self {
        Self(n, None)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(sub) => write!(f, "{}{sub}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// One client under one wake-up policy, for the trade-off table.
pub(super) struct WakeRow {
    pub(super) client: String,
    pub(super) policy: &'static str,
    /// Wall time over the floor: median, per-round low and high (`None`: no floor).
    pub(super) ratio: Option<(f64, f64, f64)>,
    /// Client CPU per request over the floor (or none), µs: median, low, high.
    pub(super) extra_cpu_us: (f64, f64, f64),
    /// The eBPF programs' run time per request, µs.
    pub(super) kernel_us: Option<f64>,
}

/// Detection latency under one wake-up policy and load, for the trade-off table.
pub(super) struct WakeDetection {
    pub(super) policy: &'static str,
    pub(super) loaded: bool,
    /// p99 bucket bound in seconds (`None`: beyond the last bucket).
    pub(super) p99: Option<f64>,
    pub(super) decisions: u64,
    pub(super) lost: u64,
}

/// The rows, detail tables and notes of one run.
#[derive(Default)]
pub(super) struct Report {
    pub(super) rows: Vec<(Part, String, String, String, Option<bool>)>,
    pub(super) details: Vec<(u8, String, String)>,
    pub(super) notes: Vec<String>,
    pub(super) failures: Vec<String>,
    pub(super) wake: Vec<WakeRow>,
    pub(super) wake_detection: Vec<WakeDetection>,
}

impl Report {
    pub(super) fn row(
        &mut self,
        part: impl Into<Part>,
        measure: &str,
        result: &str,
        target: &str,
        met: Option<bool>,
    ) {
        self.rows.push((
            part.into(),
            measure.into(),
            result.into(),
            target.into(),
            met,
        ));
    }

    pub(super) fn wake(&mut self, row: WakeRow) {
        self.wake.push(row);
    }

    pub(super) fn wake_detection(&mut self, d: WakeDetection) {
        self.wake_detection.push(d);
    }

    /// The wake-up trade-off: per policy, what the clients pay and how fast a 401 is decided.
    fn wake_table(&self) -> Option<String> {
        if self.wake.is_empty() && self.wake_detection.is_empty() {
            return None;
        }
        let mut t = String::from(
            "| policy | client | wall / floor, median (per-round) | client CPU per request over the floor, µs | eBPF run time per request, µs |\n|---|---|---|---|---|\n",
        );
        for r in &self.wake {
            let ratio = r.ratio.map_or_else(
                || "no floor".to_owned(),
                |(m, lo, hi)| format!("{m:.2} ({lo:.2}–{hi:.2})"),
            );
            let (m, lo, hi) = r.extra_cpu_us;
            let kernel = r
                .kernel_us
                .map_or_else(|| "—".to_owned(), |k| format!("{k:.1}"));
            let _ = writeln!(
                t,
                "| `{}` | {} | {ratio} | {m:.1} ({lo:.1}–{hi:.1}) | {kernel} |",
                r.policy, r.client
            );
        }
        if !self.wake_detection.is_empty() {
            t.push_str("\n| policy | machine | detection p99 (bucket bound) | decisions | records lost |\n|---|---|---|---|---|\n");
            for d in &self.wake_detection {
                let p99 = d
                    .p99
                    .map_or_else(|| "> 10 s".to_owned(), |s| format!("≤ {}", fmt_ms(s * 1e3)));
                let _ = writeln!(
                    t,
                    "| `{}` | {} | {p99} | {} | {} |",
                    d.policy,
                    if d.loaded {
                        "loaded (a CPU burner per core)"
                    } else {
                        "as it was"
                    },
                    d.decisions,
                    d.lost
                );
            }
        }
        Some(t)
    }

    pub(super) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(super) fn failed(&mut self, part: impl Into<Part>, what: &str, err: &anyhow::Error) {
        let part = part.into();
        eprintln!("bench: part {part} ({what}) failed: {err:#}");
        self.row(part, what, &format!("FAILED: {err:#}"), "", Some(false));
        self.failures.push(format!("part {part} ({what}): {err:#}"));
    }

    /// A section of its own under the results, as given (Markdown).
    pub(super) fn section(&mut self, part: u8, title: &str, text: String) {
        self.details.push((part, title.to_owned(), text));
    }

    pub(super) fn detail(&mut self, part: u8, title: String, runs: &Runs, floor: bool) {
        let mut t = String::from(
            "| attached | wall ms, median | wall min–max | client CPU ms, median | wall ratio to none |\n|---|---|---|---|---|\n",
        );
        let base = median(&runs.wall_ms[0]);
        for (i, variant) in VARIANTS.iter().enumerate() {
            let name = match variant {
                Variant::None => "nothing".to_owned(),
                Variant::Floor => "empty probes (floor)".to_owned(),
                Variant::Watch(p) if i == WATCH => {
                    format!("claude-watch trace (`--wakeup {p}`, the default)")
                }
                Variant::Watch(p) => format!("claude-watch trace `--wakeup {p}`"),
            };
            if i == FLOOR && !floor {
                let _ = writeln!(t, "| {name} | not measured | | | |");
                continue;
            }
            let (lo, hi) = min_max(&runs.wall_ms[i]);
            let m = median(&runs.wall_ms[i]);
            let _ = writeln!(
                t,
                "| {name} | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | {:.2} |",
                median(&runs.cpu_ms[i]),
                m / base
            );
        }
        self.details.push((part, title, t));
    }

    /// The Markdown page; `partial` names the parts that ran when not all did.
    pub(super) fn render(
        &self,
        machine: &str,
        smoke: bool,
        partial: Option<&str>,
        took: Duration,
    ) -> String {
        let mut s = String::from("# claude-watch benchmarks\n\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench{}` (took {:.0} s). Re-run it to refresh; numbers from a shared, busy machine carry the noise shown.\n",
            if smoke { " --smoke" } else { "" },
            took.as_secs_f64()
        );
        if let Some(parts) = partial {
            let _ = writeln!(s, "Partial run: only part(s) {parts}.\n");
        }
        let _ = writeln!(s, "{machine}\n");
        s.push_str("## Results against the targets\n\n| part | measure | result | target | met |\n|---|---|---|---|---|\n");
        let mut rows = self.rows.clone();
        rows.sort_by_key(|r| r.0);
        for (part, measure, result, target, met) in &rows {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(s, "| {part} | {measure} | {result} | {target} | {met} |");
        }
        if let Some(table) = self.wake_table() {
            let _ = writeln!(
                s,
                "\n## Wake-up policy trade-off\n\nWhen the kernel wakes the reader (`[daemon] wakeup`, `trace --wakeup`): `errors` (the default) only for a response that is not 1xx–3xx, `responses` for every response, `timer` never (the reader drains every 250 ms, 200 ms in trace). Request loops of parts 1 and 2; detection from part 4b.\n\n{table}"
            );
        }
        let mut details = self.details.iter().collect::<Vec<_>>();
        details.sort_by_key(|d| d.0);
        for (part, title, table) in details {
            let _ = writeln!(s, "\n### {part}. {title}\n\n{table}");
        }
        if !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

/// The machine, as a few Markdown lines.
pub(super) fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(
            || "?".into(),
            |k| format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0),
        );
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!(
        "Machine: {nproc} CPUs ({cpu}), {mem} memory, Linux {}, load average at the end: {}.",
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
