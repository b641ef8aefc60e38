//! Property tests of the decoders that read what a hostile local user controls: the kernel's
//! ring records (their heads are the observed process's own TLS writes and reads), the HTTP
//! head parsers and the pairer, and the ELF reader and locator (any file can be named
//! `claude`). Properties: they never panic, their output stays bounded, a record survives a
//! round trip, and no credential the input carries ever appears in what is parsed.
//!
//! The seeds in `claude-watch/tests/corpus/` (real-shaped heads with canary credentials, two
//! small ELF files and their C sources) are run as they are and mutated; failures proptest
//! finds are kept in `claude-watch/proptest-regressions/` and replayed first. `PROPTEST_CASES`
//! sets the cases per property (256 by default).

use std::path::{Path, PathBuf};

use claude_ebpf_common::{EventHeader, HEAD_MAX, HEADER_LEN, flags, kind};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::capture::records::decode;
use crate::http::Exchange;
use crate::http::pair::{Pairer, Record};
use crate::http::parse::{Parse, parse_request, parse_response};
use crate::locate::elf::ElfImage;
use crate::locate::locate_image;

/// What every credential of the generated input starts with; it must never come out.
const CANARY: &str = "SECRET";

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

/// The seed files of `tests/corpus/<name>` (C sources left out), sorted.
fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(name))
        .unwrap_or_else(|e| panic!("corpus {name}: {e}"))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_none_or(|x| x != "c"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {name} is empty");
    files
}

/// A ring record as the kernel writes it: the header's fields in order, native endian, then
/// the head.
fn encode(header: &EventHeader, head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + head.len());
    out.extend_from_slice(&header.ts_ns.to_ne_bytes());
    out.extend_from_slice(&header.conn.to_ne_bytes());
    for field in [
        header.pid,
        header.tid,
        header.len,
        header.captured,
        header.kind,
        header.flags,
        header.uid,
        header.pad,
    ] {
        out.extend_from_slice(&field.to_ne_bytes());
    }
    assert_eq!(out.len(), HEADER_LEN, "the header layout changed");
    out.extend_from_slice(head);
    out
}

fn header(kind: u32, flags: u32, conn: u64, ts_ns: u64, head: &[u8], len: u32) -> EventHeader {
    EventHeader {
        ts_ns,
        conn,
        pid: 4242,
        tid: 4243,
        uid: 1000,
        pad: 0,
        len,
        captured: u32::try_from(head.len()).expect("head fits"),
        kind,
        flags,
    }
}

/// Every text field of an exchange, and its debug form, are free of the canary and bounded.
fn check_exchange(ex: &Exchange) -> Result<(), TestCaseError> {
    let debug = format!("{ex:?}");
    prop_assert!(!debug.contains(CANARY), "a credential came out: {debug}");
    check_lengths(
        &[
            &ex.session_id,
            &ex.user_agent,
            &ex.request_id,
            &ex.retry_after,
        ],
        256,
    )?;
    check_lengths(&[&ex.model], 100)?;
    check_lengths(&[&ex.method], 7)?;
    check_lengths(&[&ex.path], MAX_TARGET_OUT)?;
    Ok(())
}

/// The longest target the parser can return: 512 bytes of input (each invalid UTF-8 byte
/// becoming a 3-byte replacement character) plus `REDACTED` for at most 256 parameters.
const MAX_TARGET_OUT: usize = 3 * 512 + 9 * 256 + 3;

fn check_lengths(fields: &[&Option<String>], max: usize) -> Result<(), TestCaseError> {
    for field in fields.iter().copied().flatten() {
        prop_assert!(
            field.len() <= max,
            "{} bytes > {max}: {field:?}",
            field.len()
        );
    }
    Ok(())
}

// --- HTTP heads with credentials in them ------------------------------------------------

/// A value with the canary in front, as a credential would carry.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{0,40}".prop_map(|s| format!("{CANARY}{s}"))
}

