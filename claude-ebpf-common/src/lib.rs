//! Types shared by the kernel programs (`claude-ebpf`) and user space (`claude-watch`).
//!
//! The kernel sends one [`EventHeader`] followed by `captured` bytes of the buffer head for
//! every TLS write or read that begins an HTTP/1.x request or response (or continues one the
//! kernel saw start in pieces), a header, the new image's key and its path
//! ([`EXEC_IMAGE_LEN`]) for an exec it does not keep, and a bare header for a process exit.
//! Everything else stays in the kernel and is only counted.
#![no_std]

/// Size of the head area; the kernel copies at most `HEAD_MAX - 1` bytes of a buffer (so one
/// mask bounds every length for the verifier): room for a request line and
/// headers plus the start of a JSON body, or a status line and headers. A power of two so the
/// kernel can bound lengths with a mask.
pub const HEAD_MAX: usize = 4096;

/// A read shorter than this that starts (or continues) a response head makes the kernel
/// forward the next read on the same connection too: the status line arrived in pieces.
pub const SHORT_HEAD: u32 = 64;

/// When the kernel wakes the reader for a TLS record (the kernel's `WAKEUP` global, set by
/// user space at load time). A record that does not wake the reader waits in the ring until the
/// reader's own timer drains it, or until the ring holds more than the `WATERMARK` global's
/// bytes, whichever comes first. Process events do not follow it: an exec wakes the reader
/// when its image's verdict says so ([`verdict::REPORT_NOW`]: Claude Code, an interpreter),
/// when its process is watched, or when the kernel cannot tell the image (no exec filter);
/// an exec of an image not judged yet rides the timer (it carries its image and path, so user
/// space judges the file after a short-lived process is gone), and an exit never wakes it.
pub mod wakeup {
    /// Every response head wakes the reader at once; a request waits for its response.
    pub const RESPONSES: u32 = 0;
    /// Only what a decision may hang on wakes the reader at once: a response whose status is
    /// not 1xx, 2xx or 3xx (or cannot be read from its first bytes), a head arriving in
    /// pieces. Successful exchanges ride the reader's timer.
    pub const ERRORS: u32 = 1;
    /// No TLS record wakes the reader (the watermark aside); everything rides its timer.
    pub const TIMER: u32 = 2;
}

/// Values of the kernel's `IMAGES` map: what user space judged an image to be, and so what the
/// kernel does with its execs (a process user space watches is always sent, and wakes it).
pub mod verdict {
    /// Not Claude Code, and not an interpreter whose verdict depends on its script: its execs
    /// stay in the kernel.
    pub const NOT_CLAUDE: u32 = 1;
    /// Claude Code, or an interpreter (node, bun) whose script decides: its execs are sent and
    /// wake the reader at once, so a new process is attached before its first request.
    pub const REPORT_NOW: u32 = 2;
}

/// Default of the most bytes the kernel copies of one buffer head (the kernel's `COPY_MAX`
/// global; at most `HEAD_MAX - 1`).
pub const COPY_MAX: u32 = (HEAD_MAX - 1) as u32;

/// The most bytes the kernel copies of a request body that follows headers written alone
/// (node's http writes them apart): user space reads only its `"model"`, which Claude Code puts
/// first (it ends 26 bytes in), so the prompt after it stays in the kernel.
pub const BODY_COPY_MAX: u32 = 512;

/// What a record reports ([`EventHeader::kind`]).
pub mod kind {
    /// A buffer written by the client with `SSL_write`/`SSL_write_ex`: a request.
    pub const WRITE: u32 = 1;
    /// A buffer read by the client with `SSL_read`/`SSL_read_ex`: a response.
    pub const READ: u32 = 2;
    /// A process called `execve`: user space checks whether it is claude. Its head is the new
    /// image's key and path ([`super::EXEC_IMAGE_LEN`]) when the kernel read the image
    /// ([`super::flags::IMAGE`]), else empty.
    pub const EXEC: u32 = 3;
    /// A process exited (its main thread; no head bytes).
    pub const EXIT: u32 = 4;
}

/// Bits of [`EventHeader::flags`].
pub mod flags {
    /// The buffer continues a head the kernel forwarded earlier on this connection (it does
    /// not begin with a request or status line itself).
    pub const CONTINUATION: u32 = 1;
    /// (Exec) the head is the new image's key, then its path ([`super::EXEC_IMAGE_LEN`]).
    pub const IMAGE: u32 = 2;
    /// (Exec) the path did not fit in [`super::EXEC_PATH_MAX`] bytes, or could not be read:
    /// what follows the key is not the whole path.
    pub const PATH_CUT: u32 = 4;
}

