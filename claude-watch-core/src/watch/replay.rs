//! Replays upstream window histories against the whole core ([`Watch`]) on a fake clock, to see
//! what a recovery configuration does over weeks of windows in a fraction of a second: restarts
//! into open windows, notices, extra downtime after each window closes, agents left down.
//!
//! The world is played here, the decisions are the core's own: agents are systemd units whose
//! requests are answered as the write-up behind this project describes the upstream (a window
//! rejects every session that asks while it is open, new ones too; a rejected session stays
//! rejected after the window closes, until its process is restarted; a persisted bad credential
//! rejects every session until someone fixes it), and the supervisor restarts a unit in a few
//! seconds. Nothing here reads a clock, a file or a process. `claude-watch replay` prints the
//! comparison; the tests below and in `tests.rs` hold the core to it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::{Effect, Input, Watch};
use crate::config::Config;
use crate::detect::MonoNs;
use crate::http::Exchange;
use crate::instance::Found;
use crate::instance::{ClaudeKind, InstanceId, Manager, Placement, ProcessInfo, SystemdUnit};
use crate::journal::Record as JournalRecord;
use crate::supervise::{EngineSocket, RestartOutcome, SystemdBus};
use crate::time::WallClock;
use crate::time::nanos as ns;

const S: MonoNs = 1_000_000_000;

/// How the replayed agents and their supervisor behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A healthy agent asks this often (a turn); its first request in a window comes at a
    /// random moment within one turn.
    pub turn_every: Duration,
    /// A rejected agent asks again this soon, four times, then once a turn (once every ten
    /// turns after an hour: the replay plays fewer of its failing turns).
    pub retry_every: Duration,
    /// From the restart decision to the new process.
    pub restart_takes: Duration,
    /// From the new process's start to its first request.
    pub first_request_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            turn_every: Duration::from_secs(60),
            retry_every: Duration::from_secs(5),
            restart_takes: Duration::from_secs(3),
            first_request_after: Duration::from_secs(5),
        }
    }
}

/// An upstream rejection window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// When it opens, from the start of the replay.
    pub start: Duration,
    /// How long it stays open.
    pub length: Duration,
    /// The instances (indices) whose sessions it rejects.
    pub instances: Vec<usize>,
}

/// A persisted bad credential: every session of the instance is rejected until it is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poison {
    /// The instance.
    pub instance: usize,
    /// When it starts.
    pub start: Duration,
    /// How long until someone fixes it.
    pub length: Duration,
}

/// A history to replay on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Agents on the host.
    pub instances: usize,
    /// Upstream windows, in order, not overlapping.
    pub windows: Vec<Window>,
    /// Persisted bad credentials.
    pub poisons: Vec<Poison>,
    /// How long the replay goes on after the last window or poison ends (an agent still down
    /// then is left down).
    pub settle: Duration,
}

