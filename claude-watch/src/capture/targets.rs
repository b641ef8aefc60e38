//! What to attach to: a binary or shared library by path (every process that maps it), or
//! the TLS-carrying files a given process maps (that process only).
//!
//! Each file is opened once: located from that descriptor, checked against the device and
//! inode `/proc` (or discovery) named, and attached through `/proc/self/fd/N` of the same
//! descriptor, so a path swapped meanwhile (a re-exec, a rename over a library) cannot get
//! probes placed at offsets computed for one file into another. [`super::Probes::attach`]
//! checks the `/proc` link again after attaching and undoes it when it moved.

use std::fs::{self, File};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::CaptureError;
use crate::instance::proc;
use crate::locate::{self, Arch, Cache, FunctionName, LocateError, Locator};
use crate::untrusted::{self, Resolve, UntrustedError};

/// One function in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    /// Which function.
    pub function: FunctionName,
    /// Its entry as an offset in the file (what uprobes take).
    pub file_offset: u64,
}

pub use claude_watch_core::instance::FileId;

/// The identity in `meta`.
#[must_use]
pub fn file_id(meta: &fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// A file opened once, read-only and close-on-exec: what is located and attached.
#[derive(Clone, Debug)]
pub struct OpenedFile {
    file: Arc<File>,
    /// Its identity when opened.
    pub id: FileId,
}

impl PartialEq for OpenedFile {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for OpenedFile {}

impl OpenedFile {
    /// Opens the regular file `path` through the door ([`untrusted::open`]), resolved as
    /// `resolve` says (a `/proc` magic link, a path in a process's root, an operator's path
    /// not followed through a link as its last component).
    ///
    /// # Errors
    /// As [`untrusted::open`].
    pub fn open(path: &Path, resolve: Resolve<'_>) -> Result<Self, UntrustedError> {
        let (file, meta) = untrusted::open(path, resolve)?.into_parts();
        Ok(Self {
            file: Arc::new(file),
            id: file_id(&meta),
        })
    }

    /// The open file.
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `/proc/self/fd/N` of the descriptor: a path the kernel resolves to this very inode,
    /// whatever the original path points to now (what the uprobe attach is given).
    #[must_use]
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A file to attach to, in a scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The file as it was named (for people): a path, `/proc/<pid>/exe`, or the mapped file
    /// through `/proc/<pid>/root`.
    pub path: PathBuf,
    /// The descriptor it was located from and is attached through.
    pub file: OpenedFile,
    /// A `/proc` link that must still lead to [`Self::file`]'s inode right after the attach
    /// (the process's executable or mapping); when it does not, the attach is undone.
    pub recheck: Option<PathBuf>,
    /// Only this process, or every process mapping the file when `None`.
    pub pid: Option<u32>,
    /// The functions found in it.
    pub points: Vec<AttachPoint>,
    /// How they were found (for the operator).
    pub how: String,
}

/// Finds the TLS functions of a file by path (an operator's; a symbolic link is resolved once,
/// then the result opened without following links); every process mapping it will be covered.
pub fn binary(path: &Path) -> Result<Target, CaptureError> {
    let unreadable = |source| CaptureError::TargetUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let real = fs::canonicalize(path).map_err(unreadable)?;
    let file = OpenedFile::open(&real, Resolve::NoFollow)?;
    let (points, how) = find_points(&file, path)?;
    Ok(Target {
        path: path.to_path_buf(),
        file,
        recheck: None,
        pid: None,
        points,
        how,
    })
}

/// Finds the TLS functions of process `pid`'s executable through `/proc/<pid>/exe`, which
/// must be the file discovery recognised (`expected`); every process running that file will
/// be covered.
pub fn executable(pid: u32, expected: Option<FileId>) -> Result<Target, CaptureError> {
    let path = PathBuf::from(format!("/proc/{pid}/exe"));
    let file = OpenedFile::open(&path, Resolve::Proc)?;
    check_identity(&path, expected, file.id)?;
    let (points, how) = find_points(&file, &path)?;
    Ok(Target {
        recheck: Some(path.clone()),
        path,
        file,
        pid: None,
        points,
        how,
    })
}

/// Refuses `found` unless it is `expected` ([`CaptureError::Replaced`]); with no expectation
/// (discovery could not open the file) nothing is known to attach to.
fn check_identity(
    path: &Path,
    expected: Option<FileId>,
    found: FileId,
) -> Result<(), CaptureError> {
    match expected {
        Some(expected) if expected == found => Ok(()),
        expected => Err(CaptureError::Replaced {
            path: path.to_path_buf(),
            expected: expected
                .map_or_else(|| "(not identified at discovery)".into(), |e| e.to_string()),
            found: found.to_string(),
        }),
    }
}

/// Executable files of one process looked at for TLS functions at most (a node maps a few
/// dozen; the TLS library is among the first), in the order `/proc/<pid>/maps` lists them.
pub const MAX_FILES_PER_PROCESS: usize = 64;
/// How long looking at one process's files may take, for all of them together (each file has
/// the locator's own budget too): a process mapping many files built to be slow to locate
/// costs one budget, not one per file.
pub const PROCESS_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Finds the TLS-carrying files mapped by process `pid` (its executable and the libraries it
/// loaded; at most [`MAX_FILES_PER_PROCESS`] of them, for at most [`PROCESS_BUDGET`]). Each is opened through `/proc/<pid>/map_files/<range>` (the very file mapped), or
/// where that is unavailable through `/proc/<pid>/root<path>` without following a link, and
/// must have the inode `/proc/<pid>/maps` gives for it.
pub fn process(pid: u32) -> Result<Vec<Target>, CaptureError> {
    let maps = proc::maps(pid).map_err(|_| CaptureError::NoSuchProcess { pid })?;
    let mut targets: Vec<Target> = Vec::new();
    let started = std::time::Instant::now();
    let mappings = executable_mappings(&maps);
    let over = mappings.len().saturating_sub(MAX_FILES_PER_PROCESS);
    if over > 0 {
        tracing::warn!(
            pid,
            files = mappings.len(),
            looked_at = MAX_FILES_PER_PROCESS,
            "a process maps more executable files than are looked at for TLS functions"
        );
    }
    for (n, mapping) in mappings.into_iter().take(MAX_FILES_PER_PROCESS).enumerate() {
        if started.elapsed() > PROCESS_BUDGET {
            tracing::warn!(
                pid,
                looked_at = n,
                budget_s = PROCESS_BUDGET.as_secs(),
                "looking at a process's files took longer than its budget: the rest are not looked at"
            );
            break;
        }
        let shown = PathBuf::from(format!("/proc/{pid}/root{}", mapping.path));
        if targets.iter().any(|t| t.path == shown) {
            continue;
        }
        // A file that cannot be opened, or has no TLS functions, is passed over.
        if let Ok((file, recheck)) = mapped_file(pid, &mapping, &shown)
            && let Ok((points, how)) = find_points(&file, &shown)
        {
            targets.push(Target {
                path: shown,
                file,
                recheck: Some(recheck),
                pid: Some(pid),
                points,
                how,
            });
        }
    }
    if targets.is_empty() {
        return Err(CaptureError::NoTlsFunctions {
            path: format!("process {pid}"),
            reason: "none of its mapped files has SSL_write/SSL_read (is it a TLS client, and has it loaded its TLS library yet?)".into(),
        });
    }
    Ok(targets)
}

/// Opens the file of `mapping` in process `pid`; returns it and the `/proc` link to check
/// again after attaching.
fn mapped_file(
    pid: u32,
    mapping: &Mapping<'_>,
    shown: &Path,
) -> Result<(OpenedFile, PathBuf), CaptureError> {
    let link = PathBuf::from(format!("/proc/{pid}/map_files/{}", mapping.range));
    let (file, recheck) = match OpenedFile::open(&link, Resolve::Proc) {
        Ok(file) => (file, link),
        // A mapping of something that is not a regular file is never opened otherwise.
        Err(e @ UntrustedError::NotRegular { .. }) => return Err(e.into()),
        Err(_) => {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            let file = OpenedFile::open(Path::new(mapping.path), Resolve::InRoot(&root))?;
            (file, shown.to_path_buf())
        }
    };
    if !mapping.is(file.id, on_overlay(file.file())) {
        return Err(CaptureError::Replaced {
            path: shown.to_path_buf(),
            expected: FileId {
                dev: mapping.dev,
                ino: mapping.ino,
            }
            .to_string(),
            found: file.id.to_string(),
        });
    }
    Ok((file, recheck))
}

/// Whether `file` lives on overlayfs, whose `stat` device differs from the one `/proc/<pid>/
/// maps` shows (the layer's) for the same file.
fn on_overlay(file: &File) -> bool {
    const OVERLAYFS_SUPER_MAGIC: libc::__fsword_t = 0x794c_7630;
    // SAFETY: fstatfs on an fd we own with a zeroed out-buffer.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), &raw mut stat) } == 0;
    ok && stat.f_type == OVERLAYFS_SUPER_MAGIC
}

/// One file-backed executable mapping of `/proc/<pid>/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping<'a> {
    /// `start-end` in hex, as `/proc/<pid>/map_files` names it.
    pub range: &'a str,
    /// Device (from `major:minor`).
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// The mapped file's path (in the process's mount namespace).
    pub path: &'a str,
}

impl Mapping<'_> {
    /// Whether an opened file with identity `id` is this mapping's file. On overlayfs only the
    /// inode is compared (the device `stat` shows is the overlay's, not the layer's).
    #[must_use]
    pub fn is(&self, id: FileId, overlay: bool) -> bool {
        id.ino == self.ino && (overlay || id.dev == self.dev)
    }
}

/// File-backed executable mappings in `/proc/<pid>/maps` content, each path once, skipping the
/// vdso and other pseudo files and deleted files.
#[must_use]
pub fn executable_mappings(maps: &str) -> Vec<Mapping<'_>> {
    let mut out: Vec<Mapping<'_>> = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        let [range, perms, _, dev, ino, path] = fields[..] else {
            continue;
        };
        let path = path.trim_start();
        let executable = perms.as_bytes().get(2) == Some(&b'x');
        if !executable || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let dev = dev
            .split_once(':')
            .map(|(major, minor)| (hex(major), hex(minor)));
        let (Some((Some(major), Some(minor))), Ok(ino)) = (dev, ino.parse::<u64>()) else {
            continue;
        };
        if !out.iter().any(|m| m.path == path) {
            out.push(Mapping {
                range,
                dev: libc::makedev(major, minor),
                ino,
                path,
            });
        }
    }
    out
}

