//! What the test harness and the bench (`xtask/src/bench/`) share: process groups, free ports,
//! and the stand-in API's ready line and control port.
//!
//! Only `std`, `libc` and `serde_json` are used, and errors are returned, not panicked on: xtask
//! includes this file with `#[path]` instead of depending on this crate, because this crate
//! depends on claude-watch, whose build needs the eBPF toolchain that `cargo xtask setup`
//! installs.

use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Makes `command` lead a new process group (so signals and the final kill reach everything it
/// starts), killed by the kernel if the parent dies first (`PR_SET_PDEATHSIG`).
pub fn lead_own_group(command: &mut Command) {
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The API and control ports in the stand-in's ready line (`{"ready": true, "api_port": ..,
/// "control_port": ..}`).
///
/// # Errors
/// What is wrong with the line.
pub fn standin_ports(ready_line: &str) -> Result<(u16, u16), String> {
    let ready: Value = serde_json::from_str(ready_line)
        .map_err(|e| format!("stand-in ready line is not JSON ({e}): {ready_line}"))?;
    let port = |key: &str| {
        ready[key]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("stand-in ready line lacks {key}: {ready_line}"))
    };
    Ok((port("api_port")?, port("control_port")?))
}

/// One request to the stand-in's control port on 127.0.0.1 (HTTP/1.1, `Connection: close`,
/// 10 s read timeout): the answer's status line and body.
///
/// # Errors
/// When the port cannot be reached or the answer has no end of headers.
pub fn standin_control(
    control_port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> io::Result<(String, String)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", control_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, payload) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of headers"))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, payload.to_owned()))
}

/// Whether an HTTP status line says 200.
pub fn is_ok(status_line: &str) -> bool {
    status_line.split_whitespace().nth(1) == Some("200")
}
