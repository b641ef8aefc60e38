//! Part 8: fleet soak. `claude-watch daemon` (dry run) watching a host-sized fleet for a while,
//! with churn, latches and heals: its RSS over time, its CPU over the soak and while the fleet
//! is idle, and the kernel records it lost.
//!
//! The fleet: light agents (`tests/agents/agent.mjs` as `@anthropic-ai/claude-code/cli.js`, run
//! by node) at a turn every 5–30 s (each agent its own pause, drawn at its start), talking to one
//! stand-in API. Like a host's agents, they run one install (as `npm install -g` leaves it),
//! each with a home of its own. And sleepers, copies of `sleep` named `claude` in the scratch directory (taken
//! for Claude Code by name, `instance::classify`), up to the planned number of watched
//! processes. Every second the oldest sleeper is replaced by a new one, and so is the oldest
//! agent unless the previous replacement is still starting. A few sessions at a time are
//! latched through the stand-in's control API, seen latched in `claude-watch status`, unlatched
//! and seen healthy again. Idle windows (one per 10 minutes, at its middle): the agents are
//! stopped (`SIGSTOP` to their process groups), nothing is started, status and metrics are not
//! asked; the daemon's CPU is read over the window.

use std::collections::{HashMap, HashSet, VecDeque};

use super::*;

/// Instances the daemon knows.
const INSTANCES_METRIC: &str = "claude_watch_instances";
/// Metric events dropped because a family was full.
const DROPPED_METRIC: &str = "claude_watch_metric_series_dropped_total";
/// Files whose verdict discovery keeps, and files it read.
const FILES_CACHED_METRIC: &str = "claude_watch_discovery_files_cached";
const FILE_READS_METRIC: &str = "claude_watch_discovery_file_reads_total";
/// The daemon's RSS is read this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// One idle window per this much soak.
const IDLE_EVERY: Duration = Duration::from_secs(600);
/// "Flat": the most the RSS trend over the soak's second half may grow.
const FLAT_KIB_PER_MIN: f64 = 10.0;
/// Longest wait for the daemon to show a latch, or a heal.
const LATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// `claude-watch status` is asked this often while a latch or a heal is awaited (each answer
/// lists every instance: about 1,200 lines at full size).
const POLL_EVERY: Duration = Duration::from_secs(2);
/// An agent is latched only once it has run this long (so the daemon has attached to it).
const LATCH_MIN_AGE: Duration = Duration::from_secs(5);
/// The soak gives up after this many agents failed to start.
const MAX_START_FAILURES: u64 = 10;

/// What part 8 measured.
pub(super) struct Soak {
    pub(super) agents: usize,
    pub(super) processes: usize,
    pub(super) turn: (Duration, Duration),
    /// The detector settings, in words.
    pub(super) detector: String,
    /// Settling time before each idle window is measured.
    pub(super) settle: Duration,
    /// The soak itself (after the fleet was up).
    pub(super) elapsed: Duration,
    /// Starting the fleet until the daemon listed all of it.
    pub(super) ramp: Duration,
    /// Of the fleet's processes, how many `claude-watch status` listed after the ramp, and how
    /// many it listed in all (with instances the bench did not start).
    pub(super) listed: (usize, usize, usize),
    /// `(seconds since the soak started, VmRSS KiB)`.
    pub(super) rss: Vec<(f64, u64)>,
    /// The daemon's RSS before the fleet started, KiB.
    pub(super) rss_empty: u64,
    /// VmHWM (the peak RSS since the daemon started) when the soak started and at its end, KiB.
    pub(super) hwm: (u64, u64),
    /// CPU over the whole soak, percent of one core.
    pub(super) cpu: f64,
    /// Per idle window: (measured length, CPU percent of one core).
    pub(super) idle: Vec<(Duration, f64)>,
    /// Kernel records lost and sent during the soak (the daemon's counters).
    pub(super) lost: u64,
    pub(super) records: u64,
    /// The daemon's `claude_watch_metric_series_dropped_total` and `claude_watch_instances`.
    pub(super) series_dropped: u64,
    /// Discovery's cached verdicts at the soak's start and end, and the files it read during it.
    pub(super) files_cached: (u64, u64),
    pub(super) file_reads: u64,
    /// Where the daemon's resident memory was at the end (see [`rss_parts`]).
    pub(super) rss_parts: Vec<(&'static str, u64)>,
    pub(super) instances_end: u64,
    pub(super) fleet: FleetCounts,
    /// The latch cycles.
    pub(super) latches: Tally,
    /// pid_max, and how often the kernel's last pid went down (wrapped) during the soak.
    pub(super) pid_max: u64,
    pub(super) pid_wraps: u64,
    /// Daemon log lines at WARN and ERROR during the soak.
    pub(super) log: (u64, u64),
    /// Processes the coverage audit found blind during the soak (its `blind:` log lines).
    pub(super) blind: u64,
    /// The last coverage audit at the end: seconds, processes.
    pub(super) audit: (f64, u64),
    /// Instances listed at the end that the bench did not start.
    pub(super) foreign: Vec<String>,
}

/// Counts of the fleet's life.
#[derive(Default)]
pub(super) struct FleetCounts {
    pub(super) agent_starts: u64,
    pub(super) agent_exits: u64,
    pub(super) agent_start_failures: u64,
    pub(super) sleeper_starts: u64,
    pub(super) sleeper_exits: u64,
    /// Churn seconds where the previous agent was still starting (no agent replaced).
    pub(super) agent_churn_skipped: u64,
    /// Distinct pids the bench's processes had, and pids that came back (started more than once).
    pub(super) distinct_pids: usize,
    pub(super) reused_pids: usize,
    /// Agent turns answered 200, 401, other or failed (from the agents' own output).
    pub(super) turns_ok: u64,
    pub(super) turns_401: u64,
    pub(super) turns_other: u64,
}

/// A sleeping `claude` (a copy of `sleep`), leading its own process group; killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn spawn(exe: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        shared::lead_own_group(&mut cmd);
        Ok(Self(cmd.spawn().context("starting a sleeper")?))
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pids fit in i32")
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group our unreaped child leads (its id cannot be reused yet).
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A running agent of the fleet.
struct Live {
    agent: Agent,
    dir: PathBuf,
    started: Instant,
}

/// The fleet: agents and sleepers, oldest first.
struct Fleet {
    agents: VecDeque<Live>,
    sleepers: VecDeque<Sleeper>,
    /// Starts per pid.
    pids: HashMap<i32, u32>,
    /// Agents requested from the starter thread and not back yet.
    pending: usize,
    next_dir: u64,
    counts: FleetCounts,
}

impl Fleet {
    fn started(&mut self, pid: i32) {
        *self.pids.entry(pid).or_default() += 1;
    }

