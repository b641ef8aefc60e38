//! Prometheus metrics: a small registry the daemon updates, rendered in the text exposition
//! format and served on the opt-in `metrics_listen` address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Upper bounds (seconds) of the latency histograms' buckets: fine below 10 ms, so a detection
/// p99 against its 5 ms target can be read from them, then coarse up to an hour for recoveries.
const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];

/// What a metric is, for its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// name -> (help, kind, labels -> value)
    series: BTreeMap<&'static str, (&'static str, Kind, BTreeMap<String, f64>)>,
    histograms: BTreeMap<&'static str, (&'static str, Histogram)>,
    /// Events of new label sets dropped because their family was full.
    dropped: u64,
}

/// Most label sets one family keeps: label values come from what observed processes say (their
/// instance names, their models), so a host full of short-lived `pid:` agents, or a process
/// making up model names, cannot grow the registry without bound. Events for a new label set
/// beyond this are counted in `claude_watch_metric_series_dropped_total` instead.
pub const MAX_SERIES_PER_FAMILY: usize = 2048;

/// Where `labels` may be counted in family `name` (declared with `help` as a `kind` on its first
/// event): its existing entry, or a new one while there is room; `None` (the event is dropped
/// and counted) when the family is full.
fn slot<'a>(
    m: &'a mut Inner,
    (name, help, kind): (&'static str, &'static str, Kind),
    labels: String,
) -> Option<&'a mut f64> {
    let family = &mut m
        .series
        .entry(name)
        .or_insert((help, kind, BTreeMap::new()))
        .2;
    if family.len() >= MAX_SERIES_PER_FAMILY && !family.contains_key(&labels) {
        m.dropped += 1;
        return None;
    }
    Some(family.entry(labels).or_insert(0.0))
}

/// The metrics registry, shared between the daemon loop and the HTTP server.
#[derive(Debug, Default, Clone)]
pub struct Metrics(Arc<Mutex<Inner>>);

/// Formats a label set: `a="x",b="y"` with values escaped.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut crate::locked(&self.0))
    }

    /// Declares a counter family so it is exported (with no series) before its first event.
    pub fn declare_counter(&self, name: &'static str, help: &'static str) {
        self.with(|m| {
            m.series
                .entry(name)
                .or_insert((help, Kind::Counter, BTreeMap::new()));
        });
    }

    /// Declares a histogram so it is exported (all zero) before its first observation.
    pub fn declare_histogram(&self, name: &'static str, help: &'static str) {
        self.with(|m| {
            m.histograms
                .entry(name)
                .or_insert((help, Histogram::default()));
        });
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, labels: String, by: f64) {
        self.with(|m| {
            if let Some(v) = slot(m, (name, help, Kind::Counter), labels) {
                *v += by;
            }
        });
    }

    /// Sets a counter to an absolute value (for counters kept elsewhere, like the kernel's).
    pub fn set_counter(&self, name: &'static str, help: &'static str, labels: String, value: f64) {
        self.with(|m| {
            if let Some(v) = slot(m, (name, help, Kind::Counter), labels) {
                *v = value;
            }
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: String, value: f64) {
        self.with(|m| {
            if let Some(v) = slot(m, (name, help, Kind::Gauge), labels) {
                *v = value;
            }
        });
    }

    /// Replaces every series of a gauge (for per-instance gauges whose label sets change).
    pub fn set_all(&self, name: &'static str, help: &'static str, values: BTreeMap<String, f64>) {
        self.with(|m| {
            m.series.insert(name, (help, Kind::Gauge, values));
        });
    }

    /// Drops every series whose first label is `agent="<agent>"` (an instance the core forgot:
    /// its counters go with it, as a target's series go when it is gone).
    pub fn forget_agent(&self, agent: &str) {
        let exact = labels(&[("agent", agent)]);
        let prefix = format!("{exact},");
        self.with(|m| {
            for (_, _, family) in m.series.values_mut() {
                family.retain(|k, _| *k != exact && !k.starts_with(&prefix));
            }
        });
    }

    /// Records one observation (seconds) in a histogram.
    pub fn observe(&self, name: &'static str, help: &'static str, seconds: f64) {
        self.with(|m| {
            let (_, h) = m
                .histograms
                .entry(name)
                .or_insert((help, Histogram::default()));
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter_mut()) {
                if seconds <= *bound {
                    *count += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        });
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            for (name, (help, kind, series)) in &m.series {
                let kind = match kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, value) in series {
                    if labels.is_empty() {
                        let _ = writeln!(out, "{name} {value}");
                    } else {
                        let _ = writeln!(out, "{name}{{{labels}}} {value}");
                    }
                }
            }
            for (name, (help, h)) in &m.histograms {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
                }
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum {}", h.sum);
                let _ = writeln!(out, "{name}_count {}", h.count);
            }
            let _ = writeln!(
                out,
                "# HELP claude_watch_metric_series_dropped_total Metric events not counted because their family already had {MAX_SERIES_PER_FAMILY} label sets.\n# TYPE claude_watch_metric_series_dropped_total counter\nclaude_watch_metric_series_dropped_total {}",
                m.dropped
            );
            out
        })
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
///
/// At most [`MAX_CONNECTIONS`] connections are served at once, each for at most
/// [`EXCHANGE_TIMEOUT`] (request read and answer written): at the limit no more are accepted
/// (they wait in the kernel's backlog), so idle connections cannot take the daemon's
/// descriptors, and a client that does not read its answer is dropped. A local user other
/// than root holds at most [`MAX_CONNECTIONS_PER_USER`] of them (the other end's socket says
/// whose it is); their further connections are closed at once, so one user holding thousands
/// open does not keep the scraper waiting. A failed `accept` (out of descriptors) is retried
/// after a pause, not in a busy loop.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let holders = Arc::new(Holders::default());
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let holders = holders.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let uid = tokio::task::spawn_blocking(move || {
                crate::capture::sockdiag::local_peer_uid(local, peer)
            })
            .await
            .ok()
            .flatten();
            let Some(_held) = holders.take(uid) else {
                debug!(%peer, uid, "metrics: a user over their share of connections, closed");
                return;
            };
            if let Err(e) = tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, &metrics)).await {
                debug!(%peer, "metrics client too slow: {e}");
            }
        });
    }
}

