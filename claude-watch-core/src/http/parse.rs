//! Pure parsers for HTTP/1.x heads as the probes deliver them: the first bytes of one TLS
//! write or read, possibly cut short by the kernel's head limit.
//!
//! Only an allowlist of header fields is kept (session id, user agent, request id,
//! `retry-after`, `x-should-retry`) and only the `"model"` of a JSON body: credentials
//! (`x-api-key`, `Authorization`, cookies) and bodies are never copied out of the input.

/// The outcome of parsing one buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse<T> {
    /// The buffer ends before the first line does; more bytes may complete it.
    Incomplete,
    /// The bytes are not what was expected.
    Invalid(Invalid),
    /// A head.
    Parsed(T),
}

/// Why a buffer was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// It does not begin with a method or `HTTP/1.`.
    NotHttp,
    /// The first line is malformed (bad method, target, version or status code).
    BadFirstLine,
    /// The first line does not end within the captured head.
    LineTooLong,
}

/// Longest request target kept; longer targets are cut (with `...`).
const MAX_TARGET: usize = 512;
/// Longest header value kept.
const MAX_VALUE: usize = 256;
/// Longest model name accepted from a body.
const MAX_MODEL: usize = 100;

/// A request head: request line plus the fields claude-watch keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Target with secret-looking query values replaced by `REDACTED`.
    pub target: String,
    /// `X-Claude-Code-Session-Id`.
    pub session_id: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `"model"` from the JSON body, when the body starts in this buffer.
    pub model: Option<String>,
    /// Whether the blank line ending the headers was seen.
    pub headers_complete: bool,
}

/// A response head: status line plus the fields claude-watch keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// `request-id`.
    pub request_id: Option<String>,
    /// `retry-after`, as sent.
    pub retry_after: Option<String>,
    /// `x-should-retry`.
    pub should_retry: Option<bool>,
}

const METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE",
];

/// Parses the head of a written buffer. `truncated` says the buffer is a cut-off prefix of a
/// longer write (so a missing line end is final, not a reason to wait).
pub fn parse_request(buf: &[u8], truncated: bool) -> Parse<RequestHead> {
    let Some(sp) = buf.iter().take(8).position(|&b| b == b' ') else {
        return if buf.len() < 8 && METHODS.iter().any(|m| m.starts_with(buf)) {
            Parse::Incomplete
        } else {
            Parse::Invalid(Invalid::NotHttp)
        };
    };
    let method = &buf[..sp];
    if !METHODS.contains(&method) {
        return Parse::Invalid(Invalid::NotHttp);
    }
    let Some((line, rest)) = split_line(buf) else {
        return if truncated {
            Parse::Invalid(Invalid::LineTooLong)
        } else {
            Parse::Incomplete
        };
    };
    let mut parts = line[sp + 1..].rsplitn(2, |&b| b == b' ');
    let (Some(version), Some(target)) = (parts.next(), parts.next()) else {
        return Parse::Invalid(Invalid::BadFirstLine);
    };
    if !is_http1_version(version)
        || target.is_empty()
        || !target.iter().all(|&b| b.is_ascii_graphic())
    {
        return Parse::Invalid(Invalid::BadFirstLine);
    }
    let mut head = RequestHead {
        method: ascii(method),
        target: redact_target(target),
        ..RequestHead::default()
    };
    let body = for_each_header(rest, |name, value| {
        if name.eq_ignore_ascii_case(b"x-claude-code-session-id") {
            head.session_id = token(value);
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            head.user_agent = text(value);
        }
    });
    if let Some(body) = body {
        head.headers_complete = true;
        head.model = model_from_body(body);
    }
    Parse::Parsed(head)
}

/// Parses the head of a read buffer. `truncated` as for [`parse_request`].
pub fn parse_response(buf: &[u8], truncated: bool) -> Parse<ResponseHead> {
    const PREFIX: &[u8] = b"HTTP/1.";
    if buf.len() < PREFIX.len() {
        return if PREFIX.starts_with(buf) {
            Parse::Incomplete
        } else {
            Parse::Invalid(Invalid::NotHttp)
        };
    }
    if !buf.starts_with(PREFIX) {
        return Parse::Invalid(Invalid::NotHttp);
    }
    let Some((line, rest)) = split_line(buf) else {
        return if truncated {
            Parse::Invalid(Invalid::LineTooLong)
        } else {
            Parse::Incomplete
        };
    };
    // HTTP/1.x SP 3DIGIT [SP reason]
    let status = match line.strip_prefix(PREFIX) {
        Some([minor, b' ', d1, d2, d3, tail @ ..])
            if minor.is_ascii_digit()
                && (b'1'..=b'5').contains(d1)
                && d2.is_ascii_digit()
                && d3.is_ascii_digit()
                && (tail.is_empty() || tail[0] == b' ') =>
        {
            u16::from(d1 - b'0') * 100 + u16::from(d2 - b'0') * 10 + u16::from(d3 - b'0')
        }
        _ => return Parse::Invalid(Invalid::BadFirstLine),
    };
    let mut head = ResponseHead {
        status,
        ..ResponseHead::default()
    };
    for_each_header(rest, |name, value| {
        if name.eq_ignore_ascii_case(b"request-id") {
            head.request_id = token(value);
        } else if name.eq_ignore_ascii_case(b"retry-after") {
            head.retry_after = token(value);
        } else if name.eq_ignore_ascii_case(b"x-should-retry") {
            head.should_retry = match value {
                b"true" => Some(true),
                b"false" => Some(false),
                _ => None,
            };
        }
    });
    Parse::Parsed(head)
}

