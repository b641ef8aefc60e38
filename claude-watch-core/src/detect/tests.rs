//! Detector scenarios with a fake clock (seconds turned into monotonic ns).

use super::*;

const S: u64 = 1_000_000_000;
const WALL0: u64 = 1_780_000_000_000;

fn a() -> InstanceId {
    InstanceId::unit("alpha.service")
}

fn b() -> InstanceId {
    InstanceId::unit("beta.service")
}

fn ex(pid: u32, t: u64, status: u16, model: &str, session: &str, req: &str) -> Exchange {
    Exchange {
        ts_ms: WALL0 + t / 1_000_000,
        mono_ns: t,
        pid,
        tid: pid,
        conn: 1,
        method: Some("POST".into()),
        path: Some("/v1/messages?beta=true".into()),
        status,
        latency_ms: Some(5),
        request_id: Some(req.into()),
        retry_after: None,
        should_retry: None,
        session_id: Some(session.into()),
        model: Some(model.into()),
        user_agent: Some("claude-cli/2.1.197 (external, sdk-cli)".into()),
    }
}

struct Rig {
    d: Detector,
    events: Vec<Event>,
}

impl Rig {
    fn new() -> Self {
        Self {
            d: Detector::new(DetectorConfig::default()),
            events: Vec::new(),
        }
    }
    fn see(&mut self, id: &InstanceId, e: Exchange) -> Vec<Event> {
        let ev = self.d.observe(id, e.pid, &e, e.mono_ns);
        self.events.extend(ev.clone());
        ev
    }
    fn tick(&mut self, t: u64) -> Vec<Event> {
        let ev = self.d.tick(t);
        self.events.extend(ev.clone());
        ev
    }
    /// Ticks every 250 ms from `from` to `to`.
    fn run(&mut self, from: u64, to: u64) {
        let mut t = from;
        while t <= to {
            self.tick(t);
            t += S / 4;
        }
    }
    fn state(&self, id: &InstanceId) -> State {
        self.d.status(id).expect("instance known").state
    }
    /// Latched past a restart boundary: awaiting the new process's own answer.
    fn recovering(&self, id: &InstanceId) -> bool {
        self.state(id) == State::Latched && self.d.boundaries.contains_key(id)
    }
    /// Feeds an exchange of an instance restarts gave up on.
    fn see_given_up(&mut self, id: &InstanceId, e: Exchange) -> Vec<Event> {
        let rec = Recovery {
            boundary: None,
            gave_up: true,
        };
        let (inst, rules, _) = self.d.inst(id);
        let ev = inst.observe(rules, e.pid, &e, e.mono_ns, rec);
        self.events.extend(ev.clone());
        ev
    }
    fn closed(&self) -> Vec<&Episode> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::EpisodeClosed(ep) => Some(ep),
                _ => None,
            })
            .collect()
    }
    fn opened(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::EpisodeOpened(_)))
            .count()
    }
    fn latched_at(&self, id: &InstanceId) -> Option<u64> {
        self.events.iter().find_map(|e| match e {
            Event::StateChanged {
                instance,
                to: State::Latched,
                at_ns,
                ..
            } if instance == id => Some(*at_ns),
            _ => None,
        })
    }
}

/// Claude Code's 401 retry cadence, starting at `t0`: 401s at +0, 1, 2, 5, 9, 17, 35 s.
fn retrying_401s(r: &mut Rig, id: &InstanceId, pid: u32, t0: u64, session: &str) {
    let mut t = t0;
    for (i, gap) in [1, 1, 3, 4, 8, 18, 0].iter().enumerate() {
        r.see(
            id,
            ex(
                pid,
                t,
                401,
                "claude-opus-4-8",
                session,
                &format!("req_{pid}_{i}"),
            ),
        );
        r.run(t, t + gap * S - 1);
        t += gap * S;
    }
}