/// Connections to the metrics endpoint served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Of those, connections one local user other than root may hold at once (root's and remote
/// peers' are bounded by [`MAX_CONNECTIONS`] alone).
pub const MAX_CONNECTIONS_PER_USER: usize = 8;

/// Connections held now, by local user.
#[derive(Debug, Default)]
struct Holders(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

/// One connection held by a user, given back when dropped.
struct Held {
    holders: Arc<Holders>,
    uid: Option<u32>,
}

impl Holders {
    /// A hold for a connection of `uid` (`None`: remote, or unknown), unless that user (not
    /// root) holds [`MAX_CONNECTIONS_PER_USER`] already.
    fn take(self: &Arc<Self>, uid: Option<u32>) -> Option<Held> {
        let uid = uid.filter(|&u| u != 0);
        if let Some(u) = uid {
            let mut held = crate::locked(&self.0);
            let n = held.entry(u).or_default();
            if *n >= MAX_CONNECTIONS_PER_USER {
                return None;
            }
            *n += 1;
        }
        Some(Held {
            holders: self.clone(),
            uid,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(u) = self.uid {
            let mut held = crate::locked(&self.holders.0);
            if let Some(n) = held.get_mut(&u) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&u);
                }
            }
        }
    }
}
/// How long one connection may take, request and answer.
pub const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads one request on `stream` and answers it.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) {
    let mut buf = [0u8; 2048];
    let Ok(n) = stream.read(&mut buf).await else {
        return;
    };
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if request.starts_with("GET ") && (path == "/metrics" || path == "/") {
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        debug!("metrics client went away: {e}");
    }
}

