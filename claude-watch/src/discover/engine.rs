//! Container names from the engine that runs them: Docker's Engine API (and Podman's
//! Docker-compatible one) over its unix socket, plain HTTP/1.0, no client library.
//!
//! Asked once per container (the answer is cached by the caller), with short timeouts and a
//! bounded read, so an engine that hangs or babbles costs at most a second and 256 KiB.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::instance::Container;

/// How long the engine may take to answer.
const TIMEOUT: Duration = Duration::from_millis(1000);
/// Most bytes read from one answer.
const MAX_ANSWER: u64 = 256 * 1024;

/// Errors asking an engine for a container's name.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The socket could not be reached or the exchange failed.
    #[error("talking to the engine on {socket}")]
    Io {
        /// The engine's socket.
        socket: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The engine answered something other than a container description.
    #[error("unexpected answer from the engine on {socket}: {what}")]
    Answer {
        /// The engine's socket.
        socket: PathBuf,
        /// What was wrong with it.
        what: &'static str,
    },
}

/// The container's name as the engine reports it (without Docker's leading `/`).
pub fn container_name(socket: &Path, container: &Container) -> Result<String, EngineError> {
    let io = |source| EngineError::Io {
        socket: socket.to_owned(),
        source,
    };
    let answer = |what| EngineError::Answer {
        socket: socket.to_owned(),
        what,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    // The id is 64 hex digits (checked when it was parsed): nothing to escape.
    write!(
        stream,
        "GET /containers/{}/json HTTP/1.0\r\nHost: localhost\r\n\r\n",
        container.id
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
    name_from_answer(&raw).ok_or_else(|| answer("no container name in a 200 answer"))
}

/// The `Name` of a `GET /containers/<id>/json` answer (status line, headers, JSON body).
fn name_from_answer(raw: &[u8]) -> Option<String> {
    let split = memchr::memmem::find(raw, b"\r\n\r\n")?;
    let (head, body) = (&raw[..split], &raw[split + 4..]);
    let status = head.split(|&b| b == b' ').nth(1)?;
    if status != b"200" {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Inspect {
        #[serde(rename = "Name")]
        name: String,
    }
    let inspect: Inspect = serde_json::from_slice(body).ok()?;
    let name = inspect.name.trim_start_matches('/');
    // A container name is `[a-zA-Z0-9][a-zA-Z0-9_.-]+`; anything else is not shown as one.
    (!name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    .then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_engine_answers() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Id\":\"3f1c\",\"Name\":\"/reviewer\",\"State\":{}}";
        assert_eq!(name_from_answer(ok).as_deref(), Some("reviewer"));
        let missing = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container\"}";
        assert_eq!(name_from_answer(missing), None);
        let hostile = b"HTTP/1.0 200 OK\r\n\r\n{\"Name\":\"/x\\u001b[31mred\"}";
        assert_eq!(name_from_answer(hostile), None);
        assert_eq!(name_from_answer(b"garbage"), None);
    }

    #[test]
    fn an_absent_engine_is_an_error_not_a_hang() {
        let container = Container {
            engine: crate::instance::Engine::Docker,
            id: "0".repeat(64),
        };
        let err = container_name(Path::new("/nonexistent/docker.sock"), &container).unwrap_err();
        assert!(matches!(err, EngineError::Io { .. }), "{err}");
    }
}
