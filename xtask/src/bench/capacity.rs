//! Part 3: pipeline capacity.

use super::*;

/// One capacity step.
pub(super) struct Step {
    pub(super) label: String,
    /// Exchanges the clients completed per second.
    pub(super) rate: f64,
    /// Exchange lines the trace printed per second of load.
    pub(super) printed_rate: f64,
    pub(super) counters: Counters,
    pub(super) clean_exit: bool,
    /// Lines printed after the consumer resumed (stall step only).
    pub(super) after_resume: Option<usize>,
}

pub(super) struct Capacity {
    pub(super) steps: Vec<Step>,
}

pub(super) fn capacity(env: &BenchEnv, plan: &Plan) -> anyhow::Result<Capacity> {
    let server = env.server(2, true)?;
    let mut steps = Vec::new();
    for &(procs, conc) in plan.capacity_steps {
        let step = capacity_step(env, plan, server.port, procs, conc, RING_MIB, false)?;
        eprintln!(
            "bench:   {}: {:.0} exchanges/s, lost {}",
            step.label, step.rate, step.counters.lost
        );
        steps.push(step);
    }
    let &(procs, conc) = plan.capacity_steps.last().expect("at least one step");
    let step = capacity_step(env, plan, server.port, procs, conc, 1, true)?;
    eprintln!("bench:   {}: lost {}", step.label, step.counters.lost);
    steps.push(step);
    Ok(Capacity { steps })
}

pub(super) fn capacity_step(
    env: &BenchEnv,
    plan: &Plan,
    port: u16,
    procs: u32,
    conc: u32,
    ring_mib: u32,
    stall: bool,
) -> anyhow::Result<Step> {
    let trace = env.trace(&env.node, ring_mib, true)?;
    // Stalled step: the consumer stops for `pause`, long enough to overflow a 1 MiB ring.
    let pause = Duration::from_secs_f64((plan.capacity_seconds * 0.6).max(1.5));
    let load_seconds = if stall {
        pause.as_secs_f64() + 1.0
    } else {
        plan.capacity_seconds
    };
    let args = [load_seconds.to_string(), conc.to_string()];
    let mut clients = (0..procs)
        .map(|_| {
            Proc::spawn(
                "blast client",
                &mut env.client(Client::Node, "blast", port, &args),
                true,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut resumed_at = None;
    if stall {
        // The consumer stops reading for most of the load: the ring fills and overflows.
        std::thread::sleep(Duration::from_millis(300));
        trace.proc.signal(libc::SIGSTOP);
        std::thread::sleep(pause);
        trace.proc.signal(libc::SIGCONT);
        resumed_at = Some(mono_ns());
    }
    let mut exchanges = 0.0;
    let mut seconds: f64 = 0.0;
    for client in &mut clients {
        let lines = client.finish(Duration::from_secs_f64(load_seconds + 60.0))?;
        let v: Value =
            serde_json::from_str(&lines.last().context("load client printed nothing")?.text)?;
        exchanges += v["count"].as_f64().unwrap_or(0.0);
        seconds = seconds.max(v["ms"].as_f64().unwrap_or(0.0) / 1000.0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rx = trace.proc.stdout.as_ref().expect("stdout piped");
    let printed: Vec<u64> = rx.try_iter().map(|l| l.mono_ns).collect();
    let after_resume = resumed_at.map(|t| printed.iter().filter(|&&m| m > t).count());
    let (status, counters) = trace.stop()?;
    let label = if stall {
        format!(
            "{procs}×{conc} connections, ring 1 MiB, consumer stopped {:.1} s",
            pause.as_secs_f64()
        )
    } else {
        format!("{procs} process(es) × {conc} connections, ring {ring_mib} MiB")
    };
    Ok(Step {
        label,
        rate: exchanges / seconds.max(1e-9),
        printed_rate: printed.len() as f64 / seconds.max(1e-9),
        counters,
        clean_exit: status.success(),
        after_resume,
    })
}

impl Capacity {
    pub(super) fn report(&self, report: &mut Report) {
        let lossless = self
            .steps
            .iter()
            .filter(|s| s.after_resume.is_none() && s.counters.lost == 0)
            .map(|s| s.rate)
            .fold(0.0, f64::max);
        let any_loss_unstalled = self
            .steps
            .iter()
            .any(|s| s.after_resume.is_none() && s.counters.lost > 0);
        report.row(
            3,
            "highest exchange rate generated with zero lost records (node raw-TLS clients, 2 cores)",
            &format!("{lossless:.0} exchanges/s"),
            "0 lost at 20,000/s",
            if lossless >= 20_000.0 {
                Some(true)
            } else if any_loss_unstalled {
                Some(false)
            } else {
                None
            },
        );
        if let Some(stall) = self.steps.iter().find(|s| s.after_resume.is_some()) {
            report.row(
                3,
                "past capacity (consumer stalled, 1 MiB ring): lost records counted, trace survives",
                &format!(
                    "lost {}, {} lines after resume, exit {}",
                    stall.counters.lost,
                    stall.after_resume.unwrap_or(0),
                    if stall.clean_exit { "clean" } else { "FAILED" }
                ),
                "loss counted, no crash",
                Some(stall.counters.lost > 0 && stall.clean_exit && stall.after_resume > Some(0)),
            );
        }
        let mut t = String::from(
            "| step | exchanges/s (clients) | lines/s printed | kernel sent | skipped | lost | unpaired | exit |\n|---|---|---|---|---|---|---|---|\n",
        );
        for s in &self.steps {
            let _ = writeln!(
                t,
                "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                s.label,
                s.rate,
                s.printed_rate,
                s.counters.sent,
                s.counters.skipped,
                s.counters.lost,
                s.counters.unpaired,
                if s.clean_exit { "clean" } else { "failed" }
            );
        }
        report.details.push((3, "Pipeline capacity".into(), t));
    }
}
