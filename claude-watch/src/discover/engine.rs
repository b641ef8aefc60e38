//! The container engine's API: Docker's Engine API (and Podman's Docker-compatible one) over its
//! unix socket, plain HTTP/1.0, no client library (`httparse` reads the answer's head). Used by
//! discovery (container names and main processes) and by the `docker` supervisor (inspect,
//! restart).
//!
//! Every exchange has a timeout and a bounded read, so an engine that hangs or babbles costs at
//! most the timeout and 256 KiB. HTTP/1.0 keeps the answer simple: the engine (a Go server)
//! closes the connection after the body and never chunks it. The answers are treated as hostile:
//! only a few fields are read, and names are checked before they are shown.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::instance::Container;

/// How long the engine may take to answer a question (inspect).
pub const TIMEOUT: Duration = Duration::from_millis(1000);
/// Most bytes read from one answer.
const MAX_ANSWER: u64 = 256 * 1024;
/// Most header fields an answer may have (Docker and Podman send about ten).
const MAX_HEADERS: usize = 64;
/// Most bytes of an engine's error message kept.
const MAX_MESSAGE: usize = 200;

/// Errors talking to an engine.
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
    /// The engine answered something other than what was asked for.
    #[error("unexpected answer from the engine on {socket}")]
    Answer {
        /// The engine's socket.
        socket: PathBuf,
        /// What was wrong with it.
        #[source]
        problem: AnswerProblem,
    },
}

/// What was wrong with an engine's answer ([`EngineError::Answer`]'s cause).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerProblem {
    /// The bytes are not an HTTP/1.x answer.
    #[error("not an HTTP answer")]
    NotHttp,
    /// The engine refused the inspect.
    #[error("inspect of container {container} answered {status}: {message}")]
    Status {
        /// The container's short id.
        container: String,
        /// The HTTP status.
        status: u16,
        /// The engine's message, printable and bounded.
        message: String,
    },
    /// The description lacks a field or has one of the wrong shape.
    #[error("{0}")]
    Malformed(&'static str),
    /// The engine described another container than the one asked about.
    #[error("asked for container {asked}, got {got}")]
    OtherContainer {
        /// The short id asked about.
        asked: String,
        /// The id described (at most 64 characters).
        got: String,
    },
}

/// An HTTP answer: its status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body (at most 256 KiB of the answer).
    pub body: Vec<u8>,
}

impl Answer {
    /// The engine's `{"message": ...}` of an error answer, printable and cut short.
    pub fn message(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Message {
            message: String,
        }
        let text = serde_json::from_slice::<Message>(&self.body)
            .map(|m| m.message)
            .unwrap_or_default();
        let mut printable: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_MESSAGE)
            .collect();
        if printable.is_empty() {
            printable = "(no message)".into();
        }
        printable
    }
}

/// Splits a raw HTTP/1.x answer into status and body; `None` when it is not one, its head does
/// not end or has more than 64 fields.
pub fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(body) = head.parse(raw).ok()? else {
        return None;
    };
    Some(Answer {
        status: head.code?,
        body: raw[body..].to_vec(),
    })
}

/// Sends `method path` (no request body) to the engine on `socket` and reads its answer,
/// giving up after `timeout` without progress. `path` must come from trusted pieces (a
/// container id is checked to be 64 hex digits when parsed).
///
/// # Errors
/// [`EngineError::Io`] when the socket cannot be reached or the exchange fails or times out,
/// [`EngineError::Answer`] when the answer is not HTTP.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Answer, EngineError> {
    let io = |source| EngineError::Io {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
    parse_answer(&raw).ok_or_else(|| EngineError::Answer {
        socket: socket.to_owned(),
        problem: AnswerProblem::NotHttp,
    })
}

/// What `GET /containers/<id>/json` says about a container (the few fields used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspect {
    /// The full id.
    pub id: String,
    /// The name, without Docker's leading `/`; `None` when it is not a valid container name.
    pub name: Option<String>,
    /// Whether it runs.
    pub running: bool,
    /// Whether the engine is restarting it.
    pub restarting: bool,
    /// Host PID of its main process (0 when it does not run).
    pub pid: u32,
    /// When it was last started (RFC 3339, as the engine writes it).
    pub started_at: String,
}

/// The container description in a `GET /containers/<id>/json` answer body.
///
/// # Errors
/// What is wrong with the body.
pub fn parse_inspect(body: &[u8]) -> Result<Inspect, &'static str> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Raw {
        id: String,
        #[serde(default)]
        name: String,
        state: RawState,
    }
    #[derive(Default, serde::Deserialize)]
    #[serde(rename_all = "PascalCase", default)]
    struct RawState {
        running: bool,
        restarting: bool,
        pid: i64,
        started_at: String,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|_| "not a container description")?;
    let pid = u32::try_from(raw.state.pid).map_err(|_| "State.Pid out of range")?;
    let name = raw.name.trim_start_matches('/');
    // A container name is `[a-zA-Z0-9][a-zA-Z0-9_.-]+`; anything else is not shown as one.
    let name = (!name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    .then(|| name.to_owned());
    let started_at: String = raw
        .state
        .started_at
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    Ok(Inspect {
        id: raw.id,
        name,
        running: raw.state.running,
        restarting: raw.state.restarting,
        pid,
        started_at,
    })
}

