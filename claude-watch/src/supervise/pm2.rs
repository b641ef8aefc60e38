//! pm2: `pm2 restart <pm_id>`, run without a shell as the app's owner, after pm2 itself
//! confirmed that the app runs the latched pid (or a wrapper shell around it).
//!
//! The `pm_id` / `name` / `PM2_HOME` discovery read from the process's environment only
//! *suggest* pm2 (any process can set them). Right before acting, `pm2 jlist` of the owner's
//! pm2 daemon must list app `<pm_id>` with `pid` equal to the latched pid or to one of its
//! nearest parents ([`super::is_self_or_wrapper`]); otherwise the restart is refused
//! ([`SuperviseError::NotRunBy`]). Every pm2 command runs as the process's owner
//! (its uid, primary and supplementary groups, `HOME` from its passwd entry, a minimal
//! environment), so it can only reach that user's own pm2 daemon, under a timeout, its output
//! bounded.
//!
//! Which `pm2` is run, first found of ([`pm2_candidates`]):
//! 1. the configured path (`supervisor = { kind = "pm2", pm2 = "/path/to/pm2" }`);
//! 2. `pm2` next to the `node` that runs the pm2 daemon of that `PM2_HOME` (`PM2 vX: God
//!    Daemon (<home>)`, the app's parent or the pid in `<home>/pm2.pid`, run by the owner):
//!    npm's global prefix and nvm put both in one `bin/`;
//! 3. the `pm2` the daemon was started with (its `_` variable, set by the shell);
//! 4. `pm2` in the daemon's own `PATH` (what its owner's shell or unit found);
//! 5. `/usr/local/bin/pm2`, `/usr/bin/pm2` (Debian's npm global prefix, distro packages).
//!
//! The daemon's `node`, `_` and `PATH` are its owner's to set, and pm2 runs as that owner, so
//! they can choose nothing the owner could not run anyway.
//!
//! The file must be owned by root or by the owner and writable by no one else. With no pm2
//! daemon of the owner running in that home, nothing is run (pm2 would start a new daemon).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

use super::{RestartOutcome, Restarter, SuperviseError, Target, verify_start_time};
use crate::instance::{Placement, proc};
pub use claude_watch_core::supervise::Pm2Restarter;

/// Most bytes of `pm2 jlist` output read (it carries every app's environment).
const MAX_JLIST: u64 = 16 * 1024 * 1024;

/// A user account, from its passwd entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: PathBuf,
}

impl Account {
    /// The account of `uid` from the passwd and group databases.
    ///
    /// # Errors
    /// [`SuperviseError::UnknownUser`] when `uid` has no passwd entry.
    pub fn of_uid(uid: u32) -> Result<Self, SuperviseError> {
        let unknown = || SuperviseError::UnknownUser { uid };
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: zeroed passwd is a valid out-parameter; getpwuid_r fills it with pointers
        // into `buf`, which outlives every read below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
            return Err(unknown());
        }
        // SAFETY: non-null NUL-terminated strings inside `buf`.
        let (name, home) = unsafe {
            (
                std::ffi::CStr::from_ptr(pwd.pw_name).to_owned(),
                std::ffi::CStr::from_ptr(pwd.pw_dir).to_bytes().to_vec(),
            )
        };
        let gid = pwd.pw_gid;
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut n = libc::c_int::try_from(groups.len()).map_err(|_| unknown())?;
            // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many
            // and sets `n` to the count needed.
            let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
            let n = usize::try_from(n).map_err(|_| unknown())?;
            if rc >= 0 {
                groups.truncate(n);
                break;
            }
            if n <= groups.len() || n > 65_536 {
                return Err(unknown());
            }
            groups.resize(n, 0);
        }
        Ok(Self {
            name: name.to_string_lossy().into_owned(),
            uid,
            gid,
            groups,
            home: PathBuf::from(OsStr::from_bytes(&home)),
        })
    }
}

