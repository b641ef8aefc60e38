//! The durable writer: one thread that appends journal records (fsync'd, in order) and writes
//! the recovery state (temp file, fsync, rename, fsync the directory), so that no fsync ever
//! runs on the event loop; and the write-ahead rule that keeps the daemon's promise about them.
//!
//! Invariants kept here: journal records are appended in the order the core produced them;
//! what is queued while a batch is written goes out as the next batch, with one `fdatasync`;
//! of several recovery states queued together only the latest is written (each is complete);
//! on shutdown everything queued is written before the daemon exits ([`Durable::finish`]).
//! After each batch the writer acknowledges the sequence number of its last write, and
//! [`WriteAhead`] holds back every effect that acts on or reports a decision (a restart, the
//! hook, a status) until the records queued before it are acknowledged: nothing is
//! done or said that a crash could leave unrecorded. A crash loses at most records not yet
//! acknowledged, of decisions nobody was told of (the journal's own invariants keep what was
//! written whole: see [`crate::journal`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tracing::{error, info, warn};

use crate::error_chain;
use crate::journal::{Journal, Record};
use crate::watch::policy::PolicySnapshot;

/// Something to write durably.
#[derive(Debug)]
pub(super) enum Write {
    /// A journal record.
    Journal(Box<Record>),
    /// The recovery state.
    State(Box<PolicySnapshot>),
}

/// Why the recovery state could not be written.
#[derive(Debug, thiserror::Error)]
pub(super) enum StateError {
    /// The state could not be serialized.
    #[error("cannot serialize the recovery state")]
    Serialize(#[source] serde_json::Error),
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The writer thread and the way to it.
pub(super) struct Durable {
    tx: Option<mpsc::Sender<(u64, Write)>>,
    thread: Option<JoinHandle<()>>,
    /// Sequence number of the latest write queued (the first is 1).
    queued: u64,
}

impl Durable {
    /// Starts the writer owning `journal`, writing the recovery state to `state_path`; after
    /// each batch it calls `ack` with the sequence number of the batch's last write (also when
    /// a write failed: the failure is logged, and holding the daemon back would not help).
    pub(super) fn start(
        mut journal: Journal,
        state_path: PathBuf,
        ack: impl Fn(u64) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<(u64, Write)>();
        let thread = std::thread::Builder::new()
            .name("claude-watch-durable".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut state = None;
                    let mut records = Vec::new();
                    let mut last = 0;
                    for (seq, write) in std::iter::once(first).chain(rx.try_iter()) {
                        last = seq;
                        match write {
                            Write::Journal(record) => records.push(record),
                            Write::State(snapshot) => state = Some(snapshot),
                        }
                    }
                    if let Err(e) = journal.append_all(records.iter().map(AsRef::as_ref)) {
                        error!(error = %error_chain(&e), records = records.len(), "cannot write the journal");
                    }
                    if let Some(snapshot) = state
                        && let Err(e) = write_atomic(&state_path, &snapshot)
                    {
                        error!(error = %error_chain(&e), "cannot save recovery state");
                    }
                    ack(last);
                }
            })
            .ok();
        if thread.is_none() {
            error!("cannot start the durable writer thread: the journal will not be written");
        }
        Self {
            tx: Some(tx),
            thread,
            queued: 0,
        }
    }

    /// Queues a write; returns its sequence number.
    pub(super) fn send(&mut self, write: Write) -> u64 {
        self.queued += 1;
        match &self.tx {
            Some(tx) if self.thread.is_some() => {
                let _ = tx.send((self.queued, write));
            }
            // No writer (its start failure was logged): nothing is written or acknowledged,
            // and the daemon does not wait for it (see [`Self::running`]).
            _ => {}
        }
        self.queued
    }

    /// Whether a writer runs (without one, nothing is acknowledged).
    pub(super) fn running(&self) -> bool {
        self.thread.is_some()
    }

    /// Writes everything queued and stops the thread.
    pub(super) fn finish(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The write-ahead rule: items (effects that act on or report a decision) pass once every
/// write queued before them is durable, in the order they came.
///
/// Bounded: items that only report a state (a status: each replaces the one before) are
/// *coalesced*: at most the oldest and the newest of them wait, so a slow disk holds back two
/// statuses, not one per tick, and each acknowledgement still lets one through. Items that act
/// (restarts, the hook) are few by the core's own rules (one restart in flight).
#[derive(Debug)]
pub(super) struct WriteAhead<T> {
    /// The latest write queued.
    queued: u64,
    /// The latest write acknowledged durable.
    durable: u64,
    /// Items waiting: the write each waits for, whether it is coalesced, the item.
    held: VecDeque<(u64, bool, T)>,
}

impl<T> Default for WriteAhead<T> {
    fn default() -> Self {
        Self {
            queued: 0,
            durable: 0,
            held: VecDeque::new(),
        }
    }
}

impl<T> WriteAhead<T> {
    /// Write `seq` was queued.
    pub(super) fn queued(&mut self, seq: u64) {
        self.queued = self.queued.max(seq);
    }

    /// `item` now, if everything queued before it is durable (and nothing waits ahead of it);
    /// else it waits. A `coalesced` item replaces the newest coalesced one waiting, unless
    /// that one is also the oldest.
    pub(super) fn admit(&mut self, item: T, coalesced: bool) -> Option<T> {
        if self.held.is_empty() && self.durable >= self.queued {
            return Some(item);
        }
        if coalesced {
            let mut waiting = self.held.iter().enumerate().filter(|(_, (_, c, _))| *c);
            if let (Some(_), Some((newest, _))) = (waiting.next(), waiting.last()) {
                self.held.remove(newest);
            }
        }
        self.held.push_back((self.queued, coalesced, item));
        None
    }

    /// Writes up to `seq` are durable: the items that may pass now, in order.
    pub(super) fn acknowledged(&mut self, seq: u64) -> Vec<T> {
        self.durable = self.durable.max(seq);
        let durable = self
            .held
            .iter()
            .take_while(|(wait, ..)| *wait <= self.durable);
        let ready = durable.count();
        self.held.drain(..ready).map(|(_, _, item)| item).collect()
    }

    /// Everything still waiting (at shutdown, once the writer has finished).
    pub(super) fn drain(&mut self) -> Vec<T> {
        self.held.drain(..).map(|(_, _, item)| item).collect()
    }
}

/// Writes JSON to `path` atomically and durably: temp file, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, value: &impl serde::Serialize) -> Result<(), StateError> {
    use std::io::Write as _;
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { op, path, source }
    };
    let tmp = path.with_extension("json.tmp");
    // Root-only, and never through a link planted at the temporary name.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io("create", &tmp))?
    };
    serde_json::to_writer(&mut file, value).map_err(StateError::Serialize)?;
    file.write_all(b"\n").map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
    }
    Ok(())
}

