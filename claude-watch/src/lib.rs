//! claude-watch: observe Claude Code processes from the kernel, tell a 401 latch from a 429
//! throttle, and recover latched instances through the host's supervisor.
//!
//! The module tree follows the data:
//! - [`capture`]: eBPF programs loaded and attached, ring-buffer records out;
//! - [`locate`]: where SSL_write/SSL_read are in a binary, by symbols or, in stripped BoringSSL
//!   (Bun, Claude Code), from what the code itself says (pure, cached by build id);
//! - [`http`]: records parsed and paired into exchanges (pure);
//! - [`discover`] and [`instance`]: which processes are claude instances, and their names;
//! - [`detect`]: the latch detector, a sans-IO state machine over exchanges;
//! - [`journal`] and [`report`]: the durable episode history and the report made from it;
//! - [`history`]: episodes rebuilt from Claude Code's own transcripts, imported into the journal;
//! - [`svg`]: the episode timeline drawn as SVG;
//! - [`supervise`]: supervisor adapters (the I/O seam of recovery) and the recovery policy;
//! - [`daemon`]: all of it wired around one event loop, with status, metrics and control;
//! - [`config`]: the TOML configuration;
//! - [`text`]: observed text made safe to print;
//! - [`cli`]: the subcommands.

pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod discover;
pub mod history;
pub mod http;
pub mod instance;
pub mod journal;
pub mod locate;
pub mod report;
pub mod supervise;
pub mod svg;
pub mod text;
pub mod time;