/// A header name in any letter case.
fn any_case(name: &'static str) -> impl Strategy<Value = String> {
    vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

/// One header line's name and value: a credential (its value a secret), a field the parser
/// keeps (a harmless value), or noise.
fn request_header() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (any_case("x-api-key"), secret()),
        (
            any_case("authorization"),
            secret().prop_map(|s| format!("Bearer {s}"))
        ),
        (
            any_case("proxy-authorization"),
            secret().prop_map(|s| format!("Basic {s}"))
        ),
        (
            any_case("cookie"),
            secret().prop_map(|s| format!("a=b; session={s}"))
        ),
        (any_case("x-claude-code-session-id"), "[a-f0-9-]{1,40}"),
        (
            any_case("user-agent"),
            "claude-cli/[0-9.]{1,8} \\([a-z, -]{0,20}\\)"
        ),
        ("[a-z-]{1,20}", "[ -~]{0,60}")
            .prop_filter("no credential in noise", |(_, v)| { !v.contains(CANARY) }),
    ]
}

fn response_header() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (
            any_case("set-cookie"),
            secret().prop_map(|s| format!("__cf_bm={s}; path=/"))
        ),
        (
            any_case("www-authenticate"),
            secret().prop_map(|s| format!("Bearer realm={s}"))
        ),
        (any_case("x-api-key"), secret()),
        (any_case("request-id"), "req_[A-Za-z0-9]{1,30}"),
        (any_case("retry-after"), "[0-9]{1,4}"),
        (any_case("x-should-retry"), prop_oneof!["true", "false"]),
        ("[a-z-]{1,20}", "[ -~]{0,60}")
            .prop_filter("no credential in noise", |(_, v)| { !v.contains(CANARY) }),
    ]
}

/// A query whose secret-named parameters carry secrets.
fn query() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            (
                prop_oneof![
                    "key",
                    "api_key",
                    "token",
                    "access_token",
                    "code",
                    "sig",
                    "auth"
                ],
                secret()
            ),
            ("(beta|limit|state|page)", "[a-z0-9]{0,10}"),
        ],
        0..6,
    )
    .prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// A whole request head (and maybe the start of its body, a prompt with a secret in it).
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof!["POST", "GET", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS"],
        "/v1/[a-z_/]{0,30}",
        query(),
        vec(request_header(), 0..10),
        prop_oneof!["\r\n", "\n"],
        prop_oneof![": ", ":", ":  "],
        proptest::option::of((
            "claude-[a-z0-9-]{1,20}",
            secret(),
        )),
    )
        .prop_map(|(method, path, query, headers, eol, sep, body)| {
            let mut out = format!("{method} {path}");
            if !query.is_empty() {
                out.push('?');
                out.push_str(&query);
            }
            out.push_str(" HTTP/1.1");
            out.push_str(&eol);
            for (name, value) in headers {
                out.push_str(&format!("{name}{sep}{value}{eol}"));
            }
            out.push_str(&eol);
            if let Some((model, prompt)) = body {
                out.push_str(&format!(
                    "{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{prompt}\"}}]}}"
                ));
            }
            out.into_bytes()
        })
}

fn response() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(200_u16), Just(401), Just(429), 100..600_u16],
        vec(response_header(), 0..10),
        prop_oneof!["\r\n", "\n"],
        proptest::option::of(secret()),
    )
        .prop_map(|(status, headers, eol, body)| {
            let mut out = format!("HTTP/1.1 {status} Reason{eol}");
            for (name, value) in headers {
                out.push_str(&format!("{name}: {value}{eol}"));
            }
            out.push_str(&eol);
            if let Some(body) = body {
                out.push_str(&format!("{{\"error\":{{\"message\":\"{body}\"}}}}"));
            }
            out.into_bytes()
        })
}

/// `bytes` cut at `cut` (a fraction in 0..=1000 of its length), at most `HEAD_MAX - 1` bytes:
/// what the kernel's copy may deliver.
fn cut(bytes: &[u8], cut: u16) -> &[u8] {
    let n = (bytes.len() * usize::from(cut.min(1000)) / 1000).min(HEAD_MAX - 1);
    &bytes[..n]
}

