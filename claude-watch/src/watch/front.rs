//! The front half: kernel records turned into the core's inputs, for the daemon and `trace`.
//!
//! ```text
//!  EXEC record ──► processes.check(pid) ─ claude? ──► Input::Started(found)
//!  EXIT record ──► pairer.forget_pid, processes.exited(pid) ──► Input::Exited { pid, instance }
//!  TLS record  ──► pairer.push ─ exchange? ──► unknown pid: processes.check first (Started);
//!                                          │   an API call of background machinery:
//!                                          │   processes.attribute (Started, observe-only)
//!                                          └─► Input::Exchange { exchange, instance }
//! ```
//!
//! Which processes are claude instances is behind [`Processes`] (implemented by
//! [`Discovery`], which reads `/proc`); the pairing and the dispatch here are pure.

use claude_ebpf_common::kind;

use super::Input;
use crate::discover::{Discovery, Found};
use crate::http::pair::{PairStats, Pairer, Record};
use crate::time::WallClock;

/// Which processes are claude instances: the front's one I/O seam.
pub trait Processes {
    /// Looks at process `pid` (after an exec, or a record from an unknown pid); returns it when
    /// it is a claude instance not known before.
    fn check(&mut self, pid: u32) -> Option<Found>;
    /// Forgets a process that exited; returns it if it was an instance.
    fn exited(&mut self, pid: u32) -> Option<Found>;
    /// The instance process `pid`, if known.
    fn get(&self, pid: u32) -> Option<&Found>;
    /// Process `pid`, not an instance, made an API request itself: the instance it is
    /// attributed to when it is one of Claude Code's background machinery (see
    /// [`Discovery::attribute`]), returned once.
    fn attribute(&mut self, _pid: u32) -> Option<Found> {
        None
    }
    /// Script instances due for another look at their mapped files, with whether it is the
    /// last look (see [`Discovery::due_rescans`]).
    fn due_rescans(&mut self, _now: crate::time::MonoNs) -> Vec<(Found, bool)> {
        Vec::new()
    }
}

impl Processes for Discovery {
    fn check(&mut self, pid: u32) -> Option<Found> {
        Discovery::check(self, pid)
    }
    fn exited(&mut self, pid: u32) -> Option<Found> {
        Discovery::exited(self, pid)
    }
    fn get(&self, pid: u32) -> Option<&Found> {
        Discovery::get(self, pid)
    }
    fn attribute(&mut self, pid: u32) -> Option<Found> {
        Discovery::attribute(self, pid)
    }
    fn due_rescans(&mut self, now: crate::time::MonoNs) -> Vec<(Found, bool)> {
        Discovery::due_rescans(self, now)
    }
}

/// No discovery: every process is unknown (`trace --pid` / `--binary`).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProcesses;

impl Processes for NoProcesses {
    fn check(&mut self, _pid: u32) -> Option<Found> {
        None
    }
    fn exited(&mut self, _pid: u32) -> Option<Found> {
        None
    }
    fn get(&self, _pid: u32) -> Option<&Found> {
        None
    }
}

/// Records in, inputs out.
#[derive(Debug)]
pub struct Front<P> {
    pairer: Pairer,
    processes: P,
}

impl<P: Processes> Front<P> {
    /// A front over `processes`, stamping exchanges with wall time by `wall_clock`.
    pub fn new(processes: P, wall_clock: WallClock) -> Self {
        Self {
            pairer: Pairer::new(wall_clock),
            processes,
        }
    }

    /// The process source.
    pub fn processes(&self) -> &P {
        &self.processes
    }

    /// The process source, to change (rules reloaded, a first scan).
    pub fn processes_mut(&mut self) -> &mut P {
        &mut self.processes
    }

    /// What the pairer could not use.
    pub fn pair_stats(&self) -> PairStats {
        self.pairer.stats()
    }

    /// Looks at `pid` (a supervisor's new main process): [`Input::Started`] when it is a claude
    /// instance not known before.
    pub fn inspect(&mut self, pid: u32) -> Option<Input> {
        self.processes.check(pid).map(Input::Started)
    }

