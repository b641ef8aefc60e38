//! A real systemd for tests: [`Testbed`] starts `tests/testbed/testbed.sh` (systemd 252 as PID 1
//! of fresh namespaces, in its own cgroup2 subtree) and tears it down on drop, leaving no cgroup
//! or process behind. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::users::TestUser;
use crate::wait::wait_until;

/// A running systemd test bed; stopped and cleaned up when dropped.
#[derive(Debug)]
pub struct Testbed {
    name: String,
    dir: PathBuf,
    pid1: u32,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/testbed.sh")
}

/// The host's cgroup2 mount (`/sys/fs/cgroup/unified` on hybrid hosts).
#[must_use]
pub fn cgroup2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

impl Testbed {
    /// Starts a test bed named `name` (letters, digits, `-`, `_`; the process id is appended so
    /// parallel test binaries do not collide). Panics when systemd does not come up.
    #[must_use]
    pub fn start(name: &str) -> Self {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "test bed name {name:?} must be [A-Za-z0-9_-]"
        );
        let name = format!("cwtb-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test bed dir");
        let out = Command::new(script())
            .args(["start", &name])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run testbed.sh");
        assert!(
            out.status.success(),
            "test bed {name} did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid1 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("testbed.sh prints the PID of systemd");
        Self { name, dir, pid1 }
    }

    /// The test bed's name (its cgroup under [`cgroup2_root`] and its target).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host PID of the test bed's systemd.
    #[must_use]
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// The test bed's cgroup2 directory on the host.
    #[must_use]
    pub fn cgroup(&self) -> PathBuf {
        cgroup2_root().join(&self.name)
    }

    /// Writes unit file `name` (e.g. `looper.service`); call [`Testbed::daemon_reload`] after.
    pub fn add_unit(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join("units").join(name), text).expect("write unit");
    }

    /// `systemctl daemon-reload`, panicking on failure.
    pub fn daemon_reload(&self) {
        let out = self.systemctl(&["daemon-reload"]);
        assert!(
            out.status.success(),
            "daemon-reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `systemctl ARGS` inside the test bed.
    #[must_use]
    pub fn systemctl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-m", "-p", "systemctl"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter systemctl")
    }

    /// The D-Bus address of the test bed's system bus, reachable from the host.
    #[must_use]
    pub fn bus_address(&self) -> String {
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            self.pid1
        )
    }

    /// Host PID of `unit`'s main process, `None` when it has none. Found independently of the
    /// daemon's code: systemd's `MainPID` (a namespace PID) matched against the `NSpid:` of the
    /// processes in the unit's cgroup.
    #[must_use]
    pub fn main_pid(&self, unit: &str) -> Option<u32> {
        let out = self.systemctl(&["show", "-p", "MainPID", "--value", unit]);
        host_pid_in(&self.cgroup().join("system.slice").join(unit), &out)
    }

    /// Starts system unit `unit` running `sleep infinity` (`Restart=always`): a long-running
    /// unit whose main PID must not change.
    #[track_caller]
    pub fn start_sleeper(&self, unit: &str) {
        self.add_unit(
            unit,
            "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\n",
        );
        self.daemon_reload();
        let out = self.systemctl(&["start", unit]);
        assert!(
            out.status.success(),
            "start {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `user@<uid>.service` for `user` (its own systemd manager and, from
    /// dbus-user-session, its bus) and waits until both answer.
    #[track_caller]
    pub fn start_user_manager(&self, user: &TestUser) {
        let unit = format!("user@{}.service", user.uid);
        let out = self.systemctl(&["start", &unit]);
        assert!(
            out.status.success(),
            "start {unit}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.user_log(user)
        );
        wait_until(
            Duration::from_secs(20),
            "the user's manager on its bus",
            || {
                let out = self.user_systemctl(user, &["is-system-running"]);
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                (self.user_bus(user).exists() && matches!(state.as_str(), "running" | "degraded"))
                    .then_some(())
            },
        );
    }

    /// The user's bus socket, as a path on the host.
    #[must_use]
    pub fn user_bus(&self, user: &TestUser) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/run/user/{}/bus",
            self.pid1, user.uid
        ))
    }

    /// Writes user unit `name` where `user`'s manager reads runtime units
    /// (`$XDG_RUNTIME_DIR/systemd/user`, inside the test bed only); call
    /// [`Testbed::user_daemon_reload`] after.
    pub fn add_user_unit(&self, user: &TestUser, name: &str, text: &str) {
        let dir = PathBuf::from(format!(
            "/proc/{}/root/run/user/{}/systemd/user",
            self.pid1, user.uid
        ));
        std::fs::create_dir_all(&dir).expect("create the user's runtime unit dir");
        std::fs::write(dir.join(name), text).expect("write user unit");
    }

    /// `systemctl --user daemon-reload` for `user`, panicking on failure.
    pub fn user_daemon_reload(&self, user: &TestUser) {
        let out = self.user_systemctl(user, &["daemon-reload"]);
        assert!(
            out.status.success(),
            "user daemon-reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `systemctl --user ARGS` as `user` inside the test bed (its manager, on its bus).
    #[must_use]
    pub fn user_systemctl(&self, user: &TestUser, args: &[&str]) -> Output {
        let runtime = format!("/run/user/{}", user.uid);
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-m", "-p", "setpriv"])
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "env", "-i"])
            .arg(format!("XDG_RUNTIME_DIR={runtime}"))
            .arg(format!("DBUS_SESSION_BUS_ADDRESS=unix:path={runtime}/bus"))
            .args(["PATH=/usr/bin:/bin", "systemctl", "--user"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run systemctl --user")
    }

    /// Host PID of user unit `unit`'s main process in `user`'s manager, `None` when it has
    /// none (found like [`Testbed::main_pid`]).
    #[must_use]
    pub fn user_main_pid(&self, user: &TestUser, unit: &str) -> Option<u32> {
        let out = self.user_systemctl(user, &["show", "-p", "MainPID", "--value", unit]);
        let manager = self
            .cgroup()
            .join("user.slice")
            .join(format!("user-{}.slice", user.uid))
            .join(format!("user@{}.service", user.uid));
        let dir = find_dir(&manager, unit, 4)?;
        host_pid_in(&dir, &out)
    }

    /// The log of `user`'s manager in this test bed.
    #[must_use]
    pub fn user_log(&self, user: &TestUser) -> String {
        std::fs::read_to_string(self.dir.join(format!("user-{}.log", user.uid))).unwrap_or_default()
    }

    /// The test bed's systemd log (its `/dev/kmsg`), for failure messages.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kmsg.log")).unwrap_or_default()
    }
}

/// The host PID, among the processes of cgroup `dir`, whose innermost namespace PID is the
/// `MainPID` printed by `systemctl show -p MainPID --value` in `out`.
fn host_pid_in(dir: &Path, out: &Output) -> Option<u32> {
    let ns_pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    if ns_pid == 0 {
        return None;
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    procs
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|l| l.split_whitespace().last().map(str::to_owned))
                })
                .is_some_and(|last| last == ns_pid.to_string())
        })
}

/// The directory named `name` under `root`, at most `depth` levels down.
fn find_dir(root: &Path, name: &str, depth: u32) -> Option<PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == name {
            return Some(path);
        }
        if depth > 0
            && let Some(found) = find_dir(&path, name, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let out = Command::new(script())
            .args(["stop", &self.name])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        if !ok && !std::thread::panicking() {
            panic!("test bed {} was not torn down cleanly: {out:?}", self.name);
        }
    }
}