#[test]
fn a_single_401_among_successes_is_not_a_latch() {
    let mut r = Rig::new();
    r.see(&a(), ex(10, S, 200, "claude-opus-4-8", "s1", "req_1"));
    r.see(&a(), ex(10, 2 * S, 401, "claude-opus-4-8", "s1", "req_2"));
    assert_eq!(r.state(&a()), State::Suspect);
    r.see(&a(), ex(10, 3 * S, 200, "claude-opus-4-8", "s1", "req_3"));
    r.run(3 * S, 60 * S);
    assert_eq!(r.state(&a()), State::Healthy);
    assert_eq!(r.opened(), 0);
    assert!(r.closed().is_empty());
}

#[test]
fn a_lone_401_window_is_forgotten_without_latching() {
    let mut r = Rig::new();
    r.see(&a(), ex(10, S, 401, "m", "s1", "req_1"));
    r.run(S, 700 * S);
    assert_eq!(r.state(&a()), State::Healthy);
    assert_eq!(r.opened(), 0);
}

#[test]
fn retrying_client_latches_within_threshold_plus_tick() {
    let mut r = Rig::new();
    r.see(
        &a(),
        ex(10, 100 * S, 200, "claude-opus-4-8", "s1", "req_ok"),
    );
    let t0 = 4000 * S;
    retrying_401s(&mut r, &a(), 10, t0, "s1");
    let latched = r.latched_at(&a()).expect("latched");
    assert!(
        latched >= t0 + 10 * S && latched <= t0 + 11 * S,
        "latched at +{} ms",
        (latched - t0) / 1_000_000
    );
    assert_eq!(r.state(&a()), State::Latched);
    let ep = r.d.status(&a()).unwrap().window.unwrap();
    assert_eq!(ep.count_401, 7);
    assert_eq!(
        ep.first_request_ids,
        ["req_10_0", "req_10_1", "req_10_2", "req_10_3", "req_10_4"]
    );
    assert_eq!(
        ep.last_request_ids,
        ["req_10_2", "req_10_3", "req_10_4", "req_10_5", "req_10_6"]
    );
    assert_eq!(ep.idle_before_ms, Some(3900 * 1000));
    assert_eq!(ep.unit.as_deref(), Some("alpha.service"));
    assert_eq!(ep.session_ids, ["s1"]);
    assert_eq!(r.opened(), 1);
    let updates = r
        .events
        .iter()
        .filter(|e| matches!(e, Event::EpisodeUpdated(_)))
        .count();
    assert_eq!(
        updates, 2,
        "401s at +17 s and +35 s update the open episode"
    );
}

#[test]
fn a_latch_that_self_recovers() {
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "s1");
    assert_eq!(r.state(&a()), State::Latched);
    r.see(&a(), ex(10, 40 * S, 200, "claude-opus-4-8", "s1", "req_ok"));
    assert_eq!(r.state(&a()), State::Healthy);
    let closed = r.closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].end, EpisodeEnd::SelfRecovered);
    assert_eq!(closed[0].duration_ms(), 40_000);
    assert_eq!(closed[0].restarts, 0);
    assert_eq!(closed[0].idle_before_ms, None);
}

#[test]
fn throttle_on_one_model_with_success_on_another_is_a_tier_throttle_not_a_latch() {
    let mut r = Rig::new();
    for i in 0..20u64 {
        r.see(
            &a(),
            ex(
                10,
                i * S,
                429,
                "claude-opus-4-8",
                "s1",
                &format!("req_o{i}"),
            ),
        );
        if i % 5 == 0 {
            r.see(
                &a(),
                ex(
                    10,
                    i * S + S / 2,
                    200,
                    "claude-haiku-4-5",
                    "s1",
                    &format!("req_h{i}"),
                ),
            );
        }
        r.tick(i * S + S / 2);
    }
    let st = r.d.status(&a()).unwrap();
    assert_eq!(st.state, State::Healthy);
    assert_eq!(st.throttled, ["claude-opus-4-8"]);
    assert!(st.tier_throttle);
    assert_eq!(r.opened(), 0);
    let tiers: Vec<_> = r
        .events
        .iter()
        .filter(|e| matches!(e, Event::TierThrottle { .. }))
        .collect();
    assert_eq!(tiers.len(), 1, "reported once per throttle");
    assert!(
        matches!(tiers[0], Event::TierThrottle { answering, throttled, .. }
        if answering == "claude-haiku-4-5" && throttled == &["claude-opus-4-8".to_string()])
    );
    r.run(20 * S, 400 * S);
    assert!(
        r.d.status(&a()).unwrap().throttled.is_empty(),
        "quiet throttle clears"
    );
}

