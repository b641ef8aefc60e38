//! On-disk cache of locate results, one JSON file per (GNU build id, content digest).
//!
//! The files located come from any user, and a build id is just bytes in a note anyone can
//! copy, so an entry is trusted only for a file whose bytes at the located functions are the
//! ones the entry was made from: each entry holds a SHA-256 digest over the file's size, its
//! architecture and [`DIGEST_SPAN`] bytes at every located function's file offset, and is used
//! only when the digest over the file being located is the same. Entries are named by build id
//! *and* digest, so a result for one file never replaces one for another (a forged file with a
//! real build id gets its own entry, which matches only itself). At most
//! [`ENTRIES_PER_BUILD_ID`] entries per build id and [`ENTRIES_MAX`] in all are kept; beyond,
//! the least recently used one (of the build id, or of all) makes room: an entry's mtime is
//! set each time it answers, so forged entries nobody runs go first, and a flood of them
//! cannot keep a genuine build out of the cache (it comes back the next time it is located).
//! Each user other than root has a share: an entry located from a file they own is named with
//! their uid (`<build id>.<digest>.u<uid>.json`), they hold at most one entry per build id and
//! [`ENTRIES_PER_USER`] in all (their own least recently used one makes room), and when a build
//! id or the cache is full, users' entries go before root's. So no user can push out the
//! entries of root's files, and a user's flood of forged files costs only their own entries.
//!
//! The directory is the daemon's own: created with mode 0700, refused when another user owns it,
//! repaired (chmod 0700) when group or others may access it. Entries are opened relative to the
//! checked directory, without following symbolic links, and only regular files of the daemon's
//! user of at most [`ENTRY_MAX_BYTES`] are read. Entries of an older format are ignored.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::elf::{Arch, ElfImage};
use super::{Located, Method};

/// The daemon's default cache directory.
pub const DEFAULT_DIR: &str = "/var/cache/claude-watch/locate";
/// Bumped when the entry format or the locating method changes meaning (2: `arch`, arm64;
/// 3: SHA-256 digest, entries named by digest).
const FORMAT_VERSION: u32 = 3;
/// Bytes digested at each located function: as far as an error site may lie from its
/// function's start, so the code the locator read as evidence is covered.
pub const DIGEST_SPAN: u64 = 64 * 1024;
/// Largest entry file read.
pub const ENTRY_MAX_BYTES: u64 = 64 * 1024;
/// Entries kept per build id (distinct contents claiming it).
pub const ENTRIES_PER_BUILD_ID: usize = 4;
/// Entries kept in all.
pub const ENTRIES_MAX: usize = 256;
/// Entries kept in all for the files of one user other than root.
pub const ENTRIES_PER_USER: usize = ENTRIES_MAX / 4;

/// The owner of the file an entry was located from, from its name (root when untagged).
fn owner_of(name: &str) -> u32 {
    name.strip_suffix(".json")
        .and_then(|n| n.rsplit_once(".u"))
        .and_then(|(_, uid)| uid.parse().ok())
        .unwrap_or(0)
}

/// Why the cache directory cannot be used or an entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The result has no build id to key it by.
    #[error("the file has no GNU build id; results are not cached")]
    NoBuildId,
    /// The directory is not the daemon's own.
    #[error("locate cache {dir} refused: {reason}")]
    Insecure {
        /// The directory.
        dir: PathBuf,
        /// What is wrong (owner, type).
        reason: String,
    },
    /// Too many entries already (for this build id, or in all): not stored.
    #[error("locate cache {dir} full ({reason}); result not stored")]
    Full {
        /// The directory.
        dir: PathBuf,
        /// Which cap.
        reason: String,
    },
    /// Creating, opening or writing failed.
    #[error("cannot use locate cache entry {path}")]
    Io {
        /// The directory or entry file.
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
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    format: u32,
    build_id: String,
    file_size: u64,
    /// Lowercase hex SHA-256, see [`digest`].
    digest: String,
    located: Located,
}

/// An entry that may answer for a file, before its digest is checked ([`Candidate::verify`]).
#[derive(Debug, Clone)]
pub struct Candidate {
    entry: Entry,
    /// The entry's file name in the cache directory.
    name: String,
}

