//! What to attach to: a binary or shared library by path (every process that maps it), or
//! the TLS-carrying files a given process maps (that process only).

use std::fs;
use std::path::{Path, PathBuf};

use super::CaptureError;
use crate::locate::{self, Arch, Cache, FunctionName, LocateError};

/// One function in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    /// Which function.
    pub function: FunctionName,
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

/// The TLS functions of a file, from the locator (symbols, or BoringSSL's own code), with
/// the on-disk cache when one is configured.
fn find_points(path: &Path) -> Result<(Vec<AttachPoint>, String), CaptureError> {
    let located = locate::locate_file(path, locate_cache()).map_err(|e| match e {
        LocateError::Io { source, .. } => CaptureError::TargetUnreadable {
            path: path.to_path_buf(),
            source,
        },
        other => CaptureError::NoTlsFunctions {
            path: path.display().to_string(),
            reason: other.to_string(),
        },
    })?;
    if Arch::HOST != Some(located.arch) {
        // E.g. an arm64 claude run by qemu-user on an x86-64 host: its code is translated, so
        // uprobes at its file offsets would never fire.
        return Err(CaptureError::NoTlsFunctions {
            path: path.display().to_string(),
            reason: format!(
                "{} binary on this {} host (run under emulation?): probes at its offsets would never fire; not attaching",
                located.arch,
                Arch::HOST.map_or_else(|| std::env::consts::ARCH.to_owned(), |a| a.to_string())
            ),
        });
    }
    let points = located
        .functions
        .iter()
        .map(|f| AttachPoint {
            function: f.name,
            file_offset: f.file_offset,
        })
        .collect();
    Ok((
        points,
        format!("{} via {}", located.library, located.method),
    ))
}

static LOCATE_CACHE: std::sync::OnceLock<Option<Cache>> = std::sync::OnceLock::new();

/// Uses `dir` to cache located offsets by build id (set once, before the first attach).
pub fn set_locate_cache(dir: PathBuf) {
    let _ = LOCATE_CACHE.set(Some(Cache::new(dir)));
}

fn locate_cache() -> Option<&'static Cache> {
    LOCATE_CACHE.get_or_init(|| None).as_ref()
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
