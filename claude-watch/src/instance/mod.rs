//! Instance identity, as the shell sees it: the naming rules are the core's
//! ([`claude_watch_core::instance`], re-exported here); [`proc`] is the one reader of `/proc`
//! that feeds them.

pub mod proc;

pub use claude_watch_core::instance::*;
pub use proc::{ProcError, read_ancestry, read_process_info};