    /// Counts the turns the agent's output reports.
    fn drain(counts: &mut FleetCounts, live: &Live) {
        let Some(rx) = &live.agent.proc.stdout else {
            return;
        };
        for line in rx.try_iter() {
            if !line.text.contains("\"response\"") {
                if line.text.contains("\"error\"") {
                    counts.turns_other += 1;
                }
                continue;
            }
            if line.text.contains("\"status\":200") {
                counts.turns_ok += 1;
            } else if line.text.contains("\"status\":401") {
                counts.turns_401 += 1;
            } else {
                counts.turns_other += 1;
            }
        }
    }

    fn drain_all(&mut self) {
        for live in &self.agents {
            Self::drain(&mut self.counts, live);
        }
    }

    /// Stops the oldest agent not in `keep`; false if there is none.
    fn retire_agent(&mut self, keep: &HashSet<i32>) -> bool {
        let Some(i) = self
            .agents
            .iter()
            .position(|l| !keep.contains(&l.agent.proc.pid()))
        else {
            return false;
        };
        let live = self.agents.remove(i).expect("index in range");
        Self::drain(&mut self.counts, &live);
        let dir = live.dir.clone();
        drop(live);
        let _ = std::fs::remove_dir_all(dir);
        self.counts.agent_exits += 1;
        true
    }

    fn signal_agents(&self, signal: i32) {
        for live in &self.agents {
            live.agent.proc.signal(signal);
        }
    }

    fn our_pids(&self) -> HashSet<i32> {
        self.agents
            .iter()
            .map(|l| l.agent.proc.pid())
            .chain(self.sleepers.iter().map(Sleeper::pid))
            .collect()
    }
}

/// A small deterministic generator for the agents' pauses (xorshift64*).
struct Rng(u64);

impl Rng {
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let span = hi.saturating_sub(lo).as_millis() as u64 + 1;
        lo + Duration::from_millis(x % span)
    }
}

/// What the latch cycles saw.
#[derive(Default)]
pub(super) struct Tally {
    /// Sessions latched through the stand-in.
    pub(super) latched: u64,
    /// Of them, seen latched, then seen healthy again, in `claude-watch status`.
    pub(super) latch_seen: u64,
    pub(super) heal_seen: u64,
    /// Cycles completed (latched, unlatched, healed or timed out).
    pub(super) cycles: u64,
    /// Sessions of a cycle the end of the soak cut short (left out of the counts above).
    pub(super) cut: u64,
    /// Longest time from the latch (or the unlatch) to the status showing it.
    pub(super) latch_wait_max: Duration,
    pub(super) heal_wait_max: Duration,
}

impl Tally {
    /// Marks the members the status shows latched (or, `healing`, healthy with a 200).
    fn observe(&mut self, status: &[Value], members: &mut [Member], since: Instant, healing: bool) {
        for m in members
            .iter_mut()
            .filter(|m| !(if healing { m.healed } else { m.latched }))
        {
            let seen = if healing {
                shows(status, m.pid, "healthy", Some(200))
            } else {
                shows(status, m.pid, "latched", None)
            };
            if seen {
                if healing {
                    m.healed = true;
                } else {
                    m.latched = true;
                }
                let (count, max) = if healing {
                    (&mut self.heal_seen, &mut self.heal_wait_max)
                } else {
                    (&mut self.latch_seen, &mut self.latch_wait_max)
                };
                *count += 1;
                *max = (*max).max(since.elapsed());
            }
        }
    }
}

/// A session in a latch cycle: its agent's pid, and whether the daemon was seen to show it
/// latched, then healed.
struct Member {
    pid: i32,
    session: String,
    latched: bool,
    healed: bool,
}

