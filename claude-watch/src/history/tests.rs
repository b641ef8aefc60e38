use std::time::Duration;

use super::transcript::{Entry, EntryKind, Transcript};
use super::*;
use crate::detect::EpisodeEnd;
use crate::journal::JournalOptions;
use crate::scratch::Scratch as TempDir;

/// 2026-06-28T00:00:00Z.
const T0: u64 = 1_782_604_800_000;
const S: u64 = 1000;

fn entry(ts: u64, session: &str, kind: EntryKind) -> Entry {
    Entry {
        ts_ms: T0 + ts,
        session_id: session.into(),
        version: Some("2.1.331".into()),
        cwd: Some("/srv/agent".into()),
        kind,
    }
}

fn ok(ts: u64, session: &str, id: &str) -> Entry {
    entry(
        ts,
        session,
        EntryKind::Answer {
            request_id: Some(id.into()),
            model: Some("claude-opus-4-8".into()),
        },
    )
}

fn err(ts: u64, session: &str, status: u16, id: &str, ended_turn: bool) -> Entry {
    entry(
        ts,
        session,
        EntryKind::ApiError {
            status,
            request_id: Some(id.into()),
            ended_turn,
        },
    )
}

fn file(instance: &str, entries: Vec<Entry>) -> SessionFile {
    SessionFile {
        instance: instance.into(),
        transcript: Transcript {
            entries,
            counts: LineCounts::default(),
        },
    }
}

/// Claude Code's retry delays after a 401: 0.6, 1.2, 2.1, 4.8, 9.9 s.
fn latched_turn(start: u64, session: &str, tag: &str) -> Vec<Entry> {
    let mut t = start;
    let mut v = Vec::new();
    for (i, d) in [600, 1200, 2100, 4800, 9900].into_iter().enumerate() {
        v.push(err(t, session, 401, &format!("req_{tag}{i}"), false));
        t += d;
    }
    v.push(err(t, session, 401, &format!("req_{tag}5"), true));
    v
}

fn cfg() -> DetectorConfig {
    DetectorConfig::default()
}

#[test]
fn a_latch_that_heals_on_its_own() {
    let mut e = vec![ok(0, "s1", "req_ok0")];
    e.extend(latched_turn(60 * S, "s1", "a"));
    e.push(ok(120 * S, "s1", "req_ok1"));
    let h = rebuild(&[file("agent", e)], &cfg());
    assert_eq!(h.episodes.len(), 1, "{h:#?}");
    let ep = &h.episodes[0];
    assert_eq!(ep.end, EpisodeEnd::SelfRecovered);
    assert_eq!(ep.count_401, 6);
    assert_eq!(ep.first_401_ms, T0 + 60 * S);
    assert_eq!(ep.ended_ms, Some(T0 + 120 * S));
    assert_eq!(ep.idle_before_ms, Some(60 * S));
    assert_eq!(ep.session_ids, ["s1"]);
    assert_eq!(ep.source, EpisodeSource::Transcript);
    assert_eq!(ep.client_version.as_deref(), Some("2.1.331"));
    assert_eq!(ep.first_request_ids[0], "req_a0");
    assert_eq!(
        ep.last_request_ids.last().map(String::as_str),
        Some("req_a5")
    );
    assert_eq!(ep.restarts, 0);
    assert_eq!(h.answers_401, 6);
}

#[test]
fn thresholds_come_from_the_configuration() {
    let mut e = vec![ok(0, "s1", "r")];
    e.extend(latched_turn(60 * S, "s1", "a"));
    e.push(ok(120 * S, "s1", "r2"));
    let strict = DetectorConfig {
        latch_min_401s: 7,
        ..cfg()
    };
    assert!(
        rebuild(&[file("agent", e.clone())], &strict)
            .episodes
            .is_empty()
    );
    // The window stays open until the accepted answer at 120 s (60 s after its first 401), so
    // T must be longer than that for no latch.
    let long = DetectorConfig {
        latch_min_span: Duration::from_secs(90),
        ..cfg()
    };
    assert!(
        rebuild(&[file("agent", e.clone())], &long)
            .episodes
            .is_empty()
    );
    // Two 401s then an accepted answer: below N, no episode.
    let short = vec![
        ok(0, "s1", "r"),
        err(10 * S, "s1", 401, "x1", false),
        err(30 * S, "s1", 401, "x2", true),
        ok(40 * S, "s1", "r3"),
    ];
    assert!(rebuild(&[file("agent", short)], &cfg()).episodes.is_empty());
}