impl Candidate {
    /// The file ranges (offset, length) the digest covers: what must be read of the file to
    /// verify the entry.
    #[must_use]
    pub fn ranges(&self, file_size: u64) -> Vec<(u64, u64)> {
        ranges(file_size, &self.entry.located)
    }

    /// The entry's file name (for [`Cache::used`]).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry's result when the digest over `data` (the file, at least its [`Self::ranges`]
    /// filled in) is the entry's. The result's method is [`Method::Cache`].
    #[must_use]
    pub fn verify(self, data: &[u8], arch: Arch) -> Option<Located> {
        let entry = self.entry;
        if entry.located.arch != arch
            || entry.file_size != data.len() as u64
            || entry.digest != digest(data, &entry.located)
        {
            tracing::info!(build_id = %entry.build_id, "locate cache: entry does not match the file; ignored");
            return None;
        }
        let mut located = entry.located;
        located.method = Method::Cache;
        Some(located)
    }
}

/// A directory of cached results, keyed by GNU build id and content digest.
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

    /// Opens the directory (creating it with mode 0700 when `create`), checks it is a directory
    /// of this process's user, and repairs its mode to 0700 when group or others have access.
    ///
    /// # Errors
    /// [`CacheError::Insecure`] for a directory of another user or not a directory,
    /// [`CacheError::Io`] when it cannot be created or opened.
    pub fn open_dir(&self, create: bool) -> Result<File, CacheError> {
        let io = |source| CacheError::Io {
            path: self.dir.clone(),
            source,
        };
        if create {
            if let Some(parent) = self.dir.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(e)),
                _ => {}
            }
        }
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.dir)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR)
                {
                    CacheError::Insecure {
                        dir: self.dir.clone(),
                        reason: "not a directory (or a symbolic link)".into(),
                    }
                } else {
                    io(e)
                }
            })?;
        let meta = dir.metadata().map_err(io)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(CacheError::Insecure {
                dir: self.dir.clone(),
                reason: format!("owned by uid {}, not {me}", meta.uid()),
            });
        }
        if meta.mode() & 0o077 != 0 {
            tracing::warn!(dir = %self.dir.display(), mode = format_args!("{:o}", meta.mode() & 0o7777), "locate cache: directory open to other users; mode set to 0700");
            // SAFETY: fchmod on an fd we own.
            if unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) } != 0 {
                return Err(io(std::io::Error::last_os_error()));
            }
        }
        Ok(dir)
    }

    /// Names of the entry files in the checked directory `dir`.
    fn entry_names(dir: &File) -> Vec<String> {
        let Ok(list) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
            return Vec::new();
        };
        list.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .take(ENTRIES_MAX * 2)
            .collect()
    }

    /// The entries stored for `build_id` that may answer for a file of `arch` and `file_size`
    /// bytes; each must still be verified against the file's bytes.
    #[must_use]
    pub fn candidates(&self, build_id: &str, arch: Arch, file_size: u64) -> Vec<Candidate> {
        if !valid_build_id(build_id) {
            return Vec::new();
        }
        let dir = match self.open_dir(false) {
            Ok(dir) => dir,
            Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Vec::new();
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "locate cache: not used");
                return Vec::new();
            }
        };
        let prefix = format!("{build_id}.");
        let mut out = Vec::new();
        for name in Self::entry_names(&dir) {
            if !name.starts_with(&prefix) {
                continue;
            }
            let Some(text) = read_entry(&dir, &name) else {
                continue;
            };
            if serde_json::from_slice::<Format>(&text).is_ok_and(|f| f.format != FORMAT_VERSION) {
                tracing::info!(
                    entry = name,
                    "locate cache: entry of another format; ignored"
                );
                continue;
            }
            match serde_json::from_slice::<Entry>(&text) {
                Ok(entry)
                    if entry.format == FORMAT_VERSION
                        && entry.build_id == build_id
                        && entry.located.arch == arch
                        && entry.file_size == file_size =>
                {
                    out.push(Candidate { entry, name });
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(entry = name, %error, "locate cache: unreadable entry ignored");
                }
            }
        }
        out
    }

    /// The cached result for `image`, if an entry for its build id has the digest of its bytes.
    /// The result's method is [`Method::Cache`].
    #[must_use]
    pub fn lookup(&self, build_id: &str, image: &ElfImage<'_>) -> Option<Located> {
        self.candidates(build_id, image.arch, image.data.len() as u64)
            .into_iter()
            .find_map(|c| {
                let name = c.name.clone();
                let hit = c.verify(image.data, image.arch)?;
                self.used(&name);
                Some(hit)
            })
    }

    /// Marks entry `name` used now (its mtime): the least recently used entries make room
    /// first.
    pub fn used(&self, name: &str) {
        let Ok(dir) = self.open_dir(false) else {
            return;
        };
        let Ok(c_name) = cstring(name) else {
            return;
        };
        // SAFETY: valid fd and NUL-terminated name; a null `times` means now.
        let rc = unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                c_name.as_ptr(),
                std::ptr::null(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            tracing::debug!(entry = name, error = %std::io::Error::last_os_error(), "locate cache: cannot mark an entry used");
        }
    }

    /// Removes the least recently used of `names` (by mtime) to make room; returns it.
    fn evict_oldest<'a>(dir: &File, names: impl Iterator<Item = &'a String>) -> Option<String> {
        let oldest = names
            .filter_map(|n| {
                let c_name = cstring(n).ok()?;
                // SAFETY: stat is plain data, filled by the kernel.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: valid fd, NUL-terminated name, a stat of the right type.
                let rc = unsafe {
                    libc::fstatat(
                        dir.as_raw_fd(),
                        c_name.as_ptr(),
                        &raw mut st,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                (rc == 0).then_some(((st.st_mtime, st.st_mtime_nsec), n))
            })
            .min()?
            .1
            .clone();
        unlinkat(dir, &oldest).ok()?;
        Some(oldest)
    }

    /// Stores `located` for `image` (atomically: a new file then a rename), under its build id,
    /// digest and `owner` (the uid owning the located file), making room as the module says.
    ///
    /// # Errors
    /// [`CacheError`] when the file has no build id, the directory is refused, the cache is
    /// full or the entry cannot be written.
    pub fn store(
        &self,
        image: &ElfImage<'_>,
        located: &Located,
        owner: u32,
    ) -> Result<(), CacheError> {
        let build_id = image
            .build_id
            .as_deref()
            .filter(|id| valid_build_id(id))
            .ok_or(CacheError::NoBuildId)?;
        let digest = digest(image.data, located);
        let name = if owner == 0 {
            format!("{build_id}.{}.json", &digest[..16])
        } else {
            format!("{build_id}.{}.u{owner}.json", &digest[..16])
        };
        let dir = self.open_dir(true)?;
        let names = Self::entry_names(&dir);
        if !names.contains(&name) {
            let prefix = format!("{build_id}.");
            let of_build = |n: &&String| n.starts_with(&prefix);
            let mine = |n: &&String| owner != 0 && owner_of(n) == owner;
            let users_first = |pick: &dyn Fn(&&String) -> bool| -> Vec<&String> {
                let users: Vec<&String> = names
                    .iter()
                    .filter(|n| pick(n) && owner_of(n) != 0)
                    .collect();
                if users.is_empty() {
                    names.iter().filter(|n| pick(n)).collect()
                } else {
                    users
                }
            };
            let same = names.iter().filter(of_build).count();
            let full = |reason: String| CacheError::Full {
                dir: self.dir.clone(),
                reason,
            };
            let (victims, why): (Vec<&String>, &str) =
                if names.iter().filter(mine).count() >= ENTRIES_PER_USER {
                    (
                        names.iter().filter(mine).collect(),
                        "the user's share is full",
                    )
                } else if names.iter().filter(of_build).any(|n| mine(&n)) {
                    (
                        names.iter().filter(|n| of_build(n) && mine(n)).collect(),
                        "one entry per build id for a user",
                    )
                } else if same >= ENTRIES_PER_BUILD_ID {
                    (users_first(&of_build), "the build id is full")
                } else if names.len() >= ENTRIES_MAX {
                    (users_first(&|_| true), "the cache is full")
                } else {
                    (Vec::new(), "")
                };
            if !victims.is_empty() {
                let evicted = Self::evict_oldest(&dir, victims.into_iter()).ok_or_else(|| {
                    full(format!(
                        "{why}: {same} entries for build id {build_id}, {} in all",
                        names.len()
                    ))
                })?;
                tracing::info!(
                    evicted,
                    build_id,
                    owner,
                    why,
                    "locate cache: the least recently used entry makes room"
                );
            }
        }
        let entry = Entry {
            format: FORMAT_VERSION,
            build_id: build_id.to_owned(),
            file_size: image.data.len() as u64,
            digest,
            located: located.clone(),
        };
        let path = self.dir.join(&name);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(&entry).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let result = (|| {
            let mut file = openat(
                &dir,
                &tmp,
                libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_NOCTTY
                    | libc::O_CLOEXEC,
                0o600,
            )?;
            file.write_all(&text)?;
            file.sync_all()?;
            renameat(&dir, &tmp, &name)
        })();
        if result.is_err() {
            let _ = unlinkat(&dir, &tmp);
        }
        result.map_err(io)
    }
}

/// Whether `id` is plain hex of a sane length (it becomes part of a file name).
fn valid_build_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The entry `name` in `dir`: a regular file of this process's user, not a symbolic link, of
/// at most [`ENTRY_MAX_BYTES`].
fn read_entry(dir: &File, name: &str) -> Option<Vec<u8>> {
    let file = match openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        0,
    ) {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(entry = name, %error, "locate cache: entry refused (a symbolic link?)");
            return None;
        }
    };
    let meta = file.metadata().ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != me || meta.len() > ENTRY_MAX_BYTES {
        tracing::warn!(
            entry = name,
            uid = meta.uid(),
            size = meta.len(),
            "locate cache: entry refused (not a regular file of ours, or too large)"
        );
        return None;
    }
    let mut text = Vec::new();
    file.take(ENTRY_MAX_BYTES).read_to_end(&mut text).ok()?;
    Some(text)
}

