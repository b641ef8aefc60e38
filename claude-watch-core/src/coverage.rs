//! The coverage audit: a watched process whose own TCP traffic (the kernel's byte counters of
//! the sockets it holds, read by the shell every `[daemon] coverage_audit`) moves API-sized
//! volumes while its probes capture no exchange is **blind**: a future build, a new TLS path, a
//! protocol the kernel side does not parse (HTTP/2), a probe the kernel dropped. An idle process
//! (no traffic) never is; one exchange captured clears it. Pure.
//!
//! The rule: the last two audit windows both moved bytes, together at least [`BLIND_BYTES`],
//! and no exchange of the process was captured during either.

use std::collections::BTreeMap;

use crate::detect::MonoNs;

/// Bytes (sent and received) over two windows without a captured exchange that make a process
/// blind: several requests' worth (a Claude Code request carries its whole context).
pub const BLIND_BYTES: u64 = 64 * 1024;

/// A process found blind, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blind {
    /// When it was found blind.
    pub since: MonoNs,
    /// Bytes moved over the two windows.
    pub bytes: u64,
    /// TCP sockets it held at the last audit.
    pub sockets: u32,
    /// How long the two windows lasted.
    pub over_ns: u64,
    /// When its last exchange was captured, if ever.
    pub last_exchange: Option<MonoNs>,
}

impl Blind {
    /// One sentence for `status`: what was seen, and what was not.
    #[must_use]
    pub fn reason(&self, now: MonoNs) -> String {
        let human = |ns: u64| crate::time::human(std::time::Duration::from_nanos(ns));
        let last = self.last_exchange.map_or_else(
            || "none ever".to_owned(),
            |t| format!("the last {} ago", human(now.saturating_sub(t))),
        );
        let since = now.saturating_sub(self.since);
        let since = if since >= 1_000_000_000 {
            format!("; blind for {}", human(since))
        } else {
            String::new()
        };
        format!(
            "it moved {} KiB over {} TCP connection(s) in {} and the probes captured no API request ({last}): a client or protocol the probes do not see{since}",
            self.bytes / 1024,
            self.sockets,
            human(self.over_ns)
        )
    }
}

/// A change worth saying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The process was found blind.
    Blind(Blind),
    /// A captured exchange ended it.
    Seen,
}

#[derive(Debug, Default)]
struct Audit {
    /// The totals at the last audit, and when.
    last: Option<(u64, MonoNs)>,
    /// Bytes moved in the previous window, if it captured nothing.
    previous: Option<(u64, u64)>,
    /// Whether an exchange was captured since the last audit.
    captured: bool,
    last_exchange: Option<MonoNs>,
    blind: Option<Blind>,
}

/// The audit of every watched process.
#[derive(Debug, Default)]
pub struct Coverage {
    procs: BTreeMap<u32, Audit>,
}

impl Coverage {
    /// An exchange of `pid` was captured.
    pub fn exchange(&mut self, pid: u32, now: MonoNs) -> Option<Change> {
        let a = self.procs.entry(pid).or_default();
        a.captured = true;
        a.last_exchange = Some(now);
        a.previous = None;
        a.blind.take().map(|_| Change::Seen)
    }

    /// The audit of `pid`: the totals (sent plus received) of the TCP sockets it holds now.
    pub fn traffic(&mut self, pid: u32, total: u64, sockets: u32, now: MonoNs) -> Option<Change> {
        let a = self.procs.entry(pid).or_default();
        let Some((before, at)) = a.last.replace((total, now)) else {
            a.captured = false;
            return None;
        };
        // Closed sockets take their bytes with them: a drop moves nothing.
        let moved = total.saturating_sub(before);
        let window = now.saturating_sub(at);
        let captured = std::mem::take(&mut a.captured);
        if captured || moved == 0 {
            a.previous = None;
            return None;
        }
        let found = match a.previous.replace((moved, window)) {
            Some((bytes, ns)) if bytes + moved >= BLIND_BYTES && a.blind.is_none() => Some(Blind {
                since: now,
                bytes: bytes + moved,
                sockets,
                over_ns: ns + window,
                last_exchange: a.last_exchange,
            }),
            _ => None,
        };
        if let Some(b) = &found {
            a.blind = Some(b.clone());
        } else if let Some(b) = a.blind.as_mut() {
            b.sockets = sockets;
        }
        found.map(Change::Blind)
    }

    /// Whether `pid` is blind, and why.
    #[must_use]
    pub fn blind(&self, pid: u32) -> Option<&Blind> {
        self.procs.get(&pid)?.blind.as_ref()
    }

    /// Forgets a process that exited.
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Traffic with nothing captured, two windows running, makes a process blind; an idle one
    /// never is; one exchange ends it.
    #[test]
    fn traffic_without_a_capture_is_blind_and_an_exchange_ends_it() {
        let mut c = Coverage::default();
        assert_eq!(c.traffic(7, 1_000, 2, 0), None);
        // One window of traffic is not enough.
        assert_eq!(c.traffic(7, 60_000, 2, 30 * S), None);
        let Some(Change::Blind(b)) = c.traffic(7, 120_000, 3, 60 * S) else {
            panic!("blind after two windows");
        };
        assert_eq!((b.bytes, b.sockets, b.over_ns), (119_000, 3, 60 * S));
        assert!(
            b.reason(60 * S)
                .contains("moved 116 KiB over 3 TCP connection(s) in 1m")
        );
        assert!(b.reason(60 * S).contains("none ever"));
        assert!(!b.reason(60 * S).contains("blind for"));
        assert!(
            b.reason(150 * S).ends_with("; blind for 1m30s"),
            "{}",
            b.reason(150 * S)
        );
        assert!(c.blind(7).is_some());
        // Said once.
        assert_eq!(c.traffic(7, 200_000, 3, 90 * S), None);
        assert!(c.blind(7).is_some());
        assert_eq!(c.exchange(7, 95 * S), Some(Change::Seen));
        assert!(c.blind(7).is_none());
        c.forget(7);
        assert!(c.blind(7).is_none());
    }

    #[test]
    fn an_idle_or_observed_process_is_never_blind() {
        let mut c = Coverage::default();
        // Idle: the counters do not move.
        for t in 0..100 {
            assert_eq!(c.traffic(1, 5_000, 1, t * 30 * S), None);
        }
        // Small telemetry, window after window: under the bound each pair of windows.
        for t in 0..100 {
            assert_eq!(c.traffic(2, t * 2_000, 1, t * 30 * S), None);
        }
        // Heavy traffic, but exchanges captured in every window.
        for t in 0..100 {
            c.exchange(3, t * 30 * S + 1);
            assert_eq!(c.traffic(3, t * 1_000_000, 4, t * 30 * S + 2), None);
        }
        // A quiet window between two busy ones starts the count again.
        let mut c = Coverage::default();
        c.traffic(4, 0, 1, 0);
        assert_eq!(c.traffic(4, 50_000, 1, 30 * S), None);
        assert_eq!(c.traffic(4, 50_000, 1, 60 * S), None);
        assert_eq!(c.traffic(4, 100_000, 1, 90 * S), None);
        assert!(matches!(
            c.traffic(4, 150_000, 1, 120 * S),
            Some(Change::Blind(_))
        ));
    }
}
