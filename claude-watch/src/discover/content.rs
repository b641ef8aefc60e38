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
//! Every read is bounded (about 16 KiB in all: ELF and section headers, the graph's tail, one
//! module record, the entry's first bytes) and checked against the file's length, so a hostile
//! file can make the check fail, never hang, allocate much or read out of bounds. The verdict
//! is cached by the caller per (device, inode, size, mtime).

use std::io::{self, Read, Seek, SeekFrom};

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
const OFFSETS_LEN: usize = 32;
/// Most section headers an executable may have for us to read them.
const MAX_SECTIONS: u64 = 512;
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
    /// Reading the file failed.
    #[error("reading the file")]
    Io(#[from] io::Error),
    /// A header or pointer of the file is out of range or malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Whether the first bytes of a script are Claude Code's (`cli.js` of any release).
pub fn script(head: &[u8]) -> Option<ClaudeFile> {
    banner(head)
}

/// Whether an ELF file is a Bun single-file executable whose entry module is Claude Code.
/// `Ok(None)`: a readable file that is not Claude Code (not ELF, not Bun, another Bun program).
pub fn native<F: Read + Seek>(file: &mut F, len: u64) -> Result<Option<ClaudeFile>, ContentError> {
    let Some((offset, size)) = bun_section(file, len)? else {
        return Ok(None);
    };
    entry_head(file, offset, size).map(|head| head.as_deref().and_then(banner))
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

fn read_at<F: Read + Seek>(
    file: &mut F,
    len: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ContentError> {
    let end = offset
        .checked_add(buf.len() as u64)
        .ok_or(ContentError::Malformed("offset"))?;
    if end > len {
        return Err(ContentError::Malformed("offset past the end of the file"));
    }
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)?;
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// File offset and size of the `.bun` section of a little-endian ELF64, if it has one.
fn bun_section<F: Read + Seek>(file: &mut F, len: u64) -> Result<Option<(u64, u64)>, ContentError> {
    let mut ehdr = [0u8; 64];
    if len < 64 {
        return Ok(None);
    }
    read_at(file, len, 0, &mut ehdr)?;
    // ELF, 64-bit, little-endian (x86-64 and AArch64 Claude Code builds).
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(None);
    }
    let shoff = u64_at(&ehdr, 0x28);
    let shentsize = u64::from(u16_at(&ehdr, 0x3a));
    let shnum = u64::from(u16_at(&ehdr, 0x3c));
    let shstrndx = u64::from(u16_at(&ehdr, 0x3e));
    if shentsize != 64 || shnum == 0 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Ok(None);
    }
    let mut table = vec![0u8; usize::try_from(shnum * 64).expect("bounded")];
    read_at(file, len, shoff, &mut table)?;
    let section = |i: u64| -> (u32, u64, u64) {
        let s = &table[usize::try_from(i * 64).expect("bounded")..];
        (u32_at(s, 0), u64_at(s, 0x18), u64_at(s, 0x20))
    };
    let (_, str_off, str_size) = section(shstrndx);
    if str_size > 64 * 1024 {
        return Err(ContentError::Malformed("section name table"));
    }
    let mut names = vec![0u8; usize::try_from(str_size).expect("bounded")];
    read_at(file, len, str_off, &mut names)?;
    for i in 0..shnum {
        let (name, offset, size) = section(i);
        let name = usize::try_from(name).unwrap_or(usize::MAX);
        if names.get(name..).is_some_and(|n| n.starts_with(b".bun\0")) {
            if offset.checked_add(size).is_none_or(|end| end > len) {
                return Err(ContentError::Malformed(".bun section"));
            }
            return Ok(Some((offset, size)));
        }
    }
    Ok(None)
}

/// The first bytes of the module graph's entry module, `None` when the section holds no graph.
fn entry_head<F: Read + Seek>(
    file: &mut F,
    section: u64,
    size: u64,
) -> Result<Option<Vec<u8>>, ContentError> {
    let end_of_section = section + size;
    if size < 8 + (OFFSETS_LEN + BUN_TRAILER.len()) as u64 {
        return Ok(None); // plain `bun`: an empty section
    }
    let mut total = [0u8; 8];
    read_at(file, end_of_section, section, &mut total)?;
    let graph = section + 8;
    let graph_len = u64::from_le_bytes(total);
    let graph_end = graph
        .checked_add(graph_len)
        .filter(|&e| e <= end_of_section)
        .ok_or(ContentError::Malformed("module graph length"))?;
    let mut tail = [0u8; OFFSETS_LEN + 16];
    let tail_at = graph_end
        .checked_sub(tail.len() as u64)
        .filter(|&t| t >= graph)
        .ok_or(ContentError::Malformed("module graph"))?;
    read_at(file, graph_end, tail_at, &mut tail)?;
    if &tail[OFFSETS_LEN..] != BUN_TRAILER {
        return Ok(None);
    }
    let modules_off = u64::from(u32_at(&tail, 8));
    let modules_len = u64::from(u32_at(&tail, 12));
    let entry = u64::from(u32_at(&tail, 16));
    // Pointers in the graph are relative to its start.
    let within = |off: u64, len: u64| {
        off.checked_add(len)
            .is_some_and(|end| graph + end <= graph_end)
    };
    if !within(modules_off, modules_len) {
        return Err(ContentError::Malformed("module table"));
    }
    for record_size in RECORD_SIZES {
        if modules_len % record_size != 0 || entry >= modules_len / record_size {
            continue;
        }
        let mut record = [0u8; 16];
        read_at(
            file,
            graph_end,
            graph + modules_off + entry * record_size,
            &mut record,
        )?;
        let (name_off, name_len) = (u64::from(u32_at(&record, 0)), u32_at(&record, 4));
        let (src_off, src_len) = (
            u64::from(u32_at(&record, 8)),
            u64::from(u32_at(&record, 12)),
        );
        if name_len == 0
            || name_len > MAX_NAME
            || !within(name_off, u64::from(name_len))
            || !within(src_off, src_len)
        {
            continue;
        }
        let mut name = vec![0u8; name_len as usize];
        read_at(file, graph_end, graph + name_off, &mut name)?;
        if !(name.starts_with(b"/$bunfs/") || memchr::memmem::find(&name, b"~BUN").is_some()) {
            continue;
        }
        let mut head = vec![0u8; usize::try_from(src_len.min(HEAD_BYTES as u64)).expect("bounded")];
        read_at(file, graph_end, graph + src_off, &mut head)?;
        return Ok(Some(head));
    }
    Err(ContentError::Malformed("module table record"))
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
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 2;
        file[5] = 1;
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
        let mut offsets = [0u8; OFFSETS_LEN];
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
        no_sections[..6].copy_from_slice(b"\x7fELF\x02\x01");
        assert_eq!(check(&no_sections), None);
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
        let shoff = u64_at(&bad, 0x28) as usize;
        bad[shoff + 2 * 64 + 0x20..shoff + 2 * 64 + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(native(&mut Cursor::new(&bad), bad.len() as u64).is_err());
    }
}
