//! The history before claude-watch: latch episodes and throttles rebuilt from the session
//! transcripts Claude Code already keeps (`~/.claude/projects/<project>/<session>.jsonl`), and
//! imported into the journal as `source = "transcript"`.
//!
//! - [`transcript`]: one file's lines to API answers (pure, every line counted);
//! - [`rebuild`](mod@rebuild): answers to episodes, by the live detector on a fake clock (pure);
//! - this module: finding the files, and importing into the [`Journal`] without duplicating
//!   what is already there (an episode the daemon saw live shares its request ids, or its
//!   session id over the same time, with the rebuilt one).
//!
//! Only the fields the journal keeps are taken from transcripts: times, session ids, request
//! ids, models, statuses, Claude Code versions. Prompts, answers and paths are never copied;
//! an instance is named after the last components of its working directory.
//!
//! The transcripts live in users' homes, which their users control, and root reads them: below
//! each `projects` directory nothing is followed through a link (a link to another user's
//! transcript or project is skipped), only regular files are read (never a FIFO or a device),
//! each at most [`MAX_TRANSCRIPT_BYTES`] (a larger one, a sparse file of terabytes included, is
//! refused unread), all through [`crate::untrusted`]. What is skipped is said, not fatal.

pub mod rebuild;
pub mod transcript;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::detect::{DetectorConfig, Episode, EpisodeSource};
use crate::journal::{self, ActionKind, ActionRecord, Journal, JournalError, Record};
use crate::untrusted::{self, Limits, Resolve, UntrustedError};

/// The largest transcript read (a long session's is tens of MiB); a larger file is skipped
/// unread.
pub const MAX_TRANSCRIPT_BYTES: u64 = 256 << 20;
/// How long reading one transcript may take.
const TRANSCRIPT_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);
/// Most entries listed in one directory (projects of a root, transcripts of a project).
const MAX_ENTRIES: usize = 100_000;

pub use rebuild::{History, Restart, SessionFile, rebuild};
pub use transcript::{LineCounts, Transcript, TranscriptError};

