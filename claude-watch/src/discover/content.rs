//! Recognising Claude Code by what a file is, not by what it is called.
//!
//! Users run Claude Code under many names: npm's `bin/claude.exe` (a hard link or a copy of the
//! platform package's `claude`), the native installer's `versions/<version>`, an Agent SDK's
//! bundled `claude`, a renamed copy in a container. What every release has in common is its
//! entry module, which begins with Anthropic's banner:
//!
//! ```text
//! // (c) Anthropic PBC. All rights reserved. Use is subject to the Legal Agreements outlined here: https://code.claude.com/...
//!
//! // Version: 2.1.331
//! ```
//!
//! (checked on the node-era `cli.js` 2.0.77 and the native 2.1.197, 2.1.331 and 2.1.332, glibc
//! and musl, and the Agent SDKs' bundled builds).
//! - **Script** (`cli.js` run by node or bun): the banner is in the file's first bytes.
//! - **Native**: a Bun single-file executable keeps its bundle in the ELF section `.bun`: a
//!   little-endian `u64` length, then Bun's module graph, which ends with an `Offsets` record and
//!   the trailer `\n---- Bun! ----\n`. `Offsets` names the module table and the entry point; the
//!   entry module's source begins with the banner (a Bun program that is not Claude Code has
//!   another entry, and plain `bun` has an empty `.bun` section).
//!
//! The ELF side is read with `object` (the locator's reader), the module graph by hand (Bun's own
//! format). Every read is bounded (about 16 KiB for a real executable: ELF and section headers,
//! the section names, the graph's tail, one module record, the entry's first bytes; a hostile
//! file at most 512 section headers, 64 KiB of section names and ten module names) and checked
//! against the file's length and the section's, so a hostile file can make the check fail, never
//! hang, allocate much or read out of bounds. The verdict is cached by the caller per (device,
//! inode, size, mtime).

use std::io::{Read, Seek};

use object::LittleEndian as LE;
use object::elf::FileHeader64;
use object::endian::{U32, U64};
use object::read::elf::{FileHeader as _, SectionHeader as _, SectionTable};
use object::read::{ReadCache, ReadRef, StringTable};

/// How much of a script, or of the entry module's source, is read for the banner.
pub const HEAD_BYTES: usize = 8 * 1024;
/// The banner every Claude Code release's entry module carries.
const BANNER: &[u8] = b"(c) Anthropic PBC";
/// One of these must accompany the banner (Anthropic ships more than Claude Code).
const PRODUCT: [&[u8]; 3] = [b"code.claude.com", b"claude-code", b"Claude Code"];
/// The end of a Bun module graph.
const BUN_TRAILER: &[u8; 16] = b"\n---- Bun! ----\n";
/// `Offsets` before the trailer: byte_count u64, modules (u32 offset, u32 length),
/// entry_point_id u32, compile_exec_argv (u32, u32), flags u32.
const OFFSETS_LEN: u64 = 32;
/// `Offsets` and the trailer: the graph's last bytes.
const TAIL_LEN: u64 = OFFSETS_LEN + BUN_TRAILER.len() as u64;
/// Most section headers an executable may have for us to read them.
const MAX_SECTIONS: usize = 512;
/// Most bytes of section names read.
const MAX_SECTION_NAMES: u64 = 64 * 1024;
/// Sizes a module-table record has had across Bun releases (52 in Bun 1.2 to 1.4); the one
/// whose entry record names a `/$bunfs/` module wins.
const RECORD_SIZES: [u64; 10] = [52, 48, 56, 44, 60, 64, 40, 68, 72, 36];
/// Longest module name read.
const MAX_NAME: u32 = 4096;

/// A file recognised as Claude Code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaudeFile {
    /// The release, from the banner's `Version:` line.
    pub version: Option<String>,
}

