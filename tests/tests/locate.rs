//! The locator on real binaries: the pinned Bun and Claude Code releases (stripped BoringSSL),
//! node and libssl (symbols), and files it must refuse with a clear error.
//!
//! The pinned clients are installed by `cargo xtask setup` under `$CLAUDE_WATCH_TEST_DEPS`
//! (default `<workspace>/.test-deps`). Whether the located offsets are the live functions is
//! shown by the capture tests; here we check the locator's own guarantees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use claude_watch::locate::{
    self, Cache, FunctionName, LocateError, Located, Method, TlsLibrary, report,
};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        // Tests run in parallel threads: each directory must be its own.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "claude-watch-locate-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn test_deps() -> PathBuf {
    std::env::var_os("CLAUDE_WATCH_TEST_DEPS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-deps"),
        PathBuf::from,
    )
}

/// A pinned npm binary; panics (does not skip) when it is not installed.
fn npm_binary(dir: &str, rel: &str) -> PathBuf {
    let path = test_deps()
        .join("npm")
        .join(dir)
        .join("node_modules")
        .join(rel);
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask setup` (or set CLAUDE_WATCH_TEST_DEPS)",
        path.display()
    );
    path
}

fn claude(version: &str) -> PathBuf {
    npm_binary(
        &format!("claude-{version}"),
        "@anthropic-ai/claude-code-linux-x64/claude",
    )
}

fn bun(dir: &str, package: &str) -> PathBuf {
    npm_binary(dir, &format!("@oven/{package}/bin/bun"))
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(path).expect("open");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    file.read_exact(&mut buf).expect("read");
    buf
}

/// Locates `path` with an empty cache and again from the cache; checks the guarantees every
/// result must keep and returns the first result.
fn locate_twice(path: &Path, library: TlsLibrary, method: Method) -> Located {
    let dir = TempDir::new("cache");
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

    assert_eq!(first.library, library, "{}", path.display());
    assert_eq!(first.method, method, "{}", path.display());
    assert!(
        first.build_id.as_deref().is_some_and(|id| id.len() == 40),
        "build id of {}",
        path.display()
    );
    let write = first
        .function(FunctionName::SslWrite)
        .expect("SSL_write located");
    let read = first
        .function(FunctionName::SslRead)
        .expect("SSL_read located");
    assert_ne!(write.vaddr, read.vaddr);
    for f in &first.functions {
        assert!(!f.evidence.is_empty());
        assert!(f.file_offset < std::fs::metadata(path).expect("stat").len());
    }

    assert_eq!(
        second.method,
        Method::Cache,
        "second lookup of {} must come from the cache",
        path.display()
    );
    assert_eq!(second.functions, first.functions);
    assert_eq!(second.build_id, first.build_id);
    assert!(
        uncached < Duration::from_secs(2),
        "locating {} took {uncached:?}",
        path.display()
    );
    assert!(
        cached < Duration::from_millis(100),
        "cached lookup of {} took {cached:?}",
        path.display()
    );
    first
}

/// A BoringSSL result must point at function entries: the bytes at the file offsets are a
/// frame-pointer prologue, and only SSL_write/SSL_read are claimed.
fn check_boringssl(path: &Path) {
    let located = locate_twice(path, TlsLibrary::BoringSsl, Method::Disassembly);
    let names: Vec<FunctionName> = located.functions.iter().map(|f| f.name).collect();
    assert_eq!(names, vec![FunctionName::SslWrite, FunctionName::SslRead]);
    for f in &located.functions {
        let bytes = read_at(path, f.file_offset, 4);
        assert_eq!(
            bytes,
            [0x55, 0x48, 0x89, 0xE5],
            "{} at file offset {:#x} is not push rbp; mov rbp,rsp",
            f.name,
            f.file_offset
        );
    }
}

#[test]
fn claude_code_2_1_331() {
    check_boringssl(&claude("2.1.331"));
}

#[test]
fn claude_code_2_1_197() {
    check_boringssl(&claude("2.1.197"));
}

#[test]
fn bun_1_4_5() {
    check_boringssl(&bun("bun-1.4.5", "bun-linux-x64"));
}

#[test]
fn bun_baseline_1_3_11() {
    check_boringssl(&bun("bun-baseline-1.3.11", "bun-linux-x64-baseline"));
}

#[test]
fn bun_1_2_23() {
    check_boringssl(&bun("bun-1.2.23", "bun-linux-x64"));
}

/// Symbol results: all four functions, in an executable segment, offsets translated through it.
fn check_symbols(path: &Path) {
    let located = locate_twice(path, TlsLibrary::OpenSsl, Method::Symbols);
    for name in FunctionName::ALL {
        let f = located
            .function(name)
            .unwrap_or_else(|| panic!("{name} in {}", path.display()));
        assert!(f.evidence.contains(name.symbol()));
    }
    let data = std::fs::read(path).expect("read");
    let image = locate::ElfImage::parse(&data).expect("parse");
    for f in &located.functions {
        let seg = image.segment_of(f.vaddr).expect("segment");
        assert!(seg.executable, "{} is not in an executable segment", f.name);
        assert_eq!(f.file_offset, f.vaddr - seg.vaddr + seg.offset);
    }
}

#[test]
fn node_by_symbols() {
    check_symbols(Path::new("/usr/bin/node"));
}

#[test]
fn libssl_by_symbols() {
    check_symbols(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
}

#[test]
fn json_report_has_numbers_per_function() {
    let located = locate::locate_file(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"), None)
        .expect("locate");
    let json = report::json(&located);
    assert_eq!(json["library"], "OpenSSL");
    assert_eq!(json["build_id"].as_str(), located.build_id.as_deref());
    let write = located.function(FunctionName::SslWrite).expect("SSL_write");
    assert_eq!(
        json["functions"]["SSL_write"]["vaddr"].as_u64(),
        Some(write.vaddr)
    );
    assert_eq!(
        json["functions"]["SSL_write"]["file_offset"].as_u64(),
        Some(write.file_offset)
    );
    assert!(json["functions"]["SSL_read"]["file_offset"].is_u64());
    let text = report::human(Path::new("libssl.so.3"), &located);
    assert!(
        text.contains(&format!("{:#x}", write.file_offset)),
        "{text}"
    );
}

#[test]
fn stale_cache_entry_is_ignored_and_rewritten() {
    let dir = TempDir::new("stale");
    let cache = Cache::new(dir.path().join("cache"));
    let copy = dir.path().join("libssl.so.3");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libssl.so.3", &copy).expect("copy");
    let first = locate::locate_file(&copy, Some(&cache)).expect("locate");
    assert_eq!(first.method, Method::Symbols);
    assert_eq!(
        locate::locate_file(&copy, Some(&cache))
            .expect("locate")
            .method,
        Method::Cache
    );

    // Same build id and size, different code at SSL_write: the entry no longer matches.
    let write = first.function(FunctionName::SslWrite).expect("SSL_write");
    let mut data = std::fs::read(&copy).expect("read");
    data[write.file_offset as usize + 1] ^= 0xFF;
    std::fs::write(&copy, &data).expect("write");
    let again = locate::locate_file(&copy, Some(&cache)).expect("locate");
    assert_eq!(
        again.method,
        Method::Symbols,
        "a stale entry must not be used"
    );
    assert_eq!(
        locate::locate_file(&copy, Some(&cache))
            .expect("locate")
            .method,
        Method::Cache,
        "entry rewritten"
    );
}

fn expect_error(path: &Path, what: &str, check: impl Fn(&LocateError) -> bool) {
    let err = locate::locate_file(path, None).expect_err(what);
    let line = err.to_string();
    eprintln!("{what}: {line}");
    assert!(check(&err), "{what}: unexpected error {err:?}");
    assert!(!line.contains('\n'), "error must be one line: {line}");
    assert!(
        line.contains(&path.display().to_string()),
        "error names the file: {line}"
    );
}

#[test]
fn no_tls_library() {
    expect_error(Path::new("/bin/true"), "/bin/true", |e| {
        matches!(e, LocateError::NoTlsLibrary { .. })
    });
}

#[test]
fn tls_imported_from_a_shared_library() {
    let module = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("python3"))
        .map(|d| d.path().join("lib-dynload"))
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("_ssl."))
        })
        .expect("CPython's _ssl module (python3 is installed on the test machines)");
    expect_error(
        &module,
        "python _ssl",
        |e| matches!(e, LocateError::ImportsTls { needed, .. } if needed.contains("libssl.so")),
    );
}

/// A minimal ELF64 header: little-endian, version 1, the given machine, no program headers.
fn elf_header(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // little-endian
    h[6] = 1; // EV_CURRENT
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h
}

/// arm64 is read (tests/tests/arm64.rs); other architectures are refused by name.
#[test]
fn unsupported_architecture() {
    let dir = TempDir::new("riscv");
    let path = dir.path().join("hello-riscv64");
    std::fs::write(&path, elf_header(243)).expect("write");
    expect_error(
        &path,
        "RISC-V",
        |e| matches!(e, LocateError::Elf { problem: locate::ElfProblem::UnsupportedArch { arch }, .. } if arch.contains("RISC-V")),
    );
    let mut big_endian = elf_header(183);
    big_endian[5] = 2;
    big_endian[18..20].copy_from_slice(&183u16.to_be_bytes());
    std::fs::write(&path, big_endian).expect("write");
    expect_error(
        &path,
        "aarch64_be",
        |e| matches!(e, LocateError::Elf { problem: locate::ElfProblem::UnsupportedArch { arch }, .. } if arch.contains("big-endian arm64")),
    );
}

#[test]
fn truncated_elf() {
    let dir = TempDir::new("truncated");
    let path = dir.path().join("bun-truncated");
    let bun = bun("bun-1.4.5", "bun-linux-x64");
    std::fs::write(&path, read_at(&bun, 0, 1 << 20)).expect("write");
    expect_error(&path, "truncated", |e| {
        matches!(
            e,
            LocateError::Elf {
                problem: locate::ElfProblem::Truncated { .. },
                ..
            }
        )
    });
}

#[test]
fn corrupt_elf() {
    let dir = TempDir::new("corrupt");
    let path = dir.path().join("libssl-corrupt");
    let mut data = std::fs::read("/usr/lib/x86_64-linux-gnu/libssl.so.3").expect("read");
    data[54..56].copy_from_slice(&7u16.to_le_bytes()); // e_phentsize = 7
    std::fs::write(&path, data).expect("write");
    expect_error(&path, "corrupt", |e| {
        matches!(
            e,
            LocateError::Elf {
                problem: locate::ElfProblem::Corrupt { .. },
                ..
            }
        )
    });
}

#[test]
fn not_an_elf() {
    let dir = TempDir::new("notelf");
    let path = dir.path().join("script.sh");
    std::fs::write(&path, "#!/bin/sh\necho hi\n").expect("write");
    expect_error(&path, "not an ELF", |e| {
        matches!(
            e,
            LocateError::Elf {
                problem: locate::ElfProblem::NotElf,
                ..
            }
        )
    });
}

#[test]
fn missing_file() {
    // Opened through the door for files others choose: a missing file is its error.
    expect_error(Path::new("/nonexistent/claude"), "missing", |e| {
        matches!(e, LocateError::Io { .. } | LocateError::Untrusted(_))
    });
}
