//! The one door for files that another user or process chooses.
//!
//! The daemon runs as root and looks at files other users name: a process's script argument
//! (resolved where that process sees it), its executable and mapped libraries, `/proc` entries,
//! session and pid files under directories the process's environment names, transcripts in
//! users' homes. Every such open goes through here, and nowhere else (`the_door_is_the_only_
//! way_in` below keeps it so):
//!
//! 1. the path is resolved to an `O_PATH` descriptor, which runs no driver or filesystem
//!    `open`: a FIFO does not wait for a writer, a terminal does not become the daemon's
//!    controlling terminal, a device is not armed or rewound; links are followed only as the
//!    caller's [`Resolve`] allows (`openat2(2)`'s `RESOLVE_*` where a user owns the tree);
//! 2. `fstat` of that descriptor must say a regular file, else [`UntrustedError::NotRegular`]
//!    (procfs files are regular files);
//! 3. only then is that very inode opened for reading, through `/proc/self/fd/N`, with
//!    `O_NONBLOCK | O_NOCTTY | O_CLOEXEC`, and checked to be the same file;
//! 4. reads are bounded in bytes and in time ([`Limits`]); a file larger than its limit is
//!    refused unread where the whole file is wanted ([`Opened::read_all`]).
//!
//! What is left is a regular file on a filesystem that answers slowly or never (a network or
//! FUSE mount, a mapping whose page faults wait): the calls here may block on it, so callers
//! never call them on the daemon's event loop (discovery's reads run on blocking threads, see
//! `schedule::look` in the core).

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a file another user chose was not read.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedError {
    /// Resolving the path failed (gone, not permitted, a link where none is allowed: `ELOOP`,
    /// `EXDEV` for an escape from the directory it must stay in).
    #[error("opening {path}")]
    Open {
        /// The path as given.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The path names something other than a regular file; it was not opened for reading.
    #[error("{path} is a {kind}, not a regular file")]
    NotRegular {
        /// The path as given.
        path: PathBuf,
        /// What it is (`fifo`, `character device`, `symbolic link`, ...).
        kind: &'static str,
    },
    /// The file is larger than the caller reads; refused unread.
    #[error("{path} has {size} bytes, more than the {limit} read")]
    TooLarge {
        /// The path as given.
        path: PathBuf,
        /// Its size (at least this many bytes).
        size: u64,
        /// The caller's limit.
        limit: u64,
    },
    /// Reading took longer than the caller's budget.
    #[error("reading {path} took longer than {budget:?}")]
    OverTime {
        /// The path as given.
        path: PathBuf,
        /// The caller's budget.
        budget: Duration,
    },
    /// The inode opened for reading is not the one resolved (cannot happen through
    /// `/proc/self/fd`, checked anyway).
    #[error("{path} changed while it was opened")]
    Replaced {
        /// The path as given.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("reading {path}")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

impl UntrustedError {
    /// The error with its path shown from directory `dir` (the path given was relative to
    /// it).
    #[must_use]
    pub fn in_dir(mut self, dir: &Path) -> Self {
        match &mut self {
            Self::Open { path, .. }
            | Self::NotRegular { path, .. }
            | Self::TooLarge { path, .. }
            | Self::OverTime { path, .. }
            | Self::Replaced { path }
            | Self::Read { path, .. } => *path = dir.join(&*path),
        }
        self
    }

    /// Whether the file (or its process) is simply gone (what the tests check).
    #[cfg(test)]
    #[must_use]
    pub fn is_gone(&self) -> bool {
        match self {
            Self::Open { source, .. } | Self::Read { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOENT | libc::ESRCH | libc::ENOTDIR)
            ),
            _ => false,
        }
    }
}

/// How a path is resolved: which links may be followed.
#[derive(Clone, Copy, Debug)]
pub enum Resolve<'a> {
    /// A `/proc/<pid>/...` path the daemon built: every component is the kernel's, and its
    /// magic links (`exe`, `cwd`, `root`, `map_files/<range>`) lead to the file the kernel
    /// names.
    Proc,
    /// A path whose directories are trusted and whose last component a user may control: a
    /// link there is not followed (and is not a regular file).
    NoFollow,
    /// `path` relative to the trusted directory `base`: no link anywhere below `base`, no
    /// `..` above it (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`).
    Beneath(&'a Path),
    /// `path` as a process sees it, from its root directory `root` (`/proc/<pid>/root`):
    /// links are resolved inside that root and never above it, magic links are refused
    /// (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`).
    InRoot(&'a Path),
}

/// How much of a file is read, and for how long at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes read.
    pub max_bytes: u64,
    /// Most time spent reading (checked between reads of at most 64 KiB).
    pub budget: Duration,
}

impl Limits {
    /// At most `max_bytes`, within a second.
    #[must_use]
    pub const fn bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            budget: Duration::from_secs(1),
        }
    }
}