/// A small deterministic generator (SplitMix64): the same seed, the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    #[expect(clippy::cast_precision_loss, reason = "53 random bits")]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform between `lo` and `hi` seconds.
    fn log_uniform(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64((lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp())
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

impl Scenario {
    /// The write-up's history on one host of `instances` agents for `days`: about 8 windows a
    /// day (the write-up's whole fleet, put on one host), lasting from 5 s to 125 minutes
    /// (log-uniform), 3% of them 2 to 7 hours; half hit every agent of the host at once, half a
    /// single one.
    #[must_use]
    pub fn writeup(seed: u64, days: u32, instances: usize) -> Self {
        let mut rng = Rng(seed);
        let end = f64::from(days) * 86_400.0;
        let mean_gap = 86_400.0 / 8.0;
        let mut windows: Vec<Window> = Vec::new();
        let mut t = 0.0;
        loop {
            t += -(1.0 - rng.unit()).ln() * mean_gap;
            let after_previous = windows
                .last()
                .map_or(0.0, |w| (w.start + w.length).as_secs_f64() + 60.0);
            t = t.max(after_previous);
            if t > end {
                break;
            }
            let length = if rng.unit() < 0.03 {
                rng.log_uniform(2.0 * 3600.0, 7.0 * 3600.0)
            } else {
                rng.log_uniform(5.0, 125.0 * 60.0)
            };
            let members = if instances > 1 && rng.unit() < 0.5 {
                (0..instances).collect()
            } else {
                vec![rng.below(instances)]
            };
            windows.push(Window {
                start: Duration::from_secs_f64(t),
                length,
                instances: members,
            });
        }
        Self {
            instances,
            windows,
            poisons: Vec::new(),
            settle: Duration::from_secs(12 * 3600),
        }
    }

    /// One window of `length` over every one of `instances` agents, a minute in.
    #[cfg(test)]
    #[must_use]
    pub fn one_window(length: Duration, instances: usize) -> Self {
        Self {
            instances,
            windows: vec![Window {
                start: Duration::from_secs(60),
                length,
                instances: (0..instances).collect(),
            }],
            poisons: Vec::new(),
            settle: Duration::from_secs(12 * 3600),
        }
    }

    /// A bad credential persisted in agent 0 of `instances` for `length`, a minute in.
    #[must_use]
    pub fn poisoned(length: Duration, instances: usize) -> Self {
        Self {
            instances,
            windows: Vec::new(),
            poisons: vec![Poison {
                instance: 0,
                start: Duration::from_secs(60),
                length,
            }],
            settle: Duration::from_secs(12 * 3600),
        }
    }

    /// When the last window or poison ends.
    fn last_end(&self) -> Duration {
        let windows = self.windows.iter().map(|w| w.start + w.length);
        let poisons = self.poisons.iter().map(|p| p.start + p.length);
        windows.chain(poisons).max().unwrap_or_default()
    }
}

/// What one window did to the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowOutcome {
    /// How long it was open.
    pub length: Duration,
    /// Instances whose session it rejected (they latched).
    pub latched: usize,
    /// Restarts whose new process it rejected: restarts into the open window, host-wide.
    pub restarts_into: u32,
    /// Per latched instance, from the window's close to the instance's next accepted answer.
    pub extra_downtime: Vec<Option<Duration>>,
    /// Latched instances that a later window rejected again before they recovered: their
    /// downtime is counted from that window's close.
    pub followed: usize,
}

/// What a persisted bad credential cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoisonOutcome {
    /// How long it persisted.
    pub length: Duration,
    /// Restarts of its instance while it persisted.
    pub restarts: u32,
    /// From its start to the first notice naming its instance.
    pub noticed_after: Option<Duration>,
    /// From the fix to the instance's next accepted answer (`None`: left down).
    pub down_after_fix: Option<Duration>,
}

/// What the core did over a whole replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Per window, in order.
    pub windows: Vec<WindowOutcome>,
    /// Per persisted bad credential.
    pub poisons: Vec<PoisonOutcome>,
    /// Restarts handed out in all.
    pub restarts: u64,
    /// Notices sent (escalation hooks run), with when and for how many instances.
    pub notices: Vec<(Duration, usize)>,
    /// Instances still latched when the replay ended (long after the last window closed).
    pub left_down: usize,
    /// Simulated time.
    pub simulated: Duration,
    /// Exchanges the core was fed.
    pub exchanges: u64,
    /// The journal the core wrote (episodes, actions, incidents), oldest first; kept only by
    /// [`run_journalled`].
    pub journal: Vec<JournalRecord>,
}

impl Outcome {
    /// The windows no longer than `longest` where restarts into the open window exceeded
    /// `log2(length / initial) + 2` (at least 1), and how many windows that long there were.
    #[must_use]
    pub fn over_bound(&self, initial: Duration, longest: Duration) -> (usize, usize) {
        let windows = self.windows.iter().filter(|w| w.length <= longest);
        let over = windows
            .clone()
            .filter(|w| f64::from(w.restarts_into) > bound(w.length, initial).max(1.0))
            .count();
        (over, windows.count())
    }

