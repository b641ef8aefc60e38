//! A real systemd for tests: [`Testbed`] starts `tests/testbed/testbed.sh` (systemd 252 as PID 1
//! of fresh namespaces, in its own cgroup2 subtree) and tears it down on drop, leaving no cgroup
//! or process behind. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
        let ns_pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        if ns_pid == 0 {
            return None;
        }
        let procs = std::fs::read_to_string(
            self.cgroup()
                .join("system.slice")
                .join(unit)
                .join("cgroup.procs"),
        )
        .ok()?;
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

    /// The test bed's systemd log (its `/dev/kmsg`), for failure messages.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kmsg.log")).unwrap_or_default()
    }
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