    /// Turns one kernel record into the inputs it means (none, one, or a process found and
    /// then its exchange), handed to `emit` in order.
    pub fn push(&mut self, record: Record<'_>, mut emit: impl FnMut(Input)) {
        let pid = record.header.pid;
        match record.header.kind {
            kind::EXEC => {
                if let Some(found) = self.processes.check(pid) {
                    emit(Input::Started(found));
                }
            }
            kind::EXIT => {
                self.pairer.forget_pid(pid);
                let instance = self.processes.exited(pid).map(|f| f.instance);
                emit(Input::Exited { pid, instance });
            }
            _ => {
                let Some(exchange) = self.pairer.push(record) else {
                    return;
                };
                let instance = match self.processes.get(exchange.pid) {
                    Some(found) => Some(found.instance.clone()),
                    None => {
                        let pid = exchange.pid;
                        let found = self.processes.check(pid).or_else(|| {
                            crate::detect::is_api_call(&exchange)
                                .then(|| self.processes.attribute(pid))
                                .flatten()
                        });
                        found.map(|found| {
                            let id = found.instance.clone();
                            emit(Input::Started(found));
                            id
                        })
                    }
                };
                emit(Input::Exchange { exchange, instance });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use claude_ebpf_common::EventHeader;

    use super::*;
    use crate::instance::{ClaudeKind, InstanceId, ProcessInfo};

    /// Processes that become known when checked, from a fixed table.
    #[derive(Default)]
    struct Table {
        claude: HashMap<u32, InstanceId>,
        /// Background machinery, attributed when it makes API requests.
        machinery: HashMap<u32, InstanceId>,
        known: HashMap<u32, Found>,
    }

    impl Table {
        fn found(pid: u32, instance: InstanceId) -> Found {
            Found {
                info: ProcessInfo {
                    pid,
                    ..ProcessInfo::default()
                },
                kind: ClaudeKind::Native,
                instance,
                release: None,
                placement: crate::instance::Placement::Unsupervised,
                exe_id: None,
            }
        }
    }

    impl Processes for Table {
        fn check(&mut self, pid: u32) -> Option<Found> {
            if self.known.contains_key(&pid) {
                return None;
            }
            let found = Self::found(pid, self.claude.get(&pid)?.clone());
            self.known.insert(pid, found.clone());
            Some(found)
        }
        fn attribute(&mut self, pid: u32) -> Option<Found> {
            if self.known.contains_key(&pid) {
                return None;
            }
            let found = Self::found(pid, self.machinery.get(&pid)?.clone());
            self.known.insert(pid, found.clone());
            Some(found)
        }
        fn exited(&mut self, pid: u32) -> Option<Found> {
            self.known.remove(&pid)
        }
        fn get(&self, pid: u32) -> Option<&Found> {
            self.known.get(&pid)
        }
    }

    fn header(kind: u32, pid: u32, len: usize, t: u64) -> EventHeader {
        EventHeader {
            ts_ns: t,
            conn: 7,
            pid,
            tid: pid,
            uid: 0,
            pad: 0,
            len: u32::try_from(len).unwrap(),
            captured: u32::try_from(len).unwrap(),
            kind,
            flags: 0,
        }
    }

    fn feed(front: &mut Front<Table>, kind: u32, pid: u32, bytes: &[u8], t: u64) -> Vec<String> {
        let mut out = Vec::new();
        front.push(
            Record {
                header: header(kind, pid, bytes.len(), t),
                head: bytes,
            },
            |input| {
                out.push(match input {
                    Input::Started(f) => format!("started {} {}", f.info.pid, f.instance),
                    Input::Exited { pid, instance } => format!("exited {pid} {instance:?}"),
                    Input::Exchange { exchange, instance } => format!(
                        "exchange {} {} {} {}",
                        exchange.pid,
                        exchange.status,
                        exchange.path.as_deref().unwrap_or("-"),
                        instance.map_or("-".into(), |i| i.name)
                    ),
                    other => format!("{other:?}"),
                });
            },
        );
        out
    }

    const REQ: &[u8] = b"POST /v1/messages HTTP/1.1\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

    #[test]
    fn execs_exits_and_exchanges_become_inputs_in_order() {
        let mut table = Table::default();
        table.claude.insert(10, InstanceId::rule("writer"));
        table.claude.insert(11, InstanceId::rule("reviewer"));
        let mut front = Front::new(table, WallClock::default());
        // A non-claude exec says nothing; a claude exec is a start.
        assert!(feed(&mut front, kind::EXEC, 99, b"", 1).is_empty());
        assert_eq!(
            feed(&mut front, kind::EXEC, 10, b"", 2),
            ["started 10 writer"]
        );
        // A request alone completes nothing; its response is an exchange of the instance.
        assert!(feed(&mut front, kind::WRITE, 10, REQ, 3).is_empty());
        assert_eq!(
            feed(&mut front, kind::READ, 10, OK, 4),
            ["exchange 10 200 /v1/messages writer"]
        );
        // A process first seen by its traffic is found, then its exchange follows.
        feed(&mut front, kind::WRITE, 11, REQ, 5);
        assert_eq!(
            feed(&mut front, kind::READ, 11, OK, 6),
            [
                "started 11 reviewer",
                "exchange 11 200 /v1/messages reviewer"
            ]
        );
        // Traffic of a process that is not claude is still an exchange, of no instance.
        feed(&mut front, kind::WRITE, 99, REQ, 7);
        assert_eq!(
            feed(&mut front, kind::READ, 99, OK, 8),
            ["exchange 99 200 /v1/messages -"]
        );
        assert_eq!(
            feed(&mut front, kind::EXIT, 10, b"", 9),
            [r#"exited 10 Some(InstanceId { name: "writer", source: Rule })"#]
        );
        assert_eq!(
            feed(&mut front, kind::EXIT, 99, b"", 10),
            ["exited 99 None"]
        );
    }

    #[test]
    fn api_requests_of_background_machinery_go_to_its_observe_only_instance() {
        let mut table = Table::default();
        table.machinery.insert(20, InstanceId::bg_machinery(1000));
        let mut front = Front::new(table, WallClock::default());
        // Not an API call (an update check, say): no instance.
        feed(
            &mut front,
            kind::WRITE,
            20,
            b"GET /download/latest HTTP/1.1\r\n\r\n",
            1,
        );
        assert_eq!(
            feed(&mut front, kind::READ, 20, OK, 2),
            ["exchange 20 200 /download/latest -"]
        );
        // Its own API call: the machinery's instance, found once.
        feed(&mut front, kind::WRITE, 20, REQ, 3);
        assert_eq!(
            feed(&mut front, kind::READ, 20, OK, 4),
            [
                "started 20 claude-bg-daemon:1000",
                "exchange 20 200 /v1/messages claude-bg-daemon:1000"
            ]
        );
        feed(&mut front, kind::WRITE, 20, REQ, 5);
        assert_eq!(
            feed(&mut front, kind::READ, 20, OK, 6),
            ["exchange 20 200 /v1/messages claude-bg-daemon:1000"]
        );
    }

    #[test]
    fn an_exit_forgets_the_process_and_its_pending_requests() {
        let mut table = Table::default();
        table.claude.insert(10, InstanceId::rule("writer"));
        let mut front = Front::new(table, WallClock::default());
        feed(&mut front, kind::EXEC, 10, b"", 1);
        feed(&mut front, kind::WRITE, 10, REQ, 2);
        feed(&mut front, kind::EXIT, 10, b"", 3);
        // The pid comes back as another process: it is looked at anew, and the old request is
        // not paired with the new process's answer.
        assert_eq!(
            feed(&mut front, kind::READ, 10, OK, 4),
            ["started 10 writer", "exchange 10 200 - writer"]
        );
        assert_eq!(front.pair_stats().unpaired_responses, 1);
    }
}