#[test]
fn a_new_session_after_the_latch_is_a_restart() {
    let mut first = vec![ok(0, "s1", "r0")];
    first.extend(latched_turn(10 * S, "s1", "a"));
    let second = vec![ok(100 * S, "s2", "r1")];
    let h = rebuild(&[file("agent", first), file("agent", second)], &cfg());
    assert_eq!(h.episodes.len(), 1, "{h:#?}");
    let ep = &h.episodes[0];
    assert_eq!(ep.end, EpisodeEnd::RecoveredAfterRestart);
    assert_eq!(ep.restarts, 1);
    assert_eq!(ep.time_to_recovery_ms, Some(0));
    assert_eq!(
        h.restarts,
        [Restart {
            instance: "agent".into(),
            at_ms: T0 + 100 * S,
            episode_id: Some(ep.id.clone())
        }]
    );
    assert_eq!(h.processes, 2);
}

#[test]
fn a_resumed_session_after_cost_state_is_a_restart() {
    let mut e = vec![ok(0, "s1", "r0")];
    e.extend(latched_turn(10 * S, "s1", "a"));
    e.push(entry(30 * S, "s1", EntryKind::ProcessEnd));
    e.push(ok(60 * S, "s1", "r1"));
    let h = rebuild(&[file("agent", e)], &cfg());
    assert_eq!(h.episodes.len(), 1, "{h:#?}");
    assert_eq!(h.episodes[0].end, EpisodeEnd::RecoveredAfterRestart);
    assert_eq!(h.episodes[0].ended_ms, Some(T0 + 60 * S));
    assert_eq!(h.processes, 2);
}

#[test]
fn never_recovered_is_closed_with_its_process() {
    let mut e = vec![ok(0, "s1", "r0")];
    e.extend(latched_turn(10 * S, "s1", "a"));
    let h = rebuild(&[file("agent", e)], &cfg());
    assert_eq!(h.episodes.len(), 1);
    assert_eq!(h.episodes[0].end, EpisodeEnd::ProcessExited);
    assert_eq!(h.episodes[0].ended_ms, Some(h.episodes[0].last_401_ms));
    assert!(h.episodes.iter().all(Episode::is_closed));
}

#[test]
fn older_releases_get_the_first_attempt_inferred() {
    // 2.1.197: a user line, then only the error that ended the turn, 17 s later.
    let turn = |start: u64, id: &str| {
        vec![
            entry(start, "s1", EntryKind::Prompted),
            err(start + 17 * S, "s1", 401, id, true),
        ]
    };
    let mut one = vec![ok(0, "s1", "r0")];
    one.extend(turn(10 * S, "f1"));
    assert!(
        rebuild(&[file("agent", one.clone())], &cfg())
            .episodes
            .is_empty(),
        "one failed turn is two 401s, below N = 3"
    );
    let mut two = one.clone();
    two.extend(turn(30 * S, "f2"));
    two.push(entry(60 * S, "s1", EntryKind::Prompted));
    two.push(ok(60 * S + 200, "s1", "r1"));
    let h = rebuild(&[file("agent", two)], &cfg());
    assert_eq!(h.episodes.len(), 1, "{h:#?}");
    let ep = &h.episodes[0];
    assert_eq!(ep.count_401, 4);
    assert_eq!(ep.first_401_ms, T0 + 10 * S);
    assert_eq!(ep.request_ids(), ["f1", "f2"]);
    assert_eq!(ep.end, EpisodeEnd::SelfRecovered);

    // 2.1.197 writes a turn's retries late (after its final error): then nothing is inferred.
    let mut late = one;
    late.extend([
        err(12 * S, "s1", 401, "late1", false),
        err(20 * S, "s1", 401, "late2", false),
    ]);
    late.push(entry(60 * S, "s1", EntryKind::Prompted));
    late.push(ok(60 * S + 200, "s1", "r1"));
    let h = rebuild(&[file("agent", late)], &cfg());
    assert_eq!(h.episodes.len(), 1, "{h:#?}");
    assert_eq!(
        h.episodes[0].count_401, 3,
        "two retries and the final, none inferred"
    );
    assert_eq!(h.episodes[0].first_401_ms, T0 + 12 * S);
    assert_eq!(h.episodes[0].request_ids(), ["late1", "late2", "f1"]);
}

