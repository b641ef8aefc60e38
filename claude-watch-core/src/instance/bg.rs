//! Claude Code's own background sessions (`claude --bg`, seen with 2.1.332).
//!
//! `claude --bg "task"` leaves this tree (every process runs `bin/claude.exe`; the titles are
//! what the processes write over their `argv[0]`):
//!
//! ```text
//! claude.exe daemon run --origin transient --spawned-by {...}           the daemon
//!  \_ claude bg-pty-host --bg-pty-host <dir>/spare/<x>.pty.sock ... -- claude.exe --bg-spare <claim.sock>
//!  |   \_ claude bg-spare --bg-spare <claim.sock>                        a worker once claimed
//!  \_ claude bg-pty-host ... -- claude.exe --bg-spare <claim.sock>
//!      \_ claude bg-spare --bg-spare <claim.sock>                        an unclaimed spare
//! ```
//!
//! Every session runs in a pre-started spare: a claimed spare becomes the worker and keeps its
//! `bg-spare` argv, so argv alone cannot tell a worker from a spare. The worker writes
//! `<config dir>/sessions/<pid>.json` (`pid`, `procStart` = field 22 of its `stat`,
//! `sessionId`, `jobId` = the short id, `cwd`, `name`, `kind: "bg"`); [`parse_session_file`]
//! reads it, and discovery does the bounded I/O around it. `claude respawn <short id>` claims
//! another spare: new pid, same session id.
//!
//! [`role`] is the pure rule: the daemon and the pty hosts are never instances; a spare (or a
//! `--session-id` process under a pty host) is a worker candidate, an instance of its own once
//! its session file names it; anything a worker spawns stays part of the worker.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ProcessInfo;

/// Largest session file read (they are about 600 bytes).
pub const SESSION_FILE_MAX: u64 = 64 * 1024;
/// Longest session name kept.
const NAME_MAX: usize = 128;

/// A background session of Claude Code's daemon, as its worker's session file tells.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BgSession {
    /// The short id `claude agents` lists and `claude respawn` takes (8 hex digits).
    pub short_id: String,
    /// The session id (a UUID), which `claude respawn` keeps.
    pub session_id: String,
    /// The session's name (set by Claude Code from the task), when it has one.
    pub name: Option<String>,
    /// The session's working directory.
    pub cwd: Option<PathBuf>,
    /// The owner (real uid of the worker), as whom `claude` is run to act on the session.
    pub uid: u32,
    /// The owner's Claude Code configuration directory (`$CLAUDE_CONFIG_DIR`, else
    /// `$HOME/.claude`) the session file was read from.
    pub config_dir: PathBuf,
}

/// What a claude process is in the background-session machinery, from its argv alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BgRole {
    /// `claude.exe daemon run ...`: the background service.
    Daemon,
    /// `claude bg-pty-host --bg-pty-host ...`: holds one session's terminal.
    PtyHost,
    /// `claude bg-spare --bg-spare <claim.sock>`: a pre-started spare, or a claimed one (a
    /// worker).
    Spare,
}

/// The background-session role `cmdline` names, if any.
pub fn bg_role(cmdline: &[String]) -> Option<BgRole> {
    let title = cmdline.first().map(String::as_str).unwrap_or_default();
    let arg = |i: usize| cmdline.get(i).map(String::as_str);
    if arg(1) == Some("daemon") && arg(2) == Some("run") {
        return Some(BgRole::Daemon);
    }
    if title.starts_with("claude bg-pty-host") || arg(1) == Some("--bg-pty-host") {
        return Some(BgRole::PtyHost);
    }
    if title.starts_with("claude bg-spare") || arg(1) == Some("--bg-spare") {
        return Some(BgRole::Spare);
    }
    None
}

/// Claude Code's own subcommands that manage it rather than run an agent (as `claude --help`
/// 2.1.332 lists them, with older names): short-lived tools, never instances.
pub const TOOL_COMMANDS: [&str; 23] = [
    "agents",
    "attach",
    "auth",
    "auto-mode",
    "config",
    "doctor",
    "gateway",
    "import",
    "install",
    "kill",
    "logs",
    "mcp",
    "migrate-installer",
    "plugin",
    "plugins",
    "purge",
    "respawn",
    "rm",
    "setup-token",
    "stop",
    "ultrareview",
    "update",
    "upgrade",
];

