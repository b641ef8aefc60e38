//! Unprivileged users for tests that play a hostile neighbour: created once (idempotently) with
//! `useradd`, never removed (other tests and runs reuse them).

use std::process::Command;

/// An unprivileged local user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl User {
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
}

fn id(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The local user `name`, created (system user, no login shell) if it does not exist yet.
#[track_caller]
#[must_use]
pub fn test_user(name: &str) -> User {
    if id("-u", name).is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output()
            .expect("run useradd");
        // Another test may have created it meanwhile (exit 9: already exists).
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    User {
        uid: id("-u", name).expect("uid of the test user"),
        gid: id("-g", name).expect("gid of the test user"),
    }
}
