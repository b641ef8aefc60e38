//! claude-watch's core: what the daemon decides, with no I/O. Records parsed and paired into
//! exchanges, the latch detector, instance naming and the episode types, fed plain values and a
//! monotonic clock by the shell (`claude-watch`), which owns every file, socket, probe and clock.
//! Nothing here depends on tokio, aya, zbus, libc or the filesystem.
//!
//! - [`config`]: the TOML configuration, parsed and checked (the shell reads the file);
//! - [`http`]: kernel records parsed and paired into exchanges;
//! - [`instance`]: which processes are Claude Code instances, and what each is called;
//! - [`journal`]: the journal's records (episodes, actions, incidents, throttles);
//! - [`detect`]: the latch detector, a sans-IO state machine over exchanges;
//! - [`policy`]: the recovery policy (restart, wait out a quiet window, escalate, hold for an
//!   upstream incident), per instance and per owner;
//! - [`schedule`]: when the shell acts: which locate runs next (users in turn), when a script is
//!   looked at again, and the one throttle of repeated looks and warnings;
//! - [`fleet`]: the fleet's hold (an Alertmanager alert other hosts raise);
//! - [`coverage`]: when an instance's traffic goes unseen by the probes (blind);
//! - [`status`]: what `claude-watch status` shows, the snapshot the daemon publishes;
//! - [`supervise`]: which supervisor restarts an instance, as plain values;
//! - [`watch`]: the Watch, every decision the daemon makes in one sans-IO state machine fed
//!   inputs and a monotonic clock, returning effects;
//! - [`text`]: observed text made safe to print;
//! - [`time`]: the one conversion from monotonic to wall time, and instants and durations
//!   written for people (jiff's calendar).

pub mod config;
pub mod coverage;
pub mod detect;
pub mod fleet;
pub mod http;
pub mod instance;
pub mod journal;
pub mod policy;
pub mod schedule;
pub mod status;
pub mod supervise;
pub mod text;
pub mod time;
pub mod watch;

/// An error and its causes on one line, each said once (`a: b: c`), for logs and the journal
/// (error types name their cause with `#[source]` and do not repeat it in their message).
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    /// The core reads no file, socket, process or clock: every source file is searched for
    /// the paths that would (the shell's `time` reads the clocks; `untrusted` opens files).
    #[test]
    fn the_core_does_no_io() {
        const FORBIDDEN: [&str; 13] = [
            "std::fs",
            "std::net::Tcp",
            "std::net::Udp",
            "std::process",
            "std::os::",
            "libc::",
            "tokio",
            "aya::",
            "zbus",
            "SystemTime::now",
            "Instant::now",
            "File::open",
            "std::io::stdin",
        ];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src];
        let mut found = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("lib.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    if line.trim_start().starts_with("//") {
                        continue;
                    }
                    for f in FORBIDDEN {
                        if line.contains(f) {
                            found.push(format!("{}:{}: {f}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        assert!(found.is_empty(), "I/O in the core:\n{}", found.join("\n"));
    }
}
