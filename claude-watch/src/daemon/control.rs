//! The control socket: a Unix stream socket, root-only by default, that answers `status` with
//! the latest [`Snapshot`] as one JSON document. Nothing observed is ever executed or
//! interpolated here: the socket only reads.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::debug;

use super::status::Snapshot;

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon is answering on the socket.
    #[error("{path}: another claude-watch daemon is already running (its control socket answers)")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Creating, binding or securing the socket failed.
    #[error("{path}: cannot create the control socket")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket is there but only root may talk to it.
    #[error(
        "{path}: permission denied: the daemon's control socket is root's; run `sudo claude-watch status`"
    )]
    Denied {
        /// The socket.
        path: PathBuf,
    },
    /// No daemon answers there.
    #[error(
        "no claude-watch daemon answers on {path} (is it running? `cargo xtask run`, or `systemctl status claude-watch`)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The daemon's answer could not be read.
    #[error("reading the daemon's answer on {path}")]
    Answer {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The daemon answered something that is not a status document.
    #[error("the daemon's answer on {path} is not a status document")]
    NotStatus {
        /// The socket.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// Binds the socket with mode 0600 in a directory of mode 0700 (created if missing). A stale
/// socket file from a crashed daemon is replaced; a live one is refused.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Answers every connection with the latest snapshot until the task is dropped.
pub async fn serve(listener: UnixListener, snapshots: watch::Receiver<Arc<Snapshot>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let snapshot = snapshots.borrow().clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &snapshot).await {
                debug!("control client went away: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, snapshot: &Snapshot) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(256);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let body = match line.trim() {
        "status" => serde_json::to_string(snapshot).map_err(io::Error::other)?,
        other => {
            serde_json::json!({ "error": format!("unknown request {other:?}; known: status") })
                .to_string()
        }
    };
    write.write_all(body.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Asks the daemon at `path` for its status (client side, blocking).
pub fn query_status(path: &Path) -> Result<Snapshot, ControlError> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            ControlError::Denied {
                path: path.to_owned(),
            }
        } else {
            ControlError::Connect {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let answer_err = |source: io::Error| ControlError::Answer {
        path: path.to_owned(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(answer_err)?;
    stream.write_all(b"status\n").map_err(answer_err)?;
    let mut body = String::new();
    stream.read_to_string(&mut body).map_err(answer_err)?;
    serde_json::from_str(&body).map_err(|source| ControlError::NotStatus {
        path: path.to_owned(),
        source,
    })
}
