//! Recovery through the host's own supervisor.
//!
//! - [`Restarter`]: the one I/O seam, "restart this instance", with its adapters:
//!   [`systemd::SystemdRestarter`] (D-Bus), [`docker::DockerRestarter`] (the container engine's
//!   API), [`command::CommandRestarter`] (an argv template, no
//!   shell), [`signal::SignalRestarter`] (SIGTERM then SIGKILL through a pidfd, for supervisors that
//!   respawn on their own), [`pm2::Pm2Restarter`] (`pm2 restart` as the app's owner),
//!   [`supervisord::SupervisordRestarter`] (XML-RPC on its unix socket) and
//!   [`observe::ObserveOnly`] (never acts);
//! - [`supervisor`]: which adapter each instance gets, and the escalation hook.
//!
//! Every `/proc` fact the adapters need (start times, owners, namespace PIDs, cgroups) comes
//! from [`crate::instance::proc`].

pub mod claude_bg;
pub mod command;
pub mod docker;
pub mod observe;
pub mod pm2;
pub mod signal;
pub mod supervisor;
pub mod supervisord;
pub mod systemd;

pub use claude_watch_core::supervise::{RestartFailed, RestartOutcome, Target};

use std::future::Future;
use std::time::Duration;

use crate::instance::proc;