/// The TLS functions of an opened file, from the locator (symbols, or BoringSSL's own code),
/// with the on-disk cache when one is configured. `path` names the file in errors.
fn find_points(file: &OpenedFile, path: &Path) -> Result<(Vec<AttachPoint>, String), CaptureError> {
    let located = locator().locate(file.file(), path).map_err(|e| match e {
        LocateError::Io { source, .. } => CaptureError::TargetUnreadable {
            path: path.to_path_buf(),
            source,
        },
        other => CaptureError::NotLocated(other),
    })?;
    if Arch::HOST != Some(located.arch) {
        // E.g. an arm64 claude run by qemu-user on an x86-64 host: its code is translated, so
        // uprobes at its file offsets would never fire.
        return Err(CaptureError::NoTlsFunctions {
            path: path.display().to_string(),
            reason: format!(
                "{} binary on this {} host (run under emulation?): probes at its offsets would never fire; not attaching",
                located.arch,
                Arch::HOST.map_or_else(|| std::env::consts::ARCH.to_owned(), |a| a.to_string())
            ),
        });
    }
    let points = located
        .functions
        .iter()
        .map(|f| AttachPoint {
            function: f.name,
            file_offset: f.file_offset,
        })
        .collect();
    Ok((
        points,
        format!("{} via {}", located.library, located.method),
    ))
}

