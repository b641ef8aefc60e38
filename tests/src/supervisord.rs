//! A real supervisord (Debian's `supervisor` package) in a scratch directory, with a unix
//! socket and the programs a test gives it; stopped with its programs on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ChildGuard, alive};

/// A running supervisord whose configuration is `dir/supervisord.conf`.
pub struct Supervisord {
    child: ChildGuard,
    conf: PathBuf,
}

impl Supervisord {
    /// Starts supervisord in `dir` (socket, logs and pid file there) with `programs`
    /// (`[program:x]` sections) appended to its configuration.
    #[track_caller]
    pub fn start(dir: &Path, programs: &str) -> Self {
        let d = dir.display();
        let conf = dir.join("supervisord.conf");
        std::fs::write(
            &conf,
            format!(
                "[unix_http_server]\nfile={d}/supervisor.sock\n\
                 [supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\
                 [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
                 [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n{programs}"
            ),
        )
        .expect("write supervisord.conf");
        let child = ChildGuard::spawn(
            "supervisord",
            Command::new("supervisord")
                .arg("-c")
                .arg(&conf)
                .env_clear()
                .env("PATH", "/usr/bin:/bin"),
        );
        Self { child, conf }
    }

    /// Its configuration file (for `supervisorctl -c`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// `supervisorctl -c <conf> <args>`: its stdout, trimmed.
    #[track_caller]
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("supervisorctl")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("supervisorctl");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The live pid of program `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.ctl(&["pid", name])
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0 && alive(*p))
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        // supervisord stops its programs (each in a process group of its own) on SIGTERM.
        if !self.child.has_exited() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.child.terminate(Duration::from_secs(20))
            }));
        }
    }
}
