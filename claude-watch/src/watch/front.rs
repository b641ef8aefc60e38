//! The front half: kernel records turned into the core's inputs, for the daemon and `trace`.
//!
//! ```text
//!  EXEC record ──► processes.exec(pid, image) ─ claude? ──► Input::Started(found)
//!                 (gone: its image judged by path) └ left? ───► Input::Exited { pid }
//!  EXIT record ──► pairer.forget_pid, processes.exited(pid) ──► Input::Exited { pid }
//!  TLS record  ──► pairer.push ─ exchange? ──► a pid not in the table: processes.check first
//!                                          │   (Started); an API call of background
//!                                          │   machinery: processes.attribute (Started)
//!                                          └─► Input::Exchange { exchange }
//! ```
//!
//! Which processes are claude instances is behind [`Processes`] (implemented by
//! [`crate::discover::Discovery`], which reads `/proc`), judged against the core's pid table,
//! lent to each call; the pairing and the dispatch here are pure.

use claude_ebpf_common::kind;

use super::Input;
use crate::discover::{Checked, Exec, Processes};
use crate::http::pair::{PairStats, Pairer, Record};
use crate::instance::table::PidTable;
use crate::time::WallClock;

/// No discovery: every process is unknown (`trace --pid` / `--binary`).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProcesses;

impl Processes for NoProcesses {
    fn check(&mut self, _pid: u32, _known: &PidTable) -> Checked {
        Checked::Nothing
    }
    fn exited(&mut self, _pid: u32) {}
}