proptest! {
    #[test]
    fn a_ring_record_survives_the_round_trip(
        ts_ns in any::<u64>(),
        conn in any::<u64>(),
        pid in any::<u32>(),
        tid in any::<u32>(),
        len in any::<u32>(),
        kind in any::<u32>(),
        flags in any::<u32>(),
        head in vec(any::<u8>(), 0..HEAD_MAX),
        padding in vec(any::<u8>(), 0..16),
    ) {
        let h = EventHeader {
            ts_ns, conn, pid, tid, uid: pid ^ tid, pad: 0, len,
            captured: u32::try_from(head.len()).expect("fits"),
            kind, flags,
        };
        // The ring rounds records up to 8 bytes: trailing padding is not part of the head.
        let mut bytes = encode(&h, &head);
        bytes.extend_from_slice(&padding);
        let record = decode(&bytes).expect("a well-formed record decodes");
        prop_assert_eq!(record.header, h);
        prop_assert_eq!(record.head, &head[..]);
    }

    #[test]
    fn any_bytes_decode_to_a_bounded_record_or_nothing(bytes in vec(any::<u8>(), 0..HEADER_LEN + 5_000)) {
        if let Some(record) = decode(&bytes) {
            prop_assert!(record.head.len() <= HEAD_MAX);
            prop_assert_eq!(record.head.len(), record.header.captured as usize);
            prop_assert!(HEADER_LEN + record.head.len() <= bytes.len());
        }
    }

    #[test]
    fn any_bytes_parse_without_panic_and_bounded(
        bytes in vec(any::<u8>(), 0..HEAD_MAX),
        truncated in any::<bool>(),
    ) {
        if let Parse::Parsed(head) = parse_request(&bytes, truncated) {
            prop_assert!(head.target.len() <= MAX_TARGET_OUT);
            check_lengths(&[&head.session_id, &head.user_agent], 256)?;
            check_lengths(&[&head.model], 100)?;
        }
        if let Parse::Parsed(head) = parse_response(&bytes, truncated) {
            prop_assert!((100..600).contains(&head.status));
            check_lengths(&[&head.request_id, &head.retry_after], 256)?;
        }
    }

    #[test]
    fn no_credential_of_a_request_head_is_ever_parsed_out(
        req in request(),
        at in 0..=1000_u16,
        truncated in any::<bool>(),
    ) {
        let head = cut(&req, at);
        let parsed = parse_request(head, truncated);
        let debug = format!("{parsed:?}");
        prop_assert!(!debug.contains(CANARY), "{debug}\nfrom {:?}", String::from_utf8_lossy(head));
        if at == 1000 && req.len() < HEAD_MAX {
            prop_assert!(matches!(parsed, Parse::Parsed(_)), "a whole head parses: {debug}");
        }
    }

    #[test]
    fn no_credential_of_a_response_head_is_ever_parsed_out(
        resp in response(),
        at in 0..=1000_u16,
        truncated in any::<bool>(),
    ) {
        let head = cut(&resp, at);
        let parsed = parse_response(head, truncated);
        let debug = format!("{parsed:?}");
        prop_assert!(!debug.contains(CANARY), "{debug}");
    }

    /// Exchanges on several connections, their heads split over writes and reads at random
    /// points (continuations), plus junk records: every exchange is free of credentials and
    /// bounded, and nothing panics.
    #[test]
    fn the_pairer_never_lets_a_credential_through(
        exchanges in vec((request(), response(), 0..4_u64, 1..=1000_u16, 1..=1000_u16), 1..8),
        junk in vec((0..6_u32, 0..2_u32, 0..4_u64, vec(any::<u8>(), 0..200), any::<u32>()), 0..8),
    ) {
        let mut pairer = Pairer::new(crate::time::WallClock::default());
        let mut ts = 1_000_u64;
        let mut out = Vec::new();
        let mut feed = |pairer: &mut Pairer, kind: u32, flags: u32, conn: u64, head: &[u8], len: u32| {
            ts += 1_000;
            let h = header(kind, flags, conn, ts, head, len);
            let bytes = encode(&h, head);
            let record = decode(&bytes).expect("encoded records decode");
            if let Some(ex) = pairer.push(Record { header: record.header, head: record.head }) {
                out.push(ex);
            }
        };
        for ((req, resp, conn, split_req, split_resp), junk) in exchanges.iter().zip(junk.iter().chain(std::iter::repeat(&(0, 0, 0, Vec::new(), 0)))) {
            let len = |b: &[u8]| u32::try_from(b.len()).expect("fits");
            let first = cut(req, *split_req);
            feed(&mut pairer, kind::WRITE, 0, *conn, first, len(req));
            let tail = &req[first.len()..];
            if !tail.is_empty() {
                feed(&mut pairer, kind::WRITE, flags::CONTINUATION, *conn, cut(tail, 1000), len(tail));
            }
            let piece = cut(resp, *split_resp);
            feed(&mut pairer, kind::READ, 0, *conn, piece, len(piece));
            let tail = &resp[piece.len()..];
            if !tail.is_empty() {
                feed(&mut pairer, kind::READ, flags::CONTINUATION, *conn, cut(tail, 1000), len(tail));
            }
            let (k, f, c, bytes, l) = junk;
            feed(&mut pairer, *k, *f, *c, bytes, *l);
        }
        for ex in &out {
            check_exchange(ex)?;
        }
    }
}