/// Why a restart did not happen. The policy retries all of these with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The supervisor's bus could not be reached.
    #[error("D-Bus at {address} is unavailable")]
    BusUnavailable {
        /// The bus address tried.
        address: String,
        /// The connection error.
        #[source]
        source: Box<zbus::Error>,
    },
    /// A D-Bus call to systemd failed.
    #[error("systemd call {method} failed")]
    Bus {
        /// The method or property.
        method: &'static str,
        /// The call's error.
        #[source]
        source: Box<zbus::Error>,
    },
    /// The supervisor has no unit for this instance.
    #[error("no supervisor unit for instance {instance} (pid {pid})")]
    UnitNotFound {
        /// The instance.
        instance: String,
        /// Its host PID.
        pid: u32,
        /// The supervisor's answer (e.g. systemd's `NoUnitForPID`).
        #[source]
        source: Box<zbus::Error>,
    },
    /// The manager asked does not own the process under the unit about to be restarted (a
    /// user unit named like a system unit, a delegated sub-cgroup named like another unit, a
    /// process of another user): refused, nothing restarted.
    #[error(
        "refused: {manager} says pid {pid} of instance {instance} belongs to {found}, not to {expected}; nothing restarted"
    )]
    NotOwner {
        /// The instance.
        instance: String,
        /// Its host PID.
        pid: u32,
        /// The manager that was asked (`the system manager`, `user@1000's manager`).
        manager: String,
        /// The unit (or owner) the restart was meant for.
        expected: String,
        /// What the manager (or `/proc`) says owns the process.
        found: String,
    },
    /// A user's bus could not be connected to as that user.
    #[error("cannot connect to {path} as uid {uid}")]
    UserBus {
        /// The socket path.
        path: String,
        /// The user.
        uid: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The restart did not end as expected.
    #[error("restart of {unit} failed")]
    RestartFailed {
        /// The unit (or container, or program).
        unit: String,
        /// How it ended instead.
        #[source]
        source: RestartFailure,
    },
    /// The supervisor did not answer in time.
    #[error("supervisor did not finish within {timeout:?}: {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The limit.
        timeout: Duration,
    },
    /// A supervisor command could not be started.
    #[error("could not run supervisor command {program}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// A supervisor command exited unsuccessfully.
    #[error("supervisor command {program} failed with {status}{}{said}", if .said.is_empty() { "" } else { ": " })]
    CommandFailed {
        /// argv\[0\].
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said last on stderr (its reason, bounded and escaped; empty if nothing).
        said: String,
    },
    /// The command template needs a value the target does not have.
    #[error("command template uses {placeholder} but instance {instance} has none")]
    MissingPlaceholder {
        /// The placeholder, e.g. `{unit}`.
        placeholder: &'static str,
        /// The instance.
        instance: String,
    },
    /// The PID now belongs to another process than the instance's: nothing is signalled.
    #[error("pid {pid} was reused (start time {expected} expected, {found} found)")]
    PidReused {
        /// The PID.
        pid: u32,
        /// The instance's start time.
        expected: u64,
        /// The start time of the process that has the PID now.
        found: u64,
    },
    /// A system call on the process failed.
    #[error("{call} on pid {pid} failed")]
    Syscall {
        /// The call.
        call: &'static str,
        /// The PID.
        pid: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `claude-bg` restart was asked for an instance that is not a background session.
    #[error("instance {instance} (pid {pid}) is not a background session of Claude Code's daemon")]
    NotBgSession {
        /// The instance.
        instance: String,
        /// Its host PID.
        pid: u32,
    },
    /// Claude Code's daemon (`claude agents --json`, run as the session's owner) does not say
    /// that the session runs as the latched process: nothing is respawned.
    #[error("claude-bg refuses to respawn {instance} (pid {pid}): {detail}")]
    BgSessionNotOwned {
        /// The instance, `claude-bg:<short id>`.
        instance: String,
        /// The latched process.
        pid: u32,
        /// What the daemon listed instead, or why the process is not the session's.
        detail: String,
    },
    /// The container engine could not be asked, or answered something unexpected.
    #[error("container engine on {socket}")]
    Engine {
        /// The engine's socket.
        socket: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: Box<crate::discover::engine::EngineError>,
    },
    /// Refused: the engine does not confirm that the process runs in the container its cgroup
    /// names (a forged cgroup, or the container changed); nothing was restarted.
    #[error(
        "refused: the engine does not confirm pid {pid} runs in container {container}: {found}"
    )]
    NotInContainer {
        /// The container, as `name (short id)` (or its short id).
        container: String,
        /// The target's host PID.
        pid: u32,
        /// What was found instead.
        found: String,
    },
    /// `/proc` could not tell what was needed.
    #[error(transparent)]
    Process(#[from] proc::ProcError),
    /// The supervisor asked does not run the latched process (the process's environment named
    /// it, but it runs something else under that name, or nothing): nothing is restarted.
    #[error("{supervisor} does not own pid {pid} of instance {instance}: it {found}")]
    NotRunBy {
        /// The instance.
        instance: String,
        /// The latched process.
        pid: u32,
        /// The supervisor asked (`pm2 of alice (/home/alice/.pm2)`, `supervisord at <socket>`).
        supervisor: String,
        /// What the supervisor has under that name instead.
        found: String,
    },
    /// The adapter will not act for this instance (an unsafe or unusable setting).
    #[error("refusing to restart instance {instance}: {reason}")]
    Refused {
        /// The instance.
        instance: String,
        /// Why.
        reason: String,
    },
    /// The instance does not live where this adapter acts (e.g. `pm2` for a process pm2 does
    /// not run, as far as discovery saw).
    #[error("instance {instance} is not under {supervisor}")]
    WrongPlacement {
        /// The instance.
        instance: String,
        /// The adapter.
        supervisor: &'static str,
    },
    /// The process's owner has no passwd entry.
    #[error("uid {uid} has no passwd entry")]
    UnknownUser {
        /// The uid.
        uid: u32,
    },
    /// A supervisor command wrote more than is read.
    #[error("{program} wrote more than {limit} bytes")]
    OutputTooLong {
        /// argv\[0\].
        program: String,
        /// The limit.
        limit: u64,
    },
    /// A supervisor's answer could not be understood.
    #[error("{supervisor} answered something unexpected")]
    BadAnswer {
        /// Who answered (`pm2 jlist`, `supervisord supervisor.getProcessInfo`).
        supervisor: String,
        /// What was wrong with it.
        #[source]
        source: BadAnswer,
    },
    /// A supervisor's socket could not be used.
    #[error("supervisor socket {path}")]
    Socket {
        /// The socket.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// supervisord answered an XML-RPC fault.
    #[error("supervisord {method} failed: {code} {message}")]
    Fault {
        /// The method.
        method: &'static str,
        /// `faultCode`.
        code: i64,
        /// `faultString`.
        message: String,
    },
}

/// How a restart that was started did not end as it should have
/// ([`SuperviseError::RestartFailed`]'s cause).
#[derive(Debug, thiserror::Error)]
pub enum RestartFailure {
    /// systemd finished the restart job but the unit has no new active main process.
    #[error("unit is {state} with main pid {main_pid} after the job")]
    NotActive {
        /// The unit's `ActiveState`.
        state: String,
        /// Its `MainPID` (in the manager's PID namespace).
        main_pid: u32,
    },
    /// The blocking task that ran the restart panicked or was cancelled.
    #[error("the restart task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The container engine refused the restart.
    #[error("the engine answered {status}: {message}")]
    Engine {
        /// The HTTP status.
        status: u16,
        /// The engine's `message`, printable and bounded.
        message: String,
    },
    /// A supervisord method did not answer `true`.
    #[error("{method} answered {answer}")]
    Supervisord {
        /// The XML-RPC method.
        method: &'static str,
        /// Its answer, as debug text.
        answer: String,
    },
}

/// What was wrong with a supervisor's answer ([`SuperviseError::BadAnswer`]'s cause).
#[derive(Debug, thiserror::Error)]
pub enum BadAnswer {
    /// `pm2 jlist` printed no JSON list of apps.
    #[error("not a JSON list of apps")]
    NotAppList,
    /// supervisord's HTTP answer is not an XML-RPC response.
    #[error(transparent)]
    XmlRpc(#[from] supervisord::XmlRpcError),
}

/// How much of a failed command's stderr its error keeps (its last lines).
pub const SAID_MAX: usize = 400;

/// Reads a supervisor command's stderr to its end (so the command never blocks on a full
/// pipe), keeping its last bytes; then its last non-empty lines, at most [`SAID_MAX`]
/// characters, joined by ` / ` and escaped (it may repeat what an agent chose: a session
/// name, a path).
pub(crate) async fn read_said(stderr: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    use tokio::io::AsyncReadExt as _;
    const KEEP: usize = 8192;
    let Some(mut stderr) = stderr else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(KEEP);
                kept.drain(..excess);
            }
        }
    }
    said_from(&String::from_utf8_lossy(&kept))
}

