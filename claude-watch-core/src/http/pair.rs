//! Pairs response heads with the requests written before them on the same connection.
//!
//! Sans-IO: [`Pairer::push`] takes one kernel record and returns the exchange it completes, if
//! any. Per connection it keeps a short FIFO of requests awaiting their responses (HTTP/1.1
//! answers in order) and the pieces of a status line that arrived split over several reads.
//!
//! The table of connections is shared by every process the probes see, so each process has a
//! share of it ([`MAX_CONNS_PER_PID`]): a process opening (or faking, with distinct `SSL*`
//! pointers) more connections forgets its own least recently used one. When the whole table is
//! full, the user holding the most connections (the kernel stamps each record with its uid)
//! gives up their least recently used one: a user spreading fake connections over thousands of
//! processes, each under its own share, still only takes from themselves, never from another
//! user's process with a few honest requests waiting for their answers.

use std::collections::{HashMap, VecDeque};

use claude_ebpf_common::{EventHeader, HEAD_MAX, flags, kind};

use super::Exchange;
use super::parse::{Invalid, Parse, RequestHead, model_from_body, parse_request, parse_response};
use crate::time::WallClock;

/// Requests remembered per connection at most (pipelining depth we accept).
const MAX_PENDING: usize = 16;
/// Connections remembered at most; beyond this the user holding the most forgets their least
/// recently used one.
const MAX_CONNS: usize = 8192;
/// Connections remembered per process at most; beyond this it forgets its own least recently
/// used one.
pub const MAX_CONNS_PER_PID: usize = 256;

/// One record from the kernel: its header and the captured head bytes.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The fixed header.
    pub header: EventHeader,
    /// `header.captured` bytes of the buffer's head.
    pub head: &'a [u8],
}

/// Counters of what the pairer could not use. Bad input is counted, never fatal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PairStats {
    /// Records that were not an HTTP/1.x head (or had a malformed first line).
    pub invalid: u64,
    /// Responses with no request seen before them on their connection.
    pub unpaired_responses: u64,
    /// Requests dropped because their connection had too many waiting.
    pub dropped_requests: u64,
    /// Split status lines abandoned (too long, or followed by something else).
    pub abandoned_pieces: u64,
    /// Writes of a request repeated before any answer (a failed `SSL_write` retried), counted
    /// once.
    pub repeated_writes: u64,
    /// Connections forgotten to make room (their process over its share, or the table full
    /// and their user holding the most).
    pub evicted_conns: u64,
}

#[derive(Debug)]
struct Pending {
    ts_ns: u64,
    /// Length of the write and a hash of its captured bytes: a TLS write that failed (during
    /// the handshake, say) is repeated with the same buffer, and must not count twice.
    len: u32,
    fingerprint: u64,
    head: RequestHead,
}

/// FNV-1a over the captured head: cheap, and only compared with the previous request.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, Default)]
struct Conn {
    /// The user of the process (as the kernel stamped its first record).
    uid: u32,
    last_seen_ns: u64,
    requests: VecDeque<Pending>,
    /// A status line that has begun but not ended.
    pieces: Vec<u8>,
}

/// Turns kernel records into exchanges.
#[derive(Debug, Default)]
pub struct Pairer {
    conns: HashMap<(u32, u64), Conn>,
    /// Connections remembered per process, and per user.
    per_pid: HashMap<u32, usize>,
    per_uid: HashMap<u32, usize>,
    wall_clock: WallClock,
    stats: PairStats,
}

impl Pairer {
    /// A pairer converting monotonic timestamps to wall time with `wall_clock` (read once at
    /// start).
    pub fn new(wall_clock: WallClock) -> Self {
        Self {
            wall_clock,
            ..Self::default()
        }
    }

    /// What could not be used so far.
    pub fn stats(&self) -> PairStats {
        self.stats
    }

    /// Forgets every connection of a process that exited.
    pub fn forget_pid(&mut self, pid: u32) {
        if self.per_pid.remove(&pid).is_some() {
            let per_uid = &mut self.per_uid;
            self.conns.retain(|&(p, _), conn| {
                if p == pid {
                    release(per_uid, conn.uid);
                }
                p != pid
            });
        }
    }

