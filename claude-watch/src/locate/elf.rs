//! Reading the parts of an ELF file the locator needs: architecture, load segments, the GNU
//! build id, the dynamic and static symbol tables and the shared libraries it needs. Pure: works
//! on bytes. Little-endian 64-bit x86-64 and AArch64 files are read; others are refused.

use object::elf::{self, FileHeader64};
use object::read::elf::{Dyn as _, FileHeader, ProgramHeader, SectionHeader as _, Sym as _};
use object::{Endianness, LittleEndian};
use serde::{Deserialize, Serialize};

/// The instruction set of a file the locator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// x86-64 (`EM_X86_64`).
    X86_64,
    /// 64-bit Arm, little-endian (`EM_AARCH64`).
    Aarch64,
}

impl Arch {
    /// The architecture this program runs on, when the locator reads it (uprobes placed by a
    /// daemon only fire in processes of its own architecture).
    pub const HOST: Option<Self> = if cfg!(target_arch = "x86_64") {
        Some(Self::X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(Self::Aarch64)
    } else {
        None
    };
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86-64",
            Self::Aarch64 => "arm64",
        })
    }
}

/// Why a file cannot be read as an x86-64 or arm64 ELF. Shown after the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfProblem {
    /// The file does not start with the ELF magic.
    #[error(
        "not an ELF file (no \\x7fELF magic); give the path of an executable or shared library"
    )]
    NotElf,
    /// A header or segment extends past the end of the file.
    #[error(
        "truncated ELF: {what} ends at byte {needed} but the file has {size} bytes (incomplete download or copy?)"
    )]
    Truncated {
        /// Which structure is cut off.
        what: String,
        /// File size the structure needs.
        needed: u64,
        /// Actual file size.
        size: u64,
    },
    /// The headers are inconsistent.
    #[error("corrupt ELF: {reason}")]
    Corrupt {
        /// What is inconsistent.
        reason: String,
    },
    /// A well-formed ELF for another architecture.
    #[error("{arch} binary; only x86-64 and arm64 (aarch64, little-endian) are supported")]
    UnsupportedArch {
        /// Architecture name, e.g. `arm64 (aarch64)`.
        arch: String,
    },
}

/// One `PT_LOAD` segment: where its bytes are in the file and where they are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of the first byte (`p_vaddr`).
    pub vaddr: u64,
    /// File offset of the first byte (`p_offset`).
    pub offset: u64,
    /// Bytes present in the file (`p_filesz`).
    pub file_size: u64,
    /// Whether the segment is mapped executable (`PF_X`).
    pub executable: bool,
    /// Whether the segment is mapped writable (`PF_W`): data, never code or the read-only
    /// strings the locator looks for.
    pub writable: bool,
}

impl Segment {
    /// Whether the locator leaves this segment unread (see [`ElfImage::unread_ranges`]).
    #[must_use]
    pub fn unread(&self) -> bool {
        self.writable && !self.executable && self.file_size >= SKIPPED_SEGMENT_BYTES
    }
}

/// A defined function symbol of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSymbol {
    /// Symbol name as in the table.
    pub name: String,
    /// `st_value`: the function's virtual address.
    pub vaddr: u64,
    /// Which table it came from (`.dynsym` or `.symtab`).
    pub table: &'static str,
}

/// A symbol table the locator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `.dynsym` (the first `SHT_DYNSYM` section).
    Dynamic,
    /// `.symtab` (the first `SHT_SYMTAB` section).
    Static,
}

impl Table {
    /// The section type.
    #[must_use]
    pub fn sh_type(self) -> u32 {
        match self {
            Self::Dynamic => elf::SHT_DYNSYM,
            Self::Static => elf::SHT_SYMTAB,
        }
    }

    /// The usual section name, for evidence.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Dynamic => ".dynsym",
            Self::Static => ".symtab",
        }
    }
}

