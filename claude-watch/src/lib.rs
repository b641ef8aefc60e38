//! claude-watch: observe Claude Code processes from the kernel, tell a 401 latch from a 429
//! throttle, and recover latched instances through the host's supervisor.
//!
//! The module tree follows the data:
//! - [`capture`]: eBPF programs loaded and attached, ring-buffer records out;
//! - [`http`]: records parsed and paired into exchanges (pure);
//! - [`locate`]: where SSL_write/SSL_read live in a binary, with or without symbols (pure);
//! - [`cli`]: the subcommands.

pub mod detect;
pub mod http;
pub mod instance;
pub mod journal;
pub mod report;

/// The subcommands' implementations (the top-level CLI wires them).
pub mod cli {
    pub mod episodes;
}
