//! Claude Code's own background sessions (`claude --bg`), run with the real Claude Code from
//! `npm install -g` against the [`StandIn`], in a scratch `HOME`.
//!
//! What a first run needs, found by trying 2.1.332 as a new user would:
//! - the key pre-approved in `~/.claude.json` (`customApiKeyResponses.approved` holds its last
//!   20 characters), else the session says "Not logged in";
//! - each working directory trusted once (`projects["<dir>"].hasTrustDialogAccepted`) and the
//!   onboarding done (`hasCompletedOnboarding`);
//! - the gateway in `~/.claude/settings.json`'s `env` block: with `ANTHROPIC_BASE_URL` only in
//!   the environment, `claude respawn` refuses ("this session runs through an LLM gateway, and a
//!   restart from here wouldn't bring one").
//!
//! Claude Code's daemon detaches (`setsid`) and its pty hosts outlive it, so [`BgFleet`]'s drop
//! kills every process whose environment names the scratch `HOME`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::agents::base_env;
use crate::deps;
use crate::process::ScratchDir;
use crate::standin::StandIn;
use crate::wait::wait_until;

/// A scratch `HOME` with Claude Code set up for background sessions against a stand-in.
pub struct BgFleet {
    home: ScratchDir,
    work: ScratchDir,
    claude: PathBuf,
    env: Vec<(&'static str, std::ffi::OsString)>,
    owner: Option<u32>,
}

impl BgFleet {
    /// A fresh home for the npm-installed Claude Code, trusting `dirs` (names of directories
    /// made under a scratch work directory).
    #[track_caller]
    pub fn new(standin: &StandIn, api_key: &str, dirs: &[&str]) -> Self {
        Self::new_as(standin, api_key, dirs, None)
    }

    /// As [`Self::new`], every `claude` run as user `owner` (uid = gid, e.g. `nobody`), who
    /// owns the scratch home and work directories.
    #[track_caller]
    pub fn new_as(standin: &StandIn, api_key: &str, dirs: &[&str], owner: Option<u32>) -> Self {
        let home = ScratchDir::new("claude-bg-home");
        let work = ScratchDir::new("claude-bg-work");
        let mut projects = serde_json::Map::new();
        for d in dirs {
            let dir = work.path().join(d);
            std::fs::create_dir_all(&dir).expect("work dir");
            projects.insert(
                dir.display().to_string(),
                json!({ "hasTrustDialogAccepted": true }),
            );
        }
        let tail: String = api_key
            .chars()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let state = json!({
            "hasCompletedOnboarding": true,
            "customApiKeyResponses": { "approved": [tail], "rejected": [] },
            "projects": projects,
        });
        std::fs::write(home.path().join(".claude.json"), state.to_string()).expect("write");
        std::fs::create_dir_all(home.path().join(".claude")).expect("mkdir");
        let settings = json!({ "env": { "ANTHROPIC_BASE_URL": standin.base_url() } });
        std::fs::write(
            home.path().join(".claude/settings.json"),
            settings.to_string(),
        )
        .expect("write settings");
        let claude = deps::npm_global_prefix().join("bin/claude");
        let env = base_env(standin, &home, api_key);
        if let Some(uid) = owner {
            chown_tree(home.path(), uid);
            chown_tree(work.path(), uid);
        }
        Self {
            home,
            work,
            claude,
            env,
            owner,
        }
    }

    /// A command with the fleet's environment, run as its owner.
    fn command(&self, program: &Path) -> Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(program);
        command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(uid) = self.owner {
            command.uid(uid).gid(uid);
        }
        command
    }

    /// The scratch `HOME`.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The `claude` on PATH of an npm global install (a symlink to `bin/claude.exe`).
    pub fn claude(&self) -> &Path {
        &self.claude
    }

    /// The working directory named `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Runs `claude <args>` in `cwd` with the fleet's environment.
    #[track_caller]
    pub fn run(&self, cwd: &Path, args: &[&str]) -> Output {
        self.command(&self.claude)
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap_or_else(|e| panic!("claude {args:?}: {e}"))
    }

    /// `claude --bg <prompt>` in directory `dir`; returns the short id it prints.
    #[track_caller]
    pub fn start(&self, dir: &str, prompt: &str) -> String {
        let out = self.run(&self.dir(dir), &["--bg", prompt]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "claude --bg failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.split_whitespace()
            .skip_while(|w| *w != "·")
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no short id in `claude --bg` output: {text}"))
    }

    /// `claude agents --json`.
    #[track_caller]
    pub fn agents(&self) -> Vec<Value> {
        let out = self.run(self.home(), &["agents", "--json"]);
        assert!(out.status.success(), "claude agents --json failed");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "claude agents --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The session id `claude agents` lists for `id`.
    #[track_caller]
    pub fn session_of(&self, id: &str) -> String {
        self.agents()
            .into_iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("session {id} is not listed"))["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned()
    }

    /// The worker pid `claude agents` lists for `id`.
    pub fn pid_of(&self, id: &str) -> Option<u32> {
        self.agents()
            .into_iter()
            .find(|a| a["id"] == id)
            .and_then(|a| a["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
    }

    /// Waits until session `id` runs as a process other than `not` and is idle; its pid.
    #[track_caller]
    pub fn wait_idle(&self, id: &str, not: Option<u32>, timeout: Duration) -> u32 {
        wait_until(timeout, &format!("session {id} idle"), || {
            self.agents()
                .into_iter()
                .find(|a| a["id"] == id && a["status"] == "idle")
                .and_then(|a| a["pid"].as_u64())
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| Some(*p) != not)
        })
    }

    /// Gives session `id` its next turn: `claude attach` in a pseudo-terminal, `text`, Enter
    /// (`tests/agents/bg_send.py`).
    #[track_caller]
    pub fn send(&self, id: &str, text: &str) {
        let script = deps::assets_dir().join("agents/bg_send.py");
        let out = self
            .command(&deps::python3())
            .arg(script)
            .arg(&self.claude)
            .arg(id)
            .arg(text)
            .current_dir(self.home())
            .env("TERM", "xterm")
            .output()
            .expect("run bg_send.py");
        assert!(
            out.status.success(),
            "typing into session {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pids of every process whose environment holds this fleet's `HOME`.
    pub fn processes(&self) -> Vec<u32> {
        let needle = format!("HOME={}", self.home().display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
            })
            .collect()
    }
}

/// `chown -R uid:uid dir`.
fn chown_tree(dir: &Path, uid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            chown_tree(&path, uid);
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

impl Drop for BgFleet {
    fn drop(&mut self) {
        for _ in 0..3 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: plain kill(2) of a process this fleet started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
