//! Uprobes on the TLS library's write and read functions.
//!
//! The kernel side stays thin: it looks at the first bytes of each plaintext buffer and forwards
//! only those that begin an HTTP/1.x request or response (a bounded head, never a body), plus
//! the next buffer of a connection whose head arrived in pieces. Everything else is counted and
//! dropped here: a response body's reads (a streamed answer is many) are skipped at their
//! entry, by the one lookup of the thread's slot the entry makes anyway (see [`conn::BODY`]),
//! and any other buffer costs a 16-byte read. Only what a decision may hang on wakes the reader
//! at once (see [`wakeup_flags`]).
//!
//! Arguments and return values are read through aya's `ProbeContext::arg` and
//! `RetProbeContext::ret`, which follow `bpf_target_arch` (set by claude-watch's build.rs from
//! the target it is built for): `rdi`/`rsi`/`rdx`/`rcx` and `rax` on x86-64, `x0`..`x3` and `x0`
//! on arm64. Nothing here depends on the architecture otherwise.
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::hint::black_box;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, generated as raw,
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use claude_ebpf_common::{
    BUDGET_ENTRIES, BUDGET_WINDOW_NS, Budget, ConnKey, EXEC_IMAGE_LEN, EXEC_PATH_MAX, EventHeader,
    HEAD_MAX, IMAGE_ENTRIES, ImageKey, KernelOffsets, REPORTED_ENTRIES, ReadArgs, SHORT_HEAD,
    USER_BUDGET_ENTRIES, WATCHED_WORDS, flags, kind, stats, verdict, wakeup,
};

/// Records for user space. User space may resize it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// `SSL_read`/`SSL_read_ex` arguments from entry to return, keyed by pid_tgid: one slot per
/// thread that reads, empty (`buf` 0) between reads, freed when the thread exits.
#[map]
static READ_ARGS: LruHashMap<u64, ReadArgs> = LruHashMap::with_max_entries(16384, 0);

/// Each connection's state in one direction: bits of [`conn`] (whether its next buffer
/// continues a forwarded head, and on the read side where it stands in its exchange), and
/// above them the thread that holds the connection's body mark ([`conn::BODY`]). A
/// connection's slot is set and taken in place, and goes to the LRU when the connection is
/// idle.
#[map]
static CONT: LruHashMap<ConnKey, u64> = LruHashMap::with_max_entries(8192, 0);

/// Bits of a connection's slot in [`CONT`].
mod conn {
    /// The next buffer in this direction continues a forwarded head.
    pub const NEXT: u64 = 1;
    /// (Read side) a request head was written on the connection and its response head has
    /// not been read yet.
    pub const ARMED: u64 = 2;
    /// (Read side) the response head to a request seen written was read: until the next
    /// request head, the connection's reads are its body. The reading thread's slot in
    /// [`super::READ_ARGS`] names the connection (`body`), so that its reads are skipped at
    /// their entry by the one lookup the entry makes anyway (a streamed answer is many
    /// reads); the thread's id is kept above these bits, so that the next request, written on
    /// any thread, clears the mark. Set only after a request was seen: a connection whose
    /// writes are not seen is looked at on every read. The holder's next request, written on
    /// its own thread, leaves these bits as they are and arms the connection's read side in
    /// the thread's slot instead ([`claude_ebpf_common::ReadArgs::armed`]): one lookup where
    /// two were.
    pub const BODY: u64 = 4;
    /// The bits; the holder of the body mark is above them.
    pub const BITS: u64 = 0xffff_ffff;
}

/// Records one process may send per budget window; set by user space at load time
/// (`u32::MAX`: no budget).
#[unsafe(no_mangle)]
static BUDGET_RECORDS: u32 = claude_ebpf_common::BUDGET_RECORDS;

/// Records one user other than root may send per budget window, all their processes together
/// (heads, and execs of images not judged yet); set by user space at load time (`u32::MAX`: no
/// budget).
#[unsafe(no_mangle)]
static USER_BUDGET_RECORDS: u32 = claude_ebpf_common::USER_BUDGET_RECORDS;

/// When a record wakes the reader, one of [`wakeup`]; set by user space at load time.
#[unsafe(no_mangle)]
static WAKEUP: u32 = wakeup::RESPONSES;

/// Bytes in the ring past which every record wakes the reader, whatever [`WAKEUP`] says; set
/// by user space at load time (a quarter of the ring by default).
#[unsafe(no_mangle)]
static WATERMARK: u64 = 2 << 20;

/// The most bytes copied of one buffer head (at most `HEAD_MAX - 1`); set by user space at
/// load time.
#[unsafe(no_mangle)]
static COPY_MAX: u32 = claude_ebpf_common::COPY_MAX;

/// Each process's record budget, keyed by pid (see [`within_budget`]).
#[map]
static BUDGET: LruHashMap<u32, Budget> = LruHashMap::with_max_entries(BUDGET_ENTRIES, 0);

