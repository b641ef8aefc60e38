//! The kernel side, seen from user space: load the eBPF programs, attach them to the TLS
//! functions of binaries and processes, and read their records.
//!
//! - [`probes`]: loading, attaching, detaching, kernel counters;
//! - [`ledger`]: which attachments exist, which processes hold them, the cap (pure);
//! - [`records`]: decoding ring-buffer records and reading them asynchronously;
//! - [`targets`]: what to attach to: binaries, processes, the libraries they map.

pub mod ledger;
pub mod probes;
pub mod records;
pub mod targets;

pub use probes::{KernelStats, Probes, Settings, Wakeup};
pub use targets::{AttachPoint, FileId, OpenedFile, Target};

use std::path::PathBuf;

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
    #[error("loading the eBPF programs failed: {detail}")]
    Load {
        /// The loader's message chain.
        detail: String,
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
    /// The kernel refused an attachment.
    #[error("attaching {function} in {path} at file offset {offset:#x} failed: {detail}")]
    Attach {
        /// Function name.
        function: &'static str,
        /// The file.
        path: PathBuf,
        /// File offset.
        offset: u64,
        /// The loader's message chain.
        detail: String,
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
    /// The ring buffer could not be polled.
    #[error("reading the ring buffer failed")]
    Read(#[source] std::io::Error),
}

/// Renders an error and its sources as one line (`a: b: c`).
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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