/// A command run as an account: argv, a minimal environment, its output bounded by
/// `max_output` bytes (0: not read at all); its exit status, output, and last words on stderr
/// ([`super::read_said`]).
pub(crate) async fn run_as(
    account: &Account,
    argv: &[OsString],
    env: &[(&str, OsString)],
    timeout: Duration,
    max_output: u64,
) -> Result<(ExitStatus, Vec<u8>, String), SuperviseError> {
    let program = argv
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cwd = if account.home.is_dir() {
        account.home.clone()
    } else {
        PathBuf::from("/")
    };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdout(if max_output == 0 {
            Stdio::null()
        } else {
            Stdio::piped()
        });
    super::drop_to_owner(&mut command, account.uid, account.gid, &account.groups);
    let what = format!("command {program}");
    let (status, out, said) =
        super::run_bounded(&mut command, &program, what, timeout, max_output).await?;
    if out.len() as u64 > max_output {
        return Err(SuperviseError::OutputTooLong {
            program,
            limit: max_output,
        });
    }
    Ok((status, out, said))
}

/// One app of `pm2 jlist`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pm2App {
    /// `pm_id`.
    pub id: u32,
    /// `name`.
    pub name: String,
    /// `pid` (0 while stopped).
    pub pid: u32,
    /// `pm2_env.status` (`online`, `stopped`, `errored`, ...).
    pub status: String,
}

/// The apps of `pm2 jlist` output: a JSON array of objects with `pm_id`, `name`, `pid` and
/// `pm2_env.status`; everything else (environments) is dropped. `None` when it is not that.
pub fn parse_jlist(out: &[u8]) -> Option<Vec<Pm2App>> {
    // pm2 may print notices before the JSON (`>>>> In-memory PM2 is out-of-date`,
    // `[PM2] Spawning PM2 daemon`): the list starts at the first `[` followed by `{` or `]`.
    let start = (0..out.len()).find(|&i| {
        out[i] == b'['
            && out[i + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|&b| b == b'{' || b == b']')
    })?;
    let apps: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out[start..])
        .into_iter()
        .next()?
        .ok()?;
    apps.iter()
        .map(|a| {
            Some(Pm2App {
                id: u32::try_from(a.get("pm_id")?.as_u64()?).ok()?,
                name: a.get("name")?.as_str()?.to_owned(),
                pid: a
                    .get("pid")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(0),
                status: a
                    .pointer("/pm2_env/status")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            })
        })
        .collect()
}

/// The `PM2_HOME` of a pm2 daemon from its process title, `PM2 v7.0.4: God Daemon (/home/a/.pm2)`.
pub fn god_daemon_home(cmdline: &[String]) -> Option<PathBuf> {
    let title = cmdline.join(" ");
    let rest = title.strip_prefix("PM2 v")?;
    let (_, home) = rest.split_once(": God Daemon (")?;
    let home = home.trim_end().strip_suffix(')')?;
    (!home.is_empty()).then(|| PathBuf::from(home))
}

/// Why an app's own `PM2_HOME` is not used ([`choose_pm2_home`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HomeRefused {
    /// The app names a relative `PM2_HOME`.
    #[error("PM2_HOME {home} is relative")]
    Relative {
        /// The app's `PM2_HOME`.
        home: PathBuf,
    },
    /// The app's `PM2_HOME` is neither under its owner's home nor owned by the owner.
    #[error("PM2_HOME {home} is neither under {owner_home} nor owned by the app's owner")]
    NotTheOwners {
        /// The app's `PM2_HOME`.
        home: PathBuf,
        /// The owner's home directory.
        owner_home: PathBuf,
    },
}