/// The file ranges `(offset, len)` [`ElfImage::parse`] and the symbol lookups over `tables`
/// read: the ELF and program headers, the `PT_NOTE` segments, the section header table, the
/// first `SHT_DYNAMIC` section and, for each table, its first section, the string table it
/// links to and the `SHT_SYMTAB_SHNDX` sections linked to it, each with its linked section.
///
/// Computed from the bytes of `data` read so far (unread bytes are zeros), so it names more as
/// more is read: apply it until it names nothing new, and every byte those functions look at is
/// read. Offsets and lengths are the file's, unchecked (hostile): the reader cuts them at the
/// end of the file. Pure; never allocates beyond a range per section of interest.
#[must_use]
pub fn symbol_ranges(data: &[u8], tables: &[Table]) -> Vec<(u64, u64)> {
    let e = LittleEndian;
    let mut out = vec![(0, 64)];
    let Ok(header) = FileHeader64::<LittleEndian>::parse(data) else {
        return out;
    };
    out.push((
        header.e_phoff(e),
        u64::from(header.e_phnum(e)) * u64::from(header.e_phentsize(e)),
    ));
    if let Ok(phdrs) = header.program_headers(e, data) {
        out.extend(
            phdrs
                .iter()
                .filter(|ph| ph.p_type(e) == elf::PT_NOTE)
                .map(|ph| (ph.p_offset(e), ph.p_filesz(e))),
        );
    }
    let shoff = header.e_shoff(e);
    if shoff == 0 {
        return out;
    }
    // Section 0 holds the counts of a file with more sections than the header can say.
    out.push((shoff, 64));
    let Ok(count) = header.shnum(e, data) else {
        return out;
    };
    out.push((shoff, (count as u64).saturating_mul(64)));
    let Ok(sections) = header.section_headers(e, data) else {
        return out;
    };
    let range = |s: &elf::SectionHeader64<LittleEndian>| {
        (s.sh_type(e) != elf::SHT_NOBITS).then(|| (s.sh_offset(e), s.sh_size(e)))
    };
    let linked = |s: &elf::SectionHeader64<LittleEndian>| {
        sections
            .get(s.sh_link(e) as usize)
            .filter(|_| s.sh_link(e) != 0)
            .and_then(range)
    };
    let first = |sh_type: u32| {
        sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.sh_type(e) == sh_type)
    };
    if let Some((_, dynamic)) = first(elf::SHT_DYNAMIC) {
        out.extend(range(dynamic));
        out.extend(linked(dynamic));
    }
    for table in tables {
        let Some((index, section)) = first(table.sh_type()) else {
            continue;
        };
        out.extend(range(section));
        out.extend(linked(section));
        for shndx in sections
            .iter()
            .filter(|s| s.sh_type(e) == elf::SHT_SYMTAB_SHNDX && s.sh_link(e) as usize == index)
        {
            out.extend(range(shndx));
        }
    }
    out
}

/// Writable segments at least this large are not read (see [`ElfImage::unread_ranges`]).
pub const SKIPPED_SEGMENT_BYTES: u64 = 1 << 20;

/// What the locator knows about one ELF file after reading its headers.
#[derive(Debug, Clone)]
pub struct ElfImage<'data> {
    /// The whole file.
    pub data: &'data [u8],
    /// Its instruction set.
    pub arch: Arch,
    /// `PT_LOAD` segments, in program-header order.
    pub segments: Vec<Segment>,
    /// GNU build id as lowercase hex, when the file has an `NT_GNU_BUILD_ID` note.
    pub build_id: Option<String>,
    /// Whether the file is position independent (`ET_DYN`).
    pub pie: bool,
    /// Shared libraries named by `DT_NEEDED`.
    pub needed: Vec<String>,
}

/// Name of an `e_machine` value, for error messages.
fn machine_name(machine: u16) -> String {
    match machine {
        elf::EM_AARCH64 => "arm64 (aarch64)".to_owned(),
        elf::EM_ARM => "32-bit ARM".to_owned(),
        elf::EM_386 => "32-bit x86 (i386)".to_owned(),
        elf::EM_RISCV => "RISC-V".to_owned(),
        elf::EM_PPC64 => "ppc64".to_owned(),
        elf::EM_S390 => "s390x".to_owned(),
        elf::EM_LOONGARCH => "LoongArch".to_owned(),
        other => format!("e_machine {other}"),
    }
}

/// Reads `e_machine` from the identification-independent position (offset 18) for an error.
fn raw_machine(data: &[u8]) -> Option<u16> {
    let bytes = data.get(18..20)?;
    let raw = [bytes[0], bytes[1]];
    Some(if data.get(5) == Some(&2) {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    })
}

