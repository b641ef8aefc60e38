//! Claude Code's own supervisor for its background sessions: `claude respawn <short id>`.
//!
//! A background worker (see [`crate::instance::bg`]) is restarted by asking Claude Code's daemon,
//! through the `claude` binary the worker runs, as the session's owner:
//!
//! 1. the target's pid still has its start time, and its owner (uid, gid, groups from
//!    `/proc/<pid>/status`) is the session's;
//! 2. `claude agents --json`, run as that owner with only `HOME`, `CLAUDE_CONFIG_DIR` (from the
//!    worker's environment) and a fixed `PATH`, must map the session's short id to the latched
//!    pid and session id (the ownership check, right before acting);
//! 3. `claude respawn <short id>`, argv only, no shell, with a timeout;
//! 4. `claude agents --json` again until the id maps to a new pid, which is returned (the core
//!    then waits for that process's own answer).
//!
//! `respawn` keeps the session id: a latch bound upstream to the session follows it. Nothing
//! here knows whether it healed; the core confirms by the new process's own answer.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use super::{RestartOutcome, Restarter, SuperviseError, Target};
use crate::instance::Placement;
use crate::instance::bg::{self, BgSession};
use crate::instance::proc::{self, Owner};
pub use claude_watch_core::supervise::ClaudeBgRestarter;

/// Longest output of `claude agents --json` read.
const AGENTS_MAX: u64 = 1024 * 1024;
/// `PATH` the owner's `claude` runs with (it needs no user-controlled path).
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long to wait for `claude agents` to list the respawned worker.
const NEW_PID_WAIT: Duration = Duration::from_secs(10);

/// One session as `claude agents --json` lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// The worker's pid.
    pub pid: Option<u32>,
    /// The short id.
    pub id: String,
    /// The session id.
    pub session_id: Option<String>,
}

/// The sessions of a `claude agents --json` output (`None` when it is not a JSON array of
/// sessions).
pub fn parse_agents(out: &[u8]) -> Option<Vec<Agent>> {
    serde_json::from_slice(out).ok()
}

/// What `claude agents --json` says instead of "this session runs as this process"
/// ([`owns`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotOwned {
    /// The short id is not listed.
    #[error("no session {short_id} is listed")]
    NotListed {
        /// The session's short id.
        short_id: String,
    },
    /// The short id is listed with another session id.
    #[error("session {short_id} is listed with another session id")]
    OtherSession {
        /// The session's short id.
        short_id: String,
    },
    /// The session runs as another process.
    #[error("session {short_id} runs as pid {listed}, not {pid}")]
    OtherPid {
        /// The session's short id.
        short_id: String,
        /// The pid listed.
        listed: u32,
        /// The latched process.
        pid: u32,
    },
    /// The session is listed without a process.
    #[error("session {short_id} has no process")]
    NoProcess {
        /// The session's short id.
        short_id: String,
    },
}

/// Whether `agents` maps `session` to `pid`: the id and the session id listed together with
/// exactly that pid.
///
/// # Errors
/// [`NotOwned`]: what the list says about the id instead, for the refusal.
pub fn owns(agents: &[Agent], session: &BgSession, pid: u32) -> Result<(), NotOwned> {
    let short_id = session.short_id.clone();
    let Some(agent) = agents.iter().find(|a| a.id == short_id) else {
        return Err(NotOwned::NotListed { short_id });
    };
    if agent.session_id.as_deref() != Some(session.session_id.as_str()) {
        return Err(NotOwned::OtherSession { short_id });
    }
    match agent.pid {
        Some(listed) if listed == pid => Ok(()),
        Some(listed) => Err(NotOwned::OtherPid {
            short_id,
            listed,
            pid,
        }),
        None => Err(NotOwned::NoProcess { short_id }),
    }
}

/// The pid `agents` lists for `short_id` when it is another than `old`.
pub fn respawned_pid(agents: &[Agent], short_id: &str, old: u32) -> Option<u32> {
    agents
        .iter()
        .find(|a| a.id == short_id)
        .and_then(|a| a.pid)
        .filter(|p| *p != old)
}

