//! Where to attach TLS uprobes in an ELF file: `SSL_write` / `SSL_read` (and the `_ex` variants
//! where symbols name them), as virtual addresses and the file offsets uprobes take.
//!
//! Symbols are used when the file has them (node, `libssl.so.3`). Stripped BoringSSL builds (Bun,
//! the native Claude Code) are handled by [`boringssl`], which finds the functions from the
//! BoringSSL error sites in the code itself and verifies every candidate; it refuses rather than
//! guesses. x86-64 and arm64 (AArch64) files are read; the arm64 code reading is in [`aarch64`].
//! Results can be cached on disk by GNU build id ([`Cache`]).

pub mod aarch64;
pub mod boringssl;
pub mod cache;
pub mod elf;
pub mod report;
pub mod scan;
pub mod symbols;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use cache::Cache;
pub use elf::{Arch, ElfImage, ElfProblem};

/// Which TLS implementation the functions belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsLibrary {
    /// OpenSSL (node's static copy, `libssl.so.3`).
    OpenSsl,
    /// BoringSSL (Bun and the native Claude Code, statically linked).
    BoringSsl,
}

impl fmt::Display for TlsLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenSsl => "OpenSSL",
            Self::BoringSsl => "BoringSSL",
        })
    }
}

/// How the functions were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// From `.dynsym` / `.symtab`.
    Symbols,
    /// From the code: BoringSSL error sites, call graph and prologue checks.
    Disassembly,
    /// From a cache entry that still matches the file.
    Cache,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Symbols => "symbols",
            Self::Disassembly => "disassembly",
            Self::Cache => "cache",
        })
    }
}

/// A TLS function the capture path probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FunctionName {
    /// `int SSL_write(SSL *ssl, const void *buf, int num)`.
    SslWrite,
    /// `int SSL_read(SSL *ssl, void *buf, int num)`.
    SslRead,
    /// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
    SslWriteEx,
    /// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
    SslReadEx,
}

impl FunctionName {
    /// All names, in the order results are reported.
    pub const ALL: [Self; 4] = [
        Self::SslWrite,
        Self::SslRead,
        Self::SslWriteEx,
        Self::SslReadEx,
    ];

    /// The C symbol name.
    #[must_use]
    pub fn symbol(self) -> &'static str {
        match self {
            Self::SslWrite => "SSL_write",
            Self::SslRead => "SSL_read",
            Self::SslWriteEx => "SSL_write_ex",
            Self::SslReadEx => "SSL_read_ex",
        }
    }

    /// The name for a C symbol name.
    #[must_use]
    pub fn from_symbol(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.symbol() == name)
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// One function to attach to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// Which function.
    pub name: FunctionName,
    /// Its entry's virtual address.
    pub vaddr: u64,
    /// Its entry's offset in the file (what a uprobe takes).
    pub file_offset: u64,
    /// Why we believe this is the function (for humans and logs).
    pub evidence: String,
}

/// Where to attach in one ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    /// GNU build id (lowercase hex), when the file has one.
    pub build_id: Option<String>,
    /// The file's instruction set: uprobes at these offsets only fire in processes that run
    /// this code natively (an arm64 binary under emulation on an x86-64 host never hits them).
    pub arch: Arch,
    /// The TLS implementation found.
    pub library: TlsLibrary,
    /// How the functions were found.
    pub method: Method,
    /// The functions, at least `SSL_write` and `SSL_read`, in [`FunctionName::ALL`] order.
    pub functions: Vec<Function>,
}