/// Indices into the per-CPU `STATS` array map.
pub mod stats {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// HTTP heads sent to user space (exec and exit events are not counted here).
    pub const SENT: u32 = 1;
    /// TLS buffers that were not HTTP/1.x heads and stayed in the kernel.
    pub const SKIPPED: u32 = 2;
    /// Reads whose entry arguments were missing at return (table full or probe attached late).
    pub const ORPHAN_RETURNS: u32 = 3;
    /// HTTP heads dropped in the kernel because their process had used up its
    /// [`super::BUDGET_RECORDS`] for the current window.
    pub const OVER_BUDGET: u32 = 4;
    /// Execs of images user space judged not Claude Code ([`super::ImageKey`]): decided in the
    /// kernel, never sent.
    pub const EXECS_FILTERED: u32 = 5;
    /// Execs sent to user space.
    pub const EXECS_SENT: u32 = 6;
    /// HTTP heads dropped in the kernel because their process's user (other than root) had
    /// used up its [`super::USER_BUDGET_RECORDS`] for the current window.
    pub const OVER_USER_BUDGET: u32 = 7;
    /// Execs of images not judged yet dropped in the kernel because their user (other than
    /// root, not of a watched process) had used up its [`super::USER_BUDGET_RECORDS`]: user
    /// space looks at every process again when this grows.
    pub const EXECS_OVER_BUDGET: u32 = 8;
    /// Reads of a response body skipped at their entry (counted in [`SKIPPED`] too): the
    /// connection's response head to a request seen written was read, and its next request
    /// has not been written yet.
    pub const BODY_READS: u32 = 9;
    /// Number of counters.
    pub const COUNT: u32 = 10;
}

/// Default of the records (HTTP heads and their continuations) one process may send per
/// [`BUDGET_WINDOW_NS`]; the kernel drops and counts the rest ([`stats::OVER_BUDGET`]), so a
/// process flooding the ring costs only itself. User space sets the value at load time (the
/// kernel's `BUDGET_RECORDS` global). A Claude Code turn sends a handful (a request head, its
/// body, a response head per API call); this is far above any real burst.
pub const BUDGET_RECORDS: u32 = 256;

/// Length of a budget window: one second.
pub const BUDGET_WINDOW_NS: u64 = 1_000_000_000;

/// Entries of the per-process budget map (least recently used processes are evicted first,
/// and start over with a full budget).
pub const BUDGET_ENTRIES: u32 = 8192;

/// Default of the records one user other than root may send per [`BUDGET_WINDOW_NS`], all
/// their processes together: HTTP heads (after each process's own [`BUDGET_RECORDS`]) and the
/// execs of images user space has not judged yet. The kernel drops and counts the rest
/// ([`stats::OVER_USER_BUDGET`], [`stats::EXECS_OVER_BUDGET`]), so a user starting many
/// flooding processes, or exec'ing fresh files in a loop, spends only their own share of the
/// ring and of the daemon's time. Root's processes are bounded per process only. User space
/// sets the value at load time (the kernel's `USER_BUDGET_RECORDS` global).
pub const USER_BUDGET_RECORDS: u32 = 1024;

/// Entries of the per-user budget map (least recently used users are evicted first, and start
/// over with a full budget).
pub const USER_BUDGET_ENTRIES: u32 = 1024;

/// One process's budget, in the kernel's `BUDGET` map keyed by pid (thread group id), or one
/// user's, in the `USER_BUDGET` map keyed by uid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// `bpf_ktime_get_ns()` when the current window began.
    pub window_start_ns: u64,
    /// Records sent in the current window.
    pub records: u32,
    /// Records dropped over budget since the entry was created (never reset).
    pub dropped: u32,
}

/// Fixed header of every ring-buffer record; `captured` head bytes follow it directly (a head
/// record may be longer: the kernel reserves it in one of three sizes, see its `emit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` at the probe: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The `SSL *` of the call: identifies the TLS connection within the process.
    pub conn: u64,
    /// Process id (thread group id) of the caller.
    pub pid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Bytes the call wrote or returned in all.
    pub len: u32,
    /// Bytes of the buffer head that follow this header (less than [`HEAD_MAX`]).
    pub captured: u32,
    /// One of [`kind`].
    pub kind: u32,
    /// Bits from [`flags`].
    pub flags: u32,
    /// Real user id of the caller (what the user shares in user space are keyed by).
    pub uid: u32,
    /// Zero.
    pub pad: u32,
}