/// Each user's record budget (other than root's), keyed by uid (see [`within_user_budget`]).
#[map]
static USER_BUDGET: LruHashMap<u32, Budget> = LruHashMap::with_max_entries(USER_BUDGET_ENTRIES, 0);

/// User space's verdicts on images, one of [`verdict`]: the execs of an image judged not
/// Claude Code stay here, those of Claude Code and interpreters wake the reader (see
/// [`sched_process_exec`]). Filled and kept within a share per file owner by user space.
#[map]
static IMAGES: HashMap<ImageKey, u32> = HashMap::with_max_entries(IMAGE_ENTRIES, 0);

/// Processes user space watches (instances), a bit per pid (see [`WATCHED_WORDS`]): their
/// execs and exits are always sent. User space clears a process's bit when it stops watching
/// it (its exit seen); should that exit be lost, a later process with the pid has its execs and
/// exit sent too, which costs user space a look and nothing else.
#[map]
static WATCHED: Array<u64> = Array::with_max_entries(WATCHED_WORDS, 0);

/// Processes whose exec was sent: their exit is sent too.
#[map]
static REPORTED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(REPORTED_ENTRIES, 0);

/// Field offsets for the exec filter, from the kernel's BTF; set by user space at load time
/// (all zero: every exec is sent).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    bprm_file: 0,
    bprm_interp: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_size: 0,
    inode_sb: 0,
    sb_dev: 0,
};

/// Counters, see [`stats`].
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

/// `SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    if let (Some(ssl), Some(buf), Some(num)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<i32>(2))
        && num > 0
    {
        capture(
            bpf_get_current_pid_tgid(),
            ssl,
            buf,
            num as u32,
            kind::WRITE,
            core::ptr::null_mut(),
        );
    }
    0
}

/// `SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    if let (Some(ssl), Some(buf), Some(num)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
        && num > 0
    {
        capture(
            bpf_get_current_pid_tgid(),
            ssl,
            buf,
            num.min(u64::from(u32::MAX)) as u32,
            kind::WRITE,
            core::ptr::null_mut(),
        );
    }
    0
}

/// Entry of `SSL_read(SSL *ssl, void *buf, int num)`: remember where the plaintext will land.
#[uprobe]
pub fn ssl_read_entry(ctx: ProbeContext) -> u32 {
    remember_read(&ctx, 0);
    0
}

/// Entry of `SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_ex_entry(ctx: ProbeContext) -> u32 {
    let readbytes = ctx.arg::<u64>(3).unwrap_or(0);
    if readbytes != 0 {
        remember_read(&ctx, readbytes);
    }
    0
}

/// Keeps a read's arguments for its return in the thread's slot of [`READ_ARGS`], written in
/// place when the thread has one; unless the slot marks the connection's reads as a response
/// body ([`conn::BODY`]): then the read stays here, and its return finds the slot empty.
#[inline(always)]
fn remember_read(ctx: &ProbeContext, readbytes: u64) {
    if let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let pid_tgid = bpf_get_current_pid_tgid();
        match READ_ARGS.get_ptr_mut(&pid_tgid) {
            Some(slot) => {
                // SAFETY: the calling thread's own slot; other programs only clear `body`.
                let slot = unsafe { &mut *slot };
                if slot.body == ssl {
                    bump(stats::SKIPPED);
                    bump(stats::BODY_READS);
                    return;
                }
                slot.ssl = ssl;
                slot.buf = buf;
                slot.readbytes = readbytes;
            }
            None => {
                let args = ReadArgs {
                    ssl,
                    buf,
                    readbytes,
                    body: 0,
                    armed: 0,
                };
                let _ = READ_ARGS.insert(&pid_tgid, &args, 0);
            }
        }
    }
}

/// Return of `SSL_read`: the result is the number of bytes read, or <= 0.
#[uretprobe]
pub fn ssl_read_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some((args, slot)) = take_read(pid_tgid) {
        let ret: i32 = ctx.ret();
        if ret > 0 {
            capture(pid_tgid, args.ssl, args.buf, ret as u32, kind::READ, slot);
        }
    }
    0
}

/// Return of `SSL_read_ex`: 1 on success with the count in `*readbytes`.
#[uretprobe]
pub fn ssl_read_ex_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some((args, slot)) = take_read(pid_tgid) {
        let ret: i32 = ctx.ret();
        if ret == 1 {
            // SAFETY: reads user memory through the helper, which checks the access.
            let read = unsafe { bpf_probe_read_user(args.readbytes as *const u64) }.unwrap_or(0);
            if read > 0 {
                capture(
                    pid_tgid,
                    args.ssl,
                    args.buf,
                    read.min(u64::from(u32::MAX)) as u32,
                    kind::READ,
                    slot,
                );
            }
        }
    }
    0
}