/// A regular file opened for reading through the door.
#[derive(Debug)]
pub struct Opened {
    file: File,
    meta: std::fs::Metadata,
    path: PathBuf,
}

/// What `mode` says a file is, for messages.
fn kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// `openat2(dir, path, O_PATH | O_CLOEXEC, resolve)`, or where the kernel lacks it (before
/// 5.6) an `openat` that does not follow a link as the last component.
fn openat2_path(dir: &File, path: &Path, resolve: u64) -> io::Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zeroed is a valid value before its fields are set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: the path is NUL-terminated, `how` lives across the call and its size is
        // passed; the returned descriptor is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c_path.as_ptr(),
                &raw const how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
            // SAFETY: a fresh descriptor the kernel just returned to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // RESOLVE_IN_ROOT and friends may ask to retry when a rename raced the walk.
            Some(libc::EAGAIN | libc::EINTR) => {}
            Some(libc::ENOSYS) => return openat_nofollow(dir, &c_path),
            _ => return Err(error),
        }
    }
}

/// `openat(dir, path, O_PATH | O_NOFOLLOW | O_CLOEXEC)`: the fallback of [`openat2_path`].
fn openat_nofollow(dir: &File, path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A trusted directory (followed through links: the daemon named it), as an `O_PATH`
/// descriptor to resolve below.
fn trusted_dir(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// `path` resolved as `resolve` says, to an `O_PATH` descriptor (nothing opened for I/O).
fn resolve_path(path: &Path, resolve: Resolve<'_>) -> io::Result<File> {
    let plain = |extra: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC | extra)
            .open(path)
    };
    match resolve {
        Resolve::Proc => plain(0),
        Resolve::NoFollow => plain(libc::O_NOFOLLOW),
        Resolve::Beneath(base) => {
            let dir = trusted_dir(base)?;
            openat2_path(
                &dir,
                path,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
            )
            .map(File::from)
        }
        Resolve::InRoot(root) => {
            let dir = trusted_dir(root)?;
            // Relative to the root, whether the process named it absolutely or not.
            let inside = path.strip_prefix("/").unwrap_or(path);
            openat2_path(
                &dir,
                inside,
                libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
            )
            .map(File::from)
        }
    }
}

/// What `path` is, resolved as `resolve` says, without opening it for I/O.
///
/// # Errors
/// [`UntrustedError::Open`] when it cannot be resolved.
pub fn metadata(path: &Path, resolve: Resolve<'_>) -> Result<std::fs::Metadata, UntrustedError> {
    resolve_path(path, resolve)
        .and_then(|at| at.metadata())
        .map_err(|source| UntrustedError::Open {
            path: path.to_owned(),
            source,
        })
}

/// What `stat` says of a file, as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds.
    pub mtime_ns: i128,
    /// Whether it is a regular file.
    pub regular: bool,
    /// `st_uid`: its owner.
    pub uid: u32,
}

impl Identity {
    /// The identity in `meta`.
    #[must_use]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            regular: meta.is_file(),
            uid: meta.uid(),
        }
    }
}

