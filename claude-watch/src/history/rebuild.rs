//! Episodes rebuilt from parsed transcripts by the live detector itself: each transcript answer
//! becomes a synthetic [`Exchange`] fed to a [`Detector`] on a fake clock (the transcript's wall
//! time, so `mono_ns = ts_ms × 10⁶`), so the rules (N 401s over T on one session, an accepted
//! answer ending the window, idle time, throttles) live in one place. Pure.
//!
//! # Instances, processes, restarts
//! - An **instance** is a project directory (`~/.claude/projects/<project>`): the sessions of an
//!   agent that runs in one working directory, one after the other.
//! - A **process** is a run of lines of one session file up to a `cost-state` line (Claude Code
//!   writes it when it exits) or the end of the file. A `--resume`d session continues the same
//!   file under the same session id, as a new process.
//! - A process that starts after the previous one of its instance ended **replaces** it: if the
//!   instance is latched then, that is a restart (the detector's `restart_started`), and an
//!   accepted answer of the new process closes the episode as recovered after restart. A process
//!   that starts while another still writes is a second, concurrent process.
//! - Lines are fed in time order, not file order: 2.1.197 writes a turn's retried errors
//!   (`api_error`) only when the next turn starts, after the error that ended the turn, and never
//!   for the last failed turn of a process. A turn-ending error whose turn has no retry logged
//!   (no `api_error` between its `user` line and itself, anywhere in the file) gets the turn's
//!   **first attempt inferred**: an answer with the same status, without request id, at the
//!   time of the `user` line (Claude Code sends the request right after it and retries 401 and
//!   429). Such a turn counts two answers. 2.1.197 writes no `api-request` lines either: the
//!   model of an error is then the model that last answered in the process.
//! - An episode still open when its instance's transcripts end is closed as
//!   [`EpisodeEnd::ProcessExited`] at the time of its process's last line: history never stores
//!   an open episode (a daemon resumes open episodes from the journal).
//!
//! [`EpisodeEnd::ProcessExited`]: crate::detect::EpisodeEnd::ProcessExited

use std::collections::BTreeMap;

use crate::detect::{
    Detector, DetectorConfig, Episode, EpisodeSource, Event, MonoNs, REQUEST_IDS_KEPT,
};
use crate::http::Exchange;
use crate::instance::InstanceId;
use crate::journal::ThrottleRecord;

use super::transcript::{Entry, EntryKind, Transcript};

/// One session file of an instance, parsed.
#[derive(Clone, Debug)]
pub struct SessionFile {
    /// The instance (project) it belongs to.
    pub instance: String,
    /// Its parsed lines.
    pub transcript: Transcript,
}

/// A restart seen in the transcripts: a new process of a latched instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    /// Instance name.
    pub instance: String,
    /// Wall time (ms) of the new process's first line.
    pub at_ms: u64,
    /// The episode it happened in.
    pub episode_id: Option<String>,
}

/// What the transcripts hold, rebuilt.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Latch episodes (all closed), ordered by first 401.
    pub episodes: Vec<Episode>,
    /// Model throttle windows.
    pub throttles: Vec<ThrottleRecord>,
    /// Restarts during episodes.
    pub restarts: Vec<Restart>,
    /// Sessions read.
    pub sessions: usize,
    /// Processes found.
    pub processes: usize,
    /// 401 answers seen.
    pub answers_401: u64,
    /// 429 answers seen.
    pub answers_429: u64,
}

#[derive(Debug)]
struct Process<'a> {
    sessions: Vec<&'a str>,
    entries: Vec<&'a Entry>,
    first_ms: u64,
    last_ms: u64,
}

