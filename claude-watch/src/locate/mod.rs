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
    /// BoringSSL's `functions` in `image`, found from its code.
    fn disassembled(image: &ElfImage<'_>, functions: Vec<Function>) -> Self {
        Self {
            build_id: image.build_id.clone(),
            arch: image.arch,
            library: TlsLibrary::BoringSsl,
            method: Method::Disassembly,
            functions,
        }
    }

    /// The entry for `name`, if located.
    #[must_use]
    pub fn function(&self, name: FunctionName) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// Why no attach points could be given for a file.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The file could not be opened through the door for files others control (not a
    /// regular file, a link as its last component, gone).
    #[error(transparent)]
    Untrusted(#[from] crate::untrusted::UntrustedError),
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
    /// [`LocateError::Io`] about `path`, for `map_err`.
    fn io(path: &Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }

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
        let meta = file.metadata().map_err(LocateError::io(path))?;
        let stamp = FileStamp::of(&meta);
        let remembered = || match crate::locked(&self.refusals).reasons.get(&stamp) {
            Some(reason) => Err(LocateError::Remembered {
                path: path.to_owned(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        };
        remembered()?;
        let _one = crate::locked(&self.one_at_a_time);
        // Another thread may have refused the same file while this one waited.
        remembered()?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let result = locate_open(file, &meta, path, self.cache.as_ref(), self.limits);
        if let Err(e) = &result
            && e.is_about_content()
        {
            tracing::debug!(path = %path.display(), dev = stamp.dev, ino = stamp.ino, error = %crate::error_chain(&e), "locate: refused; remembered until the file changes");
            crate::locked(&self.refusals).insert(stamp, crate::error_chain(&e));
        }
        result
    }
}

/// Memory holding a file's bytes: private anonymous memory (not a mapping of the file, so
/// nothing another process does to the file can fault a reader). Pages never written stay
/// unallocated.
pub struct Buffer(Option<memmap2::MmapMut>);

impl Buffer {
    fn new(len: usize) -> std::io::Result<Self> {
        if len == 0 {
            return Ok(Self(None));
        }
        Ok(Self(Some(memmap2::MmapMut::map_anon(len)?)))
    }

    /// Asks for huge pages where the kernel allows, before most of the buffer is filled: that
    /// makes filling a few hundred megabytes about twice as fast as a `Vec`. Not before a sparse
    /// read (the symbol tables alone), where each 2 MiB page touched would be resident whole.
    fn prefer_huge_pages(&self) {
        if let Some(map) = &self.0 {
            let _ = map.advise(memmap2::Advice::HugePage);
        }
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
/// range by range: what is not read yet reads as zeros. No byte is read twice.
struct Reader<'a> {
    file: &'a File,
    meta: &'a std::fs::Metadata,
    path: &'a Path,
    data: Buffer,
    /// The ranges read so far, `(start, end)`, sorted, disjoint and not touching.
    filled: Vec<(u64, u64)>,
    /// Bytes read so far.
    read_bytes: u64,
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
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
            return Err(LocateError::io(path)(e));
        }
        let size = meta.len();
        let len = usize::try_from(size)
            .ok()
            .filter(|_| size <= max_bytes)
            .ok_or_else(|| LocateError::TooLarge {
                path: path.to_owned(),
                size,
                limit: max_bytes,
            })?;
        let data = Buffer::new(len).map_err(LocateError::io(path))?;
        Ok(Self {
            file,
            meta,
            path,
            data,
            filled: Vec::new(),
            read_bytes: 0,
        })
    }

    fn changed(&self, detail: String) -> LocateError {
        LocateError::Changed {
            path: self.path.to_owned(),
            detail,
        }
    }

    /// Reads `len` bytes at `offset` (cut at the end of the buffer), except what was read
    /// before. A file that ends early was truncated meanwhile: [`LocateError::Changed`].
    fn fill(&mut self, offset: u64, len: u64) -> Result<(), LocateError> {
        let size = self.data.len() as u64;
        let start = offset.min(size);
        let end = start.saturating_add(len).min(size);
        for (from, to) in gaps(&self.filled, start, end) {
            self.read_range(from, to)?;
            self.filled = with_range(&self.filled, from, to);
        }
        Ok(())
    }

    /// Reads the bytes `from..to` (within the buffer); a range of [`SPLIT_READ`] or more in
    /// two halves on two threads (the kernel's zeroing of fresh pages is most of a cold read).
    fn read_range(&mut self, from: u64, to: u64) -> Result<(), LocateError> {
        // Both within the buffer, whose length is a usize.
        let (from, to) = (from as usize, to as usize);
        let file = self.file;
        let buf = &mut self.data[from..to];
        let result = if buf.len() >= SPLIT_READ {
            let (lo, hi) = buf.split_at_mut(buf.len() / 2);
            let mid = from + lo.len();
            std::thread::scope(|s| {
                let upper = s.spawn(|| read_exact_at(file, hi, mid));
                let lower = read_exact_at(file, lo, from);
                lower.and(upper.join().expect("a read does not panic"))
            })
        } else {
            read_exact_at(file, buf, from)
        };
        result.map_err(|e| self.short(e))?;
        self.read_bytes += (to - from) as u64;
        Ok(())
    }

    /// The error of a read that stopped short: the file was truncated meanwhile, or the read
    /// failed.
    fn short(&self, e: ShortRead) -> LocateError {
        match e {
            ShortRead::Ended(at) => self.changed(format!(
                "ended at byte {at} of {} (truncated)",
                self.data.len()
            )),
            ShortRead::Io(source) => LocateError::io(self.path)(source),
        }
    }

    /// Streams the file-backed bytes of `seg` past `f` piece by piece, on two threads (a half
    /// of the segment each, in a buffer of its own reused for every piece): `f(bytes, base,
    /// from, to)` gets bytes mapped at `base` whose own part is `bytes[from..to]`, with up to
    /// `margin` bytes of the segment either side as context. The pieces' results, in order.
    fn stream<T: Send>(
        &self,
        seg: &elf::Segment,
        margin: usize,
        f: impl Fn(&[u8], u64, usize, usize) -> T + Sync,
    ) -> Result<Vec<T>, LocateError> {
        let len = usize::try_from(seg.file_size).unwrap_or(usize::MAX);
        let file = self.file;
        let half = |from: usize, to: usize| -> Result<Vec<T>, ShortRead> {
            let mut buf = vec![0u8; STREAM_PIECE.min(to - from) + 2 * margin];
            let mut out = Vec::new();
            let mut at = from;
            while at < to {
                let end = (at + STREAM_PIECE).min(to);
                let (lo, hi) = (at.saturating_sub(margin), (end + margin).min(len));
                read_exact_at(file, &mut buf[..hi - lo], seg.offset as usize + lo)?;
                out.push(f(&buf[..hi - lo], seg.vaddr + lo as u64, at - lo, end - lo));
                at = end;
            }
            Ok(out)
        };
        let mid = len / 2;
        let result = std::thread::scope(|s| {
            let upper = s.spawn(|| half(mid, len));
            let lower = half(0, mid);
            lower.and_then(|mut out| {
                out.extend(upper.join().expect("a scan does not panic")?);
                Ok(out)
            })
        });
        result.map_err(|e| self.short(e))
    }

    /// Reads the ranges `wanted` names in the bytes read so far, again until it names nothing
    /// new (headers first, then the tables they point to, then what those name). `false` when
    /// that does not settle within [`SETTLE_ROUNDS`] or names more than [`SETTLE_RANGES`]
    /// ranges (no real file does): the caller then reads the whole file.
    fn fill_settled(
        &mut self,
        wanted: impl Fn(&[u8]) -> Vec<(u64, u64)>,
    ) -> Result<bool, LocateError> {
        for _ in 0..SETTLE_ROUNDS {
            let ranges = wanted(&self.data);
            if ranges.len() > SETTLE_RANGES {
                return Ok(false);
            }
            let before = self.filled.clone();
            for (offset, len) in ranges {
                self.fill(offset, len)?;
            }
            if self.filled == before {
                return Ok(true);
            }
        }
        Ok(false)
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
        let io = LocateError::io(self.path);
        let after = self.file.metadata().map_err(&io)?;
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

/// Rounds [`Reader::fill_settled`] takes at most (a real file settles in three: headers,
/// section table, tables).
const SETTLE_ROUNDS: usize = 6;
/// Ranges [`Reader::fill_settled`] reads at most in one round (a real file names fewer than 10).
const SETTLE_RANGES: usize = 64;

/// The bytes a streamed scan reads at a time, per thread.
const STREAM_PIECE: usize = 4 << 20;

/// Ranges read on two threads from this size on.
const SPLIT_READ: usize = 16 << 20;

/// Why a read of a range stopped short.
enum ShortRead {
    /// The file ended at this byte (truncated while read).
    Ended(usize),
    /// The read failed.
    Io(std::io::Error),
}

/// Fills `buf` with the file's bytes from `offset` on.
fn read_exact_at(file: &File, buf: &mut [u8], offset: usize) -> Result<(), ShortRead> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], (offset + done) as u64) {
            Ok(0) => return Err(ShortRead::Ended(offset + done)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ShortRead::Io(e)),
        }
    }
    Ok(())
}