/// The arguments of the read returning on thread `pid_tgid`, and its slot, marked empty (`buf`
/// 0) rather than deleted: the thread's next read reuses it, and the slot goes when the thread
/// exits ([`sched_process_exit`]) or, idle, to the LRU. An empty slot is a read its entry
/// skipped (a response body); a missing one, an orphan. The slot is handed on, so that a
/// response head marks the thread's body without asking the map again.
#[inline(always)]
fn take_read(pid_tgid: u64) -> Option<(ReadArgs, *mut ReadArgs)> {
    let Some(slot) = READ_ARGS.get_ptr_mut(&pid_tgid) else {
        bump(stats::ORPHAN_RETURNS);
        return None;
    };
    // SAFETY: the calling thread's own slot; no other program writes it meanwhile.
    let args = unsafe { *slot };
    // SAFETY: as above.
    unsafe { (*slot).buf = 0 };
    (args.buf != 0).then_some((args, slot))
}

/// Methods whose first four bytes open a request line.
const METHODS: [[u8; 4]; 7] = [
    *b"GET ", *b"POST", *b"PUT ", *b"HEAD", *b"DELE", *b"PATC", *b"OPTI",
];

/// What the first bytes of a buffer say.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Begins a request or status line.
    Head,
    /// Anything else.
    Other,
}

