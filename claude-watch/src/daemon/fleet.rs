//! Asking the fleet's Alertmanager whether the incident alert fires (`[fleet]`), on a task of
//! its own: every `poll_every`, each configured Alertmanager in turn until one answers, with
//! `GET /api/v2/alerts?active=true&silenced=false&inhibited=false&filter=...` over plain HTTP.
//! The answer goes to the core as [`Input::Fleet`]; the core decides what it means (held,
//! resuming, stale).

use std::fmt::Write as _;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Done;
use crate::config::{UrlError, alertmanager_address};
use crate::discover::engine::parse_answer;
use crate::watch::Input;
use crate::watch::fleet::FleetAnswer;

/// How long one Alertmanager may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// The most an answer may weigh (Alertmanager lists every active alert that matches).
const ANSWER_MAX: usize = 4 << 20;

/// Why one Alertmanager gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The URL is not `http://host[:port][/path]` (the configuration check refuses those).
    #[error(transparent)]
    Url(#[from] UrlError),
    /// Connecting, writing or reading failed.
    #[error("{url}: {op}")]
    Io {
        /// The URL.
        url: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer within `ASK_TIMEOUT` (3 s).
    #[error("{url}: no answer within {}s", ASK_TIMEOUT.as_secs())]
    Timeout {
        /// The URL.
        url: String,
    },
    /// It answered, but not with a list of alerts.
    #[error("{url}: {what}")]
    Answer {
        /// The URL.
        url: String,
        /// What was wrong with it.
        what: String,
    },
}

/// Where to ask, and for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Asking {
    /// Alertmanager base URLs, in turn.
    pub urls: Vec<String>,
    /// Alertmanager `filter` matchers (`alertname="X"`).
    pub filters: Vec<String>,
    /// How often.
    pub every: Duration,
}

/// Asks every `asking.every` until the receiver goes away.
pub(super) async fn poll(asking: Asking, tx: mpsc::UnboundedSender<Done>) {
    let mut tick = tokio::time::interval(asking.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = ask_all(&asking).await;
        if tx
            .send(Done::Input(Box::new(Input::Fleet(answer))))
            .is_err()
        {
            return;
        }
    }
}

/// Each Alertmanager in turn until one answers.
async fn ask_all(asking: &Asking) -> FleetAnswer {
    let mut errors = Vec::new();
    for url in &asking.urls {
        match tokio::time::timeout(ASK_TIMEOUT, ask(url, &asking.filters)).await {
            Ok(Ok(answer)) => return answer,
            Ok(Err(e)) => errors.push(crate::error_chain(&e)),
            Err(_) => errors.push(AskError::Timeout { url: url.clone() }.to_string()),
        }
    }
    tracing::debug!(errors = ?errors, "no Alertmanager answered");
    FleetAnswer::Unreachable {
        error: errors.join("; "),
    }
}

/// What a query value keeps as it is: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

async fn ask(url: &str, filters: &[String]) -> Result<FleetAnswer, AskError> {
    let io = |op: &'static str| {
        let url = url.to_owned();
        move |source| AskError::Io { url, op, source }
    };
    let (authority, prefix) = alertmanager_address(url)?;
    let mut query = String::from("active=true&silenced=false&inhibited=false");
    for f in filters {
        let _ = write!(query, "&filter={}", utf8_percent_encode(f, QUERY_VALUE));
    }
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h);
    let request = format!(
        "GET {prefix}/api/v2/alerts?{query} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: claude-watch/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut stream = TcpStream::connect(&authority)
        .await
        .map_err(io("connect"))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io("send the request"))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(u64::try_from(ANSWER_MAX).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(io("read the answer"))?;
    let answer = |what: String| AskError::Answer {
        url: url.to_owned(),
        what,
    };
    if raw.len() > ANSWER_MAX {
        return Err(answer(format!("answer over {} MiB", ANSWER_MAX >> 20)));
    }
    // The head is read as the container engine's answers are (httparse).
    let head = parse_answer(&raw).ok_or_else(|| answer("not an HTTP answer".into()))?;
    if head.status != 200 {
        return Err(answer(format!("HTTP {}", head.status)));
    }
    let alerts: Vec<serde_json::Value> = serde_json::from_slice(&head.body)
        .map_err(|e| answer(format!("not a list of alerts ({e})")))?;
    Ok(read_alerts(&alerts, url))
}