#[test]
fn a_429_does_not_count_toward_a_latch() {
    let mut r = Rig::new();
    r.see(&a(), ex(10, 0, 401, "m", "s1", "r0"));
    r.see(&a(), ex(10, S, 429, "m", "s1", "r1"));
    r.see(&a(), ex(10, 2 * S, 401, "m", "s1", "r2"));
    r.see(&a(), ex(10, 3 * S, 401, "m", "s1", "r3"));
    r.run(3 * S, 12 * S);
    assert_eq!(
        r.state(&a()),
        State::Suspect,
        "the 429 broke the window; only 2 401s since"
    );
    r.see(&a(), ex(10, 13 * S, 401, "m", "s1", "r4"));
    r.run(13 * S, 14 * S);
    assert_eq!(r.state(&a()), State::Latched);
    assert_eq!(r.d.status(&a()).unwrap().window.unwrap().count_401, 3);
}

#[test]
fn two_instances_one_latched() {
    let mut r = Rig::new();
    let mut t = 0;
    for i in 0..15u64 {
        r.see(&a(), ex(10, t, 401, "m", "sa", &format!("ra{i}")));
        r.see(&b(), ex(20, t + 1, 200, "m", "sb", &format!("rb{i}")));
        t += S;
        r.tick(t);
    }
    assert_eq!(r.state(&a()), State::Latched);
    assert_eq!(r.state(&b()), State::Healthy);
    assert!(r.latched_at(&b()).is_none());
    let ep = r.d.status(&a()).unwrap().window.unwrap();
    assert_eq!(ep.pids, [10]);
}

#[test]
fn restarted_instance_with_new_session_recovers_and_old_401s_do_not_count() {
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "old");
    r.d.restart_started(&a(), 40 * S);
    assert!(r.recovering(&a()));
    // A late 401 of the old process, before it is reported exited: ignored.
    r.see(&a(), ex(10, 40 * S + 1, 401, "m", "old", "late1"));
    r.d.process_exited(&a(), 10, 41 * S);
    r.see(&a(), ex(10, 41 * S + 1, 401, "m", "old", "late2"));
    assert!(r.recovering(&a()));
    r.d.process_started(&a(), 11, 42 * S);
    let ev = r.see(&a(), ex(11, 45 * S, 200, "m", "new", "req_new"));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::StateChanged {
            to: State::Healthy,
            ..
        }
    )));
    let closed = r.closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].end, EpisodeEnd::RecoveredAfterRestart);
    assert_eq!(closed[0].time_to_recovery_ms, Some(5000));
    assert_eq!(closed[0].restarts, 1);
    assert_eq!(
        closed[0].count_401, 7,
        "late 401s of the old process are not counted"
    );
    // An old-session 401 arriving after recovery does not open anything for the new one.
    r.see(&a(), ex(12, 46 * S, 401, "m", "old", "late3"));
    assert_eq!(r.state(&a()), State::Healthy);
    assert_eq!(r.d.status(&a()).unwrap().session_id.as_deref(), Some("new"));
}

#[test]
fn new_session_restarts_a_suspect_window() {
    let mut r = Rig::new();
    r.see(&a(), ex(10, 0, 401, "m", "s1", "r0"));
    r.see(&a(), ex(10, S, 401, "m", "s1", "r1"));
    r.see(&a(), ex(10, 9 * S, 401, "m", "s2", "r2"));
    r.run(9 * S, 12 * S);
    assert_eq!(r.state(&a()), State::Suspect);
    assert_eq!(
        r.d.status(&a()).unwrap().window.unwrap().session_ids,
        ["s2"]
    );
}