/// Looks at a buffer of `len` bytes that thread `pid_tgid` wrote or read (`dir`) on connection
/// `ssl`, and sends it on when it begins (or continues) an HTTP head. Each helper is called
/// once per run: the thread's ids, the uid and the clock are passed on, not asked again. A
/// read passes its thread's slot of [`READ_ARGS`] (`reading`, which its return took; null for a
/// write).
#[inline(always)]
fn capture(pid_tgid: u64, ssl: u64, buf: u64, len: u32, dir: u32, reading: *mut ReadArgs) {
    // Sixteen bytes hold a method, or a status line's version and code.
    let mut prefix = [0u8; 16];
    let n = if len >= 16 {
        // SAFETY: the helper checks the user access.
        match unsafe { bpf_probe_read_user(buf as *const [u8; 16]) } {
            Ok(bytes) => prefix = bytes,
            Err(_) => return,
        }
        16
    } else {
        // The mask (kept by `black_box` from being optimised away) bounds the size for the
        // verifier.
        let n = black_box(len as usize) & 15;
        // SAFETY: `n` <= 15 < prefix.len(); the helper checks the user access.
        if unsafe {
            raw::bpf_probe_read_user(prefix.as_mut_ptr().cast(), n as u32, buf as *const c_void)
        } != 0
        {
            return;
        }
        n
    };
    let start = if dir == kind::WRITE {
        if n >= 4 && starts_method(&prefix) {
            Start::Head
        } else {
            Start::Other
        }
    } else if starts_status(&prefix, n) {
        Start::Head
    } else {
        Start::Other
    };
    let pid = (pid_tgid >> 32) as u32;
    let key = ConnKey {
        ssl,
        pid,
        direction: dir,
    };
    let mut event_flags = 0;
    // A connection's slot this buffer creates, once the buffer is within its budgets: a
    // process over them creates no state either.
    let mut create = None;
    // SAFETY: for a read, the calling thread's own slot, which its return took; other
    // programs only clear `body` and `armed`.
    let reader = unsafe { reading.as_mut() };
    if let Some(reader) = reader.filter(|reader| {
        // The response head to the request this thread wrote on a connection whose body mark
        // it held (see [`rearm_here`]): marked here, in the one slot, without asking the
        // connection's (the steady state of a client reading and writing a connection on one
        // thread). A head in pieces, or an interim answer, takes the connection's slot below.
        reader.armed == ssl
            && start == Start::Head
            && len >= SHORT_HEAD
            && !(n >= 12 && prefix[9] == b'1')
    }) {
        reader.body = ssl;
        reader.armed = 0;
    } else if dir == kind::READ {
        // The read side's slot is asked on every read that got here, head or not: what it
        // says and what this read is make the connection's next state.
        let slot = CONT.get_ptr_mut(&key);
        // SAFETY: a live map value; a connection is read by one thread at a time.
        let held = slot.map_or(0, |slot| unsafe { *slot });
        let state = held & conn::BITS;
        if start == Start::Other {
            if state & conn::NEXT == 0 {
                bump(stats::SKIPPED);
                return;
            }
            event_flags = flags::CONTINUATION;
        }
        // An interim answer (1xx) is followed by the final one, with no request between.
        let interim = start == Start::Head && n >= 12 && prefix[9] == b'1';
        let tid = pid_tgid & 0xffff_ffff;
        // SAFETY: the calling thread's own slot, which its return took; other programs only
        // clear `body` and `armed`.
        let reader = unsafe { &mut *reading };
        // Armed in the reading thread's own slot: this thread held the connection's body mark
        // and wrote its next request (see the write side below), and nothing else happened
        // on the connection's read side since (its slot still names this thread). The arming
        // moves to the connection's slot here, so that a read marking the body in the thread's
        // slot alone (above) finds the connection's slot as the request left it.
        let armed_here = reader.armed == ssl && state & conn::BODY != 0 && held >> 32 == tid;
        if reader.armed == ssl {
            reader.armed = 0;
        }
        let armed = armed_here || state & conn::ARMED != 0;
        let next = if len < SHORT_HEAD {
            // The status line or headers may be split: forward the next read too.
            if armed {
                conn::ARMED | conn::NEXT
            } else {
                conn::NEXT
            }
        } else if armed && !interim {
            // The response head to a request seen written: the connection's next reads on
            // this thread are its body, skipped at their entry.
            reader.body = ssl;
            (tid << 32) | conn::BODY
        } else if armed {
            conn::ARMED
        } else {
            0
        };
        if next != held {
            // Another thread's body mark (this one's reads of a connection it marked never
            // get here) goes, whatever replaces it.
            release_body(pid_tgid, held, ssl);
            match slot {
                // SAFETY: as above.
                Some(slot) => unsafe { *slot = next },
                None => create = Some((key, next)),
            }
        }
    } else if start == Start::Head {
        // A request: its connection's reads are looked at again, its next response head is
        // looked for, and what follows that head is its body. The writing thread's own slot
        // is asked first, so that a client reading and writing a connection on one thread
        // (Claude Code, node, Bun) never depends on the connection's slot, which others can
        // evict, for its own mark to go.
        if !rearm_here(pid_tgid, ssl) {
            let read = ConnKey {
                direction: kind::READ,
                ..key
            };
            match CONT.get_ptr_mut(&read) {
                Some(slot) => {
                    // SAFETY: a live map value.
                    let slot = unsafe { &mut *slot };
                    release_body(pid_tgid, *slot, ssl);
                    *slot = conn::ARMED;
                }
                None => create = Some((read, conn::ARMED)),
            }
        }
    } else {
        // Taken in place (set to 0), not deleted: the connection's slot is reused.
        let pending = CONT.get_ptr_mut(&key).is_some_and(|slot| {
            // SAFETY: a live map value; a connection is written by one thread at a time.
            let slot = unsafe { &mut *slot };
            core::mem::replace(slot, 0) != 0
        });
        if !pending {
            bump(stats::SKIPPED);
            return;
        }
        event_flags = flags::CONTINUATION;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let uid = current_uid();
    if !within_budget(pid, now) {
        return;
    }
    if !within_user_budget(uid, now) {
        // Not sent: the process keeps the record it was charged, so what the user's share
        // refuses does not also use up the process's own budget for the window.
        refund(&BUDGET, pid);
        bump(stats::OVER_USER_BUDGET);
        return;
    }
    if let Some((key, state)) = create {
        let _ = CONT.insert(&key, &state, 0);
    }
    if dir == kind::WRITE && start == Start::Head && prefix[0] == b'P' && ends_headers(buf, len) {
        // Headers written alone (node's http): the body, with the model, follows.
        expect_continuation(&key);
    }
    // A response matters at once unless its status line reads 1xx, 2xx or 3xx.
    let urgent = dir == kind::READ
        && !(start == Start::Head
            && n >= 12
            && prefix[8] == b' '
            && matches!(prefix[9], b'1'..=b'3'));
    // A body after headers written alone: only its start (the model) is read.
    let limit = if dir == kind::WRITE && event_flags == flags::CONTINUATION {
        claude_ebpf_common::BODY_COPY_MAX
    } else {
        claude_ebpf_common::COPY_MAX
    };
    let header = EventHeader {
        ts_ns: now,
        conn: ssl,
        pid,
        tid: pid_tgid as u32,
        uid,
        pad: 0,
        len,
        captured: 0,
        kind: dir,
        flags: event_flags,
    };
    emit(header, buf, urgent, limit);
}

/// A request head written by thread `pid_tgid` on connection `ssl`, seen from the thread's own
/// slot of [`READ_ARGS`]: when the thread holds the connection's body mark, the mark goes and
/// the connection's read side is armed in the slot ([`ReadArgs::armed`]), in the one lookup,
/// and `true`: no other thread can hold a mark on the connection (a thread marks its reads
/// only by releasing the mark its connection's slot names), so its slot need not be asked.
/// Otherwise `false` (the thread holds no mark on the connection): the caller arms the
/// connection's slot, and releases the mark another thread holds there.
#[inline(always)]
fn rearm_here(pid_tgid: u64, ssl: u64) -> bool {
    let Some(slot) = READ_ARGS.get_ptr_mut(&pid_tgid) else {
        return false;
    };
    // SAFETY: the calling thread's own slot; other programs only clear `body`.
    let slot = unsafe { &mut *slot };
    if slot.body == ssl {
        slot.body = 0;
        slot.armed = ssl;
        true
    } else {
        false
    }
}

/// Clears the body mark a connection's read-side state `held` names ([`conn::BODY`] and its
/// holder's thread id above the bits), on the holder, a thread of the calling thread
/// `pid_tgid`'s process: unless that is the calling thread, whose own mark the caller has
/// seen to.
#[inline(always)]
fn release_body(pid_tgid: u64, held: u64, ssl: u64) {
    let holder = held >> 32;
    if held & conn::BODY != 0 && holder != pid_tgid & 0xffff_ffff {
        clear_body((pid_tgid & !0xffff_ffff) | holder, ssl);
    }
}

/// Clears thread `thread`'s body mark (its pid_tgid) when it names connection `ssl`, and its
/// arming of the connection ([`ReadArgs::armed`]): a request was written on it, and its next
/// reads are looked at again.
#[inline(always)]
fn clear_body(thread: u64, ssl: u64) {
    if let Some(slot) = READ_ARGS.get_ptr_mut(&thread) {
        // SAFETY: a live map value; only the mark and the arming are written, and only to
        // clear them.
        let slot = unsafe { &mut *slot };
        if slot.body == ssl {
            slot.body = 0;
        }
        if slot.armed == ssl {
            slot.armed = 0;
        }
    }
}

/// Whether the first four bytes open a request line (one of [`METHODS`]), compared as one
/// word each.
#[inline(always)]
fn starts_method(prefix: &[u8; 16]) -> bool {
    let word = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let mut i = 0;
    while i < METHODS.len() {
        if word == u32::from_le_bytes(METHODS[i]) {
            return true;
        }
        i += 1;
    }
    false
}

/// Marks the next buffer of `key`'s connection and direction as a continuation, in its slot of
/// [`CONT`] (see [`set_in_place`]).
#[inline(always)]
fn expect_continuation(key: &ConnKey) {
    set_in_place(&CONT, key, conn::NEXT);
}

/// Sets `key`'s value in `map`: written in its slot when it has one (a lookup, no hash
/// update), else inserted. Used for slots only one thread writes at a time (a thread's read,
/// a connection's continuation).
#[inline(always)]
fn set_in_place<K, V>(map: &LruHashMap<K, V>, key: &K, value: V) {
    match map.get_ptr_mut(key) {
        // SAFETY: a live map value; its one writer is the calling thread.
        Some(slot) => unsafe { *slot = value },
        None => {
            let _ = map.insert(key, &value, 0);
        }
    }
}

/// Gives back one record [`spend`] counted for `key` in the current window.
#[inline(always)]
fn refund(map: &LruHashMap<u32, Budget>, key: u32) {
    if let Some(budget) = map.get_ptr_mut(&key) {
        // SAFETY: a live map value; concurrent updates only make the counts approximate.
        let budget = unsafe { &mut *budget };
        budget.records = budget.records.saturating_sub(1);
    }
}

/// The real uid of the calling task.
#[inline(always)]
fn current_uid() -> u32 {
    bpf_get_current_uid_gid() as u32
}

/// Whether process `pid` may send one more record in the current window (and counts it): at
/// most [`BUDGET_RECORDS`] per [`BUDGET_WINDOW_NS`], so one process flooding its TLS writes
/// cannot fill the ring shared with every other process.
#[inline(always)]
fn within_budget(pid: u32, now: u64) -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let limit = unsafe { core::ptr::read_volatile(&raw const BUDGET_RECORDS) };
    let within = spend(&BUDGET, pid, limit, now);
    if !within {
        bump(stats::OVER_BUDGET);
    }
    within
}

