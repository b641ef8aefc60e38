//! On-disk cache of locate results, one JSON file per GNU build id.
//!
//! An entry records the file's architecture and size and a fingerprint of the bytes at the
//! located functions; an entry that no longer matches the file (same build id, different bytes,
//! or another architecture: build ids are only unique per build, and an x86-64 and an arm64
//! build could share one) is ignored, and the fresh result overwrites it. Entries of an older
//! format are ignored the same way.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::elf::ElfImage;
use super::{Located, Method};

/// The daemon's default cache directory.
pub const DEFAULT_DIR: &str = "/var/cache/claude-watch/locate";
/// Bumped when the entry format or the locating method changes meaning (2: `arch`, arm64).
const FORMAT_VERSION: u32 = 2;
/// Bytes hashed at each located function.
const FINGERPRINT_SPAN: usize = 4096;

/// Why a cache entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The result has no build id to key it by.
    #[error("the file has no GNU build id; results are not cached")]
    NoBuildId,
    /// Creating the directory or writing the entry failed.
    #[error("cannot write cache entry {path}")]
    Write {
        /// The entry file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The first field of every entry format, read before the rest.
#[derive(Debug, Deserialize)]
struct Format {
    format: u32,
}

/// One stored result.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    format: u32,
    build_id: String,
    file_size: u64,
    fingerprint: u64,
    located: Located,
}

/// A directory of cached results, keyed by GNU build id.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created on first store).
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the entry for `build_id`; `None` for ids that are not plain hex.
    fn entry_path(&self, build_id: &str) -> Option<PathBuf> {
        let valid = !build_id.is_empty()
            && build_id.len() <= 128
            && build_id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(format!("{build_id}.json")))
    }

    /// The cached result for `image`, if an entry exists and still matches the file's size and
    /// bytes. The result's method is [`Method::Cache`].
    #[must_use]
    pub fn lookup(&self, build_id: &str, image: &ElfImage<'_>) -> Option<Located> {
        let path = self.entry_path(build_id)?;
        let text = std::fs::read(&path).ok()?;
        if serde_json::from_slice::<Format>(&text).is_ok_and(|f| f.format != FORMAT_VERSION) {
            tracing::info!(path = %path.display(), build_id, "locate cache: entry of another format; ignored");
            return None;
        }
        let entry: Entry = match serde_json::from_slice(&text) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "locate cache: unreadable entry ignored");
                return None;
            }
        };
        let matches = entry.format == FORMAT_VERSION
            && entry.build_id == build_id
            && entry.located.arch == image.arch
            && entry.file_size == image.data.len() as u64
            && entry.fingerprint == fingerprint(image.data, &entry.located);
        if !matches {
            tracing::info!(path = %path.display(), build_id, "locate cache: entry does not match the file; ignored");
            return None;
        }
        let mut located = entry.located;
        located.method = Method::Cache;
        Some(located)
    }

    /// Stores `located` for `image` (atomically: write then rename).
    ///
    /// # Errors
    /// [`CacheError`] when the file has no build id or the entry cannot be written.
    pub fn store(&self, image: &ElfImage<'_>, located: &Located) -> Result<(), CacheError> {
        let build_id = image.build_id.as_deref().ok_or(CacheError::NoBuildId)?;
        let path = self.entry_path(build_id).ok_or(CacheError::NoBuildId)?;
        let entry = Entry {
            format: FORMAT_VERSION,
            build_id: build_id.to_owned(),
            file_size: image.data.len() as u64,
            fingerprint: fingerprint(image.data, located),
            located: located.clone(),
        };
        let write = |p: &Path| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut file = std::fs::File::create(p)?;
            file.write_all(&serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(p, &path)
        };
        let tmp = self
            .dir
            .join(format!(".{build_id}.{}.tmp", std::process::id()));
        write(&tmp).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            CacheError::Write {
                path: path.clone(),
                source,
            }
        })
    }
}

/// FNV-1a over the first [`FINGERPRINT_SPAN`] bytes at each located function's file offset.
#[must_use]
pub fn fingerprint(data: &[u8], located: &Located) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for function in &located.functions {
        let start = usize::try_from(function.file_offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(FINGERPRINT_SPAN).min(data.len());
        for &b in function
            .file_offset
            .to_le_bytes()
            .iter()
            .chain(&data[start..end])
        {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}