#[test]
fn recovering_then_latched_again_then_escalated_then_healthy() {
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "s1");
    r.d.restart_started(&a(), 40 * S);
    r.d.process_exited(&a(), 10, 40 * S);
    assert!(r.recovering(&a()), "exit during a restart closes nothing");
    r.d.process_started(&a(), 11, 41 * S);
    let ev = r.see(&a(), ex(11, 42 * S, 401, "m", "s2", "again"));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Rejected { pid: 11, .. }))
    );
    assert_eq!(r.state(&a()), State::Latched);
    assert!(!r.recovering(&a()));
    r.d.restart_started(&a(), 100 * S);
    r.d.process_exited(&a(), 11, 100 * S);
    r.d.process_started(&a(), 12, 101 * S);
    r.see(&a(), ex(12, 102 * S, 401, "m", "s3", "again2"));
    let ev = r.d.escalate(&a(), 103 * S);
    r.events.extend(ev);
    assert_eq!(r.state(&a()), State::Healthy);
    assert!(r.d.status(&a()).unwrap().window.is_none());
    let closed = r.closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].end, EpisodeEnd::Escalated);
    assert_eq!(closed[0].restarts, 2);
    assert_eq!(closed[0].pids, [10, 11, 12]);
    assert_eq!(closed[0].ended_ms, Some(WALL0 + 103_000));
    // 401s while given up open nothing; a 5xx is not reported; a non-401 is.
    r.see_given_up(&a(), ex(12, 110 * S, 401, "m", "s3", "x"));
    r.run(110 * S, 130 * S);
    let ev = r.see_given_up(&a(), ex(12, 131 * S, 529, "m", "s3", "y"));
    assert!(ev.is_empty());
    assert_eq!(r.state(&a()), State::Healthy);
    assert!(r.d.status(&a()).unwrap().window.is_none());
    assert_eq!(r.opened(), 1);
    let ev = r.see_given_up(&a(), ex(12, 132 * S, 200, "m", "s3", "z"));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Accepted { status: 200, .. }))
    );
    assert_eq!(r.state(&a()), State::Healthy);
}

#[test]
fn success_after_relatch_counts_as_recovered_after_restart() {
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "s1");
    r.d.restart_started(&a(), 40 * S);
    r.d.process_exited(&a(), 10, 40 * S);
    r.see(&a(), ex(11, 42 * S, 401, "m", "s2", "again"));
    assert_eq!(r.state(&a()), State::Latched);
    r.see(&a(), ex(11, 50 * S, 200, "m", "s2", "ok"));
    let closed = r.closed();
    assert_eq!(closed[0].end, EpisodeEnd::RecoveredAfterRestart);
    assert_eq!(closed[0].time_to_recovery_ms, Some(10_000));
}

#[test]
fn latched_process_exit_closes_the_episode() {
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "s1");
    r.d.process_exited(&a(), 10, 50 * S)
        .into_iter()
        .for_each(|e| r.events.push(e));
    assert_eq!(r.closed()[0].end, EpisodeEnd::ProcessExited);
    assert_eq!(r.state(&a()), State::Healthy);
}

#[test]
fn non_api_calls_and_neutral_statuses_are_ignored() {
    let mut r = Rig::new();
    let mut head = ex(10, 0, 401, "m", "s1", "h");
    head.path = Some("/".into());
    r.see(&a(), head);
    assert_eq!(r.state(&a()), State::Healthy);
    r.see(&a(), ex(10, S, 401, "m", "s1", "r1"));
    r.see(&a(), ex(10, 2 * S, 500, "m", "s1", "r2"));
    r.see(&a(), ex(10, 3 * S, 403, "m", "s1", "r3"));
    assert_eq!(
        r.state(&a()),
        State::Suspect,
        "5xx and 403 neither end nor extend a window"
    );
    r.see(&a(), ex(10, 4 * S, 401, "m", "s1", "r4"));
    r.see(&a(), ex(10, 5 * S, 401, "m", "s1", "r5"));
    r.run(5 * S, 11 * S);
    assert_eq!(r.d.status(&a()).unwrap().window.unwrap().count_401, 3);
    assert_eq!(r.state(&a()), State::Latched);
}

