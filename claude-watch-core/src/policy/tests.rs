//! The policy alone on a fake clock: what it decides for one instance, for an incident of
//! several, and across a daemon restart.

use super::*;

const S: MonoNs = 1_000_000_000;
const MIN: MonoNs = 60 * S;
/// A fake monotonic start, far from zero so subtractions stay meaningful.
const T0: MonoNs = 10_000 * S;

/// A policy alone with its table of the instances' states (the core keeps them in its
/// records), answering for one instance as the core reads its record.
struct Alone {
    p: Policy,
    t: Table,
}

impl Alone {
    fn new(config: PolicyConfig) -> Self {
        Self {
            p: Policy::new(config),
            t: Table::new(),
        }
    }

    fn restore(snapshot: PolicySnapshot, now: MonoNs, clock: WallClock) -> Self {
        let (p, t) = Policy::restore(snapshot, now, clock);
        Self { p, t }
    }

    fn config(&self) -> &PolicyConfig {
        self.p.config()
    }

    fn set_config(&mut self, config: PolicyConfig) {
        self.p.set_config(&mut self.t, config);
    }

    fn phase(&self, id: &InstanceId) -> Option<Phase> {
        self.t.get(id).and_then(Instance::phase)
    }

    fn recovery(&self, id: &InstanceId) -> Recovery {
        self.t.get(id).map(Instance::detector).unwrap_or_default()
    }

    fn restarts(&self, id: &InstanceId) -> u32 {
        self.view(id).restarts
    }

    fn not_before(&self, id: &InstanceId) -> Option<MonoNs> {
        self.t.get(id).and_then(Instance::not_before)
    }

    fn view(&self, id: &InstanceId) -> RecoveryView {
        self.p
            .view(id, &self.t.get(id).cloned().unwrap_or_default())
    }

    fn incident(&self) -> Option<IncidentView> {
        self.p.incident()
    }

    fn set_owner(&mut self, id: &InstanceId, owner: u32) {
        self.p.set_owner(&mut self.t, id, owner);
    }

    fn latched(&mut self, id: &InstanceId, now: MonoNs) {
        self.p.latched(&mut self.t, id, now);
    }

    fn restarted_elsewhere(&mut self, id: &InstanceId, now: MonoNs) {
        self.p.restarted_elsewhere(&mut self.t, id, now);
    }

    fn restart_finished<O, E>(&mut self, id: &InstanceId, now: MonoNs, result: &Result<O, E>) {
        self.p.restart_finished(&mut self.t, id, now, result);
    }

    fn recovered(&mut self, id: &InstanceId, now: MonoNs) -> Option<Duration> {
        self.p.recovered(&mut self.t, id, now)
    }

    fn hold(&mut self, id: &InstanceId) {
        self.p.hold(&mut self.t, id);
    }

    /// Forgetting `id` is dropping its state, and what the policy keeps of it besides.
    fn forget(&mut self, id: &InstanceId) {
        self.t.remove(id);
        self.p.forget(&mut self.t, id);
    }

    fn poll(&mut self, now: MonoNs) -> Vec<Action> {
        self.p.poll(&mut self.t, now)
    }

    fn next_deadline(&self) -> Option<MonoNs> {
        self.p.next_deadline(&self.t)
    }

    fn snapshot(&self, clock: WallClock) -> PolicySnapshot {
        self.p.snapshot(&self.t, clock)
    }
}

fn id(name: &str) -> InstanceId {
    InstanceId::rule(name)
}

fn restarts_of(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Restart(i) => Some(i.name.as_str()),
            _ => None,
        })
        .collect()
}

fn escalations_of(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Escalate { instance, .. } => Some(instance.name.as_str()),
            _ => None,
        })
        .collect()
}

fn ok() -> Result<(), ()> {
    Ok(())
}

/// The defaults with a notice after 3 restarts (K), as the tests count.
fn k3() -> PolicyConfig {
    PolicyConfig {
        max_restarts: 3,
        ..PolicyConfig::default()
    }
}

