//! Which attachments exist and which processes hold them: the pure decisions behind attaching
//! and detaching probes (the I/O is in [`super::probes`]).
//!
//! A native binary is attached once per file (device and inode) for every process that runs
//! it, a script's files once per process. Each attachment is held by the processes it was
//! made or reused for; when the last of them exits it is detached. At most `cap` attachments
//! exist at once (each costs the daemon a few file descriptors and the kernel a few uprobes),
//! so a user starting hundreds of distinct `claude` files cannot exhaust the daemon: beyond
//! the cap a new file is refused and its process is shown unobserved.
//!
//! Each user has a share of the cap: an attachment counts for the user whose process made it,
//! and a user holding `share` attachments gets no new one, so a user who fills their share
//! (distinct tiny `claude` files, a script mapping hundreds of libraries exporting
//! `SSL_write`) leaves the rest of the cap to everyone else. A file another user's process
//! already made an attachment for is shared whatever the share. Root's processes (the host's
//! own services, its fleet) are bounded by the cap alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use claude_watch_core::config::DEFAULT_MAX_ATTACHMENTS;

/// A user's share of `cap` attachments when `[daemon] max_attachments_per_user` is not set: a
/// quarter of it (at least 1).
#[must_use]
pub fn default_share(cap: usize) -> usize {
    (cap / 4).max(1)
}

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
    /// Not attached: the process's user holds `share` attachments already.
    OverShare {
        /// The share in force.
        share: usize,
    },
}

/// One attachment: the user it counts for, and the processes holding it.
#[derive(Debug)]
struct Held {
    uid: u32,
    pids: BTreeSet<u32>,
}

/// Attachments and their holders.
#[derive(Debug, Default)]
pub struct Ledger {
    cap: usize,
    /// Attachments per user at most (`None`: [`default_share`] of the cap).
    share: Option<usize>,
    holders: BTreeMap<AttachKey, Held>,
    /// Attachments per user.
    per_user: HashMap<u32, usize>,
    refused: u64,
}

impl Ledger {
    /// An empty ledger allowing `cap` attachments, a quarter of them per user.
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// Changes the cap (a reload); attachments beyond a lowered cap stay until released.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Changes the share of each user (`None`: [`default_share`] of the cap); attachments
    /// beyond a lowered share stay until released.
    pub fn set_share(&mut self, share: Option<usize>) {
        self.share = share;
    }

    /// The share of each user in force.
    #[must_use]
    pub fn share(&self) -> usize {
        self.share.unwrap_or_else(|| default_share(self.cap))
    }

    /// Process `pid` of user `uid` needs attachment `key`.
    pub fn acquire(&mut self, key: AttachKey, pid: u32, uid: u32) -> Acquire {
        if let Some(held) = self.holders.get_mut(&key) {
            held.pids.insert(pid);
            return Acquire::Shared;
        }
        if self.holders.len() >= self.cap {
            self.refused += 1;
            return Acquire::Refused { cap: self.cap };
        }
        let share = self.share();
        if uid != 0 && self.per_user.get(&uid).copied().unwrap_or(0) >= share {
            self.refused += 1;
            return Acquire::OverShare { share };
        }
        Acquire::Attach
    }

    /// Attachment `key` was made for process `pid` of user `uid` (after [`Acquire::Attach`]).
    pub fn attached(&mut self, key: AttachKey, pid: u32, uid: u32) {
        let held = self.holders.entry(key).or_insert_with(|| {
            *self.per_user.entry(uid).or_default() += 1;
            Held {
                uid,
                pids: BTreeSet::new(),
            }
        });
        held.pids.insert(pid);
    }

    /// Process `pid` exited: the attachments no other process holds, to detach now.
    pub fn release(&mut self, pid: u32) -> Vec<AttachKey> {
        let mut free = Vec::new();
        for (key, held) in &mut self.holders {
            if held.pids.remove(&pid) && held.pids.is_empty() {
                free.push(*key);
            }
        }
        for key in &free {
            if let Some(held) = self.holders.remove(key)
                && let Some(n) = self.per_user.get_mut(&held.uid)
            {
                *n -= 1;
                if *n == 0 {
                    self.per_user.remove(&held.uid);
                }
            }
        }
        free
    }