/// The pure half of [`read_said`].
fn said_from(text: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    let mut len = 0;
    for line in text.lines().rev().map(str::trim).filter(|l| !l.is_empty()) {
        if len + line.len() > SAID_MAX && !lines.is_empty() {
            break;
        }
        len += line.len() + 3;
        lines.push(line);
    }
    lines.reverse();
    let joined = lines.join(" / ");
    let mut cut: String = joined.chars().take(SAID_MAX).collect();
    if cut.len() < joined.len() {
        cut.push('…');
    }
    crate::text::printable(&cut).into_owned()
}

/// Makes `command` run as `uid`, `gid` and exactly the supplementary `groups` (set between fork
/// and exec, groups first, the uid last, so nothing of root's is kept): how every adapter that
/// acts as a process's owner (pm2, `claude respawn`) starts its commands.
pub(crate) fn drop_to_owner(
    command: &mut tokio::process::Command,
    uid: u32,
    gid: u32,
    groups: &[u32],
) {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: only async-signal-safe system calls between fork and exec; `groups` was
    // allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `command` (its arguments, environment, directory and owner already set) with no
/// input, in a process group of its own, for at most `timeout`: reads at most `max_output + 1`
/// bytes of its standard output when that is piped, and its last words on stderr
/// ([`read_said`]). Its exit status, output and words; on timeout the whole group is killed
/// (the command may have children of its own) and [`SuperviseError::Timeout`] says `what`.
/// How every supervisor command is run (the hook's, pm2's, `claude respawn`'s).
pub(crate) async fn run_bounded(
    command: &mut tokio::process::Command,
    program: &str,
    what: String,
    timeout: Duration,
    max_output: u64,
) -> Result<(std::process::ExitStatus, Vec<u8>, String), SuperviseError> {
    use tokio::io::AsyncReadExt as _;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SuperviseError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let pgid = child.id();
    let mut stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let mut out = Vec::new();
        let read = async {
            if let Some(stdout) = &mut stdout {
                stdout.take(max_output + 1).read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (read, said) = tokio::join!(read, read_said(stderr));
        read?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, said))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(source)) => Err(SuperviseError::Spawn {
            program: program.to_owned(),
            source,
        }),
        Err(_elapsed) => {
            if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: plain syscall on the process group the command leads.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            Err(SuperviseError::Timeout { what, timeout })
        }
    }
}

