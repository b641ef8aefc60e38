//! Execs as the kernel reports them, and the judgment of an image by its path once its process
//! is gone.
//!
//! An exec of an image not judged yet does not wake the daemon: it waits in the ring for the
//! next drain, and a short-lived tool has exited by then, so `/proc/<pid>/exe` no longer says
//! what it ran. The record carries what the kernel knew instead ([`Exec`]): the image's key
//! (device, inode, size) and the path the exec named (`bprm->interp`). The file at that path is
//! judged only when the file opened there, through [`crate::untrusted`] and in the daemon's own
//! mount namespace, has that very key: a path in another mount namespace, a file replaced since,
//! a relative path (the process's working directory is gone with it) are never judged as the
//! image, and wait for its next exec.

use std::ffi::OsStr;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use claude_ebpf_common::{EXEC_IMAGE_LEN, ImageKey, flags, kind};

use crate::http::pair::Record;
use crate::untrusted::{self, Identity, Resolve};

/// An exec as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    /// The new image.
    pub image: ImageKey,
    /// The path the exec loaded it from, as the exec named it (`None`: cut by the kernel).
    pub path: Option<PathBuf>,
    /// The user that exec'd (whose share of looks judging the file takes).
    pub uid: u32,
}

impl Exec {
    /// The exec in `record`, when it is an exec record that carries its image.
    #[must_use]
    pub fn of(record: &Record<'_>) -> Option<Self> {
        let h = &record.header;
        if h.kind != kind::EXEC || h.flags & flags::IMAGE == 0 {
            return None;
        }
        let (key, path) = record.head.split_at_checked(EXEC_IMAGE_LEN)?;
        // SAFETY: `key` holds `EXEC_IMAGE_LEN` bytes, an `ImageKey` is plain integers.
        let image: ImageKey = unsafe { std::ptr::read_unaligned(key.as_ptr().cast()) };
        let whole = h.flags & flags::PATH_CUT == 0 && !path.contains(&0);
        Some(Self {
            image,
            path: whole.then(|| PathBuf::from(OsStr::from_bytes(path))),
            uid: h.uid,
        })
    }
}

/// The key the kernel gives the file `stat` describes as `id`.
#[must_use]
pub fn key_of(id: &Identity) -> ImageKey {
    ImageKey {
        ino: id.ino,
        size: id.size,
        dev: crate::capture::btf::kernel_dev(id.dev),
        pad: 0,
    }
}

/// Why an image was not judged by its path.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The exec named it by a relative path (or none the kernel could give whole): where it
    /// led is not known once the process is gone.
    #[error("not an absolute path")]
    Relative,
    /// The path leads to no regular file the door opens.
    #[error(transparent)]
    Open(#[from] untrusted::UntrustedError),
    /// The file at the path is not the image (another mount namespace, replaced since).
    #[error("the file at the path is not the image exec'd")]
    NotTheImage,
}

