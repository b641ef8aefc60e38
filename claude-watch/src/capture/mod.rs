//! The kernel side, seen from user space: load the eBPF programs, attach them to the TLS
//! functions of binaries and processes, and read their records.
//!
//! - [`probes`]: loading, attaching, detaching, kernel counters;
//! - [`btf`]: the kernel field offsets the exec filter follows, from the kernel's BTF (pure);
//! - [`images`]: which images the exec filter knows not to be Claude Code, a share per user
//!   (pure);
//! - [`ledger`]: which attachments exist, which processes hold them, the cap (pure);
//! - [`records`]: decoding ring-buffer records and reading them asynchronously;
//! - [`sockdiag`]: every TCP socket's byte counters, for the coverage audit;
//! - [`targets`]: what to attach to: binaries, processes, the libraries they map.

pub mod btf;
pub mod images;
pub mod ledger;
pub mod probes;
pub mod records;
pub mod sockdiag;
pub mod targets;

pub use probes::{KernelStats, Probes, Settings, Wakeup};
pub use targets::{AttachPoint, FileId, OpenedFile, Target};

use std::path::PathBuf;

use claude_watch_core::schedule::locate::AttachFailure;

/// Errors of the capture path. Each displays as one line saying what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Not running with the privileges eBPF needs.
    #[error(
        "loading eBPF programs needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN): run claude-watch as root, e.g. with sudo"
    )]
    NotPrivileged,
    /// The kernel cannot load BPF programs.
    #[error(
        "this kernel does not support BPF (bpf() returned ENOSYS): claude-watch needs Linux 5.8+ built with CONFIG_BPF_SYSCALL, CONFIG_UPROBES and CONFIG_BPF_EVENTS"
    )]
    BpfUnsupported,
    /// Loading the object or a program failed for another reason.
    #[error("loading the eBPF programs failed")]
    Load {
        /// What failed.
        #[source]
        source: LoadError,
    },
    /// A target file does not exist or cannot be read.
    #[error("cannot open {path}")]
    TargetUnreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file to probe that another user chose was refused or could not be opened (not a
    /// regular file, a link where none may be, gone).
    #[error(transparent)]
    Untrusted(#[from] crate::untrusted::UntrustedError),
    /// No process with that pid.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: u32,
    },
    /// The target has no TLS functions to attach to.
    #[error("{path}: {reason}")]
    NoTlsFunctions {
        /// The file or process.
        path: String,
        /// What was (not) found.
        reason: String,
    },
    /// The locator found no TLS functions it can vouch for in a file (its message names the
    /// file).
    #[error(transparent)]
    NotLocated(crate::locate::LocateError),
    /// The kernel refused an attachment.
    #[error("attaching {function} in {path} at file offset {offset:#x} failed")]
    Attach {
        /// Function name.
        function: &'static str,
        /// The file.
        path: PathBuf,
        /// File offset.
        offset: u64,
        /// The loader's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The file is not the one `/proc` or discovery named (replaced, re-executed or remapped
    /// meanwhile): nothing is attached to it.
    #[error(
        "{path}: the file is {found}, not the {expected} seen before (replaced meanwhile?); not attaching"
    )]
    Replaced {
        /// The file as named.
        path: PathBuf,
        /// The identity expected.
        expected: String,
        /// The identity found.
        found: String,
    },
    /// The daemon holds as many attachments as it may (`[daemon] max_attachments`): a new file
    /// is not attached until others are released.
    #[error(
        "not attaching {path}: {cap} attachments already (the [daemon] max_attachments cap; each costs file descriptors), so its traffic is not seen"
    )]
    TooManyAttachments {
        /// The file.
        path: PathBuf,
        /// The cap.
        cap: usize,
    },
    /// The process's user holds their share of attachments already (`[daemon]
    /// max_attachments_per_user`): a new file of theirs is not attached until others of
    /// theirs are released.
    #[error(
        "not attaching {path}: uid {uid} holds {share} attachments already (its share, [daemon] max_attachments_per_user), so its traffic is not seen"
    )]
    OverUserShare {
        /// The file.
        path: PathBuf,
        /// The user.
        uid: u32,
        /// The share.
        share: usize,
    },
    /// The ring buffer could not be polled.
    #[error("reading the ring buffer failed")]
    Read(#[source] std::io::Error),
}