#[test]
fn throttles_are_windows_per_model_and_never_latch() {
    let mut e = vec![
        entry(
            0,
            "s1",
            EntryKind::Request {
                model: Some("claude-opus-4-8".into()),
            },
        ),
        ok(S, "s1", "r0"),
    ];
    for i in 0..6 {
        e.push(err(10 * S + i * 3 * S, "s1", 429, &format!("t{i}"), i == 5));
    }
    e.push(ok(60 * S, "s1", "r1"));
    let h = rebuild(&[file("agent", e)], &cfg());
    assert!(h.episodes.is_empty());
    assert_eq!(h.throttles.len(), 1, "{h:#?}");
    let t = &h.throttles[0];
    assert_eq!(t.model, "claude-opus-4-8");
    assert_eq!(t.count_429, 6);
    assert_eq!(t.first_429_ms, T0 + 10 * S);
    assert_eq!(t.last_429_ms, T0 + 25 * S);
    assert_eq!(t.ended_ms, Some(T0 + 60 * S));
    assert_eq!(t.request_ids.len(), REQUEST_IDS_KEPT_FOR_TEST);
    assert_eq!(t.session_id.as_deref(), Some("s1"));
    assert_eq!(h.answers_429, 6);
}

const REQUEST_IDS_KEPT_FOR_TEST: usize = crate::detect::REQUEST_IDS_KEPT;

#[test]
fn a_throttle_that_goes_quiet_has_no_known_end() {
    let mut e = vec![ok(0, "s1", "r0")];
    for i in 0..3 {
        e.push(err(10 * S + i * S, "s1", 429, &format!("t{i}"), i == 2));
    }
    // Next answer 20 min later: the throttle was cleared by the clock (5 min quiet) before it.
    e.push(ok(1200 * S, "s1", "r1"));
    let h = rebuild(&[file("agent", e)], &cfg());
    assert_eq!(h.throttles.len(), 1, "{h:#?}");
    assert_eq!(h.throttles[0].ended_ms, None);
    assert_eq!(h.throttles[0].last_429_ms, T0 + 12 * S);
}

#[test]
fn answers_spanning_lines_count_once() {
    let mut e = vec![ok(0, "s1", "r0"), ok(1, "s1", "r0"), ok(2, "s1", "r0")];
    e.extend(latched_turn(10 * S, "s1", "a"));
    e.push(ok(60 * S, "s1", "r1"));
    let h = rebuild(&[file("agent", e)], &cfg());
    assert_eq!(
        h.episodes[0].idle_before_ms,
        Some(10 * S),
        "idle from the first line of r0"
    );
}

