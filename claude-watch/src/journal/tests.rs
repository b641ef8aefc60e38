use std::io::Write;

use super::*;
use crate::detect::{Episode, EpisodeEnd};
use crate::scratch::Scratch as TempDir;

fn episode(id: u64, end: EpisodeEnd) -> Episode {
    Episode {
        id: format!("a.service@{id}"),
        instance: "a.service".into(),
        unit: Some("a.service".into()),
        pids: vec![10],
        session_ids: vec!["s".into()],
        models: vec!["claude-opus-4-8".into()],
        first_401_ms: id,
        last_401_ms: id + 5000,
        first_401_mono_ns: 0,
        last_401_mono_ns: 5_000_000_000,
        count_401: 4,
        first_request_ids: vec![format!("req_{id}")],
        last_request_ids: vec![format!("req_{id}")],
        idle_before_ms: Some(10),
        restarts: 0,
        end,
        ended_ms: (end != EpisodeEnd::StillOpen).then_some(id + 6000),
        time_to_recovery_ms: None,
        escalated_ms: None,
        host: None,
        source: crate::detect::EpisodeSource::Live,
        client_version: None,
        not_kept: crate::detect::NotKept::default(),
    }
}

fn snap(id: u64, end: EpisodeEnd) -> Record {
    Record::Episode {
        at_ms: id,
        episode: episode(id, end),
    }
}

#[test]
fn records_round_trip_and_latest_snapshot_wins() {
    let dir = TempDir::new("journal-rt");
    let path = dir.0.join("journal.jsonl");
    let mut j = Journal::open(&path, JournalOptions::default()).unwrap();
    j.append(&snap(1, EpisodeEnd::StillOpen)).unwrap();
    let action = Record::Action(ActionRecord {
        at_ms: 2,
        instance: "a.service".into(),
        episode_id: Some("a.service@1".into()),
        kind: ActionKind::Restart,
        ok: true,
        until_ms: None,
        detail: Some("systemd".into()),
    });
    j.append(&action).unwrap();
    j.append(&snap(1, EpisodeEnd::RecoveredAfterRestart))
        .unwrap();
    j.append(&snap(7, EpisodeEnd::StillOpen)).unwrap();
    drop(j);
    let recs = read_records(&path).unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[1], action);
    let eps = episodes(&recs);
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[0].end, EpisodeEnd::RecoveredAfterRestart);
    assert_eq!(eps[1].end, EpisodeEnd::StillOpen);
}

#[test]
fn torn_last_line_is_repaired_and_never_corrupts_the_next_record() {
    let dir = TempDir::new("journal-torn");
    let path = dir.0.join("journal.jsonl");
    let mut j = Journal::open(&path, JournalOptions::default()).unwrap();
    j.append(&snap(1, EpisodeEnd::SelfRecovered)).unwrap();
    j.append(&snap(2, EpisodeEnd::Escalated)).unwrap();
    drop(j);
    // Simulate a kill in the middle of a write: half of a third record, no newline.
    let full = serde_json::to_string(&snap(3, EpisodeEnd::SelfRecovered)).unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
    drop(f);
    assert_eq!(
        read_records(&path).unwrap().len(),
        2,
        "readers skip the torn tail"
    );

    let mut j = Journal::open(&path, JournalOptions::default()).unwrap();
    j.append(&snap(4, EpisodeEnd::ProcessExited)).unwrap();
    drop(j);
    let eps = episodes(&read_records(&path).unwrap());
    let ids: Vec<u64> = eps.iter().map(|e| e.first_401_ms).collect();
    assert_eq!(ids, [1, 2, 4]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), 3, "every line is a whole record");
}

#[test]
fn a_file_that_is_only_a_torn_line_is_emptied() {
    let dir = TempDir::new("journal-onlytorn");
    let path = dir.0.join("journal.jsonl");
    std::fs::write(&path, b"{\"record\":\"episo").unwrap();
    let mut j = Journal::open(&path, JournalOptions::default()).unwrap();
    j.append(&snap(9, EpisodeEnd::SelfRecovered)).unwrap();
    assert_eq!(episodes(&read_records(&path).unwrap()).len(), 1);
}

#[test]
fn rotates_by_size_keeps_k_files_and_reads_in_order() {
    let dir = TempDir::new("journal-rot");
    let path = dir.0.join("journal.jsonl");
    let line_len = serde_json::to_vec(&snap(100, EpisodeEnd::SelfRecovered))
        .unwrap()
        .len() as u64
        + 1;
    let options = JournalOptions {
        max_bytes: line_len * 2,
        keep: 2,
    };
    let mut j = Journal::open(&path, options).unwrap();
    for id in 100..108 {
        j.append(&snap(id, EpisodeEnd::SelfRecovered)).unwrap();
    }
    drop(j);
    assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
    assert!(!rotated(&path, 3).exists(), "only `keep` rotated files");
    let recs = read_records(&path).unwrap();
    let ids: Vec<u64> = episodes(&recs).iter().map(|e| e.first_401_ms).collect();
    assert_eq!(
        ids,
        [102, 103, 104, 105, 106, 107],
        "two per file, oldest dropped"
    );
    let order: Vec<u64> = recs
        .iter()
        .map(|r| match r {
            Record::Episode { at_ms, .. } => *at_ms,
            Record::Action(a) => a.at_ms,
            Record::Throttle(t) => t.first_429_ms,
            Record::Incident(i) => i.at_ms,
        })
        .collect();
    assert_eq!(
        order,
        [102, 103, 104, 105, 106, 107],
        "rotated files read oldest first"
    );
}

