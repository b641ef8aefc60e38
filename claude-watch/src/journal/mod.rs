//! The episode journal: append-only JSON lines, one record per line, durable before
//! [`Journal::append`] returns (written, then `fdatasync`), rotated by size.
//!
//! # Crash safety
//! Every record is a full snapshot (an episode snapshot carries the whole [`Episode`]; readers
//! keep the latest snapshot per episode id, see [`episodes`]). A record is one `write` of a line
//! ending in `\n`; a crash can only leave a torn last line without its `\n`. On open the torn tail
//! is cut off, so the next record starts on a fresh line; readers skip a torn tail too. So killing
//! the daemon at any moment loses no record that `append` had returned for and corrupts none:
//! a completed (closed) episode is on disk before the daemon reports it, and an open one is on
//! disk as its latest snapshot with `end: still_open`.
//!
//! [`Episode`]: claude_watch_core::detect::Episode
//!
//! # Rotation
//! Before an append would take `journal.jsonl` past `max_bytes`, it becomes `journal.jsonl.1`
//! (`.1` becomes `.2` ..., the oldest beyond `keep` is removed) and a fresh file is started.
//! [`read_records`] reads `.keep` ... `.1` then the live file, i.e. oldest first.
//!
//! The records themselves, and what is read from them, are the core's
//! ([`claude_watch_core::journal`], re-exported here); this module keeps the file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use claude_watch_core::journal::*;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation on the journal failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`open`, `write`, `sync`, `rotate`, `read`, `repair`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record could not be serialized.
    #[error("serializing a journal record")]
    Encode {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// Size limits of the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// Rotate before the live file would exceed this many bytes (default 8 MiB).
    pub max_bytes: u64,
    /// Rotated files kept (default 4).
    pub keep: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 20,
            keep: 4,
        }
    }
}

/// The journal, open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    options: JournalOptions,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn sync_dir(path: &Path) -> Result<(), JournalError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// Opens `path` for appending, creating it readable by its owner only (the journal holds
/// request ids and instance names of every user's agents), tightening an older, looser file,
/// and refusing to follow a symbolic link planted at the path.
pub(crate) fn open_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

impl Journal {
    /// Opens (creating) the journal at `path`, cutting off a torn last line left by a crash.
    pub fn open(path: impl Into<PathBuf>, options: JournalOptions) -> Result<Self, JournalError> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err("open", dir))?;
        }
        let mut file = open_private(&path).map_err(io_err("open", &path))?;
        let len = repair(&mut file, &path)?;
        sync_dir(&path)?;
        Ok(Self {
            path,
            file,
            len,
            options,
        })
    }

    /// The live file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every complete record of the journal so far (rotated files included), oldest first:
    /// what a restarted daemon reads back (open episodes, backoff deadlines).
    pub fn records(&self) -> Result<Vec<Record>, JournalError> {
        read_records(&self.path)
    }

    /// Appends one record and syncs it to disk before returning.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        self.append_all([record])
    }

    /// Appends records in order and syncs them to disk before returning, with one
    /// `fdatasync` for the batch (and one before each rotation). On an error the records
    /// before the failed one stay written and synced, and the failed one leaves no torn line.
    pub fn append_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(), JournalError> {
        let mut unsynced = false;
        let mut result = Ok(());
        for record in records {
            if let Err(e) = self.write_line(record, &mut unsynced) {
                result = Err(e);
                break;
            }
        }
        if unsynced && let Err(e) = self.file.sync_data() {
            return Err(io_err("sync", &self.path)(e));
        }
        result
    }

    /// Writes one record's line (rotating first when it would not fit), unsynced.
    fn write_line(&mut self, record: &Record, unsynced: &mut bool) -> Result<(), JournalError> {
        let mut line =
            serde_json::to_vec(record).map_err(|source| JournalError::Encode { source })?;
        line.push(b'\n');
        if self.len > 0 && self.len + line.len() as u64 > self.options.max_bytes {
            if *unsynced {
                self.file.sync_data().map_err(io_err("sync", &self.path))?;
                *unsynced = false;
            }
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(&line) {
            // A short write (disk full) must not leave a torn line for the next record.
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::error!(path = %self.path.display(), error = %cut, "journal: cannot cut a failed write");
            }
            return Err(io_err("write", &self.path)(e));
        }
        self.len += line.len() as u64;
        *unsynced = true;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        let keep = self.options.keep;
        if keep == 0 {
            self.file.set_len(0).map_err(io_err("rotate", &self.path))?;
            self.len = 0;
            return Ok(());
        }
        let oldest = rotated(&self.path, keep);
        match std::fs::remove_file(&oldest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("rotate", &oldest)(e));
            }
            _ => {}
        }
        for n in (1..keep).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))
                    .map_err(io_err("rotate", &from))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
            .map_err(io_err("rotate", &self.path))?;
        self.file = open_private(&self.path).map_err(io_err("open", &self.path))?;
        sync_dir(&self.path)?;
        self.len = 0;
        tracing::info!(path = %self.path.display(), keep, "journal rotated");
        Ok(())
    }
}

/// Cuts a torn last line (no trailing `\n`) off `file`; returns the resulting length.
fn repair(file: &mut File, path: &Path) -> Result<u64, JournalError> {
    let len = file.metadata().map_err(io_err("repair", path))?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut keep = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = keep.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..usize::try_from(keep - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))
            .map_err(io_err("repair", path))?;
        std::io::Read::read_exact(file, chunk).map_err(io_err("repair", path))?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        if start == 0 {
            keep = 0;
            break;
        }
        keep = start;
    }
    if keep < len {
        tracing::warn!(path = %path.display(), torn_bytes = len - keep, "journal: cutting off a torn last line");
        file.set_len(keep).map_err(io_err("repair", path))?;
        file.sync_data().map_err(io_err("repair", path))?;
    }
    Ok(keep)
}

/// Whether a journal is at `path`: the file itself or a rotated one (`PATH.1`).
pub fn exists(path: &Path) -> bool {
    path.exists() || rotated(path, 1).exists()
}

/// Reads every complete record of the journal at `path`, rotated files first (oldest first).
/// A torn last line is ignored; a complete line that does not parse is skipped with a warning.
pub fn read_records(path: &Path) -> Result<Vec<Record>, JournalError> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_owned());
    let mut out = Vec::new();
    for file in files {
        let f = match File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read", &file)(e)),
        };
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        let mut lineno = 0usize;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io_err("read", &file))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            lineno += 1;
            match serde_json::from_slice::<Record>(&line) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(path = %file.display(), line = lineno, error = %e, "journal: skipping unreadable record")
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