static LOCATOR: OnceLock<Locator> = OnceLock::new();

/// Uses `dir` to cache located offsets by build id (set once, before the first attach).
pub fn set_locate_cache(dir: PathBuf) {
    let _ = LOCATOR.set(Locator::new(
        Some(Cache::new(dir)),
        locate::Limits::default(),
    ));
}

/// The process's locator (one file at a time, refusals remembered).
pub fn locator() -> &'static Locator {
    LOCATOR.get_or_init(|| Locator::new(None, locate::Limits::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_mappings_of_a_maps_file() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/curl
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/curl
7f0000000000-7f0000001000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000002000-7f0000003000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000004000-7f0000005000 r-xp 00000000 00:00 0 
7f0000006000-7f0000007000 r-xp 00000000 fe:01 789 /tmp/old binary (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";
        let found = executable_mappings(maps);
        let paths: Vec<&str> = found.iter().map(|m| m.path).collect();
        assert_eq!(
            paths,
            vec!["/usr/bin/curl", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]
        );
        assert_eq!(found[0].range, "55d0c0a01000-55d0c0a02000");
        assert_eq!(found[0].dev, libc::makedev(0xfe, 1));
        assert_eq!(found[1].ino, 456);
        let same = FileId {
            dev: libc::makedev(0xfe, 1),
            ino: 456,
        };
        assert!(found[1].is(same, false));
        let other_dev = FileId { dev: 7, ino: 456 };
        assert!(!found[1].is(other_dev, false));
        assert!(found[1].is(other_dev, true), "overlayfs: inode only");
        assert!(!found[1].is(FileId { dev: 7, ino: 457 }, true));
    }

    #[test]
    fn identity_must_be_what_discovery_saw() {
        let a = FileId { dev: 1, ino: 2 };
        let path = Path::new("/proc/1/exe");
        assert!(check_identity(path, Some(a), a).is_ok());
        let err = check_identity(path, Some(a), FileId { dev: 1, ino: 3 }).unwrap_err();
        assert!(matches!(err, CaptureError::Replaced { .. }), "{err}");
        assert!(check_identity(path, None, a).is_err());
    }

    #[test]
    fn the_fd_path_names_the_opened_inode_after_the_path_moves() {
        // Open a file, replace its path by another file: /proc/self/fd/N still resolves to the
        // inode that was opened (what the uprobe attach is given), not to the new file.
        let dir = std::env::temp_dir().join(format!("cw-targets-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lib.so");
        fs::write(&path, b"first").unwrap();
        let opened = OpenedFile::open(&path, Resolve::NoFollow).unwrap();
        fs::write(dir.join("other"), b"second").unwrap();
        fs::rename(dir.join("other"), &path).unwrap();
        let now = file_id(&fs::metadata(&path).unwrap());
        assert_ne!(now, opened.id);
        let via_fd = file_id(&fs::metadata(opened.fd_path()).unwrap());
        assert_eq!(via_fd, opened.id);
        assert_eq!(fs::read(opened.fd_path()).unwrap(), b"first");
        // A symbolic link as the last component is not followed.
        std::os::unix::fs::symlink(&path, dir.join("link")).unwrap();
        let err = OpenedFile::open(&dir.join("link"), Resolve::NoFollow).unwrap_err();
        assert!(
            matches!(
                err,
                UntrustedError::NotRegular {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