    /// Every recovered instance's extra downtime, sorted.
    #[must_use]
    pub fn downtimes(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self
            .windows
            .iter()
            .flat_map(|w| w.extra_downtime.iter().flatten().copied())
            .collect();
        all.sort_unstable();
        all
    }
}

/// Restarts into a window of `length` the policy may make: `log2(length / initial) + 2`, and
/// at least the one restart a latch gets before anything can be known of the window.
#[must_use]
pub fn bound(length: Duration, initial: Duration) -> f64 {
    (length.as_secs_f64() / initial.as_secs_f64()).log2() + 2.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    Window(usize),
    Poison(usize),
}

#[derive(Debug)]
struct Agent {
    id: InstanceId,
    pid: u32,
    session: u64,
    /// The session is rejected for good (until its process is restarted).
    rejected: Option<Cause>,
    /// A restarted process whose first answer is still to come.
    fresh: bool,
    /// 401s in a row (retries come sooner for the first few).
    retries: u32,
    /// The time of its next scheduled request (one at a time).
    next_request: Option<MonoNs>,
    /// The latest window that rejected it, until it recovers (a later window that rejects it
    /// again before then takes over: its extra downtime is counted from the later close).
    owed: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Request { agent: usize, pid: u32 },
    Restarted { agent: usize },
    Opens(usize),
}

/// Replays `scenario` against the core configured by `config` (its detector and recovery
/// sections; the instances are systemd units restarted through a bus that always answers, and
/// an escalation hook is counted as a notice whatever `config` says).
#[must_use]
pub fn run(config: &Config, scenario: &Scenario, timing: &Timing) -> Outcome {
    Replay::new(config, scenario, timing.clone(), WALL0_MS).run()
}

/// [`run`], keeping the journal the core wrote in [`Outcome::journal`], its wall times placed
/// so that the replay ends at `ends_at_ms` (the history as if it were the last weeks): what
/// `claude-watch episodes` reports and draws for a replayed history.
#[must_use]
pub fn run_journalled(
    config: &Config,
    scenario: &Scenario,
    timing: &Timing,
    ends_at_ms: u64,
) -> Outcome {
    let length = scenario.last_end() + scenario.settle;
    let wall0 = ends_at_ms.saturating_sub(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
    let mut replay = Replay::new(config, scenario, timing.clone(), wall0);
    replay.journalled = true;
    replay.run()
}

struct Replay<'a> {
    watch: Watch,
    scenario: &'a Scenario,
    timing: Timing,
    now: MonoNs,
    start: MonoNs,
    agents: Vec<Agent>,
    events: BinaryHeap<Reverse<(MonoNs, u64, Event)>>,
    seq: u64,
    next_pid: u32,
    rng: Rng,
    by_id: BTreeMap<InstanceId, usize>,
    out: Outcome,
    journalled: bool,
    /// The replay's wall clock (its start at the wall time it was given).
    clock: WallClock,
}

const WALL0_MS: u64 = 1_780_000_000_000;