/// Whether user `uid` may send one more record in the current window (and counts it): at most
/// [`USER_BUDGET_RECORDS`] per [`BUDGET_WINDOW_NS`] over all their processes, so one user
/// starting many processes (each within its own budget) still spends only their share. Root
/// is not budgeted here (its processes are, each): root's agents are the host's own.
#[inline(always)]
fn within_user_budget(uid: u32, now: u64) -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let limit = unsafe { core::ptr::read_volatile(&raw const USER_BUDGET_RECORDS) };
    uid == 0 || spend(&USER_BUDGET, uid, limit, now)
}

/// Spends one record of `key`'s budget in `map` for the window holding `now`: `false` (and
/// the drop counted in the entry) when `limit` records were sent in it already. No loop, one
/// map lookup. Threads on several CPUs may race on the counts; a budget is approximate by that
/// much.
#[inline(always)]
fn spend(map: &LruHashMap<u32, Budget>, key: u32, limit: u32, now: u64) -> bool {
    let Some(budget) = map.get_ptr_mut(&key) else {
        let fresh = Budget {
            window_start_ns: now,
            records: 1,
            dropped: 0,
        };
        let _ = map.insert(&key, &fresh, 0);
        return true;
    };
    // SAFETY: a live map value; concurrent updates only make the counts approximate.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) >= BUDGET_WINDOW_NS {
        budget.window_start_ns = now;
        budget.records = 1;
        true
    } else if budget.records < limit {
        budget.records += 1;
        true
    } else {
        budget.dropped = budget.dropped.saturating_add(1);
        false
    }
}