    /// Feeds one record; returns the exchange it completes.
    pub fn push(&mut self, record: Record<'_>) -> Option<Exchange> {
        let h = record.header;
        let truncated = (h.captured as usize) < h.len as usize || h.captured as usize >= HEAD_MAX;
        let continuation = h.flags & flags::CONTINUATION != 0;
        if !self.conns.contains_key(&(h.pid, h.conn)) {
            if self.per_pid.get(&h.pid).copied().unwrap_or(0) >= MAX_CONNS_PER_PID {
                self.evict_oldest(|&(pid, _), _| pid == h.pid);
            } else if self.conns.len() >= MAX_CONNS
                && let Some(biggest) = self
                    .per_uid
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(uid, _)| *uid)
            {
                self.evict_oldest(|_, conn| conn.uid == biggest);
            }
            *self.per_pid.entry(h.pid).or_default() += 1;
            *self.per_uid.entry(h.uid).or_default() += 1;
        }
        let conn = self.conns.entry((h.pid, h.conn)).or_insert_with(|| Conn {
            uid: h.uid,
            ..Conn::default()
        });
        conn.last_seen_ns = h.ts_ns;
        match h.kind {
            kind::WRITE if continuation => {
                // The body after a headers-only write: take the model from it.
                if let Some(last) = conn.requests.back_mut()
                    && last.head.headers_complete
                    && last.head.model.is_none()
                {
                    last.head.model = model_from_body(record.head);
                }
                None
            }
            kind::WRITE => match parse_request(record.head, truncated) {
                Parse::Parsed(head) => {
                    let print = fingerprint(record.head);
                    if conn
                        .requests
                        .back()
                        .is_some_and(|last| last.len == h.len && last.fingerprint == print)
                    {
                        // The same write again, unanswered: the first attempt did not go out
                        // (SSL_write returned <= 0 and the client retried it).
                        self.stats.repeated_writes += 1;
                        return None;
                    }
                    if conn.requests.len() >= MAX_PENDING {
                        conn.requests.pop_front();
                        self.stats.dropped_requests += 1;
                    }
                    conn.requests.push_back(Pending {
                        ts_ns: h.ts_ns,
                        len: h.len,
                        fingerprint: print,
                        head,
                    });
                    None
                }
                Parse::Incomplete | Parse::Invalid(_) => {
                    self.stats.invalid += 1;
                    None
                }
            },
            kind::READ => {
                let joined;
                let bytes = if continuation {
                    if conn.pieces.is_empty() {
                        // The rest of a head already parsed (or a body): nothing to add.
                        return None;
                    }
                    conn.pieces.extend_from_slice(record.head);
                    joined = std::mem::take(&mut conn.pieces);
                    &joined[..]
                } else {
                    if !conn.pieces.is_empty() {
                        conn.pieces.clear();
                        self.stats.abandoned_pieces += 1;
                    }
                    record.head
                };
                match parse_response(bytes, truncated || bytes.len() >= HEAD_MAX) {
                    Parse::Incomplete => {
                        conn.pieces.extend_from_slice(bytes);
                        None
                    }
                    Parse::Invalid(Invalid::LineTooLong) if continuation => {
                        self.stats.abandoned_pieces += 1;
                        None
                    }
                    Parse::Invalid(_) => {
                        self.stats.invalid += 1;
                        None
                    }
                    Parse::Parsed(resp) if resp.status < 200 => None, // 1xx: the final answer follows
                    Parse::Parsed(resp) => {
                        let (req_ts, req) = match conn.requests.pop_front() {
                            Some(p) => (Some(p.ts_ns), p.head),
                            None => {
                                self.stats.unpaired_responses += 1;
                                (None, RequestHead::default())
                            }
                        };
                        Some(Exchange {
                            ts_ms: self.wall_clock.wall_ms(h.ts_ns),
                            mono_ns: h.ts_ns,
                            pid: h.pid,
                            tid: h.tid,
                            conn: h.conn,
                            method: (!req.method.is_empty()).then_some(req.method),
                            path: (!req.target.is_empty()).then_some(req.target),
                            status: resp.status,
                            latency_ms: req_ts.map(|t| h.ts_ns.saturating_sub(t) / 1_000_000),
                            request_id: resp.request_id,
                            retry_after: resp.retry_after,
                            should_retry: resp.should_retry,
                            session_id: req.session_id,
                            model: req.model,
                            user_agent: req.user_agent,
                        })
                    }
                }
            }
            _ => {
                self.stats.invalid += 1;
                None
            }
        }
    }

    /// Forgets the least recently used connection among those `which` picks.
    fn evict_oldest(&mut self, which: impl Fn(&(u32, u64), &Conn) -> bool) {
        if let Some(key) = self
            .conns
            .iter()
            .filter(|(key, conn)| which(key, conn))
            .min_by_key(|(_, c)| c.last_seen_ns)
            .map(|(k, _)| *k)
            && let Some(conn) = self.conns.remove(&key)
        {
            self.stats.evicted_conns += 1;
            release(&mut self.per_pid, key.0);
            release(&mut self.per_uid, conn.uid);
        }
    }
}