/// Why a file could not be read as a Bun executable (never an error for the caller: a file
/// that cannot be read is simply not recognised).
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The ELF headers are malformed (as `object` reads them).
    #[error("malformed ELF headers")]
    Elf {
        /// What `object` found wrong.
        #[from]
        source: object::read::Error,
    },
    /// A header or pointer of the file is malformed, or what it points at is out of range or
    /// unreadable.
    #[error("malformed {what}")]
    Malformed {
        /// The header or pointer.
        what: &'static str,
    },
}

/// Whether the first bytes of a script are Claude Code's (`cli.js` of any release).
pub fn script(head: &[u8]) -> Option<ClaudeFile> {
    banner(head)
}

/// Whether an ELF file of `len` bytes is a Bun single-file executable whose entry module is
/// Claude Code. `Ok(None)`: a readable file that is not Claude Code (not a little-endian ELF64,
/// not Bun, another Bun program).
pub fn native<F: Read + Seek>(file: &mut F, len: u64) -> Result<Option<ClaudeFile>, ContentError> {
    // Only the ranges asked for are read, each once, none past `len`.
    let cache = ReadCache::new(file);
    let data = cache.range(0, len);
    let Some((offset, size)) = bun_section(data)? else {
        return Ok(None);
    };
    Ok(entry_head(data, offset, size)?.and_then(banner))
}

/// The banner check over the first bytes of an entry module or script.
fn banner(head: &[u8]) -> Option<ClaudeFile> {
    let head = &head[..head.len().min(HEAD_BYTES)];
    memchr::memmem::find(head, BANNER)?;
    if !PRODUCT
        .iter()
        .any(|p| memchr::memmem::find(head, p).is_some())
    {
        return None;
    }
    let version = memchr::memmem::find(head, b"// Version: ").and_then(|at| {
        let rest = &head[at + 12..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+')))
            .unwrap_or(rest.len());
        let v = std::str::from_utf8(&rest[..end]).ok()?;
        (!v.is_empty() && v.len() <= 32 && v.as_bytes()[0].is_ascii_digit()).then(|| v.to_owned())
    });
    Some(ClaudeFile { version })
}

/// File offset and size of the `.bun` section of a little-endian ELF64, if it has one.
fn bun_section<'a, R: ReadRef<'a>>(data: R) -> Result<Option<(u64, u64)>, ContentError> {
    let bad = |what| ContentError::Malformed { what };
    // ELF, 64-bit, little-endian (x86-64 and AArch64 Claude Code builds), or not ours.
    let Some((header, endian)) = FileHeader64::<LE>::parse(data)
        .ok()
        .and_then(|h| Some((h, h.endian().ok()?)))
    else {
        return Ok(None);
    };
    let count = header.shnum(endian, data)?;
    if count == 0 || count > MAX_SECTIONS {
        return Ok(None);
    }
    let sections = header.section_headers(endian, data)?;
    let Some(names) = sections.get(header.shstrndx(endian, data)? as usize) else {
        return Ok(None);
    };
    if names.sh_size(endian) > MAX_SECTION_NAMES {
        return Err(bad("section name table"));
    }
    // Read whole, once: the names are looked up in memory.
    let names = names.data(endian, data)?;
    let names = StringTable::new(names, 0, names.len() as u64);
    let table = SectionTable::<FileHeader64<LE>, _>::new(sections, names);
    let Some((offset, size)) = table
        .section_by_name(endian, b".bun")
        .and_then(|(_, bun)| bun.file_range(endian))
    else {
        return Ok(None);
    };
    let len = data.len().map_err(|()| bad("file length"))?;
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(bad(".bun section"));
    }
    Ok(Some((offset, size)))
}

