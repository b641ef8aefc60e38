//! Test harness for claude-watch's integration tests.
//!
//! A stand-in Anthropic API on 127.0.0.1 with switchable failure modes ([`standin`]), agents to
//! watch (light node/Bun agents and the real Claude Code, [`agents`]), the pinned clients they run
//! on ([`deps`]), a real Docker engine ([`docker`]), child-process guards that never leak a process ([`process`]), the pieces the bench shares ([`shared`]) and deadline-bound
//! waiting ([`wait`]). Helpers panic with a message instead of returning errors, so a failing
//! scenario says where it failed.

pub mod agents;
pub mod bg;
pub mod deps;
pub mod docker;
pub mod fleet;
pub mod process;
pub mod shared;
pub mod standin;
pub mod supervisord;
pub mod testbed;
pub mod users;
pub mod wait;
pub mod watch;

/// A restart target for the live process `pid` of `instance` (no unit, unsupervised), its start
/// time read from `/proc` now, as the daemon's core would hand one to a supervisor.
///
/// # Errors
/// When the process is gone.
pub fn target_for_pid(
    instance: impl Into<String>,
    pid: u32,
) -> Result<claude_watch::supervise::Target, claude_watch::instance::ProcError> {
    Ok(claude_watch::supervise::Target {
        instance: instance.into(),
        unit: None,
        pid,
        start_time: Some(claude_watch::instance::proc::start_time(pid)?),
        uid: None,
        placement: claude_watch::instance::Placement::Unsupervised,
    })
}