/// Whether the first `n` bytes match `HTTP/1.` (all of it, or all there is of a short read).
#[inline(always)]
fn starts_status(prefix: &[u8; 16], n: usize) -> bool {
    const STATUS: &[u8; 7] = b"HTTP/1.";
    let m = if n < 7 { n } else { 7 };
    let mut i = 0;
    while i < 7 {
        if i < m && prefix[i] != STATUS[i] {
            return false;
        }
        i += 1;
    }
    m > 0
}

/// Whether a buffer of `len <= HEAD_MAX` bytes ends with the blank line closing the headers.
#[inline(always)]
fn ends_headers(buf: u64, len: u32) -> bool {
    if len < 4 || len as usize > HEAD_MAX {
        return false;
    }
    // SAFETY: the helper checks the user access.
    let tail = unsafe { bpf_probe_read_user((buf + u64::from(len) - 4) as *const [u8; 4]) };
    matches!(tail, Ok(t) if t == *b"\r\n\r\n")
}

/// `bpf_ringbuf_output` flags: wake the reader, or leave the record for the next wake-up.
const NO_WAKEUP: u64 = 1;
const FORCE_WAKEUP: u64 = 2;

/// The `bpf_ringbuf_output` flags of a TLS record (see [`wakeup`]): `dir` is its kind,
/// `urgent` whether a decision may hang on it. Under [`wakeup::RESPONSES`] a request waits in
/// the ring for its response (which follows within the request's latency) and the response
/// wakes the reader for both. Forced, not adaptive, because an adaptive wake-up is skipped
/// while older records are unread.
#[inline(always)]
fn wakeup_flags(dir: u32, urgent: bool) -> u64 {
    // SAFETY: plain reads of globals the loader may have rewritten.
    let policy = unsafe { core::ptr::read_volatile(&raw const WAKEUP) };
    ring_flags(match policy {
        wakeup::RESPONSES => dir == kind::READ,
        wakeup::ERRORS => urgent,
        _ => false,
    })
}

/// The `bpf_ringbuf_output` flags of a record that wakes the reader `now`, or else waits for
/// its timer: past the watermark every record wakes the reader, so the ring cannot fill while
/// it sleeps on its timer.
#[inline(always)]
fn ring_flags(now: bool) -> u64 {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let watermark = unsafe { core::ptr::read_volatile(&raw const WATERMARK) };
    if now || EVENTS.query(BPF_RB_AVAIL_DATA) >= watermark {
        FORCE_WAKEUP
    } else {
        NO_WAKEUP
    }
}

/// `bpf_ringbuf_query` flag: bytes written and not yet read.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Sends `header` and at most `limit` (and `COPY_MAX`) bytes of `buf`, the buffer of
/// `header.len` bytes it describes. The bytes are read straight into the record reserved in
/// the ring, not through a scratch buffer (in the real client every page a probe touches is
/// cold: one fewer is worth more than the copy), in the smallest of three sizes that holds
/// them (the verifier wants a reserve of a constant size; most heads are short).
#[inline(always)]
fn emit(header: EventHeader, buf: u64, urgent: bool, limit: u32) {
    let len = header.len;
    // SAFETY: a plain read of a global the loader may have rewritten.
    let copy_max = unsafe { core::ptr::read_volatile(&raw const COPY_MAX) }.min(limit) as usize;
    // At most COPY_MAX <= HEAD_MAX - 1 bytes.
    let cap = if len as usize > copy_max {
        copy_max
    } else {
        len as usize
    } & (HEAD_MAX - 1);
    let wake = wakeup_flags(header.kind, urgent);
    let sent = if cap < SMALL {
        send::<SMALL>(header, buf, cap, wake)
    } else if cap < MEDIUM {
        send::<MEDIUM>(header, buf, cap, wake)
    } else {
        send::<HEAD_MAX>(header, buf, cap, wake)
    };
    match sent {
        Sent::Yes => bump(stats::SENT),
        Sent::Full => bump(stats::LOST),
        Sent::Unreadable => {}
    }
}

/// Head room of the two smaller record sizes [`emit`] reserves (powers of two, below
/// [`HEAD_MAX`]).
const SMALL: usize = 512;
const MEDIUM: usize = 2048;

/// A record as reserved in the ring: its header, and room for `ROOM` bytes of head.
#[repr(C)]
struct Record<const ROOM: usize> {
    header: EventHeader,
    head: [u8; ROOM],
}

/// How a [`send`] went.
enum Sent {
    Yes,
    /// The ring had no room.
    Full,
    /// The buffer could not be read (the record was given back).
    Unreadable,
}