/// Errors of the import.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Transcripts could not be read.
    #[error(transparent)]
    Transcript(#[from] TranscriptError),
    /// A `projects` directory could not be listed.
    #[error(transparent)]
    Root(#[from] UntrustedError),
    /// The journal could not be read or written.
    #[error("journal")]
    Journal(#[from] JournalError),
}

/// The `projects` directories to import by default: every user's `~/.claude/projects` (homes
/// from `passwd`, `/root` included) and `$CLAUDE_CONFIG_DIR/projects`, those that exist.
pub fn default_roots(passwd: &str, claude_config_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let homes = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(5))
        .filter(|h| h.starts_with('/') && *h != "/")
        .map(PathBuf::from);
    let candidates = homes
        .map(|h| h.join(".claude/projects"))
        .chain(claude_config_dir.map(|d| d.join("projects")));
    for c in candidates {
        if below_without_links(&c, 2) && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Whether `path` is a directory reached from its `depth`-th ancestor without a link (a
/// user's `~/.claude` linked to another user's is not theirs to import).
fn below_without_links(path: &Path, depth: usize) -> bool {
    let mut base = path;
    for _ in 0..depth {
        let Some(parent) = base.parent() else {
            return false;
        };
        base = parent;
    }
    let Ok(rel) = path.strip_prefix(base) else {
        return false;
    };
    untrusted::metadata(rel, Resolve::Beneath(base)).is_ok_and(|m| m.is_dir())
}

/// The `projects` directory for an `--import` argument: `DIR/projects` when it exists (a
/// `~/.claude` or a `$CLAUDE_CONFIG_DIR`), `DIR/.claude/projects` when that does (a home),
/// neither through a link; else `DIR` itself (a `projects` directory).
pub fn projects_dir(dir: &Path) -> PathBuf {
    [(dir.join("projects"), 1), (dir.join(".claude/projects"), 2)]
        .into_iter()
        .find(|(nested, depth)| below_without_links(nested, *depth))
        .map_or_else(|| dir.to_owned(), |(nested, _)| nested)
}

/// Transcripts read from disk, with their counts.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// One per session file.
    pub files: Vec<SessionFile>,
    /// Lines of all files.
    pub counts: LineCounts,
    /// What was not read and why (a link, not a regular file, too large, unreadable).
    pub skipped: Vec<String>,
}

/// The entries of directory `rel` below `root` (`root` itself when empty; not through a
/// link), relative to `root`, sorted.
fn entries(root: &Path, rel: &Path) -> Result<Vec<PathBuf>, UntrustedError> {
    let dir = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut names: Vec<PathBuf> = untrusted::list_dir(dir, Resolve::Beneath(root), MAX_ENTRIES)
        .map_err(|e| e.in_dir(root))?
        .into_iter()
        .map(|name| rel.join(name))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads every `<projects>/<project>/*.jsonl` of `roots`, names instances after their working
/// directories (the shortest unique tail of path components), and parses the files. Below a
/// root, links are not followed and only regular files of at most [`MAX_TRANSCRIPT_BYTES`] are
/// read; the rest is listed in [`Loaded::skipped`].
///
/// # Errors
/// [`HistoryError::Root`] when a root cannot be listed.
pub fn load(roots: &[PathBuf]) -> Result<Loaded, HistoryError> {
    let limits = Limits {
        max_bytes: MAX_TRANSCRIPT_BYTES,
        budget: TRANSCRIPT_BUDGET,
    };
    let mut parsed: Vec<(PathBuf, Transcript)> = Vec::new();
    let mut skipped = Vec::new();
    let mut skip = |e: &UntrustedError| {
        skipped.push(format!("skipped {}", crate::error_chain(e)));
    };
    for root in roots {
        for rel in entries(root, Path::new(""))? {
            let files = match entries(root, &rel) {
                Ok(files) => files,
                // A file next to the projects is no project.
                Err(UntrustedError::NotRegular {
                    kind: "regular file",
                    ..
                }) => continue,
                Err(e) => {
                    skip(&e);
                    continue;
                }
            };
            let project = root.join(&rel);
            for file in files {
                if file.extension().is_none_or(|e| e != "jsonl") {
                    continue;
                }
                match untrusted::read_all(&file, Resolve::Beneath(root), limits) {
                    Ok(bytes) => parsed.push((project.clone(), transcript::parse(&bytes))),
                    Err(e) => skip(&e.in_dir(root)),
                }
            }
        }
    }
    // A project's working directory, as its transcripts say; else the directory's own name.
    let mut cwd_of: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (project, t) in &parsed {
        if let Some(cwd) = t.entries.iter().find_map(|e| e.cwd.clone()) {
            cwd_of.entry(project.clone()).or_insert(cwd);
        }
    }
    for (project, _) in &parsed {
        cwd_of.entry(project.clone()).or_insert_with(|| {
            project
                .file_name()
                .map(|n| n.to_string_lossy().trim_start_matches('-').to_owned())
                .unwrap_or_default()
        });
    }
    let names = instance_names(&cwd_of.values().cloned().collect::<Vec<_>>());
    let mut loaded = Loaded {
        skipped,
        ..Loaded::default()
    };
    for (project, transcript) in parsed {
        loaded.counts.add(&transcript.counts);
        let cwd = &cwd_of[&project];
        loaded.files.push(SessionFile {
            instance: names[cwd].clone(),
            transcript,
        });
    }
    Ok(loaded)
}

/// Short names for working directories: the shortest tail of path components that no other
/// directory shares (`/srv/a/agent`, `/srv/b/agent` → `a/agent`, `b/agent`; `/srv/x` → `x`).
pub fn instance_names(cwds: &[String]) -> BTreeMap<String, String> {
    let parts = |c: &str| -> Vec<String> {
        c.split(['/', '\\'])
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let tail = |c: &str, n: usize| -> String {
        let p = parts(c);
        p[p.len().saturating_sub(n)..].join("/")
    };
    let mut out = BTreeMap::new();
    for c in cwds {
        let depth = parts(c).len().max(1);
        let name = (1..=depth)
            .map(|n| tail(c, n))
            .find(|t| {
                !cwds.iter().any(|o| {
                    o != c
                        && parts(o).len() >= t.split('/').count()
                        && tail(o, t.split('/').count()) == *t
                })
            })
            .unwrap_or_else(|| tail(c, depth));
        out.insert(c.clone(), if name.is_empty() { "-".into() } else { name });
    }
    out
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportOutcome {
    /// Episodes written to the journal.
    pub episodes_added: usize,
    /// Rebuilt episodes the daemon had already journalled live (same request ids, or same
    /// session over the same time): not written.
    pub episodes_seen_live: usize,
    /// Rebuilt episodes an earlier import had already written: not written.
    pub episodes_already_imported: usize,
    /// Throttle windows written.
    pub throttles_added: usize,
    /// Restarts written (journal actions).
    pub restarts_added: usize,
}

fn overlaps(a: &Episode, b: &Episode) -> bool {
    let end = |e: &Episode| e.ended_ms.unwrap_or(e.last_401_ms).max(e.last_401_ms);
    a.first_401_ms <= end(b) && b.first_401_ms <= end(a)
}

/// The episode of `existing` that `candidate` duplicates, if any: same id, a shared request id,
/// or a shared session id with overlapping times.
pub fn duplicate_of<'a>(candidate: &Episode, existing: &'a [Episode]) -> Option<&'a Episode> {
    let ids = candidate.request_ids();
    existing.iter().find(|x| {
        x.id == candidate.id
            || x.request_ids().iter().any(|r| ids.contains(r))
            || (x
                .session_ids
                .iter()
                .any(|s| candidate.session_ids.contains(s))
                && overlaps(x, candidate))
    })
}

/// Writes `history` into `journal` (each record fsynced by [`Journal::append`]), skipping what
/// the journal already has. `now_ms` stamps the records.
pub fn import(
    journal: &mut Journal,
    history: &History,
    now_ms: u64,
) -> Result<ImportOutcome, HistoryError> {
    let records = journal.records()?;
    let mut existing = journal::episodes(&records);
    let throttles = journal::throttles(&records);
    let restarts = journal::restarts(&records);
    let mut out = ImportOutcome::default();
    for e in &history.episodes {
        if let Some(x) = duplicate_of(e, &existing) {
            match x.source {
                EpisodeSource::Live => out.episodes_seen_live += 1,
                EpisodeSource::Transcript => out.episodes_already_imported += 1,
            }
            continue;
        }
        journal.append(&Record::Episode {
            at_ms: now_ms,
            episode: e.clone(),
        })?;
        existing.push(e.clone());
        out.episodes_added += 1;
    }
    for t in &history.throttles {
        let dup = throttles.iter().any(|o| {
            (&o.instance, &o.model, o.first_429_ms) == (&t.instance, &t.model, t.first_429_ms)
                || o.request_ids.iter().any(|r| t.request_ids.contains(r))
        });
        if !dup {
            journal.append(&Record::Throttle(t.clone()))?;
            out.throttles_added += 1;
        }
    }
    for r in &history.restarts {
        let dup = restarts
            .iter()
            .any(|o| o.instance == r.instance && o.at_ms == r.at_ms);
        // A restart belongs with its episode: not written when that episode was not.
        let episode_written = r.episode_id.as_ref().is_none_or(|id| {
            history.episodes.iter().any(|e| &e.id == id)
                && existing
                    .iter()
                    .any(|e| &e.id == id && e.source == EpisodeSource::Transcript)
        });
        if !dup && episode_written {
            journal.append(&Record::Action(ActionRecord {
                at_ms: r.at_ms,
                instance: r.instance.clone(),
                episode_id: r.episode_id.clone(),
                kind: ActionKind::Restart,
                ok: true,
                until_ms: None,
                detail: Some(TRANSCRIPT_RESTART.to_owned()),
            }))?;
            out.restarts_added += 1;
        }
    }
    Ok(out)
}

/// The `detail` of a restart action rebuilt from transcripts.
pub const TRANSCRIPT_RESTART: &str = "transcript: a new process of the latched instance";

/// Loads, rebuilds and imports in one go (what `claude-watch episodes --import` does).
pub fn import_dirs(
    journal: &mut Journal,
    roots: &[PathBuf],
    cfg: &DetectorConfig,
    now_ms: u64,
) -> Result<(Loaded, History, ImportOutcome), HistoryError> {
    let loaded = load(roots)?;
    let history = rebuild(&loaded.files, cfg);
    let outcome = import(journal, &history, now_ms)?;
    Ok((loaded, history, outcome))
}

#[cfg(test)]
mod tests;
