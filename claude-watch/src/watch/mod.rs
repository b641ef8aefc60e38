//! The decisions, as the shell holds them: the Watch and its status, replay and policy are
//! the core's ([`claude_watch_core::watch`], re-exported here); [`front`] turns kernel records
//! into the Watch's inputs (shared with `trace`), through discovery.

pub mod front;

pub use claude_watch_core::watch::*;