impl<'a> Replay<'a> {
    fn new(config: &Config, scenario: &'a Scenario, timing: Timing, wall0_ms: u64) -> Self {
        let mut config = config.clone();
        config.daemon.dry_run = false;
        config.recovery.systemd_bus = Some("unix:path=/replay/bus".into());
        config.recovery.escalation_hook = Some(Spanned::new(0..0, vec!["/bin/true".into()]));
        config.recovery.supervisor = crate::config::SupervisorSpec::Auto;
        let start = 1_000 * S;
        let clock = WallClock::at(wall0_ms, start);
        let watch = Watch::new(
            config,
            SystemdBus::Address("unix:path=/replay/bus".into()),
            EngineSocket {
                path: PathBuf::from("/replay/docker.sock"),
                present: false,
            },
            None,
            start,
            clock,
        );
        let mut replay = Self {
            watch,
            scenario,
            timing,
            now: start,
            start,
            agents: Vec::new(),
            events: BinaryHeap::new(),
            seq: 0,
            next_pid: 1000,
            rng: Rng(0x5eed),
            by_id: BTreeMap::new(),
            out: Outcome {
                windows: scenario
                    .windows
                    .iter()
                    .map(|w| WindowOutcome {
                        length: w.length,
                        ..WindowOutcome::default()
                    })
                    .collect(),
                poisons: scenario
                    .poisons
                    .iter()
                    .map(|p| PoisonOutcome {
                        length: p.length,
                        ..PoisonOutcome::default()
                    })
                    .collect(),
                ..Outcome::default()
            },
            journalled: false,
            clock,
        };
        for k in 0..scenario.instances {
            let id = InstanceId::unit(format!("agent-{k}.service"));
            replay.by_id.insert(id.clone(), k);
            let pid = replay.pid();
            replay.agents.push(Agent {
                id,
                pid,
                session: u64::from(pid),
                rejected: None,
                fresh: false,
                retries: 0,
                next_request: None,
                owed: None,
            });
            replay.feed(Input::Started(found(&replay.agents[k].id, pid)));
            // Each agent is seen healthy once.
            replay.schedule_request(k, start + S);
        }
        for (k, w) in scenario.windows.iter().enumerate() {
            replay.push(start + ns(w.start), Event::Opens(k));
        }
        for p in &scenario.poisons {
            replay.schedule_request(p.instance, start + ns(p.start));
        }
        replay
    }

    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn push(&mut self, at: MonoNs, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    /// Schedules agent `k`'s next request at `at`, unless one comes sooner.
    fn schedule_request(&mut self, k: usize, at: MonoNs) {
        let agent = &mut self.agents[k];
        if agent.next_request.is_some_and(|t| t <= at && t >= self.now) {
            return;
        }
        agent.next_request = Some(at);
        let pid = agent.pid;
        self.push(at, Event::Request { agent: k, pid });
    }

    fn rel(&self, t: MonoNs) -> Duration {
        Duration::from_nanos(t.saturating_sub(self.start))
    }

    /// What rejects agent `k`'s sessions at `t`, if anything.
    fn cause(&self, k: usize, t: MonoNs) -> Option<Cause> {
        let at = self.rel(t);
        let poison = self
            .scenario
            .poisons
            .iter()
            .position(|p| p.instance == k && at >= p.start && at < p.start + p.length);
        if let Some(p) = poison {
            return Some(Cause::Poison(p));
        }
        self.scenario
            .windows
            .iter()
            .position(|w| w.instances.contains(&k) && at >= w.start && at < w.start + w.length)
            .map(Cause::Window)
    }

    fn run(mut self) -> Outcome {
        let end = self.start + ns(self.scenario.last_end() + self.scenario.settle);
        loop {
            let next_event = self.events.peek().map(|Reverse((t, _, _))| *t);
            let deadline = self.watch.next_deadline().map(|d| d.max(self.now + 1));
            let Some(t) = [next_event, deadline].into_iter().flatten().min() else {
                break;
            };
            if t > end {
                break;
            }
            self.now = t;
            if deadline == Some(t) && next_event != Some(t) {
                self.feed(Input::Tick);
                continue;
            }
            let Some(Reverse((_, _, event))) = self.events.pop() else {
                break;
            };
            match event {
                Event::Opens(w) => {
                    let turn = ns(self.timing.turn_every);
                    for k in self.scenario.windows[w].instances.clone() {
                        // Still down from an earlier window: this one keeps it down, and its
                        // extra downtime is counted from this one's close.
                        let agent = &mut self.agents[k];
                        if agent.rejected.is_some() {
                            if let Some(earlier) = agent.owed.replace(w) {
                                self.out.windows[earlier].followed += 1;
                            }
                            self.out.windows[w].latched += 1;
                        }
                        let at = t + self.rng.next() % turn.max(1);
                        self.schedule_request(k, at);
                    }
                }
                Event::Request { agent, pid } => self.request(agent, pid),
                Event::Restarted { agent } => self.restarted(agent),
            }
        }
        self.now = end;
        self.out.left_down = self.agents.iter().filter(|a| a.rejected.is_some()).count();
        self.out.simulated = self.rel(end);
        self.out
    }

    fn request(&mut self, k: usize, pid: u32) {
        let t = self.now;
        if self.agents[k].pid != pid || self.agents[k].next_request != Some(t) {
            return;
        }
        self.agents[k].next_request = None;
        let cause = self.cause(k, t);
        let agent = &mut self.agents[k];
        if agent.rejected.is_none()
            && let Some(cause) = cause
        {
            agent.rejected = Some(cause);
            if let Cause::Window(w) = cause
                && agent.owed != Some(w)
            {
                if let Some(earlier) = agent.owed.replace(w) {
                    self.out.windows[earlier].followed += 1;
                }
                self.out.windows[w].latched += 1;
            }
        }
        let agent = &mut self.agents[k];
        let status = if agent.rejected.is_some() { 401 } else { 200 };
        if std::mem::take(&mut agent.fresh) && status == 401 {
            match cause {
                Some(Cause::Window(w)) => self.out.windows[w].restarts_into += 1,
                Some(Cause::Poison(_)) | None => {}
            }
        }
        let agent = &mut self.agents[k];
        if status == 200 {
            agent.retries = 0;
            if let Some(w) = agent.owed.take() {
                let close = self.start
                    + ns(self.scenario.windows[w].start + self.scenario.windows[w].length);
                self.out.windows[w]
                    .extra_downtime
                    .push(Some(Duration::from_nanos(t.saturating_sub(close))));
            }
            let fixed = self
                .scenario
                .poisons
                .iter()
                .enumerate()
                .filter(|(_, p)| p.instance == k)
                .map(|(i, p)| (i, self.start + ns(p.start + p.length)))
                .filter(|(i, fix)| t >= *fix && self.out.poisons[*i].down_after_fix.is_none())
                .collect::<Vec<_>>();
            for (i, fix) in fixed {
                self.out.poisons[i].down_after_fix = Some(Duration::from_nanos(t - fix));
            }
        } else {
            agent.retries += 1;
        }
        let session = agent.session;
        self.out.exchanges += 1;
        let exchange = Exchange {
            ts_ms: self.clock.wall_ms(t),
            mono_ns: t,
            pid,
            tid: pid,
            conn: u64::from(pid),
            method: Some("POST".into()),
            path: Some("/v1/messages".into()),
            status,
            latency_ms: Some(100),
            request_id: Some(format!("req_{}", self.out.exchanges)),
            session_id: Some(format!("s{session}")),
            model: Some("claude-opus-4-8".into()),
            user_agent: Some("claude-cli/2.1.332 (external, sdk-cli)".into()),
            ..Exchange::default()
        };
        self.feed(Input::Exchange { exchange });
        // A rejected agent asks again soon, then once a turn; a healthy one keeps its turns
        // while something upstream may reject it, and goes quiet otherwise.
        let agent = &self.agents[k];
        let next = if status == 401 {
            Some(match agent.retries {
                0..=4 => self.timing.retry_every,
                5..=64 => self.timing.turn_every,
                // Latched for an hour: its turns keep failing; fewer of them are played.
                _ => self.timing.turn_every * 10,
            })
        } else if self.exposed(k, t) {
            Some(self.timing.turn_every)
        } else {
            None
        };
        if let Some(after) = next {
            self.schedule_request(k, t + ns(after));
        }
    }

    /// Whether a window or poison of agent `k` is open at `t` or opens within a turn.
    fn exposed(&self, k: usize, t: MonoNs) -> bool {
        let at = self.rel(t);
        let turn = self.timing.turn_every;
        self.scenario
            .windows
            .iter()
            .filter(|w| w.instances.contains(&k))
            .map(|w| (w.start, w.length))
            .chain(
                self.scenario
                    .poisons
                    .iter()
                    .filter(|p| p.instance == k)
                    .map(|p| (p.start, p.length)),
            )
            .any(|(start, length)| at + turn >= start && at < start + length)
    }

    fn restarted(&mut self, k: usize) {
        let old = self.agents[k].pid;
        let new = self.pid();
        let id = self.agents[k].id.clone();
        self.feed(Input::RestartFinished {
            instance: id.clone(),
            result: Ok(RestartOutcome::acted(
                id.unit_name().map(str::to_owned),
                Some(new),
                format!("restarted {id}"),
            )),
        });
        self.feed(Input::Exited { pid: old });
        let agent = &mut self.agents[k];
        agent.pid = new;
        agent.session = u64::from(new);
        agent.rejected = None;
        agent.fresh = true;
        agent.retries = 0;
        agent.next_request = None;
        self.feed(Input::Started(found(&id, new)));
        let at = self.now + ns(self.timing.first_request_after);
        self.schedule_request(k, at);
    }

    fn feed(&mut self, input: Input) {
        let now = self.now;
        for effect in self.watch.handle(now, input) {
            match effect {
                Effect::Restart { instance, .. } => {
                    let Some(&k) = self.by_id.get(&instance) else {
                        continue;
                    };
                    self.out.restarts += 1;
                    let at = self.rel(now);
                    for (i, p) in self.scenario.poisons.iter().enumerate() {
                        if p.instance == k && at >= p.start && at < p.start + p.length {
                            self.out.poisons[i].restarts += 1;
                        }
                    }
                    let done = now + ns(self.timing.restart_takes);
                    self.push(done, Event::Restarted { agent: k });
                }
                Effect::RunHook { instances, .. } => {
                    let at = self.rel(now);
                    self.out.notices.push((at, instances.len()));
                    for (i, p) in self.scenario.poisons.iter().enumerate() {
                        let named = instances
                            .iter()
                            .any(|n| *n == self.agents[p.instance].id.name);
                        if named && at >= p.start && self.out.poisons[i].noticed_after.is_none() {
                            self.out.poisons[i].noticed_after = Some(at - p.start);
                        }
                    }
                }
                Effect::Journal(record) if self.journalled => self.out.journal.push(record),
                _ => {}
            }
        }
    }
}

fn found(id: &InstanceId, pid: u32) -> Found {
    let unit = id.unit_name().unwrap_or("agent.service").to_owned();
    Found {
        info: ProcessInfo {
            pid,
            ppid: 1,
            start_time: u64::from(pid),
            exe: PathBuf::from("/usr/local/bin/claude"),
            cmdline: vec!["claude".into(), "-p".into()],
            ..ProcessInfo::default()
        },
        kind: ClaudeKind::Native,
        instance: id.clone(),
        release: Some("2.1.332".into()),
        exe_id: None,
        placement: Placement::Unit(SystemdUnit {
            cgroup: format!("/system.slice/{unit}"),
            name: unit,
            manager: Manager::System,
        }),
    }
}

/// A recovery configuration to compare, by name.
#[derive(Clone, Debug)]
pub struct Policy {
    /// What the table calls it.
    pub name: String,
    /// The configuration replayed.
    pub config: Config,
}

impl Policy {
    /// `config` with its `[recovery]` quiet windows, notice and behaviour set.
    #[must_use]
    pub fn with(
        name: &str,
        config: &Config,
        initial: Duration,
        cap: Duration,
        k: u32,
        give_up: bool,
        canary: bool,
    ) -> Self {
        let mut config = config.clone();
        let r = &mut config.recovery;
        r.backoff_initial = initial;
        r.backoff_max = Spanned::new(0..0, cap);
        r.max_restarts = NonZeroU32::new(k).unwrap_or(NonZeroU32::MIN);
        r.give_up = give_up;
        r.canary = canary;
        Self {
            name: name.to_owned(),
            config,
        }
    }

