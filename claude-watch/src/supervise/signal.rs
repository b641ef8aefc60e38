//! Restart by signal, for supervisors that respawn on their own: SIGTERM, then SIGKILL after a
//! grace period, both through a pidfd opened after checking the process's start time, so a reused
//! PID is never hit.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{RestartOutcome, Restarter, SuperviseError, Target};
use crate::instance::proc;
pub use claude_watch_core::supervise::SignalRestarter;

fn pidfd_open(pid: u32) -> Result<OwnedFd, SuperviseError> {
    let failed = |source| SuperviseError::Syscall {
        call: "pidfd_open",
        pid,
        source,
    };
    let pid_t = libc::pid_t::try_from(pid)
        .map_err(|_| failed(std::io::Error::from_raw_os_error(libc::ESRCH)))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_t, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    let fd = RawFd::try_from(fd).expect("fds fit in RawFd");
    // SAFETY: the syscall just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(fd: &OwnedFd, pid: u32, signal: i32) -> Result<(), SuperviseError> {
    use std::os::fd::AsRawFd;
    // SAFETY: valid pidfd, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        // Already gone: nothing left to signal.
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(SuperviseError::Syscall {
            call: "pidfd_send_signal",
            pid,
            source,
        });
    }
    Ok(())
}

/// Waits until the process behind `fd` has exited, at most `limit`; `true` when it has.
async fn exited_within(fd: &AsyncFd<OwnedFd>, limit: Duration) -> bool {
    tokio::time::timeout(limit, fd.readable())
        .await
        .is_ok_and(|r| r.is_ok())
}

impl Restarter for SignalRestarter {
    #[tracing::instrument(skip_all, fields(instance = %target.instance, pid = target.pid))]
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        let pid = target.pid;
        // Checked before opening (cheap refusal) and after (the pidfd pins the process, so a
        // match now means the pidfd is the instance's).
        super::verify_start_time(pid, target.start_time)?;
        let fd = pidfd_open(pid)?;
        super::verify_start_time(pid, target.start_time)?;
        let parent = proc::parent_pid(pid)?;
        let siblings = proc::children(parent);
        // SAFETY: the OwnedFd stays open and owned by the AsyncFd for its whole life.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
                SuperviseError::Syscall {
                    call: "epoll_ctl(pidfd)",
                    pid,
                    source: e.into_parts().1,
                }
            })?;

        pidfd_send_signal(fd.get_ref(), pid, libc::SIGTERM)?;
        let mut how = "SIGTERM";
        if !exited_within(&fd, self.grace).await {
            tracing::warn!(grace = ?self.grace, "still alive after SIGTERM, sending SIGKILL");
            pidfd_send_signal(fd.get_ref(), pid, libc::SIGKILL)?;
            how = "SIGKILL";
            if !exited_within(&fd, self.grace).await {
                return Err(SuperviseError::Timeout {
                    what: format!("exit of pid {pid} after SIGKILL"),
                    timeout: self.grace,
                });
            }
        }

        // The supervisor respawns on its own: look for the parent's new child.
        let mut new_pid = None;
        if parent > 1 {
            let deadline = tokio::time::Instant::now() + self.respawn_wait;
            while new_pid.is_none() && tokio::time::Instant::now() < deadline {
                new_pid = proc::children(parent)
                    .into_iter()
                    .find(|c| *c != pid && !siblings.contains(c));
                if new_pid.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        tracing::info!(signal = how, ?new_pid, "instance signalled");
        Ok(RestartOutcome::acted(
            target.unit.clone(),
            new_pid,
            format!("{how} to pid {pid} of instance {}", target.instance),
        ))
    }
}
