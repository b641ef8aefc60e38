//! Where to attach TLS uprobes in an ELF file: `SSL_write` / `SSL_read` (and the `_ex` variants
//! where symbols name them), as virtual addresses and the file offsets uprobes take.
//!
//! Symbols are used when the file has them (node, `libssl.so.3`). Stripped BoringSSL builds (Bun,
//! the native Claude Code) are handled by [`boringssl`], which finds the functions from the
//! BoringSSL error sites in the code itself and verifies every candidate; it refuses rather than
//! guesses. x86-64 and arm64 (AArch64) files are read; the arm64 code reading is in [`aarch64`].
//! Results can be cached on disk by GNU build id ([`Cache`]).
//!
//! Files come from hostile users: [`Locator`] reads one from an open descriptor into memory
//! (never `mmap`: a file truncated while read cannot fault the reader) under a size cap and a
//! time [`Budget`], and remembers refused files by (device, inode, size, mtime, ctime) so the
//! same file is not read again on every exec.

pub mod aarch64;
pub mod boringssl;
pub mod budget;
pub mod cache;
pub mod elf;
pub mod report;
pub mod scan;
pub mod symbols;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use budget::{Budget, OverBudget};
pub use cache::Cache;
pub use elf::{Arch, ElfImage, ElfProblem};

/// Which TLS implementation the functions belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsLibrary {
    /// OpenSSL (node's static copy, `libssl.so.3`).
    OpenSsl,
    /// BoringSSL (Bun and the native Claude Code, statically linked).
    BoringSsl,
}

impl fmt::Display for TlsLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenSsl => "OpenSSL",
            Self::BoringSsl => "BoringSSL",
        })
    }
}

/// How the functions were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// From `.dynsym` / `.symtab`.
    Symbols,
    /// From the code: BoringSSL error sites, call graph and prologue checks.
    Disassembly,
    /// From a cache entry that still matches the file.
    Cache,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Symbols => "symbols",
            Self::Disassembly => "disassembly",
            Self::Cache => "cache",
        })
    }
}

/// A TLS function the capture path probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FunctionName {
    /// `int SSL_write(SSL *ssl, const void *buf, int num)`.
    SslWrite,
    /// `int SSL_read(SSL *ssl, void *buf, int num)`.
    SslRead,
    /// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
    SslWriteEx,
    /// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
    SslReadEx,
}

impl FunctionName {
    /// All names, in the order results are reported.
    pub const ALL: [Self; 4] = [
        Self::SslWrite,
        Self::SslRead,
        Self::SslWriteEx,
        Self::SslReadEx,
    ];

    /// The C symbol name.
    #[must_use]
    pub fn symbol(self) -> &'static str {
        match self {
            Self::SslWrite => "SSL_write",
            Self::SslRead => "SSL_read",
            Self::SslWriteEx => "SSL_write_ex",
            Self::SslReadEx => "SSL_read_ex",
        }
    }

    /// The name for a C symbol name.
    #[must_use]
    pub fn from_symbol(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.symbol() == name)
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// One function to attach to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// Which function.
    pub name: FunctionName,
    /// Its entry's virtual address.
    pub vaddr: u64,
    /// Its entry's offset in the file (what a uprobe takes).
    pub file_offset: u64,
    /// Why we believe this is the function (for humans and logs).
    pub evidence: String,
}

/// Where to attach in one ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    /// GNU build id (lowercase hex), when the file has one.
    pub build_id: Option<String>,
    /// The file's instruction set: uprobes at these offsets only fire in processes that run
    /// this code natively (an arm64 binary under emulation on an x86-64 host never hits them).
    pub arch: Arch,
    /// The TLS implementation found.
    pub library: TlsLibrary,
    /// How the functions were found.
    pub method: Method,
    /// The functions, at least `SSL_write` and `SSL_read`, in [`FunctionName::ALL`] order.
    pub functions: Vec<Function>,
}