    /// The policy before escalation became a notice: 1 m doubling to 30 m, given up after 3
    /// restarts, every instance on its own.
    #[must_use]
    pub fn before(config: &Config) -> Self {
        Self::with(
            "before (give up after 3)",
            config,
            Duration::from_secs(60),
            Duration::from_secs(30 * 60),
            3,
            true,
            false,
        )
    }

    /// A naive watchdog: restart every minute until it heals, never give up, no notice.
    #[must_use]
    pub fn naive(config: &Config) -> Self {
        Self::with(
            "naive (every 1m)",
            config,
            Duration::from_secs(60),
            Duration::from_secs(60),
            u32::MAX,
            false,
            false,
        )
    }

    /// The quiet window the policy starts from.
    #[must_use]
    pub fn initial(&self) -> Duration {
        self.config.recovery.backoff_initial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;

    fn defaults() -> Config {
        Config::builtin()
    }

    const HOUR: u64 = 3600;

    /// Replays quietly (the core logs every decision).
    fn quiet(config: &Config, s: &Scenario) -> Outcome {
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            run(config, s, &Timing::default())
        })
    }

    #[test]
    fn every_window_from_30s_to_7h_with_one_and_five_agents_brings_every_agent_back() {
        let config = defaults();
        let initial = config.recovery.backoff_initial;
        let cap = *config.recovery.backoff_max.get_ref();
        let timing = Timing::default();
        for length in [30, 4 * MIN, 40 * MIN, 2 * HOUR, 7 * HOUR] {
            for n in [1, 5] {
                let length = Duration::from_secs(length);
                let o = quiet(&config, &Scenario::one_window(length, n));
                let w = &o.windows[0];
                let what = format!("{length:?} over {n}: {w:?}, notices {:?}", o.notices);
                assert_eq!(o.left_down, 0, "{what}");
                assert!(w.latched >= 1, "{what}");
                assert_eq!(
                    w.extra_downtime.len(),
                    w.latched,
                    "every latched agent came back: {what}"
                );
                // Back within one quiet-window cap of the close (and the others restarted one
                // at a time after the canary).
                let release = (timing.restart_takes + timing.first_request_after) * 5;
                let worst = w
                    .extra_downtime
                    .iter()
                    .flatten()
                    .max()
                    .copied()
                    .unwrap_or_default();
                assert!(worst <= cap + release, "{what}");
                // Restarts into the window: logarithmic up to 2 h, then one per cap at most.
                let beyond = length.saturating_sub(Duration::from_secs(2 * HOUR));
                let allowed = bound(length, initial).max(1.0)
                    + (beyond.as_secs_f64() / cap.as_secs_f64()).ceil();
                assert!(f64::from(w.restarts_into) <= allowed, "{what}");
                if length <= Duration::from_secs(2 * HOUR) {
                    assert!(
                        f64::from(w.restarts_into) <= bound(length, initial).max(1.0),
                        "{what}"
                    );
                }
                // One notice for the window, and only when it outlasts K restarts.
                let expected = usize::from(length >= Duration::from_secs(40 * MIN));
                assert_eq!(o.notices.len(), expected, "{what}");
            }
        }
    }