/// The `PM2_HOME` to use for `owner`: the app's own (`placement`), when it lies under the
/// owner's home or `owned_by_owner` says the directory is the owner's; `~/.pm2` when the app did
/// not say.
///
/// # Errors
/// [`HomeRefused`] otherwise.
pub fn choose_pm2_home(
    placement: Option<&Path>,
    owner_home: &Path,
    owned_by_owner: bool,
) -> Result<PathBuf, HomeRefused> {
    match placement {
        None => Ok(owner_home.join(".pm2")),
        Some(home) if !home.is_absolute() => Err(HomeRefused::Relative {
            home: home.to_owned(),
        }),
        Some(home) if home.starts_with(owner_home) && owner_home != Path::new("/") => {
            Ok(home.to_owned())
        }
        Some(home) if owned_by_owner => Ok(home.to_owned()),
        Some(home) => Err(HomeRefused::NotTheOwners {
            home: home.to_owned(),
            owner_home: owner_home.to_owned(),
        }),
    }
}

/// Where to look for `pm2`, in order (see the module docs).
pub fn pm2_candidates(
    configured: Option<&Path>,
    daemon_exe: Option<&Path>,
    daemon_underscore: Option<&Path>,
    daemon_path: &[PathBuf],
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        // A configured path is the only one tried.
        return vec![p.to_owned()];
    }
    if let Some(dir) = daemon_exe.and_then(Path::parent) {
        out.push(dir.join("pm2"));
    }
    if let Some(p) = daemon_underscore.filter(|p| p.is_absolute() && p.ends_with("pm2")) {
        out.push(p.to_owned());
    }
    for dir in daemon_path.iter().filter(|d| d.is_absolute()).take(32) {
        out.push(dir.join("pm2"));
    }
    out.push("/usr/local/bin/pm2".into());
    out.push("/usr/bin/pm2".into());
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// Whether `path` (followed through links) is a regular file owned by root or `uid` that no one
/// else may write.
fn trusted_file(path: &Path, uid: u32) -> bool {
    std::fs::metadata(path).is_ok_and(|m| {
        m.is_file()
            && (m.uid() == 0 || m.uid() == uid)
            && m.mode() & 0o022 == 0
            && m.mode() & 0o111 != 0
    })
}

/// A pm2 daemon (`PM2 vX: God Daemon (<home>)`): where its pm2 may be.
struct Daemon {
    exe: Option<PathBuf>,
    home: Option<PathBuf>,
    underscore: Option<PathBuf>,
    path: Vec<PathBuf>,
}

/// The pm2 daemon that is process `pid`, when its title says `God Daemon`, and its owner.
fn daemon_at(pid: u32) -> Option<(Daemon, u32)> {
    let root = Path::new(proc::ROOT);
    let info = proc::read_process_info(root, pid).ok()?;
    let home = god_daemon_home(&info.cmdline)?;
    let environ = proc::environ(root, pid).unwrap_or_default();
    let var = |name: &[u8]| {
        environ.split(|&b| b == 0).find_map(|e| {
            e.strip_prefix(name)
                .and_then(|v| v.strip_prefix(b"="))
                .map(OsStr::from_bytes)
        })
    };
    let underscore = var(b"_").map(PathBuf::from);
    let path = var(b"PATH").map_or_else(Vec::new, |p| std::env::split_paths(p).collect());
    let exe = info.exe;
    Some((
        Daemon {
            exe: (!exe.as_os_str().is_empty()).then_some(exe),
            home: Some(home),
            underscore,
            path,
        },
        info.uid,
    ))
}

/// The pm2 daemon of `home` run by `uid`: the one its `pm2.pid` names, when that process is a
/// daemon of this home and `uid`'s.
fn daemon_of_home(home: &Path, uid: u32) -> Option<Daemon> {
    // The home is the user's: its pid file is a regular file of theirs, read through the
    // door (never a FIFO, a terminal or a device, never through a link as its last component).
    use crate::untrusted::{self, Limits, Resolve};
    let path = home.join("pm2.pid");
    let mut file = untrusted::open(&path, Resolve::NoFollow).ok()?;
    if file.metadata().uid() != uid {
        return None;
    }
    let raw = file.read_head(Limits::bytes(32)).ok()?;
    let pid: u32 = std::str::from_utf8(&raw).ok()?.trim().parse().ok()?;
    let (daemon, owner) = daemon_at(pid)?;
    (owner == uid && daemon.home.as_deref() == Some(home)).then_some(daemon)
}