/// Size of [`EventHeader`] in bytes.
pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// Arguments of an `SSL_read`/`SSL_read_ex` call kept from entry to return, per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadArgs {
    /// The `SSL *`.
    pub ssl: u64,
    /// The destination buffer.
    pub buf: u64,
    /// `SSL_read_ex`'s `size_t *readbytes`, or 0 for `SSL_read`.
    pub readbytes: u64,
    /// The `SSL *` whose reads on this thread are a response body, skipped at their entry
    /// (0: none). Set by the read of a response head, cleared by the next request written on
    /// that connection.
    pub body: u64,
    /// The `SSL *` of the connection whose body mark this thread gave up by writing its next
    /// request there (0: none): the connection's read side is armed here, in the thread's own
    /// slot, instead of in the connection's, while the connection's slot still names this
    /// thread as the holder of its mark (see the kernel's `capture`).
    pub armed: u64,
}

/// Key of the continuation map: one direction of one TLS connection of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnKey {
    /// The `SSL *`.
    pub ssl: u64,
    /// Process id.
    pub pid: u32,
    /// The direction whose next buffer is awaited ([`kind::WRITE`] or [`kind::READ`]).
    pub direction: u32,
}

/// An executable image as the kernel holds it at exec (`bprm->file->f_inode`): the key of the
/// kernel's `IMAGES` map, which user space fills with its [`verdict`] on images: not Claude
/// Code (an exec stays in the kernel unless its process is already watched), or to report at
/// once. The size is part of the key, so a file
/// rewritten in place (same inode, new content) is looked at again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageKey {
    /// `i_ino`.
    pub ino: u64,
    /// `i_size`.
    pub size: u64,
    /// `i_sb->s_dev`, the kernel's encoding (`major << 20 | minor`).
    pub dev: u32,
    /// Zero.
    pub pad: u32,
}

/// The most bytes of an exec's path (see [`EXEC_IMAGE_LEN`]) the kernel copies (its
/// terminating NUL included): a longer path is cut ([`flags::PATH_CUT`]) and never judged by
/// path.
pub const EXEC_PATH_MAX: usize = 512;

/// Bytes of the new image's key at the start of an exec record's head ([`kind::EXEC`] with
/// [`flags::IMAGE`]): an [`ImageKey`], then the path the exec loaded the image from as the
/// kernel holds it (`bprm->interp`: the file the image is, the interpreter of a `#!` script;
/// no NUL). So user space judges the file after its process is gone (a short-lived tool read
/// on the reader's timer): by the path, in its own mount namespace, and only when the file
/// opened there has this key.
pub const EXEC_IMAGE_LEN: usize = core::mem::size_of::<ImageKey>();

/// Entries of the kernel's `IMAGES` map (user space keeps it within this, a share per file
/// owner).
pub const IMAGE_ENTRIES: u32 = 4096;

/// Words of the kernel's `WATCHED` array: one bit per pid up to the kernel's largest
/// `pid_max` (`PID_MAX_LIMIT`, 2^22 on 64-bit), set for the processes user space watches
/// (instances), whose execs and exits are always sent. An array access (inlined by the
/// verifier) where a hash lookup was, in the exec and exit programs that run for every
/// process on the host; 512 KiB. Only user space writes it: it sets a process's bit when it
/// watches it and clears it when it stops (the process exited).
pub const WATCHED_WORDS: u32 = (1 << 22) / 64;

/// Entries of the kernel's `REPORTED` map: processes whose exec was sent (so is their exit);
/// the least recently used go first.
pub const REPORTED_ENTRIES: u32 = 16384;

/// Byte offsets of the kernel structure fields the exec program follows, read by user space
/// from the kernel's BTF at load time (the kernel's `OFFSETS` global). All zero: no exec
/// filter, every exec is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct linux_binprm`'s `file`.
    pub bprm_file: u32,
    /// `struct linux_binprm`'s `interp`: the path of `file` as the exec named it.
    pub bprm_interp: u32,
    /// `struct file`'s `f_inode`.
    pub file_inode: u32,
    /// `struct inode`'s `i_ino`.
    pub inode_ino: u32,
    /// `struct inode`'s `i_size`.
    pub inode_size: u32,
    /// `struct inode`'s `i_sb`.
    pub inode_sb: u32,
    /// `struct super_block`'s `s_dev`.
    pub sb_dev: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integer structs without padding.
    unsafe impl aya::Pod for super::ImageKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: plain `repr(C)` integer structs without padding.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::ReadArgs {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::Budget {}
}