/// The parts of `start..end` not in `filled` (sorted, disjoint `(start, end)` ranges).
fn gaps(filled: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(from, to) in filled {
        if to <= at {
            continue;
        }
        if from >= end {
            break;
        }
        if from > at {
            out.push((at, from));
        }
        at = at.max(to);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// `filled` (sorted, disjoint, not touching) with `start..end` added, kept that way.
fn with_range(filled: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let (mut start, mut end) = (start, end);
    let mut out = Vec::with_capacity(filled.len() + 1);
    let mut placed = false;
    for &(from, to) in filled {
        if to < start {
            out.push((from, to));
        } else if from > end {
            if !placed {
                out.push((start, end));
                placed = true;
            }
            out.push((from, to));
        } else {
            start = start.min(from);
            end = end.max(to);
        }
    }
    if !placed {
        out.push((start, end));
    }
    out
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
    let (file, meta) =
        crate::untrusted::open(path, crate::untrusted::Resolve::NoFollow)?.into_parts();
    locate_open(&file, &meta, path, cache, Limits::default())
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
    reader.fill(0, HEAD_BYTES)?;
    if let Some(cache) = cache {
        let head = ElfImage::parse(&reader.data)
            .ok()
            .and_then(|image| Some((image.build_id?, image.arch)));
        if let Some((build_id, arch)) = head {
            for candidate in cache.candidates(&build_id, arch, reader.data.len() as u64) {
                for (offset, len) in candidate.ranges(reader.data.len() as u64) {
                    reader.fill(offset, len)?;
                }
                let name = candidate.name().to_owned();
                if let Some(hit) = candidate.verify(&reader.data, arch) {
                    reader.unchanged()?;
                    cache.used(&name);
                    tracing::debug!(path = %path.display(), build_id, elapsed_us = started.elapsed().as_micros() as u64, "locate: cache hit");
                    return Ok(hit);
                }
            }
        }
    }
    let sparse = match locate_by_symbols(&mut reader, path, &budget)? {
        BySymbols::Found(located) => Some((located, "the symbol tables alone")),
        // A stripped x86-64 executable: the scans stream the file, only the code around the
        // error sites is read into memory.
        BySymbols::NotNamed(Arch::X86_64, segments) => {
            locate_streamed(&mut reader, &segments, path, &budget)?
                .map(|located| (located, "streamed scans"))
        }
        BySymbols::NotNamed(..) | BySymbols::Unsettled => None,
    };
    if let Some((located, how)) = sparse {
        if cache.is_some() {
            for (offset, len) in cache::ranges(reader.data.len() as u64, &located) {
                reader.fill(offset, len)?;
            }
        }
        reader.unchanged()?;
        read_within(&budget, path)?;
        tracing::debug!(
            path = %path.display(),
            build_id = located.build_id.as_deref().unwrap_or("-"),
            method = %located.method,
            read_bytes = reader.read_bytes,
            file_bytes = reader.data.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "locate: located from {how}"
        );
        if let Some(cache) = cache {
            // The image over the bytes read, which hold the build id and the digested ranges.
            if let Ok(image) = ElfImage::parse(&reader.data) {
                store(cache, &image, &located, path, meta.uid());
            }
        }
        return Ok(located);
    }
    // The headers say which segments the locator never looks at (a Bun executable's embedded
    // JavaScript): the rest is read.
    let skip = ElfImage::parse(&reader.data)
        .map(|image| image.unread_ranges())
        .unwrap_or_default();
    reader.data.prefer_huge_pages();
    reader.fill_except(&skip)?;
    reader.unchanged()?;
    let read_ms = started.elapsed().as_millis() as u64;
    let data = reader.data;
    read_within(&budget, path)?;
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
    if let Some(cache) = cache {
        store(cache, &image, &located, path, meta.uid());
    }
    Ok(located)
}

/// Whether reading `path` stayed within `budget`.
fn read_within(budget: &Budget, path: &Path) -> Result<(), LocateError> {
    budget
        .check("reading")
        .map_err(|budget| LocateError::OverBudget {
            path: path.to_owned(),
            budget,
        })
}

/// Stores `located` for `image` in `cache`; a failure is logged, the answer stands.
fn store(cache: &Cache, image: &ElfImage<'_>, located: &Located, path: &Path, owner: u32) {
    if let Err(error) = cache.store(image, located, owner) {
        tracing::warn!(path = %path.display(), error = %crate::error_chain(&error), "locate: cannot write cache entry");
    }
}

/// What the symbol tables alone say.
enum BySymbols {
    /// They name the functions.
    Found(Located),
    /// They were read whole and do not name them: the image's architecture and segments.
    NotNamed(Arch, Vec<elf::Segment>),
    /// The headers did not settle into a few ranges: the caller reads the whole file.
    Unsettled,
}

/// The symbol path on the symbol tables alone: reads the headers, the notes, the section
/// table, the dynamic section and `.dynsym` with its strings, and `.symtab` with its strings
/// only when `.dynsym` does not name all of [`FunctionName::ALL`]; the rest of the file stays
/// unread. The answer is the one [`symbols::locate`] gives over the whole file (every byte it
/// looks at is read). `None` when the symbols do not name the functions, or the headers do not
/// settle into a few ranges: the caller reads the file. The caller checks the file is unchanged.
fn locate_by_symbols(
    reader: &mut Reader<'_>,
    path: &Path,
    budget: &Budget,
) -> Result<BySymbols, LocateError> {
    let names: Vec<&str> = FunctionName::ALL.iter().map(|n| n.symbol()).collect();
    for tables in [
        &[elf::Table::Dynamic][..],
        &[elf::Table::Dynamic, elf::Table::Static],
    ] {
        if !reader.fill_settled(|data| elf::symbol_ranges(data, tables))? {
            return Ok(BySymbols::Unsettled);
        }
        read_within(budget, path)?;
        let Ok(image) = ElfImage::parse(&reader.data) else {
            return Ok(BySymbols::Unsettled);
        };
        // Over the whole file, a name `.dynsym` defines is taken from it: when it defines all
        // of them, `.symtab` cannot change the answer and is left unread.
        let all_dynamic = || {
            image
                .function_symbols_in(&names, &[elf::Table::Dynamic])
                .0
                .len()
                == names.len()
        };
        if tables.len() == 2 || all_dynamic() {
            return Ok(symbols::locate_in(&image, tables).map_or_else(
                || BySymbols::NotNamed(image.arch, image.segments.clone()),
                BySymbols::Found,
            ));
        }
    }
    Ok(BySymbols::Unsettled)
}

/// The x86-64 BoringSSL path without the file in memory: the linear scans (the strings, the
/// references to them, the call targets around those) stream the segments past two buffers
/// of a few megabytes, and only the code within [`boringssl::CODE_RADIUS`] of each reference
/// is read to be decoded: a cold locate of a 400 MB Claude Code neither fills nor zeroes
/// 160 MB of fresh memory. `None` when this does not identify the functions (no TLS strings,
/// or a check failed): the caller then reads the whole file and decides as before.
fn locate_streamed(
    reader: &mut Reader<'_>,
    segments: &[elf::Segment],
    path: &Path,
    budget: &Budget,
) -> Result<Option<Located>, LocateError> {
    const SUFFIX: &[u8] = b"/ssl/ssl_lib.cc";
    let over = |budget| LocateError::OverBudget {
        path: path.to_owned(),
        budget,
    };
    let mut strings = Vec::new();
    for seg in segments.iter().filter(|s| !s.executable && !s.unread()) {
        let found = reader.stream(seg, 4096 + SUFFIX.len() + 1, |bytes, base, from, to| {
            scan::strings_ending_in(bytes, base, SUFFIX, from, to)
        })?;
        strings.extend(found.into_iter().flatten());
    }
    strings.sort_unstable();
    strings.dedup();
    if strings.is_empty() {
        return Ok(None);
    }
    Budget::cap(strings.len(), budget::MAX_STRINGS, "ssl_lib.cc strings").map_err(over)?;
    budget.check("strings").map_err(over)?;
    let (mut scans, mut seen) = (Vec::new(), 0);
    for seg in segments.iter().filter(|s| s.executable) {
        // One pass: the references, and every call target (as offsets, in a few megabytes)
        // to keep those around the references once they are known.
        let region = (seg.vaddr, seg.vaddr + seg.file_size);
        let pieces = reader.stream(seg, 16, |bytes, base, from, to| {
            let refs = scan::references_in(bytes, base, &strings, from, to);
            let targets: Vec<u32> = scan::call_targets_in(bytes, base, from, to, region).collect();
            (refs, targets)
        })?;
        let (refs, targets): (Vec<_>, Vec<_>) = pieces.into_iter().unzip();
        let refs = scan::sorted_references(refs.into_iter().flatten().collect());
        seen += refs.len();
        if let Err(e) = boringssl::references_within(seen, budget) {
            return match e {
                boringssl::NotIdentified::OverBudget(b) => Err(over(b)),
                _ => Ok(None),
            };
        }
        scans.push(boringssl::Scanned::new(refs, |near, radius| {
            let mut calls = scan::CallTargets::near(seg.vaddr, seg.file_size, near, radius);
            for offset in targets.into_iter().flatten() {
                calls.insert(seg.vaddr + u64::from(offset));
            }
            calls
        }));
    }
    for (lo, hi) in scans.iter().flat_map(boringssl::Scanned::code_windows) {
        for seg in segments.iter().filter(|s| s.executable) {
            let (a, b) = (lo.max(seg.vaddr), hi.min(seg.vaddr + seg.file_size));
            if a < b {
                reader.fill(seg.offset + (a - seg.vaddr), b - a)?;
            }
        }
    }
    reader.unchanged()?;
    read_within(budget, path)?;
    let image = ElfImage::parse(&reader.data).map_err(|problem| LocateError::Elf {
        path: path.to_owned(),
        problem,
    })?;
    match boringssl::identify_x86_64(&image, strings.len(), &scans, budget) {
        Ok(functions) => Ok(Some(Located::disassembled(&image, functions))),
        Err(boringssl::NotIdentified::OverBudget(b)) => Err(over(b)),
        Err(why) => {
            tracing::debug!(path = %path.display(), %why, "locate: the streamed scans did not identify the functions; reading the whole file");
            Ok(None)
        }
    }
}

/// Locates the TLS functions in a parsed image (no cache, no time budget; the tests' entry).
#[cfg(test)]
pub fn locate_image(path: &Path, image: &ElfImage<'_>) -> Result<Located, LocateError> {
    locate_within(path, image, &Budget::unlimited())
}

/// Locates the TLS functions in a parsed image (no cache) within `budget`. `path` is used in
/// errors only.
///
/// # Errors
/// As [`locate_file`], without I/O, and [`LocateError::OverBudget`].
pub fn locate_within(
    path: &Path,
    image: &ElfImage<'_>,
    budget: &Budget,
) -> Result<Located, LocateError> {
    if let Some(located) = symbols::locate(image) {
        return Ok(located);
    }
    match boringssl::locate(image, budget) {
        Ok(Some(functions)) => Ok(Located::disassembled(image, functions)),
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

    /// A little-endian ELF64 x86-64 shared object: ELF and program headers, a GNU build id
    /// note, `code_len` bytes of code from 4096, then `.dynstr` and `.dynsym` naming `dynamic`,
    /// `.strtab` and `.symtab` naming `statics` (function `i` of each at code offset `16 * i`),
    /// an empty `.shstrtab`, and the section table last. One executable `PT_LOAD` maps the whole file.
    fn with_symbols(code_len: usize, dynamic: &[&str], statics: &[&str]) -> Vec<u8> {
        fn table(names: &[&str], first: usize) -> (Vec<u8>, Vec<u8>) {
            let (mut strings, mut symbols) = (vec![0u8], vec![0u8; 24]);
            for (i, name) in names.iter().enumerate() {
                let mut sym = [0u8; 24];
                sym[..4].copy_from_slice(&(strings.len() as u32).to_le_bytes());
                sym[4] = 0x12; // STB_GLOBAL, STT_FUNC
                sym[6..8].copy_from_slice(&1u16.to_le_bytes()); // .text
                let vaddr = 4096 + 16 * (first + i) as u64;
                sym[8..16].copy_from_slice(&vaddr.to_le_bytes());
                sym[16..24].copy_from_slice(&16u64.to_le_bytes());
                symbols.extend_from_slice(&sym);
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
            }
            (strings, symbols)
        }
        let mut out = vec![0u8; 4096];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&2u16.to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        // The note: namesz 4, descsz 20, NT_GNU_BUILD_ID, "GNU\0", the id.
        let note = 64 + 2 * 56;
        out[note..note + 4].copy_from_slice(&4u32.to_le_bytes());
        out[note + 4..note + 8].copy_from_slice(&20u32.to_le_bytes());
        out[note + 8..note + 12].copy_from_slice(&3u32.to_le_bytes());
        out[note + 12..note + 16].copy_from_slice(b"GNU\0");
        for (i, b) in out[note + 16..note + 36].iter_mut().enumerate() {
            *b = 0xa0 + i as u8;
        }
        out.extend(std::iter::repeat_n(0xCC, code_len));
        let (dynstr, dynsym) = table(dynamic, 0);
        let (strtab, symtab) = table(statics, dynamic.len());
        let mut sections: Vec<(u32, u64, u64, u32)> =
            vec![(0, 0, 0, 0), (1, 4096, code_len as u64, 0)];
        for (sh_type, bytes, link) in [
            (3, &dynstr, 0),
            (11, &dynsym, 2),
            (3, &strtab, 0),
            (2, &symtab, 4),
            (3, &vec![0u8], 0),
        ] {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            sections.push((sh_type, out.len() as u64, bytes.len() as u64, link));
            out.extend_from_slice(bytes);
        }
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len() as u64;
        out[40..48].copy_from_slice(&shoff.to_le_bytes());
        out[60..62].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out[62..64].copy_from_slice(&(sections.len() as u16 - 1).to_le_bytes()); // .shstrtab
        for (sh_type, offset, size, link) in sections {
            let mut sh = [0u8; 64];
            sh[4..8].copy_from_slice(&sh_type.to_le_bytes());
            sh[24..32].copy_from_slice(&offset.to_le_bytes());
            sh[32..40].copy_from_slice(&size.to_le_bytes());
            sh[40..44].copy_from_slice(&link.to_le_bytes());
            if sh_type == 2 || sh_type == 11 {
                sh[56..64].copy_from_slice(&24u64.to_le_bytes());
            }
            out.extend_from_slice(&sh);
        }
        let len = out.len() as u64;
        let mut ph = [0u8; 56];
        ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[32..40].copy_from_slice(&len.to_le_bytes());
        ph[40..48].copy_from_slice(&len.to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        out[64..120].copy_from_slice(&ph);
        let mut ph = [0u8; 56];
        ph[..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        ph[8..16].copy_from_slice(&(note as u64).to_le_bytes());
        ph[16..24].copy_from_slice(&(note as u64).to_le_bytes());
        ph[32..40].copy_from_slice(&36u64.to_le_bytes());
        ph[40..48].copy_from_slice(&36u64.to_le_bytes());
        out[120..176].copy_from_slice(&ph);
        out
    }

    const SSL: [&str; 4] = ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"];

    /// What the symbol path on a sparse read answers for `bytes` (`None`: the caller would read
    /// the whole file), and the bytes it read.
    fn sparse(name: &str, bytes: &[u8]) -> (Result<Option<Located>, String>, u64) {
        let (dir, path) = scratch(name, bytes);
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut reader = Reader::new(&file, &meta, &path, u64::MAX).unwrap();
        let result = reader
            .fill(0, HEAD_BYTES)
            .and_then(|()| locate_by_symbols(&mut reader, &path, &Budget::unlimited()))
            .map(|answer| match answer {
                BySymbols::Found(located) => Some(located),
                BySymbols::NotNamed(..) | BySymbols::Unsettled => None,
            })
            .map_err(|e| e.to_string());
        let read = reader.read_bytes;
        assert!(
            read <= bytes.len() as u64,
            "{read} bytes read of {}",
            bytes.len()
        );
        std::fs::remove_dir_all(dir).unwrap();
        (result, read)
    }

    /// What the whole locate answers for `bytes`, and what the locator answers over the
    /// whole file in memory: the two must agree.
    fn agree(name: &str, bytes: &[u8]) -> Result<Located, String> {
        let (dir, path) = scratch(name, bytes);
        let read = locate_file(&path, None).map_err(|e| e.to_string());
        let whole = ElfImage::parse(bytes)
            .map_err(|problem| {
                LocateError::Elf {
                    path: path.clone(),
                    problem,
                }
                .to_string()
            })
            .and_then(|image| locate_image(&path, &image).map_err(|e| e.to_string()));
        assert_eq!(read, whole, "{name}");
        std::fs::remove_dir_all(dir).unwrap();
        read
    }

    #[test]
    fn a_file_with_symbols_is_located_from_its_symbol_tables_alone() {
        let code = 8 << 20;
        let bytes = with_symbols(code, &SSL, &["other"]);
        let (located, read) = sparse("sparse", &bytes);
        let located = located.unwrap().expect("located by symbols");
        assert_eq!(located.method, Method::Symbols);
        assert_eq!(located.functions.len(), 4);
        assert_eq!(
            located.build_id.as_deref(),
            Some("a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3")
        );
        // The head and the tables; not the code.
        assert!(read < 128 << 10, "{read} bytes read of {}", bytes.len());
        assert_eq!(agree("sparse", &bytes).unwrap(), located);
    }

    #[test]
    fn the_static_table_is_read_only_when_the_dynamic_one_lacks_a_name() {
        let code = 1 << 20;
        // .dynsym names SSL_write and SSL_read only; the _ex forms are in .symtab.
        let bytes = with_symbols(code, &SSL[..2], &SSL[2..]);
        let (located, read) = sparse("static", &bytes);
        let located = located.unwrap().expect("located by symbols");
        assert_eq!(located.functions.len(), 4, "{located:?}");
        assert!(located.functions[2].evidence.contains(".symtab"));
        assert!(read < 128 << 10, "{read}");
        assert_eq!(agree("static", &bytes).unwrap(), located);
        // No symbols at all: not located here (the caller reads the file), and refused whole.
        let bytes = with_symbols(code, &[], &[]);
        let (located, _) = sparse("none", &bytes);
        assert_eq!(located.unwrap(), None);
        assert!(agree("none", &bytes).is_err());
        // Only the static table names them.
        let bytes = with_symbols(code, &[], &SSL);
        let (located, _) = sparse("only-static", &bytes);
        assert_eq!(located.unwrap().unwrap().functions.len(), 4);
    }

    #[test]
    fn a_cache_entry_made_from_a_sparse_read_verifies_against_the_file() {
        let bytes = with_symbols(1 << 20, &SSL, &[]);
        let (dir, path) = scratch("cached", &bytes);
        let cache = Cache::new(dir.join("cache"));
        let first = locate_file(&path, Some(&cache)).unwrap();
        assert_eq!(first.method, Method::Symbols);
        let second = locate_file(&path, Some(&cache)).unwrap();
        assert_eq!(second.method, Method::Cache);
        assert_eq!(second.functions, first.functions);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    #[test]
    fn hostile_section_headers_are_refused_or_read_whole_never_trusted() {
        let good = with_symbols(256 << 10, &SSL, &["x"]);
        let len = good.len() as u64;
        let shoff = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
        let section = |i: usize, field: usize| shoff + 64 * i + field;
        let (sh_type, sh_offset, sh_size, sh_link) = (4, 24, 32, 40);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut case = |name, edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.clone();
            edit(&mut bytes);
            cases.push((name, bytes));
        };
        case("shoff-past-end", &|b| {
            put(b, 40, &(len + 4096).to_le_bytes())
        });
        case("shoff-max", &|b| put(b, 40, &u64::MAX.to_le_bytes()));
        case("table-runs-past-end", &|b| {
            put(b, 60, &0xffffu16.to_le_bytes())
        });
        case("shentsize-wrong", &|b| put(b, 58, &32u16.to_le_bytes()));
        case("extended-count-huge", &|b| {
            put(b, 60, &0u16.to_le_bytes());
            put(b, section(0, sh_size), &u64::MAX.to_le_bytes());
        });
        case("extended-count-whole-file", &|b| {
            put(b, 60, &0u16.to_le_bytes());
            put(b, section(0, sh_size), &(len / 64).to_le_bytes());
        });
        case("dynsym-past-end", &|b| {
            put(b, section(3, sh_offset), &(len + 1).to_le_bytes())
        });
        case("dynsym-size-max", &|b| {
            put(b, section(3, sh_size), &u64::MAX.to_le_bytes())
        });
        case("dynsym-whole-file", &|b| {
            put(b, section(3, sh_offset), &0u64.to_le_bytes());
            put(b, section(3, sh_size), &(len / 24 * 24).to_le_bytes());
        });
        case("dynstr-overlaps-table", &|b| {
            put(b, section(2, sh_offset), &(shoff as u64).to_le_bytes())
        });
        case("dynsym-links-itself", &|b| {
            put(b, section(3, sh_link), &3u32.to_le_bytes())
        });
        case("dynsym-links-nowhere", &|b| {
            put(b, section(3, sh_link), &u32::MAX.to_le_bytes())
        });
        case("strings-not-strtab", &|b| {
            put(b, section(2, sh_type), &1u32.to_le_bytes())
        });
        case("two-dynsyms", &|b| {
            put(b, section(5, sh_type), &11u32.to_le_bytes())
        });
        case("every-section-a-shndx", &|b| {
            // 1 + 6 sections then as many SHT_SYMTAB_SHNDX headers as fit before the end,
            // each linked to .dynsym and covering a different part of the code.
            let count = 200usize;
            b.truncate(shoff + 7 * 64);
            for i in 0..count {
                let mut sh = [0u8; 64];
                sh[4..8].copy_from_slice(&18u32.to_le_bytes());
                sh[24..32].copy_from_slice(&(4096 + 1024 * i as u64).to_le_bytes());
                sh[32..40].copy_from_slice(&512u64.to_le_bytes());
                sh[40..44].copy_from_slice(&3u32.to_le_bytes());
                b.extend_from_slice(&sh);
            }
            put(b, 60, &((7 + count) as u16).to_le_bytes());
            let len = b.len() as u64;
            put(b, 64 + 32, &len.to_le_bytes());
            put(b, 64 + 40, &len.to_le_bytes());
        });
        for (name, bytes) in &cases {
            // Whatever the headers say, a locate reads each byte at most once, answers as the
            // whole file in memory does, and does not panic.
            let (sparse, _) = sparse(name, bytes);
            let whole = agree(name, bytes);
            // Only the first of two tables is taken, as over the whole file; every other case
            // is not located from the symbol tables alone (the file is read whole).
            assert_eq!(
                matches!(sparse, Ok(Some(_))),
                *name == "two-dynsyms",
                "{name}: {sparse:?}"
            );
            // Past the range cap, the whole file is read, and its symbols name the functions.
            if *name == "every-section-a-shndx" {
                assert!(whole.is_ok(), "{whole:?}");
            }
            if let Ok(Some(located)) = sparse {
                assert_eq!(Ok(located), whole, "{name}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        #[test]
        fn a_mutated_symbol_file_reads_as_the_whole_file(
            writes in proptest::collection::vec((0usize..512, proptest::prelude::any::<u8>()), 1..12),
            in_head in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = with_symbols(80 << 10, &SSL, &["x"]);
            let tail = bytes.len() - 512;
            for (at, value) in writes {
                // The ELF header, or the section table and the tables before it.
                let i = if in_head { at % 64 } else { tail + at };
                bytes[i] = value;
            }
            let (sparse, _) = sparse("mutated", &bytes);
            let whole = agree("mutated", &bytes);
            if let Ok(Some(located)) = sparse {
                proptest::prop_assert_eq!(Ok(located), whole);
            }
        }
    }

    #[test]
    fn read_ranges_are_merged_and_never_read_twice() {
        let mut filled = Vec::new();
        for (start, end) in [(10, 20), (30, 40), (20, 30), (50, 60), (0, 5)] {
            filled = with_range(&filled, start, end);
        }
        assert_eq!(filled, vec![(0, 5), (10, 40), (50, 60)]);
        assert_eq!(gaps(&filled, 0, 70), vec![(5, 10), (40, 50), (60, 70)]);
        assert_eq!(gaps(&filled, 12, 38), vec![]);
        assert_eq!(with_range(&filled, 3, 55), vec![(0, 60)]);
        // A file read twice over is read once.
        let (dir, path) = scratch("once", &[7u8; 10_000]);
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut reader = Reader::new(&file, &meta, &path, u64::MAX).unwrap();
        reader.fill(100, 200).unwrap();
        reader.fill(0, u64::MAX).unwrap();
        reader.fill(u64::MAX, u64::MAX).unwrap();
        assert_eq!(reader.read_bytes, 10_000);
        assert!(reader.data.iter().all(|&b| b == 7));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
