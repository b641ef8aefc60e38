//! HTTP/1.x as the probes see it: pure parsers for request and response heads, and the pairing
//! of responses with requests on one connection into [`Exchange`]s.

pub mod pair;
pub mod parse;

use serde::Serialize;

/// One request and its response, as observed on one TLS connection of one process.
///
/// Carries no credential, cookie or body: the parsers keep only the fields below.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// Wall-clock time the response head was read, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Monotonic time (CLOCK_MONOTONIC, ns) the response head was read; what the detector's
    /// clock uses.
    pub mono_ns: u64,
    /// Process id (thread group id) of the client.
    pub pid: u32,
    /// Thread that read the response.
    pub tid: u32,
    /// The connection: the `SSL *` of the process.
    pub conn: u64,
    /// Request method; `None` when the request was not seen (probe attached mid-request).
    pub method: Option<String>,
    /// Request target (path and query), with secret-looking query values redacted.
    pub path: Option<String>,
    /// Response status code.
    pub status: u16,
    /// Milliseconds from the request's first write to the response head.
    pub latency_ms: Option<u64>,
    /// `request-id` response header (`req_...`).
    pub request_id: Option<String>,
    /// `retry-after` response header, as sent.
    pub retry_after: Option<String>,
    /// `x-should-retry` response header.
    pub should_retry: Option<bool>,
    /// `X-Claude-Code-Session-Id` request header.
    pub session_id: Option<String>,
    /// `"model"` of the JSON request body, when it was in the first written chunk.
    pub model: Option<String>,
    /// `User-Agent` of the request (e.g. `claude-cli/2.1.197 (external, sdk-cli)`).
    pub user_agent: Option<String>,
}
