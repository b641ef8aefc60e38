//! Claude Code session transcripts (`~/.claude/projects/<project>/<session id>.jsonl`), read for
//! their API answers only. Pure: bytes in, [`Transcript`] out, every line counted.
//!
//! What the real files hold (Claude Code 2.1.197 and 2.1.331, checked on transcripts they wrote
//! against the stand-in API; see `tests/fixtures/transcripts`), one JSON object per line, each
//! with `sessionId`, most with an RFC 3339 UTC `timestamp`, `version` and `cwd`:
//! - `{"type":"api-request", "params":{"model":…}}`: a request is sent (the model it asks for);
//! - `{"type":"system","subtype":"api_error","error":{"status":401,"requestId":"req_…"},
//!   "retryAttempt":N}`: an error answer that Claude Code is about to retry;
//! - `{"type":"assistant","isApiErrorMessage":true,"apiErrorStatus":401,"requestId":…}`: the
//!   error answer that ended a turn (retries exhausted, or not retryable);
//! - `{"type":"assistant","requestId":…,"message":{"model":…}}` without `isApiErrorMessage`: an
//!   accepted answer (one line per content block, sharing the request id);
//! - `{"type":"cost-state"}`: written when the process exits (no timestamp);
//! - `{"type":"user"}`: a prompt or tool result, after which the next request is sent (only its
//!   time is read);
//! - everything else (attachments, request blobs, queued prompts) is counted as ignored and never
//!   read further: no prompt or answer text leaves this module.
//!
//! 2.1.197 writes no `api-request` or `cost-state` lines, and writes a turn's `api_error` lines
//! only when the next turn starts (after the turn-ending error, out of time order), so the
//! retries of a process's last failed turn are never written. [`super::rebuild`](mod@super::rebuild) orders lines by
//! time and infers the first attempt of turns without logged retries (see there).

use serde_json::Value;

use crate::time::parse_rfc3339;

/// Errors of this module (reading the files is the caller's; parsing never fails, it counts).
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    /// A transcript or a directory of transcripts could not be read.
    #[error("reading {path}")]
    Read {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What one API answer was, as far as the latch and the throttle go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A request was sent asking for `model`.
    Request {
        /// The model asked for, when the line says.
        model: Option<String>,
    },
    /// An answer the API accepted (an assistant message from the model).
    Answer {
        /// Its request id.
        request_id: Option<String>,
        /// The model that answered.
        model: Option<String>,
    },
    /// An error answer with an HTTP status.
    ApiError {
        /// HTTP status (401, 429, 529...).
        status: u16,
        /// Its request id, when the transcript kept it.
        request_id: Option<String>,
        /// Whether it ended the turn (`isApiErrorMessage`) rather than being retried.
        ended_turn: bool,
    },
    /// A `user` line (a prompt or a tool result): the next API request follows it. Its content
    /// is never read.
    Prompted,
    /// The process wrote its final cost state: it exited.
    ProcessEnd,
}

/// One line the import uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Wall time (ms since epoch); for lines without a timestamp, the previous line's.
    pub ts_ms: u64,
    /// The session id.
    pub session_id: String,
    /// Claude Code version that wrote the line, when it says.
    pub version: Option<String>,
    /// Working directory of the process, when the line says.
    pub cwd: Option<String>,
    /// What it was.
    pub kind: EntryKind,
}

/// The outcome of one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A line the import uses.
    Entry(Entry),
    /// A well-formed line of a kind the import does not use (prompts, attachments...).
    Ignored,
    /// Not a JSON object, or a line of a used kind without the fields it must have.
    Malformed,
    /// A line of a used kind written by a Claude Code version this parser does not know.
    UnknownVersion,
}

/// Counts of what the lines of transcripts were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineCounts {
    /// Every line (a last line without newline included).
    pub lines: u64,
    /// Lines the import used.
    pub used: u64,
    /// Well-formed lines of kinds the import does not use.
    pub ignored: u64,
    /// Lines that are not JSON objects or lack required fields (skipped).
    pub malformed: u64,
    /// A last line cut off without its newline that does not parse (skipped).
    pub truncated: u64,
    /// Lines from an unknown Claude Code version (skipped).
    pub unknown_version: u64,
}

impl LineCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.lines += other.lines;
        self.used += other.used;
        self.ignored += other.ignored;
        self.malformed += other.malformed;
        self.truncated += other.truncated;
        self.unknown_version += other.unknown_version;
    }
}

/// One transcript file, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    /// The used lines, in file order.
    pub entries: Vec<Entry>,
    /// What every line was.
    pub counts: LineCounts,
}