#[test]
fn reopening_continues_the_same_journal() {
    let dir = TempDir::new("journal-reopen");
    let path = dir.0.join("sub").join("journal.jsonl");
    for id in 0..3 {
        let mut j = Journal::open(&path, JournalOptions::default()).unwrap();
        j.append(&snap(id, EpisodeEnd::SelfRecovered)).unwrap();
    }
    assert_eq!(read_records(&path).unwrap().len(), 3);
    let j = Journal::open(&path, JournalOptions::default()).unwrap();
    assert_eq!(j.records().unwrap().len(), 3);
    assert!(
        read_records(&dir.0.join("missing.jsonl"))
            .unwrap()
            .is_empty()
    );
}

/// Kills a child process on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHILD_ENV: &str = "CLAUDE_WATCH_JOURNAL_KILL_CHILD";

/// Writer half of `sigkill_mid_write_loses_and_corrupts_nothing`: when started by that test (the
/// env var names the journal), appends large records forever until killed. Run directly, it
/// has nothing to do.
#[test]
fn journal_writer_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut j = Journal::open(
        PathBuf::from(path),
        JournalOptions {
            max_bytes: 256 << 10,
            keep: 3,
        },
    )
    .unwrap();
    let mut ep = episode(0, EpisodeEnd::SelfRecovered);
    ep.first_request_ids = (0..5)
        .map(|i| format!("req_{}", "x".repeat(4000 + i)))
        .collect();
    for id in 0.. {
        ep.id = format!("a.service@{id}");
        ep.first_401_ms = id;
        j.append(&Record::Episode {
            at_ms: id,
            episode: ep.clone(),
        })
        .unwrap();
        println!("{id}");
    }
}

#[test]
fn sigkill_mid_write_loses_and_corrupts_nothing() {
    use std::io::BufRead as _;
    let dir = TempDir::new("journal-kill");
    let path = dir.0.join("journal.jsonl");
    for round in 0..3 {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "journal::tests::journal_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn writer child");
        let mut guard = ChildGuard(child);
        // Read acknowledged ids until enough have been appended, then SIGKILL mid-stream.
        let out = guard.0.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let line = line.unwrap();
            if let Ok(id) = line.trim().parse::<u64>() {
                acked.push(id);
            }
            if acked.len() >= 40 + round * 7 {
                break;
            }
        }
        // SAFETY: kill(2) on our own child's pid, which the guard has not reaped yet.
        assert_eq!(
            unsafe { libc::kill(guard.0.id().cast_signed(), libc::SIGKILL) },
            0
        );
        let _ = guard.0.wait();
        let recs = read_records(&path).expect("journal readable after SIGKILL");
        let ids: std::collections::BTreeSet<u64> =
            episodes(&recs).iter().map(|e| e.first_401_ms).collect();
        // Only the rotated-away oldest files may be gone; every acknowledged record still in
        // the retained span is there.
        let oldest = *ids.first().expect("records survive");
        for id in acked.iter().filter(|&&id| id >= oldest) {
            assert!(
                ids.contains(id),
                "round {round}: acknowledged record {id} lost"
            );
        }
        // The next writer continues cleanly after whatever the kill left.
        let mut j = Journal::open(
            &path,
            JournalOptions {
                max_bytes: 256 << 10,
                keep: 3,
            },
        )
        .unwrap();
        j.append(&snap(1_000_000 + round as u64, EpisodeEnd::SelfRecovered))
            .unwrap();
        drop(j);
        let after = read_records(&path).unwrap();
        assert!(
            matches!(after.last(), Some(Record::Episode { at_ms, .. }) if *at_ms == 1_000_000 + round as u64)
        );
    }
    let text = std::fs::read(&path).unwrap();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<Record>(line)
            .expect("every line of the live file is a whole record");
    }
}

#[test]
fn the_journal_is_private_and_never_followed_through_a_link() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("journal-private");
    let path = dir.0.join("journal.jsonl");
    let options = JournalOptions {
        max_bytes: 1 << 20,
        keep: 2,
    };
    drop(Journal::open(&path, options).expect("open"));
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "a new journal is root-only");
    // A journal an older version left world-readable is tightened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    drop(Journal::open(&path, options).expect("reopen"));
    assert_eq!(mode(&path), 0o600);
    // A link planted where the journal goes is refused, and its target left alone.
    let target = dir.0.join("elsewhere");
    std::fs::write(&target, "").expect("target");
    let link = dir.0.join("linked.jsonl");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    assert!(
        Journal::open(&link, options).is_err(),
        "opened through a link"
    );
    assert_eq!(std::fs::read(&target).expect("target").len(), 0);
}