/// The Claude Code subcommand `cmdline` runs when it is one of [`TOOL_COMMANDS`]: the first
/// argument (after the script under a runtime: `node .../cli.js agents`).
pub fn tool_command(cmdline: &[String]) -> Option<&str> {
    let rest = cmdline.get(1..)?;
    let is_script = |a: &String| {
        a.ends_with("cli.js")
            || a.ends_with("cli.mjs")
            || Path::new(a).file_name().is_some_and(|f| f == "claude")
    };
    let rest = rest
        .iter()
        .position(is_script)
        .map_or(rest, |i| &rest[i + 1..]);
    let first = rest.first()?.as_str();
    TOOL_COMMANDS.contains(&first).then_some(first)
}

/// Which part a claude process plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An instance of its own: no claude ancestor.
    Outermost,
    /// Part of the claude instance above it (a helper it spawned, `claude -p` from its shell).
    Helper,
    /// One of Claude Code's own management commands (`claude agents`, `claude respawn`...):
    /// a short-lived tool, never an instance.
    Tool,
    /// Claude Code's background machinery (daemon, pty host, or something they run that is not
    /// a session): never an instance.
    BgMachinery,
    /// A background worker if its session file names it (a claimed spare), else an unclaimed
    /// spare (machinery): the caller looks ([`parse_session_file`]).
    BgCandidate,
}

/// The role of claude process `p` whose parent chain (nearest first) is `ancestors`;
/// `is_claude` tells which ancestors run Claude Code.
pub fn role(
    p: &ProcessInfo,
    ancestors: &[ProcessInfo],
    mut is_claude: impl FnMut(&ProcessInfo) -> bool,
) -> Role {
    let mut claude_ancestors = ancestors.iter().filter(|a| is_claude(a));
    let nearest = claude_ancestors.next();
    let nearest_role = nearest.and_then(|a| bg_role(&a.cmdline));
    match bg_role(&p.cmdline) {
        Some(BgRole::Daemon | BgRole::PtyHost) => return Role::BgMachinery,
        Some(BgRole::Spare) => return Role::BgCandidate,
        None => {}
    }
    if nearest.is_none() && tool_command(&p.cmdline).is_some() {
        return Role::Tool;
    }
    match nearest_role {
        // The older layout: the pty host runs `claude.exe --session-id <uuid> <prompt>`.
        Some(BgRole::PtyHost) if p.cmdline.iter().any(|a| a == "--session-id") => Role::BgCandidate,
        Some(BgRole::Daemon | BgRole::PtyHost) => Role::BgMachinery,
        Some(BgRole::Spare) | None if nearest.is_some() => Role::Helper,
        _ => Role::Outermost,
    }
}

/// The configuration directory a worker's session file is in: `CLAUDE_CONFIG_DIR` when set,
/// else `HOME/.claude` (`None` without either, or with a relative path).
pub fn config_dir(home: Option<&Path>, claude_config_dir: Option<&Path>) -> Option<PathBuf> {
    match (claude_config_dir, home) {
        (Some(dir), _) if dir.is_absolute() => Some(dir.to_owned()),
        (Some(_), _) => None,
        (None, Some(home)) if home.is_absolute() => Some(home.join(".claude")),
        _ => None,
    }
}

/// `HOME` and `CLAUDE_CONFIG_DIR` from an environment block (`KEY=value` entries split at
/// NULs), the only variables read: the rest (credentials among them) is skipped by key.
pub fn parse_config_env(raw: &[u8]) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut home, mut config) = (None, None);
    for entry in raw.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let slot = match &entry[..eq] {
            b"HOME" => &mut home,
            b"CLAUDE_CONFIG_DIR" => &mut config,
            _ => continue,
        };
        let value = &entry[eq + 1..];
        if let Ok(v) = std::str::from_utf8(value)
            && !v.is_empty()
            && v.len() <= 4096
            && !v.chars().any(char::is_control)
        {
            *slot = Some(PathBuf::from(v));
        }
    }
    (home, config)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionFile {
    pid: u32,
    proc_start: Option<String>,
    session_id: String,
    job_id: Option<String>,
    cwd: Option<String>,
    name: Option<String>,
    kind: Option<String>,
}