/// The regular file at `path` opened for reading, when it is the image `image`: resolved from
/// the daemon's root (links followed inside it, magic links such as `/proc/self/fd/N`
/// refused), never opened for I/O unless a regular file, and checked by `fstat` of the open
/// file. Blocking (the file's filesystem may be slow): never on the event loop.
///
/// # Errors
/// [`ImageError`] says why it is not judged.
pub fn open_image(
    path: Option<&Path>,
    image: ImageKey,
) -> Result<(untrusted::Opened, Option<PathBuf>), ImageError> {
    let path = path
        .filter(|p| p.is_absolute())
        .ok_or(ImageError::Relative)?;
    let opened = untrusted::open(path, Resolve::InRoot(Path::new("/")))?;
    if key_of(&Identity::of(opened.metadata())) != image {
        return Err(ImageError::NotTheImage);
    }
    // Where the path led (its links followed), for the names that decide too.
    let resolved = std::fs::read_link(format!("/proc/self/fd/{}", opened.file().as_raw_fd())).ok();
    Ok((opened, resolved))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use claude_ebpf_common::{EventHeader, HEADER_LEN};

    use super::*;
    use crate::scratch::Scratch;

    fn key_of_path(path: &Path) -> ImageKey {
        let m = std::fs::metadata(path).unwrap();
        ImageKey {
            ino: m.ino(),
            size: m.size(),
            dev: crate::capture::btf::kernel_dev(m.dev()),
            pad: 0,
        }
    }

    fn record_bytes(flags: u32, image: ImageKey, path: &[u8]) -> Vec<u8> {
        let header = EventHeader {
            kind: kind::EXEC,
            flags,
            uid: 1000,
            pid: 7,
            captured: u32::try_from(EXEC_IMAGE_LEN + path.len()).unwrap(),
            ..EventHeader::default()
        };
        let mut bytes = vec![0u8; HEADER_LEN + EXEC_IMAGE_LEN];
        // SAFETY: plain structs written into buffers of their size.
        unsafe {
            std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), header);
            std::ptr::write_unaligned(bytes[HEADER_LEN..].as_mut_ptr().cast(), image);
        }
        bytes.extend_from_slice(path);
        bytes
    }

    #[test]
    fn an_exec_record_gives_its_image_and_whole_path() {
        let image = ImageKey {
            ino: 42,
            size: 4096,
            dev: 8 << 20 | 1,
            pad: 0,
        };
        let bytes = record_bytes(flags::IMAGE, image, b"/usr/bin/true");
        let record = crate::capture::records::decode(&bytes).unwrap();
        assert_eq!(
            Exec::of(&record),
            Some(Exec {
                image,
                path: Some(PathBuf::from("/usr/bin/true")),
                uid: 1000
            })
        );
        // A path the kernel cut is no path; a record without the image is no exec of one.
        let cut = record_bytes(flags::IMAGE | flags::PATH_CUT, image, b"/usr/bi");
        let record = crate::capture::records::decode(&cut).unwrap();
        assert_eq!(Exec::of(&record).unwrap().path, None);
        let bare = record_bytes(0, image, b"");
        assert_eq!(
            Exec::of(&crate::capture::records::decode(&bare).unwrap()),
            None
        );
        // Too short for its key.
        let short = Record {
            header: EventHeader {
                kind: kind::EXEC,
                flags: flags::IMAGE,
                ..EventHeader::default()
            },
            head: &[0; 8],
        };
        assert_eq!(Exec::of(&short), None);
    }

    /// Only the file that is the image is judged: a path whose file has another key (replaced,
    /// or in another mount namespace), a relative path, a FIFO (never waited on) and a magic
    /// link are not.
    #[test]
    fn a_path_is_judged_only_when_its_file_is_the_image() {
        let dir = Scratch::new("image-identity");
        let tool = dir.0.join("tool");
        std::fs::write(&tool, b"\x7fELF not really").unwrap();
        let image = key_of_path(&tool);
        let (opened, resolved) = open_image(Some(&tool), image).expect("the image itself");
        assert_eq!(opened.metadata().ino(), image.ino);
        assert_eq!(resolved.as_deref(), Some(tool.as_path()));
        // Through a link: resolved to the file, which is the image.
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&tool, &link).unwrap();
        let (_, resolved) = open_image(Some(&link), image).expect("through a link");
        assert_eq!(resolved.as_deref(), Some(tool.as_path()));

        // Another file at the path (replaced since the exec): not the image.
        let other = dir.0.join("other");
        std::fs::write(&other, b"\x7fELF not really").unwrap();
        std::fs::rename(&other, &tool).unwrap();
        assert!(matches!(
            open_image(Some(&tool), image),
            Err(ImageError::NotTheImage)
        ));
        // The same inode grown: its key changed with its size.
        let grown = key_of_path(&tool);
        std::fs::write(&tool, b"\x7fELF not really, longer").unwrap();
        assert!(matches!(
            open_image(Some(&tool), grown),
            Err(ImageError::NotTheImage)
        ));
        // Relative, or cut by the kernel: never resolved.
        assert!(matches!(
            open_image(Some(Path::new("tool")), image),
            Err(ImageError::Relative)
        ));
        assert!(matches!(open_image(None, image), Err(ImageError::Relative)));
        // A FIFO with no writer: refused at once, never opened for reading.
        let fifo = dir.0.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(matches!(
            open_image(Some(&fifo), key_of_path(&fifo)),
            Err(ImageError::Open(
                untrusted::UntrustedError::NotRegular { .. }
            ))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // A magic link (the daemon's own descriptors) is refused, even to the image itself.
        let f = std::fs::File::open(&tool).unwrap();
        let fd = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        assert!(matches!(
            open_image(Some(&fd), key_of_path(&tool)),
            Err(ImageError::Open(_))
        ));
    }
}