impl CaptureError {
    /// What a failure to attach is to the core's rule ([`AttachFailure::is_final`]).
    #[must_use]
    pub fn attach_failure(&self) -> AttachFailure {
        match self {
            Self::OverUserShare { .. } => AttachFailure::UserShare,
            Self::TooManyAttachments { .. } => AttachFailure::Cap,
            _ => AttachFailure::Other,
        }
    }
}

/// What failed while loading the eBPF object or setting up its programs
/// ([`CaptureError::Load`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The object could not be loaded (parsed, relocated, its maps created).
    #[error("loading the object")]
    Object(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded, typed or attached.
    #[error("{step} program {name}")]
    Program {
        /// What was being done (`loading`, `attaching`, `typing`).
        step: &'static str,
        /// The program.
        name: &'static str,
        /// The loader's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The object has no program of that name.
    #[error("program {name} missing from the object")]
    MissingProgram {
        /// The program.
        name: &'static str,
    },
    /// A map is missing (or was taken before).
    #[error("map {name} missing from the object (or taken already)")]
    MissingMap {
        /// The map.
        name: &'static str,
    },
    /// A map could not be used as the type it should have.
    #[error("map {name}")]
    Map {
        /// The map.
        name: &'static str,
        /// The loader's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The kernel's BPF run-time statistics could not be turned on.
    #[error("enabling the kernel's BPF run-time statistics")]
    Stats(#[source] aya::sys::SyscallError),
}

/// The first OS error code in an error's source chain.
pub(crate) fn os_error(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        source = s.source();
    }
    None
}

impl LoadError {
    /// Program `name` failed at `step`.
    fn program(
        step: &'static str,
        name: &'static str,
        source: aya::programs::ProgramError,
    ) -> Self {
        Self::Program {
            step,
            name,
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn once(text: &str, part: &str) {
        assert_eq!(text.matches(part).count(), 1, "{part:?} once in {text:?}");
    }

    #[test]
    fn a_failure_prints_its_cause_once_through_error_chain() {
        let denied = || {
            aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_link_create",
                io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
            })
        };
        let e = CaptureError::Attach {
            function: "SSL_write",
            path: "/usr/bin/node".into(),
            offset: 0x1234,
            source: Box::new(denied()),
        };
        let text = crate::error_chain(&e);
        assert!(
            text.starts_with(
                "attaching SSL_write in /usr/bin/node at file offset 0x1234 failed: `bpf_link_create` failed: "
            ),
            "{text}"
        );
        once(&text, "bpf_link_create");
        once(&text, "Invalid argument");

        let e = CaptureError::Load {
            source: LoadError::Program {
                step: "attaching",
                name: "sched_process_exec",
                source: Box::new(denied()),
            },
        };
        let text = crate::error_chain(&e);
        assert!(
            text.starts_with("loading the eBPF programs failed: attaching program sched_process_exec: `bpf_link_create` failed: "),
            "{text}"
        );
        once(&text, "sched_process_exec");
        once(&text, "Invalid argument");
        assert_eq!(
            os_error(&e),
            Some(libc::EINVAL),
            "the OS error stays reachable through the sources"
        );

        let e = CaptureError::Load {
            source: LoadError::MissingMap { name: "EVENTS" },
        };
        assert_eq!(
            crate::error_chain(&e),
            "loading the eBPF programs failed: map EVENTS missing from the object (or taken already)"
        );

        let e = CaptureError::NotLocated(crate::locate::LocateError::NoTlsLibrary {
            path: "/opt/agent/bin".into(),
        });
        once(&crate::error_chain(&e), "/opt/agent/bin");
    }
}