/// Refuses when `pid` no longer has the `expected` start time (the PID was reused).
pub(crate) fn verify_start_time(pid: u32, expected: Option<u64>) -> Result<(), SuperviseError> {
    if let Some(expected) = expected {
        let found = proc::start_time(pid)?;
        if found != expected {
            return Err(SuperviseError::PidReused {
                pid,
                expected,
                found,
            });
        }
    }
    Ok(())
}

/// How many parents up a supervisor's main process may be from the instance's (a wrapper
/// shell, `sh -c "claude ..."`, that the supervisor started).
const MAX_WRAPPERS: usize = 4;

/// Whether `main`, the pid a supervisor says it runs, is `pid` or one of the `ancestors` of
/// `pid` (nearest first, at most `MAX_WRAPPERS` looked at). PID 0 (nothing running) never is.
pub fn is_self_or_wrapper(main: u32, pid: u32, ancestors: &[u32]) -> bool {
    main != 0 && (main == pid || ancestors.iter().take(MAX_WRAPPERS).any(|&a| a == main))
}

/// [`is_self_or_wrapper`] with the parent chain of `pid` read from `/proc` now.
pub(crate) fn runs_under(main: u32, pid: u32) -> bool {
    let chain: Vec<u32> = proc::read_ancestry(std::path::Path::new(proc::ROOT), pid, MAX_WRAPPERS)
        .into_iter()
        .map(|p| p.pid)
        .collect();
    is_self_or_wrapper(main, pid, &chain)
}

/// Restarts an instance through whatever supervises it: the I/O seam of recovery.
pub trait Restarter {
    /// Restart `target`, wait until the supervisor says it is done, and say what happened.
    fn restart(
        &self,
        target: &Target,
    ) -> impl Future<Output = Result<RestartOutcome, SuperviseError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_prints_its_cause_once_through_error_chain() {
        let e = SuperviseError::RestartFailed {
            unit: "agent.service".into(),
            source: RestartFailure::NotActive {
                state: "failed".into(),
                main_pid: 0,
            },
        };
        assert_eq!(
            crate::error_chain(&e),
            "restart of agent.service failed: unit is failed with main pid 0 after the job"
        );
        let e = SuperviseError::BadAnswer {
            supervisor: "supervisord supervisor.getProcessInfo".into(),
            source: supervisord::parse_response(b"HTTP/1.0 500 Oops\r\n\r\n")
                .unwrap_err()
                .into(),
        };
        assert_eq!(
            crate::error_chain(&e),
            "supervisord supervisor.getProcessInfo answered something unexpected: HTTP status \"HTTP/1.0 500 Oops\""
        );
        let e = SuperviseError::from(proc::start_time(u32::MAX).unwrap_err());
        let text = crate::error_chain(&e);
        assert!(
            text.starts_with(&format!("opening /proc/{}/stat: ", u32::MAX)),
            "{text}"
        );
    }

    #[test]
    fn the_supervisors_pid_must_be_the_process_or_a_near_parent() {
        assert!(is_self_or_wrapper(10, 10, &[]));
        assert!(is_self_or_wrapper(9, 10, &[9, 8]));
        assert!(is_self_or_wrapper(7, 10, &[9, 8, 7, 6]));
        assert!(!is_self_or_wrapper(5, 10, &[9, 8, 7, 6, 5]));
        assert!(!is_self_or_wrapper(11, 10, &[9, 8]));
        assert!(!is_self_or_wrapper(0, 0, &[]));
    }
}
