//! The locator on arm64 (AArch64) builds of Claude Code 2.1.331 and 2.1.197 (glibc and musl) and
//! Bun 1.4.5, 1.3.11 and 1.2.23, checked against emulated execution.
//!
//! This machine has no arm64 kernel, so no uprobe can fire in arm64 code. The ground truth is
//! instead: run the arm64 binary under Debian's `qemu-aarch64` (user mode) with its gdb stub,
//! against the stand-in API on 127.0.0.1, and let `gdb-multiarch` (driven by
//! `tests/arm64/truth.py`) stop at the located `SSL_write` and `SSL_read`: the write buffer must
//! begin `POST /v1/messages` and, after `SSL_read` returns, its buffer must begin `HTTP/1.1 200`
//! with the `request-id` the stand-in logged for that POST.
//! The breakpoint addresses are computed from the located *file offsets* (what uprobes take)
//! through the program headers, so the offsets themselves are what is tested.
//!
//! Sysroots: glibc builds use `/usr/aarch64-linux-gnu` (Debian's `libc6-arm64-cross`); musl
//! builds use `$CLAUDE_WATCH_TEST_DEPS/arm64-musl`, the files of Debian's `musl:arm64` package
//! (`cargo xtask setup --tests` extracts it, see xtask). Emulated runs are serialised: each
//! takes several seconds of both cores.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use claude_watch::locate::{
    self, Arch, Cache, ElfImage, FunctionName, LocateError, Located, Method, TlsLibrary, aarch64,
};
use claude_watch_tests::deps;
use claude_watch_tests::process::{ChildGuard, ScratchDir};
use claude_watch_tests::standin::StandIn;
use serde_json::Value;

/// How long one emulated run may take (a Claude Code turn under qemu takes 5-20 s here).
const EMULATION_TIMEOUT: Duration = Duration::from_secs(240);
/// One emulated run at a time.
static EMULATION: Mutex<()> = Mutex::new(());

/// Where an arm64 build finds its C library under qemu (`qemu-aarch64 -L`).
#[derive(Debug, Clone, Copy)]
enum Libc {
    /// Debian's `libc6-arm64-cross`.
    Glibc,
    /// Debian's `musl:arm64`, extracted by `cargo xtask setup --tests`.
    Musl,
}

impl Libc {
    #[track_caller]
    fn sysroot(self) -> PathBuf {
        let (root, loader) = match self {
            Libc::Glibc => (
                PathBuf::from("/usr/aarch64-linux-gnu"),
                "lib/ld-linux-aarch64.so.1",
            ),
            Libc::Musl => (
                deps::test_deps_dir().join("arm64-musl"),
                "lib/ld-musl-aarch64.so.1",
            ),
        };
        assert!(
            root.join(loader).exists(),
            "{} missing: run `cargo xtask setup --tests`",
            root.join(loader).display()
        );
        root
    }
}