/// Asks the engine on `socket` about `container`.
///
/// # Errors
/// [`EngineError`] when the engine cannot be asked, does not know the container, or answers
/// something else than its description.
pub fn inspect(
    socket: &Path,
    container: &Container,
    timeout: Duration,
) -> Result<Inspect, EngineError> {
    let answer_error = |problem: AnswerProblem| EngineError::Answer {
        socket: socket.to_owned(),
        problem,
    };
    // The id is 64 hex digits (checked when it was parsed): nothing to escape.
    let answer = request(
        socket,
        "GET",
        &format!("/containers/{}/json", container.id),
        timeout,
    )?;
    if answer.status != 200 {
        return Err(answer_error(AnswerProblem::Status {
            container: container.short_id().to_owned(),
            status: answer.status,
            message: answer.message(),
        }));
    }
    let inspect =
        parse_inspect(&answer.body).map_err(|what| answer_error(AnswerProblem::Malformed(what)))?;
    if !inspect.id.eq_ignore_ascii_case(&container.id) {
        return Err(answer_error(AnswerProblem::OtherContainer {
            asked: container.short_id().to_owned(),
            got: inspect.id.chars().take(64).collect(),
        }));
    }
    Ok(inspect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_of(raw: &[u8]) -> Option<Inspect> {
        parse_answer(raw)
            .filter(|a| a.status == 200)
            .and_then(|a| parse_inspect(&a.body).ok())
    }

    #[test]
    fn names_from_engine_answers() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Id\":\"3f1c\",\"Name\":\"/reviewer\",\"State\":{}}";
        assert_eq!(
            inspect_of(ok).and_then(|i| i.name).as_deref(),
            Some("reviewer")
        );
        let missing = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container\"}";
        assert_eq!(inspect_of(missing), None);
        assert_eq!(
            parse_answer(missing).map(|a| (a.status, a.message())),
            Some((404, "No such container".into()))
        );
        let hostile =
            b"HTTP/1.0 200 OK\r\n\r\n{\"Id\":\"3f1c\",\"Name\":\"/x\\u001b[31mred\",\"State\":{}}";
        assert_eq!(inspect_of(hostile).map(|i| i.name), Some(None));
        assert_eq!(parse_answer(b"garbage"), None);
        assert_eq!(parse_answer(b"SSH-2.0 x\r\n\r\n"), None);
        // A head cut short, a status that is no number, more fields than are read.
        assert_eq!(parse_answer(b"HTTP/1.0 200 OK\r\nContent-Type: a"), None);
        assert_eq!(parse_answer(b"HTTP/1.0 2x0 OK\r\n\r\n{}"), None);
        let many = format!("HTTP/1.0 200 OK\r\n{}\r\n{{}}", "X: y\r\n".repeat(65));
        assert_eq!(parse_answer(many.as_bytes()), None);
        let enough = format!("HTTP/1.0 200 OK\r\n{}\r\n{{}}", "X: y\r\n".repeat(64));
        assert_eq!(
            parse_answer(enough.as_bytes()).map(|a| a.body),
            Some(b"{}".to_vec())
        );
    }

    #[test]
    fn state_from_engine_answers() {
        let running = br#"{"Id":"ab","Name":"/r","State":{"Status":"running","Running":true,"Restarting":false,"Pid":4242,"StartedAt":"2026-11-30T10:00:00.123456789Z"}}"#;
        let i = parse_inspect(running).unwrap();
        assert!(i.running && !i.restarting);
        assert_eq!(i.pid, 4242);
        assert_eq!(i.started_at, "2026-11-30T10:00:00.123456789Z");
        let stopped = br#"{"Id":"ab","Name":"/r","State":{"Running":false,"Pid":0}}"#;
        assert_eq!(parse_inspect(stopped).unwrap().pid, 0);
        let negative = br#"{"Id":"ab","Name":"/r","State":{"Running":true,"Pid":-1}}"#;
        assert!(parse_inspect(negative).is_err());
        assert!(parse_inspect(b"{\"Id\":\"ab\"}").is_err());
        let odd = b"HTTP/1.0 500 Internal Server Error\r\n\r\n{\"message\":\"a\\nb\\u001bc\"}";
        assert_eq!(parse_answer(odd).unwrap().message(), "abc");
    }

    #[test]
    fn an_absent_engine_is_an_error_not_a_hang() {
        let container = Container {
            engine: crate::instance::Engine::Docker,
            id: "0".repeat(64),
        };
        let err = inspect(Path::new("/nonexistent/docker.sock"), &container, TIMEOUT).unwrap_err();
        assert!(matches!(err, EngineError::Io { .. }), "{err}");
    }
}