/// The entries of `t` with the first attempt of turns logged without retries inferred (see the
/// module documentation).
fn with_inferred_attempts(t: &Transcript) -> Vec<Entry> {
    // Retries are logged wherever they sit in the file (2.1.197 writes them late).
    let retries: Vec<u64> = t
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EntryKind::ApiError {
                    ended_turn: false,
                    ..
                }
            )
        })
        .map(|e| e.ts_ms)
        .collect();
    let mut out: Vec<Entry> = Vec::with_capacity(t.entries.len());
    let mut prompted: Option<usize> = None;
    for e in &t.entries {
        match &e.kind {
            EntryKind::Prompted => prompted = Some(out.len()),
            EntryKind::ApiError {
                status,
                ended_turn: true,
                ..
            } => {
                let logged = |p: usize| {
                    retries
                        .iter()
                        .any(|&r| (out[p].ts_ms..=e.ts_ms).contains(&r))
                };
                if let Some(p) = prompted.take().filter(|&p| !logged(p)) {
                    let first = Entry {
                        ts_ms: out[p].ts_ms,
                        session_id: e.session_id.clone(),
                        version: e.version.clone(),
                        cwd: None,
                        kind: EntryKind::ApiError {
                            status: *status,
                            request_id: None,
                            ended_turn: false,
                        },
                    };
                    out.insert(p + 1, first);
                }
            }
            EntryKind::Request { .. } | EntryKind::Answer { .. } | EntryKind::ApiError { .. } => {
                prompted = None;
            }
            EntryKind::ProcessEnd => prompted = None,
        }
        out.push(e.clone());
    }
    out
}

/// Splits a file's entries into processes at `cost-state` lines.
fn processes(entries: &[Entry]) -> Vec<Process<'_>> {
    fn flush<'a>(cur: &mut Vec<&'a Entry>, out: &mut Vec<Process<'a>>) {
        let has_answers = cur.iter().any(|e| {
            matches!(
                e.kind,
                EntryKind::Answer { .. } | EntryKind::ApiError { .. }
            )
        });
        if has_answers {
            let mut sessions: Vec<&str> = Vec::new();
            for e in cur.iter() {
                if !sessions.contains(&e.session_id.as_str()) {
                    sessions.push(&e.session_id);
                }
            }
            out.push(Process {
                sessions,
                first_ms: cur.iter().map(|e| e.ts_ms).min().unwrap_or(0),
                last_ms: cur.iter().map(|e| e.ts_ms).max().unwrap_or(0),
                entries: std::mem::take(cur),
            });
        }
        cur.clear();
    }
    let mut out = Vec::new();
    let mut cur: Vec<&Entry> = Vec::new();
    for e in entries {
        if e.kind == EntryKind::ProcessEnd {
            flush(&mut cur, &mut out);
        } else {
            cur.push(e);
        }
    }
    flush(&mut cur, &mut out);
    out
}

const NS_PER_MS: u64 = 1_000_000;

fn mono(ms: u64) -> MonoNs {
    ms.saturating_mul(NS_PER_MS)
}

enum Step<'a> {
    Start(usize),
    Entry(usize, &'a Entry),
    End(usize),
}

struct Rig<'c> {
    det: Detector,
    cfg: &'c DetectorConfig,
    id: InstanceId,
    last_tick_ms: Option<u64>,
    episodes: BTreeMap<String, Episode>,
    throttles: BTreeMap<String, ThrottleRecord>,
    done_throttles: Vec<ThrottleRecord>,
    open_episode: Option<String>,
    latched: bool,
    /// Whether the events being handled come from an answer (not from the clock).
    answering: bool,
}

impl Rig<'_> {
    /// Advances the fake clock to `t_ms` the way the daemon's periodic tick would: at each
    /// latch deadline and at the forget / throttle-clear deadlines after the last exchange.
    fn advance(&mut self, t_ms: u64) {
        let t = mono(t_ms);
        loop {
            let mut next = self.det.next_deadline().filter(|&d| d <= t);
            if let Some(last) = self.last_tick_ms {
                for after in [self.cfg.suspect_forget_after, self.cfg.throttle_clear_after] {
                    let d = mono(last).saturating_add(crate::time::nanos(after));
                    if d <= t && d > mono(last) && next.is_none_or(|n| d < n) {
                        next = Some(d);
                    }
                }
            }
            let Some(d) = next else { break };
            let events = self.det.tick(d);
            self.handle(events);
            self.last_tick_ms = Some(d / NS_PER_MS);
        }
        let events = self.det.tick(t);
        self.handle(events);
    }

    fn handle(&mut self, events: Vec<Event>) {
        for e in events {
            match e {
                Event::EpisodeOpened(ep) | Event::EpisodeUpdated(ep) => {
                    self.latched = true;
                    self.open_episode = Some(ep.id.clone());
                    self.episodes.insert(ep.id.clone(), ep);
                }
                Event::EpisodeClosed(ep) => {
                    self.latched = false;
                    self.open_episode = None;
                    self.episodes.insert(ep.id.clone(), ep);
                }
                Event::ModelThrottled { model, at_ns, .. } => {
                    let ms = at_ns / NS_PER_MS;
                    self.throttles.insert(
                        model.clone(),
                        ThrottleRecord {
                            instance: self.id.name.clone(),
                            model,
                            first_429_ms: ms,
                            last_429_ms: ms,
                            source: EpisodeSource::Transcript,
                            ..ThrottleRecord::default()
                        },
                    );
                }
                Event::ThrottleCleared { model, at_ns, .. } => {
                    if let Some(mut t) = self.throttles.remove(&model) {
                        // Ended by the model answering; a throttle that just went quiet has no
                        // known end.
                        t.ended_ms = self.answering.then_some(at_ns / NS_PER_MS);
                        self.done_throttles.push(t);
                    }
                }
                // State changes, tier throttles, a restart's answers: nothing to record.
                _ => {}
            }
        }
    }
}