impl<'data> ElfImage<'data> {
    /// Parses the headers of `data`, refusing anything that is not a complete, little-endian,
    /// 64-bit x86-64 or AArch64 ELF.
    pub fn parse(data: &'data [u8]) -> Result<Self, ElfProblem> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(ElfProblem::NotElf);
        }
        if data.len() < 20 {
            return Err(ElfProblem::Truncated {
                what: "ELF header".into(),
                needed: 64,
                size: data.len() as u64,
            });
        }
        let class = data[4];
        let machine = raw_machine(data).unwrap_or(0);
        let arch = match (class, machine) {
            (elf::ELFCLASS64, elf::EM_X86_64) => Some(Arch::X86_64),
            (elf::ELFCLASS64, elf::EM_AARCH64) => Some(Arch::Aarch64),
            _ => None,
        };
        let Some(arch) = arch else {
            if class == elf::ELFCLASS32 && machine == elf::EM_X86_64 {
                return Err(ElfProblem::UnsupportedArch {
                    arch: "x32 (32-bit ELF for x86-64)".into(),
                });
            }
            if class != elf::ELFCLASS32 && class != elf::ELFCLASS64 {
                return Err(ElfProblem::Corrupt {
                    reason: format!("unknown ELF class {class}"),
                });
            }
            if class == elf::ELFCLASS32 && machine == elf::EM_AARCH64 {
                return Err(ElfProblem::UnsupportedArch {
                    arch: "ILP32 (32-bit ELF for arm64)".into(),
                });
            }
            return Err(ElfProblem::UnsupportedArch {
                arch: machine_name(machine),
            });
        };
        if data[5] != elf::ELFDATA2LSB {
            return Err(match arch {
                Arch::X86_64 => ElfProblem::Corrupt {
                    reason: "x86-64 ELF that is not little-endian".into(),
                },
                Arch::Aarch64 => ElfProblem::UnsupportedArch {
                    arch: "big-endian arm64 (aarch64_be)".into(),
                },
            });
        }
        if data.len() < 64 {
            return Err(ElfProblem::Truncated {
                what: "ELF header".into(),
                needed: 64,
                size: data.len() as u64,
            });
        }
        let corrupt = |what: &str, e: object::read::Error| ElfProblem::Corrupt {
            reason: format!("{what}: {e}"),
        };
        let header =
            FileHeader64::<Endianness>::parse(data).map_err(|e| corrupt("ELF header", e))?;
        let endian = header.endian().map_err(|e| corrupt("ELF header", e))?;
        let phoff = header.e_phoff(endian);
        let ph_end = phoff.saturating_add(
            u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian)),
        );
        if ph_end > data.len() as u64 {
            return Err(ElfProblem::Truncated {
                what: "program header table".into(),
                needed: ph_end,
                size: data.len() as u64,
            });
        }
        let phdrs = header
            .program_headers(endian, data)
            .map_err(|e| corrupt("program headers", e))?;
        let mut segments = Vec::new();
        let mut build_id = None;
        for ph in phdrs {
            let p_type = ph.p_type(endian);
            if p_type == elf::PT_LOAD {
                let seg = Segment {
                    vaddr: ph.p_vaddr(endian),
                    offset: ph.p_offset(endian),
                    file_size: ph.p_filesz(endian),
                    executable: ph.p_flags(endian) & elf::PF_X != 0,
                    writable: ph.p_flags(endian) & elf::PF_W != 0,
                };
                let end = seg.offset.saturating_add(seg.file_size);
                if end > data.len() as u64 {
                    return Err(ElfProblem::Truncated {
                        what: format!("load segment at vaddr {:#x}", seg.vaddr),
                        needed: end,
                        size: data.len() as u64,
                    });
                }
                segments.push(seg);
            } else if p_type == elf::PT_NOTE && build_id.is_none() {
                build_id = gnu_build_id(ph, endian, data);
            }
        }
        if segments.is_empty() {
            return Err(ElfProblem::Corrupt {
                reason: "no PT_LOAD segment".into(),
            });
        }
        let needed = needed_libraries(header, endian, data);
        Ok(Self {
            data,
            arch,
            segments,
            build_id,
            pie: header.e_type(endian) == elf::ET_DYN,
            needed,
        })
    }

    /// File ranges `(offset, len)` the locator never looks at: writable, non-executable
    /// segments of at least [`SKIPPED_SEGMENT_BYTES`] (in a Bun executable, the embedded
    /// JavaScript: some 240 MB of Claude Code's 400). Smaller ones (the dynamic table) are read.
    #[must_use]
    pub fn unread_ranges(&self) -> Vec<(u64, u64)> {
        self.segments
            .iter()
            .filter(|s| s.unread())
            .map(|s| (s.offset, s.file_size))
            .collect()
    }

    /// The segment whose file-backed part holds `vaddr`.
    #[must_use]
    pub fn segment_of(&self, vaddr: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.file_size)
    }

    /// File offset of `vaddr` (`vaddr - p_vaddr + p_offset` of the containing `PT_LOAD`).
    #[must_use]
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segment_of(vaddr).map(|s| vaddr - s.vaddr + s.offset)
    }

    /// The file bytes of a segment.
    #[must_use]
    pub fn segment_bytes(&self, seg: &Segment) -> &'data [u8] {
        // Bounds were checked in `parse`.
        &self.data[seg.offset as usize..(seg.offset + seg.file_size) as usize]
    }

    /// Bytes from `vaddr` to the end of its segment's file-backed part.
    #[must_use]
    pub fn bytes_at(&self, vaddr: u64) -> Option<&'data [u8]> {
        let seg = self.segment_of(vaddr)?;
        Some(&self.segment_bytes(seg)[(vaddr - seg.vaddr) as usize..])
    }

    /// Defined function symbols named in `names`, from `.dynsym` and `.symtab`, plus whether
    /// any of the names is present only as an undefined (imported) symbol.
    #[must_use]
    pub fn function_symbols(&self, names: &[&str]) -> (Vec<FunctionSymbol>, bool) {
        self.function_symbols_in(names, &[Table::Dynamic, Table::Static])
    }

    /// [`Self::function_symbols`] from `tables` only, in that order (a name defined in an
    /// earlier table is taken from it).
    #[must_use]
    pub fn function_symbols_in(
        &self,
        names: &[&str],
        tables: &[Table],
    ) -> (Vec<FunctionSymbol>, bool) {
        let mut found: Vec<FunctionSymbol> = Vec::new();
        let mut imported = false;
        let Ok(header) = FileHeader64::<LittleEndian>::parse(self.data) else {
            return (found, false);
        };
        let endian = LittleEndian;
        let Ok(sections) = header.sections(endian, self.data) else {
            return (found, false);
        };
        for table in tables {
            let Ok(symbols) = sections.symbols(endian, self.data, table.sh_type()) else {
                continue;
            };
            for sym in symbols.iter() {
                let Ok(name) = sym.name(endian, symbols.strings()) else {
                    continue;
                };
                let Ok(name) = std::str::from_utf8(name) else {
                    continue;
                };
                if !names.contains(&name) {
                    continue;
                }
                if sym.st_shndx(endian) == elf::SHN_UNDEF {
                    imported = true;
                    continue;
                }
                if sym.st_type() != elf::STT_FUNC || sym.st_value(endian) == 0 {
                    continue;
                }
                if !found.iter().any(|f| f.name == name) {
                    found.push(FunctionSymbol {
                        name: name.to_owned(),
                        vaddr: sym.st_value(endian),
                        table: table.name(),
                    });
                }
            }
        }
        (found, imported)
    }

    /// Whether a defined symbol whose name starts with `prefix` exists in `.dynsym`.
    #[must_use]
    pub fn has_dynamic_symbol_prefix(&self, prefix: &str) -> bool {
        let Ok(header) = FileHeader64::<LittleEndian>::parse(self.data) else {
            return false;
        };
        let Ok(sections) = header.sections(LittleEndian, self.data) else {
            return false;
        };
        let Ok(symbols) = sections.symbols(LittleEndian, self.data, elf::SHT_DYNSYM) else {
            return false;
        };
        symbols.iter().any(|sym| {
            sym.st_shndx(LittleEndian) != elf::SHN_UNDEF
                && sym
                    .name(LittleEndian, symbols.strings())
                    .is_ok_and(|n| n.starts_with(prefix.as_bytes()))
        })
    }
}