    #[test]
    fn a_persisted_bad_credential_is_noticed_once_and_retried_at_the_cap_never_a_storm() {
        let config = defaults();
        let o = quiet(
            &config,
            &Scenario::poisoned(Duration::from_secs(6 * HOUR), 5),
        );
        let p = &o.poisons[0];
        // 0, 1, 3, 7, 15, 31 min, then every 30 minutes: 16 in six hours.
        assert!(p.restarts <= 17, "{p:?}");
        assert_eq!(o.notices.len(), 1, "{:?}", o.notices);
        let noticed = p.noticed_after.expect("noticed");
        assert!(noticed <= Duration::from_secs(35 * MIN), "{p:?}");
        let back = p.down_after_fix.expect("back after the fix");
        assert!(
            back <= *config.recovery.backoff_max.get_ref() + Duration::from_secs(MIN),
            "{p:?}"
        );
        assert_eq!(o.left_down, 0);
        // The same with give_up: noticed as soon, but left down after the fix.
        let give_up = Policy::with(
            "give up",
            &config,
            config.recovery.backoff_initial,
            *config.recovery.backoff_max.get_ref(),
            config.recovery.max_restarts.get(),
            true,
            true,
        );
        let g = quiet(
            &give_up.config,
            &Scenario::poisoned(Duration::from_secs(6 * HOUR), 5),
        );
        assert_eq!(g.poisons[0].down_after_fix, None);
        assert_eq!(g.left_down, 1);
    }