/// Restart handed out and finished OK at `t`, then the new process latches again at `t`.
fn restart_and_relatch(p: &mut Alone, name: &str, t: MonoNs) -> Vec<Action> {
    let actions = p.poll(t);
    assert_eq!(restarts_of(&actions), [name], "a restart is due at {t}");
    p.restart_finished(&id(name), t, &ok());
    p.latched(&id(name), t);
    actions
}

#[test]
fn first_latch_restarts_at_once_and_recovery_is_confirmed_by_the_new_process() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig::default());
    assert!(p.poll(T0).is_empty(), "nothing latched, nothing to do");
    assert_eq!(p.next_deadline(), None);
    p.latched(&a, T0);
    assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
    assert!(
        restarts_of(&p.poll(T0)).is_empty(),
        "restart handed out once"
    );
    p.restart_finished(&a, T0 + 2 * S, &ok());
    assert!(matches!(p.phase(&a), Some(Phase::Recovering { .. })));
    let ttr = p.recovered(&a, T0 + 5 * S);
    assert_eq!(ttr, Some(Duration::from_secs(3)));
    assert_eq!(p.phase(&a), Some(Phase::Idle));
    assert_eq!(p.restarts(&a), 0);
}

#[test]
fn relatches_back_off_with_doubling_waits_up_to_the_cap() {
    let config = PolicyConfig {
        max_backoff: Duration::from_secs(4 * 60),
        ..PolicyConfig::default()
    };
    let mut p = Alone::new(config);
    let mut t = T0;
    p.latched(&id("a"), t);
    restart_and_relatch(&mut p, "a", t);
    let mut waits = Vec::new();
    for _ in 0..5 {
        let nb = p
            .not_before(&id("a"))
            .expect("a quiet window after a relatch");
        waits.push(nb - t);
        // Inside the window: no restart, and the window's end is the next deadline.
        let inside = p.poll(nb - S);
        assert!(
            restarts_of(&inside).is_empty(),
            "no restart inside the window"
        );
        assert_eq!(p.next_deadline(), Some(nb));
        t = nb;
        restart_and_relatch(&mut p, "a", t);
    }
    assert_eq!(waits, [MIN, 2 * MIN, 4 * MIN, 4 * MIN, 4 * MIN]);
}

#[test]
fn a_healthy_period_resets_the_backoff() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig::default());
    p.latched(&a, T0);
    restart_and_relatch(&mut p, "a", T0);
    let t1 = p.not_before(&a).unwrap();
    restart_and_relatch(&mut p, "a", t1);
    assert_eq!(p.not_before(&a).unwrap() - t1, 2 * MIN);
    let t2 = p.not_before(&a).unwrap();
    assert_eq!(restarts_of(&p.poll(t2)), ["a"]);
    p.restart_finished(&a, t2, &ok());
    p.recovered(&a, t2);
    // Healthy for less than the reset period: the backoff is remembered.
    p.poll(t2 + 5 * MIN);
    p.latched(&a, t2 + 5 * MIN);
    restart_and_relatch(&mut p, "a", t2 + 5 * MIN);
    assert_eq!(p.not_before(&a).unwrap() - (t2 + 5 * MIN), 4 * MIN);
    // Now healthy for 10 minutes: back to the first window.
    let t3 = p.not_before(&a).unwrap();
    assert_eq!(restarts_of(&p.poll(t3)), ["a"]);
    p.restart_finished(&a, t3, &ok());
    p.recovered(&a, t3);
    assert_eq!(
        p.next_deadline(),
        Some(t3 + 10 * MIN),
        "the reset is a deadline"
    );
    p.poll(t3 + 10 * MIN);
    let t4 = t3 + 11 * MIN;
    p.latched(&a, t4);
    restart_and_relatch(&mut p, "a", t4);
    assert_eq!(p.not_before(&a).unwrap() - t4, MIN);
}

