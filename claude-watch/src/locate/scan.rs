//! Linear byte scans over mapped code and data: NUL-terminated strings, direct call targets,
//! and instructions that reference an address. Pure and fast: nothing here decodes more than a
//! few bytes at a time; the results are candidates that `boringssl` verifies by decoding.

use memchr::memmem;

use super::budget::{MAX_REFERENCES, MAX_STRINGS};

/// Virtual addresses of the NUL-terminated strings in `data` (mapped at `base`) that end with
/// `suffix`, e.g. every `.../ssl/ssl_lib.cc`. Stops after [`MAX_STRINGS`] + 1 (the caller
/// refuses a file with more).
#[must_use]
pub fn strings_ending_with(data: &[u8], base: u64, suffix: &[u8]) -> Vec<u64> {
    strings_ending_in(data, base, suffix, 0, data.len())
}

/// [`strings_ending_with`] whose suffix starts in `data[from..to]` (the rest of `data` is
/// context: the 4 KiB a string's start is looked for before it, the suffix after).
#[must_use]
pub fn strings_ending_in(
    data: &[u8],
    base: u64,
    suffix: &[u8],
    from: usize,
    to: usize,
) -> Vec<u64> {
    let mut needle = suffix.to_vec();
    needle.push(0);
    let mut found = Vec::new();
    let window = &data[from..data.len().min(to + needle.len() - 1)];
    for end in memmem::find_iter(window, &needle).map(|p| p + from) {
        // Walk back to the start of the string (after the previous NUL), at most 4 KiB.
        let floor = end.saturating_sub(4096);
        let start = data[floor..end]
            .iter()
            .rposition(|&b| b == 0)
            .map_or(floor, |p| floor + p + 1);
        let addr = base + start as u64;
        // Matches come in increasing order, so a repeated start is the last one found.
        if found.last() != Some(&addr) {
            found.push(addr);
        }
        if found.len() > MAX_STRINGS {
            break;
        }
    }
    found
}

/// The direct call targets (`E8 rel32`) found by scanning a code region byte by byte, kept
/// only within windows of it (around the error sites: the only places the caller asks about,
/// so that a scan of a 125 MB text writes a few kilobytes of bits, not 16 MB at random).
///
/// Every `E8` byte counts, including ones inside other instructions, so the set over-approximates;
/// callers pair it with a prologue check and a decode from the found start.
#[derive(Debug, Clone)]
pub struct CallTargets {
    /// Disjoint windows, sorted.
    windows: Vec<Window>,
}

/// Addresses `lo..hi`, one bit each.
#[derive(Debug, Clone)]
struct Window {
    lo: u64,
    hi: u64,
    bits: Vec<u64>,
}

impl CallTargets {
    /// Scans `code`, mapped at `base`, for `E8 rel32` whose target lies inside `code`.
    #[must_use]
    pub fn scan(code: &[u8], base: u64) -> Self {
        Self::scan_near(code, base, &[base], code.len() as u64)
    }

    /// Scans `code`, mapped at `base`, for `E8 rel32` whose target lies inside `code` within
    /// `radius` of one of `near`; [`Self::contains`] and [`Self::at_or_below`] know nothing
    /// outside those windows.
    #[must_use]
    pub fn scan_near(code: &[u8], base: u64, near: &[u64], radius: u64) -> Self {
        let mut targets = Self::near(base, code.len() as u64, near, radius);
        targets.add(code, base, 0, code.len(), (base, base + code.len() as u64));
        targets
    }

