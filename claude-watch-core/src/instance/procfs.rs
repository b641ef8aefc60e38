//! Pure parsers of what `/proc` files say (the shell's `instance::proc` reads them, through the
//! door for files others control): every byte is taken as hostile, and a malformed file is
//! `None`, never a panic.

use std::path::PathBuf;

/// Longest value kept from a process manager's variable.
const MAX_VALUE: usize = 256;

/// Parent PID and start time (clock ticks after boot) from the content of `/proc/<pid>/stat`.
///
/// The command name (field 2) may hold spaces and parentheses, so fields are counted after the
/// last `)`: ppid is field 4, starttime field 22.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// The process-manager variables of an environment block (`KEY=value` entries split at NULs).
/// Every other variable is skipped unread beyond its key (the environment holds credentials);
/// values that are too long or hold control characters are ignored.
pub fn parse_environ(raw: &[u8]) -> super::SupervisorEnv {
    let mut env = super::SupervisorEnv::default();
    for entry in raw.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        let slot = match key {
            b"pm_id"
            | b"name"
            | b"PM2_HOME"
            | b"SUPERVISOR_PROCESS_NAME"
            | b"SUPERVISOR_GROUP_NAME"
            | b"SUPERVISOR_SERVER_URL"
            | b"ANTHROPIC_BASE_URL" => key,
            _ => continue,
        };
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if value.is_empty() || value.len() > MAX_VALUE || value.chars().any(char::is_control) {
            continue;
        }
        let value = value.to_owned();
        match slot {
            b"pm_id" => env.pm2_id = value.parse().ok(),
            b"name" => env.pm2_name = Some(value),
            b"PM2_HOME" => env.pm2_home = Some(PathBuf::from(value)),
            b"SUPERVISOR_PROCESS_NAME" => env.supervisord_program = Some(value),
            b"SUPERVISOR_GROUP_NAME" => env.supervisord_group = Some(value),
            b"ANTHROPIC_BASE_URL" => env.plain_http_base = plain_http_origin(&value),
            _ => env.supervisord_url = Some(value),
        }
    }
    if env.pm2_id.is_none() {
        // `name` alone is too common a variable to mean pm2.
        env.pm2_name = None;
        env.pm2_home = None;
    }
    env
}

/// `http://host[:port]` of a plain-HTTP base URL, without user info, path or query (a base
/// URL may carry a credential); `None` for `https://` or anything else.
pub fn plain_http_origin(url: &str) -> Option<String> {
    let rest = url.trim().strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    (!host.is_empty()).then(|| format!("http://{host}"))
}

/// The `NSpid:` line of a `status` file: the PID in each nested namespace, outermost first.
#[must_use]
pub fn parse_nspid(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Option<Vec<u32>> = line.split_whitespace().map(|p| p.parse().ok()).collect();
    pids.filter(|p| !p.is_empty())
}

/// Who owns a process: real uid, gid and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The owner of a process from the content of `/proc/<pid>/status` (real ids: the first field
/// of `Uid:` and `Gid:`, and `Groups:`).
#[must_use]
pub fn parse_owner(status: &str) -> Option<Owner> {
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
    let first = |key: &str| field(key)?.split_whitespace().next()?.parse().ok();
    let groups = field("Groups:")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()
        .ok()?;
    Some(Owner {
        uid: first("Uid:")?,
        gid: first("Gid:")?,
        groups,
    })
}