#[test]
fn without_canary_simultaneous_latches_are_restarted_one_at_a_time() {
    let mut p = Alone::new(PolicyConfig {
        canary: false,
        ..PolicyConfig::default()
    });
    for (k, name) in ["c", "a", "b"].iter().enumerate() {
        p.latched(&id(name), T0 + k as u64 * 1_000_000);
    }
    let t = T0 + S;
    assert_eq!(
        restarts_of(&p.poll(t)),
        ["c"],
        "oldest latch first, one only"
    );
    assert!(restarts_of(&p.poll(t)).is_empty(), "c still restarting");
    p.restart_finished(&id("c"), t, &ok());
    assert!(restarts_of(&p.poll(t)).is_empty(), "c not confirmed yet");
    p.recovered(&id("c"), t + 3 * S);
    assert_eq!(restarts_of(&p.poll(t + 3 * S)), ["a"]);
    // a's restart fails: the slot is released, b goes next, a is held.
    p.restart_finished(&id("a"), t + 4 * S, &Err::<(), _>("unit not found"));
    assert_eq!(restarts_of(&p.poll(t + 4 * S)), ["b"]);
    assert_eq!(p.not_before(&id("a")), Some(t + 4 * S + MIN));
    // b is never confirmed: after the restart timeout the slot frees, a waits for its window.
    let timeout = ns(PolicyConfig::default().restart_timeout);
    let t5 = t + 5 * S + timeout;
    p.restart_finished(&id("b"), t + 5 * S, &ok());
    assert!(restarts_of(&p.poll(t5 - S)).is_empty());
    assert_eq!(restarts_of(&p.poll(t5)), ["a"]);
    assert!(p.incident().is_none(), "no incidents without canary");
}

#[test]
fn restart_that_never_reports_times_out_and_is_retried_with_backoff() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig::default());
    p.latched(&a, T0);
    assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
    let timeout = ns(p.config().restart_timeout);
    p.poll(T0 + S);
    assert_eq!(p.next_deadline(), Some(T0 + timeout));
    assert!(restarts_of(&p.poll(T0 + timeout)).is_empty());
    assert_eq!(p.phase(&a), Some(Phase::Latched));
    assert_eq!(p.not_before(&a), Some(T0 + timeout + MIN));
    // A late report of the abandoned restart changes nothing.
    p.restart_finished(&a, T0 + timeout + S, &ok());
    assert_eq!(p.phase(&a), Some(Phase::Latched));
    assert_eq!(restarts_of(&p.poll(T0 + timeout + MIN)), ["a"]);
    assert_eq!(p.restarts(&a), 0, "failed attempts are not restarts");
}

#[test]
fn escalation_is_a_notice_once_and_restarts_go_on_at_the_quiet_window() {
    // A persisted bad credential: every new process of `a` gets 401.
    let a = id("a");
    let config = PolicyConfig {
        max_backoff: Duration::from_secs(8 * 60),
        ..k3()
    };
    let mut p = Alone::new(config);
    let mut t = T0;
    p.latched(&a, t);
    let mut notices = 0;
    let mut restarts = 0;
    let mut waits = Vec::new();
    // Four hours: restarts go on behind the doubling window, capped.
    while t < T0 + 240 * MIN {
        let actions = p.poll(t);
        notices += escalations_of(&actions).len();
        if restarts_of(&actions) == ["a"] {
            restarts += 1;
            p.restart_finished(&a, t, &ok());
            p.latched(&a, t);
            let nb = p.not_before(&a).expect("a quiet window");
            waits.push((nb - t) / MIN);
            if restarts == 3 {
                assert_eq!(p.view(&a).escalated, Some(t), "escalated at the 3rd");
            }
            t = nb;
        } else {
            t += S;
        }
    }
    let last = p.poll(t);
    notices += escalations_of(&last).len();
    assert_eq!(notices, 1, "one notice for the whole escalation");
    assert_eq!(&waits[..5], [1, 2, 4, 8, 8], "{waits:?}");
    // 0, 1, 3, 7, 15 min, then every 8 minutes: never a storm, never abandoned.
    assert_eq!(restarts, 5 + (240 - 15) / 8, "{waits:?}");
    assert!(p.view(&a).escalated.is_some());
    // The credential is fixed: the next restart is confirmed, and the escalation ends.
    assert_eq!(restarts_of(&last), ["a"]);
    p.restart_finished(&a, t, &ok());
    assert!(p.recovered(&a, t + S).is_some());
    assert_eq!(p.view(&a), RecoveryView::default());
}