/// Reserves a record with room for `ROOM` bytes (a power of two), reads `cap` (< `ROOM`)
/// bytes of `buf` into it and submits it with the wake-up flags `wake`.
#[inline(always)]
fn send<const ROOM: usize>(header: EventHeader, buf: u64, cap: usize, wake: u64) -> Sent {
    let Some(mut entry) = EVENTS.reserve::<Record<ROOM>>(0) else {
        return Sent::Full;
    };
    let record = entry.as_mut_ptr();
    // One mask bounds the size for the verifier.
    let cap = black_box(cap) & (ROOM - 1);
    // SAFETY: `record` points to the reserved record, whose head holds `ROOM` > `cap` bytes;
    // the helper checks the user access.
    let read = unsafe {
        raw::bpf_probe_read_user(
            (&raw mut (*record).head).cast::<c_void>(),
            cap as u32,
            buf as *const c_void,
        )
    };
    if read != 0 {
        entry.discard(0);
        return Sent::Unreadable;
    }
    // SAFETY: as above; the header is written whole.
    unsafe {
        (&raw mut (*record).header).write(EventHeader {
            captured: cap as u32,
            ..header
        });
    }
    entry.submit(wake);
    Sent::Yes
}

/// Every `execve`. An exec of an image user space judged not Claude Code (the [`IMAGES`] map,
/// keyed by the new image's inode) stays here, unless its process is watched; every other exec
/// goes to user space, which decides whether the new program is a claude to watch, and its
/// process's exit will follow it.
///
/// Which execs wake the reader: those of images judged [`verdict::REPORT_NOW`] (Claude Code,
/// and interpreters whose script decides), of watched processes, and every exec when the
/// kernel cannot tell the image (no offsets). An exec of an image not judged yet does not: the
/// wake-up inside the exec (20-60 µs, paid by the process that execs) is what this program
/// would cost, and the record rides the reader's timer instead. It carries the image's key and
/// path, so user space judges the file also when a short-lived tool is gone by then; a new
/// Claude Code is found on that timer (a few hundred ms, well before its first request), and
/// at once from its image's second exec on.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let watched = is_watched(pid);
    // SAFETY: a raw tracepoint's context is its arguments: (task, old_pid, bprm).
    let bprm: u64 = unsafe { *(ctx.as_ptr() as *const u64).add(2) };
    let image = image_of(bprm);
    let mut now = watched || image.is_none();
    if !watched {
        if let Some(key) = &image {
            // SAFETY: the value is read at once.
            match unsafe { IMAGES.get(key) } {
                Some(v) if *v == verdict::NOT_CLAUDE => {
                    bump(stats::EXECS_FILTERED);
                    return 0;
                }
                Some(_) => now = true,
                None => {}
            }
        }
        // An image not judged yet costs user space a look: a user exec'ing fresh files in a
        // loop spends their own budget, not the daemon's time for everyone.
        // SAFETY: helper without preconditions.
        if !within_user_budget(current_uid(), unsafe { bpf_ktime_get_ns() }) {
            bump(stats::EXECS_OVER_BUDGET);
            return 0;
        }
    }
    let _ = REPORTED.insert(&pid, &1, 0);
    bump(stats::EXECS_SENT);
    match image {
        Some(key) => send_exec(key, bprm, now),
        None => notify(kind::EXEC, now),
    }
    0
}

/// An exec record as reserved in the ring: its header, the image's key, and room for its path.
#[repr(C)]
struct ExecRecord {
    header: EventHeader,
    image: ImageKey,
    path: [u8; EXEC_PATH_MAX],
}