/// What a restart needs, found before pm2 is run: whose pm2, which home, which executable.
struct Prepared {
    account: Account,
    pm2: PathBuf,
    pm2_home: PathBuf,
    env: Vec<(&'static str, OsString)>,
}

impl Restarter for Pm2Restarter {
    #[tracing::instrument(skip_all, fields(instance = %target.instance, pid = target.pid))]
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        let Placement::Pm2 { id, name, .. } = &target.placement else {
            return Err(SuperviseError::WrongPlacement {
                instance: target.instance.clone(),
                supervisor: "pm2",
            });
        };
        let (this, owned) = (self.clone(), target.clone());
        let Prepared {
            account,
            pm2,
            pm2_home,
            env,
        } = tokio::task::spawn_blocking(move || prepare(&this, &owned))
            .await
            .map_err(|e| SuperviseError::RestartFailed {
                unit: "pm2 app".into(),
                source: super::RestartFailure::Task(e),
            })??;
        let apps = jlist(self, &account, &pm2, &env).await?;
        let not_run_by = |found: String| SuperviseError::NotRunBy {
            instance: target.instance.clone(),
            pid: target.pid,
            supervisor: format!("pm2 of {} ({})", account.name, pm2_home.display()),
            found,
        };
        let old_main = match apps.iter().find(|a| a.id == *id) {
            // The app itself, or a wrapper (`sh -c "claude ..."`) that pm2 runs around it.
            Some(app) if super::runs_under(app.pid, target.pid) => app.pid,
            Some(app) => {
                let found = format!("runs pid {} as app {} ({})", app.pid, app.id, app.name);
                return Err(not_run_by(found));
            }
            None => return Err(not_run_by(format!("has no app {id} ({name})"))),
        };

        let argv = [
            pm2.as_os_str().to_owned(),
            "restart".into(),
            id.to_string().into(),
        ];
        let (status, _, said) = run_as(&account, &argv, &env, self.timeout, 0).await?;
        if !status.success() {
            return Err(SuperviseError::CommandFailed {
                program: pm2.display().to_string(),
                status,
                said,
            });
        }
        let new_pid = jlist(self, &account, &pm2, &env)
            .await?
            .into_iter()
            .find(|a| a.id == *id && a.pid != 0 && a.pid != old_main)
            .map(|a| a.pid);
        tracing::info!(pm_id = id, app = %name, user = %account.name, ?new_pid, "pm2 restarted the app");
        Ok(RestartOutcome::acted(
            None,
            new_pid,
            format!(
                "pm2 restart {id} ({name}) as {} with PM2_HOME {}",
                account.name,
                pm2_home.display()
            ),
        ))
    }
}

async fn jlist(
    r: &Pm2Restarter,
    account: &Account,
    pm2: &Path,
    env: &[(&str, OsString)],
) -> Result<Vec<Pm2App>, SuperviseError> {
    let argv = [pm2.as_os_str().to_owned(), "jlist".into()];
    let (status, out, said) = run_as(account, &argv, env, r.timeout, MAX_JLIST).await?;
    if !status.success() {
        return Err(SuperviseError::CommandFailed {
            program: pm2.display().to_string(),
            status,
            said,
        });
    }
    parse_jlist(&out).ok_or_else(|| SuperviseError::BadAnswer {
        supervisor: "pm2 jlist".into(),
        source: super::BadAnswer::NotAppList,
    })
}

