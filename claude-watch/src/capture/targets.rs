//! What to attach to: a binary or shared library by path (every process that maps it), or
//! the TLS-carrying files a given process maps (that process only).

use std::fs;
use std::path::{Path, PathBuf};

use super::CaptureError;

/// A TLS function the programs know how to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Function {
    /// `int SSL_write(SSL *, const void *, int)`.
    SslWrite,
    /// `int SSL_write_ex(SSL *, const void *, size_t, size_t *)`.
    SslWriteEx,
    /// `int SSL_read(SSL *, void *, int)`.
    SslRead,
    /// `int SSL_read_ex(SSL *, void *, size_t, size_t *)`.
    SslReadEx,
}

impl Function {
    /// All of them, writes first.
    pub const ALL: [Function; 4] = [
        Self::SslWrite,
        Self::SslWriteEx,
        Self::SslRead,
        Self::SslReadEx,
    ];

    /// The C name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SslWrite => "SSL_write",
            Self::SslWriteEx => "SSL_write_ex",
            Self::SslRead => "SSL_read",
            Self::SslReadEx => "SSL_read_ex",
        }
    }
}

/// One function in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    /// Which function.
    pub function: Function,
    /// Its entry as an offset in the file (what uprobes take).
    pub file_offset: u64,
}

/// A file to attach to, in a scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The file as this process can open it (through `/proc/<pid>/root` for processes in
    /// other mount namespaces).
    pub path: PathBuf,
    /// Only this process, or every process mapping the file when `None`.
    pub pid: Option<u32>,
    /// The functions found in it.
    pub points: Vec<AttachPoint>,
    /// How they were found (for the operator).
    pub how: String,
}

/// Finds the TLS functions of a file by path; every process mapping it will be covered.
pub fn binary(path: &Path) -> Result<Target, CaptureError> {
    let (points, how) = find_points(path)?;
    Ok(Target {
        path: path.to_path_buf(),
        pid: None,
        points,
        how,
    })
}

/// Finds the TLS-carrying files mapped by process `pid` (its executable and the libraries it
/// loaded), reached through `/proc/<pid>/root` so other mount namespaces work.
pub fn process(pid: u32) -> Result<Vec<Target>, CaptureError> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|_| CaptureError::NoSuchProcess { pid })?;
    let mut targets: Vec<Target> = Vec::new();
    let mut reasons = Vec::new();
    for file in executable_mappings(&maps) {
        let path = PathBuf::from(format!("/proc/{pid}/root{file}"));
        if targets.iter().any(|t| t.path == path) {
            continue;
        }
        match find_points(&path) {
            Ok((points, how)) => targets.push(Target {
                path,
                pid: Some(pid),
                points,
                how,
            }),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    if targets.is_empty() {
        return Err(CaptureError::NoTlsFunctions {
            path: format!("process {pid}"),
            reason: "none of its mapped files has SSL_write/SSL_read (is it a TLS client, and has it loaded its TLS library yet?)".into(),
        });
    }
    Ok(targets)
}

/// Paths of file-backed executable mappings in `/proc/<pid>/maps` content, each once, skipping
/// the vdso and other pseudo files.
pub fn executable_mappings(maps: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let (_, Some(perms), _, _, _, Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = path.trim_start();
        if perms.as_bytes().get(2) != Some(&b'x')
            || !path.starts_with('/')
            || path.ends_with(" (deleted)")
        {
            continue;
        }
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// SSL functions in a file by its dynamic or static symbols.
// Interim: symbols only, until the locator (which also reads stripped BoringSSL) is merged.
fn find_points(path: &Path) -> Result<(Vec<AttachPoint>, String), CaptureError> {
    use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
    let data = fs::read(path).map_err(|source| CaptureError::TargetUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let no = |reason: String| CaptureError::NoTlsFunctions {
        path: path.display().to_string(),
        reason,
    };
    let file =
        object::File::parse(&*data).map_err(|e| no(format!("not a readable ELF file: {e}")))?;
    let mut points = Vec::new();
    for function in Function::ALL {
        let Some(sym) = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.name() == Ok(function.name()) && s.address() != 0)
        else {
            continue;
        };
        let Some(offset) = file.segments().find_map(|seg| {
            let (start, size) = (seg.address(), seg.size());
            (sym.address() >= start && sym.address() < start + size)
                .then(|| sym.address() - start + seg.file_range().0)
        }) else {
            continue;
        };
        points.push(AttachPoint {
            function,
            file_offset: offset,
        });
    }
    if !points
        .iter()
        .any(|p| p.function == Function::SslWrite || p.function == Function::SslWriteEx)
        || !points
            .iter()
            .any(|p| p.function == Function::SslRead || p.function == Function::SslReadEx)
    {
        return Err(no("no SSL_write/SSL_read symbols".into()));
    }
    Ok((points, "symbols".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_mappings_of_a_maps_file() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/curl
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/curl
7f0000000000-7f0000001000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000002000-7f0000003000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000004000-7f0000005000 r-xp 00000000 00:00 0 
7f0000006000-7f0000007000 r-xp 00000000 fe:01 789 /tmp/old binary (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            executable_mappings(maps),
            vec!["/usr/bin/curl", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]
        );
    }
}
