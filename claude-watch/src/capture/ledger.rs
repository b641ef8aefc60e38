//! Which attachments exist and which processes hold them: the pure decisions behind attaching
//! and detaching probes (the I/O is in [`super::probes`]).
//!
//! A native binary is attached once per file (device and inode) for every process that runs
//! it, a script's files once per process. Each attachment is held by the processes it was
//! made or reused for; when the last of them exits it is detached. At most `cap` attachments
//! exist at once (each costs the daemon a few file descriptors and the kernel a few uprobes),
//! so a user starting hundreds of distinct `claude` files cannot exhaust the daemon: beyond
//! the cap a new file is refused and its process is shown unobserved.

use std::collections::{BTreeMap, BTreeSet};

/// Default for `[daemon] max_attachments`.
pub const DEFAULT_MAX_ATTACHMENTS: u32 = 256;

/// One attached file: which file (by device and inode) in which scope (one process, or every
/// process mapping it when `pid` is `None`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachKey {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// The one process the attachment is scoped to, if any.
    pub pid: Option<u32>,
}

/// What to do about a process that needs attachment `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Nothing is attached for `key` yet: attach, then [`Ledger::attached`] (or nothing, if the
    /// attach failed).
    Attach,
    /// Already attached; the process now holds it too.
    Shared,
    /// Not attached, and `cap` attachments exist already: refused.
    Refused {
        /// The cap in force.
        cap: usize,
    },
}

/// Attachments and their holders.
#[derive(Debug)]
pub struct Ledger {
    cap: usize,
    holders: BTreeMap<AttachKey, BTreeSet<u32>>,
    refused: u64,
}

impl Ledger {
    /// An empty ledger allowing `cap` attachments.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            holders: BTreeMap::new(),
            refused: 0,
        }
    }

    /// Changes the cap (a reload); attachments beyond a lowered cap stay until released.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Process `pid` needs attachment `key`.
    pub fn acquire(&mut self, key: AttachKey, pid: u32) -> Acquire {
        if let Some(holders) = self.holders.get_mut(&key) {
            holders.insert(pid);
            return Acquire::Shared;
        }
        if self.holders.len() >= self.cap {
            self.refused += 1;
            return Acquire::Refused { cap: self.cap };
        }
        Acquire::Attach
    }

    /// Attachment `key` was made for process `pid` (after [`Acquire::Attach`]).
    pub fn attached(&mut self, key: AttachKey, pid: u32) {
        self.holders.entry(key).or_default().insert(pid);
    }

    /// Process `pid` exited: the attachments no other process holds, to detach now.
    pub fn release(&mut self, pid: u32) -> Vec<AttachKey> {
        let mut free = Vec::new();
        for (key, holders) in &mut self.holders {
            if holders.remove(&pid) && holders.is_empty() {
                free.push(*key);
            }
        }
        for key in &free {
            self.holders.remove(key);
        }
        free
    }

    /// Attachments in place.
    #[must_use]
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Attachments refused for the cap since the start.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The cap in force.
    #[must_use]
    pub fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64) -> AttachKey {
        AttachKey {
            dev: 1,
            ino,
            pid: None,
        }
    }

    #[test]
    fn a_shared_file_is_detached_when_its_last_process_exits() {
        let mut ledger = Ledger::new(4);
        assert_eq!(ledger.acquire(file(7), 100), Acquire::Attach);
        ledger.attached(file(7), 100);
        assert_eq!(ledger.acquire(file(7), 101), Acquire::Shared);
        assert_eq!(ledger.acquire(file(7), 102), Acquire::Shared);
        assert!(ledger.release(101).is_empty());
        assert!(ledger.release(100).is_empty());
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger.release(102), vec![file(7)]);
        assert!(ledger.is_empty());
        // Gone: the next process attaches anew.
        assert_eq!(ledger.acquire(file(7), 103), Acquire::Attach);
    }

    #[test]
    fn a_per_process_attachment_goes_with_its_process() {
        let mut ledger = Ledger::new(4);
        let lib = AttachKey {
            dev: 1,
            ino: 9,
            pid: Some(200),
        };
        assert_eq!(ledger.acquire(lib, 200), Acquire::Attach);
        ledger.attached(lib, 200);
        assert_eq!(ledger.acquire(file(7), 200), Acquire::Attach);
        ledger.attached(file(7), 200);
        let mut freed = ledger.release(200);
        freed.sort();
        assert_eq!(freed, vec![file(7), lib]);
        assert!(ledger.is_empty());
    }

    #[test]
    fn beyond_the_cap_new_files_are_refused_and_shared_ones_are_not() {
        let mut ledger = Ledger::new(2);
        for (ino, pid) in [(1, 10), (2, 20)] {
            assert_eq!(ledger.acquire(file(ino), pid), Acquire::Attach);
            ledger.attached(file(ino), pid);
        }
        assert_eq!(ledger.acquire(file(3), 30), Acquire::Refused { cap: 2 });
        assert_eq!(ledger.acquire(file(3), 31), Acquire::Refused { cap: 2 });
        assert_eq!(ledger.refused(), 2);
        // A file already attached is still shared at the cap.
        assert_eq!(ledger.acquire(file(1), 11), Acquire::Shared);
        // A refused process holds nothing: its exit frees nothing.
        assert!(ledger.release(30).is_empty());
        // Room again once a file's last process exits.
        assert_eq!(ledger.release(20), vec![file(2)]);
        assert_eq!(ledger.acquire(file(3), 32), Acquire::Attach);
    }

    #[test]
    fn a_failed_attach_leaves_nothing_held() {
        let mut ledger = Ledger::new(1);
        assert_eq!(ledger.acquire(file(1), 10), Acquire::Attach);
        // The attach failed: `attached` is never called, the slot stays free.
        assert!(ledger.is_empty());
        assert_eq!(ledger.acquire(file(2), 11), Acquire::Attach);
    }

    #[test]
    fn a_lowered_cap_keeps_what_is_attached_but_refuses_more() {
        let mut ledger = Ledger::new(3);
        for ino in 1..=3 {
            assert_eq!(ledger.acquire(file(ino), 10), Acquire::Attach);
            ledger.attached(file(ino), 10);
        }
        ledger.set_cap(1);
        assert_eq!(ledger.len(), 3);
        assert_eq!(ledger.acquire(file(4), 11), Acquire::Refused { cap: 1 });
        assert_eq!(ledger.release(10).len(), 3);
        assert_eq!(ledger.acquire(file(4), 11), Acquire::Attach);
    }
}