#[test]
fn restart_without_episode_is_ignored() {
    let mut r = Rig::new();
    r.see(&a(), ex(10, 0, 200, "m", "s1", "r"));
    assert!(r.d.restart_started(&a(), S).is_empty());
    assert_eq!(r.state(&a()), State::Healthy);
}

#[test]
fn restored_open_episode_continues_under_its_id() {
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "s1");
    let open = r.d.status(&a()).unwrap().window.unwrap();
    // A new daemon: fresh detector, episode read back from the journal.
    let mut r2 = Rig::new();
    r2.d.restore(&a(), open.clone());
    assert_eq!(r2.state(&a()), State::Latched);
    r2.see(&a(), ex(10, 60 * S, 401, "m", "s1", "more"));
    r2.see(&a(), ex(10, 61 * S, 200, "m", "s1", "ok"));
    let closed = r2.closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].id, open.id);
    assert_eq!(closed[0].count_401, open.count_401 + 1);
    assert_eq!(closed[0].end, EpisodeEnd::SelfRecovered);
    assert_eq!(
        r2.d.status(&a()).unwrap().client_version.as_deref(),
        Some("2.1.197")
    );
    let mut closed_ep = open;
    closed_ep.end = EpisodeEnd::Escalated;
    let mut r3 = Rig::new();
    r3.d.restore(&b(), closed_ep);
    assert_eq!(r3.state(&b()), State::Healthy);
}

#[test]
fn next_deadline_is_when_n_401s_reach_the_span() {
    let mut d = Detector::new(DetectorConfig::default());
    let id = InstanceId::unit("a.service");
    let ex = |status: u16, t: u64| crate::http::Exchange {
        ts_ms: t / 1_000_000,
        mono_ns: t,
        pid: 7,
        tid: 7,
        conn: 1,
        method: Some("POST".into()),
        path: Some("/v1/messages".into()),
        status,
        latency_ms: Some(1),
        request_id: None,
        retry_after: None,
        should_retry: None,
        session_id: Some("s".into()),
        model: Some("claude-opus-4-8".into()),
        user_agent: None,
    };
    let s = 1_000_000_000;
    d.observe(&id, 7, &ex(200, s), s);
    d.observe(&id, 7, &ex(401, 2 * s), 2 * s);
    d.observe(&id, 7, &ex(401, 3 * s), 3 * s);
    assert_eq!(
        d.next_deadline(),
        None,
        "two 401s cannot latch by the clock alone"
    );
    d.observe(&id, 7, &ex(401, 4 * s), 4 * s);
    assert_eq!(d.next_deadline(), Some(12 * s), "first 401 + 10 s");
    assert!(d.tick(12 * s - 1).is_empty());
    assert!(
        d.tick(12 * s)
            .iter()
            .any(|e| matches!(e, Event::EpisodeOpened(_)))
    );
    assert_eq!(d.next_deadline(), None);
}

#[test]
fn a_respawned_worker_keeping_the_session_id_is_heard() {
    // `claude respawn` starts a new process with the same session id; discovery announces it.
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "kept");
    r.d.restart_started(&a(), 40 * S);
    r.d.process_exited(&a(), 10, 41 * S);
    r.d.process_started(&a(), 11, 42 * S);
    // Session-bound upstream: the new worker's own 401 counts (no confirmation).
    r.see(&a(), ex(11, 43 * S, 401, "m", "kept", "again"));
    assert_eq!(r.state(&a()), State::Latched);
    // Process-bound: its 200 confirms the recovery.
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, 0, "kept");
    r.d.restart_started(&a(), 40 * S);
    r.d.process_exited(&a(), 10, 41 * S);
    r.d.process_started(&a(), 11, 42 * S);
    r.see(&a(), ex(11, 45 * S, 200, "m", "kept", "ok"));
    assert_eq!(r.state(&a()), State::Healthy);
    assert_eq!(r.closed()[0].end, EpisodeEnd::RecoveredAfterRestart);
    // A process never announced still cannot speak for the retired session.
    r.see(&a(), ex(12, 46 * S, 401, "m", "kept", "late"));
    assert_eq!(r.state(&a()), State::Healthy);
}