/// The background session of process `pid` (started at `start_time`, owned by `uid`) from the
/// content of its session file, read from `config_dir`. `None` unless the file names exactly
/// this process (`pid` and `procStart`), says `kind: "bg"`, and carries a UUID session id: a
/// file of another process, an earlier one with the same pid, or a foreground session does not
/// make a worker. The name is dropped when it is long or holds control characters.
pub fn parse_session_file(
    raw: &[u8],
    pid: u32,
    start_time: u64,
    uid: u32,
    config_dir: &Path,
) -> Option<BgSession> {
    let file: SessionFile = serde_json::from_slice(raw).ok()?;
    if file.pid != pid
        || file.proc_start.as_deref() != Some(start_time.to_string().as_str())
        || file.kind.as_deref() != Some("bg")
        || !is_uuid(&file.session_id)
    {
        return None;
    }
    let session_id = file.session_id.to_ascii_lowercase();
    let short_id = file
        .job_id
        .map(|j| j.to_ascii_lowercase())
        .filter(|j| j.len() == 8 && session_id.starts_with(j.as_str()))
        .unwrap_or_else(|| session_id[..8].to_owned());
    let name = file
        .name
        .filter(|n| !n.is_empty() && n.len() <= NAME_MAX && !n.chars().any(char::is_control));
    let cwd = file
        .cwd
        .filter(|c| c.starts_with('/') && c.len() <= 4096 && !c.chars().any(char::is_control))
        .map(PathBuf::from);
    Some(BgSession {
        short_id,
        session_id,
        name,
        cwd,
        uid,
        config_dir: config_dir.to_owned(),
    })
}

