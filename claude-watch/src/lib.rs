//! claude-watch: observe Claude Code processes from the kernel, tell a 401 latch from a 429
//! throttle, and recover latched instances through the host's supervisor.
//!
//! The module tree follows the data:
//! - [`capture`]: eBPF programs loaded and attached, ring-buffer records out;
//! - [`locate`]: where SSL_write/SSL_read are in a binary, by symbols or, in stripped BoringSSL
//!   (Bun, Claude Code), from what the code itself says (reads the file; cached by build id);
//! - [`http`]: records parsed and paired into exchanges (the core's, re-exported);
//! - [`discover`] and [`instance`]: which processes are claude instances, and their names (the
//!   naming is the core's; `instance::proc` reads `/proc`);
//! - [`detect`]: the latch detector, a sans-IO state machine over exchanges (the core's);
//! - [`journal`] and [`report`]: the durable episode history and the report made from it;
//! - [`watch`]: every decision (latch, restart, wait, give up, what to publish) in one sans-IO
//!   state machine fed inputs and a monotonic clock, returning effects (the core's), and the
//!   front half (records to inputs) shared with `trace`;
//! - [`supervise`]: supervisor adapters (the I/O seam of recovery);
//! - [`daemon`]: the shell that executes the core's effects: ring reader, `/proc`, probes,
//!   supervisors, journal, status, metrics and control;
//! - [`history`]: episodes rebuilt from Claude Code's own transcripts, imported into the journal;
//! - [`svg`]: the episode timeline drawn as SVG;
//! - [`config`]: the TOML configuration;
//! - [`text`]: observed text made safe to print (the core's);
//! - [`time`]: the clocks (the shell owns them), and the core's formats;
//! - [`untrusted`]: the one door for files another user or process chooses;
//! - [`cli`]: the subcommands;
//! - [`allocator`]: the C allocator's settings for the long-running commands.

pub mod allocator;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod history;
pub mod instance;
pub mod journal;
pub mod locate;
pub mod report;
pub mod supervise;
pub mod svg;
pub mod time;
pub mod untrusted;
pub mod watch;

// The core's modules, where the shell's paths have always named them.
pub use claude_watch_core::{detect, http, text};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod scratch;

pub use claude_watch_core::error_chain;

/// `mutex` locked, even when a thread panicked while holding it: what it guards is used as it
/// is (every lock of the shell takes it this way).
pub(crate) fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