#[test]
fn an_episode_with_1000_sessions_and_models_keeps_the_first_ones_and_counts_the_rest() {
    let mut r = Rig::new();
    retrying_401s(&mut r, &a(), 10, S, "s0");
    assert_eq!(r.state(&a()), State::Latched);
    let before = r.d.status(&a()).and_then(|s| s.window).expect("open");
    let kept_401s = before.count_401;
    let t0 = 60 * S;
    for i in 0..1_000_u64 {
        // Each 401 of a new session, a new model and a new process (the values are the
        // observed process's to choose).
        let pid = 1_000 + u32::try_from(i).expect("small");
        r.see(
            &a(),
            ex(
                pid,
                t0 + i * S / 10,
                401,
                &format!("model-{i}"),
                &format!("s{}", i + 1),
                &format!("req_x{i}"),
            ),
        );
    }
    let w = r.d.status(&a()).and_then(|s| s.window).expect("still open");
    assert_eq!(w.count_401, kept_401s + 1_000);
    assert_eq!(w.session_ids.len(), EPISODE_LIST_KEPT);
    assert_eq!(w.session_ids[0], "s0", "the first session is kept");
    assert_eq!(
        w.session_ids[EPISODE_LIST_KEPT - 1],
        format!("s{}", EPISODE_LIST_KEPT - 1)
    );
    assert_eq!(
        w.not_kept.session_ids,
        1_000 - (EPISODE_LIST_KEPT as u64 - 1)
    );
    assert_eq!(w.models.len(), EPISODE_LIST_KEPT);
    assert_eq!(w.models[0], "claude-opus-4-8");
    assert_eq!(w.not_kept.models, 1_000 - (EPISODE_LIST_KEPT as u64 - 1));
    // The latest pids are kept: the restart target is the newest process that got 401s.
    assert_eq!(w.pids.len(), EPISODE_LIST_KEPT);
    assert_eq!(w.pids.last(), Some(&1_999));
    assert_eq!(w.not_kept.pids, 1_001 - EPISODE_LIST_KEPT as u64);
    // Every update journals a bounded record.
    let largest = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::EpisodeUpdated(ep) => Some(serde_json::to_string(ep).expect("json").len()),
            _ => None,
        })
        .max()
        .expect("updates");
    assert!(
        largest < 4_096,
        "an episode record stays small: {largest} bytes"
    );
    // Nothing left out: the field is absent from the record (journals stay as they were).
    let small = Episode {
        not_kept: NotKept::default(),
        ..w
    };
    assert!(
        !serde_json::to_string(&small)
            .expect("json")
            .contains("not_kept")
    );
}

#[test]
fn per_model_state_is_capped_and_old_accepted_answers_are_forgotten() {
    let mut r = Rig::new();
    // 1,000 models throttled at once, and 1,000 others answering.
    for i in 0..1_000_u64 {
        let t = S + i * S / 100;
        r.see(&a(), ex(10, t, 429, &format!("m429-{i}"), "s1", "req"));
        r.see(&a(), ex(10, t, 200, &format!("m200-{i}"), "s1", "req"));
    }
    let inst = r.d.instances.get(&a()).expect("known");
    assert!(
        inst.throttles.len() <= MODELS_KEPT,
        "{}",
        inst.throttles.len()
    );
    assert!(inst.throttles.contains_key(OTHER_MODEL));
    assert!(inst.last_ok.len() <= MODELS_KEPT, "{}", inst.last_ok.len());
    let status = r.d.status(&a()).expect("known");
    assert!(status.throttled.len() <= MODELS_KEPT);
    // Quiet models: throttles clear after 5 minutes, accepted answers are forgotten after 10.
    r.tick(20 * 60 * S);
    let inst = r.d.instances.get(&a()).expect("known");
    assert!(inst.throttles.is_empty());
    assert!(inst.last_ok.is_empty(), "{:?}", inst.last_ok.keys().take(3));
}