/// The identity of `path`, resolved as `resolve` says, without opening it for I/O and without
/// asking its filesystem (`statx` with `AT_STATX_DONT_SYNC`: a network or FUSE filesystem is
/// answered from what the kernel holds). Of a `/proc/<pid>/exe` link it is what the event loop
/// may ask: the link is the kernel's, and the file's filesystem is not called.
///
/// # Errors
/// [`UntrustedError::Open`] when it cannot be resolved.
pub fn identity(path: &Path, resolve: Resolve<'_>) -> Result<Identity, UntrustedError> {
    let open_error = |source| UntrustedError::Open {
        path: path.to_owned(),
        source,
    };
    let at = resolve_path(path, resolve).map_err(open_error)?;
    // SAFETY: statx is plain data; zeroed is valid before the kernel fills it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH on our descriptor, and a buffer
    // of the right type that lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_statx,
            at.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_BASIC_STATS,
            &raw mut stx,
        )
    };
    if rc != 0 {
        return Err(open_error(io::Error::last_os_error()));
    }
    Ok(Identity {
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        size: stx.stx_size,
        mtime_ns: i128::from(stx.stx_mtime.tv_sec) * 1_000_000_000
            + i128::from(stx.stx_mtime.tv_nsec),
        regular: u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG,
        uid: stx.stx_uid,
    })
}