/// Where the latch cycle is.
enum Cycle {
    /// The next cycle starts then.
    Wait(Instant),
    /// Sessions latched at `since`, waiting for the daemon to show them latched (`true` once it did).
    Latching {
        members: Vec<Member>,
        since: Instant,
    },
    /// Sessions unlatched at `since`, waiting for the daemon to show them healthy again.
    Healing {
        members: Vec<Member>,
        since: Instant,
    },
}

impl Cycle {
    fn members(&self) -> HashSet<i32> {
        match self {
            Self::Wait(_) => HashSet::new(),
            Self::Latching { members, .. } | Self::Healing { members, .. } => {
                members.iter().map(|m| m.pid).collect()
            }
        }
    }
}

/// The Theil–Sen slope of `points`: the median of the slopes between every two of them (with
/// distinct x); `None` without such a pair. Unlike least squares, a few samples far off the
/// trend (a transient peak) barely move it.
pub(super) fn theil_sen(points: &[(f64, f64)]) -> Option<f64> {
    let slopes: Vec<f64> = points
        .iter()
        .enumerate()
        .flat_map(|(i, a)| points[i + 1..].iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.0 != b.0)
        .map(|(a, b)| (b.1 - a.1) / (b.0 - a.0))
        .collect();
    (!slopes.is_empty()).then(|| median(&slopes))
}

/// The slope of the least-squares line through `points`; `None` with fewer than two distinct x.
pub(super) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// When the idle windows start, from the soak's start: one per [`IDLE_EVERY`] (at least one),
/// each centred in its share of the soak.
pub(super) fn idle_starts(soak: Duration, window: Duration) -> Vec<Duration> {
    let n = (soak.as_secs_f64() / IDLE_EVERY.as_secs_f64())
        .round()
        .max(1.0) as u32;
    (0..n)
        .map(|k| {
            soak.mul_f64((f64::from(k) + 0.5) / f64::from(n))
                .saturating_sub(window / 2)
        })
        .collect()
}

/// Which of `pids` the status lists (by pid), and the names of the instances holding none of
/// `ours`.
fn listed(status: &[Value], pids: &HashSet<i32>, ours: &HashSet<i32>) -> (usize, Vec<String>) {
    let mut seen = HashSet::new();
    let mut foreign = Vec::new();
    for i in status {
        let ps: Vec<i32> = i["pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_i64())
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default();
        if !ps.iter().any(|p| ours.contains(p)) {
            foreign.push(i["name"].as_str().unwrap_or("?").to_owned());
        }
        seen.extend(ps.into_iter().filter(|p| pids.contains(p)));
    }
    (seen.len(), foreign)
}

/// The instance holding `pid` is in `state` (and last answered `status`, when given).
fn shows(status: &[Value], pid: i32, state: &str, last: Option<u64>) -> bool {
    status.iter().any(|i| {
        i["pids"]
            .as_array()
            .is_some_and(|p| p.contains(&Value::from(pid)))
            && i["state"] == state
            && last.is_none_or(|s| i["last_status"] == s)
    })
}

fn last_pid() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(super) fn soak(env: &BenchEnv, plan: &Plan) -> anyhow::Result<Soak> {
    let dir = env.scratch.0.join("soak");
    std::fs::create_dir_all(&dir)?;
    let sleeper_exe = dir.join("claude");
    let sleep = which("sleep").context("`sleep` is not on PATH")?;
    std::fs::copy(&sleep, &sleeper_exe).context("copying sleep")?;
    let cli = install_agent(env, &dir.join("install"))?;
    let standin = StandIn::start(env)?;
    // A dry run: nothing is ever restarted (other tests and benches may share the host).
    let daemon = BenchDaemon::start(env, &dir, &format!("\n{}", plan.soak_detector))?;
    let (metrics_port, socket) = (daemon.metrics_port, daemon.socket.clone());
    let daemon = daemon.proc;
    let rss_empty = memory_kib(daemon.pid())?.0;

    let api_port = standin.api_port;
    // Agents are started by one thread that lives as long as the soak: their parent-death
    // signal follows the thread that started them.
    std::thread::scope(|scope| {
        let (want, requests) = mpsc::channel::<(PathBuf, Duration)>();
        let (done, started) = mpsc::channel::<(PathBuf, anyhow::Result<Agent>)>();
        scope.spawn(move || {
            for (dir, pause) in requests {
                let agent =
                    start_agent_paced(env, api_port, &cli, &dir, pause, plan.soak_backoff_scale);
                if done.send((dir, agent)).is_err() {
                    break;
                }
            }
        });
        let mut fleet = Fleet {
            agents: VecDeque::new(),
            sleepers: VecDeque::new(),
            pids: HashMap::new(),
            pending: 0,
            next_dir: 0,
            counts: FleetCounts::default(),
        };
        let result = run(
            env,
            plan,
            &Setup {
                daemon: &daemon,
                standin: &standin,
                socket: &socket,
                metrics_port,
                sleeper_exe: &sleeper_exe,
                dir: &dir,
                rss_empty,
            },
            &mut fleet,
            &want,
            &started,
        );
        drop(fleet);
        drop(want);
        result
    })
}

/// What the soak runs against.
struct Setup<'a> {
    daemon: &'a Proc,
    standin: &'a StandIn,
    socket: &'a Path,
    metrics_port: u16,
    sleeper_exe: &'a Path,
    dir: &'a Path,
    rss_empty: u64,
}

