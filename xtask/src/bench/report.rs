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

/// The rows, detail tables and notes of one run.
#[derive(Default)]
pub(super) struct Report {
    pub(super) rows: Vec<(Part, String, String, String, Option<bool>)>,
    pub(super) details: Vec<(u8, String, String)>,
    pub(super) notes: Vec<String>,
    pub(super) failures: Vec<String>,
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

    pub(super) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(super) fn failed(&mut self, part: impl Into<Part>, what: &str, err: &anyhow::Error) {
        let part = part.into();
        eprintln!("bench: part {part} ({what}) failed: {err:#}");
        self.row(part, what, &format!("FAILED: {err:#}"), "", Some(false));
        self.failures.push(format!("part {part} ({what}): {err:#}"));
    }

    pub(super) fn detail(&mut self, part: u8, title: String, runs: &Runs, floor: bool) {
        let mut t = String::from(
            "| attached | wall ms, median | wall min–max | client CPU ms, median | wall ratio to none |\n|---|---|---|---|---|\n",
        );
        let base = median(&runs.wall_ms[0]);
        for (i, name) in ["nothing", "empty probes (floor)", "claude-watch trace"]
            .iter()
            .enumerate()
        {
            if i == 1 && !floor {
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

    pub(super) fn render(&self, machine: &str, smoke: bool, took: Duration) -> String {
        let mut s = String::from("# claude-watch benchmarks\n\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench{}` (took {:.0} s). Re-run it to refresh; numbers from a shared, busy machine carry the noise shown.\n",
            if smoke { " --smoke" } else { "" },
            took.as_secs_f64()
        );
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