/// Rebuilds the history of every instance in `files` with the detector thresholds `cfg`. The
/// detector's own logs are silenced meanwhile: a replay of the past is not live news.
pub fn rebuild(files: &[SessionFile], cfg: &DetectorConfig) -> History {
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        rebuild_quietly(files, cfg)
    })
}

fn rebuild_quietly(files: &[SessionFile], cfg: &DetectorConfig) -> History {
    let expanded: Vec<(&str, Vec<Entry>)> = files
        .iter()
        .map(|f| (f.instance.as_str(), with_inferred_attempts(&f.transcript)))
        .collect();
    let mut by_instance: BTreeMap<&str, Vec<&[Entry]>> = BTreeMap::new();
    for (instance, entries) in &expanded {
        by_instance.entry(instance).or_default().push(entries);
    }
    let mut history = History {
        sessions: files.len(),
        ..History::default()
    };
    for (instance, transcripts) in by_instance {
        let mut procs: Vec<Process<'_>> = transcripts.iter().flat_map(|t| processes(t)).collect();
        procs.sort_by_key(|p| (p.first_ms, p.last_ms));
        history.processes += procs.len();
        rebuild_instance(instance, &procs, cfg, &mut history);
    }
    history
        .episodes
        .sort_by(|a, b| (a.first_401_ms, &a.id).cmp(&(b.first_401_ms, &b.id)));
    history.throttles.sort_by(|a, b| {
        (a.first_429_ms, &a.instance, &a.model).cmp(&(b.first_429_ms, &b.instance, &b.model))
    });
    history
}

