//! Unprivileged users for tests: created once on the host (idempotently, never removed, since
//! parallel test binaries share them) with `useradd --system`.

use std::process::{Command, Stdio};

/// A local user the tests run processes as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

fn id(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id")
        .args([flag, name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .flatten()
}

impl TestUser {
    /// The user `name` (`[a-z][a-z0-9-]*`), created as a system user without a login shell
    /// when it does not exist yet. Needs root.
    #[track_caller]
    pub fn ensure(name: &str) -> Self {
        assert!(
            name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "user name {name:?}"
        );
        if id("-u", name).is_none() {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ])
                .stdin(Stdio::null())
                .output()
                .expect("run useradd");
            // 9: created meanwhile by another test binary.
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self {
            name: name.to_owned(),
            uid: id("-u", name).expect("the user exists"),
            gid: id("-g", name).expect("the user has a group"),
        }
    }

    /// `setpriv` arguments that run the rest of a command line as this user, without any
    /// supplementary group or inherited capability.
    #[must_use]
    pub fn setpriv_args(&self) -> Vec<String> {
        vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
            "--".into(),
        ]
    }

    /// Gives `path` (and everything below it) to this user.
    #[track_caller]
    pub fn chown(&self, path: &std::path::Path) {
        let status = Command::new("chown")
            .args(["-R", &format!("{}:{}", self.uid, self.gid)])
            .arg(path)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown {}", path.display());
    }
}
