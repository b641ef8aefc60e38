//! The durable writer: one thread that appends journal records (fsync'd, in order) and writes
//! the recovery state (temp file, fsync, rename, fsync the directory), so that no fsync ever
//! runs on the event loop.
//!
//! Invariants kept here: journal records are appended in the order the core produced them; of
//! several recovery states queued together only the latest is written (each is complete); on
//! shutdown everything queued is written before the daemon exits ([`Durable::finish`]). A crash
//! loses at most the records still queued (the journal's own invariants keep what was written
//! whole: see [`crate::journal`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use tracing::error;

use crate::error_chain;
use crate::journal::{Journal, Record};
use crate::watch::policy::PolicySnapshot;

/// Something to write durably.
#[derive(Debug)]
pub(super) enum Write {
    /// A journal record.
    Journal(Box<Record>),
    /// The recovery state.
    State(PolicySnapshot),
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
    tx: Option<mpsc::Sender<Write>>,
    thread: Option<JoinHandle<()>>,
}

impl Durable {
    /// Starts the writer owning `journal`, writing the recovery state to `state_path`.
    pub(super) fn start(mut journal: Journal, state_path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel::<Write>();
        let thread = std::thread::Builder::new()
            .name("claude-watch-durable".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut state = None;
                    for write in std::iter::once(first).chain(rx.try_iter()) {
                        match write {
                            Write::Journal(record) => {
                                if let Err(e) = journal.append(&record) {
                                    error!(error = %error_chain(&e), "cannot write the journal");
                                }
                            }
                            Write::State(snapshot) => state = Some(snapshot),
                        }
                    }
                    if let Some(snapshot) = state
                        && let Err(e) = write_atomic(&state_path, &snapshot)
                    {
                        error!(error = %error_chain(&e), "cannot save recovery state");
                    }
                }
            })
            .ok();
        if thread.is_none() {
            error!("cannot start the durable writer thread: the journal will not be written");
        }
        Self {
            tx: Some(tx),
            thread,
        }
    }

    /// Queues a write.
    pub(super) fn send(&self, write: Write) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(write);
        }
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
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
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

#[cfg(test)]
mod tests {
    use super::*;

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