#[test]
fn with_give_up_an_escalated_instance_is_not_restarted_until_it_answers() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig {
        give_up: true,
        ..k3()
    });
    let mut t = T0;
    p.latched(&a, t);
    for k in 1..=3 {
        restart_and_relatch(&mut p, "a", t);
        assert_eq!(p.restarts(&a), k);
        if k < 3 {
            t = p.not_before(&a).unwrap();
        }
    }
    assert_eq!(p.phase(&a), Some(Phase::GaveUp));
    let actions = p.poll(t);
    assert_eq!(escalations_of(&actions), ["a"]);
    assert!(restarts_of(&actions).is_empty());
    // Given up: further latches and polls do nothing, hook once.
    p.latched(&a, t + 60 * MIN);
    let later = p.poll(t + 120 * MIN);
    assert!(later.is_empty(), "{later:?}");
    // A non-401 answer ends it; a new latch restarts again.
    assert_eq!(p.recovered(&a, t + 121 * MIN), None);
    assert_eq!(p.phase(&a), Some(Phase::Idle));
    p.latched(&a, t + 122 * MIN);
    assert_eq!(restarts_of(&p.poll(t + 122 * MIN)), ["a"]);
}

#[test]
fn escalate_after_notifies_when_latched_that_long_whatever_the_restarts() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig {
        escalate_after: Some(Duration::from_secs(10 * 60)),
        max_restarts: 100,
        ..PolicyConfig::default()
    });
    p.latched(&a, T0);
    // Its supervisor keeps failing: no restart ever happens, but the latch lasts.
    let mut t = T0;
    let mut notices = Vec::new();
    while t <= T0 + 15 * MIN {
        let actions = p.poll(t);
        if restarts_of(&actions) == ["a"] {
            p.restart_finished(&a, t, &Err::<(), _>("bus down"));
        }
        if !escalations_of(&actions).is_empty() {
            notices.push(t);
        }
        t += S;
    }
    assert_eq!(notices, [T0 + 10 * MIN]);
}

#[test]
fn a_non_401_before_the_restart_cancels_it() {
    let mut p = Alone::new(PolicyConfig::default());
    p.latched(&id("a"), T0);
    p.latched(&id("b"), T0 + 1_000_000);
    assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
    p.recovered(&id("b"), T0 + S);
    p.restart_finished(&id("a"), T0, &ok());
    p.recovered(&id("a"), T0 + 2 * S);
    assert!(restarts_of(&p.poll(T0 + 2 * S)).is_empty());
    assert!(p.incident().is_none());
}

#[test]
fn a_new_process_that_answers_before_the_supervisor_confirms_the_restart() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig::default());
    p.latched(&a, T0);
    assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
    assert_eq!(
        p.recovered(&a, T0 + S),
        None,
        "not yet: the supervisor has not answered"
    );
    p.restart_finished(&a, T0 + 2 * S, &ok());
    assert_eq!(
        p.phase(&a),
        Some(Phase::Idle),
        "confirmed by the early answer"
    );
    assert_eq!(
        p.next_deadline(),
        Some(T0 + 2 * S + ns(p.config().healthy_reset))
    );
}

/// Four instances latched within seconds of each other, the window open `open_for`: returns
/// the restarts handed out while it was open and after it closed, and the notices.
fn incident_run(p: &mut Alone, open_for: MonoNs) -> (Vec<(MonoNs, String)>, Vec<Action>) {
    let names = ["a", "b", "c", "d"];
    let closes = T0 + open_for;
    let mut latched = 0;
    let mut t = T0;
    let mut restarts = Vec::new();
    let mut notices = Vec::new();
    let mut healthy = 0;
    while healthy < names.len() {
        assert!(
            t < T0 + 24 * 60 * MIN,
            "every instance recovers: {restarts:?}"
        );
        if latched < names.len() && t >= T0 + u64::try_from(latched).unwrap() * 2 * S {
            p.latched(&id(names[latched]), t);
            latched += 1;
        }
        let actions = p.poll(t);
        notices.extend(
            actions
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::Escalate { .. } | Action::IncidentEscalated { .. }
                    )
                })
                .cloned(),
        );
        for name in restarts_of(&actions) {
            restarts.push((t, name.to_owned()));
            // The restart takes 3 s; the new process asks 2 s later.
            p.restart_finished(&id(name), t + 3 * S, &ok());
            if t + 5 * S < closes {
                p.latched(&id(name), t + 5 * S);
            } else {
                p.recovered(&id(name), t + 5 * S);
                healthy += 1;
            }
        }
        t += S;
    }
    (restarts, notices)
}