/// Binds the metrics address (before anything else starts, so a taken port fails early).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .inspect_err(|e| warn!(%addr, "cannot listen for metrics: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_user_holds_at_most_their_share_and_root_and_remote_peers_the_cap() {
        let holders = std::sync::Arc::new(super::Holders::default());
        let held: Vec<_> = (0..super::MAX_CONNECTIONS_PER_USER)
            .map(|_| holders.take(Some(1001)).expect("within the share"))
            .collect();
        assert!(holders.take(Some(1001)).is_none(), "over the share");
        assert!(
            holders.take(Some(1002)).is_some(),
            "another user's own share"
        );
        let root: Vec<_> = (0..super::MAX_CONNECTIONS)
            .map(|_| holders.take(Some(0)).expect("root"))
            .collect();
        assert!(holders.take(None).is_some(), "a remote peer");
        drop(held);
        assert!(
            holders.take(Some(1001)).is_some(),
            "given back when dropped"
        );
        assert_eq!(root.len(), super::MAX_CONNECTIONS);
        assert!(holders.0.lock().unwrap().get(&1001).is_none());
    }

    #[test]
    fn a_family_keeps_at_most_its_cap_of_label_sets_and_counts_the_rest() {
        let m = Metrics::default();
        for pid in 0..(MAX_SERIES_PER_FAMILY + 500) {
            let agent = format!("pid:{pid}");
            m.inc("x_total", "x", labels(&[("agent", &agent)]), 1.0);
        }
        // Known label sets still count.
        m.inc("x_total", "x", labels(&[("agent", "pid:0")]), 1.0);
        let text = m.render();
        let series = text.lines().filter(|l| l.starts_with("x_total{")).count();
        assert_eq!(series, MAX_SERIES_PER_FAMILY);
        assert!(text.contains("x_total{agent=\"pid:0\"} 2"), "{text}");
        assert!(
            text.contains("claude_watch_metric_series_dropped_total 500"),
            "{text}"
        );
    }

    use super::*;

    #[test]
    fn a_forgotten_agent_s_series_go_and_no_other() {
        let m = Metrics::default();
        for agent in ["pid:1", "pid:12", "a\"b"] {
            m.inc(
                "x_total",
                "x",
                labels(&[("agent", agent), ("status", "200")]),
                1.0,
            );
            m.inc("y_total", "y", labels(&[("agent", agent)]), 1.0);
        }
        m.inc("y_total", "y", labels(&[("instance", "pid:1")]), 1.0);
        m.forget_agent("pid:1");
        m.forget_agent("a\"b");
        let text = m.render();
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(
            !text.contains("agent=\"pid:1\"") && !text.contains("a\\\"b"),
            "{text}"
        );
        for kept in [
            "x_total{agent=\"pid:12\",status=\"200\"} 1",
            "y_total{agent=\"pid:12\"} 1",
            "y_total{instance=\"pid:1\"} 1",
        ] {
            assert!(series.contains(&kept), "{kept} in {text}");
        }
    }

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.inc(
            "claude_watch_exchanges_total",
            "Exchanges.",
            labels(&[("instance", "a\"b"), ("status", "401")]),
            1.0,
        );
        m.inc(
            "claude_watch_exchanges_total",
            "Exchanges.",
            labels(&[("instance", "a\"b"), ("status", "401")]),
            2.0,
        );
        m.set("claude_watch_instances", "Instances.", String::new(), 2.0);
        m.observe("claude_watch_detection_seconds", "Latency.", 0.003);
        m.observe("claude_watch_detection_seconds", "Latency.", 0.0002);
        let text = m.render();
        assert!(text.contains("# TYPE claude_watch_exchanges_total counter"));
        assert!(
            text.contains("claude_watch_exchanges_total{instance=\"a\\\"b\",status=\"401\"} 3")
        );
        assert!(text.contains("claude_watch_instances 2"));
        // Cumulative buckets: 0.2 ms falls in le=0.00025 and above, 3 ms in le=0.005 and above.
        for (le, count) in [
            ("0.0001", 0),
            ("0.00025", 1),
            ("0.0005", 1),
            ("0.001", 1),
            ("0.0025", 1),
            ("0.005", 2),
            ("0.01", 2),
            ("3600", 2),
            ("+Inf", 2),
        ] {
            let line = format!("claude_watch_detection_seconds_bucket{{le=\"{le}\"}} {count}\n");
            assert!(text.contains(&line), "{line:?} missing from:\n{text}");
        }
        assert!(text.contains("claude_watch_detection_seconds_count 2"));
    }
}