/// The recovery state saved by the previous run, if readable.
pub(super) fn read_recovery_state(path: &Path) -> Option<PolicySnapshot> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<PolicySnapshot>(&text) {
        Ok(snapshot) => {
            info!(path = %path.display(), "recovery state restored (quiet windows and escalations carry over)");
            Some(snapshot)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring unreadable recovery state");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_acts_on_a_decision_waits_for_the_records_before_it() {
        let mut gate = WriteAhead::default();
        // Nothing queued: an item passes at once.
        assert_eq!(gate.admit("publish 0", true), Some("publish 0"));
        // A record queued: what follows it waits, in order, also what needs no record of its
        // own (it must not overtake the one before it).
        gate.queued(1);
        assert_eq!(gate.admit("restart", false), None);
        gate.queued(2);
        assert_eq!(gate.admit("publish 1", true), None);
        // The first batch is durable: the restart goes; the status after record 2 waits.
        assert_eq!(gate.acknowledged(1), ["restart"]);
        assert_eq!(gate.admit("hook", false), None);
        assert_eq!(gate.acknowledged(2), ["publish 1", "hook"]);
        assert_eq!(gate.admit("publish 2", true), Some("publish 2"));
        // An old acknowledgement does not move it back.
        gate.queued(3);
        assert_eq!(gate.admit("restart 2", false), None);
        assert!(gate.acknowledged(1).is_empty());
        assert_eq!(gate.drain(), ["restart 2"]);
    }

    #[test]
    fn a_slow_disk_holds_back_two_statuses_and_every_action() {
        let mut gate = WriteAhead::default();
        gate.queued(1);
        for tick in 0..1000 {
            gate.queued(tick + 2);
            assert_eq!(gate.admit(format!("status {tick}"), true), None);
        }
        assert_eq!(gate.admit("restart".to_owned(), false), None);
        assert_eq!(gate.admit("status last".to_owned(), true), None);
        // The oldest status, the restart and the newest status wait; the rest were replaced.
        assert_eq!(gate.drain(), ["status 0", "restart", "status last"]);
        // Each acknowledgement lets the oldest waiting status through.
        gate.queued(2000);
        assert_eq!(gate.admit("a".to_owned(), true), None);
        assert_eq!(gate.admit("b".to_owned(), true), None);
        gate.queued(2001);
        assert_eq!(gate.admit("c".to_owned(), true), None);
        assert_eq!(gate.acknowledged(2000), ["a"]);
        assert_eq!(gate.acknowledged(2001), ["c"]);
    }

    #[test]
    fn the_writer_acknowledges_a_batch_after_it_is_in_the_journal() {
        use crate::journal::{ActionKind, ActionRecord, JournalOptions};
        let dir = std::env::temp_dir().join(format!("cw-durable-ack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("journal.jsonl");
        let journal = Journal::open(&path, JournalOptions::default()).expect("journal");
        let (tx, rx) = mpsc::channel();
        let mut durable = Durable::start(journal, dir.join("recovery.json"), move |seq| {
            let _ = tx.send(seq);
        });
        assert!(durable.running());
        let record = |n: u64| {
            Record::Action(ActionRecord {
                at_ms: n,
                instance: format!("agent-{n}"),
                episode_id: None,
                kind: ActionKind::Restart,
                ok: true,
                until_ms: None,
                detail: None,
            })
        };
        let mut last = 0;
        for n in 1..=50 {
            last = durable.send(Write::Journal(Box::new(record(n))));
        }
        assert_eq!(last, 50);
        // Every acknowledgement covers records already readable from the file.
        let mut acked = 0;
        while acked < last {
            acked = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("an acknowledgement");
            let written = crate::journal::read_records(&path).expect("read").len();
            assert!(
                written as u64 >= acked,
                "{written} written, {acked} acknowledged"
            );
        }
        durable.finish();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_state_file_is_private_and_written_through_no_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("cw-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("recovery.json");
        write_atomic(&path, &serde_json::json!({"v": 1})).expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A link planted at the temporary name is not written through.
        let target = dir.join("elsewhere");
        std::fs::write(&target, "untouched").expect("target");
        std::os::unix::fs::symlink(&target, path.with_extension("json.tmp")).expect("link");
        assert!(write_atomic(&path, &serde_json::json!({"v": 2})).is_err());
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "untouched"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