/// Everything before pm2 runs: the owner's account, the app's pm2 home and daemon, a
/// trusted `pm2`. Blocking (`/proc`, `passwd`, and files in the user's pm2 home, which the
/// user controls): run off the event loop.
fn prepare(r: &Pm2Restarter, target: &Target) -> Result<Prepared, SuperviseError> {
    let Placement::Pm2 { home, .. } = &target.placement else {
        return Err(SuperviseError::WrongPlacement {
            instance: target.instance.clone(),
            supervisor: "pm2",
        });
    };
    let uid = target.uid.ok_or_else(|| SuperviseError::WrongPlacement {
        instance: target.instance.clone(),
        supervisor: "pm2",
    })?;
    let refused = |reason: String| SuperviseError::Refused {
        instance: target.instance.clone(),
        reason,
    };
    let account = Account::of_uid(uid)?;
    // The app's parent is its pm2 daemon; its title names its home when the app's
    // environment does not.
    let parent = proc::read_process_info(Path::new(proc::ROOT), target.pid)
        .ok()
        .and_then(|p| daemon_at(p.ppid))
        .filter(|(_, owner)| *owner == uid)
        .map(|(d, _)| d);
    let home = home
        .clone()
        .or_else(|| parent.as_ref().and_then(|d| d.home.clone()));
    let owned = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == uid);
    let pm2_home = choose_pm2_home(
        home.as_deref(),
        &account.home,
        home.as_deref().is_some_and(owned),
    )
    .map_err(|e| refused(e.to_string()))?;
    // The daemon of that home (the app's parent, normally), to find its pm2. None
    // listening there: pm2 would start one, so nothing is run.
    let daemon = parent
        .filter(|d| d.home.as_deref() == Some(pm2_home.as_path()))
        .or_else(|| daemon_of_home(&pm2_home, uid))
        .ok_or_else(|| {
            refused(format!(
                "no pm2 daemon of uid {uid} runs in {}",
                pm2_home.display()
            ))
        })?;
    let (daemon_exe, underscore, daemon_path) = (
        daemon.exe.as_deref(),
        daemon.underscore.as_deref(),
        daemon.path.as_slice(),
    );
    let pm2 = pm2_candidates(r.pm2.as_deref(), daemon_exe, underscore, daemon_path)
        .into_iter()
        .find(|p| trusted_file(p, uid))
        .ok_or_else(|| refused("no pm2 executable found (set supervisor.pm2)".into()))?;
    // `pm2` starts with `#!/usr/bin/env node`: the daemon's node first.
    let mut path = OsString::new();
    if let Some(dir) = daemon_exe.and_then(Path::parent) {
        path.push(dir);
        path.push(":");
    }
    path.push("/usr/local/bin:/usr/bin:/bin");
    let env: Vec<(&str, OsString)> = vec![
        ("HOME", account.home.clone().into_os_string()),
        ("USER", account.name.clone().into()),
        ("LOGNAME", account.name.clone().into()),
        ("PATH", path),
        ("PM2_HOME", pm2_home.clone().into_os_string()),
    ];
    if !pm2_home.join("rpc.sock").exists() {
        return Err(refused(format!(
            "no pm2 daemon listens in {}",
            pm2_home.display()
        )));
    }
    verify_start_time(target.pid, target.start_time)?;
    Ok(Prepared {
        account,
        pm2,
        pm2_home,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jlist_is_parsed_and_environments_dropped() {
        let out = br#"[{"pid":31713,"name":"bin","pm2_env":{"status":"online","ANTHROPIC_API_KEY":"x"},"pm_id":2,"monit":{}},
            {"pid":0,"name":"stopped","pm2_env":{"status":"stopped"},"pm_id":3}]"#;
        assert_eq!(
            parse_jlist(out).unwrap(),
            [
                Pm2App {
                    id: 2,
                    name: "bin".into(),
                    pid: 31713,
                    status: "online".into()
                },
                Pm2App {
                    id: 3,
                    name: "stopped".into(),
                    pid: 0,
                    status: "stopped".into()
                }
            ]
        );
        let noisy = b">>>> In-memory PM2 is out-of-date, do:\n[PM2] Spawning PM2 daemon\n[]\n";
        assert_eq!(parse_jlist(noisy).unwrap(), []);
        let trailing = br#"[{"pid":1,"name":"a","pm_id":0}] [PM2] done"#;
        assert_eq!(parse_jlist(trailing).unwrap().len(), 1);
        assert_eq!(parse_jlist(b"not json"), None);
        assert_eq!(parse_jlist(br#"[{"name":"no id"}]"#), None);
    }

    #[test]
    fn daemon_title_gives_its_home() {
        let t = |s: &str| vec![s.to_owned()];
        assert_eq!(
            god_daemon_home(&t("PM2 v7.0.4: God Daemon (/home/a/.pm2)")),
            Some("/home/a/.pm2".into())
        );
        assert_eq!(
            god_daemon_home(&t("PM2 v5.3.0: God Daemon (/tmp/a b)")),
            Some("/tmp/a b".into())
        );
        assert_eq!(god_daemon_home(&t("node /srv/app.js")), None);
        assert_eq!(god_daemon_home(&t("PM2 v7: God Daemon ()")), None);
    }

    #[test]
    fn pm2_home_must_be_the_owners() {
        let home = Path::new("/home/a");
        assert_eq!(
            choose_pm2_home(None, home, false).unwrap(),
            Path::new("/home/a/.pm2")
        );
        assert_eq!(
            choose_pm2_home(Some(Path::new("/home/a/pm2")), home, false).unwrap(),
            Path::new("/home/a/pm2")
        );
        assert_eq!(
            choose_pm2_home(Some(Path::new("/tmp/x")), home, true).unwrap(),
            Path::new("/tmp/x")
        );
        let not_theirs = choose_pm2_home(Some(Path::new("/root/.pm2")), home, false).unwrap_err();
        assert_eq!(
            not_theirs,
            HomeRefused::NotTheOwners {
                home: "/root/.pm2".into(),
                owner_home: home.into()
            }
        );
        assert_eq!(
            not_theirs.to_string(),
            "PM2_HOME /root/.pm2 is neither under /home/a nor owned by the app's owner"
        );
        assert!(choose_pm2_home(Some(Path::new("/home/ab/.pm2")), home, false).is_err());
        assert_eq!(
            choose_pm2_home(Some(Path::new("rel")), home, true),
            Err(HomeRefused::Relative { home: "rel".into() })
        );
        // A user whose home is `/` does not own everything.
        assert!(choose_pm2_home(Some(Path::new("/root/.pm2")), Path::new("/"), false).is_err());
    }

    #[test]
    fn pm2_is_looked_for_next_to_the_daemons_node_first() {
        assert_eq!(
            pm2_candidates(
                None,
                Some(Path::new("/home/a/.nvm/versions/node/v22/bin/node")),
                Some(Path::new("/opt/pm2/bin/pm2")),
                &[
                    "/srv/bin".into(),
                    "relative".into(),
                    "/usr/local/bin".into()
                ]
            ),
            [
                PathBuf::from("/home/a/.nvm/versions/node/v22/bin/pm2"),
                "/opt/pm2/bin/pm2".into(),
                "/srv/bin/pm2".into(),
                "/usr/local/bin/pm2".into(),
                "/usr/bin/pm2".into()
            ]
        );
        // `_` naming something else (a shell started by a script) is ignored.
        assert_eq!(
            pm2_candidates(None, None, Some(Path::new("/usr/bin/env")), &[]),
            [PathBuf::from("/usr/local/bin/pm2"), "/usr/bin/pm2".into()]
        );
        assert_eq!(
            pm2_candidates(
                Some(Path::new("/x/pm2")),
                Some(Path::new("/usr/bin/node")),
                None,
                &[]
            ),
            [PathBuf::from("/x/pm2")]
        );
    }

    #[test]
    fn the_account_of_root_is_found() {
        let root = Account::of_uid(0).unwrap();
        assert_eq!(root.name, "root");
        assert_eq!(root.gid, 0);
        assert!(root.groups.contains(&0));
    }
}