// --- ELF ---------------------------------------------------------------------------------

/// A seed ELF with up to 24 bytes overwritten (header fields, program and section headers,
/// code) and maybe cut short.
fn mutated_elf() -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus("elf");
    (
        0..seeds.len(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..24),
        proptest::option::of(any::<prop::sample::Index>()),
        any::<bool>(),
    )
        .prop_map(move |(seed, writes, truncate, headers_only)| {
            let mut bytes = seeds[seed].1.clone();
            for (at, value) in writes {
                // Most structure is in the first 4 KiB (ELF header and program headers) and in
                // the section headers at the end: aim half the writes there.
                let i = if headers_only {
                    at.index(bytes.len().min(4096))
                } else {
                    at.index(bytes.len())
                };
                bytes[i] = value;
            }
            if let Some(at) = truncate {
                bytes.truncate(at.index(bytes.len() + 1));
            }
            bytes
        })
}

fn check_elf(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(image) = ElfImage::parse(bytes) else {
        return Ok(());
    };
    for seg in &image.segments {
        prop_assert!(image.segment_bytes(seg).len() <= bytes.len());
    }
    let (symbols, _) = image.function_symbols(&["SSL_write", "SSL_read"]);
    for sym in symbols {
        let _ = image.bytes_at(sym.vaddr);
        let _ = image.file_offset(sym.vaddr);
    }
    if let Ok(located) = locate_image(Path::new("fuzzed"), &image) {
        prop_assert!(located.functions.len() >= 2);
        for f in &located.functions {
            prop_assert!(
                f.file_offset < bytes.len() as u64,
                "{} at offset {:#x} past the end ({} bytes)",
                f.name.symbol(),
                f.file_offset,
                bytes.len()
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_bytes_behind_an_elf_magic_are_parsed_or_refused(
        rest in vec(any::<u8>(), 0..4096),
        class in prop_oneof![Just(2_u8), any::<u8>()],
    ) {
        let mut bytes = b"\x7fELF".to_vec();
        bytes.push(class);
        bytes.extend_from_slice(&rest);
        check_elf(&bytes)?;
    }

    #[test]
    fn a_mutated_elf_is_located_or_refused_without_panic(bytes in mutated_elf()) {
        check_elf(&bytes)?;
    }
}

// --- The corpus as it is -------------------------------------------------------------------

#[test]
fn the_http_corpus_parses_and_keeps_no_credential() {
    for (name, bytes) in corpus("http") {
        for truncated in [false, true] {
            let request = format!("{:?}", parse_request(&bytes, truncated));
            let response = format!("{:?}", parse_response(&bytes, truncated));
            assert!(
                !request.contains(CANARY) && !response.contains(CANARY),
                "{name}: {request} / {response}"
            );
        }
        if name.contains("request-claude-code") {
            let Parse::Parsed(head) = parse_request(&bytes, false) else {
                panic!("{name} parses");
            };
            assert_eq!(head.model.as_deref(), Some("claude-opus-4-8"));
            assert!(head.session_id.is_some() && head.user_agent.is_some());
        }
        if name.contains("query-secrets") {
            let Parse::Parsed(head) = parse_request(&bytes, false) else {
                panic!("{name} parses");
            };
            assert_eq!(
                head.target,
                "/v1/oauth/callback?code=REDACTED&state=x&api_key=REDACTED"
            );
        }
        if name.contains("response-401") {
            let Parse::Parsed(head) = parse_response(&bytes, false) else {
                panic!("{name} parses");
            };
            assert_eq!(head.status, 401);
            assert_eq!(
                head.request_id.as_deref(),
                Some("req_011CR6ahgYuvfbiHFok2tQRQ")
            );
        }
    }
}

#[test]
fn the_elf_corpus_is_located_by_symbols_or_refused() {
    for (name, bytes) in corpus("elf") {
        let image = ElfImage::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let result = locate_image(Path::new(&name), &image);
        if name.ends_with("ssl-symbols.so") {
            let located = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(located.method, crate::locate::Method::Symbols);
        } else {
            assert!(result.is_err(), "{name} is not BoringSSL: {result:?}");
        }
        check_elf(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