/// The answer of a list of active alerts: firing since the oldest `startsAt`, named by its
/// `alertname` and label count.
fn read_alerts(alerts: &[serde_json::Value], from: &str) -> FleetAnswer {
    let active: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| a["status"]["state"].as_str().is_none_or(|s| s == "active"))
        .collect();
    let Some(first) = active.first() else {
        return FleetAnswer::Clear {
            from: from.to_owned(),
        };
    };
    let since_ms = active
        .iter()
        .filter_map(|a| a["startsAt"].as_str().and_then(crate::time::parse_rfc3339))
        .min()
        .unwrap_or_default();
    let name = first["labels"]["alertname"]
        .as_str()
        .unwrap_or("the incident alert");
    let alert = crate::text::printable(&if active.len() > 1 {
        format!("{name} ({} alerts)", active.len())
    } else {
        name.to_owned()
    })
    .chars()
    .take(200)
    .collect();
    FleetAnswer::Firing {
        alert,
        since_ms,
        from: from.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            alertmanager_address("http://am:9093").ok(),
            Some(("am:9093".into(), String::new()))
        );
        assert_eq!(
            alertmanager_address("http://am/alertmanager/").ok(),
            Some(("am:80".into(), "/alertmanager".into()))
        );
        assert_eq!(alertmanager_address("https://am:9093").ok(), None);
        assert_eq!(alertmanager_address("http:///x").ok(), None);
    }

    #[test]
    fn matchers_are_encoded_for_the_query() {
        let encode = |v: &str| utf8_percent_encode(v, QUERY_VALUE).to_string();
        assert_eq!(
            encode("alertname=\"ClaudeFleetUpstreamIncident\""),
            "alertname%3D%22ClaudeFleetUpstreamIncident%22"
        );
        // Round trips, whatever the value: `&`, `%`, `+`, spaces, non-ASCII.
        for value in [
            "a=~\"x.*\"",
            "team!=\"a&b\"",
            "100% + 1",
            "é ü/?#[]",
            "-_.~",
        ] {
            let encoded = encode(value);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)),
                "{encoded}"
            );
            let decoded = percent_encoding::percent_decode_str(&encoded).decode_utf8();
            assert_eq!(decoded.as_deref(), Ok(value));
        }
    }

    #[test]
    fn an_empty_list_is_clear_and_active_alerts_fire_since_the_oldest() {
        assert!(matches!(read_alerts(&[], "x"), FleetAnswer::Clear { .. }));
        let alerts: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"labels":{"alertname":"ClaudeFleetUpstreamIncident","severity":"critical"},"startsAt":"2026-12-06T14:02:11.123456789Z","status":{"state":"active"}},
                {"labels":{"alertname":"ClaudeFleetUpstreamIncident"},"startsAt":"2026-12-06T14:00:00Z","status":{"state":"active"}},
                {"labels":{"alertname":"ClaudeFleetUpstreamIncident"},"startsAt":"2026-12-06T13:00:00Z","status":{"state":"suppressed"}}]"#,
        )
        .unwrap();
        let FleetAnswer::Firing {
            alert, since_ms, ..
        } = read_alerts(&alerts, "x")
        else {
            panic!("firing");
        };
        assert_eq!(alert, "ClaudeFleetUpstreamIncident (2 alerts)");
        assert_eq!(
            since_ms,
            crate::time::parse_rfc3339("2026-12-06T14:00:00Z").unwrap()
        );
    }
}