/// Finds `"model": "<name>"` near the start of a JSON body and returns the name when it looks
/// like a model name (so no prompt text can leak through this field).
pub fn model_from_body(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"model\"";
    let at = find(body, KEY)?;
    let mut rest = &body[at + KEY.len()..];
    rest = trim_start(rest);
    rest = rest.strip_prefix(b":")?;
    rest = trim_start(rest);
    rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let name = &rest[..end];
    let ok = !name.is_empty()
        && name.len() <= MAX_MODEL
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._:@/[]".contains(&b));
    ok.then(|| ascii(name))
}

/// Replaces the values of query parameters whose names suggest secrets, and cuts very long
/// targets.
pub fn redact_target(target: &[u8]) -> String {
    const SECRET_NAMES: [&str; 8] = [
        "key",
        "token",
        "secret",
        "password",
        "auth",
        "sig",
        "signature",
        "code",
    ];
    let target = if target.len() > MAX_TARGET {
        &target[..MAX_TARGET]
    } else {
        target
    };
    let text = String::from_utf8_lossy(target);
    let Some((path, query)) = text.split_once('?') else {
        return finish_target(text.into_owned(), target.len() == MAX_TARGET);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _))
                if SECRET_NAMES
                    .iter()
                    .any(|s| name.to_ascii_lowercase().contains(s)) =>
            {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    finish_target(out, target.len() == MAX_TARGET)
}

fn finish_target(mut target: String, cut: bool) -> String {
    if cut {
        target.push_str("...");
    }
    target
}

fn is_http1_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit())
}

/// Splits off the first line (without its CRLF or LF).
fn split_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &buf[nl + 1..]))
}