/// The first bytes of the module graph's entry module, `None` when the `.bun` section at
/// `section` (`size` bytes, within the file) holds no graph.
fn entry_head<'a, R: ReadRef<'a>>(
    data: R,
    section: u64,
    size: u64,
) -> Result<Option<&'a [u8]>, ContentError> {
    let bad = |what| ContentError::Malformed { what };
    if size < 8 + TAIL_LEN {
        return Ok(None); // plain `bun`: an empty section
    }
    // A length, then the graph; pointers in the graph are relative to its start.
    let graph = section + 8;
    let graph_len = data.read_at::<U64<LE>>(section);
    let graph_len = graph_len.map_err(|()| bad("module graph length"))?.get(LE);
    if graph_len > size - 8 {
        return Err(bad("module graph length"));
    }
    // Where `len` bytes at `offset` of the graph are in the file, `None` outside the graph.
    let within = |offset: u64, len: u64| {
        let end = offset.checked_add(len)?;
        (end <= graph_len).then_some(graph + offset)
    };
    // The graph ends with `Offsets` and the trailer.
    let tail = graph_len.checked_sub(TAIL_LEN).ok_or(bad("module graph"))?;
    let tail = data
        .read_slice_at::<U32<LE>>(graph + tail, TAIL_LEN as usize / 4)
        .map_err(|()| bad("module graph"))?;
    if object::pod::bytes_of_slice(&tail[8..]) != BUN_TRAILER {
        return Ok(None);
    }
    let [modules_off, modules_len, entry] = [2, 3, 4].map(|i| u64::from(tail[i].get(LE)));
    let modules = within(modules_off, modules_len).ok_or(bad("module table"))?;
    for record_size in RECORD_SIZES {
        if modules_len % record_size != 0 || entry >= modules_len / record_size {
            continue;
        }
        // The entry's record begins with its name and its source, (offset, length) each.
        let record = data
            .read_slice_at::<U32<LE>>(modules + entry * record_size, 4)
            .map_err(|()| bad("module table record"))?;
        let [name_off, name_len, src_off, src_len] = [0, 1, 2, 3].map(|i| record[i].get(LE));
        let (Some(name_at), Some(src_at)) = (
            within(name_off.into(), name_len.into()),
            within(src_off.into(), src_len.into()),
        ) else {
            continue;
        };
        if name_len == 0 || name_len > MAX_NAME {
            continue;
        }
        let name = data
            .read_bytes_at(name_at, name_len.into())
            .map_err(|()| bad("module name"))?;
        if !(name.starts_with(b"/$bunfs/") || memchr::memmem::find(name, b"~BUN").is_some()) {
            continue;
        }
        let head = data
            .read_bytes_at(src_at, u64::from(src_len).min(HEAD_BYTES as u64))
            .map_err(|()| bad("entry module"))?;
        return Ok(Some(head));
    }
    Err(bad("module table record"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const CLI_HEAD: &[u8] = b"#!/usr/bin/env node\n// (c) Anthropic PBC. All rights reserved. Use is subject to the Legal Agreements outlined here: https://code.claude.com/docs/en/legal-and-compliance.\n\n// Version: 2.0.77\n\nimport{createRequire as a}from\"node:module\";";

    #[test]
    fn scripts_by_their_banner() {
        assert_eq!(
            script(CLI_HEAD),
            Some(ClaudeFile {
                version: Some("2.0.77".into())
            })
        );
        // An older banner form, and one without a version line.
        assert!(
            script(b"// (c) Anthropic PBC. All rights reserved. https://docs.anthropic.com/en/docs/claude-code/legal\n")
                .is_some_and(|f| f.version.is_none())
        );
        for other in [
            &b"#!/usr/bin/env node\nconsole.log('hello')\n"[..],
            b"// (c) Anthropic PBC.\n// Version: 1.0.0\n", // another Anthropic product
            b"",
            b"// Version: 2.1.0 claude-code",
        ] {
            assert_eq!(script(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    /// A minimal ELF64 with one `.bun` section holding `graph` (length-prefixed).
    fn elf_with_bun(graph: &[u8]) -> Vec<u8> {
        let mut file = vec![0u8; 64];
        file[..7].copy_from_slice(b"\x7fELF\x02\x01\x01"); // ELF64, little-endian, version 1
        let section_at = file.len() as u64;
        file.extend_from_slice(&(graph.len() as u64).to_le_bytes());
        file.extend_from_slice(graph);
        let names_at = file.len() as u64;
        let names = b"\0.shstrtab\0.bun\0";
        file.extend_from_slice(names);
        let shoff = file.len() as u64;
        let mut sh = |name: u32, off: u64, size: u64| {
            let mut s = [0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            s[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            file.extend_from_slice(&s);
        };
        sh(0, 0, 0);
        sh(1, names_at, names.len() as u64);
        sh(11, section_at, graph.len() as u64 + 8);
        file[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        file[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        file[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        file[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        file
    }

    /// A Bun module graph with modules `(name, source)` and entry `entry`.
    fn graph(modules: &[(&str, &[u8])], entry: u32) -> Vec<u8> {
        let mut g = Vec::new();
        let mut records = Vec::new();
        for (name, source) in modules {
            let name_at = g.len() as u32;
            g.extend_from_slice(name.as_bytes());
            let src_at = g.len() as u32;
            g.extend_from_slice(source);
            let mut r = [0u8; 52];
            r[..4].copy_from_slice(&name_at.to_le_bytes());
            r[4..8].copy_from_slice(&(name.len() as u32).to_le_bytes());
            r[8..12].copy_from_slice(&src_at.to_le_bytes());
            r[12..16].copy_from_slice(&(source.len() as u32).to_le_bytes());
            records.extend_from_slice(&r);
        }
        let table_at = g.len() as u32;
        g.extend_from_slice(&records);
        let mut offsets = [0u8; OFFSETS_LEN as usize];
        offsets[..8].copy_from_slice(&(g.len() as u64).to_le_bytes());
        offsets[8..12].copy_from_slice(&table_at.to_le_bytes());
        offsets[12..16].copy_from_slice(&(records.len() as u32).to_le_bytes());
        offsets[16..20].copy_from_slice(&entry.to_le_bytes());
        g.extend_from_slice(&offsets);
        g.extend_from_slice(BUN_TRAILER);
        g
    }

    fn check(file: &[u8]) -> Option<ClaudeFile> {
        native(&mut Cursor::new(file), file.len() as u64).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_bun_executable_whose_entry_is_claude_code() {
        let g = graph(
            &[
                ("/$bunfs/root/chunk-1.js", b"export const a = 1;"),
                ("/$bunfs/root/cli", CLI_HEAD),
            ],
            1,
        );
        assert_eq!(
            check(&elf_with_bun(&g)),
            Some(ClaudeFile {
                version: Some("2.0.77".into())
            })
        );
    }

    #[test]
    fn other_bun_programs_and_plain_bun_are_not() {
        // Another Bun program (its entry has no banner), even with a Claude chunk inside.
        let g = graph(
            &[
                ("/$bunfs/root/app", b"console.log('hi')"),
                ("/$bunfs/root/vendored", CLI_HEAD),
            ],
            0,
        );
        assert_eq!(check(&elf_with_bun(&g)), None);
        // Plain bun: an empty `.bun` section.
        assert_eq!(check(&elf_with_bun(&[0u8; 0])), None);
        // Not ELF at all, and an ELF without sections.
        assert_eq!(check(b"#!/bin/sh\necho hi\n"), None);
        let mut no_sections = vec![0u8; 64];
        no_sections[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        assert_eq!(check(&no_sections), None);
        // A big-endian or 32-bit ELF is not one of Claude Code's builds.
        let g = graph(&[("/$bunfs/root/cli", CLI_HEAD)], 0);
        for (at, value) in [(5, 2u8), (4, 1u8)] {
            let mut other = elf_with_bun(&g);
            other[at] = value;
            assert_eq!(check(&other), None, "byte {at} = {value}");
        }
    }

    /// A reader that counts the bytes read through it.
    struct Counting<'a> {
        inner: Cursor<&'a [u8]>,
        read: u64,
    }

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl Seek for Counting<'_> {
        fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    /// The verdict on `file` and how many bytes it took to reach.
    fn counted(file: &[u8]) -> (Result<Option<ClaudeFile>, ContentError>, u64) {
        let mut reader = Counting {
            inner: Cursor::new(file),
            read: 0,
        };
        let verdict = native(&mut reader, file.len() as u64);
        (verdict, reader.read)
    }

    #[test]
    fn reads_are_bounded() {
        // A 4 MiB module before the entry, a 64 KiB entry: the headers, the graph's tail, one
        // record, one name and 8 KiB of the entry are read.
        let big = vec![b' '; 4 << 20];
        let mut entry = CLI_HEAD.to_vec();
        entry.resize(64 << 10, b' ');
        let g = graph(
            &[("/$bunfs/root/chunk", &big), ("/$bunfs/root/cli", &entry)],
            1,
        );
        let (verdict, read) = counted(&elf_with_bun(&g));
        assert!(verdict.unwrap().is_some());
        assert!(read <= 16 << 10, "{read} bytes read");
    }

    #[test]
    fn hostile_section_tables_are_refused_unread() {
        let good = elf_with_bun(&graph(&[("/$bunfs/root/cli", CLI_HEAD)], 0));
        let shoff = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
        // More sections than are read, counted in the header or (extended numbering) in
        // section 0's size: refused before the table is read.
        let mut many = good.clone();
        many[0x3c..0x3e].copy_from_slice(&513u16.to_le_bytes());
        let (verdict, read) = counted(&many);
        assert!(matches!(verdict, Ok(None)), "{verdict:?}");
        assert!(read <= 64, "{read} bytes read");
        let mut extended = good.clone();
        extended[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes());
        extended[shoff + 0x20..shoff + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        let (verdict, read) = counted(&extended);
        assert!(matches!(verdict, Ok(None)), "{verdict:?}");
        assert!(read <= 128, "{read} bytes read");
        // Section headers of another size, a name table over 64 KiB, a name table past the
        // end of the file: errors.
        let mut entsize = good.clone();
        entsize[0x3a..0x3c].copy_from_slice(&40u16.to_le_bytes());
        assert!(native(&mut Cursor::new(&entsize), entsize.len() as u64).is_err());
        let names = shoff + 64 + 0x20;
        let mut huge = good.clone();
        huge[names..names + 8].copy_from_slice(&(65u64 << 10).to_le_bytes());
        let (verdict, read) = counted(&huge);
        assert!(verdict.is_err());
        assert!(read <= 4096, "{read} bytes read");
        let mut past = good.clone();
        past[names..names + 8].copy_from_slice(&(64u64 << 10).to_le_bytes());
        assert!(native(&mut Cursor::new(&past), past.len() as u64).is_err());
        // A `.bun` name without its terminating NUL at the end of the name table.
        let mut unterminated = good.clone();
        let at = memchr::memmem::find(&unterminated, b".bun\0").unwrap();
        unterminated[at + 4] = b'x';
        assert_eq!(check(&unterminated), None);
    }

    #[test]
    fn hostile_files_fail_without_panicking() {
        let g = graph(&[("/$bunfs/root/cli", CLI_HEAD)], 0);
        let good = elf_with_bun(&g);
        // Truncated anywhere, every byte flipped in the headers and the graph's tail: the check
        // returns (an error or a verdict), never panics, never reads out of bounds.
        for cut in (0..good.len()).step_by(7) {
            let _ = native(&mut Cursor::new(&good[..cut]), cut as u64);
        }
        for at in (0..good.len()).step_by(3) {
            for value in [0u8, 0xff, 0x7f] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = native(&mut Cursor::new(&bad), bad.len() as u64);
            }
        }
        // A section pointing past the end of the file is refused.
        let mut bad = good.clone();
        let shoff = u64::from_le_bytes(bad[0x28..0x30].try_into().unwrap()) as usize;
        bad[shoff + 2 * 64 + 0x20..shoff + 2 * 64 + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(native(&mut Cursor::new(&bad), bad.len() as u64).is_err());
    }
}