    #[test]
    fn a_lone_latch_among_healthy_agents_is_recovered_exactly_as_without_the_canary() {
        let config = defaults();
        let mut scenario = Scenario::one_window(Duration::from_secs(4 * MIN), 5);
        scenario.windows[0].instances = vec![2];
        let with = quiet(&config, &scenario);
        let mut without = config.clone();
        without.recovery.canary = false;
        let without = quiet(&without, &scenario);
        assert_eq!(with, without);
        assert_eq!(with.windows[0].latched, 1);
        assert!(with.restarts >= 2, "{with:?}");
    }

    #[test]
    fn the_defaults_meet_the_goals_over_two_weeks_of_the_writeup_history() {
        let config = defaults();
        let initial = config.recovery.backoff_initial;
        let cap = *config.recovery.backoff_max.get_ref();
        for n in [1, 5, 30] {
            let o = quiet(&config, &Scenario::writeup(1, 14, n));
            assert_eq!(o.left_down, 0, "{n} agents");
            let (over, windows) = o.over_bound(initial, Duration::from_secs(2 * HOUR));
            assert_eq!(
                over, 0,
                "{n} agents: {over} of {windows} windows up to 2 h over the bound"
            );
            let worst = o.downtimes().last().copied().unwrap_or_default();
            let release = Duration::from_secs(8 * u64::try_from(n).unwrap());
            assert!(worst <= cap + release, "{n} agents: {worst:?}");
            assert!(
                o.notices.len() <= 2 * 14,
                "{n} agents: {} notices",
                o.notices.len()
            );
            // Restarts grow with the windows, not with the agents.
            let into: u32 = o.windows.iter().map(|w| w.restarts_into).sum();
            assert!(into < 400, "{n} agents: {into}");
        }
    }