/// One connection fewer held by `who`.
fn release(counts: &mut HashMap<u32, usize>, who: u32) {
    if let Some(n) = counts.get_mut(&who) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&who);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Feed {
        pairer: Pairer,
        t: u64,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                pairer: Pairer::new(WallClock {
                    wall_minus_mono_ns: 1_700_000_000_000_000_000,
                }),
                t: 1_000_000_000,
            }
        }

        fn push(&mut self, conn: u64, dir: u32, fl: u32, bytes: &[u8]) -> Option<Exchange> {
            self.push_len(conn, dir, fl, bytes, bytes.len() as u32)
        }

        fn push_len(
            &mut self,
            conn: u64,
            dir: u32,
            fl: u32,
            bytes: &[u8],
            len: u32,
        ) -> Option<Exchange> {
            self.t += 5_000_000;
            let header = EventHeader {
                ts_ns: self.t,
                conn,
                pid: 42,
                tid: 43,
                uid: 1000,
                pad: 0,
                len,
                captured: bytes.len() as u32,
                kind: dir,
                flags: fl,
            };
            self.pairer.push(Record {
                header,
                head: bytes,
            })
        }
    }

    const REQ: &[u8] = b"POST /v1/messages?beta=true HTTP/1.1\r\nX-Claude-Code-Session-Id: s-1\r\n\r\n{\"model\":\"claude-opus-4-8\"}";

    /// A record of process `pid` (of user 1000) on connection `conn`.
    fn record(pid: u32, conn: u64, t: u64, dir: u32, bytes: &[u8]) -> Record<'_> {
        record_of(1000, pid, conn, t, dir, bytes)
    }

    /// A record of process `pid` of user `uid` on connection `conn`.
    fn record_of(uid: u32, pid: u32, conn: u64, t: u64, dir: u32, bytes: &[u8]) -> Record<'_> {
        Record {
            header: EventHeader {
                ts_ns: t,
                conn,
                pid,
                tid: pid,
                uid,
                pad: 0,
                len: bytes.len() as u32,
                captured: bytes.len() as u32,
                kind: dir,
                flags: 0,
            },
            head: bytes,
        }
    }

    #[test]
    fn fake_connections_of_other_processes_do_not_evict_a_waiting_request() {
        // The honest agent's request waits for a slow answer; meanwhile one process of another
        // user writes 20,000 requests on distinct fake connections (distinct SSL* pointers),
        // and 40 more processes 300 each, more than the whole table.
        let mut p = Pairer::new(WallClock::default());
        let mut t = 1;
        assert_eq!(p.push(record_of(1001, 7, 1, t, kind::WRITE, REQ)), None);
        let fake = b"POST /v1/messages HTTP/1.1\r\n\r\n";
        for conn in 0..20_000 {
            t += 1;
            p.push(record(666, 1000 + conn, t, kind::WRITE, fake));
        }
        for pid in 1000..1040 {
            for conn in 0..300 {
                t += 1;
                p.push(record(pid, conn, t, kind::WRITE, fake));
            }
        }
        assert!(p.conns.len() <= MAX_CONNS);
        assert!(p.per_pid.values().all(|&n| n <= MAX_CONNS_PER_PID));
        assert_eq!(p.per_pid.values().sum::<usize>(), p.conns.len());
        t += 1;
        let answer = p
            .push(record_of(
                1001,
                7,
                1,
                t,
                kind::READ,
                b"HTTP/1.1 401 Unauthorized\r\n\r\n",
            ))
            .expect("an exchange");
        assert_eq!(answer.path.as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(answer.session_id.as_deref(), Some("s-1"));
        assert!(p.stats().evicted_conns > 20_000);
        p.forget_pid(666);
        assert!(!p.per_pid.contains_key(&666));
        assert_eq!(p.per_pid.values().sum::<usize>(), p.conns.len());
    }

    #[test]
    fn a_user_spreading_fake_connections_over_many_processes_evicts_only_their_own() {
        // The honest agent (user 1001) has three connections, one with a request waiting for
        // a slow answer. User 666 fills the table from 9,000 processes, two fake connections
        // each: every one of them holds fewer than the honest process, so a share per process
        // alone would take the honest connections; the share per user takes the attacker's.
        let mut p = Pairer::new(WallClock::default());
        let mut t = 1;
        assert_eq!(p.push(record_of(1001, 7, 1, t, kind::WRITE, REQ)), None);
        for conn in 2..=3 {
            t += 1;
            p.push(record_of(
                1001,
                7,
                conn,
                t,
                kind::WRITE,
                b"HEAD / HTTP/1.1\r\n\r\n",
            ));
        }
        let fake = b"POST /v1/messages HTTP/1.1\r\n\r\n";
        for pid in 10_000..19_000 {
            for conn in 0..2 {
                t += 1;
                p.push(record_of(666, pid, conn, t, kind::WRITE, fake));
            }
        }
        assert!(p.conns.len() <= MAX_CONNS);
        assert_eq!(
            p.per_uid.get(&1001),
            Some(&3),
            "the honest user kept every connection"
        );
        assert_eq!(p.per_uid.values().sum::<usize>(), p.conns.len());
        assert_eq!(p.per_pid.values().sum::<usize>(), p.conns.len());
        t += 1;
        let answer = p
            .push(record_of(
                1001,
                7,
                1,
                t,
                kind::READ,
                b"HTTP/1.1 401 Unauthorized\r\n\r\n",
            ))
            .expect("the waiting request is still paired");
        assert_eq!(answer.status, 401);
        assert_eq!(answer.session_id.as_deref(), Some("s-1"));
        for pid in 10_000..19_000 {
            p.forget_pid(pid);
        }
        assert_eq!(p.per_uid.get(&666), None);
        assert_eq!(p.conns.len(), 3);
    }

    #[test]
    fn keep_alive_pairs_in_order() {
        let mut f = Feed::new();
        assert_eq!(f.push(1, kind::WRITE, 0, REQ), None);
        assert_eq!(f.push(1, kind::WRITE, 0, b"HEAD / HTTP/1.1\r\n\r\n"), None);
        let first = f
            .push(
                1,
                kind::READ,
                0,
                b"HTTP/1.1 401 Unauthorized\r\nrequest-id: req_1\r\n\r\n",
            )
            .unwrap();
        assert_eq!(first.method.as_deref(), Some("POST"));
        assert_eq!(first.path.as_deref(), Some("/v1/messages?beta=true"));
        assert_eq!(first.status, 401);
        assert_eq!(first.latency_ms, Some(10));
        assert_eq!(first.session_id.as_deref(), Some("s-1"));
        assert_eq!(first.model.as_deref(), Some("claude-opus-4-8"));
        assert_eq!(first.request_id.as_deref(), Some("req_1"));
        assert_eq!(first.ts_ms, 1_700_000_001_015);
        let second = f
            .push(1, kind::READ, 0, b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        assert_eq!(second.method.as_deref(), Some("HEAD"));
        assert_eq!(f.pairer.stats(), PairStats::default());
    }

    #[test]
    fn a_write_retried_after_a_failed_attempt_counts_once() {
        // node calls SSL_write while the handshake is still running: -1 twice, then success,
        // with the same buffer each time. Every attempt reaches the probe.
        let mut f = Feed::new();
        for _ in 0..3 {
            f.push(1, kind::WRITE, 0, b"GET /first HTTP/1.1\r\n\r\n");
        }
        f.push(1, kind::WRITE, 0, b"GET /second HTTP/1.1\r\n\r\n");
        let a = f
            .push(1, kind::READ, 0, b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        let b = f
            .push(1, kind::READ, 0, b"HTTP/1.1 401 Unauthorized\r\n\r\n")
            .unwrap();
        assert_eq!(
            (a.path.as_deref(), b.path.as_deref()),
            (Some("/first"), Some("/second"))
        );
        assert_eq!(f.pairer.stats().repeated_writes, 2);
        // The same request sent again after its answer is a new request.
        f.push(1, kind::WRITE, 0, b"GET /second HTTP/1.1\r\n\r\n");
        assert_eq!(
            f.push(1, kind::READ, 0, b"HTTP/1.1 200 OK\r\n\r\n")
                .unwrap()
                .path
                .as_deref(),
            Some("/second")
        );
    }

    #[test]
    fn connections_are_separate() {
        let mut f = Feed::new();
        f.push(1, kind::WRITE, 0, b"GET /a HTTP/1.1\r\n\r\n");
        f.push(2, kind::WRITE, 0, b"GET /b HTTP/1.1\r\n\r\n");
        let b = f
            .push(2, kind::READ, 0, b"HTTP/1.1 429 Too Many Requests\r\n\r\n")
            .unwrap();
        assert_eq!((b.path.as_deref(), b.status), (Some("/b"), 429));
        let a = f
            .push(1, kind::READ, 0, b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        assert_eq!(a.path.as_deref(), Some("/a"));
    }

    #[test]
    fn status_line_in_pieces() {
        let mut f = Feed::new();
        f.push(1, kind::WRITE, 0, b"GET /x HTTP/1.1\r\n\r\n");
        assert_eq!(f.push(1, kind::READ, 0, b"HT"), None);
        assert_eq!(
            f.push(1, kind::READ, flags::CONTINUATION, b"TP/1.1 4"),
            None
        );
        let ex = f
            .push(
                1,
                kind::READ,
                flags::CONTINUATION,
                b"01 Unauthorized\r\nrequest-id: req_9\r\n\r\n",
            )
            .unwrap();
        assert_eq!((ex.status, ex.request_id.as_deref()), (401, Some("req_9")));
        // A later continuation without pieces (the rest of a body) adds nothing.
        assert_eq!(
            f.push(1, kind::READ, flags::CONTINUATION, b"{\"type\":\"error\"}"),
            None
        );
        assert_eq!(f.pairer.stats(), PairStats::default());
    }

    #[test]
    fn model_from_body_written_after_headers() {
        let mut f = Feed::new();
        f.push(
            1,
            kind::WRITE,
            0,
            b"POST /v1/messages HTTP/1.1\r\nhost: h\r\n\r\n",
        );
        f.push(
            1,
            kind::WRITE,
            flags::CONTINUATION,
            b"{\"model\":\"claude-haiku-4-5\",\"stream\":true}",
        );
        let ex = f
            .push(1, kind::READ, 0, b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        assert_eq!(ex.model.as_deref(), Some("claude-haiku-4-5"));
    }

    #[test]
    fn garbage_is_counted_not_paired() {
        let mut f = Feed::new();
        f.push(1, kind::WRITE, 0, b"GET /x HTTP/1.1\r\n\r\n");
        assert_eq!(f.push(1, kind::READ, 0, b"HTTP/1.1 2x0 OK\r\n"), None);
        assert_eq!(f.push(1, kind::WRITE, 0, b"\x00\x01garbage"), None);
        assert_eq!(
            f.push(1, kind::READ, 0, b"HTTP/1.1 100 Continue\r\n\r\n"),
            None
        );
        assert_eq!(f.pairer.stats().invalid, 2);
        // The request is still waiting for its real answer.
        assert_eq!(
            f.push(1, kind::READ, 0, b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap()
                .status,
            204
        );
    }

    #[test]
    fn truncated_long_head_and_unpaired_response() {
        let mut f = Feed::new();
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.resize(HEAD_MAX, b'a');
        let ex = f.push_len(7, kind::READ, 0, &big, 10 << 20).unwrap();
        assert_eq!((ex.status, ex.method), (200, None));
        assert_eq!(f.pairer.stats().unpaired_responses, 1);
        let line = vec![b'x'; HEAD_MAX - 9];
        let mut overlong = b"HTTP/1.1 ".to_vec();
        overlong.extend_from_slice(&line);
        assert_eq!(f.push_len(7, kind::READ, 0, &overlong, 1 << 20), None);
        assert_eq!(f.pairer.stats().invalid, 1);
    }

    #[test]
    fn forget_pid_drops_waiting_requests() {
        let mut f = Feed::new();
        f.push(1, kind::WRITE, 0, b"GET /x HTTP/1.1\r\n\r\n");
        f.pairer.forget_pid(42);
        let ex = f
            .push(1, kind::READ, 0, b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap();
        assert_eq!(ex.method, None);
    }
}