#[test]
fn instance_names_are_short_and_unique() {
    let cwds: Vec<String> = ["/srv/a/agent", "/srv/b/agent", "/home/x/reviewer", "/"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let n = instance_names(&cwds);
    assert_eq!(n["/srv/a/agent"], "a/agent");
    assert_eq!(n["/srv/b/agent"], "b/agent");
    assert_eq!(n["/home/x/reviewer"], "reviewer");
    assert_eq!(n["/"], "-");
}

#[test]
fn default_roots_are_users_homes_and_the_config_dir() {
    let dir = TempDir::new("history-roots");
    let home = dir.0.join("home/alice");
    std::fs::create_dir_all(home.join(".claude/projects")).unwrap();
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(conf.join("projects")).unwrap();
    let passwd = format!(
        "root:x:0:0:root:/nonexistent-root:/bin/bash\nalice:x:1000:1000::{}:/bin/sh\nbad line\nnobody:x:65534:65534::/:/usr/sbin/nologin\n",
        home.display()
    );
    let roots = default_roots(&passwd, Some(&conf));
    assert_eq!(
        roots,
        [home.join(".claude/projects"), conf.join("projects")]
    );
    assert_eq!(projects_dir(&conf), conf.join("projects"));
    // A home, as one naturally passes it: its ~/.claude/projects.
    assert_eq!(projects_dir(&home), home.join(".claude/projects"));
    let projects = home.join(".claude/projects");
    assert_eq!(projects_dir(&projects), projects);
    // Not through a link: a home whose .claude is another user's is read as given.
    let mallory = dir.0.join("home/mallory");
    std::fs::create_dir_all(&mallory).unwrap();
    std::os::unix::fs::symlink(home.join(".claude"), mallory.join(".claude")).unwrap();
    assert_eq!(projects_dir(&mallory), mallory);
}

fn live_episode(ids: &[&str], session: &str, start: u64) -> Episode {
    let mut e = vec![ok(0, session, "r0")];
    e.extend(latched_turn(start, session, "L"));
    e.push(ok(start + 100 * S, session, "r1"));
    let mut ep = rebuild(&[file("agent.service", e)], &cfg())
        .episodes
        .remove(0);
    ep.source = EpisodeSource::Live;
    ep.first_request_ids = ids.iter().map(|s| (*s).to_owned()).collect();
    ep.last_request_ids.clear();
    ep.id = format!("agent.service@{}", ep.first_401_ms);
    ep
}

#[test]
fn import_skips_what_the_daemon_saw_and_what_was_imported() {
    let dir = TempDir::new("history-import");
    let path = dir.0.join("journal.jsonl");
    let mut journal = Journal::open(&path, JournalOptions::default()).unwrap();
    // The daemon saw s1's episode live (one request id in common).
    journal
        .append(&Record::Episode {
            at_ms: T0,
            episode: live_episode(&["req_a3"], "other", 10 * S),
        })
        .unwrap();
    let mut a = vec![ok(0, "s1", "r0")];
    a.extend(latched_turn(10 * S, "s1", "a"));
    a.push(ok(60 * S, "s1", "r1"));
    let mut b = vec![ok(0, "s2", "q0")];
    b.extend(latched_turn(3600 * S, "s2", "b"));
    let h = rebuild(&[file("agent", a), file("reviewer", b)], &cfg());
    assert_eq!(h.episodes.len(), 2);
    let first = import(&mut journal, &h, T0 + 7200 * S).unwrap();
    assert_eq!(
        first,
        ImportOutcome {
            episodes_added: 1,
            episodes_seen_live: 1,
            episodes_already_imported: 0,
            throttles_added: 0,
            restarts_added: 0
        }
    );
    let again = import(&mut journal, &h, T0 + 7300 * S).unwrap();
    assert_eq!(again.episodes_added, 0);
    assert_eq!(again.episodes_already_imported, 1);
    assert_eq!(again.episodes_seen_live, 1);
    drop(journal);
    let records = crate::journal::read_records(&path).unwrap();
    let eps = crate::journal::episodes(&records);
    assert_eq!(eps.len(), 2);
    assert_eq!(
        eps.iter()
            .filter(|e| e.source == EpisodeSource::Transcript)
            .count(),
        1
    );
    // A live episode on the same session over the same time is a duplicate too.
    let live = live_episode(&["req_zzz"], "s9", 10 * S);
    let mut c = vec![ok(0, "s9", "r0")];
    c.extend(latched_turn(12 * S, "s9", "c"));
    c.push(ok(90 * S, "s9", "r1"));
    let hc = rebuild(&[file("x", c)], &cfg());
    assert!(duplicate_of(&hc.episodes[0], std::slice::from_ref(&live)).is_some());
    let mut later = hc.episodes[0].clone();
    later.first_401_ms += 86_400_000;
    later.last_401_ms += 86_400_000;
    later.ended_ms = later.ended_ms.map(|m| m + 86_400_000);
    later.first_request_ids = vec!["req_other".into()];
    later.last_request_ids.clear();
    later.id = "x@later".into();
    assert!(duplicate_of(&later, std::slice::from_ref(&live)).is_none());
}

#[test]
fn old_journals_read_as_live() {
    let line = r#"{"record":"episode","at_ms":1,"episode":{"id":"a@1","instance":"a","unit":null,"pids":[1],"session_ids":[],"models":[],"first_401_ms":1,"last_401_ms":2,"first_401_mono_ns":0,"last_401_mono_ns":0,"count_401":3,"first_request_ids":[],"last_request_ids":[],"idle_before_ms":null,"restarts":0,"end":"self_recovered","ended_ms":3,"time_to_recovery_ms":null}}"#;
    let r: Record = serde_json::from_str(line).unwrap();
    let Record::Episode { episode, .. } = r else {
        panic!()
    };
    assert_eq!(episode.source, EpisodeSource::Live);
    assert_eq!(episode.client_version, None);
    let back = serde_json::to_string(&Record::Episode {
        at_ms: 1,
        episode: Episode {
            source: EpisodeSource::Transcript,
            ..episode
        },
    })
    .unwrap();
    assert!(back.contains(r#""source":"transcript""#), "{back}");
}

#[test]
fn the_import_skips_links_fifos_and_huge_files_and_says_so() {
    let dir = TempDir::new("history-hostile");
    let root = dir.0.join("home/.claude/projects");
    let honest = root.join("-srv-honest");
    std::fs::create_dir_all(&honest).unwrap();
    std::fs::write(
        honest.join("a.jsonl"),
        "{\"type\":\"user\",\"cwd\":\"/srv/honest\"}\n",
    )
    .unwrap();
    let elsewhere = dir.0.join("other/-srv-victim");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("v.jsonl"), "{\"cwd\":\"/srv/victim\"}\n").unwrap();
    let evil = root.join("-srv-evil");
    std::fs::create_dir_all(&evil).unwrap();
    let fifo = std::ffi::CString::new(evil.join("fifo.jsonl").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::File::create(evil.join("huge.jsonl"))
        .unwrap()
        .set_len(MAX_TRANSCRIPT_BYTES + 1)
        .unwrap();
    std::os::unix::fs::symlink(elsewhere.join("v.jsonl"), evil.join("stolen.jsonl")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("-srv-linked")).unwrap();
    let loaded = load(std::slice::from_ref(&root)).unwrap();
    assert_eq!(loaded.files.len(), 1, "only the honest transcript");
    assert_eq!(loaded.files[0].instance, "srv-honest");
    let said = loaded.skipped.join("\n");
    for (what, why) in [
        ("fifo.jsonl", "fifo"),
        ("huge.jsonl", "more than"),
        ("stolen.jsonl", "opening"),
        ("-srv-linked", "opening"),
    ] {
        assert!(
            loaded
                .skipped
                .iter()
                .any(|l| l.contains(what) && l.contains(why)),
            "{what} ({why}) in:\n{said}"
        );
    }
    // A `~/.claude` linked to another user's is not a default root.
    let home = dir.0.join("linked-home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(dir.0.join("home/.claude"), home.join(".claude")).unwrap();
    let passwd = format!("mallory:x:1001:1001::{}:/bin/sh\n", home.display());
    assert!(default_roots(&passwd, None).is_empty());
}