/// Calls `f(name, value)` for every complete header line; returns the bytes after the blank
/// line ending the headers, if it is in `buf`.
fn for_each_header(mut buf: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Option<&[u8]> {
    while let Some((line, rest)) = split_line(buf) {
        if line.is_empty() {
            return Some(rest);
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let value = trim_start(&line[colon + 1..]);
            let value = value.strip_suffix(b" ").unwrap_or(value);
            f(&line[..colon], value);
        }
        buf = rest;
    }
    None
}

/// A header value that must be a single token (ids, numbers): printable, no spaces.
fn token(value: &[u8]) -> Option<String> {
    (!value.is_empty() && value.len() <= MAX_VALUE && value.iter().all(|b| b.is_ascii_graphic()))
        .then(|| ascii(value))
}

/// A free-text header value (user agent): printable ASCII and spaces.
fn text(value: &[u8]) -> Option<String> {
    let value = if value.len() > MAX_VALUE {
        &value[..MAX_VALUE]
    } else {
        value
    };
    (!value.is_empty() && value.iter().all(|&b| b == b' ' || b.is_ascii_graphic()))
        .then(|| ascii(value))
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn trim_start(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = b {
        b = rest;
    }
    b
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE_REQUEST: &[u8] = b"POST /v1/messages?beta=true HTTP/1.1\r\n\
host: 127.0.0.1:8443\r\n\
x-api-key: sk-ant-api03-SECRET-SECRET\r\n\
Authorization: Bearer sk-ant-oat01-SECRET\r\n\
User-Agent: claude-cli/2.1.197 (external, sdk-cli)\r\n\
X-Claude-Code-Session-Id: 1b6f8a1e-44f3-4c2b-9d1a-2f0c7a8e9b10\r\n\
content-type: application/json\r\n\r\n\
{\"model\":\"claude-opus-4-8\",\"messages\":[{\"role\":\"user\",\"content\":\"secret prompt\"}]}";

    fn parsed<T: std::fmt::Debug>(p: Parse<T>) -> T {
        match p {
            Parse::Parsed(t) => t,
            other => panic!("expected a parsed head, got {other:?}"),
        }
    }

    #[test]
    fn claude_request_keeps_only_allowlisted_fields() {
        let head = parsed(parse_request(CLAUDE_REQUEST, false));
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1/messages?beta=true");
        assert_eq!(
            head.session_id.as_deref(),
            Some("1b6f8a1e-44f3-4c2b-9d1a-2f0c7a8e9b10")
        );
        assert_eq!(
            head.user_agent.as_deref(),
            Some("claude-cli/2.1.197 (external, sdk-cli)")
        );
        assert_eq!(head.model.as_deref(), Some("claude-opus-4-8"));
        assert!(head.headers_complete);
        let debug = format!("{head:?}");
        assert!(!debug.contains("SECRET"), "a credential leaked: {debug}");
        assert!(!debug.contains("secret prompt"), "the body leaked: {debug}");
    }

    #[test]
    fn request_line_variants() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.0\r\n\r\n", false),
            Parse::Parsed(_)
        ));
        assert_eq!(parse_request(b"POST /v1/mess", false), Parse::Incomplete);
        assert_eq!(parse_request(b"POS", false), Parse::Incomplete);
        assert_eq!(
            parse_request(b"POST /v1/mess", true),
            Parse::Invalid(Invalid::LineTooLong)
        );
        assert_eq!(
            parse_request(b"FOO / HTTP/1.1\r\n", false),
            Parse::Invalid(Invalid::NotHttp)
        );
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00", false),
            Parse::Invalid(Invalid::NotHttp)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/2\r\n", false),
            Parse::Invalid(Invalid::BadFirstLine)
        );
        assert_eq!(
            parse_request(b"GET HTTP/1.1\r\n", false),
            Parse::Invalid(Invalid::BadFirstLine)
        );
        assert_eq!(
            parse_request(b"GET /a\x01b HTTP/1.1\r\n", false),
            Parse::Invalid(Invalid::BadFirstLine)
        );
    }

    #[test]
    fn headers_only_write_has_no_model_yet() {
        let head = parsed(parse_request(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n\r\n",
            false,
        ));
        assert!(head.headers_complete);
        assert_eq!(head.model, None);
        let head = parsed(parse_request(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nX-Claude-Code",
            true,
        ));
        assert!(!head.headers_complete);
    }

    #[test]
    fn secret_query_values_are_redacted() {
        assert_eq!(
            redact_target(b"/v1/x?beta=true&api_key=abc&Token=t"),
            "/v1/x?beta=true&api_key=REDACTED&Token=REDACTED"
        );
        assert_eq!(redact_target(b"/plain"), "/plain");
        let long = vec![b'a'; 600];
        assert_eq!(redact_target(&long).len(), MAX_TARGET + 3);
    }

    #[test]
    fn model_from_body_accepts_names_only() {
        assert_eq!(
            model_from_body(b"{\"model\" : \"claude-haiku-4-5\"}").as_deref(),
            Some("claude-haiku-4-5")
        );
        assert_eq!(model_from_body(b"{\"model\":\"has space\"}"), None);
        assert_eq!(model_from_body(b"{\"messages\":[]}"), None);
        assert_eq!(model_from_body(b"{\"model\":\"unterminated"), None);
        assert_eq!(model_from_body(b"{\"model\":12}"), None);
    }

    #[test]
    fn anthropic_responses() {
        let head = parsed(parse_response(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nrequest-id: req_011CcVDWWs8GPfDyX8R9LEfW\r\nx-should-retry: false\r\n\r\n{\"type\":\"error\"}",
            false,
        ));
        assert_eq!(head.status, 401);
        assert_eq!(
            head.request_id.as_deref(),
            Some("req_011CcVDWWs8GPfDyX8R9LEfW")
        );
        assert_eq!(head.should_retry, Some(false));
        let head = parsed(parse_response(
            b"HTTP/1.1 429 Too Many Requests\r\nx-should-retry: true\r\nretry-after: 17\r\n\r\n",
            false,
        ));
        assert_eq!(
            (head.status, head.should_retry, head.retry_after.as_deref()),
            (429, Some(true), Some("17"))
        );
        let head = parsed(parse_response(b"HTTP/1.0 200\r\n", false));
        assert_eq!(head.status, 200);
    }

    #[test]
    fn status_line_in_pieces_and_garbage() {
        assert_eq!(parse_response(b"HT", false), Parse::Incomplete);
        assert_eq!(parse_response(b"HTTP/1.1 4", false), Parse::Incomplete);
        assert_eq!(
            parse_response(b"HTTP/1.1 4", true),
            Parse::Invalid(Invalid::LineTooLong)
        );
        assert_eq!(
            parse_response(b"HTTP/2 200\r\n", false),
            Parse::Invalid(Invalid::NotHttp)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 2000 OK\r\n", false),
            Parse::Invalid(Invalid::BadFirstLine)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 20x OK\r\n", false),
            Parse::Invalid(Invalid::BadFirstLine)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 600 X\r\n", false),
            Parse::Invalid(Invalid::BadFirstLine)
        );
        assert_eq!(
            parse_response(b"data: {\"type\"", false),
            Parse::Invalid(Invalid::NotHttp)
        );
        assert_eq!(parse_response(b"", false), Parse::Incomplete);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every prefix of pseudo-random buffers, some seeded
        // with valid prefixes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let mut buf: Vec<u8> = match round % 3 {
                0 => b"HTTP/1.1 ".to_vec(),
                1 => b"POST /".to_vec(),
                _ => Vec::new(),
            };
            for _ in 0..(round % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push((x >> 24) as u8);
            }
            for end in 0..=buf.len() {
                let _ = parse_request(&buf[..end], end % 2 == 0);
                if let Parse::Parsed(h) = parse_response(&buf[..end], end % 2 == 0) {
                    assert!((100..600).contains(&h.status));
                }
            }
        }
    }
}