/// Whether `s` is a UUID in its 8-4-4-4-12 hex form.
pub(super) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/usr/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe";

    fn proc(pid: u32, ppid: u32, argv: &[&str]) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            exe: PathBuf::from(EXE),
            cmdline: argv.iter().map(|s| (*s).to_owned()).collect(),
            ..ProcessInfo::default()
        }
    }

    // The argv shapes seen with Claude Code 2.1.332 (`ps`, `/proc/<pid>/cmdline`).
    fn daemon() -> ProcessInfo {
        proc(
            30999,
            1,
            &[
                EXE,
                "daemon",
                "run",
                "--origin",
                "transient",
                "--spawned-by",
                r#"{"label":"claude --bg","cwd":"/tmp/bgx/work/a","pid":30989}"#,
            ],
        )
    }
    fn pty_host(pid: u32) -> ProcessInfo {
        proc(
            pid,
            30999,
            &[
                "claude bg-pty-host",
                "--bg-pty-host",
                "/tmp/cc-daemon-0/4ef69446/spare/eae8f116.pty.sock",
                "200",
                "50",
                "--",
                EXE,
                "--bg-spare",
                "/tmp/cc-daemon-0/4ef69446/spare/eae8f116.claim.sock",
            ],
        )
    }
    fn spare(pid: u32, ppid: u32) -> ProcessInfo {
        proc(
            pid,
            ppid,
            &[
                "claude bg-spare",
                "--bg-spare",
                "/tmp/cc-daemon-0/4ef69446/spare/eae8f116.claim.sock",
            ],
        )
    }

    fn role_of(p: &ProcessInfo, ancestors: &[ProcessInfo]) -> Role {
        role(p, ancestors, |a| a.exe == Path::new(EXE))
    }

    #[test]
    fn roles_from_real_argv_shapes() {
        assert_eq!(bg_role(&daemon().cmdline), Some(BgRole::Daemon));
        assert_eq!(bg_role(&pty_host(31007).cmdline), Some(BgRole::PtyHost));
        assert_eq!(bg_role(&spare(31018, 31007).cmdline), Some(BgRole::Spare));
        // Before the spare sets its title.
        let raw = proc(31018, 31007, &[EXE, "--bg-spare", "/tmp/x.claim.sock"]);
        assert_eq!(bg_role(&raw.cmdline), Some(BgRole::Spare));
        let plain = proc(1, 0, &["claude", "-p", "bg-spare daemon run"]);
        assert_eq!(bg_role(&plain.cmdline), None);
    }

    #[test]
    fn daemon_and_pty_hosts_are_machinery_spares_are_candidates() {
        assert_eq!(role_of(&daemon(), &[]), Role::BgMachinery);
        assert_eq!(role_of(&pty_host(31007), &[daemon()]), Role::BgMachinery);
        assert_eq!(
            role_of(&spare(31018, 31007), &[pty_host(31007), daemon()]),
            Role::BgCandidate
        );
        // The layout the issue saw: the pty host runs `claude.exe --session-id <uuid> <prompt>`.
        let worker = proc(
            31018,
            31007,
            &[
                EXE,
                "--session-id",
                "61c63f33-7c4c-4f86-9c8f-dc44b6538f0a",
                "say hi",
            ],
        );
        assert_eq!(
            role_of(&worker, &[pty_host(31007), daemon()]),
            Role::BgCandidate
        );
        // Something else the daemon runs that is not a session: machinery too.
        let other = proc(31100, 30999, &[EXE, "--version"]);
        assert_eq!(role_of(&other, &[daemon()]), Role::BgMachinery);
    }

    #[test]
    fn claude_code_s_own_commands_are_tools_not_instances() {
        for argv in [
            &[EXE, "agents", "--json"][..],
            &[EXE, "attach", "ab12"],
            &[EXE, "respawn", "--all"],
            &[
                "node",
                "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
                "stop",
                "ab12",
            ],
            &[
                "node",
                "--no-warnings",
                "/usr/local/bin/claude",
                "mcp",
                "list",
            ],
        ] {
            let p = proc(33000, 1, argv);
            assert_eq!(role_of(&p, &[]), Role::Tool, "{argv:?}");
        }
        for argv in [
            &[EXE][..],
            &[EXE, "-p", "agents"],
            &[EXE, "--resume"],
            &[
                "node",
                "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
                "-p",
                "stop",
            ],
        ] {
            let p = proc(33001, 1, argv);
            assert_eq!(role_of(&p, &[]), Role::Outermost, "{argv:?}");
        }
    }

    #[test]
    fn helpers_of_a_worker_stay_part_of_it_and_plain_claude_is_outermost() {
        let helper = proc(32000, 31018, &[EXE, "-p", "summarise"]);
        let chain = [spare(31018, 31007), pty_host(31007), daemon()];
        assert_eq!(role_of(&helper, &chain), Role::Helper);
        // A shell in between does not matter.
        let shell = ProcessInfo {
            exe: PathBuf::from("/bin/bash"),
            ..proc(31999, 31018, &["bash"])
        };
        let mut deeper = vec![shell];
        deeper.extend(chain);
        assert_eq!(role_of(&helper, &deeper), Role::Helper);
        let lone = proc(500, 1, &["claude", "-p", "hi"]);
        assert_eq!(role_of(&lone, &[]), Role::Outermost);
        assert_eq!(role_of(&helper, &[lone]), Role::Helper);
    }

    #[test]
    fn a_title_without_a_claude_parent_does_not_make_machinery() {
        // A non-claude parent that calls itself a pty host changes nothing for its child.
        let fake_host = ProcessInfo {
            exe: PathBuf::from("/usr/bin/python3"),
            ..pty_host(700)
        };
        let child = proc(701, 700, &["claude", "--session-id", "x"]);
        assert_eq!(role_of(&child, &[fake_host]), Role::Outermost);
    }

    // `~/.claude/sessions/31018.json` as 2.1.332 wrote it.
    const FILE: &str = r#"{"pid":31018,"sessionId":"5c56ca27-6d9f-488a-9038-47f736b1ab43","cwd":"/tmp/bgx/work/a","startedAt":1796035248369,"procStart":"1188572","version":"2.1.332","peerProtocol":1,"peerFeatures":["notify_idle","reply_across_default_dirs","artifact_yield"],"kind":"bg","entrypoint":"cli","pidDomain":"linux:3d1219c7c4c5404aaa1f6d2a48adfda4:pid:[4026531836]","asksForConvertedSkills":null,"messagingSocketPath":"/tmp/cc-socks/31018.sock","name":"hello from the stand-in.","nameSince":1796035251235,"jobId":"5c56ca27","status":"idle","updatedAt":1796035251235,"statusUpdatedAt":1796035251180,"nameSource":"auto"}"#;

    #[test]
    fn session_file_of_a_worker() {
        let dir = Path::new("/tmp/bgx/home/.claude");
        let s = parse_session_file(FILE.as_bytes(), 31018, 1_188_572, 1000, dir).unwrap();
        assert_eq!(s.short_id, "5c56ca27");
        assert_eq!(s.session_id, "5c56ca27-6d9f-488a-9038-47f736b1ab43");
        assert_eq!(s.name.as_deref(), Some("hello from the stand-in."));
        assert_eq!(s.cwd.as_deref(), Some(Path::new("/tmp/bgx/work/a")));
        assert_eq!(s.uid, 1000);
        assert_eq!(s.config_dir, dir);
    }

    #[test]
    fn session_file_of_another_process_or_kind_is_refused() {
        let dir = Path::new("/h/.claude");
        // Another pid, or the same pid reused (another start time).
        assert!(parse_session_file(FILE.as_bytes(), 31019, 1_188_572, 0, dir).is_none());
        assert!(parse_session_file(FILE.as_bytes(), 31018, 1_188_573, 0, dir).is_none());
        let fg = FILE.replace(r#""kind":"bg""#, r#""kind":"interactive""#);
        assert!(parse_session_file(fg.as_bytes(), 31018, 1_188_572, 0, dir).is_none());
        let bad = FILE.replace("5c56ca27-6d9f", "../../../etc");
        assert!(parse_session_file(bad.as_bytes(), 31018, 1_188_572, 0, dir).is_none());
        assert!(parse_session_file(b"{", 31018, 1_188_572, 0, dir).is_none());
        assert!(parse_session_file(&[0xff; 64], 31018, 1_188_572, 0, dir).is_none());
        // A job id that is not the session's prefix is not believed.
        let job = FILE.replace(r#""jobId":"5c56ca27""#, r#""jobId":"deadbeef""#);
        let s = parse_session_file(job.as_bytes(), 31018, 1_188_572, 0, dir).unwrap();
        assert_eq!(s.short_id, "5c56ca27");
        // A name with control characters is dropped.
        let name = FILE.replace("hello from the stand-in.", "evil\\u001b[2J");
        let s = parse_session_file(name.as_bytes(), 31018, 1_188_572, 0, dir).unwrap();
        assert_eq!(s.name, None);
    }

    #[test]
    fn only_home_and_config_dir_are_read_from_the_environment() {
        let raw =
            b"PATH=/bin\0ANTHROPIC_API_KEY=sk-secret\0HOME=/home/a\0CLAUDE_CONFIG_DIR=/srv/cc\0";
        assert_eq!(
            parse_config_env(raw),
            (
                Some(PathBuf::from("/home/a")),
                Some(PathBuf::from("/srv/cc"))
            )
        );
        assert_eq!(parse_config_env(b"HOME=\0X"), (None, None));
    }

    #[test]
    fn config_dir_from_the_environment() {
        let home = Path::new("/home/a");
        assert_eq!(
            config_dir(Some(home), None).unwrap(),
            Path::new("/home/a/.claude")
        );
        assert_eq!(
            config_dir(Some(home), Some(Path::new("/srv/cc"))).unwrap(),
            Path::new("/srv/cc")
        );
        assert_eq!(config_dir(Some(Path::new("rel")), None), None);
        assert_eq!(config_dir(None, Some(Path::new("rel"))), None);
        assert_eq!(config_dir(None, None), None);
    }
}