#[test]
fn an_incident_restarts_one_canary_per_quiet_window_and_the_rest_once_it_heals() {
    let mut p = Alone::new(k3());
    let open_for = 40 * MIN;
    let (restarts, notices) = incident_run(&mut p, open_for);
    let into_window: Vec<&(MonoNs, String)> = restarts
        .iter()
        .filter(|(t, _)| *t + 5 * S < T0 + open_for)
        .collect();
    // a at once (alone so far), then the incident's tries at 1, 3, 7, 15, 31 min after a's
    // rejection: log2(40 min / 1 min) + 2 at most.
    assert_eq!(into_window.len(), 6, "{restarts:?}");
    assert!(into_window.len() as f64 <= (40.0f64).log2() + 2.0);
    let canaries: Vec<&str> = into_window.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        canaries,
        ["a", "b", "c", "d", "a", "b"],
        "the canary rotates"
    );
    // After the window: the try at 63 min heals, then the other three, one at a time.
    let after: Vec<&(MonoNs, String)> = restarts
        .iter()
        .filter(|(t, _)| *t + 5 * S >= T0 + open_for)
        .collect();
    assert_eq!(after.len(), 4, "{restarts:?}");
    assert!(after.windows(2).all(|w| w[1].0 > w[0].0), "one at a time");
    let last = after.last().unwrap().0;
    assert!(
        last - (T0 + open_for) <= 30 * MIN,
        "back within one cap of the close"
    );
    // One notice for the incident (3 rejected tries), none per instance.
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        matches!(&notices[0], Action::IncidentEscalated { members, tries: 3, .. } if members.len() == 4)
    );
    assert!(p.incident().is_none());
}

#[test]
fn an_incident_shorter_than_the_notice_sends_none() {
    let mut p = Alone::new(PolicyConfig::default());
    let (restarts, notices) = incident_run(&mut p, 2 * MIN);
    assert!(notices.is_empty(), "{notices:?}");
    assert_eq!(
        restarts.len(),
        2 + 4,
        "two tries into the window, then all four: {restarts:?}"
    );
}

#[test]
fn a_canary_with_a_bad_credential_does_not_hold_the_others_back() {
    // `a` latched with a persisted bad credential, `b` latched in a window that closed:
    // the canary rotates to b, whose confirmed restart releases a to fail on its own.
    let (a, b) = (id("a"), id("b"));
    let mut p = Alone::new(k3());
    p.latched(&a, T0);
    p.latched(&b, T0 + S);
    assert!(p.incident().is_some());
    assert_eq!(restarts_of(&p.poll(T0 + S)), ["a"]);
    p.restart_finished(&a, T0 + 2 * S, &ok());
    p.latched(&a, T0 + 3 * S);
    let next = p.incident().unwrap().next_try.unwrap();
    assert_eq!(next, T0 + 3 * S + MIN);
    assert!(
        restarts_of(&p.poll(next - S)).is_empty(),
        "b waits for the canary's window"
    );
    assert_eq!(restarts_of(&p.poll(next)), ["b"], "b has had no try yet");
    p.restart_finished(&b, next + S, &ok());
    assert!(p.recovered(&b, next + 2 * S).is_some());
    assert!(
        p.incident().is_none(),
        "b's confirmed restart closes the incident"
    );
    // a is released and restarted promptly; rejected again, alone, it backs off alone...
    let t = next + 2 * S;
    assert_eq!(restarts_of(&p.poll(t)), ["a"]);
    p.restart_finished(&a, t, &ok());
    p.latched(&a, t + S);
    assert!(
        p.incident().is_none(),
        "a released member's failure is its own"
    );
    assert_eq!(p.not_before(&a), Some(t + S + MIN));
    // ...until K restarts alone did not heal it: escalated on its own, it never holds
    // another instance back.
    let mut t = t + S + MIN;
    for _ in 0..2 {
        restart_and_relatch(&mut p, "a", t);
        t = p.not_before(&a).unwrap();
    }
    assert!(p.view(&a).escalated.is_some());
    p.latched(&id("c"), t - S);
    assert!(p.incident().is_none());
    assert_eq!(
        restarts_of(&p.poll(t - S)),
        ["c"],
        "a lone latch, restarted at once"
    );
}