/// Opens the regular file `path` for reading (see the module docs).
///
/// # Errors
/// [`UntrustedError::Open`] when it cannot be resolved or opened, [`UntrustedError::NotRegular`]
/// when it is anything but a regular file (then it was never opened for I/O),
/// [`UntrustedError::Replaced`] when the file opened is not the one resolved.
pub fn open(path: &Path, resolve: Resolve<'_>) -> Result<Opened, UntrustedError> {
    let open_error = |source| UntrustedError::Open {
        path: path.to_owned(),
        source,
    };
    let at = resolve_path(path, resolve).map_err(open_error)?;
    let resolved = at.metadata().map_err(open_error)?;
    if !resolved.file_type().is_file() {
        return Err(UntrustedError::NotRegular {
            path: path.to_owned(),
            kind: kind(resolved.file_type()),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", at.as_raw_fd()))
        .map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if (meta.dev(), meta.ino()) != (resolved.dev(), resolved.ino()) || !meta.is_file() {
        return Err(UntrustedError::Replaced {
            path: path.to_owned(),
        });
    }
    Ok(Opened {
        file,
        meta,
        path: path.to_owned(),
    })
}

/// Reads at most `limits.max_bytes` of the regular file `path` (its head: `/proc` files, whose
/// size `stat` does not say, are read this way).
///
/// # Errors
/// As [`open`] and [`Opened::read_head`].
pub fn read_head(
    path: &Path,
    resolve: Resolve<'_>,
    limits: Limits,
) -> Result<Vec<u8>, UntrustedError> {
    open(path, resolve)?.read_head(limits)
}

/// Reads the whole regular file `path`, refused unread when it is larger than
/// `limits.max_bytes`.
///
/// # Errors
/// As [`open`] and [`Opened::read_all`].
pub fn read_all(
    path: &Path,
    resolve: Resolve<'_>,
    limits: Limits,
) -> Result<Vec<u8>, UntrustedError> {
    open(path, resolve)?.read_all(limits)
}

/// Opens directory `path` (resolved as `resolve` says) and lists its entries' names, at most
/// `max_entries` of them, in no order.
///
/// # Errors
/// [`UntrustedError::Open`] when it cannot be resolved or listed,
/// [`UntrustedError::NotRegular`] (with `kind` not `directory`) when it is not a directory.
pub fn list_dir(
    path: &Path,
    resolve: Resolve<'_>,
    max_entries: usize,
) -> Result<Vec<std::ffi::OsString>, UntrustedError> {
    let open_error = |source| UntrustedError::Open {
        path: path.to_owned(),
        source,
    };
    let at = resolve_path(path, resolve).map_err(open_error)?;
    let meta = at.metadata().map_err(open_error)?;
    if !meta.is_dir() {
        return Err(UntrustedError::NotRegular {
            path: path.to_owned(),
            kind: kind(meta.file_type()),
        });
    }
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", at.as_raw_fd()))
        .map_err(open_error)?
        .filter_map(Result::ok)
        .take(max_entries)
        .map(|e| e.file_name())
        .collect();
    Ok(entries)
}

impl Opened {
    /// The open file (read-only, close-on-exec, never a controlling terminal).
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its metadata when opened (a regular file).
    #[must_use]
    pub fn metadata(&self) -> &std::fs::Metadata {
        &self.meta
    }

    /// The file and its metadata.
    #[must_use]
    pub fn into_parts(self) -> (File, std::fs::Metadata) {
        (self.file, self.meta)
    }

    /// At most `limits.max_bytes` from the start, within `limits.budget`.
    ///
    /// # Errors
    /// [`UntrustedError::Read`], [`UntrustedError::OverTime`].
    pub fn read_head(&mut self, limits: Limits) -> Result<Vec<u8>, UntrustedError> {
        const CHUNK: u64 = 64 * 1024;
        let started = Instant::now();
        let mut out = Vec::new();
        loop {
            let want = (limits.max_bytes - out.len() as u64).min(CHUNK);
            if want == 0 {
                return Ok(out);
            }
            let before = out.len();
            (&self.file)
                .take(want)
                .read_to_end(&mut out)
                .map_err(|source| UntrustedError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            if out.len() == before {
                return Ok(out);
            }
            if started.elapsed() > limits.budget {
                return Err(UntrustedError::OverTime {
                    path: self.path.clone(),
                    budget: limits.budget,
                });
            }
        }
    }

    /// The whole file: refused unread when `fstat` says it is larger than
    /// `limits.max_bytes`, and refused when more than that can be read (it grew).
    ///
    /// # Errors
    /// [`UntrustedError::TooLarge`], and as [`Self::read_head`].
    pub fn read_all(&mut self, limits: Limits) -> Result<Vec<u8>, UntrustedError> {
        let size = self.meta.len();
        if size > limits.max_bytes {
            return Err(UntrustedError::TooLarge {
                path: self.path.clone(),
                size,
                limit: limits.max_bytes,
            });
        }
        let raw = self.read_head(Limits {
            max_bytes: limits.max_bytes.saturating_add(1),
            ..limits
        })?;
        if raw.len() as u64 > limits.max_bytes {
            return Err(UntrustedError::TooLarge {
                path: self.path.clone(),
                size: raw.len() as u64,
                limit: limits.max_bytes,
            });
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use std::os::unix::fs::symlink;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn regular_files_are_read_within_their_limits() {
        let dir = Scratch::new("untrusted-regular");
        let path = dir.0.join("cli.js");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(
            read_head(&path, Resolve::NoFollow, Limits::bytes(4)).unwrap(),
            b"0123"
        );
        assert_eq!(
            read_all(&path, Resolve::NoFollow, Limits::bytes(10)).unwrap(),
            b"0123456789"
        );
        assert!(matches!(
            read_all(&path, Resolve::NoFollow, Limits::bytes(9)),
            Err(UntrustedError::TooLarge { size: 10, .. })
        ));
        // procfs files are regular files of size 0, read by their head.
        let stat = read_head(
            Path::new("/proc/self/stat"),
            Resolve::Proc,
            Limits::bytes(4096),
        )
        .unwrap();
        assert!(stat.starts_with(std::process::id().to_string().as_bytes()));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = Scratch::new("untrusted-fifo");
        let fifo = dir.0.join("cli.js");
        mkfifo(&fifo);
        let started = Instant::now();
        for resolve in [Resolve::NoFollow, Resolve::Proc, Resolve::Beneath(&dir.0)] {
            let path = match resolve {
                Resolve::Beneath(_) => PathBuf::from("cli.js"),
                _ => fifo.clone(),
            };
            let e = read_head(&path, resolve, Limits::bytes(8192)).unwrap_err();
            assert!(
                matches!(e, UntrustedError::NotRegular { kind: "fifo", .. }),
                "{e}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn devices_and_terminals_are_never_opened_for_io() {
        for dev in ["/dev/zero", "/dev/null", "/dev/ptmx", "/dev/tty"] {
            if !Path::new(dev).exists() {
                continue;
            }
            let e = read_head(Path::new(dev), Resolve::NoFollow, Limits::bytes(16)).unwrap_err();
            assert!(
                matches!(
                    e,
                    UntrustedError::NotRegular {
                        kind: "character device",
                        ..
                    }
                ),
                "{dev}: {e}"
            );
        }
        // A fresh pty slave, through a link: refused, and this process has no more terminals
        // than before.
        let (mut master, mut slave) = (0, 0);
        // SAFETY: out-parameters for two descriptors, closed below.
        let ok = unsafe {
            libc::openpty(
                &raw mut master,
                &raw mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(ok, 0);
        let name = std::fs::read_link(format!("/proc/self/fd/{slave}")).unwrap();
        let dir = Scratch::new("untrusted-pty");
        symlink(&name, dir.0.join("cli.js")).unwrap();
        let e = read_head(
            Path::new("cli.js"),
            Resolve::InRoot(Path::new("/")),
            Limits::bytes(16),
        );
        assert!(
            e.is_err(),
            "a relative path in root `/` is not the scratch dir"
        );
        let e = read_head(
            &dir.0.join("cli.js"),
            Resolve::InRoot(Path::new("/")),
            Limits::bytes(16),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                UntrustedError::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
        // SAFETY: our own descriptors.
        unsafe {
            libc::close(master);
            libc::close(slave);
        }
    }

    #[test]
    fn links_are_followed_only_where_allowed() {
        let dir = Scratch::new("untrusted-links");
        let target = dir.0.join("target.js");
        std::fs::write(&target, b"target").unwrap();
        symlink(&target, dir.0.join("last.js")).unwrap();
        std::fs::create_dir(dir.0.join("real")).unwrap();
        std::fs::write(dir.0.join("real/inner.js"), b"inner").unwrap();
        symlink(dir.0.join("real"), dir.0.join("linked")).unwrap();
        // A link as the last component: never followed.
        let e =
            read_head(&dir.0.join("last.js"), Resolve::NoFollow, Limits::bytes(64)).unwrap_err();
        assert!(
            matches!(
                e,
                UntrustedError::NotRegular {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{e}"
        );
        // Below a trusted directory: no link anywhere, no way up.
        let beneath = Resolve::Beneath(&dir.0);
        assert_eq!(
            read_head(Path::new("real/inner.js"), beneath, Limits::bytes(64)).unwrap(),
            b"inner"
        );
        for refused in ["linked/inner.js", "last.js", "../x", "/etc/passwd"] {
            assert!(
                read_head(Path::new(refused), beneath, Limits::bytes(64)).is_err(),
                "{refused}"
            );
        }
        // In a process's root: links resolve inside it, magic links are refused.
        let root = Resolve::InRoot(Path::new("/proc/self/root"));
        assert_eq!(
            read_head(&dir.0.join("linked/inner.js"), root, Limits::bytes(64)).unwrap(),
            b"inner"
        );
        assert_eq!(
            read_head(&dir.0.join("last.js"), root, Limits::bytes(64)).unwrap(),
            b"target"
        );
        let e = read_head(Path::new("/proc/self/exe"), root, Limits::bytes(64)).unwrap_err();
        assert!(matches!(e, UntrustedError::Open { .. }), "{e}");
        // An absolute link inside a root stays in it: `/` is the directory given as root.
        symlink("/real/inner.js", dir.0.join("absolute.js")).unwrap();
        assert_eq!(
            read_head(
                Path::new("absolute.js"),
                Resolve::InRoot(&dir.0),
                Limits::bytes(64)
            )
            .unwrap(),
            b"inner"
        );
    }

    #[test]
    fn identities_without_opening() {
        let dir = Scratch::new("untrusted-identity");
        let path = dir.0.join("a");
        std::fs::write(&path, b"abc").unwrap();
        let opened = open(&path, Resolve::NoFollow).unwrap();
        let seen = identity(&path, Resolve::NoFollow).unwrap();
        assert_eq!(seen, Identity::of(opened.metadata()));
        assert!(seen.regular && seen.size == 3);
        let exe = identity(Path::new("/proc/self/exe"), Resolve::Proc).unwrap();
        let real = std::fs::metadata("/proc/self/exe").unwrap();
        assert_eq!(exe, Identity::of(&real));
        mkfifo(&dir.0.join("f"));
        assert!(
            !identity(&dir.0.join("f"), Resolve::NoFollow)
                .unwrap()
                .regular
        );
    }

    #[test]
    fn a_huge_sparse_file_is_refused_unread() {
        let dir = Scratch::new("untrusted-sparse");
        let path = dir.0.join("huge.jsonl");
        File::create(&path).unwrap().set_len(64 << 30).unwrap();
        let started = Instant::now();
        let e = read_all(&path, Resolve::NoFollow, Limits::bytes(1 << 20)).unwrap_err();
        assert!(
            matches!(e, UntrustedError::TooLarge { size, .. } if size == 64 << 30),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // Its head is bounded too.
        assert_eq!(
            read_head(&path, Resolve::NoFollow, Limits::bytes(4096))
                .unwrap()
                .len(),
            4096
        );
    }

    /// Files that open paths with the standard library or libc, and why that is safe: no
    /// other user chooses those paths, or they are opened `O_PATH` and checked otherwise.
    const ALLOWED: &[(&str, &str)] = &[
        ("untrusted.rs", "the door itself"),
        ("config.rs", "the configuration file root names"),
        (
            "capture/btf.rs",
            "the kernel's own /sys/kernel/btf/vmlinux, a fixed path in sysfs no user chooses",
        ),
        ("journal/mod.rs", "the journal, in root's directory"),
        (
            "daemon/durable.rs",
            "the recovery state, in root's directory",
        ),
        (
            "locate/cache.rs",
            "the locate cache: a 0700 directory of root's, entries opened O_NOFOLLOW in it",
        ),
        (
            "cli/",
            "what the operator names on the command line, and /etc/passwd",
        ),
        (
            "daemon/terminal.rs",
            "/dev/tty, the daemon's own controlling terminal, opened O_NOCTTY to give it up",
        ),
        (
            "supervise/systemd.rs",
            "a user's bus socket: opened O_PATH as that user, checked a socket of theirs, \
             connected through the descriptor",
        ),
    ];

    /// Every open of a file the daemon makes goes through this module, except the daemon's
    /// own files (`ALLOWED`): a module that opens a path its own way fails here.
    #[test]
    fn the_door_is_the_only_way_in() {
        const OPENS: [&str; 7] = [
            "File::open(",
            "File::create(",
            "OpenOptions::new()",
            "fs::read(",
            "fs::read_to_string(",
            "tokio::fs::",
            "libc::open(",
        ];
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src.clone()];
        let mut offenders = Vec::new();
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let is_test = rel.ends_with("tests.rs") || rel == "proptests.rs";
                if !rel.ends_with(".rs")
                    || is_test
                    || ALLOWED.iter().any(|(own, _)| rel.starts_with(own))
                {
                    continue;
                }
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests may open their own scratch files.
                let code = text
                    .split("#[cfg(test)]\nmod tests")
                    .next()
                    .unwrap_or_default();
                for (n, line) in code.lines().enumerate() {
                    let opens = OPENS.iter().any(|o| {
                        line.match_indices(o).any(|(at, _)| {
                            !line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                        })
                    });
                    if opens && !line.trim_start().starts_with("//") {
                        offenders.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
        // The shell alone (the core opens nothing: its own test searches it).
        assert!(files > 40, "the sources were found ({files})");
        assert!(
            offenders.is_empty(),
            "open through crate::untrusted (or name the file in ALLOWED, saying why no one \
             else chooses its paths):\n{}",
            offenders.join("\n")
        );
    }

    #[test]
    fn directories_are_listed_through_the_door() {
        let dir = Scratch::new("untrusted-dirs");
        std::fs::create_dir(dir.0.join("p")).unwrap();
        std::fs::write(dir.0.join("p/a.jsonl"), b"").unwrap();
        symlink(dir.0.join("p"), dir.0.join("q")).unwrap();
        let names = list_dir(Path::new("p"), Resolve::Beneath(&dir.0), 16).unwrap();
        assert_eq!(names, ["a.jsonl"]);
        assert!(list_dir(Path::new("q"), Resolve::Beneath(&dir.0), 16).is_err());
        assert!(matches!(
            list_dir(Path::new("p/a.jsonl"), Resolve::Beneath(&dir.0), 16),
            Err(UntrustedError::NotRegular {
                kind: "regular file",
                ..
            })
        ));
    }
}