/// A pinned arm64 npm binary; panics (does not skip) when it is not installed.
#[track_caller]
fn npm_binary(dir: &str, rel: &str) -> PathBuf {
    let path = deps::test_deps_dir()
        .join("npm")
        .join(dir)
        .join("node_modules")
        .join(rel);
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask setup --tests` (or set {})",
        path.display(),
        deps::TEST_DEPS_ENV
    );
    path
}

fn claude(version: &str, libc: Libc) -> PathBuf {
    match libc {
        Libc::Glibc => npm_binary(
            &format!("claude-arm64-{version}"),
            "@anthropic-ai/claude-code-linux-arm64/claude",
        ),
        Libc::Musl => npm_binary(
            &format!("claude-arm64-musl-{version}"),
            "@anthropic-ai/claude-code-linux-arm64-musl/claude",
        ),
    }
}

fn bun(version: &str) -> PathBuf {
    npm_binary(
        &format!("bun-arm64-{version}"),
        "@oven/bun-linux-aarch64/bin/bun",
    )
}

/// Locates `path` with an empty cache, then again from the cache; checks what every arm64
/// result must be and returns the first result.
fn locate_arm64(path: &Path) -> Located {
    let dir = ScratchDir::new("claude-watch-arm64-cache");
    let cache = Cache::new(dir.path());
    let started = Instant::now();
    let first = locate::locate_file(path, Some(&cache)).unwrap_or_else(|e| panic!("{e}"));
    let uncached = started.elapsed();
    let started = Instant::now();
    let second = locate::locate_file(path, Some(&cache)).unwrap_or_else(|e| panic!("{e}"));
    let cached = started.elapsed();
    eprintln!(
        "{}: located in {uncached:?}, from cache in {cached:?}",
        path.display()
    );
    assert_eq!(first.arch, Arch::Aarch64, "{}", path.display());
    assert_eq!(first.library, TlsLibrary::BoringSsl);
    assert_eq!(first.method, Method::Disassembly);
    assert!(first.build_id.as_deref().is_some_and(|id| id.len() == 40));
    let names: Vec<FunctionName> = first.functions.iter().map(|f| f.name).collect();
    assert_eq!(names, vec![FunctionName::SslWrite, FunctionName::SslRead]);
    assert_eq!(second.method, Method::Cache);
    assert_eq!(second.arch, Arch::Aarch64);
    assert_eq!(second.functions, first.functions);
    assert!(
        uncached < Duration::from_secs(5),
        "locating {} took {uncached:?}",
        path.display()
    );
    assert!(
        cached < Duration::from_millis(100),
        "cached lookup took {cached:?}"
    );

    let data = std::fs::read(path).expect("read");
    for f in &first.functions {
        let at = usize::try_from(f.file_offset).expect("offset");
        let prologue = aarch64::prologue(&data[at..]).unwrap_or_else(|| {
            panic!(
                "{} at file offset {:#x} of {} is not a frame prologue",
                f.name,
                f.file_offset,
                path.display()
            )
        });
        assert!(f.evidence.contains(&prologue), "{}: {}", f.name, f.evidence);
    }
    first
}

/// The virtual address the file offset `offset` is loaded at, from the program headers: the
/// breakpoint address for a located function, computed from what a uprobe would take.
fn vaddr_of_offset(path: &Path, offset: u64) -> u64 {
    let data = std::fs::read(path).expect("read");
    let image = ElfImage::parse(&data).expect("parse");
    let seg = image
        .segments
        .iter()
        .find(|s| s.executable && offset >= s.offset && offset - s.offset < s.file_size)
        .unwrap_or_else(|| panic!("file offset {offset:#x} is in no executable segment"));
    offset - seg.offset + seg.vaddr
}

/// What the emulated run saw at the breakpoints.
#[derive(Debug, Default)]
struct Truth {
    /// Heads of the buffers passed to `SSL_write`.
    writes: Vec<String>,
    /// `SSL_read` return values and the heads of the bytes read.
    reads: Vec<(i64, String)>,
    /// Why the gdb driver stopped.
    end: String,
}

/// Runs `program args` (an arm64 binary) under `qemu-aarch64 -L sysroot` with `env`, with
/// breakpoints at `located`'s functions, and returns what they saw.
fn emulate(
    program: &Path,
    args: &[&str],
    libc: Libc,
    env: &[(&str, String)],
    located: &Located,
) -> Truth {
    let _one = EMULATION.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = ScratchDir::new("claude-watch-arm64");
    let socket = scratch.path().join("gdb.sock");
    let at = |name| {
        let f = located.function(name).expect("located");
        let vaddr = vaddr_of_offset(program, f.file_offset);
        assert_eq!(vaddr, f.vaddr, "{name}: file offset and vaddr disagree");
        format!("{vaddr:#x}")
    };
    let mut qemu = Command::new("qemu-aarch64");
    qemu.arg("-L")
        .arg(libc.sysroot())
        .arg("-g")
        .arg(&socket)
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", scratch.path())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(scratch.path());
    let mut qemu = ChildGuard::spawn("qemu-aarch64", &mut qemu);
    // `claude -p` reads standard input when it is a pipe: give it end of file at once.
    qemu.close_stdin();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            !qemu.has_exited(),
            "qemu-aarch64 exited before opening its gdb socket"
        );
        assert!(
            Instant::now() < deadline,
            "qemu-aarch64 opened no gdb socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut gdb = Command::new("gdb-multiarch");
    gdb.args(["-batch", "-nx", "-x"])
        .arg(deps::assets_dir().join("arm64/truth.py"))
        .env("TRUTH_SOCKET", &socket)
        .env("TRUTH_WRITE", at(FunctionName::SslWrite))
        .env("TRUTH_READ", at(FunctionName::SslRead));
    let started = Instant::now();
    let mut gdb = ChildGuard::spawn("gdb-multiarch", &mut gdb);
    gdb.wait_for_line(0, EMULATION_TIMEOUT, "the gdb driver's end", |l| {
        l.starts_with("TRUTH ") && l.contains("\"end\"")
    });
    eprintln!(
        "{}: emulated run took {:?}",
        program.display(),
        started.elapsed()
    );
    let mut truth = Truth::default();
    for line in gdb.lines() {
        let Some(json) = line.strip_prefix("TRUTH ") else {
            continue;
        };
        let event: Value = serde_json::from_str(json).expect("TRUTH line is JSON");
        let text = event["head"].as_str().unwrap_or_default().to_owned();
        match event["event"].as_str() {
            Some("write") => truth.writes.push(text),
            Some("read") => truth
                .reads
                .push((event["ret"].as_i64().expect("ret"), text)),
            Some("end") => truth.end = event["why"].as_str().unwrap_or_default().to_owned(),
            other => panic!("unexpected TRUTH event {other:?}"),
        }
    }
    qemu.kill();
    truth
}

/// The located offsets are `SSL_write` and `SSL_read`: an emulated run against the stand-in
/// shows the request in the write buffer and the 200 status line in the read buffer.
#[track_caller]
fn check_against_emulation(program: &Path, args: &[&str], libc: Libc, env_for: EnvFor) {
    let located = locate_arm64(program);
    let standin = StandIn::start();
    let env = env_for(&standin);
    let truth = emulate(program, args, libc, &env, &located);
    eprintln!("{}: {truth:?}", program.display());
    assert!(
        truth
            .writes
            .iter()
            .any(|w| w.starts_with("POST /v1/messages")),
        "no SSL_write at {:#x} carried POST /v1/messages: {truth:?}",
        located
            .function(FunctionName::SslWrite)
            .expect("write")
            .vaddr
    );
    assert_eq!(truth.end, "seen", "{truth:?}");
    // The status line read is the stand-in's answer to the POST: same request id.
    let log = standin.log();
    let answered_post = |id: &str| {
        log.iter().any(|e| {
            e.request_id == id
                && e.method == "POST"
                && e.path.starts_with("/v1/messages")
                && e.status == 200
        })
    };
    let matched = truth.reads.iter().any(|(n, head)| {
        *n > 0
            && head.starts_with("HTTP/1.1 200")
            && request_id(head).is_some_and(|id| answered_post(&id))
    });
    assert!(
        matched,
        "no SSL_read at {:#x} returned the HTTP/1.1 200 the stand-in sent for POST /v1/messages: {truth:?}, log {log:?}",
        located.function(FunctionName::SslRead).expect("read").vaddr
    );
}

/// The `request-id` header value in a response head.
fn request_id(head: &str) -> Option<String> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("request-id"))
        .map(|(_, value)| value.trim().to_owned())
}

/// The environment an emulated client gets, given the stand-in.
type EnvFor = fn(&StandIn) -> Vec<(&'static str, String)>;

fn claude_env(standin: &StandIn) -> Vec<(&'static str, String)> {
    vec![
        ("ANTHROPIC_BASE_URL", standin.base_url()),
        ("ANTHROPIC_API_KEY", "sk-ant-api03-test".into()),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0".into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("NO_COLOR", "1".into()),
    ]
}

fn bun_env(standin: &StandIn) -> Vec<(&'static str, String)> {
    vec![
        ("STANDIN_URL", standin.base_url()),
        ("NODE_TLS_REJECT_UNAUTHORIZED", "0".into()),
    ]
}

const CLAUDE_ARGS: &[&str] = &["-p", "say hi"];

/// A one-request Bun client: POST /v1/messages to the stand-in, print the status.
const BUN_CLIENT: &str = r#"
const r = await fetch(process.env.STANDIN_URL + "/v1/messages", {
  method: "POST",
  headers: { "content-type": "application/json", "x-api-key": "sk-ant-api03-test", "anthropic-version": "2023-06-01" },
  body: JSON.stringify({ model: "claude-haiku-4-5", max_tokens: 8, stream: true, messages: [{ role: "user", content: "hi" }] }),
  tls: { rejectUnauthorized: false },
});
console.log("status", r.status);
await r.text();
"#;

#[test]
fn claude_code_arm64_2_1_331() {
    check_against_emulation(
        &claude("2.1.331", Libc::Glibc),
        CLAUDE_ARGS,
        Libc::Glibc,
        claude_env,
    );
}

#[test]
fn claude_code_arm64_musl_2_1_331() {
    check_against_emulation(
        &claude("2.1.331", Libc::Musl),
        CLAUDE_ARGS,
        Libc::Musl,
        claude_env,
    );
}

#[test]
fn claude_code_arm64_2_1_197() {
    check_against_emulation(
        &claude("2.1.197", Libc::Glibc),
        CLAUDE_ARGS,
        Libc::Glibc,
        claude_env,
    );
}

#[test]
fn claude_code_arm64_musl_2_1_197() {
    check_against_emulation(
        &claude("2.1.197", Libc::Musl),
        CLAUDE_ARGS,
        Libc::Musl,
        claude_env,
    );
}

/// Bun `version` (arm64, glibc) runs [`BUN_CLIENT`] under emulation.
fn check_bun(version: &str) {
    let dir = ScratchDir::new("claude-watch-arm64-bun");
    let script = dir.path().join("client.mjs");
    std::fs::write(&script, BUN_CLIENT).expect("write client");
    let script = script.to_string_lossy().into_owned();
    check_against_emulation(&bun(version), &[&script], Libc::Glibc, bun_env);
}

#[test]
fn bun_arm64_1_4_5() {
    check_bun("1.4.5");
}

#[test]
fn bun_arm64_1_3_11() {
    check_bun("1.3.11");
}

#[test]
fn bun_arm64_1_2_23() {
    check_bun("1.2.23");
}

/// The ground truth can fail: with the two functions swapped, no write breakpoint sees the
/// request (the driver ends without `seen`).
#[test]
fn emulation_rejects_wrong_offsets() {
    let program = bun("1.4.5");
    let mut located = locate_arm64(&program);
    let (write, read) = (located.functions[0].clone(), located.functions[1].clone());
    located.functions[0].vaddr = read.vaddr;
    located.functions[0].file_offset = read.file_offset;
    located.functions[1].vaddr = write.vaddr;
    located.functions[1].file_offset = write.file_offset;
    let dir = ScratchDir::new("claude-watch-arm64-bun");
    let script = dir.path().join("client.mjs");
    std::fs::write(&script, BUN_CLIENT).expect("write client");
    let standin = StandIn::start();
    let truth = emulate(
        &program,
        &[&script.to_string_lossy()],
        Libc::Glibc,
        &bun_env(&standin),
        &located,
    );
    assert!(
        !truth
            .writes
            .iter()
            .any(|w| w.starts_with("POST /v1/messages")),
        "{truth:?}"
    );
    assert_ne!(truth.end, "seen");
}

/// An x86-64 daemon must not attach to an arm64 binary (run under binfmt emulation, its code is
/// translated and the probes would never fire); the locator says which architecture it read.
#[test]
fn located_arm64_offsets_carry_their_architecture() {
    let located = locate::locate_file(&bun("1.4.5"), None).expect("locate");
    assert_eq!(located.arch, Arch::Aarch64);
    let json = locate::report::json(&located);
    assert_eq!(json["arch"], "arm64");
    let x86 = locate::locate_file(Path::new("/usr/bin/node"), None).expect("locate node");
    assert_eq!(x86.arch, Arch::X86_64);
}

/// `claude-watch trace` on this x86-64 host refuses an arm64 binary, saying why.
#[test]
fn trace_refuses_an_arm64_binary_on_an_x86_64_host() {
    let output = Command::new(claude_watch_tests::watch::bin())
        .args(["trace", "--binary"])
        .arg(bun("1.4.5"))
        .output()
        .expect("run claude-watch trace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("arm64 binary on this x86-64 host") && stderr.contains("not attaching"),
        "{stderr}"
    );
}

/// A truncated arm64 build is refused like an x86-64 one.
#[test]
fn truncated_arm64_binary() {
    let dir = ScratchDir::new("claude-watch-arm64-truncated");
    let path = dir.path().join("bun-truncated");
    let data = std::fs::read(bun("1.4.5")).expect("read");
    std::fs::write(&path, &data[..1 << 20]).expect("write");
    let err = locate::locate_file(&path, None).expect_err("truncated");
    assert!(
        matches!(
            err,
            LocateError::Elf {
                problem: locate::ElfProblem::Truncated { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

/// A cache entry is valid only for the architecture it was made for: the same build id, size and
/// bytes read as another architecture are located afresh.
#[test]
fn cache_entries_are_per_architecture() {
    let dir = ScratchDir::new("claude-watch-arm64-cache-arch");
    let cache = Cache::new(dir.path().join("cache"));
    let copy = dir.path().join("libssl.so.3");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libssl.so.3", &copy).expect("copy");
    let x86 = locate::locate_file(&copy, Some(&cache)).expect("locate");
    assert_eq!((x86.arch, x86.method), (Arch::X86_64, Method::Symbols));
    assert_eq!(
        locate::locate_file(&copy, Some(&cache))
            .expect("locate")
            .method,
        Method::Cache
    );
    // Relabel the file as arm64 (e_machine = EM_AARCH64): same build id, size and bytes.
    let mut data = std::fs::read(&copy).expect("read");
    data[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(&copy, &data).expect("write");
    let relabelled = locate::locate_file(&copy, Some(&cache)).expect("locate");
    assert_eq!(relabelled.build_id, x86.build_id);
    assert_eq!(
        (relabelled.arch, relabelled.method),
        (Arch::Aarch64, Method::Symbols),
        "an x86-64 entry must not answer for an arm64 file"
    );
}