/// The short id `claude --bg` prints (`backgrounded · 178f1db4 (idle — send a prompt to
/// start)`), when it looks like one.
pub fn backgrounded_id(out: &str) -> Option<String> {
    let rest = out.split("backgrounded ·").nth(1)?;
    let id = rest.split_whitespace().next()?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// How the owner's `claude` is run: which binary, as whom, with what environment.
struct AsOwner {
    exe: PathBuf,
    owner: Owner,
    env: Vec<(&'static str, PathBuf)>,
    timeout: Duration,
}

impl AsOwner {
    /// Runs `claude <args>` as the owner; its standard output (bounded) when it exits 0.
    async fn run(&self, args: &[&str]) -> Result<Vec<u8>, SuperviseError> {
        self.run_in(Path::new("/"), args).await
    }

    /// Runs `claude <args>` as the owner in directory `cwd`.
    async fn run_in(&self, cwd: &Path, args: &[&str]) -> Result<Vec<u8>, SuperviseError> {
        let program = format!("claude {}", args.first().copied().unwrap_or_default());
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdout(Stdio::piped());
        super::drop_to_owner(
            &mut command,
            self.owner.uid,
            self.owner.gid,
            &self.owner.groups,
        );
        let (status, mut out, said) = super::run_bounded(
            &mut command,
            &program,
            program.clone(),
            self.timeout,
            AGENTS_MAX,
        )
        .await?;
        if !status.success() {
            return Err(SuperviseError::CommandFailed {
                program,
                status,
                said,
            });
        }
        // Longer output is cut, not refused: it reads as no list of agents.
        out.truncate(usize::try_from(AGENTS_MAX).unwrap_or(usize::MAX));
        Ok(out)
    }

    async fn agents(&self) -> Result<Vec<Agent>, SuperviseError> {
        let out = self.run(&["agents", "--json"]).await?;
        parse_agents(&out).ok_or_else(|| SuperviseError::CommandFailed {
            program: "claude agents --json (unreadable output)".into(),
            status: std::process::ExitStatus::from_raw(0),
            said: String::new(),
        })
    }
}

/// Reads what acting as the owner of `pid` needs: the binary it runs, its owner, and its
/// `HOME` / `CLAUDE_CONFIG_DIR` (nothing else of its environment).
fn as_owner(pid: u32, session: &BgSession, timeout: Duration) -> Result<AsOwner, SuperviseError> {
    let refuse = |detail: String| SuperviseError::BgSessionNotOwned {
        instance: format!("claude-bg:{}", session.short_id),
        pid,
        detail,
    };
    let owner = proc::owner(pid)?;
    if owner.uid != session.uid {
        return Err(refuse(format!(
            "the process is owned by uid {}, the session by uid {}",
            owner.uid, session.uid
        )));
    }
    let exe = proc::exe(pid)?;
    if exe.to_string_lossy().ends_with(" (deleted)") || !exe.is_absolute() {
        return Err(refuse(format!("its binary {} is gone", exe.display())));
    }
    let environ = proc::environ(std::path::Path::new(proc::ROOT), pid)?;
    let (home, config) = bg::parse_config_env(&environ);
    drop(environ);
    let mut env = Vec::new();
    if let Some(home) = home.filter(|h| h.is_absolute()) {
        env.push(("HOME", home));
    }
    if let Some(config) = config.filter(|c| c.is_absolute()) {
        env.push(("CLAUDE_CONFIG_DIR", config));
    }
    Ok(AsOwner {
        exe,
        owner,
        env,
        timeout,
    })
}

impl Restarter for ClaudeBgRestarter {
    #[tracing::instrument(skip_all, fields(instance = %target.instance, pid = target.pid))]
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        let Placement::ClaudeBg(session) = &target.placement else {
            return Err(SuperviseError::NotBgSession {
                instance: target.instance.clone(),
                pid: target.pid,
            });
        };
        let pid = target.pid;
        super::verify_start_time(pid, target.start_time)?;
        let claude = as_owner(pid, session, self.timeout)?;
        // The ownership check, right before acting: Claude Code's daemon must say this session
        // runs as exactly this process.
        let agents = claude.agents().await?;
        owns(&agents, session, pid).map_err(|e| not_owned(target, e.to_string()))?;
        super::verify_start_time(pid, target.start_time)?;
        if self.fresh_session {
            return fresh(self, &claude, session, target).await;
        }
        tracing::info!(id = %session.short_id, uid = claude.owner.uid, "claude respawn");
        claude.run(&["respawn", &session.short_id]).await?;
        let new_pid = new_pid(self, &claude, &session.short_id, pid).await;
        Ok(RestartOutcome::acted(
            None,
            new_pid,
            format!(
                "claude respawn {} as uid {}: pid {pid} -> {}",
                session.short_id,
                claude.owner.uid,
                new_pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
            ),
        ))
    }
}

/// The refusal for `target`: Claude Code's daemon does not say its session runs as its process.
fn not_owned(target: &Target, detail: String) -> SuperviseError {
    SuperviseError::BgSessionNotOwned {
        instance: target.instance.clone(),
        pid: target.pid,
        detail,
    }
}

/// `claude stop <id>`, then `claude --bg` (no prompt: the new session waits for its first
/// turn) in the session's directory, as the owner; the new session's worker pid.
async fn fresh(
    r: &ClaudeBgRestarter,
    claude: &AsOwner,
    session: &BgSession,
    target: &Target,
) -> Result<RestartOutcome, SuperviseError> {
    let refuse = |detail: &str| not_owned(target, detail.to_owned());
    let cwd = session
        .cwd
        .clone()
        .filter(|c| c.is_dir())
        .ok_or_else(|| refuse("its working directory is unknown or gone"))?;
    tracing::info!(id = %session.short_id, uid = claude.owner.uid, "claude stop, then a fresh claude --bg");
    claude.run(&["stop", &session.short_id]).await?;
    let out = claude.run_in(&cwd, &["--bg"]).await?;
    let new_id = backgrounded_id(&String::from_utf8_lossy(&out))
        .ok_or_else(|| refuse("`claude --bg` printed no session id"))?;
    let new_pid = new_pid(r, claude, &new_id, target.pid).await;
    Ok(RestartOutcome::acted(
        None,
        new_pid,
        format!(
            "claude stop {} and a fresh claude --bg in {} as uid {}: session {new_id}, pid {}",
            session.short_id,
            cwd.display(),
            claude.owner.uid,
            new_pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        ),
    ))
}

/// The pid session `id` runs as now, other than `old_pid`, as `claude agents --json` lists
/// it: asked every 200 ms for at most `NEW_PID_WAIT` (or the restart timeout); `None` when
/// it did not appear (discovery still finds it).
async fn new_pid(r: &ClaudeBgRestarter, claude: &AsOwner, id: &str, old_pid: u32) -> Option<u32> {
    let deadline = tokio::time::Instant::now() + NEW_PID_WAIT.min(r.timeout);
    loop {
        if let Ok(agents) = claude.agents().await
            && let Some(pid) = respawned_pid(&agents, id, old_pid)
        {
            return Some(pid);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `claude agents --json` of Claude Code 2.1.332 with two background sessions.
    const AGENTS: &str = r#"[
  {"pid": 31018, "id": "5c56ca27", "cwd": "/tmp/bgx/work/a", "kind": "background",
   "startedAt": 1796035248369, "sessionId": "5c56ca27-6d9f-488a-9038-47f736b1ab43",
   "name": "hello from the stand-in.", "status": "idle", "state": "working"},
  {"pid": 31022, "id": "dfe38d22", "cwd": "/tmp/bgx/work/b", "kind": "background",
   "startedAt": 1796035269628, "sessionId": "dfe38d22-09dc-4ff1-a4c5-49152ec80492",
   "name": "task b", "status": "busy", "state": "working"}
]"#;

    fn session(short: &str, id: &str) -> BgSession {
        BgSession {
            short_id: short.into(),
            session_id: id.into(),
            name: None,
            cwd: None,
            uid: 0,
            config_dir: PathBuf::from("/h/.claude"),
        }
    }

    #[test]
    fn the_listed_pid_must_be_the_latched_one() {
        let agents = parse_agents(AGENTS.as_bytes()).unwrap();
        let b = session("dfe38d22", "dfe38d22-09dc-4ff1-a4c5-49152ec80492");
        assert_eq!(owns(&agents, &b, 31022), Ok(()));
        let elsewhere = owns(&agents, &b, 31018).unwrap_err();
        assert_eq!(
            elsewhere,
            NotOwned::OtherPid {
                short_id: "dfe38d22".into(),
                listed: 31022,
                pid: 31018
            }
        );
        assert_eq!(
            elsewhere.to_string(),
            "session dfe38d22 runs as pid 31022, not 31018"
        );
        let gone = session("0badc0de", "0badc0de-09dc-4ff1-a4c5-49152ec80492");
        assert!(matches!(
            owns(&agents, &gone, 31022),
            Err(NotOwned::NotListed { .. })
        ));
        let other = session("dfe38d22", "dfe38d22-0000-4ff1-a4c5-49152ec80492");
        assert!(matches!(
            owns(&agents, &other, 31022),
            Err(NotOwned::OtherSession { .. })
        ));
        assert_eq!(parse_agents(b"not json"), None);
    }

    #[test]
    fn the_respawned_pid_is_a_new_one() {
        let agents = parse_agents(AGENTS.as_bytes()).unwrap();
        assert_eq!(respawned_pid(&agents, "dfe38d22", 31022), None);
        assert_eq!(respawned_pid(&agents, "dfe38d22", 30000), Some(31022));
        assert_eq!(respawned_pid(&agents, "nope", 1), None);
    }

    #[test]
    fn the_new_session_id_from_claude_bg() {
        let out = "backgrounded · 178f1db4 (idle — send a prompt to start)\n  claude agents  list sessions\n";
        assert_eq!(backgrounded_id(out).as_deref(), Some("178f1db4"));
        assert_eq!(
            backgrounded_id("backgrounded · 5c56ca27\n").as_deref(),
            Some("5c56ca27")
        );
        assert_eq!(backgrounded_id("backgrounded · ../../x\n"), None);
        assert_eq!(backgrounded_id("Not logged in"), None);
    }
}
