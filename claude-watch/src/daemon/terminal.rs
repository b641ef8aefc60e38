//! The daemon and terminals: it never has one. Under systemd it starts as a session leader
//! without a controlling terminal, and the only opens of paths others choose go through
//! [`crate::untrusted`], which never opens a terminal for I/O (and opens with `O_NOCTTY`), so
//! it cannot acquire one. Started by hand from a shell it inherits the shell's terminal: it
//! gives it up at start ([`give_up_inherited`]), and not being a session leader it can never
//! get one again. (Keys typed there still reach it through its process group: ^C stops it.)

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use tracing::{info, warn};

/// Why the controlling terminal was kept.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// The daemon leads its session: giving its terminal up would hang up the terminal's
    /// foreground process group.
    #[error("the daemon leads its session (started with a terminal by `setsid -c`?)")]
    SessionLeader,
    /// `ioctl(TIOCNOTTY)` failed.
    #[error("giving up the controlling terminal")]
    Ioctl(#[source] std::io::Error),
}

/// Gives up the controlling terminal the daemon inherited, if any; `Ok(false)` when it had
/// none (systemd, a service manager, `setsid`).
///
/// # Errors
/// [`TerminalError`] when it has one and keeps it.
pub fn give_up_inherited() -> Result<bool, TerminalError> {
    // SAFETY: a NUL-terminated literal path; the descriptor is owned right after.
    let fd = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        // ENXIO: no controlling terminal.
        return Ok(false);
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let tty = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain system calls without memory arguments.
    if unsafe { libc::getsid(0) == libc::getpid() } {
        return Err(TerminalError::SessionLeader);
    }
    // SAFETY: TIOCNOTTY takes no argument; the descriptor is ours.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCNOTTY) } != 0 {
        return Err(TerminalError::Ioctl(std::io::Error::last_os_error()));
    }
    Ok(true)
}

/// [`give_up_inherited`], said in the log.
pub fn give_up_and_say() {
    match give_up_inherited() {
        Ok(true) => info!("gave up the controlling terminal inherited from the shell"),
        Ok(false) => {}
        Err(e) => warn!(error = %crate::error_chain(&e), "keeping a controlling terminal"),
    }
}