impl Located {
    /// The entry for `name`, if located.
    #[must_use]
    pub fn function(&self, name: FunctionName) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// Why no attach points could be given for a file.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The file could not be opened, read or mapped.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not a complete, well-formed x86-64 or arm64 ELF file.
    #[error("{path}: {problem}")]
    Elf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: ElfProblem,
    },
    /// The file imports the TLS functions from a shared library instead of containing them.
    #[error(
        "{path}: no TLS code inside; it imports SSL_read/SSL_write (or their _ex forms) from {needed}: locate that library instead"
    )]
    ImportsTls {
        /// The file.
        path: PathBuf,
        /// The shared libraries it needs that look like TLS libraries (or all of them).
        needed: String,
    },
    /// Neither TLS symbols nor BoringSSL code were found.
    #[error(
        "{path}: no TLS library found (no SSL_read/SSL_write symbols and no BoringSSL ssl_lib.cc error sites)"
    )]
    NoTlsLibrary {
        /// The file.
        path: PathBuf,
    },
    /// A TLS library is there, but the functions could not be identified with certainty.
    #[error(
        "{path}: {library} found but SSL_write/SSL_read not identified with certainty, not attaching"
    )]
    NotIdentified {
        /// The file.
        path: PathBuf,
        /// Which library was recognised.
        library: TlsLibrary,
        /// What check failed.
        #[source]
        source: boringssl::NotIdentified,
    },
    /// The file is larger than a locate reads.
    #[error("{path}: {size} bytes, more than the {limit} a locate reads; not attaching")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap ([`Limits::max_file_bytes`]).
        limit: u64,
    },
    /// Scanning the file went over the time budget or a candidate cap (a file built to stall
    /// the scans, or a machine far too loaded).
    #[error("{path}: {budget}; not attaching")]
    OverBudget {
        /// The file.
        path: PathBuf,
        /// Which bound.
        #[source]
        budget: OverBudget,
    },
    /// The file changed (size, mtime or ctime) or was cut short while it was read.
    #[error("{path}: changed while being read ({detail}); not attaching")]
    Changed {
        /// The file.
        path: PathBuf,
        /// What differed.
        detail: String,
    },
    /// The same file (device, inode, size, mtime, ctime) was refused before; not read again.
    #[error("{path}: refused before and unchanged since, not read again: {reason}")]
    Remembered {
        /// The file.
        path: PathBuf,
        /// The first refusal with its causes, as text (the error itself is not kept).
        reason: String,
    },
}

impl LocateError {
    /// Whether the refusal follows from the file's content alone, so the same unchanged file
    /// would be refused again ([`Locator`] remembers those).
    #[must_use]
    pub fn is_about_content(&self) -> bool {
        matches!(
            self,
            Self::Elf { .. }
                | Self::ImportsTls { .. }
                | Self::NoTlsLibrary { .. }
                | Self::NotIdentified { .. }
                | Self::TooLarge { .. }
                | Self::OverBudget { .. }
        )
    }
}

/// Bounds on one locate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Larger files are refused unread ([`LocateError::TooLarge`]).
    pub max_file_bytes: u64,
    /// Wall-clock time for reading and scanning one file ([`LocateError::OverBudget`]).
    pub time: Duration,
}

impl Default for Limits {
    /// 512 MiB (Claude Code builds are 250-400 MB) and 10 s (the real Claude Code 2.1.332
    /// took 0.7-2.8 s to read and scan on a 2-core VM at load 9, 0.4 s when quieter).
    fn default() -> Self {
        Self {
            max_file_bytes: 512 << 20,
            time: Duration::from_secs(10),
        }
    }
}

/// What `fstat` says about a file's identity and content version: the key refusals are
/// remembered by. Its owner can set the mtime back, but not the ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i128,
    /// Status change time, ns.
    pub ctime_ns: i128,
}

impl FileStamp {
    /// The stamp of `meta`.
    #[must_use]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Files refused before, oldest forgotten first.
#[derive(Debug)]
struct Refusals {
    reasons: HashMap<FileStamp, String>,
    order: VecDeque<FileStamp>,
    cap: usize,
}

impl Refusals {
    fn insert(&mut self, stamp: FileStamp, reason: String) {
        if self.reasons.insert(stamp, reason).is_none() {
            self.order.push_back(stamp);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.reasons.remove(&old);
                }
            }
        }
    }
}