fn run(
    env: &BenchEnv,
    plan: &Plan,
    setup: &Setup<'_>,
    fleet: &mut Fleet,
    want: &mpsc::Sender<(PathBuf, Duration)>,
    started: &Receiver<(PathBuf, anyhow::Result<Agent>)>,
) -> anyhow::Result<Soak> {
    let daemon = setup.daemon;
    let pid = daemon.pid();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut request_agent = |fleet: &mut Fleet| -> anyhow::Result<()> {
        let dir = setup.dir.join(format!("agent-{}", fleet.next_dir));
        fleet.next_dir += 1;
        want.send((dir, rng.between(plan.soak_turn.0, plan.soak_turn.1)))
            .context("the agent starter ended")?;
        fleet.pending += 1;
        Ok(())
    };
    // Takes the agents the starter thread has started; `wait` blocks for one.
    let receive = |fleet: &mut Fleet, wait: Option<Duration>| -> anyhow::Result<()> {
        loop {
            let next = match wait {
                Some(t) if fleet.pending > 0 => started.recv_timeout(t).ok(),
                _ => started.try_recv().ok(),
            };
            let Some((dir, agent)) = next else {
                return Ok(());
            };
            fleet.pending -= 1;
            match agent {
                Ok(agent) => {
                    fleet.started(agent.proc.pid());
                    fleet.counts.agent_starts += 1;
                    fleet.agents.push_back(Live {
                        agent,
                        dir,
                        started: Instant::now(),
                    });
                }
                Err(e) => {
                    fleet.counts.agent_start_failures += 1;
                    eprintln!("bench: part 8: an agent did not start: {e:#}");
                    if fleet.counts.agent_start_failures > MAX_START_FAILURES {
                        return Err(e.context("too many agents failed to start"));
                    }
                }
            }
            if wait.is_some() {
                return Ok(());
            }
        }
    };
    let spawn_sleeper = |fleet: &mut Fleet| -> anyhow::Result<()> {
        let s = Sleeper::spawn(setup.sleeper_exe)?;
        fleet.started(s.pid());
        fleet.counts.sleeper_starts += 1;
        fleet.sleepers.push_back(s);
        Ok(())
    };
    let alive = || -> anyhow::Result<()> {
        if daemon.exited_unreaped() != Some(false) {
            let err: Vec<String> = daemon.stderr.try_iter().map(|l| l.text).collect();
            bail!("the daemon exited: {}", err.join(" / "));
        }
        Ok(())
    };

    // The fleet comes up: agents one after the other, sleepers for the rest.
    let ramp_start = Instant::now();
    let sleepers = plan.soak_processes.saturating_sub(plan.soak_agents);
    for _ in 0..sleepers {
        spawn_sleeper(fleet)?;
    }
    for _ in 0..plan.soak_agents {
        request_agent(fleet)?;
    }
    while fleet.pending > 0 {
        receive(fleet, Some(Duration::from_secs(120)))?;
        alive()?;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let listed_start = loop {
        let ours = fleet.our_pids();
        let status = daemon_status(env, setup.socket)?;
        let (n, foreign) = listed(&status, &ours, &ours);
        if n == ours.len() || Instant::now() >= deadline {
            break (n, ours.len(), n + foreign.len());
        }
        std::thread::sleep(POLL_EVERY);
    };
    if listed_start.0 < listed_start.1 {
        eprintln!(
            "bench: part 8: the daemon lists {} of the fleet's {} processes",
            listed_start.0, listed_start.1
        );
    }
    let ramp = ramp_start.elapsed();
    eprintln!(
        "bench: part 8: fleet up in {:.0} s ({} agents, {} sleepers), soaking {:.0} s",
        ramp.as_secs_f64(),
        fleet.agents.len(),
        fleet.sleepers.len(),
        plan.soak.as_secs_f64()
    );
    let metrics_start = scrape(setup.metrics_port)?;
    // What the daemon logged while the fleet came up is not counted.
    let _ = daemon.stderr.try_iter().count();

    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let start = Instant::now();
    let ticks_start = cpu_ticks(pid)?;
    let hwm_start = memory_kib(pid)?.1;
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()?;
    let mut pid_seen = last_pid().unwrap_or(0);
    let mut pid_wraps = 0;
    let mut rss: Vec<(f64, u64)> = Vec::new();
    let mut next_sample = start;
    let mut sample = |rss: &mut Vec<(f64, u64)>, pid_seen: &mut u64, pid_wraps: &mut u64| {
        if let Some(p) = last_pid() {
            if p < *pid_seen {
                *pid_wraps += 1;
            }
            *pid_seen = p;
        }
        if Instant::now() >= next_sample {
            if let Ok((kib, _)) = memory_kib(pid) {
                rss.push((start.elapsed().as_secs_f64(), kib));
            }
            next_sample += SAMPLE_EVERY;
        }
    };
    let mut log = (0u64, 0u64);
    let blind = std::cell::Cell::new(0u64);
    let read_log = |log: &mut (u64, u64)| {
        for line in daemon.stderr.try_iter() {
            if line.text.contains("blind:") {
                blind.set(blind.get() + 1);
            }
            if line.text.contains(" WARN ") {
                log.0 += 1;
            } else if line.text.contains(" ERROR ") {
                log.1 += 1;
            }
        }
    };
    let mut idle_due = idle_starts(plan.soak, plan.soak_idle + plan.soak_settle);
    idle_due.reverse();
    let mut idle = Vec::new();
    let mut cycle = Cycle::Wait(start + plan.soak_latch_every);
    let mut tally = Tally::default();
    let mut next_churn = start + Duration::from_secs(1);
    let mut next_poll = start;

    loop {
        let now = Instant::now();
        let over = now.duration_since(start) >= plan.soak;
        alive()?;
        receive(fleet, None)?;
        fleet.drain_all();
        read_log(&mut log);
        sample(&mut rss, &mut pid_seen, &mut pid_wraps);

        // An idle window, once no latch cycle and no agent start is under way (at the end if
        // none could be had before).
        let window_due = idle_due
            .last()
            .is_some_and(|at| now.duration_since(start) >= *at)
            || (over && idle.is_empty());
        if window_due && matches!(cycle, Cycle::Wait(_)) && fleet.pending == 0 {
            idle_due.pop();
            fleet.signal_agents(libc::SIGSTOP);
            let settle = Instant::now() + plan.soak_settle;
            while Instant::now() < settle {
                std::thread::sleep(Duration::from_millis(200));
                sample(&mut rss, &mut pid_seen, &mut pid_wraps);
            }
            let (t0, w0) = (cpu_ticks(pid)?, Instant::now());
            while w0.elapsed() < plan.soak_idle {
                std::thread::sleep(Duration::from_millis(200));
                sample(&mut rss, &mut pid_seen, &mut pid_wraps);
            }
            let (t1, took) = (cpu_ticks(pid)?, w0.elapsed());
            fleet.signal_agents(libc::SIGCONT);
            let percent = (t1 - t0) as f64 / hz / took.as_secs_f64() * 100.0;
            eprintln!(
                "bench: part 8: idle window {:.0} s: daemon CPU {percent:.2}% of one core",
                took.as_secs_f64()
            );
            idle.push((took, percent));
            next_churn = Instant::now() + Duration::from_secs(1);
            continue;
        }
        if over && !idle.is_empty() {
            break;
        }

        // Churn: a sleeper, and an agent unless the last one is still starting.
        if now >= next_churn && !over {
            next_churn += Duration::from_secs(1);
            if fleet.sleepers.pop_front().is_some() {
                fleet.counts.sleeper_exits += 1;
            }
            spawn_sleeper(fleet)?;
            if fleet.pending == 0 {
                if fleet.retire_agent(&cycle.members()) {
                    request_agent(fleet)?;
                }
            } else {
                fleet.counts.agent_churn_skipped += 1;
            }
        }

        // The latch cycle.
        cycle = match std::mem::replace(&mut cycle, Cycle::Wait(now)) {
            Cycle::Wait(at) if now >= at && !over => {
                let members: Vec<Member> = fleet
                    .agents
                    .iter()
                    .rev()
                    .filter(|l| l.started.elapsed() >= LATCH_MIN_AGE)
                    .take(plan.soak_latch_batch)
                    .map(|l| Member {
                        pid: l.agent.proc.pid(),
                        session: l.agent.session.clone(),
                        latched: false,
                        healed: false,
                    })
                    .collect();
                if members.is_empty() {
                    Cycle::Wait(at)
                } else {
                    for m in &members {
                        setup
                            .standin
                            .post("/latch", &serde_json::json!({ "session": m.session }))?;
                    }
                    tally.latched += members.len() as u64;
                    Cycle::Latching {
                        members,
                        since: Instant::now(),
                    }
                }
            }
            Cycle::Latching { mut members, since } if now >= next_poll => {
                next_poll = now + POLL_EVERY;
                let status = daemon_status(env, setup.socket).unwrap_or_default();
                tally.observe(&status, &mut members, since, false);
                if members.iter().all(|m| m.latched) || since.elapsed() >= LATCH_TIMEOUT {
                    for m in &members {
                        setup
                            .standin
                            .post("/unlatch", &serde_json::json!({ "session": m.session }))?;
                    }
                    Cycle::Healing {
                        members,
                        since: Instant::now(),
                    }
                } else {
                    Cycle::Latching { members, since }
                }
            }
            Cycle::Healing { mut members, since } if now >= next_poll => {
                next_poll = now + POLL_EVERY;
                let status = daemon_status(env, setup.socket).unwrap_or_default();
                tally.observe(&status, &mut members, since, true);
                if members.iter().all(|m| m.healed) || since.elapsed() >= LATCH_TIMEOUT {
                    tally.cycles += 1;
                    Cycle::Wait(Instant::now() + plan.soak_latch_every)
                } else {
                    Cycle::Healing { members, since }
                }
            }
            other => other,
        };
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    let ticks = cpu_ticks(pid)? - ticks_start;
    let (rss_end, hwm) = memory_kib(pid)?;
    let rss_parts = rss_parts(pid).unwrap_or_default();
    rss.push((elapsed.as_secs_f64(), rss_end));
    // A cycle cut short by the end is unlatched, and not counted.
    if let Cycle::Latching { members, .. } | Cycle::Healing { members, .. } = &cycle {
        for m in members {
            let _ = setup
                .standin
                .post("/unlatch", &serde_json::json!({ "session": m.session }));
        }
        let n = |f: fn(&Member) -> bool| members.iter().filter(|m| f(m)).count() as u64;
        tally.latched -= members.len() as u64;
        tally.latch_seen -= n(|m| m.latched);
        tally.heal_seen -= n(|m| m.healed);
        tally.cut = members.len() as u64;
    }
    let metrics_end = scrape(setup.metrics_port)?;
    let ours = fleet.our_pids();
    let status = daemon_status(env, setup.socket)?;
    let (_, mut foreign) = listed(&status, &ours, &ours);
    foreign.sort();
    foreign.dedup();
    read_log(&mut log);
    fleet.drain_all();
    let mut counts = std::mem::take(&mut fleet.counts);
    counts.distinct_pids = fleet.pids.len();
    counts.reused_pids = fleet.pids.values().filter(|n| **n > 1).count();
    Ok(Soak {
        agents: plan.soak_agents,
        processes: plan.soak_processes,
        turn: plan.soak_turn,
        detector: if plan.soak_detector.is_empty() {
            "at its defaults".to_owned()
        } else {
            format!("`{}`", plan.soak_detector.trim().replace('\n', "`, `"))
        },
        settle: plan.soak_settle,
        elapsed,
        ramp,
        listed: listed_start,
        rss,
        rss_empty: setup.rss_empty,
        hwm: (hwm_start, hwm),
        cpu: ticks as f64 / hz / elapsed.as_secs_f64() * 100.0,
        idle,
        lost: counter(&metrics_end, LOST_COUNTER)
            .saturating_sub(counter(&metrics_start, LOST_COUNTER)),
        records: counter(&metrics_end, RECORDS_COUNTER)
            .saturating_sub(counter(&metrics_start, RECORDS_COUNTER)),
        series_dropped: counter(&metrics_end, DROPPED_METRIC),
        files_cached: (
            counter(&metrics_start, FILES_CACHED_METRIC),
            counter(&metrics_end, FILES_CACHED_METRIC),
        ),
        file_reads: counter(&metrics_end, FILE_READS_METRIC)
            .saturating_sub(counter(&metrics_start, FILE_READS_METRIC)),
        rss_parts,
        instances_end: counter(&metrics_end, INSTANCES_METRIC),
        fleet: counts,
        latches: tally,
        pid_max,
        pid_wraps,
        log,
        blind: blind.get(),
        audit: (
            super::detection::gauge(&metrics_end, "claude_watch_coverage_audit_seconds"),
            counter(&metrics_end, "claude_watch_coverage_audit_processes"),
        ),
        foreign,
    })
}

/// The median of each tenth of `samples` (seconds into the soak, KiB) over `length` seconds,
/// in MiB; a tenth without samples is left out.
fn rss_by_tenth(samples: &[(f64, u64)], length: f64) -> Vec<f64> {
    (0..10)
        .filter_map(|i| {
            let (from, to) = (
                length * f64::from(i) / 10.0,
                length * f64::from(i + 1) / 10.0,
            );
            let mut kib: Vec<u64> = samples
                .iter()
                .filter(|(t, _)| *t >= from && (*t < to || i == 9))
                .map(|(_, k)| *k)
                .collect();
            kib.sort_unstable();
            #[expect(clippy::cast_precision_loss, reason = "KiB of a process's RSS")]
            kib.get(kib.len() / 2).map(|k| *k as f64 / 1024.0)
        })
        .collect()
}

impl Soak {
    /// RSS trend over the soak's second half, KiB per minute: Theil–Sen and least squares.
    fn slopes_kib_per_min(&self) -> (Option<f64>, Option<f64>) {
        let half = self.elapsed.as_secs_f64() / 2.0;
        let points: Vec<(f64, f64)> = self
            .rss
            .iter()
            .filter(|(t, _)| *t >= half)
            .map(|(t, kib)| (t / 60.0, *kib as f64))
            .collect();
        (theil_sen(&points), slope(&points))
    }

    pub(super) fn report(&self, report: &mut Report) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let start = self.rss.first().map_or(0, |r| r.1);
        let end = self.rss.last().map_or(0, |r| r.1);
        // The samples' peak; VmHWM too when it rose during the soak (a peak between samples).
        let sampled = self.rss.iter().map(|r| r.1).max().unwrap_or(0);
        let max = if self.hwm.1 > self.hwm.0 {
            sampled.max(self.hwm.1)
        } else {
            sampled
        };
        let minutes = self.elapsed.as_secs_f64() / 60.0;
        let sleepers = self.processes.saturating_sub(self.agents);
        report.row(
            8,
            &format!(
                "fleet soak, {} light agents + {sleepers} sleeping `claude` processes ({} watched), {minutes:.1} min with churn: daemon RSS start, max, end",
                self.agents, self.processes
            ),
            &format!(
                "{:.1} MiB, {:.1} MiB, {:.1} MiB ({:.1} MiB before the fleet; VmHWM {:.1} MiB, {})",
                mib(start),
                mib(max),
                mib(end),
                mib(self.rss_empty),
                mib(self.hwm.1),
                if self.hwm.1 > self.hwm.0 {
                    "reached during the soak"
                } else {
                    "reached before the soak"
                }
            ),
            "RSS < 30 MB",
            Some(max > 0 && max < 30 * 1000),
        );
        if !self.rss_parts.is_empty() {
            let parts: Vec<String> = self
                .rss_parts
                .iter()
                .map(|(what, kib)| format!("{what} {:.1} MiB", mib(*kib)))
                .collect();
            report.note(format!(
                "Fleet soak (8): the daemon's resident memory at the end, from /proc/PID/smaps: {}. The ring buffer's pages are the kernel's: it maps the data pages twice (a record that wraps around the end reads as one piece), so RSS counts a ring of N MiB as about 2N.",
                parts.join(", ")
            ));
        }
        let (robust, least_squares) = self.slopes_kib_per_min();
        report.row(
            8,
            "… RSS trend over the soak's second half: Theil–Sen slope (least squares)",
            &robust.map_or_else(
                || "too few samples".to_owned(),
                |s| {
                    format!(
                        "{s:+.1} KiB/min ({})",
                        least_squares.map_or_else(String::new, |l| format!("{l:+.1}"))
                    )
                },
            ),
            &format!("flat: ≤ {FLAT_KIB_PER_MIN} KiB/min"),
            robust.map(|s| s <= FLAT_KIB_PER_MIN),
        );
        let idle_total: f64 = self.idle.iter().map(|w| w.0.as_secs_f64()).sum();
        let idle_mean = self
            .idle
            .iter()
            .map(|w| w.1 * w.0.as_secs_f64())
            .sum::<f64>()
            / idle_total.max(f64::MIN_POSITIVE);
        let idle_max = self.idle.iter().map(|w| w.1).fold(0.0, f64::max);
        report.row(
            8,
            &format!(
                "… daemon CPU while idle between turns ({} window(s) of {:.0} s, agents stopped, no churn)",
                self.idle.len(),
                self.idle.first().map_or(0.0, |w| w.0.as_secs_f64())
            ),
            &format!("{idle_mean:.2}% of one core (worst window {idle_max:.2}%)"),
            "< 1% of one core",
            (!self.idle.is_empty()).then_some(idle_max < 1.0),
        );
        report.row(
            8,
            "… daemon CPU over the whole soak (turns, churn, latches, idle windows)",
            &format!("{:.1}% of one core", self.cpu),
            "",
            None,
        );
        report.row(
            8,
            "… kernel records lost (`claude_watch_lost_events_total`)",
            &format!("{} lost of {} records sent", self.lost, self.records),
            "0 lost",
            Some(self.lost == 0 && self.records > 0),
        );
        report.row(
            8,
            "… watched processes the coverage audit called blind (the daemon's `blind:` lines)",
            &self.blind.to_string(),
            "0",
            Some(self.blind == 0),
        );
        report.row(
            8,
            "… the last coverage audit's cost (one sock_diag dump and each watched process's descriptors, on a blocking thread, every 30 s)",
            &format!(
                "{:.1} ms over {} processes ({:.0} µs per process)",
                self.audit.0 * 1000.0,
                self.audit.1,
                self.audit.0 * 1e6 / self.audit.1.max(1) as f64
            ),
            "",
            None,
        );
        let l = &self.latches;
        report.row(
            8,
            "… latches and heals the daemon showed (`claude-watch status`)",
            &format!(
                "{} of {} latched sessions seen latched (each within {:.0} s), {} seen healed (each within {:.0} s of the unlatch), in {} cycles{}",
                l.latch_seen,
                l.latched,
                l.latch_wait_max.as_secs_f64(),
                l.heal_seen,
                l.heal_wait_max.as_secs_f64(),
                l.cycles,
                if l.cut > 0 {
                    format!(" ({} more sessions in a cycle the end cut short, not counted)", l.cut)
                } else {
                    String::new()
                }
            ),
            "each latch and heal seen",
            Some(l.latched > 0 && l.latch_seen == l.latched && l.heal_seen == l.latched),
        );
        let f = &self.fleet;
        let idle: Vec<String> = self.idle.iter().map(|w| format!("{:.2}%", w.1)).collect();
        report.note(format!(
            "Fleet soak (8): `claude-watch daemon` (dry run: nothing restarted; detector {}) with {} light agents (`tests/agents/agent.mjs` as `@anthropic-ai/claude-code/cli.js` under node, one install for all as `npm install -g` leaves it, each agent with a home of its own, each pausing {:.0}–{:.0} s between turns, its pause drawn at its start, against one stand-in API on 127.0.0.1) and {sleepers} sleepers (copies of `sleep` named `claude` in the scratch directory, taken for Claude Code by name; the daemon lists each as an instance of its own and attaches nothing to them: no TLS library). The fleet was up and listed in `claude-watch status` ({} of its {} processes, {} instances in all) after {:.0} s; then {:.1} min of soak. Churn, once a second: the oldest sleeper replaced ({} started, {} exited), and the oldest agent replaced unless the previous one was still starting ({} started, {} exited, {} seconds skipped, {} failed to start). Pids: {} distinct among the bench's processes, {} of them given out again during the run; the kernel's pid counter (`pid_max` {}) wrapped {} time(s). Agent turns: {} answered 200, {} answered 401, {} other. RSS sampled every {} s ({} samples, from /proc/PID/status); CPU is utime+stime from /proc/PID/stat; idle windows (one per {} min of soak, at its middle, after {:.0} s of settling): {}. The daemon logged {} WARN and {} ERROR lines during the soak (a WARN per sleeper started: \"unobserved: cannot attach\"); `claude_watch_metric_series_dropped_total` {}; `claude_watch_instances` {} at the end; discovery kept verdicts on {} files at the soak's start and {} at its end, and read {} files during it.{}",
            self.detector,
            self.agents,
            self.turn.0.as_secs_f64(),
            self.turn.1.as_secs_f64(),
            self.listed.0,
            self.listed.1,
            self.listed.2,
            self.ramp.as_secs_f64(),
            minutes,
            f.sleeper_starts,
            f.sleeper_exits,
            f.agent_starts,
            f.agent_exits,
            f.agent_churn_skipped,
            f.agent_start_failures,
            f.distinct_pids,
            f.reused_pids,
            self.pid_max,
            self.pid_wraps,
            f.turns_ok,
            f.turns_401,
            f.turns_other,
            SAMPLE_EVERY.as_secs(),
            self.rss.len(),
            IDLE_EVERY.as_secs() / 60,
            self.settle.as_secs_f64(),
            idle.join(", "),
            self.log.0,
            self.log.1,
            self.series_dropped,
            self.instances_end,
            self.files_cached.0,
            self.files_cached.1,
            self.file_reads,
            if self.foreign.is_empty() {
                String::new()
            } else {
                format!(
                    " The daemon also listed {} instance(s) the bench did not start: {}.",
                    self.foreign.len(),
                    self.foreign.join(", ")
                )
            }
        ));
        let tenths: Vec<String> = rss_by_tenth(&self.rss, self.elapsed.as_secs_f64())
            .iter()
            .map(|m| format!("{m:.2}"))
            .collect();
        report.note(format!(
            "Fleet soak (8): RSS through the soak, the median of each tenth's samples (MiB): {}.",
            tenths.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_by_tenth_takes_each_tenth_s_median() {
        // 100 s, a sample a second: the tenths' medians are their sixth samples.
        let samples: Vec<(f64, u64)> = (0..100).map(|t| (f64::from(t), 1024 * t as u64)).collect();
        let tenths = rss_by_tenth(&samples, 100.0);
        assert_eq!(tenths.len(), 10);
        assert!((tenths[0] - 5.0).abs() < 1e-9);
        assert!((tenths[9] - 95.0).abs() < 1e-9);
        assert!(rss_by_tenth(&[], 100.0).is_empty());
    }

    #[test]
    fn theil_sen_slope_follows_the_trend_not_a_few_peaks() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 3.0 * f64::from(x) + 7.0))
            .collect();
        assert!((theil_sen(&line).unwrap() - 3.0).abs() < 1e-9);
        // Flat with two peaks late in the window: least squares climbs, Theil–Sen stays flat.
        let mut flat: Vec<(f64, f64)> = (0..90).map(|x| (f64::from(x), 100.0)).collect();
        flat[80].1 = 2100.0;
        flat[86].1 = 2100.0;
        assert!(slope(&flat).unwrap() > 1.0);
        assert!(theil_sen(&flat).unwrap().abs() < 1e-9);
        assert!(theil_sen(&[(1.0, 2.0), (1.0, 5.0)]).is_none());
        assert!(theil_sen(&[]).is_none());
        // Six slopes (1, 2, 3, 3.33, 4.5, 6): the mean of the middle two.
        let curve = [(0.0, 0.0), (1.0, 1.0), (2.0, 4.0), (3.0, 10.0)];
        assert!((theil_sen(&curve).unwrap() - (3.0 + 10.0 / 3.0) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn least_squares_slope() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|x| (f64::from(x), 3.0 * f64::from(x) + 7.0))
            .collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        assert!(slope(&[(1.0, 2.0), (1.0, 5.0)]).is_none());
        assert!(slope(&[]).is_none());
        let flat = [(0.0, 10.0), (1.0, 12.0), (2.0, 10.0), (3.0, 12.0)];
        assert!((slope(&flat).unwrap() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn idle_windows_are_spread() {
        let w = Duration::from_secs(30);
        assert_eq!(
            idle_starts(Duration::from_secs(1800), w),
            [285, 885, 1485].map(Duration::from_secs)
        );
        assert_eq!(
            idle_starts(Duration::from_secs(180), w),
            [Duration::from_secs(75)]
        );
        assert_eq!(
            idle_starts(Duration::from_secs(20), Duration::from_secs(4)),
            [Duration::from_secs(8)]
        );
    }

    #[test]
    fn pauses_stay_in_range() {
        let mut rng = Rng(1);
        let (lo, hi) = (Duration::from_secs(5), Duration::from_secs(30));
        let xs: Vec<Duration> = (0..1000).map(|_| rng.between(lo, hi)).collect();
        assert!(xs.iter().all(|x| (lo..=hi).contains(x)));
        assert!(xs.iter().any(|x| *x < Duration::from_secs(10)));
        assert!(xs.iter().any(|x| *x > Duration::from_secs(25)));
    }
}