/// Whether this parser knows the format of Claude Code `version` (`1.x.y` and `2.x.y`).
pub fn known_version(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && matches!(parts[0], "1" | "2")
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Parses one line. `prev_ts_ms` stands in for lines without a timestamp (`cost-state`).
pub fn parse_line(line: &[u8], prev_ts_ms: Option<u64>) -> Line {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Line::Malformed;
    };
    let Some(obj) = v.as_object() else {
        return Line::Malformed;
    };
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
    let subtype = obj.get("subtype").and_then(Value::as_str).unwrap_or("");
    let is_error = obj.get("isApiErrorMessage").and_then(Value::as_bool) == Some(true);
    let kind = match (ty, subtype) {
        ("api-request", _) => EntryKind::Request {
            model: v
                .pointer("/params/model")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        ("system", "api_error") => {
            let err = v.get("error");
            let Some(status) = err
                .and_then(|e| e.get("status"))
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
            else {
                return Line::Malformed;
            };
            EntryKind::ApiError {
                status,
                request_id: err.and_then(|e| str_field(e, "requestId")),
                ended_turn: false,
            }
        }
        ("assistant", _) if is_error => {
            let Some(status) = obj
                .get("apiErrorStatus")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
            else {
                // An error message without a status (a network failure, a local error): not an
                // answer of the API.
                return Line::Ignored;
            };
            EntryKind::ApiError {
                status,
                request_id: str_field(&v, "requestId"),
                ended_turn: true,
            }
        }
        ("assistant", _) => {
            let model = v
                .pointer("/message/model")
                .and_then(Value::as_str)
                .filter(|m| !m.starts_with('<'))
                .map(str::to_owned);
            let request_id = str_field(&v, "requestId");
            if request_id.is_none() && model.is_none() {
                // Synthetic messages (e.g. an interrupted turn) carry neither.
                return Line::Ignored;
            }
            EntryKind::Answer { request_id, model }
        }
        ("cost-state", _) => EntryKind::ProcessEnd,
        ("user", _) => EntryKind::Prompted,
        _ => return Line::Ignored,
    };
    let version = str_field(&v, "version");
    if version.as_deref().is_some_and(|ver| !known_version(ver)) {
        return Line::UnknownVersion;
    }
    let Some(session_id) = str_field(&v, "sessionId").filter(|s| !s.is_empty()) else {
        return Line::Malformed;
    };
    let ts_ms = match obj.get("timestamp") {
        Some(t) => t.as_str().and_then(parse_rfc3339),
        None => prev_ts_ms,
    };
    let Some(ts_ms) = ts_ms else {
        return Line::Malformed;
    };
    Line::Entry(Entry {
        ts_ms,
        session_id,
        version,
        cwd: str_field(&v, "cwd"),
        kind,
    })
}

/// Parses a whole transcript file's bytes.
pub fn parse(bytes: &[u8]) -> Transcript {
    let mut out = Transcript::default();
    let mut prev_ts = None;
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest);
        let complete = end.is_some();
        let line = &rest[..end.unwrap_or(rest.len())];
        rest = &rest[end.map_or(rest.len(), |i| i + 1)..];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.counts.lines += 1;
        match parse_line(line, prev_ts) {
            Line::Entry(e) => {
                prev_ts = Some(e.ts_ms);
                out.counts.used += 1;
                out.entries.push(e);
            }
            Line::Ignored => {
                if let Some(ts) = serde_json::from_slice::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("timestamp")?.as_str().and_then(parse_rfc3339))
                {
                    prev_ts = Some(ts);
                }
                out.counts.ignored += 1;
            }
            Line::Malformed if !complete => out.counts.truncated += 1,
            Line::Malformed => out.counts.malformed += 1,
            Line::UnknownVersion => out.counts.unknown_version += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY_401: &[u8] = br#"{"parentUuid":"a","isSidechain":false,"type":"system","subtype":"api_error","level":"error","error":{"message":"401 {\"type\":\"error\"}","status":401,"requestId":"req_011CBhyJ8Vz8ReythW2BnTNZ","formatted":"401 Invalid authentication credentials"},"retryInMs":571,"retryAttempt":1,"maxRetries":10,"source":"request_retry","timestamp":"2026-11-30T07:26:27.680Z","uuid":"u","userType":"external","entrypoint":"sdk-cli","cwd":"/srv/agent","sessionId":"s1","version":"2.1.331","gitBranch":"HEAD"}"#;
    const FINAL_429: &[u8] = br#"{"type":"assistant","timestamp":"2026-11-30T07:32:23.774Z","message":{"model":"<synthetic>","role":"assistant","content":[{"type":"text","text":"API Error: Request rejected (429)"}]},"requestId":"req_011Cc7s3HNFqy2iZ8MMaCWNM","error":"rate_limit","isApiErrorMessage":true,"apiErrorStatus":429,"apiErrorType":"rate_limit_error","cwd":"/srv/agent","sessionId":"s1","version":"2.1.331"}"#;
    const ANSWER: &[u8] = br#"{"type":"assistant","message":{"id":"msg_0d","model":"claude-opus-5-5","content":[{"type":"text","text":"SECRET ANSWER TEXT"}]},"requestId":"req_011CoeETJ9s7K5KAgWftv2xE","timestamp":"2026-11-30T07:26:26.945Z","cwd":"/srv/agent","sessionId":"s1","version":"2.1.331"}"#;
    const REQUEST: &[u8] = br#"{"type":"api-request","sessionId":"s1","id":"7097","timestamp":"2026-11-30T07:26:26.858Z","version":"2.1.331","params":{"model":"claude-opus-5-5","max_tokens":128000}}"#;
    const USER: &[u8] = br#"{"type":"user","message":{"role":"user","content":"SECRET PROMPT"},"timestamp":"2026-11-30T07:26:26.638Z","sessionId":"s1","version":"2.1.331"}"#;
    const COST: &[u8] = br#"{"type":"cost-state","sessionId":"s1","totalCostUSD":0.000256,"startTime":1796023584064}"#;

    #[test]
    fn retried_401_is_an_api_error_with_its_request_id() {
        let Line::Entry(e) = parse_line(RETRY_401, None) else {
            panic!("not an entry")
        };
        assert_eq!(e.session_id, "s1");
        assert_eq!(e.version.as_deref(), Some("2.1.331"));
        assert_eq!(e.cwd.as_deref(), Some("/srv/agent"));
        assert_eq!(parse_rfc3339("2026-11-30T07:26:27.680Z"), Some(e.ts_ms));
        assert_eq!(
            e.kind,
            EntryKind::ApiError {
                status: 401,
                request_id: Some("req_011CBhyJ8Vz8ReythW2BnTNZ".into()),
                ended_turn: false
            }
        );
    }

    #[test]
    fn final_error_answer_and_request_are_read() {
        let Line::Entry(e) = parse_line(FINAL_429, None) else {
            panic!()
        };
        assert_eq!(
            e.kind,
            EntryKind::ApiError {
                status: 429,
                request_id: Some("req_011Cc7s3HNFqy2iZ8MMaCWNM".into()),
                ended_turn: true
            }
        );
        let Line::Entry(r) = parse_line(REQUEST, None) else {
            panic!()
        };
        assert_eq!(
            r.kind,
            EntryKind::Request {
                model: Some("claude-opus-5-5".into())
            }
        );
    }

    #[test]
    fn an_answer_keeps_no_text() {
        let Line::Entry(e) = parse_line(ANSWER, None) else {
            panic!()
        };
        assert_eq!(
            e.kind,
            EntryKind::Answer {
                request_id: Some("req_011CoeETJ9s7K5KAgWftv2xE".into()),
                model: Some("claude-opus-5-5".into())
            }
        );
        assert!(!format!("{e:?}").contains("SECRET"));
        let Line::Entry(u) = parse_line(USER, None) else {
            panic!()
        };
        assert_eq!(u.kind, EntryKind::Prompted);
        assert!(!format!("{u:?}").contains("SECRET"));
    }

    #[test]
    fn cost_state_ends_the_process_at_the_previous_time() {
        assert_eq!(parse_line(COST, None), Line::Malformed);
        let Line::Entry(e) = parse_line(COST, Some(42)) else {
            panic!()
        };
        assert_eq!((e.ts_ms, e.kind), (42, EntryKind::ProcessEnd));
    }

    #[test]
    fn bad_lines_are_counted_not_fatal() {
        let unknown = String::from_utf8(RETRY_401.to_vec())
            .unwrap()
            .replace("2.1.331", "9.0.0");
        let no_status = String::from_utf8(RETRY_401.to_vec())
            .unwrap()
            .replace("\"status\":401,", "");
        let bad_time = String::from_utf8(ANSWER.to_vec())
            .unwrap()
            .replace("2026-11-30T07:26:26.945Z", "yesterday");
        let mut file = Vec::new();
        for l in [
            REQUEST,
            USER,
            b"not json",
            b"[1,2]",
            unknown.as_bytes(),
            no_status.as_bytes(),
            bad_time.as_bytes(),
            RETRY_401,
            b"",
            COST,
        ] {
            file.extend_from_slice(l);
            file.push(b'\n');
        }
        file.extend_from_slice(&ANSWER[..40]);
        let t = parse(&file);
        assert_eq!(
            t.counts,
            LineCounts {
                lines: 10,
                used: 4,
                ignored: 0,
                malformed: 4,
                truncated: 1,
                unknown_version: 1
            }
        );
        assert_eq!(t.entries.len(), 4);
        assert_eq!(t.entries[3].kind, EntryKind::ProcessEnd);
        assert_eq!(t.entries[3].ts_ms, t.entries[2].ts_ms);
    }

    #[test]
    fn versions() {
        for v in ["2.1.331", "2.1.197", "1.0.128", "2.0.77-beta.1"] {
            assert!(known_version(v), "{v}");
        }
        for v in ["3.0.0", "2.1", "", "x.y.z", "2.1.331.4"] {
            assert!(!known_version(v), "{v}");
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x1234_5678_u32;
        let mut junk = Vec::new();
        for _ in 0..4000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            junk.push(b"{}[]\":,\n0aZ"[seed as usize % 11]);
        }
        let t = parse(&junk);
        assert_eq!(t.counts.used, 0);
        let mut cut = RETRY_401.to_vec();
        for n in 0..cut.len() {
            let _ = parse(&cut[..n]);
        }
        cut.push(b'\n');
        assert_eq!(parse(&cut).counts.used, 1);
    }
}