    /// No call target yet, kept (by [`Self::add`]) within `radius` of one of `near` in the
    /// region of `len` bytes at `base`.
    #[must_use]
    pub fn near(base: u64, len: u64, near: &[u64], radius: u64) -> Self {
        let end = base + len;
        let mut spans: Vec<(u64, u64)> = near
            .iter()
            .map(|&v| {
                (
                    v.saturating_sub(radius).max(base),
                    v.saturating_add(radius).min(end),
                )
            })
            .filter(|(lo, hi)| lo < hi)
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (lo, hi) in spans {
            match merged.last_mut() {
                Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let windows = merged
            .into_iter()
            .map(|(lo, hi)| Window {
                lo,
                hi,
                bits: vec![0u64; (hi - lo).div_ceil(64) as usize],
            })
            .collect();
        Self { windows }
    }

    /// Adds the call targets of the `E8 rel32` whose opcode is in `code[from..to]` (`code`
    /// mapped at `base`; the bytes after `to` are context) and whose target lies in `region`
    /// (the whole region scanned, `(start, end)`) and in a window.
    pub fn add(&mut self, code: &[u8], base: u64, from: usize, to: usize, region: (u64, u64)) {
        for target in call_targets_in(code, base, from, to, region) {
            self.insert(region.0 + u64::from(target));
        }
    }

    /// Adds call target `vaddr`, if it is in a window.
    pub fn insert(&mut self, vaddr: u64) {
        let i = self.windows.partition_point(|w| w.hi <= vaddr);
        if let Some(w) = self.windows.get_mut(i).filter(|w| w.lo <= vaddr) {
            let bit = vaddr - w.lo;
            w.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// The window holding `vaddr`, and the bit of `vaddr` in it.
    fn window(&self, vaddr: u64) -> Option<(usize, u64)> {
        let i = self
            .windows
            .partition_point(|w| w.lo <= vaddr)
            .checked_sub(1)?;
        let w = &self.windows[i];
        (vaddr < w.hi).then_some((i, vaddr - w.lo))
    }

    /// Whether some `E8` in the region targets `vaddr`.
    #[must_use]
    pub fn contains(&self, vaddr: u64) -> bool {
        self.window(vaddr).is_some_and(|(i, bit)| {
            self.windows[i].bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    /// Call targets at or below `vaddr` and no further than `max_distance` below it, highest
    /// first (within the window holding `vaddr`).
    pub fn at_or_below(&self, vaddr: u64, max_distance: u64) -> impl Iterator<Item = u64> + '_ {
        let found = self.window(vaddr);
        let (lo_addr, bits): (u64, &[u64]) = found.map_or((0, &[]), |(i, _)| {
            (self.windows[i].lo, &self.windows[i].bits)
        });
        let hi = found.map_or(0, |(_, bit)| bit);
        let lo = vaddr.saturating_sub(max_distance).saturating_sub(lo_addr);
        let valid = found.is_some();
        let mut word = hi / 64;
        let mut mask = if hi % 64 == 63 {
            u64::MAX
        } else {
            (1u64 << (hi % 64 + 1)) - 1
        };
        std::iter::from_fn(move || {
            if !valid {
                return None;
            }
            loop {
                let w = bits[word as usize] & mask;
                if w != 0 {
                    let bit = 63 - u64::from(w.leading_zeros());
                    mask = (1u64 << bit) - 1;
                    let rel = word * 64 + bit;
                    return (rel >= lo).then_some(lo_addr + rel);
                }
                if word == 0 || word * 64 < lo {
                    return None;
                }
                word -= 1;
                mask = u64::MAX;
            }
        })
    }
}

/// The targets of the `E8 rel32` whose opcode is in `code[from..to]` (`code` mapped at `base`;
/// the bytes after `to` are context) that lie in `region` (`(start, end)`, under 4 GiB long),
/// as offsets from its start: kept compactly in a scan's order (a few million of them in a
/// 125 MB text), to be sorted into [`CallTargets`] once the sites are known.
pub fn call_targets_in(
    code: &[u8],
    base: u64,
    from: usize,
    to: usize,
    region: (u64, u64),
) -> impl Iterator<Item = u32> + '_ {
    memchr::memchr_iter(0xE8, &code[from..to]).filter_map(move |p| {
        let pos = p + from;
        let rel = code.get(pos + 1..pos + 5)?;
        let rel = i64::from(i32::from_le_bytes([rel[0], rel[1], rel[2], rel[3]]));
        let target = (base + pos as u64 + 5).wrapping_add_signed(rel);
        (region.0..region.1)
            .contains(&target)
            .then(|| u32::try_from(target - region.0).ok())
            .flatten()
    })
}

/// An instruction that puts one of the wanted addresses in a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    /// Address of the referencing instruction.
    pub vaddr: u64,
    /// The address it loads.
    pub target: u64,
}

/// Instructions in `code` (mapped at `base`) that load one of `targets` into a register:
/// `mov r32, imm32` (`B8+r`, `41 B8+r`), `mov r64, simm32` (`48/49 C7 C0+r`) for non-PIE code,
/// and `lea r64, [rip+disp32]` (`48/4C 8D modrm`) for PIE code. Sorted by address. Stops after
/// [`MAX_REFERENCES`] + 1 (the caller refuses a file with more).
#[must_use]
pub fn references(code: &[u8], base: u64, targets: &[u64]) -> Vec<Reference> {
    sorted_references(references_in(code, base, targets, 0, code.len()))
}

/// References found piece by piece ([`references_in`]) as [`references`] gives them: sorted
/// by address, each once (pieces overlap), at most [`MAX_REFERENCES`] + 1.
#[must_use]
pub fn sorted_references(mut out: Vec<Reference>) -> Vec<Reference> {
    out.sort_by_key(|r| r.vaddr);
    out.dedup();
    out.truncate(MAX_REFERENCES + 1);
    out
}

/// [`references`] whose opcode or immediate starts in `code[from..to]` (the rest of `code`
/// is context), unsorted.
#[must_use]
pub fn references_in(
    code: &[u8],
    base: u64,
    targets: &[u64],
    from: usize,
    to: usize,
) -> Vec<Reference> {
    let mut out = Vec::new();
    for &target in targets {
        if let Ok(imm) = u32::try_from(target) {
            let window = &code[from..code.len().min(to + 3)];
            for pos in memmem::find_iter(window, &imm.to_le_bytes()).map(|p| p + from) {
                let before = |n: usize| pos.checked_sub(n).map(|p| code[p]);
                let start = match (before(3), before(2), before(1)) {
                    (Some(0x48 | 0x49), Some(0xC7), Some(0xC0..=0xC7)) => pos - 3,
                    (_, Some(0x41), Some(0xB8..=0xBF)) => pos - 2,
                    (_, _, Some(0xB8..=0xBF)) => pos - 1,
                    _ => continue,
                };
                out.push(Reference {
                    vaddr: base + start as u64,
                    target,
                });
                if out.len() > MAX_REFERENCES {
                    return out;
                }
            }
        }
    }
    for pos in memchr::memchr_iter(0x8D, &code[from..to]).map(|p| p + from) {
        if pos == 0 || !matches!(code[pos - 1], 0x48 | 0x4C) {
            continue;
        }
        let Some(tail) = code.get(pos + 1..pos + 6) else {
            break;
        };
        if tail[0] & 0xC7 != 0x05 {
            continue;
        }
        let disp = i64::from(i32::from_le_bytes([tail[1], tail[2], tail[3], tail[4]]));
        let next = base as i64 + pos as i64 + 6;
        let target = (next + disp) as u64;
        if targets.contains(&target) {
            out.push(Reference {
                vaddr: base + pos as u64 - 1,
                target,
            });
            if out.len() > MAX_REFERENCES {
                return out;
            }
        }
    }
    out
}

/// Whether `code` starts with a frame-pointer prologue: `push rbp; mov rbp, rsp`, optionally
/// after `endbr64`.
#[must_use]
pub fn has_prologue(code: &[u8]) -> bool {
    const PUSH_MOV: [u8; 4] = [0x55, 0x48, 0x89, 0xE5];
    const ENDBR64: [u8; 4] = [0xF3, 0x0F, 0x1E, 0xFA];
    code.starts_with(&PUSH_MOV) || (code.starts_with(&ENDBR64) && code[4..].starts_with(&PUSH_MOV))
}

/// One verified `OPENSSL_PUT_ERROR` site: what `boringssl` (x86-64) and `aarch64` make of a
/// [`Reference`] once its instructions are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorSite {
    /// Address of the instruction loading the file name.
    pub at: u64,
    /// Start of the function holding it.
    pub function: u64,
    /// The reason code argument, when it is an immediate.
    pub reason: Option<u32>,
    /// The line argument, when it is an immediate.
    pub line: Option<u32>,
    /// The library argument, when it is an immediate in the same block.
    pub lib: Option<u64>,
    /// The called function (`ERR_put_error` or a specialised clone of it).
    pub callee: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_strings_with_the_suffix() {
        let data = b"\0abc\0../../vendor/boringssl/ssl/ssl_lib.cc\0x/ssl/ssl_lib.cc.bak\0/ssl/ssl_lib.cc\0";
        let found = strings_ending_with(data, 0x1000, b"/ssl/ssl_lib.cc");
        assert_eq!(found, vec![0x1005, 0x1000 + 64]);
    }

    #[test]
    fn call_targets_are_found_and_bounded() {
        // 0x00: call +3 (-> 0x08); 0x05: nop*3; 0x08: ret; 0x09: call -0x100 (outside).
        let code = [
            0xE8, 3, 0, 0, 0, 0x90, 0x90, 0x90, 0xC3, 0xE8, 0x00, 0xFF, 0xFF, 0xFF,
        ];
        let t = CallTargets::scan(&code, 0x4000);
        assert!(t.contains(0x4008));
        assert!(!t.contains(0x4007));
        assert!(!t.contains(0x4009));
        assert_eq!(t.at_or_below(0x400D, 100).collect::<Vec<_>>(), vec![0x4008]);
        assert_eq!(t.at_or_below(0x4007, 100).count(), 0);
        assert_eq!(t.at_or_below(0x400D, 2).count(), 0);
    }

    #[test]
    fn call_targets_walk_down_across_words() {
        let mut code = vec![0x90u8; 300];
        // call at 0 -> 0x10, call at 0x100 -> 0xC8 (200)
        code[0..5].copy_from_slice(&[0xE8, 0x0B, 0, 0, 0]);
        code[0x100..0x105].copy_from_slice(&[0xE8, 0xC3, 0xFF, 0xFF, 0xFF]);
        let t = CallTargets::scan(&code, 0);
        assert_eq!(
            t.at_or_below(299, 1000).collect::<Vec<_>>(),
            vec![200, 0x10]
        );
        assert_eq!(t.at_or_below(199, 1000).collect::<Vec<_>>(), vec![0x10]);
    }

    #[test]
    fn call_targets_are_kept_only_near_the_sites_and_found_across_pieces() {
        let mut code = vec![0x90u8; 0x4000];
        let mut call = |at: usize, target: usize| {
            let rel = (target as i64 - (at as i64 + 5)) as i32;
            code[at] = 0xE8;
            code[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
        };
        call(0x10, 0x1000); // near the site at 0x1100
        call(0x1FFE, 0x1080); // straddles the pieces' boundary (0x2000), near the site
        call(0x3000, 0x3800); // far from every site
        // Two pieces, as a streamed scan adds them: the call at the boundary counts once.
        let base = 0x10_0000;
        let region = (base, base + code.len() as u64);
        let mut t = CallTargets::near(base, code.len() as u64, &[0x10_1100, 0x10_1180], 0x200);
        t.add(&code, base, 0, 0x2000, region);
        t.add(&code, base, 0x2000, code.len(), region);
        let whole = CallTargets::scan_near(&code, base, &[0x10_1100, 0x10_1180], 0x200);
        assert_eq!(
            whole.at_or_below(0x10_1100, 0x200).collect::<Vec<_>>(),
            t.at_or_below(0x10_1100, 0x200).collect::<Vec<_>>()
        );
        assert!(t.contains(0x10_1000));
        assert!(t.contains(0x10_1080));
        assert!(!t.contains(0x10_3800), "outside the windows");
        assert_eq!(
            t.at_or_below(0x10_1100, 0x200).collect::<Vec<_>>(),
            vec![0x10_1080, 0x10_1000]
        );
        assert_eq!(t.at_or_below(0x10_3900, 0x200).count(), 0);
        // The whole region, as before.
        assert!(CallTargets::scan(&code, 0x10_0000).contains(0x10_3800));
    }

    #[test]
    fn a_reference_straddling_a_pieces_boundary_is_found_once() {
        let target = 0x0123_4567u64;
        let mut code = vec![0x90u8; 64];
        // mov edx, imm32 with its opcode at 31 and its immediate across the boundary (32).
        code[31..36].copy_from_slice(&[0xBA, 0x67, 0x45, 0x23, 0x01]);
        let mut pieces = references_in(&code, 0, &[target], 0, 32);
        pieces.extend(references_in(&code, 0, &[target], 32, 64));
        assert_eq!(sorted_references(pieces), references(&code, 0, &[target]));
        let refs = references(&code, 0, &[target]);
        assert_eq!(refs.iter().map(|r| r.vaddr).collect::<Vec<_>>(), vec![31]);
    }

    #[test]
    fn references_by_immediate_and_rip_relative_lea() {
        let target = 0x0123_4567u64;
        let mut code = vec![0x90u8; 64];
        // 0x00: mov edx, imm32
        code[0..5].copy_from_slice(&[0xBA, 0x67, 0x45, 0x23, 0x01]);
        // 0x08: mov r8d, imm32
        code[8..14].copy_from_slice(&[0x41, 0xB8, 0x67, 0x45, 0x23, 0x01]);
        // 0x10: lea rcx, [rip+disp] with next ip = base + 0x17
        let base = 0x0100_0000u64;
        let disp = (target as i64 - (base as i64 + 0x17)) as i32;
        code[0x10..0x13].copy_from_slice(&[0x48, 0x8D, 0x0D]);
        code[0x13..0x17].copy_from_slice(&disp.to_le_bytes());
        // 0x20: the bytes of the address without a mov opcode: not a reference.
        code[0x20..0x25].copy_from_slice(&[0x31, 0x67, 0x45, 0x23, 0x01]);
        let refs = references(&code, base, &[target]);
        let at: Vec<u64> = refs.iter().map(|r| r.vaddr - base).collect();
        assert_eq!(at, vec![0x00, 0x08, 0x10]);
        assert!(refs.iter().all(|r| r.target == target));
    }

    #[test]
    fn prologue_with_and_without_endbr64() {
        assert!(has_prologue(&[0x55, 0x48, 0x89, 0xE5, 0x41]));
        assert!(has_prologue(&[
            0xF3, 0x0F, 0x1E, 0xFA, 0x55, 0x48, 0x89, 0xE5
        ]));
        assert!(!has_prologue(&[0x55, 0x48, 0x8B, 0xEC]));
        assert!(!has_prologue(&[0x55]));
    }
}