fn cstring(name: &str) -> std::io::Result<CString> {
    CString::new(Path::new(name).as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// `openat(2)` relative to `dir`.
fn openat(dir: &File, name: &str, flags: i32, mode: libc::mode_t) -> std::io::Result<File> {
    let name = cstring(name)?;
    // SAFETY: valid fd and NUL-terminated path; the returned fd is owned by the File.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by no one else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `renameat(2)` within `dir`.
fn renameat(dir: &File, from: &str, to: &str) -> std::io::Result<()> {
    let (from, to) = (cstring(from)?, cstring(to)?);
    // SAFETY: valid fd and NUL-terminated paths.
    if unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `unlinkat(2)` within `dir`.
fn unlinkat(dir: &File, name: &str) -> std::io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: valid fd and NUL-terminated path.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The file ranges (offset, length) [`digest`] covers for a file of `file_size` bytes:
/// [`DIGEST_SPAN`] bytes at each located function, cut at the end of the file.
#[must_use]
pub fn ranges(file_size: u64, located: &Located) -> Vec<(u64, u64)> {
    located
        .functions
        .iter()
        .map(|f| {
            let start = f.file_offset.min(file_size);
            (start, DIGEST_SPAN.min(file_size - start))
        })
        .collect()
}

/// Lowercase hex SHA-256 over the format version, the architecture, the file size, and each
/// located function's file offset and the [`ranges`] of `data` at it.
#[must_use]
pub fn digest(data: &[u8], located: &Located) -> String {
    let mut hash = Sha256::new();
    hash.update(FORMAT_VERSION.to_le_bytes());
    hash.update(located.arch.to_string().as_bytes());
    hash.update((data.len() as u64).to_le_bytes());
    for (function, (start, len)) in located
        .functions
        .iter()
        .zip(ranges(data.len() as u64, located))
    {
        hash.update(function.file_offset.to_le_bytes());
        let (start, len) = (start as usize, len as usize);
        hash.update(&data[start..start + len]);
    }
    // Lowercase hex, two digits a byte (the digest's own `LowerHex`).
    format!("{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locate::elf::Segment;
    use crate::locate::{Function, FunctionName, TlsLibrary};
    use std::os::unix::fs::PermissionsExt as _;

    const BUILD_ID: &str = "00112233445566778899aabbccddeeff00112233";

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("claude-watch-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn image(data: &[u8]) -> ElfImage<'_> {
        ElfImage {
            data,
            arch: Arch::X86_64,
            segments: vec![Segment {
                vaddr: 0x40_0000,
                offset: 0,
                file_size: data.len() as u64,
                executable: true,
                writable: false,
            }],
            build_id: Some(BUILD_ID.into()),
            pie: false,
            needed: Vec::new(),
        }
    }

    fn located(write: u64, read: u64) -> Located {
        let function = |name, at: u64| Function {
            name,
            vaddr: 0x40_0000 + at,
            file_offset: at,
            evidence: "test".into(),
        };
        Located {
            build_id: Some(BUILD_ID.into()),
            arch: Arch::X86_64,
            library: TlsLibrary::BoringSsl,
            method: Method::Disassembly,
            functions: vec![
                function(FunctionName::SslWrite, write),
                function(FunctionName::SslRead, read),
            ],
        }
    }

    fn genuine() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn an_entry_answers_only_for_the_same_bytes() {
        let dir = scratch("same");
        let cache = Cache::new(dir.join("c"));
        let data = genuine();
        let real = located(0x1000, 0x20000);
        cache.store(&image(&data), &real, 0).expect("store");
        let hit = cache.lookup(BUILD_ID, &image(&data)).expect("hit");
        assert_eq!(hit.method, Method::Cache);
        assert_eq!(hit.functions, real.functions);

        // Same build id and size; a byte changed near the end of SSL_read's digested span:
        // the FNV fingerprint of old compared 4 KiB; now 64 KiB under SHA-256.
        let mut forged = data.clone();
        forged[0x20000 + 60_000] ^= 1;
        assert!(cache.lookup(BUILD_ID, &image(&forged)).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_forged_file_never_replaces_the_genuine_entry() {
        let dir = scratch("forged");
        let cache = Cache::new(dir.join("c"));
        let data = genuine();
        let real = located(0x1000, 0x20000);
        cache.store(&image(&data), &real, 0).expect("store genuine");
        // A forged file: same build id, same size, other offsets (as if its own code said so).
        let mut forged = data.clone();
        forged[0x3000] ^= 0x55;
        let fake = located(0x3000, 0x30000);
        cache
            .store(&image(&forged), &fake, 0)
            .expect("store forged");
        // The genuine file still gets its own result; the forged entry answers only itself.
        let hit = cache.lookup(BUILD_ID, &image(&data)).expect("genuine hit");
        assert_eq!(hit.functions, real.functions);
        let hit = cache.lookup(BUILD_ID, &image(&forged)).expect("forged hit");
        assert_eq!(hit.functions, fake.functions);
        // A third forged file with the genuine offsets but other bytes there: no entry fits.
        let mut other = data.clone();
        other[0x1000 + 10] ^= 1;
        other[0x3000 + 10] ^= 1;
        assert!(cache.lookup(BUILD_ID, &image(&other)).is_none());
        // Per-build-id cap: a flood of forged contents keeps at most the cap, and the least
        // recently used entries go first.
        for i in 0..3 * ENTRIES_PER_BUILD_ID {
            let mut f = data.clone();
            f[0x5000 + i] ^= 0xAA;
            let _ = cache.store(&image(&f), &located(0x5000, 0x6000), 0);
            // The genuine build keeps being run (and answered from the cache) meanwhile.
            assert!(cache.lookup(BUILD_ID, &image(&data)).is_some(), "flood {i}");
        }
        let count = std::fs::read_dir(dir.join("c")).unwrap().count();
        assert_eq!(count, ENTRIES_PER_BUILD_ID);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn forged_entries_stored_first_do_not_keep_the_genuine_build_out() {
        let dir = scratch("forged-first");
        let cache = Cache::new(dir.join("c"));
        let data = genuine();
        for i in 0..ENTRIES_PER_BUILD_ID {
            let mut f = data.clone();
            f[0x5000 + i] ^= 0xAA;
            cache
                .store(&image(&f), &located(0x5000, 0x6000), 0)
                .expect("a forged entry");
        }
        let real = located(0x1000, 0x20000);
        cache
            .store(&image(&data), &real, 0)
            .expect("the genuine build is stored: an unused forged entry makes room");
        let hit = cache.lookup(BUILD_ID, &image(&data)).expect("genuine hit");
        assert_eq!(hit.functions, real.functions);
        let count = std::fs::read_dir(dir.join("c")).unwrap().count();
        assert_eq!(count, ENTRIES_PER_BUILD_ID);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_users_forged_entries_never_push_out_roots_and_stay_within_their_share() {
        let dir = scratch("shares");
        let cache = Cache::new(dir.join("c"));
        let data = genuine();
        let real = located(0x1000, 0x20000);
        cache
            .store(&image(&data), &real, 0)
            .expect("root's genuine build");
        // User 1001 stores forged contents claiming the genuine build id, never run again:
        // they keep one entry of that build id, and root's (also unused since) stays.
        for i in 0..3 * ENTRIES_PER_BUILD_ID {
            let mut f = data.clone();
            f[0x5000 + i] ^= 0xAA;
            cache
                .store(&image(&f), &located(0x5000, 0x6000), 1001)
                .expect("a forged entry");
        }
        let names = Cache::entry_names(&cache.open_dir(false).unwrap());
        assert_eq!(
            names.iter().filter(|n| owner_of(n) == 1001).count(),
            1,
            "{names:?}"
        );
        let hit = cache
            .lookup(BUILD_ID, &image(&data))
            .expect("root's entry stayed");
        assert_eq!(hit.functions, real.functions);
        // Four users fill the build id: the user entries make room, never root's.
        for uid in 2001..2005 {
            let mut f = data.clone();
            f[0x7000 + uid as usize - 2001] ^= 0x55;
            cache
                .store(&image(&f), &located(0x5000, 0x6000), uid)
                .expect("another user's entry");
        }
        assert!(cache.lookup(BUILD_ID, &image(&data)).is_some());
        assert_eq!(
            Cache::entry_names(&cache.open_dir(false).unwrap()).len(),
            ENTRIES_PER_BUILD_ID
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_entrys_owner_is_read_from_its_name() {
        assert_eq!(owner_of("ab12.0011223344556677.json"), 0);
        assert_eq!(owner_of("ab12.0011223344556677.u1001.json"), 1001);
        assert_eq!(owner_of("ab12.0011223344556677.ux.json"), 0);
    }

    #[test]
    fn a_symlinked_entry_is_refused() {
        let dir = scratch("symlink");
        let cache = Cache::new(dir.join("c"));
        let data = genuine();
        let real = located(0x1000, 0x20000);
        cache.store(&image(&data), &real, 0).expect("store");
        let entry = std::fs::read_dir(dir.join("c"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let target = dir.join("elsewhere.json");
        std::fs::rename(&entry, &target).expect("move");
        std::os::unix::fs::symlink(&target, &entry).expect("symlink");
        assert!(
            cache.lookup(BUILD_ID, &image(&data)).is_none(),
            "an entry that is a symbolic link must not be read"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_world_writable_directory_is_repaired_and_a_symlinked_one_refused() {
        let dir = scratch("mode");
        let cache = Cache::new(dir.join("c"));
        let data = genuine();
        cache
            .store(&image(&data), &located(0x1000, 0x20000), 0)
            .expect("store");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("c")), 0o700, "created 0700");
        std::fs::set_permissions(dir.join("c"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(cache.lookup(BUILD_ID, &image(&data)).is_some());
        assert_eq!(mode(&dir.join("c")), 0o700, "repaired to 0700");

        // The directory replaced by a link to another one: refused.
        std::fs::rename(dir.join("c"), dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("c")).unwrap();
        assert!(matches!(
            cache.open_dir(false),
            Err(CacheError::Insecure { .. })
        ));
        assert!(cache.lookup(BUILD_ID, &image(&data)).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = scratch("owner");
        let cache = Cache::new(dir.join("c"));
        std::fs::create_dir(dir.join("c")).unwrap();
        std::os::unix::fs::chown(dir.join("c"), Some(65534), None).unwrap();
        let err = cache.open_dir(false).unwrap_err();
        assert!(matches!(err, CacheError::Insecure { .. }), "{err}");
        assert!(
            cache
                .store(&image(&genuine()), &located(0x1000, 0x20000), 0)
                .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