/// Sends the exec of the current process, of `image` loaded from the path `bprm->interp`,
/// waking the reader `now` or not. The path's address is read here, not with the image: an
/// exec kept in the kernel never needs it.
#[inline(always)]
fn send_exec(image: ImageKey, bprm: u64, now: bool) {
    // SAFETY: a plain read of a global the loader may have rewritten; the helper checks the
    // kernel read (a failed one leaves 0, which the string read below refuses).
    let interp: u64 = unsafe {
        let off = core::ptr::read_volatile(&raw const OFFSETS);
        bpf_probe_read_kernel((bprm + u64::from(off.bprm_interp)) as *const u64).unwrap_or(0)
    };
    let wake = ring_flags(now);
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        bump(stats::LOST);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to the reserved record, whose path holds `EXEC_PATH_MAX` bytes;
    // the helper checks the kernel access and writes at most that, its NUL included.
    let read = unsafe {
        raw::bpf_probe_read_kernel_str(
            (&raw mut (*record).path).cast::<c_void>(),
            EXEC_PATH_MAX as u32,
            interp as *const c_void,
        )
    };
    // The length with its NUL; a path that filled the room may have been cut.
    let (len, cut) = if read > 0 && (read as usize) < EXEC_PATH_MAX {
        (read as u32 - 1, 0)
    } else {
        (0, flags::PATH_CUT)
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: as above, the header and key written whole; the clock helper has no
    // preconditions.
    unsafe {
        (&raw mut (*record).image).write(image);
        (&raw mut (*record).header).write(EventHeader {
            ts_ns: bpf_ktime_get_ns(),
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            uid: current_uid(),
            kind: kind::EXEC,
            flags: flags::IMAGE | cut,
            len,
            captured: EXEC_IMAGE_LEN as u32 + len,
            ..EventHeader::default()
        });
    }
    entry.submit(wake);
}

/// Words of `struct inode` [`image_of`] reads at once, from the first of the fields it needs.
const INODE_WORDS: usize = 8;

/// Whether user space watches process `pid` (its bit in [`WATCHED`]).
#[inline(always)]
fn is_watched(pid: u32) -> bool {
    WATCHED
        .get(pid / 64)
        .is_some_and(|word| word & (1 << (pid % 64)) != 0)
}

/// The image an exec loads (`bprm->file->f_inode`), when user space gave the offsets.
#[inline(always)]
fn image_of(bprm: u64) -> Option<ImageKey> {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let off = unsafe { core::ptr::read_volatile(&raw const OFFSETS) };
    if off.file_inode == 0 || bprm == 0 {
        return None;
    }
    // SAFETY: the helper checks every kernel read.
    unsafe {
        let file: u64 =
            bpf_probe_read_kernel((bprm + u64::from(off.bprm_file)) as *const u64).ok()?;
        let inode: u64 =
            bpf_probe_read_kernel((file + u64::from(off.file_inode)) as *const u64).ok()?;
        // `i_sb`, `i_ino` and `i_size` lie within a few words of each other (0x28, 0x40,
        // 0x50 on 6.x): one read of the words from the first to the last, not three.
        let first = off.inode_sb.min(off.inode_ino).min(off.inode_size);
        let last = off.inode_sb.max(off.inode_ino).max(off.inode_size);
        let aligned = (off.inode_sb | off.inode_ino | off.inode_size) % 8 == 0;
        let (sb, ino, size) = if aligned && last - first < (8 * INODE_WORDS) as u32 {
            let words: [u64; INODE_WORDS] =
                bpf_probe_read_kernel((inode + u64::from(first)) as *const [u64; INODE_WORDS])
                    .ok()?;
            let word = |at: u32| words[((at - first) / 8) as usize % INODE_WORDS];
            (
                word(off.inode_sb),
                word(off.inode_ino),
                word(off.inode_size),
            )
        } else {
            (
                bpf_probe_read_kernel((inode + u64::from(off.inode_sb)) as *const u64).ok()?,
                bpf_probe_read_kernel((inode + u64::from(off.inode_ino)) as *const u64).ok()?,
                bpf_probe_read_kernel((inode + u64::from(off.inode_size)) as *const u64).ok()?,
            )
        };
        let dev: u32 = bpf_probe_read_kernel((sb + u64::from(off.sb_dev)) as *const u32).ok()?;
        Some(ImageKey {
            ino,
            size,
            dev,
            pad: 0,
        })
    }
}

/// Removes `key` from `map` when it holds it; whether it did. A lookup first, since a delete
/// takes the bucket's lock even when the key is absent (the exit of every thread on the host).
/// A macro, as the exit program asks both kinds of hash map.
macro_rules! remove_present {
    ($map:expr, $key:expr) => {{
        // SAFETY: only whether the key is present is read.
        let present = unsafe { $map.get($key).is_some() };
        present && $map.remove($key).is_ok()
    }};
}

/// Every thread exit; only the exit of a process's main thread is reported, and only for a
/// process user space heard of (watched, its exec sent, or its TLS heads sent).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // A thread that exits inside SSL_read never returns: free its pending read here (the LRU
    // map is the backstop), so no process can fill the map and blind everyone's responses.
    // Most threads never read TLS: each map is asked first (a lookup takes no lock), and an
    // entry deleted (the bucket's lock) only when there is one.
    let _ = remove_present!(READ_ARGS, &pid_tgid);
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        let pid = (pid_tgid >> 32) as u32;
        // A reused pid starts with a full budget.
        let sent_heads = remove_present!(BUDGET, &pid);
        let reported = remove_present!(REPORTED, &pid);
        let watched = is_watched(pid);
        // SAFETY: a plain read of a global the loader may have rewritten.
        let filtering = unsafe { core::ptr::read_volatile(&raw const OFFSETS) }.file_inode != 0;
        if sent_heads || reported || watched || !filtering {
            notify(kind::EXIT, false);
        }
    }
    0
}

/// Sends a bare process event of `event_kind` for the current process, waking the reader
/// `now` or not.
#[inline(always)]
fn notify(event_kind: u32, now: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let header = EventHeader {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: current_uid(),
        kind: event_kind,
        ..EventHeader::default()
    };
    // Process events are not heads: only a lost one is counted.
    if EVENTS
        .output::<EventHeader>(&header, ring_flags(now))
        .is_err()
    {
        bump(stats::LOST);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