#[test]
fn a_process_with_many_sessions_keeps_a_bounded_set() {
    let mut r = Rig::new();
    for i in 0..1_000_u64 {
        r.see(
            &a(),
            ex(10, S + i, 200, "claude-haiku-4-5", &format!("s{i}"), "req"),
        );
    }
    let inst = r.d.instances.get(&a()).expect("known");
    assert!(inst.pids.get(10).expect("pid 10").sessions.len() <= RETIRED_KEPT);
    r.d.process_exited(&a(), 10, 2 * S);
    let inst = r.d.instances.get(&a()).expect("known");
    assert!(inst.retired_sessions.len() <= RETIRED_KEPT);
    assert!(r.d.at_rest(&a()));
    assert!(r.d.instances.remove(&a()).is_some());
    assert_eq!(r.d.instance_count(), 0);
}

#[test]
fn an_episode_end_s_name_is_the_journal_s() {
    for end in [
        EpisodeEnd::StillOpen,
        EpisodeEnd::SelfRecovered,
        EpisodeEnd::RecoveredAfterRestart,
        EpisodeEnd::ProcessExited,
        EpisodeEnd::Escalated,
    ] {
        assert_eq!(
            serde_json::to_value(end).expect("serializes"),
            serde_json::Value::from(end.as_str())
        );
    }
}

/// The table's other views and inputs, which only these scenarios use.
impl Detector {
    /// The thresholds in use.
    #[must_use]
    pub fn config(&self) -> &DetectorConfig {
        &self.rules.config
    }

    /// How many instances the detector keeps state for.
    #[must_use]
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// Whether forgetting `instance` loses nothing a decision needs (an unknown instance is
    /// at rest).
    #[must_use]
    pub fn at_rest(&self, instance: &InstanceId) -> bool {
        self.instances.get(instance).is_none_or(Instance::at_rest)
    }

    /// The status of one instance, if it was ever seen.
    #[must_use]
    pub fn status(&self, instance: &InstanceId) -> Option<InstanceStatus> {
        self.instances.get(instance).map(Instance::status)
    }

    /// The status of every instance seen.
    #[must_use]
    pub fn statuses(&self) -> Vec<InstanceStatus> {
        self.instances.values().map(Instance::status).collect()
    }

    /// See [`Instance::restore`].
    pub fn restore(&mut self, instance: &InstanceId, episode: Episode) -> Vec<Event> {
        self.inst(instance).0.restore(episode);
        Vec::new()
    }

    /// Replaces the thresholds (configuration reload); open windows keep their history.
    pub fn set_config(&mut self, config: DetectorConfig) {
        self.rules.config = config;
    }

    /// Escalated as a notice (see [`Instance::escalated`]).
    pub fn mark_escalated(&mut self, instance: &InstanceId, now: MonoNs) -> Vec<Event> {
        let rules = &self.rules;
        self.instances
            .get_mut(instance)
            .and_then(|i| i.escalated(rules, now, false))
            .map(Event::EpisodeUpdated)
            .into_iter()
            .collect()
    }

    /// Restarts gave up (see [`Instance::escalated`]).
    pub fn escalate(&mut self, instance: &InstanceId, now: MonoNs) -> Vec<Event> {
        self.boundaries.remove(instance);
        let (inst, rules, _) = self.inst(instance);
        inst.escalated(rules, now, true)
            .map(Event::EpisodeClosed)
            .into_iter()
            .collect()
    }
}