#[test]
fn a_lone_latch_is_recovered_exactly_as_without_canary() {
    for canary in [true, false] {
        let mut p = Alone::new(PolicyConfig {
            canary,
            ..PolicyConfig::default()
        });
        p.latched(&id("a"), T0);
        assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
        p.restart_finished(&id("a"), T0 + S, &ok());
        p.latched(&id("a"), T0 + 2 * S);
        assert_eq!(
            p.not_before(&id("a")),
            Some(T0 + 2 * S + MIN),
            "canary {canary}"
        );
        assert!(p.incident().is_none());
    }
}

#[test]
fn a_rejection_while_another_is_latched_opens_the_incident() {
    let (a, b) = (id("a"), id("b"));
    let mut p = Alone::new(PolicyConfig {
        canary: true,
        ..PolicyConfig::default()
    });
    p.latched(&a, T0);
    assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
    p.restart_finished(&a, T0 + S, &ok());
    // b latches while a's restart awaits its answer: an incident, a its canary.
    p.latched(&b, T0 + 2 * S);
    let inc = p.incident().expect("incident");
    assert_eq!(inc.canary.as_ref(), Some(&a));
    assert!(p.view(&b).in_incident && !p.view(&b).canary);
    p.latched(&a, T0 + 3 * S);
    let inc = p.incident().unwrap();
    assert_eq!((inc.tries, inc.canary), (1, None));
    assert_eq!(inc.next_try, Some(T0 + 3 * S + MIN));
    assert_eq!(
        p.view(&b).not_before,
        Some(T0 + 3 * S + MIN),
        "b shows the next try"
    );
    let actions = p.poll(T0 + 3 * S);
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::IncidentOpened { members, .. } if members.len() == 2))
    );
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::Backoff { incident: true, .. }))
    );
}

#[test]
fn an_incident_member_that_exits_or_heals_alone_leaves_it() {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let mut p = Alone::new(PolicyConfig::default());
    for (k, x) in [&a, &b, &c].into_iter().enumerate() {
        p.latched(x, T0 + k as u64 * S);
    }
    assert_eq!(p.incident().unwrap().members.len(), 3);
    p.forget(&c);
    p.recovered(&b, T0 + 5 * S);
    assert_eq!(p.incident().unwrap().members, std::slice::from_ref(&a));
    p.hold(&a);
    assert!(p.incident().is_none());
    let actions = p.poll(T0 + 6 * S);
    assert!(actions.iter().any(|x| matches!(
        x,
        Action::IncidentClosed {
            healed_by: None,
            ..
        }
    )));
    assert!(restarts_of(&actions).is_empty());
}

#[test]
fn a_restored_policy_does_not_restart_early() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig::default());
    let wall0: u64 = 1_780_000_000_000;
    p.latched(&a, T0);
    restart_and_relatch(&mut p, "a", T0);
    let t1 = p.not_before(&a).unwrap();
    restart_and_relatch(&mut p, "a", t1);
    let deadline_wall = wall0 + (p.not_before(&a).unwrap() - T0) / 1_000_000;
    let saved = serde_json::to_string(&p.snapshot(WallClock::at(wall0, T0))).unwrap();

    // The daemon dies and comes back 30 s later (wall), on a fresh monotonic clock.
    let t_new = T0 + 5000 * S;
    let wall_new = wall0 + 30_000;
    let snapshot: PolicySnapshot = serde_json::from_str(&saved).unwrap();
    let mut q = Alone::restore(snapshot, t_new, WallClock::at(wall_new, t_new));
    let nb = q.not_before(&a).unwrap();
    assert_eq!(nb, t_new + (deadline_wall - wall_new) * 1_000_000);
    let early = q.poll(t_new);
    assert!(
        restarts_of(&early).is_empty(),
        "no restart before the saved window ends"
    );
    assert_eq!(q.next_deadline(), Some(nb));
    assert!(restarts_of(&q.poll(nb - 1_000_000)).is_empty());
    assert_eq!(restarts_of(&q.poll(nb)), ["a"]);
    assert_eq!(q.restarts(&a), 2, "restart count survives");
}

