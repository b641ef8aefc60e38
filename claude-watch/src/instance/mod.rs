//! Instance identity: which processes are Claude Code instances, and what to call each one.
//!
//! Everything here is pure except [`proc`], which reads `/proc`. An instance is named, in order:
//! 1. by its systemd unit, parsed from `/proc/<pid>/cgroup` ([`systemd_unit`]);
//! 2. by the first configured [`MatchRule`] that matches;
//! 3. by its PID (`pid:<pid>`).
//!
//! Processes that an instance spawns (shells, MCP servers, ripgrep, even the claude binary
//! re-executing itself as a helper) are never instances themselves ([`is_outermost`]).

pub mod proc;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use proc::{InstanceError, read_ancestry, read_process_info};

/// What a process is, as far as `/proc` tells: the inputs of [`identify`] and [`is_outermost`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id (thread group id), as the host sees it.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`); with `pid` it
    /// names a process uniquely, so a reused PID is told apart.
    pub start_time: u64,
    /// Target of `/proc/<pid>/exe`, with a trailing ` (deleted)` removed (binary replaced by an
    /// update while running).
    pub exe: PathBuf,
    /// `/proc/<pid>/cmdline`, split at NULs.
    pub cmdline: Vec<String>,
    /// Target of `/proc/<pid>/cwd`, when readable.
    pub cwd: Option<PathBuf>,
    /// Content of `/proc/<pid>/cgroup`.
    pub cgroup: String,
}

/// How an [`InstanceId`] was derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    /// The name is a systemd unit (`foo.service`).
    Unit,
    /// The name comes from a configured [`MatchRule`].
    Rule,
    /// The name is `pid:<pid>`: nothing better was known.
    Pid,
    /// The name is a container's (`docker:<name>`, `podman:<name>`).
    Container,
}

/// The stable name of one Claude Code instance (survives restarts of its process, except for
/// `pid:` names).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    /// The name: a unit name, a rule name, or `pid:<pid>`.
    pub name: String,
    /// Where the name came from.
    pub source: IdSource,
}

impl InstanceId {
    /// An instance named after a systemd unit.
    pub fn unit(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: IdSource::Unit,
        }
    }

    /// An instance named by a configured rule.
    pub fn rule(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: IdSource::Rule,
        }
    }

    /// The fallback name of a process without unit or rule.
    pub fn pid(pid: u32) -> Self {
        Self {
            name: format!("pid:{pid}"),
            source: IdSource::Pid,
        }
    }

    /// An instance named after the container it runs in, e.g. `docker:reviewer`.
    pub fn container(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: IdSource::Container,
        }
    }

    /// The systemd unit, when the name is one.
    pub fn unit_name(&self) -> Option<&str> {
        (self.source == IdSource::Unit).then_some(self.name.as_str())
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Which systemd manager owns a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Manager {
    /// The system manager (PID 1 of the host, or of the container / nested cgroup namespace
    /// whose path prefixes the unit).
    System,
    /// The per-user manager `user@<uid>.service`.
    User {
        /// The user id of that manager.
        uid: u32,
    },
}

/// A systemd unit a process lives in, as read from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdUnit {
    /// Unit name, e.g. `looper.service` or `agent@7.service`.
    pub name: String,
    /// The manager that owns it.
    pub manager: Manager,
    /// The cgroup path up to and including the unit, e.g. `/testbed/system.slice/looper.service`;
    /// a prefix before the `*.slice` chain means a nested manager (container, test bed).
    pub cgroup: String,
}

/// The systemd unit of a process from the content of `/proc/<pid>/cgroup`.
///
/// Uses the unified (`0::`) line, else the cgroup-v1 `name=systemd` line. The innermost
/// `*.service` segment wins, so a service inside a container (`docker-<id>.scope/system.slice/
/// x.service`) or inside a user manager (`user@1000.service/app.slice/x.service`) is found.
/// Returns `None` when there is no service, when a `*.scope` lies below the innermost service
/// (a transient scope: nothing to restart, and restarting the enclosing service, e.g. a user
/// manager, would hit far more than the instance), and for `user@<uid>.service` itself.
/// Sub-cgroups below a service (`Delegate=yes`) still belong to it.
pub fn systemd_unit(cgroup: &str) -> Option<SystemdUnit> {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            cgroup.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
                (ctrl == "name=systemd").then_some(path)
            })
        })?
        .trim();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let idx = segments.iter().rposition(|s| s.ends_with(".service"))?;
    if segments[idx + 1..].iter().any(|s| s.ends_with(".scope")) {
        return None;
    }
    let name = segments[idx];
    if user_manager_uid(name).is_some() {
        return None;
    }
    let manager = segments[..idx]
        .iter()
        .rev()
        .find_map(|s| user_manager_uid(s))
        .map_or(Manager::System, |uid| Manager::User { uid });
    Some(SystemdUnit {
        name: name.to_owned(),
        manager,
        cgroup: format!("/{}", segments[..=idx].join("/")),
    })
}

/// The container engine a process runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Docker (`/docker/<id>` with the cgroupfs driver, `docker-<id>.scope` with systemd's).
    Docker,
    /// Podman (`libpod-<id>.scope`, `/libpod_parent/libpod-<id>`).
    Podman,
}