    #[test]
    fn the_writeup_history_has_its_numbers() {
        let s = Scenario::writeup(1, 14, 30);
        let per_day = s.windows.len() as f64 / 14.0;
        assert!((5.0..=10.0).contains(&per_day), "{per_day} windows a day");
        let longest = s.windows.iter().map(|w| w.length).max().unwrap();
        let shortest = s.windows.iter().map(|w| w.length).min().unwrap();
        assert!(shortest < Duration::from_secs(60), "{shortest:?}");
        assert!(longest > Duration::from_secs(2 * 3600), "{longest:?}");
        let many = s.windows.iter().filter(|w| w.instances.len() == 30).count();
        let one = s.windows.iter().filter(|w| w.instances.len() == 1).count();
        assert!(many > 10 && one > 10, "{many} host-wide, {one} single");
        assert!(
            s.windows
                .windows(2)
                .all(|p| p[0].start + p[0].length < p[1].start),
            "windows do not overlap"
        );
        assert_eq!(Scenario::writeup(1, 14, 30), s, "deterministic");
    }

    #[test]
    fn the_policy_before_leaves_agents_down_after_a_long_window() {
        let s = Scenario::one_window(Duration::from_secs(40 * MIN), 4);
        let before = quiet(&Policy::before(&defaults()).config, &s);
        assert_eq!(before.left_down, 4, "{before:?}");
        assert_eq!(before.notices.len(), 4, "one page per agent");
        let now = quiet(&defaults(), &s);
        assert_eq!(now.left_down, 0, "{now:?}");
        assert!(now.notices.len() <= 1, "{:?}", now.notices);
    }
}