#[test]
fn a_restored_incident_keeps_its_members_tries_and_next_try() {
    let (a, b) = (id("a"), id("b"));
    let mut p = Alone::new(PolicyConfig::default());
    let wall0: u64 = 1_780_000_000_000;
    p.latched(&a, T0);
    p.latched(&b, T0 + S);
    assert_eq!(restarts_of(&p.poll(T0 + S)), ["a"]);
    p.restart_finished(&a, T0 + 2 * S, &ok());
    p.latched(&a, T0 + 3 * S);
    let before = p.incident().unwrap();
    let saved = serde_json::to_string(&p.snapshot(WallClock::at(wall0, T0 + 3 * S))).unwrap();
    let mut q = Alone::restore(
        serde_json::from_str(&saved).unwrap(),
        T0 + 3 * S,
        WallClock::at(wall0, T0 + 3 * S),
    );
    let after = q.incident().expect("the incident survives");
    assert_eq!(after, before);
    assert!(restarts_of(&q.poll(after.next_try.unwrap() - S)).is_empty());
    assert_eq!(restarts_of(&q.poll(after.next_try.unwrap())), ["b"]);
}

#[test]
fn a_restart_running_at_shutdown_is_not_repeated_after_restore() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig::default());
    let wall0: u64 = 1_780_000_000_000;
    p.latched(&a, T0);
    assert_eq!(restarts_of(&p.poll(T0)), ["a"]);
    let mut q = Alone::restore(
        p.snapshot(WallClock::at(wall0, T0)),
        T0,
        WallClock::at(wall0 + 1000, T0),
    );
    assert!(restarts_of(&q.poll(T0 + S)).is_empty());
    assert!(matches!(q.phase(&a), Some(Phase::Recovering { .. })));
    q.latched(&a, T0 + 2 * S);
    assert_eq!(q.not_before(&a), Some(T0 + 2 * S + MIN));
}

#[test]
fn state_files_of_earlier_versions_name_units_and_rules_and_retry_what_they_gave_up_on() {
    let old = r#"{"config":{"initial_backoff":{"secs":60,"nanos":0},"max_backoff":{"secs":1800,"nanos":0},"healthy_reset":{"secs":600,"nanos":0},"max_restarts":3,"restart_timeout":{"secs":120,"nanos":0}},"instances":{"agent.service":{"phase":{"phase":"escalated"},"restarts":3,"backoff":{"secs":240,"nanos":0},"not_before_ms":null,"healthy_since_ms":null,"escalate_pending":false},"nightly":{"phase":{"phase":"idle"},"restarts":0,"backoff":{"secs":60,"nanos":0},"not_before_ms":null,"healthy_since_ms":null,"escalate_pending":false}},"in_flight":null}"#;
    let snapshot: PolicySnapshot = serde_json::from_str(old).unwrap();
    assert!(snapshot.config.canary && !snapshot.config.give_up);
    let q = Alone::restore(snapshot.clone(), T0, WallClock::at(1_780_000_000_000, T0));
    assert_eq!(
        q.phase(&InstanceId::unit("agent.service")),
        None,
        "given up by the old escalation: its current traffic decides afresh"
    );
    assert_eq!(q.phase(&InstanceId::rule("nightly")), Some(Phase::Idle));
    let mut keep = snapshot;
    keep.config.give_up = true;
    let q = Alone::restore(keep, T0, WallClock::at(1_780_000_000_000, T0));
    assert_eq!(
        q.phase(&InstanceId::unit("agent.service")),
        Some(Phase::GaveUp)
    );
}