impl Engine {
    /// The prefix of instance names in this engine (`docker`, `podman`).
    pub fn label(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// A container a process runs in, as read from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Container {
    /// Which engine.
    pub engine: Engine,
    /// The full container id (64 hex digits).
    pub id: String,
}

impl Container {
    /// The first 12 digits of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

/// The container of a process from the content of `/proc/<pid>/cgroup`: the innermost path
/// segment naming a Docker or Podman container id (`/docker/<id>`, `docker-<id>.scope`,
/// `libpod-<id>.scope`, `libpod-<id>`). Only 64-hex-digit ids count, so a process cannot name
/// a container by choosing a cgroup called `docker-x`.
pub fn container(cgroup: &str) -> Option<Container> {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| cgroup.lines().find_map(|l| l.splitn(3, ':').nth(2)))?
        .trim();
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, seg)| {
            let scoped = |prefix: &str| {
                seg.strip_prefix(prefix)
                    .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
                    .filter(|id| is_id(id))
            };
            if let Some(id) = scoped("docker-") {
                return Some((Engine::Docker, id));
            }
            if let Some(id) = scoped("libpod-") {
                return Some((Engine::Podman, id));
            }
            (is_id(seg) && i > 0 && segments[i - 1] == "docker").then_some((Engine::Docker, *seg))
        })
        .map(|(engine, id)| Container {
            engine,
            id: id.to_ascii_lowercase(),
        })
}

/// `Some(uid)` for `user@<uid>.service`.
fn user_manager_uid(segment: &str) -> Option<u32> {
    segment
        .strip_prefix("user@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

/// A configured rule naming the processes it matches. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRule {
    /// Instance name given to matching processes.
    pub name: String,
    /// Glob over the executable path (`*` any run of characters including `/`, `?` one).
    #[serde(default)]
    pub exe: Option<String>,
    /// Substring one of the arguments (after argv\[0\]) must contain.
    #[serde(default)]
    pub arg: Option<String>,
    /// Substring of the cgroup file content.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Working directory: the process's cwd must be this directory or below it.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

impl MatchRule {
    /// Whether the process satisfies every condition of the rule.
    pub fn matches(&self, p: &ProcessInfo) -> bool {
        self.exe
            .as_deref()
            .is_none_or(|g| glob_match(g, &p.exe.to_string_lossy()))
            && self
                .arg
                .as_deref()
                .is_none_or(|a| p.cmdline.iter().skip(1).any(|x| x.contains(a)))
            && self.cgroup.as_deref().is_none_or(|c| p.cgroup.contains(c))
            && self
                .cwd
                .as_deref()
                .is_none_or(|dir| p.cwd.as_deref().is_some_and(|cwd| cwd.starts_with(dir)))
    }
}

/// The instance a (claude) process belongs to: its systemd unit, else the first matching rule,
/// else `pid:<pid>`.
pub fn identify(p: &ProcessInfo, rules: &[MatchRule]) -> InstanceId {
    if let Some(unit) = systemd_unit(&p.cgroup) {
        return InstanceId::unit(unit.name);
    }
    rules
        .iter()
        .find(|r| r.matches(p))
        .map_or_else(|| InstanceId::pid(p.pid), |r| InstanceId::rule(&r.name))
}

/// How a process runs Claude Code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaudeKind {
    /// The native (Bun single-file) executable.
    Native,
    /// `cli.js` (or the npm `claude` shim) run by node or bun.
    Script,
}

/// Whether a process runs Claude Code, from its executable path and command line alone.
///
/// Native: an executable named `claude` anywhere (npm's `@anthropic-ai/claude-code-linux-x64/
/// claude`, `~/.local/bin/claude`, `~/.claude/local/claude`), or a file in a `versions`
/// directory under a `claude` directory (the native installer's `~/.local/share/claude/versions/
/// <version>`). Script: a `node`/`bun` executable whose script argument is
/// `.../@anthropic-ai/claude-code/cli.js` (or `cli.mjs`) or the npm shim named `claude`.
pub fn classify(exe: &Path, cmdline: &[String]) -> Option<ClaudeKind> {
    let file = exe.file_name()?.to_string_lossy();
    if file == "claude" {
        return Some(ClaudeKind::Native);
    }
    let parent = exe.parent();
    if parent
        .and_then(Path::file_name)
        .is_some_and(|p| p == "versions")
        && parent
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .is_some_and(|g| {
                g.to_string_lossy()
                    .trim_start_matches('.')
                    .starts_with("claude")
            })
    {
        return Some(ClaudeKind::Native);
    }
    let interpreter = file.starts_with("node") || file == "bun";
    if interpreter {
        let script = cmdline.iter().skip(1).find(|a| !a.starts_with('-'))?;
        let is_cli = script.ends_with("claude-code/cli.js")
            || script.ends_with("claude-code/cli.mjs")
            || Path::new(script).file_name().is_some_and(|f| f == "claude");
        return is_cli.then_some(ClaudeKind::Script);
    }
    None
}

/// Whether a claude process is an instance of its own: none of its ancestors runs Claude Code
/// (`is_claude` tells, by name or content). A claude process started by another one (a helper
/// the binary spawns from itself, or `claude -p` run from an agent's shell) belongs to the
/// outer instance.
///
/// `ancestors` is the parent chain, nearest first (see [`read_ancestry`]).
pub fn is_outermost(
    ancestors: &[ProcessInfo],
    is_claude: impl FnMut(&ProcessInfo) -> bool,
) -> bool {
    !ancestors.iter().any(is_claude)
}

/// Glob match with `*` (any run, `/` included) and `?` (one character).
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests;