#[expect(
    clippy::too_many_lines,
    reason = "one timeline walk; splitting it hides the order of effects"
)]
fn rebuild_instance(
    instance: &str,
    procs: &[Process<'_>],
    cfg: &DetectorConfig,
    history: &mut History,
) {
    let id = InstanceId::rule(instance);
    let mut rig = Rig {
        det: Detector::new(cfg.clone()),
        cfg,
        id: id.clone(),
        last_tick_ms: None,
        episodes: BTreeMap::new(),
        throttles: BTreeMap::new(),
        done_throttles: Vec::new(),
        open_episode: None,
        latched: false,
        answering: false,
    };
    // A process is replaced by the next one when that one starts after it ended.
    let successor: Vec<Option<usize>> = (0..procs.len())
        .map(|i| {
            procs
                .get(i + 1)
                .filter(|n| n.first_ms >= procs[i].last_ms)
                .map(|_| i + 1)
        })
        .collect();
    let predecessor: BTreeMap<usize, usize> = successor
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (s, i)))
        .collect();
    let mut steps: Vec<(u64, u8, usize, Step<'_>)> = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        steps.push((p.first_ms, 0, i, Step::Start(i)));
        for e in &p.entries {
            steps.push((e.ts_ms, 1, i, Step::Entry(i, e)));
        }
        if successor[i].is_none() {
            steps.push((p.last_ms, 2, i, Step::End(i)));
        }
    }
    // Stable: entries keep file order within a process at equal times.
    steps.sort_by_key(|(t, phase, i, _)| (*t, *i, *phase));

    let pid = |i: usize| u32::try_from(i + 1).unwrap_or(u32::MAX);
    let mut model: BTreeMap<usize, String> = BTreeMap::new();
    let mut last_answer_id: BTreeMap<usize, String> = BTreeMap::new();
    for (t, _, _, step) in steps {
        rig.advance(t);
        let now = mono(t);
        match step {
            Step::Start(i) => {
                let prev = predecessor.get(&i).copied();
                if prev.is_some() && rig.latched {
                    history.restarts.push(Restart {
                        instance: instance.to_owned(),
                        at_ms: t,
                        episode_id: rig.open_episode.clone(),
                    });
                    let ev = rig.det.restart_started(&id, now);
                    rig.handle(ev);
                }
                let ev = rig.det.process_started(&id, pid(i), now);
                rig.handle(ev);
                // A resumed session keeps its id: retiring the old process would retire it.
                if let Some(prev) = prev
                    && !procs[i]
                        .sessions
                        .iter()
                        .any(|s| procs[prev].sessions.contains(s))
                {
                    let ev = rig.det.process_exited(&id, pid(prev), now);
                    rig.handle(ev);
                }
            }
            Step::End(i) => {
                let chain: Vec<usize> =
                    std::iter::successors(Some(i), |cur| predecessor.get(cur).copied()).collect();
                for p in chain.into_iter().rev() {
                    let ev = rig.det.process_exited(&id, pid(p), now);
                    rig.handle(ev);
                }
            }
            Step::Entry(i, e) => {
                let (status, request_id, answer_model) = match &e.kind {
                    EntryKind::Request { model: m } => {
                        if let Some(m) = m {
                            model.insert(i, m.clone());
                        }
                        continue;
                    }
                    EntryKind::ProcessEnd | EntryKind::Prompted => continue,
                    EntryKind::Answer {
                        request_id,
                        model: m,
                    } => (200, request_id, m.clone()),
                    EntryKind::ApiError {
                        status, request_id, ..
                    } => (*status, request_id, None),
                };
                // One answer can span several lines (one per content block, same request id).
                if let Some(r) = request_id
                    && last_answer_id.insert(i, r.clone()).as_ref() == Some(r)
                {
                    continue;
                }
                match status {
                    401 => history.answers_401 += 1,
                    429 => history.answers_429 += 1,
                    _ => {}
                }
                let m = answer_model.or_else(|| model.get(&i).cloned());
                if status == 200
                    && let Some(m) = &m
                {
                    model.insert(i, m.clone());
                }
                let ex = Exchange {
                    ts_ms: t,
                    mono_ns: now,
                    pid: pid(i),
                    tid: pid(i),
                    method: Some("POST".into()),
                    path: Some("/v1/messages".into()),
                    status,
                    request_id: request_id.clone(),
                    session_id: Some(e.session_id.clone()),
                    model: m.clone(),
                    user_agent: e
                        .version
                        .as_ref()
                        .map(|v| format!("claude-cli/{v} (transcript)")),
                    ..Exchange::default()
                };
                let ev = rig.det.observe(&id, pid(i), &ex, now);
                rig.answering = true;
                rig.handle(ev);
                rig.answering = false;
                rig.last_tick_ms = Some(t);
                if status == 429
                    && let Some(th) = rig.throttles.get_mut(m.as_deref().unwrap_or("unknown"))
                {
                    th.count_429 += 1;
                    th.last_429_ms = t;
                    th.session_id.get_or_insert_with(|| e.session_id.clone());
                    if let Some(r) = request_id
                        && th.request_ids.len() < REQUEST_IDS_KEPT
                    {
                        th.request_ids.push(r.clone());
                    }
                }
            }
        }
    }
    let last_ms = procs.iter().map(|p| p.last_ms).max().unwrap_or(0);
    history
        .episodes
        .extend(rig.episodes.into_values().map(|mut e| {
            e.source = EpisodeSource::Transcript;
            if !e.is_closed() {
                // Restarted but no answer of the new process was ever written.
                e.end = crate::detect::EpisodeEnd::ProcessExited;
                e.ended_ms = Some(last_ms.max(e.last_401_ms));
            }
            e
        }));
    history.throttles.extend(rig.done_throttles);
    history.throttles.extend(rig.throttles.into_values());
}
