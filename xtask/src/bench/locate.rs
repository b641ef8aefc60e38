//! Part 6: locate.

use super::*;

pub(super) struct Locate {
    pub(super) binary: PathBuf,
    pub(super) cold_ms: Vec<f64>,
    pub(super) cached_ms: Vec<f64>,
    pub(super) method: String,
}

pub(super) fn locate(env: &BenchEnv, plan: &Plan) -> anyhow::Result<Locate> {
    let time = |cache: &Path| -> anyhow::Result<(f64, Value)> {
        let start = Instant::now();
        let out = Command::new(&env.claude_watch)
            .args(["locate", "--json", "--cache-dir"])
            .arg(cache)
            .arg(&env.claude)
            .stderr(Stdio::null())
            .output()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!("claude-watch locate {} failed", env.claude.display());
        }
        Ok((ms, serde_json::from_slice(&out.stdout)?))
    };
    // One untimed run brings the file into the page cache: "cold" means no locate cache.
    let warm = env.scratch.0.join("locate-warm");
    let (_, first) = time(&warm)?;
    let method = first["method"].as_str().unwrap_or("?").to_owned();
    let mut cold_ms = Vec::new();
    for i in 0..plan.locate_runs {
        let dir = env.scratch.0.join(format!("locate-cold-{i}"));
        cold_ms.push(time(&dir)?.0);
    }
    let mut cached_ms = Vec::new();
    for _ in 0..plan.locate_runs {
        cached_ms.push(time(&warm)?.0);
    }
    Ok(Locate {
        binary: env.claude.clone(),
        cold_ms,
        cached_ms,
        method,
    })
}

impl Locate {
    pub(super) fn report(&self, report: &mut Report) {
        let cold = median(&self.cold_ms);
        let cached = median(&self.cached_ms);
        let (lo, hi) = min_max(&self.cold_ms);
        report.row(
            6,
            "locate SSL_write/SSL_read in Claude Code 2.1.331 (399 MB), no cache (whole `claude-watch locate` run)",
            &format!("{cold:.0} ms median ({lo:.0}–{hi:.0}, {} runs; {})", self.cold_ms.len(), self.method),
            "< 100 ms (#32)",
            Some(cold < 100.0),
        );
        let (lo, hi) = min_max(&self.cached_ms);
        report.row(
            6,
            "… same, cached by build id",
            &format!("{cached:.0} ms median ({lo:.0}–{hi:.0})"),
            "—",
            None,
        );
        report.note(format!(
            "Locate: {} with an empty cache directory per cold run, after one untimed run so the file is in the page cache.",
            self.binary.display()
        ));
    }
}