#[test]
fn turning_give_up_off_releases_the_instances_given_up_on() {
    let a = id("a");
    let mut p = Alone::new(PolicyConfig {
        give_up: true,
        max_restarts: 1,
        ..PolicyConfig::default()
    });
    p.latched(&a, T0);
    restart_and_relatch(&mut p, "a", T0);
    assert_eq!(p.phase(&a), Some(Phase::GaveUp));
    p.set_config(PolicyConfig::default());
    assert_eq!(p.phase(&a), Some(Phase::Idle), "released");
}

#[test]
fn one_users_hanging_supervisor_and_incident_never_hold_another_users_restart() {
    // uid 1001 latches two instances of their own (an incident of theirs) under a supervisor
    // that accepts and never answers; uid 1002's agent latches meanwhile.
    let (x, y, victim) = (id("x"), id("y"), id("victim"));
    let mut p = Alone::new(PolicyConfig::default());
    for (i, owner) in [(&x, 1001), (&y, 1001), (&victim, 1002)] {
        p.set_owner(i, owner);
    }
    p.latched(&x, T0);
    p.latched(&y, T0 + S);
    assert_eq!(p.incident().unwrap().members.len(), 2, "1001's incident");
    assert_eq!(
        restarts_of(&p.poll(T0 + S)),
        ["x"],
        "1001's canary, never answered"
    );
    p.latched(&victim, T0 + 2 * S);
    assert!(
        !p.view(&victim).in_incident,
        "not held by another user's incident"
    );
    assert_eq!(
        restarts_of(&p.poll(T0 + 2 * S)),
        ["victim"],
        "restarted at once, beside 1001's hanging restart"
    );
    p.restart_finished(&victim, T0 + 3 * S, &ok());
    assert!(p.recovered(&victim, T0 + 4 * S).is_some());
    // 1001's restart times out on its own slot only; their incident tries its other member.
    let timeout = ns(p.config().restart_timeout);
    assert_eq!(restarts_of(&p.poll(T0 + S + timeout)), ["y"]);
    assert_eq!(p.phase(&x), Some(Phase::Latched));
}

#[test]
fn the_restart_boundary_lasts_from_the_hand_out_to_the_new_process_s_answer() {
    let a = id("a");
    let err: Result<(), ()> = Err(());
    let boundary = |p: &Alone| p.recovery(&a).boundary;
    let mut p = Alone::new(PolicyConfig {
        give_up: true,
        max_restarts: 2,
        ..PolicyConfig::default()
    });
    p.latched(&a, T0);
    assert_eq!(boundary(&p), None, "latched, nothing handed out");
    p.poll(T0 + S);
    assert_eq!(boundary(&p), Some(T0 + S), "from the hand-out");
    p.restart_finished(&a, T0 + 2 * S, &ok());
    assert_eq!(
        boundary(&p),
        Some(T0 + S),
        "through the supervisor's answer"
    );
    p.latched(&a, T0 + 3 * S);
    assert_eq!(boundary(&p), None, "its new process got 401");
    // A failed restart: the old process counts again.
    let t = p.not_before(&a).expect("a quiet window");
    p.poll(t);
    assert_eq!(boundary(&p), Some(t));
    p.restart_finished(&a, t + S, &err);
    assert_eq!(boundary(&p), None);
    // One that times out keeps it until the supervisor's late answer.
    let t = p.not_before(&a).expect("a hold");
    p.poll(t);
    let timeout = ns(p.config().restart_timeout);
    p.poll(t + timeout);
    assert_eq!(p.phase(&a), Some(Phase::Latched));
    assert_eq!(boundary(&p), Some(t), "no answer yet");
    p.restart_finished(&a, t + timeout + S, &err);
    assert_eq!(boundary(&p), None);
    // Something else restarts it: a restart as ours, and its answer ends recovery.
    p.restarted_elsewhere(&a, t + timeout + 2 * S);
    assert_eq!(boundary(&p), Some(t + timeout + 2 * S));
    assert!(matches!(p.phase(&a), Some(Phase::Recovering { .. })));
    p.latched(&a, t + timeout + 3 * S);
    assert_eq!(p.phase(&a), Some(Phase::GaveUp), "K restarts did not heal");
    assert!(p.recovery(&a).gave_up && boundary(&p).is_none());
    p.recovered(&a, t + timeout + 4 * S);
    assert_eq!(p.recovery(&a), Recovery::default());
}