/// The `NT_GNU_BUILD_ID` of a `PT_NOTE` segment, as lowercase hex.
fn gnu_build_id(
    ph: &elf::ProgramHeader64<Endianness>,
    endian: Endianness,
    data: &[u8],
) -> Option<String> {
    let mut notes = ph.notes(endian, data).ok()??;
    while let Ok(Some(note)) = notes.next() {
        if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
            return Some(note.desc().iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    None
}

/// `DT_NEEDED` entries of the dynamic section, if any.
fn needed_libraries(
    header: &FileHeader64<Endianness>,
    endian: Endianness,
    data: &[u8],
) -> Vec<String> {
    let Ok(sections) = header.sections(endian, data) else {
        return Vec::new();
    };
    let Some((index, section)) = sections
        .iter()
        .enumerate()
        .find(|(_, s)| s.sh_type(endian) == elf::SHT_DYNAMIC)
    else {
        return Vec::new();
    };
    let _ = index;
    let Ok(Some((dynamic, link))) = section.dynamic(endian, data) else {
        return Vec::new();
    };
    let Ok(strings) = sections.strings(endian, data, link) else {
        return Vec::new();
    };
    dynamic
        .iter()
        .filter(|d| d.d_tag(endian) == elf::DT_NEEDED)
        .filter_map(|d| d.string(endian, strings).ok())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}