    /// Attachments that count for user `uid` (what the tests check; the daemon asks none).
    #[cfg(test)]
    #[must_use]
    pub fn of_user(&self, uid: u32) -> usize {
        self.per_user.get(&uid).copied().unwrap_or(0)
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

    /// Attachments refused for the cap or a user's share since the start.
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
        assert_eq!(ledger.acquire(file(7), 100, 1000), Acquire::Attach);
        ledger.attached(file(7), 100, 1000);
        assert_eq!(ledger.acquire(file(7), 101, 1000), Acquire::Shared);
        assert_eq!(ledger.acquire(file(7), 102, 1000), Acquire::Shared);
        assert!(ledger.release(101).is_empty());
        assert!(ledger.release(100).is_empty());
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger.release(102), vec![file(7)]);
        assert!(ledger.is_empty());
        // Gone: the next process attaches anew.
        assert_eq!(ledger.acquire(file(7), 103, 1000), Acquire::Attach);
    }

    #[test]
    fn a_per_process_attachment_goes_with_its_process() {
        let mut ledger = Ledger::new(4);
        ledger.set_share(None);
        assert_eq!(ledger.share(), 1);
        ledger.set_share(Some(4));
        let lib = AttachKey {
            dev: 1,
            ino: 9,
            pid: Some(200),
        };
        assert_eq!(ledger.acquire(lib, 200, 1000), Acquire::Attach);
        ledger.attached(lib, 200, 1000);
        assert_eq!(ledger.acquire(file(7), 200, 1000), Acquire::Attach);
        ledger.attached(file(7), 200, 1000);
        let mut freed = ledger.release(200);
        freed.sort();
        assert_eq!(freed, vec![file(7), lib]);
        assert!(ledger.is_empty());
    }

    #[test]
    fn beyond_the_cap_new_files_are_refused_and_shared_ones_are_not() {
        let mut ledger = Ledger::new(2);
        ledger.set_share(Some(2));
        for (ino, pid) in [(1, 10), (2, 20)] {
            assert_eq!(ledger.acquire(file(ino), pid, 1000), Acquire::Attach);
            ledger.attached(file(ino), pid, 1000);
        }
        assert_eq!(
            ledger.acquire(file(3), 30, 1000),
            Acquire::Refused { cap: 2 }
        );
        assert_eq!(
            ledger.acquire(file(3), 31, 1000),
            Acquire::Refused { cap: 2 }
        );
        assert_eq!(ledger.refused(), 2);
        // A file already attached is still shared at the cap.
        assert_eq!(ledger.acquire(file(1), 11, 1000), Acquire::Shared);
        // A refused process holds nothing: its exit frees nothing.
        assert!(ledger.release(30).is_empty());
        // Room again once a file's last process exits.
        assert_eq!(ledger.release(20), vec![file(2)]);
        assert_eq!(ledger.acquire(file(3), 32, 1000), Acquire::Attach);
    }

    #[test]
    fn a_failed_attach_leaves_nothing_held() {
        let mut ledger = Ledger::new(1);
        assert_eq!(ledger.acquire(file(1), 10, 1000), Acquire::Attach);
        // The attach failed: `attached` is never called, the slot stays free.
        assert!(ledger.is_empty());
        assert_eq!(ledger.acquire(file(2), 11, 1000), Acquire::Attach);
    }

    #[test]
    fn a_lowered_cap_keeps_what_is_attached_but_refuses_more() {
        let mut ledger = Ledger::new(3);
        ledger.set_share(Some(3));
        for ino in 1..=3 {
            assert_eq!(ledger.acquire(file(ino), 10, 1000), Acquire::Attach);
            ledger.attached(file(ino), 10, 1000);
        }
        ledger.set_cap(1);
        assert_eq!(ledger.len(), 3);
        assert_eq!(
            ledger.acquire(file(4), 11, 1000),
            Acquire::Refused { cap: 1 }
        );
        assert_eq!(ledger.release(10).len(), 3);
        assert_eq!(ledger.acquire(file(4), 11, 1000), Acquire::Attach);
    }

    #[test]
    fn a_user_over_their_share_gets_no_new_file_and_others_still_do() {
        let mut ledger = Ledger::new(8);
        assert_eq!(ledger.share(), 2, "a quarter of the cap by default");
        let (attacker, victim) = (1001, 1002);
        for ino in 1..=2 {
            assert_eq!(ledger.acquire(file(ino), 10, attacker), Acquire::Attach);
            ledger.attached(file(ino), 10, attacker);
        }
        assert_eq!(
            ledger.acquire(file(3), 11, attacker),
            Acquire::OverShare { share: 2 }
        );
        // The rest of the cap is everyone else's.
        for ino in 10..=11 {
            assert_eq!(ledger.acquire(file(ino), 20, victim), Acquire::Attach);
            ledger.attached(file(ino), 20, victim);
        }
        // A file the attacker attached is shared with another user's process whatever the
        // share, and still counts for the attacker only.
        assert_eq!(ledger.acquire(file(1), 21, victim), Acquire::Shared);
        assert_eq!((ledger.of_user(attacker), ledger.of_user(victim)), (2, 2));
        // Released by its last holder, it leaves the attacker's share.
        ledger.release(10);
        assert_eq!(ledger.of_user(attacker), 1, "file 1 is still held by 21");
        ledger.release(21);
        assert_eq!(ledger.of_user(attacker), 0);
        assert_eq!(ledger.acquire(file(3), 11, attacker), Acquire::Attach);
        ledger.set_share(Some(1));
        assert_eq!(ledger.share(), 1);
        // Root's processes are bounded by the cap alone.
        for ino in 20..=22 {
            assert_eq!(ledger.acquire(file(ino), 1, 0), Acquire::Attach);
            ledger.attached(file(ino), 1, 0);
        }
        assert_eq!(ledger.of_user(0), 3);
    }
}