/// What a check tells the core.
fn input(pid: u32, checked: Checked) -> Option<Input> {
    match checked {
        Checked::Found(found) => Some(Input::Started(found)),
        Checked::Left => Some(Input::Exited { pid }),
        Checked::Nothing => None,
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

    /// Looks at `pid` (a supervisor's new main process, a process a look was for) against
    /// `known`: what it means for the core, if anything.
    pub fn inspect(&mut self, pid: u32, known: &PidTable) -> Option<Input> {
        input(pid, self.processes.check(pid, known))
    }

    /// Turns one kernel record into the inputs it means (none, one, or a process found and
    /// then its exchange), handed to `emit` in order; `known` is the core's pid table.
    pub fn push(&mut self, record: Record<'_>, known: &PidTable, mut emit: impl FnMut(Input)) {
        let pid = record.header.pid;
        match record.header.kind {
            kind::EXEC => {
                let exec = Exec::of(&record);
                if let Some(input) = input(pid, self.processes.exec(pid, exec.as_ref(), known)) {
                    emit(input);
                }
            }
            kind::EXIT => {
                self.pairer.forget_pid(pid);
                self.processes.exited(pid);
                emit(Input::Exited { pid });
            }
            _ => {
                let Some(exchange) = self.pairer.push(record) else {
                    return;
                };
                let pid = exchange.pid;
                if known.get(pid).is_none() {
                    let found = match self.processes.check(pid, known) {
                        Checked::Found(found) => Some(found),
                        Checked::Left | Checked::Nothing => crate::detect::is_api_call(&exchange)
                            .then(|| self.processes.attribute(pid, known))
                            .flatten(),
                    };
                    if let Some(found) = found {
                        emit(Input::Started(found));
                    }
                }
                emit(Input::Exchange { exchange });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use claude_ebpf_common::EventHeader;

    use super::*;
    use crate::discover::Found;
    use crate::instance::table::Standing;
    use crate::instance::{ClaudeKind, InstanceId, ProcessInfo};

    /// Processes that are claude instances, from a fixed table (the front's tests keep the
    /// core's pid table themselves: [`Rig`]).
    #[derive(Default)]
    struct Table {
        claude: HashMap<u32, InstanceId>,
        /// Background machinery, attributed when it makes API requests.
        machinery: HashMap<u32, InstanceId>,
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
        fn check(&mut self, pid: u32, known: &PidTable) -> Checked {
            match self.claude.get(&pid) {
                Some(id) if known.get(pid).is_none() => {
                    Checked::Found(Self::found(pid, id.clone()))
                }
                None if known.get(pid).is_some() => Checked::Left,
                _ => Checked::Nothing,
            }
        }
        fn attribute(&mut self, pid: u32, known: &PidTable) -> Option<Found> {
            if known.get(pid).is_some() {
                return None;
            }
            Some(Self::found(pid, self.machinery.get(&pid)?.clone()))
        }
        fn exited(&mut self, _pid: u32) {}
    }

    /// A front and the pid table the core would keep from its inputs.
    struct Rig {
        front: Front<Table>,
        known: PidTable,
    }

    impl Rig {
        fn new(table: Table) -> Self {
            Self {
                front: Front::new(table, WallClock::default()),
                known: PidTable::default(),
            }
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

    fn feed(rig: &mut Rig, kind: u32, pid: u32, bytes: &[u8], t: u64) -> Vec<String> {
        let mut inputs = Vec::new();
        rig.front.push(
            Record {
                header: header(kind, pid, bytes.len(), t),
                head: bytes,
            },
            &rig.known,
            |input| inputs.push(input),
        );
        let mut out = Vec::new();
        for input in inputs {
            out.push(match input {
                Input::Started(f) => {
                    let line = format!("started {} {}", f.info.pid, f.instance);
                    rig.known.insert(f, Standing::Watched);
                    line
                }
                Input::Exited { pid } => {
                    let was = rig.known.remove(pid).map(|(f, _)| f.instance.name);
                    format!("exited {pid} {}", was.as_deref().unwrap_or("-"))
                }
                Input::Exchange { exchange } => format!(
                    "exchange {} {} {} {}",
                    exchange.pid,
                    exchange.status,
                    exchange.path.as_deref().unwrap_or("-"),
                    rig.known
                        .get(exchange.pid)
                        .map_or("-", |f| f.instance.name.as_str())
                ),
                other => format!("{other:?}"),
            });
        }
        out
    }

    const REQ: &[u8] = b"POST /v1/messages HTTP/1.1\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

    #[test]
    fn execs_exits_and_exchanges_become_inputs_in_order() {
        let mut table = Table::default();
        table.claude.insert(10, InstanceId::rule("writer"));
        table.claude.insert(11, InstanceId::rule("reviewer"));
        let mut rig = Rig::new(table);
        // A non-claude exec says nothing; a claude exec is a start.
        assert!(feed(&mut rig, kind::EXEC, 99, b"", 1).is_empty());
        assert_eq!(
            feed(&mut rig, kind::EXEC, 10, b"", 2),
            ["started 10 writer"]
        );
        // A request alone completes nothing; its response is an exchange of the instance.
        assert!(feed(&mut rig, kind::WRITE, 10, REQ, 3).is_empty());
        assert_eq!(
            feed(&mut rig, kind::READ, 10, OK, 4),
            ["exchange 10 200 /v1/messages writer"]
        );
        // A process first seen by its traffic is found, then its exchange follows.
        feed(&mut rig, kind::WRITE, 11, REQ, 5);
        assert_eq!(
            feed(&mut rig, kind::READ, 11, OK, 6),
            [
                "started 11 reviewer",
                "exchange 11 200 /v1/messages reviewer"
            ]
        );
        // Traffic of a process that is not claude is still an exchange, of no instance.
        feed(&mut rig, kind::WRITE, 99, REQ, 7);
        assert_eq!(
            feed(&mut rig, kind::READ, 99, OK, 8),
            ["exchange 99 200 /v1/messages -"]
        );
        assert_eq!(feed(&mut rig, kind::EXIT, 10, b"", 9), ["exited 10 writer"]);
        assert_eq!(feed(&mut rig, kind::EXIT, 99, b"", 10), ["exited 99 -"]);
    }

    #[test]
    fn api_requests_of_background_machinery_go_to_its_observe_only_instance() {
        let mut table = Table::default();
        table.machinery.insert(20, InstanceId::bg_machinery(1000));
        let mut rig = Rig::new(table);
        // Not an API call (an update check, say): no instance.
        feed(
            &mut rig,
            kind::WRITE,
            20,
            b"GET /download/latest HTTP/1.1\r\n\r\n",
            1,
        );
        assert_eq!(
            feed(&mut rig, kind::READ, 20, OK, 2),
            ["exchange 20 200 /download/latest -"]
        );
        // Its own API call: the machinery's instance, found once.
        feed(&mut rig, kind::WRITE, 20, REQ, 3);
        assert_eq!(
            feed(&mut rig, kind::READ, 20, OK, 4),
            [
                "started 20 claude-bg-daemon:1000",
                "exchange 20 200 /v1/messages claude-bg-daemon:1000"
            ]
        );
        feed(&mut rig, kind::WRITE, 20, REQ, 5);
        assert_eq!(
            feed(&mut rig, kind::READ, 20, OK, 6),
            ["exchange 20 200 /v1/messages claude-bg-daemon:1000"]
        );
    }

    #[test]
    fn an_exit_forgets_the_process_and_its_pending_requests() {
        let mut table = Table::default();
        table.claude.insert(10, InstanceId::rule("writer"));
        let mut rig = Rig::new(table);
        feed(&mut rig, kind::EXEC, 10, b"", 1);
        feed(&mut rig, kind::WRITE, 10, REQ, 2);
        feed(&mut rig, kind::EXIT, 10, b"", 3);
        // The pid comes back as another process: it is looked at anew, and the old request is
        // not paired with the new process's answer.
        assert_eq!(
            feed(&mut rig, kind::READ, 10, OK, 4),
            ["started 10 writer", "exchange 10 200 - writer"]
        );
        assert_eq!(rig.front.pair_stats().unpaired_responses, 1);
    }

    #[test]
    fn an_instance_process_that_execs_something_else_leaves_the_table() {
        let mut table = Table::default();
        table.claude.insert(10, InstanceId::rule("writer"));
        let mut rig = Rig::new(table);
        assert_eq!(
            feed(&mut rig, kind::EXEC, 10, b"", 1),
            ["started 10 writer"]
        );
        // Known and unchanged: nothing to tell.
        assert!(feed(&mut rig, kind::EXEC, 10, b"", 2).is_empty());
        rig.front.processes_mut().claude.remove(&10);
        assert_eq!(feed(&mut rig, kind::EXEC, 10, b"", 3), ["exited 10 writer"]);
        // Its traffic now belongs to no instance.
        feed(&mut rig, kind::WRITE, 10, REQ, 4);
        assert_eq!(
            feed(&mut rig, kind::READ, 10, OK, 5),
            ["exchange 10 200 /v1/messages -"]
        );
    }
}