impl Located {
    /// The entry for `name`, if located.
    #[must_use]
    pub fn function(&self, name: FunctionName) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// Why no attach points could be given for a file.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The file could not be opened, read or mapped.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not a complete, well-formed x86-64 or arm64 ELF file.
    #[error("{path}: {problem}")]
    Elf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: ElfProblem,
    },
    /// The file imports the TLS functions from a shared library instead of containing them.
    #[error(
        "{path}: no TLS code inside; it imports SSL_read/SSL_write (or their _ex forms) from {needed}: locate that library instead"
    )]
    ImportsTls {
        /// The file.
        path: PathBuf,
        /// The shared libraries it needs that look like TLS libraries (or all of them).
        needed: String,
    },
    /// Neither TLS symbols nor BoringSSL code were found.
    #[error(
        "{path}: no TLS library found (no SSL_read/SSL_write symbols and no BoringSSL ssl_lib.cc error sites)"
    )]
    NoTlsLibrary {
        /// The file.
        path: PathBuf,
    },
    /// A TLS library is there, but the functions could not be identified with certainty.
    #[error(
        "{path}: {library} found but SSL_write/SSL_read not identified with certainty: {reason}; not attaching"
    )]
    NotIdentified {
        /// The file.
        path: PathBuf,
        /// Which library was recognised.
        library: TlsLibrary,
        /// What check failed.
        reason: String,
    },
}

/// Locates the TLS functions in the ELF file at `path`, using and filling `cache` when given.
///
/// # Errors
/// See [`LocateError`]: I/O, not a complete x86-64 or arm64 ELF, no TLS library, or not identified
/// with certainty.
pub fn locate_file(path: &Path, cache: Option<&Cache>) -> Result<Located, LocateError> {
    let started = Instant::now();
    let io = |source| LocateError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private; if another process truncates the file while we
    // read, accesses may fault (SIGBUS), as for any mmap reader. Executables in use cannot be
    // written (ETXTBSY), and updates replace files by rename, which leaves our mapping intact.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let image = ElfImage::parse(&map).map_err(|problem| LocateError::Elf {
        path: path.to_owned(),
        problem,
    })?;
    let build_id = image.build_id.as_deref();
    if let Some(hit) = cache
        .zip(build_id)
        .and_then(|(cache, id)| cache.lookup(id, &image))
    {
        tracing::debug!(path = %path.display(), build_id, elapsed_us = started.elapsed().as_micros() as u64, "locate: cache hit");
        return Ok(hit);
    }
    let located = locate_image(path, &image)?;
    tracing::debug!(
        path = %path.display(),
        build_id = located.build_id.as_deref().unwrap_or("-"),
        method = %located.method,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "locate: located"
    );
    if let Some(Err(error)) = cache.map(|cache| cache.store(&image, &located)) {
        tracing::warn!(path = %path.display(), error = %crate::error_chain(&error), "locate: cannot write cache entry");
    }
    Ok(located)
}

/// Locates the TLS functions in a parsed image (no cache). `path` is used in errors only.
///
/// # Errors
/// As [`locate_file`], without I/O.
pub fn locate_image(path: &Path, image: &ElfImage<'_>) -> Result<Located, LocateError> {
    if let Some(located) = symbols::locate(image) {
        return Ok(located);
    }
    match boringssl::locate(image) {
        Ok(Some(functions)) => Ok(Located {
            build_id: image.build_id.clone(),
            arch: image.arch,
            library: TlsLibrary::BoringSsl,
            method: Method::Disassembly,
            functions,
        }),
        Ok(None) => {
            let names: Vec<&str> = FunctionName::ALL.iter().map(|n| n.symbol()).collect();
            let (_, imported) = image.function_symbols(&names);
            if imported {
                let tls: Vec<&str> = image
                    .needed
                    .iter()
                    .map(String::as_str)
                    .filter(|n| n.contains("ssl") || n.contains("tls"))
                    .collect();
                let needed = if tls.is_empty() {
                    image.needed.join(", ")
                } else {
                    tls.join(", ")
                };
                return Err(LocateError::ImportsTls {
                    path: path.to_owned(),
                    needed,
                });
            }
            Err(LocateError::NoTlsLibrary {
                path: path.to_owned(),
            })
        }
        Err(reason) => Err(LocateError::NotIdentified {
            path: path.to_owned(),
            library: TlsLibrary::BoringSsl,
            reason: reason.to_string(),
        }),
    }
}
