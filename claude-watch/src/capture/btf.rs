//! The field offsets the exec filter follows (`bprm->file->f_inode->{i_ino, i_size, i_sb->s_dev}`,
//! and `bprm->interp`, the path an exec record carries), read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), so one eBPF object serves every kernel without CO-RE
//! relocations. Pure over the bytes; [`kernel_offsets`] reads the file.
//!
//! BTF layout (`Documentation/bpf/btf.rst`): a header, then a type section of records (a
//! 12-byte `btf_type`, then kind-specific data; struct and union members are 12 bytes each:
//! name, type, bit offset), then a string section.

use claude_ebpf_common::KernelOffsets;

/// Where the running kernel describes its types.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why the offsets could not be read. The exec filter then stays off: every exec is sent, as
/// before.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read {VMLINUX} (a kernel without CONFIG_DEBUG_INFO_BTF)")]
    Read(#[source] std::io::Error),
    /// Not BTF, or cut short.
    #[error("{VMLINUX}: not BTF the way this kernel should write it ({0})")]
    Malformed(&'static str),
    /// A structure or field the filter needs is not there.
    #[error("{VMLINUX}: no field {0} (a kernel this build does not know)")]
    Missing(&'static str),
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One struct or union: its name and members (name offset, type id, bit offset).
struct Composite {
    name: u32,
    members: Vec<(u32, u32, u32)>,
}

/// The types of a BTF blob that the offsets need: composites by type id, and the strings.
struct Types<'a> {
    /// Type id → composite (`None` for other kinds); id 0 is void.
    composites: Vec<Option<Composite>>,
    /// Type id → the id it refers to (typedefs, qualifiers), for following a member's type.
    refers: Vec<u32>,
    strings: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("cut short"))
}

impl<'a> Types<'a> {
    fn parse(blob: &'a [u8]) -> Result<Self, BtfError> {
        let magic = blob
            .get(0..2)
            .map(|m| u16::from_le_bytes([m[0], m[1]]))
            .ok_or(BtfError::Malformed("no header"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(blob, 4)? as usize;
        let (type_off, type_len) = (u32_at(blob, 8)? as usize, u32_at(blob, 12)? as usize);
        let (str_off, str_len) = (u32_at(blob, 16)? as usize, u32_at(blob, 20)? as usize);
        let types = blob
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = blob
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let mut composites = vec![None];
        let mut refers = vec![0];
        let mut at = 0;
        while at < types.len() {
            let name = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let size_or_type = u32_at(types, at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                KIND_STRUCT | KIND_UNION | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(BtfError::Malformed("unknown kind")),
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let base = at + 12 * m;
                    let offset = u32_at(types, base + 8)?;
                    // With the kind flag, the top 8 bits are a bitfield's size.
                    let bits = if kind_flag {
                        offset & 0x00ff_ffff
                    } else {
                        offset
                    };
                    members.push((u32_at(types, base)?, u32_at(types, base + 4)?, bits));
                }
                composites.push(Some(Composite { name, members }));
                refers.push(0);
            } else {
                composites.push(None);
                // Typedef, volatile, const, restrict, type tag: follow to what they name.
                refers.push(if matches!(kind, 8..=11 | 18) {
                    size_or_type
                } else {
                    0
                });
            }
            at += extra;
        }
        Ok(Self {
            composites,
            refers,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    /// The composite a type id is, through typedefs and qualifiers.
    fn composite(&self, mut id: u32) -> Option<&Composite> {
        for _ in 0..16 {
            match self.composites.get(id as usize)? {
                Some(c) => return Some(c),
                None => id = *self.refers.get(id as usize)?,
            }
            if id == 0 {
                return None;
            }
        }
        None
    }

    /// The byte offset of `field` in the struct named `name` (looking into anonymous members).
    fn offset(
        &self,
        name: &'static str,
        field: &'static str,
        what: &'static str,
    ) -> Result<u32, BtfError> {
        let c = self
            .composites
            .iter()
            .flatten()
            .find(|c| self.name(c.name) == name.as_bytes() && !c.members.is_empty())
            .ok_or(BtfError::Missing(what))?;
        self.find(c, field.as_bytes(), 0)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
            .ok_or(BtfError::Missing(what))
    }

    fn find(&self, c: &Composite, field: &[u8], depth: u32) -> Option<u32> {
        for &(name, ty, bits) in &c.members {
            if self.name(name) == field {
                return Some(bits);
            }
            if name == 0
                && depth < 8
                && let Some(inner) = self.composite(ty)
                && let Some(b) = self.find(inner, field, depth + 1)
            {
                return Some(bits + b);
            }
        }
        None
    }
}

/// The offsets in a BTF blob.
///
/// # Errors
/// When the blob is not BTF or lacks a field.
pub fn offsets(blob: &[u8]) -> Result<KernelOffsets, BtfError> {
    let t = Types::parse(blob)?;
    Ok(KernelOffsets {
        bprm_file: t.offset("linux_binprm", "file", "linux_binprm.file")?,
        bprm_interp: t.offset("linux_binprm", "interp", "linux_binprm.interp")?,
        file_inode: t.offset("file", "f_inode", "file.f_inode")?,
        inode_ino: t.offset("inode", "i_ino", "inode.i_ino")?,
        inode_size: t.offset("inode", "i_size", "inode.i_size")?,
        inode_sb: t.offset("inode", "i_sb", "inode.i_sb")?,
        sb_dev: t.offset("super_block", "s_dev", "super_block.s_dev")?,
    })
}

/// The running kernel's offsets.
///
/// # Errors
/// When its BTF cannot be read or lacks a field.
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    offsets(&std::fs::read(VMLINUX).map_err(BtfError::Read)?)
}

/// A `st_dev` as the kernel encodes a superblock's `s_dev` (`major << 20 | minor`).
#[must_use]
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF gives every offset, and they are where a 64-bit kernel puts
    /// them: inside their structures, pointer-aligned, distinct.
    #[test]
    fn the_running_kernels_offsets() {
        let Ok(blob) = std::fs::read(VMLINUX) else {
            eprintln!("no {VMLINUX} here: nothing to read");
            return;
        };
        let o = offsets(&blob).expect("offsets");
        for (what, off) in [
            ("bprm.file", o.bprm_file),
            ("bprm.interp", o.bprm_interp),
            ("file.f_inode", o.file_inode),
            ("inode.i_ino", o.inode_ino),
            ("inode.i_size", o.inode_size),
            ("inode.i_sb", o.inode_sb),
        ] {
            assert_eq!(off % 8, 0, "{what} at {off}");
            assert!(off < 4096, "{what} at {off}");
        }
        assert!(
            o.file_inode > 0 && o.inode_ino > 0 && o.inode_sb > 0,
            "{o:?}"
        );
        let inode = [o.inode_ino, o.inode_size, o.inode_sb];
        assert!(inode[0] != inode[1] && inode[1] != inode[2] && inode[0] != inode[2]);
    }

    #[test]
    fn what_is_not_btf_is_refused() {
        assert!(matches!(offsets(b""), Err(BtfError::Malformed(_))));
        assert!(matches!(
            offsets(&[0u8; 64]),
            Err(BtfError::Malformed("bad magic"))
        ));
        // A header whose sections point past the end.
        let mut h = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        h.extend_from_slice(&[0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(offsets(&h), Err(BtfError::Malformed(_))));
        // An empty but well-formed blob lacks the structures.
        let mut e = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        e.extend_from_slice(&[0; 16]);
        assert!(matches!(
            offsets(&e),
            Err(BtfError::Missing("linux_binprm.file"))
        ));
    }

    #[test]
    fn devices_in_the_kernels_encoding() {
        // 8:1 (sda1) and 259:3 (nvme0n1p3), and an overlay's anonymous 0:45.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), 8 << 20 | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 3)), 259 << 20 | 3);
        assert_eq!(kernel_dev(libc::makedev(0, 45)), 45);
    }
}