/// Refused files remembered by a [`Locator`].
pub const REFUSALS_KEPT: usize = 4096;

/// Locates files for the daemon: one at a time (so at most one file is held in memory), under
/// [`Limits`], with an optional on-disk [`Cache`] and a bounded memory of refused files.
#[derive(Debug)]
pub struct Locator {
    cache: Option<Cache>,
    limits: Limits,
    refusals: Mutex<Refusals>,
    one_at_a_time: Mutex<()>,
    reads: AtomicU64,
}

impl Locator {
    /// A locator using `cache` when given.
    #[must_use]
    pub fn new(cache: Option<Cache>, limits: Limits) -> Self {
        Self {
            cache,
            limits,
            refusals: Mutex::new(Refusals {
                reasons: HashMap::new(),
                order: VecDeque::new(),
                cap: REFUSALS_KEPT,
            }),
            one_at_a_time: Mutex::new(()),
            reads: AtomicU64::new(0),
        }
    }

    /// Files read so far (refusals answered from memory are not counted).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Locates the TLS functions in the open `file` (`path` names it in errors and logs).
    /// A file refused before for its content, and unchanged since, is refused again unread.
    ///
    /// # Errors
    /// See [`LocateError`].
    pub fn locate(&self, file: &File, path: &Path) -> Result<Located, LocateError> {
        let io = |source| LocateError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(io)?;
        let stamp = FileStamp::of(&meta);
        let remembered = |refusals: &Mutex<Refusals>| {
            let refusals = refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            refusals.reasons.get(&stamp).cloned()
        };
        if let Some(reason) = remembered(&self.refusals) {
            return Err(LocateError::Remembered {
                path: path.to_owned(),
                reason,
            });
        }
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another thread may have refused the same file while this one waited.
        if let Some(reason) = remembered(&self.refusals) {
            return Err(LocateError::Remembered {
                path: path.to_owned(),
                reason,
            });
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let result = locate_open(file, &meta, path, self.cache.as_ref(), self.limits);
        if let Err(e) = &result
            && e.is_about_content()
        {
            tracing::debug!(path = %path.display(), dev = stamp.dev, ino = stamp.ino, error = %crate::error_chain(&e), "locate: refused; remembered until the file changes");
            self.refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(stamp, crate::error_chain(&e));
        }
        result
    }
}

/// Memory holding a file's bytes: private anonymous memory (not a mapping of the file, so
/// nothing another process does to the file can fault a reader), in huge pages where the kernel
/// allows, which makes filling a few hundred megabytes about twice as fast as a `Vec`.
pub struct Buffer(Option<memmap2::MmapMut>);

impl Buffer {
    fn new(len: usize) -> std::io::Result<Self> {
        if len == 0 {
            return Ok(Self(None));
        }
        let map = memmap2::MmapMut::map_anon(len)?;
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Self(Some(map)))
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

/// The bytes of one file, read from an open descriptor into a [`Buffer`] of the file's size,
/// range by range: what is not read yet reads as zeros.
struct Reader<'a> {
    file: &'a File,
    meta: &'a std::fs::Metadata,
    path: &'a Path,
    data: Buffer,
}

impl<'a> Reader<'a> {
    /// A reader for `file` (whose metadata is `meta`), refusing non-regular files and files
    /// over `max_bytes` before anything is read.
    fn new(
        file: &'a File,
        meta: &'a std::fs::Metadata,
        path: &'a Path,
        max_bytes: u64,
    ) -> Result<Self, LocateError> {
        if !meta.is_file() {
            return Err(LocateError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        let size = meta.len();
        if size > max_bytes {
            return Err(LocateError::TooLarge {
                path: path.to_owned(),
                size,
                limit: max_bytes,
            });
        }
        let len = usize::try_from(size).map_err(|_| LocateError::TooLarge {
            path: path.to_owned(),
            size,
            limit: max_bytes,
        })?;
        let data = Buffer::new(len).map_err(|source| LocateError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            meta,
            path,
            data,
        })
    }

    fn changed(&self, detail: String) -> LocateError {
        LocateError::Changed {
            path: self.path.to_owned(),
            detail,
        }
    }

    /// Reads `len` bytes at `offset` (cut at the end of the buffer). A file that ends early
    /// was truncated meanwhile: [`LocateError::Changed`].
    fn fill(&mut self, offset: u64, len: u64) -> Result<(), LocateError> {
        let size = self.data.len();
        let start = usize::try_from(offset).unwrap_or(size).min(size);
        let end = start
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            .min(size);
        let mut at = start;
        while at < end {
            match self.file.read_at(&mut self.data[at..end], at as u64) {
                Ok(0) => {
                    return Err(self.changed(format!("ended at byte {at} of {size} (truncated)")));
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(LocateError::Io {
                        path: self.path.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads the whole file except the `(offset, len)` ranges in `skip` (which read as zeros).
    fn fill_except(&mut self, skip: &[(u64, u64)]) -> Result<(), LocateError> {
        let mut skip = skip.to_vec();
        skip.sort_unstable();
        let mut at = 0u64;
        for (offset, len) in skip {
            if offset > at {
                self.fill(at, offset - at)?;
            }
            at = at.max(offset.saturating_add(len));
        }
        self.fill(at, u64::MAX)
    }

    /// Checks the file is as it was when opened: same size, mtime and ctime, nothing past its
    /// end. Bytes read before and after this check are the file's at one moment, as far as
    /// `fstat` can tell.
    fn unchanged(&self) -> Result<(), LocateError> {
        let io = |source| LocateError::Io {
            path: self.path.to_owned(),
            source,
        };
        let after = self.file.metadata().map_err(io)?;
        let mut extra = [0u8; 1];
        let size = self.data.len() as u64;
        if self.file.read_at(&mut extra, size).map_err(io)? != 0
            || FileStamp::of(&after) != FileStamp::of(self.meta)
        {
            return Err(self.changed(format!(
                "size {size} -> {}, or its mtime/ctime moved",
                after.len()
            )));
        }
        Ok(())
    }
}

/// Reads all of `file` (whose metadata is `meta`) into memory, refusing files over
/// `max_bytes`, and files whose size, mtime or ctime change or that end early while read.
///
/// # Errors
/// [`LocateError::Io`], [`LocateError::TooLarge`] or [`LocateError::Changed`].
pub fn read_whole(
    file: &File,
    meta: &std::fs::Metadata,
    path: &Path,
    max_bytes: u64,
) -> Result<Buffer, LocateError> {
    let mut reader = Reader::new(file, meta, path, max_bytes)?;
    reader.fill(0, u64::MAX)?;
    reader.unchanged()?;
    Ok(reader.data)
}

/// Bytes read first: the ELF and program headers and, in every build seen, the notes holding
/// the build id, which is all a cache lookup needs besides the digested ranges.
const HEAD_BYTES: u64 = 64 * 1024;

/// Locates the TLS functions in the ELF file at `path`, using and filling `cache` when given,
/// under the default [`Limits`]. The file is opened once, not following a symbolic link in its
/// last component, and read into memory.
///
/// # Errors
/// See [`LocateError`]: I/O, not a complete x86-64 or arm64 ELF, no TLS library, not identified
/// with certainty, over a limit, or changed while read.
pub fn locate_file(path: &Path, cache: Option<&Cache>) -> Result<Located, LocateError> {
    let file = open_nofollow(path).map_err(|source| LocateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| LocateError::Io {
        path: path.to_owned(),
        source,
    })?;
    locate_open(&file, &meta, path, cache, Limits::default())
}

/// Opens `path` read-only and close-on-exec, without following a symbolic link as its last
/// component (`ELOOP` then).
///
/// # Errors
/// As `open(2)`.
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Locates from an open file with metadata `meta`. With a cache, the headers are read first and
/// a cache entry for the build id is verified against the few ranges it digests; only
/// without a verified entry is the whole file read, parsed, scanned, and the result stored.
fn locate_open(
    file: &File,
    meta: &std::fs::Metadata,
    path: &Path,
    cache: Option<&Cache>,
    limits: Limits,
) -> Result<Located, LocateError> {
    let started = Instant::now();
    let budget = Budget::new(limits.time);
    let mut reader = Reader::new(file, meta, path, limits.max_file_bytes)?;
    if let Some(cache) = cache {
        reader.fill(0, HEAD_BYTES)?;
        let head = ElfImage::parse(&reader.data)
            .ok()
            .and_then(|image| Some((image.build_id?, image.arch)));
        if let Some((build_id, arch)) = head {
            for candidate in cache.candidates(&build_id, arch, reader.data.len() as u64) {
                for (offset, len) in candidate.ranges(reader.data.len() as u64) {
                    reader.fill(offset, len)?;
                }
                if let Some(hit) = candidate.verify(&reader.data, arch) {
                    reader.unchanged()?;
                    tracing::debug!(path = %path.display(), build_id, elapsed_us = started.elapsed().as_micros() as u64, "locate: cache hit");
                    return Ok(hit);
                }
            }
        }
    }
    // The headers say which segments the locator never looks at (a Bun executable's embedded
    // JavaScript): the rest is read.
    reader.fill(0, HEAD_BYTES)?;
    let skip = ElfImage::parse(&reader.data)
        .map(|image| image.unread_ranges())
        .unwrap_or_default();
    reader.fill_except(&skip)?;
    reader.unchanged()?;
    let read_ms = started.elapsed().as_millis() as u64;
    let data = reader.data;
    budget
        .check("reading")
        .map_err(|budget| LocateError::OverBudget {
            path: path.to_owned(),
            budget,
        })?;
    let image = ElfImage::parse(&data).map_err(|problem| LocateError::Elf {
        path: path.to_owned(),
        problem,
    })?;
    let located = locate_within(path, &image, &budget)?;
    tracing::debug!(
        path = %path.display(),
        build_id = located.build_id.as_deref().unwrap_or("-"),
        method = %located.method,
        read_ms,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "locate: located"
    );
    if let Some(Err(error)) = cache.map(|cache| cache.store(&image, &located)) {
        tracing::warn!(path = %path.display(), error = %crate::error_chain(&error), "locate: cannot write cache entry");
    }
    Ok(located)
}

/// Locates the TLS functions in a parsed image (no cache, no time budget). `path` is used in
/// errors only.
///
/// # Errors
/// As [`locate_file`], without I/O.
pub fn locate_image(path: &Path, image: &ElfImage<'_>) -> Result<Located, LocateError> {
    locate_within(path, image, &Budget::unlimited())
}

/// [`locate_image`] within `budget`.
///
/// # Errors
/// As [`locate_image`], and [`LocateError::OverBudget`].
pub fn locate_within(
    path: &Path,
    image: &ElfImage<'_>,
    budget: &Budget,
) -> Result<Located, LocateError> {
    if let Some(located) = symbols::locate(image) {
        return Ok(located);
    }
    match boringssl::locate(image, budget) {
        Ok(Some(functions)) => Ok(Located {
            build_id: image.build_id.clone(),
            arch: image.arch,
            library: TlsLibrary::BoringSsl,
            method: Method::Disassembly,
            functions,
        }),
        Ok(None) => {
            let names: Vec<&str> = FunctionName::ALL.iter().map(|n| n.symbol()).collect();
            let (_, imported) = image.function_symbols(&names);
            if imported {
                let tls: Vec<&str> = image
                    .needed
                    .iter()
                    .map(String::as_str)
                    .filter(|n| n.contains("ssl") || n.contains("tls"))
                    .collect();
                let needed = if tls.is_empty() {
                    image.needed.join(", ")
                } else {
                    tls.join(", ")
                };
                return Err(LocateError::ImportsTls {
                    path: path.to_owned(),
                    needed,
                });
            }
            Err(LocateError::NoTlsLibrary {
                path: path.to_owned(),
            })
        }
        Err(boringssl::NotIdentified::OverBudget(budget)) => Err(LocateError::OverBudget {
            path: path.to_owned(),
            budget,
        }),
        Err(source) => Err(LocateError::NotIdentified {
            path: path.to_owned(),
            library: TlsLibrary::BoringSsl,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian ELF64 x86-64 executable with one `PT_LOAD` per `(executable, bytes)`.
    fn elf(segments: &[(bool, Vec<u8>)]) -> Vec<u8> {
        let phoff = 64u64;
        let mut offset = phoff + 56 * segments.len() as u64;
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little-endian
        out[6] = 1; // EV_CURRENT
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        for (executable, bytes) in segments {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            let flags: u32 = if *executable { 5 } else { 4 };
            ph[4..8].copy_from_slice(&flags.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            let vaddr = 0x40_0000 + offset;
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[24..32].copy_from_slice(&vaddr.to_le_bytes());
            ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
            out.extend_from_slice(&ph);
            offset += bytes.len() as u64;
        }
        for (_, bytes) in segments {
            out.extend_from_slice(bytes);
        }
        out
    }

    /// A file made to stall a naive scan: a data segment of nothing but `ssl_lib.cc` strings
    /// and a code segment of nothing but `mov edx, <string>` instructions.
    fn hostile() -> Vec<u8> {
        let mut data = Vec::new();
        while data.len() < 4 << 20 {
            data.extend_from_slice(b"../../vendor/boringssl/ssl/ssl_lib.cc\0");
        }
        let string = 0x40_0000u32 + 64 + 2 * 56;
        let code: Vec<u8> = std::iter::repeat_n(0xBA, 1 << 20)
            .enumerate()
            .flat_map(|(i, b)| if i % 5 == 0 { vec![b] } else { Vec::new() })
            .flat_map(|b| std::iter::once(b).chain(string.to_le_bytes()))
            .collect();
        elf(&[(false, data), (true, code)])
    }

    fn scratch(name: &str, bytes: &[u8]) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("claude-watch-locate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("claude");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn large_writable_segments_are_left_unread() {
        use super::elf::Segment;
        let segment = |offset, file_size, executable, writable| Segment {
            vaddr: offset,
            offset,
            file_size,
            executable,
            writable,
        };
        let bytes = hostile();
        let mut image = ElfImage::parse(&bytes).unwrap();
        image.segments = vec![
            segment(0, 4 << 20, false, false),
            segment(4 << 20, 8 << 20, true, false),
            segment(12 << 20, 4096, false, true),
            segment(13 << 20, 240 << 20, false, true),
        ];
        assert_eq!(image.unread_ranges(), vec![(13 << 20, 240 << 20)]);
        // What is skipped reads as zeros; everything around it is read.
        let (dir, path) = scratch("skip", &[7u8; 10_000]);
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut reader = Reader::new(&file, &meta, &path, u64::MAX).unwrap();
        reader.fill_except(&[(6000, 1000), (100, 900)]).unwrap();
        assert!(reader.data[..100].iter().all(|&b| b == 7));
        assert!(reader.data[100..1000].iter().all(|&b| b == 0));
        assert!(reader.data[1000..6000].iter().all(|&b| b == 7));
        assert!(reader.data[6000..7000].iter().all(|&b| b == 0));
        assert!(reader.data[7000..].iter().all(|&b| b == 7));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_full_of_ssl_lib_strings_is_refused_quickly() {
        let (dir, path) = scratch("strings", &hostile());
        let started = Instant::now();
        let err = locate_file(&path, None).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, LocateError::OverBudget { .. }), "{err}");
        assert!(err.to_string().contains("ssl_lib.cc strings"), "{err}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        // Past the string cap, the reference cap: one string, a million references to it.
        let mut data = b"../../vendor/boringssl/ssl/ssl_lib.cc\0".to_vec();
        data.resize(4096, 0);
        let string = 0x40_0000u32 + 64 + 2 * 56;
        let code: Vec<u8> = (0..1_000_000)
            .flat_map(|_| std::iter::once(0xBA).chain(string.to_le_bytes()))
            .collect();
        std::fs::write(&path, elf(&[(false, data), (true, code)])).unwrap();
        let err = locate_file(&path, None).unwrap_err();
        assert!(
            err.to_string().contains("references to ssl_lib.cc"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spent_time_budget_is_a_clear_refusal() {
        let (dir, path) = scratch("time", &hostile());
        let locator = Locator::new(
            None,
            Limits {
                time: Duration::ZERO,
                ..Limits::default()
            },
        );
        std::thread::sleep(Duration::from_millis(1));
        let file = File::open(&path).unwrap();
        let err = locator.locate(&file, &path).unwrap_err();
        assert!(matches!(err, LocateError::OverBudget { .. }), "{err}");
        assert!(err.to_string().contains("budget"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_over_the_size_cap_are_refused_unread() {
        let (dir, path) = scratch("size", &hostile());
        let locator = Locator::new(
            None,
            Limits {
                max_file_bytes: 1 << 20,
                ..Limits::default()
            },
        );
        let err = locator
            .locate(&File::open(&path).unwrap(), &path)
            .unwrap_err();
        assert!(matches!(err, LocateError::TooLarge { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_truncated_while_read_is_an_error_not_a_crash() {
        // The file is read with read(2) into private memory (no mapping of the file), so a
        // truncation can only make a read come up short: an error, never SIGBUS.
        let (dir, path) = scratch("truncated", &hostile());
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        // Truncated after the open and fstat, before the read.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let err = locate_open(&file, &meta, &path, None, Limits::default()).unwrap_err();
        assert!(matches!(err, LocateError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        // Truncated to the same size is still seen (ctime moved).
        std::fs::write(&path, hostile()).unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let len = meta.len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        f.set_len(len).unwrap();
        let err = locate_open(&file, &meta, &path, None, Limits::default()).unwrap_err();
        assert!(matches!(err, LocateError::Changed { .. }), "{err}");
        // Concurrent truncation while a locate runs: it never crashes the process.
        let (stop_path, data) = (path.clone(), hostile());
        let cutter = std::thread::spawn(move || {
            for i in 0..50 {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&stop_path)
                    .unwrap();
                f.set_len(if i % 2 == 0 { 100 } else { data.len() as u64 })
                    .unwrap();
            }
        });
        for _ in 0..20 {
            let _ = locate_file(&path, None);
        }
        cutter.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refused_file_is_not_read_again_until_it_changes() {
        let (dir, path) = scratch("refusals", &hostile());
        let locator = Locator::new(None, Limits::default());
        let err = locator
            .locate(&File::open(&path).unwrap(), &path)
            .unwrap_err();
        assert!(matches!(err, LocateError::OverBudget { .. }), "{err}");
        assert_eq!(locator.reads(), 1);
        let again = locator
            .locate(&File::open(&path).unwrap(), &path)
            .unwrap_err();
        assert!(matches!(again, LocateError::Remembered { .. }), "{again}");
        assert!(again.to_string().contains("ssl_lib.cc strings"), "{again}");
        assert_eq!(locator.reads(), 1, "the same file is not read again");
        // Rewritten (new ctime): read again.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&path, hostile()).unwrap();
        let _ = locator
            .locate(&File::open(&path).unwrap(), &path)
            .unwrap_err();
        assert_eq!(locator.reads(), 2);
        // I/O-like failures (changed while read) are not remembered.
        assert!(
            !LocateError::Changed {
                path: path.clone(),
                detail: String::new()
            }
            .is_about_content()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_refusal_memory_is_bounded() {
        let mut refusals = Refusals {
            reasons: HashMap::new(),
            order: VecDeque::new(),
            cap: 3,
        };
        let stamp = |ino| FileStamp {
            dev: 1,
            ino,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        for ino in 0..10 {
            refusals.insert(stamp(ino), "no".into());
        }
        assert_eq!(refusals.reasons.len(), 3);
        assert!(refusals.reasons.contains_key(&stamp(9)));
        assert!(!refusals.reasons.contains_key(&stamp(0)));
    }
}
