//! Reading AArch64 (arm64) code for the BoringSSL locator: the `ssl_lib.cc` error sites, direct
//! call targets, frame prologues and function boundaries, so that [`super::boringssl`] can apply
//! the same reasoning as on x86-64.
//!
//! On arm64 an error site loads the file name with a PC-relative pair, `adrp x3, page` then
//! `add x3, x3, #lo` (or a single `adr` when the string is within 1 MiB), and passes
//! `ERR_put_error(lib = w0, unused = w1, reason = w2, file = x3, line = w4)` before a `bl`
//! (builds whose `ERR_put_error` has no unused argument shift the last three down by one
//! register); PIE and non-PIE builds look the same. Direct calls are `bl imm26`. Instructions
//! are 4 bytes and aligned, so a linear decode from a function's entry is exact, and a function
//! boundary shows as zero padding before an aligned entry, or an unconditional end (`ret`, `b`,
//! `br`, `udf`, `brk`) followed by a call target or a prologue. Entries are checked for a frame prologue: optional landing pads (`bti c`, `bti jc`,
//! `paciasp`, `pacibsp`), then `stp x29, x30, [sp, #-N]!`, or `sub sp, sp, #N` followed by
//! `stp x29, x30, [sp, #M]` (Bun and Claude Code keep frame pointers).
//!
//! Decoder: [`yaxpeax_arm`] (`armv8::a64`). It is pure Rust with no C toolchain or build script
//! (unlike the `capstone` bindings, which compile capstone's C sources in a `-sys` crate and
//! would add minutes to a two-core build and a C dependency to the cross build), maintained as
//! part of the yaxpeax decoder family whose x86 sibling is widely used, and it gives typed
//! operands (`PCOffset`, `ImmShift`, `RegPreIndex`), so nothing here re-implements operand
//! decoding. Only the two whole-segment scans ([`BlTargets::scan`], [`references`]) test opcode
//! bits directly, for speed; each candidate they yield is decoded and verified before use.

use yaxpeax_arch::{Decoder as _, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand, SizeCode};

use super::budget::{Budget, MAX_REFERENCES, OverBudget};
use super::elf::ElfImage;
use super::scan::{ErrorSite, Reference};

/// How far below an error site its function may start.
const MAX_FUNCTION_SPAN: u64 = 64 * 1024;
/// How many instructions after the file-name load the `bl` may come.
const MAX_ARGUMENT_TAIL: usize = 16;
/// How far into `SSL_read` to look for its call to `ssl_read_impl`.
const MAX_READ_SPAN: u64 = 4096;
/// How many instructions apart an `adrp` and its `add` may be.
const MAX_ADRP_DISTANCE: usize = 8;
/// `ERR_put_error`'s library argument register (`w0`).
const LIB_REG: usize = 0;

/// Where `ERR_put_error`'s reason and line are, given the register holding the file name:
/// `ERR_put_error(lib, unused, reason, file, line)` puts the file in `x3` (reason `w2`, line
/// `w4`); BoringSSL without the unused argument puts it in `x2` (reason `w1`, line `w3`), as
/// in Claude Code 2.1.197. `None` for any other register.
fn argument_layout(file_reg: usize) -> Option<(usize, usize)> {
    match file_reg {
        3 => Some((2, 4)),
        2 => Some((1, 3)),
        _ => None,
    }
}

/// Decodes the instruction word at the start of `code`; `None` for an unallocated word or
/// fewer than 4 bytes.
#[must_use]
pub fn decode(code: &[u8]) -> Option<Instruction> {
    let word = code.get(..4)?;
    InstDecoder::default().decode(&mut U8Reader::new(word)).ok()
}

/// The set of direct call targets (`bl imm26`) of a code region, one bit per instruction slot.
///
/// Every aligned word with `bl`'s opcode bits counts; data words in code are rare on AArch64
/// (jump tables live in read-only data), and callers verify each start by its prologue and a
/// decode from it.
#[derive(Debug, Clone)]
pub struct BlTargets {
    base: u64,
    slots: u64,
    bits: Vec<u64>,
}

impl BlTargets {
    /// Scans `code`, mapped at `base` (4-byte aligned), for `bl` whose target lies inside it.
    #[must_use]
    pub fn scan(code: &[u8], base: u64) -> Self {
        let slots = (code.len() / 4) as u64;
        let mut bits = vec![0u64; (slots as usize).div_ceil(64)];
        for (index, word) in code.chunks_exact(4).enumerate() {
            let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            if w & 0xFC00_0000 != 0x9400_0000 {
                continue;
            }
            // imm26, sign-extended, in instructions.
            let rel = i64::from(((w << 6) as i32) >> 6);
            let target = index as i64 + rel;
            if (0..slots as i64).contains(&target) {
                let t = target as usize;
                bits[t / 64] |= 1 << (t % 64);
            }
        }
        Self { base, slots, bits }
    }

    /// Whether some `bl` in the region targets `vaddr`.
    #[must_use]
    pub fn contains(&self, vaddr: u64) -> bool {
        let Some(rel) = vaddr.checked_sub(self.base).filter(|r| r % 4 == 0) else {
            return false;
        };
        let slot = rel / 4;
        slot < self.slots && self.bits[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    /// Call targets at or below `vaddr` and no further than `max_distance` below it, highest
    /// first.
    pub fn at_or_below(&self, vaddr: u64, max_distance: u64) -> impl Iterator<Item = u64> + '_ {
        let floor = vaddr.saturating_sub(max_distance);
        let mut slot = vaddr
            .checked_sub(self.base)
            .map(|rel| rel / 4)
            .filter(|_| self.slots > 0)
            .map(|s| s.min(self.slots - 1));
        std::iter::from_fn(move || {
            loop {
                let s = slot?;
                let word_start = s / 64 * 64;
                let mask = if s % 64 == 63 {
                    u64::MAX
                } else {
                    (1u64 << (s % 64 + 1)) - 1
                };
                let word = self.bits[(s / 64) as usize] & mask;
                if word == 0 {
                    slot = word_start.checked_sub(1);
                    if self.base + word_start * 4 <= floor {
                        slot = None;
                    }
                    continue;
                }
                let found = word_start + 63 - u64::from(word.leading_zeros());
                let at = self.base + found * 4;
                if at < floor {
                    slot = None;
                    return None;
                }
                slot = found.checked_sub(1);
                return Some(at);
            }
        })
    }
}

/// Instructions in `code` (mapped at `base`) that complete loading one of `targets` into a
/// register: the `add` of an `adrp`/`add` pair on the same register (at most
/// `MAX_ADRP_DISTANCE` instructions apart), or an `adr`. Sorted by address. Candidates only:
/// [`read_site`] decodes the function up to them and checks the value. Stops after
/// [`MAX_REFERENCES`] + 1 (the caller refuses a file with more).
#[must_use]
pub fn references(code: &[u8], base: u64, targets: &[u64]) -> Vec<Reference> {
    let word_at = |index: usize| {
        let b = &code[index * 4..index * 4 + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    let count = code.len() / 4;
    let mut out = Vec::new();
    for index in 0..count {
        let w = word_at(index);
        let pc = base + index as u64 * 4;
        let is_adrp = w & 0x9F00_0000 == 0x9000_0000;
        let is_adr = w & 0x9F00_0000 == 0x1000_0000;
        if !is_adrp && !is_adr {
            continue;
        }
        // immhi:immlo, a signed 21-bit count (of bytes for adr, of pages for adrp).
        let imm21 = ((w >> 5) & 0x7_FFFF) << 2 | (w >> 29) & 3;
        let imm = i64::from(((imm21 << 11) as i32) >> 11);
        let rd = w & 31;
        if is_adr {
            let value = pc.wrapping_add_signed(imm);
            if targets.contains(&value) {
                out.push(Reference {
                    vaddr: pc,
                    target: value,
                });
            }
            if out.len() > MAX_REFERENCES {
                break;
            }
            continue;
        }
        let page = (pc & !0xFFF).wrapping_add_signed(imm << 12);
        for &target in targets.iter().filter(|&&t| t & !0xFFF == page) {
            let lo = (target & 0xFFF) as u32;
            // add xd, xn, #imm12 (64-bit, no shift) with xn = the adrp's register.
            let found = (index + 1..count.min(index + 1 + MAX_ADRP_DISTANCE)).find(|&j| {
                let a = word_at(j);
                a & 0xFFC0_0000 == 0x9100_0000 && (a >> 5) & 31 == rd && (a >> 10) & 0xFFF == lo
            });
            if let Some(j) = found {
                out.push(Reference {
                    vaddr: base + j as u64 * 4,
                    target,
                });
            }
        }
        if out.len() > MAX_REFERENCES {
            break;
        }
    }
    out.sort_by_key(|r| r.vaddr);
    out.dedup();
    out
}

/// The frame prologue at the start of `code` as text (landing pads, then the frame setup), or
/// `None` when `code` does not start with one.
#[must_use]
pub fn prologue(code: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    let mut at = 0;
    // Landing pads and return-address signing come first.
    while parts.len() < 2 {
        let i = decode(code.get(at..)?)?;
        let pad = match i.opcode {
            Opcode::PACIASP => "paciasp",
            Opcode::PACIBSP => "pacibsp",
            Opcode::HINT => match (i.operands[0], i.operands[1]) {
                (Operand::ControlReg(4), Operand::Immediate(2)) => "bti c",
                (Operand::ControlReg(4), Operand::Immediate(6)) => "bti jc",
                _ => break,
            },
            _ => break,
        };
        parts.push(pad.to_owned());
        at += 4;
    }
    let first = decode(code.get(at..)?)?;
    let frame = match (first.opcode, first.operands) {
        (
            Opcode::STP,
            [
                Operand::Register(_, 29),
                Operand::Register(_, 30),
                Operand::RegPreIndex(31, offset, true),
                _,
            ],
        ) if offset < 0 => format!("stp x29, x30, [sp, #{offset}]!"),
        (
            Opcode::SUB,
            [
                Operand::RegisterOrSP(_, 31),
                Operand::RegisterOrSP(_, 31),
                Operand::Immediate(size),
                _,
            ],
        ) => {
            let second = decode(code.get(at + 4..)?)?;
            match (second.opcode, second.operands) {
                (
                    Opcode::STP,
                    [
                        Operand::Register(_, 29),
                        Operand::Register(_, 30),
                        Operand::RegPreIndex(31, offset, false),
                        _,
                    ],
                ) if offset >= 0 && i64::from(offset) < i64::from(size) => {
                    format!("sub sp, sp, #{size}; stp x29, x30, [sp, #{offset}]")
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    parts.push(frame);
    Some(parts.join("; "))
}

/// Whether `i` ends straight-line code (any branch, return, trap or undefined word).
fn ends_block(i: &Instruction) -> bool {
    matches!(
        i.opcode,
        Opcode::B
            | Opcode::BL
            | Opcode::BR
            | Opcode::BLR
            | Opcode::RET
            | Opcode::Bcc(_)
            | Opcode::CBZ
            | Opcode::CBNZ
            | Opcode::TBZ
            | Opcode::TBNZ
            | Opcode::BRAA
            | Opcode::BRAAZ
            | Opcode::BRAB
            | Opcode::BRABZ
            | Opcode::BLRAA
            | Opcode::BLRAAZ
            | Opcode::BLRAB
            | Opcode::BLRABZ
            | Opcode::RETAA
            | Opcode::RETAB
            | Opcode::UDF
            | Opcode::BRK
            | Opcode::HLT
    )
}

/// Whether control never falls through `i` to the next instruction (so the next one, if it is
/// reached at all, is reached by a jump or is another function's entry). An undecodable word
/// counts as such an end.
fn never_falls_through(i: Option<&Instruction>) -> bool {
    i.is_none_or(|i| {
        matches!(
            i.opcode,
            Opcode::B
                | Opcode::BR
                | Opcode::RET
                | Opcode::BRAA
                | Opcode::BRAAZ
                | Opcode::BRAB
                | Opcode::BRABZ
                | Opcode::RETAA
                | Opcode::RETAB
                | Opcode::UDF
                | Opcode::BRK
                | Opcode::HLT
        )
    })
}

/// The target of a direct `b`/`bl` at `pc`.
fn branch_target(i: &Instruction, pc: u64) -> Option<u64> {
    match (i.opcode, i.operands[0]) {
        (Opcode::B | Opcode::BL, Operand::PCOffset(offset)) => Some(pc.wrapping_add_signed(offset)),
        _ => None,
    }
}

/// Known constants in the general-purpose registers along one straight-line path.
#[derive(Debug, Clone, Copy, Default)]
struct Registers([Option<u64>; 31]);

/// Index of a general-purpose register operand (not `sp`/`zr`).
fn gpr(op: Operand) -> Option<usize> {
    match op {
        Operand::Register(_, n) | Operand::RegisterOrSP(_, n) if n < 31 => Some(usize::from(n)),
        _ => None,
    }
}

impl Registers {
    /// Applies one non-branch instruction at `pc`.
    fn apply(&mut self, i: &Instruction, pc: u64) {
        let dest = gpr(i.operands[0]);
        let w = matches!(
            i.operands[0],
            Operand::Register(SizeCode::W, _) | Operand::RegisterOrSP(SizeCode::W, _)
        );
        let width = |v: u64| if w { v & 0xFFFF_FFFF } else { v };
        let value = match (i.opcode, i.operands[1], i.operands[2]) {
            (Opcode::MOVZ, Operand::ImmShift(imm, shift), _) => {
                Some(width(u64::from(imm) << shift))
            }
            (Opcode::MOVN, Operand::ImmShift(imm, shift), _) => {
                Some(width(!(u64::from(imm) << shift)))
            }
            (Opcode::ORR, Operand::Register(_, 31), Operand::Immediate(imm)) => {
                Some(u64::from(imm))
            }
            (Opcode::ORR, Operand::Register(_, 31), Operand::Imm64(imm)) => Some(width(imm)),
            // mov wd, wzr / mov xd, xm
            (Opcode::ORR, Operand::Register(_, 31), Operand::RegShift(_, 0, _, 31)) => Some(0),
            (Opcode::ORR, Operand::Register(_, 31), Operand::RegShift(_, 0, _, m)) => {
                self.0.get(usize::from(m)).copied().flatten().map(width)
            }
            (Opcode::ADRP | Opcode::ADR, Operand::PCOffset(offset), _) => {
                let from = if i.opcode == Opcode::ADRP {
                    pc & !0xFFF
                } else {
                    pc
                };
                Some(from.wrapping_add_signed(offset))
            }
            (Opcode::ADD, src, Operand::Immediate(imm)) => gpr(src)
                .and_then(|s| self.0[s])
                .map(|v| width(v.wrapping_add(u64::from(imm)))),
            (Opcode::ADD, src, Operand::ImmShift(imm, shift)) => gpr(src)
                .and_then(|s| self.0[s])
                .map(|v| width(v.wrapping_add(u64::from(imm) << shift))),
            _ => None,
        };
        if let (Some(d), Some(_)) = (dest, value) {
            self.0[d] = value;
            return;
        }
        // Anything else may write any register it names (loads write their first two operands,
        // writeback changes the base): forget them all.
        for op in i.operands {
            if let Some(r) = gpr(op) {
                self.0[r] = None;
            }
            if let Operand::RegPreIndex(r, _, true) | Operand::RegPostIndex(r, _) = op
                && r < 31
            {
                self.0[usize::from(r)] = None;
            }
        }
    }
}

/// The code of one image's executable segments, with their call targets, for reading error
/// sites and call edges.
#[derive(Debug)]
pub struct Code<'a, 'data> {
    image: &'a ElfImage<'data>,
    calls: Vec<BlTargets>,
}

impl<'a, 'data> Code<'a, 'data> {
    /// Scans every executable segment of `image` for `bl` targets.
    #[must_use]
    pub fn new(image: &'a ElfImage<'data>) -> Self {
        let calls = image
            .segments
            .iter()
            .filter(|s| s.executable)
            .map(|s| BlTargets::scan(image.segment_bytes(s), s.vaddr))
            .collect();
        Self { image, calls }
    }

    /// Every verified `OPENSSL_PUT_ERROR` site loading one of `strings`.
    ///
    /// # Errors
    /// [`OverBudget`] when `budget` runs out or there are more than [`MAX_REFERENCES`].
    pub fn error_sites(
        &self,
        strings: &[u64],
        budget: &Budget,
    ) -> Result<Vec<ErrorSite>, OverBudget> {
        let mut sites = Vec::new();
        let mut seen = 0;
        for seg in self.image.segments.iter().filter(|s| s.executable) {
            let refs = references(self.image.segment_bytes(seg), seg.vaddr, strings);
            seen += refs.len();
            Budget::cap(seen, MAX_REFERENCES, "references to ssl_lib.cc")?;
            for r in refs {
                budget.check("arm64 error sites")?;
                let site = self.decode_site(&r);
                tracing::trace!(
                    at = format_args!("{:#x}", r.vaddr),
                    ?site,
                    "boringssl/arm64: reference"
                );
                sites.extend(site);
            }
        }
        Ok(sites)
    }

    /// The frame prologue at `vaddr`, if there is one.
    #[must_use]
    pub fn prologue_at(&self, vaddr: u64) -> Option<String> {
        prologue(self.image.bytes_at(vaddr)?)
    }

    /// Whether a new function visibly starts at `pc` (at `offset` in `code`): it follows zero
    /// padding and is 16-byte aligned, or the previous instruction never falls through and `pc`
    /// is a call target or has a frame prologue.
    fn starts_function(&self, code: &[u8], offset: usize, pc: u64) -> bool {
        let Some(before) = offset.checked_sub(4) else {
            return false;
        };
        if code[before..offset] == [0; 4] && pc.is_multiple_of(16) {
            return true;
        }
        never_falls_through(decode(&code[before..]).as_ref())
            && (self.calls.iter().any(|c| c.contains(pc)) || prologue(&code[offset..]).is_some())
    }

    /// Confirms the reference `r` is an `ERR_put_error(SSL, 0, reason, file, line)` call in a
    /// function with a prologue and reads its arguments.
    fn decode_site(&self, r: &Reference) -> Option<ErrorSite> {
        for start in self
            .calls
            .iter()
            .flat_map(|c| c.at_or_below(r.vaddr, MAX_FUNCTION_SPAN))
            .take(64)
        {
            let Some(code) = self.image.bytes_at(start) else {
                continue;
            };
            if prologue(code).is_none() {
                continue;
            }
            let span = usize::try_from(r.vaddr - start).ok()?;
            // A site past another function's entry is not in this function.
            if (4..=span)
                .step_by(4)
                .any(|offset| self.starts_function(code, offset, start + offset as u64))
            {
                return None;
            }
            return read_site(|at| self.image.bytes_at(at), start, r);
        }
        None
    }

    /// Whether the function at `start` calls (or tail-branches to) `callee` within its first
    /// `MAX_READ_SPAN` bytes, before the next function starts.
    #[must_use]
    pub fn calls_directly(&self, start: u64, callee: u64) -> bool {
        let Some(code) = self.image.bytes_at(start) else {
            return false;
        };
        let code = &code[..code.len().min(MAX_READ_SPAN as usize)];
        for offset in (0..code.len().saturating_sub(3)).step_by(4) {
            let pc = start + offset as u64;
            if offset > 0 && self.starts_function(code, offset, pc) {
                return false;
            }
            let Some(i) = decode(&code[offset..]) else {
                continue;
            };
            if branch_target(&i, pc) == Some(callee) {
                return true;
            }
        }
        false
    }
}

/// Reads an error site: decodes linearly from the function entry `function` to the reference
/// `r`, tracking constants (reset at every branch), checks that `r` loads the file name into
/// the file argument's register (`x3`, or `x2`, see `argument_layout`), then follows the path to the `bl` (through at most two unconditional `b` that stay in
/// the function, the tail-merged form compilers emit) and reads `w0`, `w2` and `w4` there.
/// `code_at` gives the bytes at an address.
#[must_use]
pub fn read_site<'a>(
    code_at: impl Fn(u64) -> Option<&'a [u8]>,
    function: u64,
    r: &Reference,
) -> Option<ErrorSite> {
    let mut regs = Registers::default();
    let mut pc = function;
    while pc <= r.vaddr {
        let i = decode(code_at(pc)?);
        match i {
            Some(i) if ends_block(&i) => regs = Registers::default(),
            Some(i) => regs.apply(&i, pc),
            None => regs = Registers::default(),
        }
        pc += 4;
    }
    // The register the reference loaded, and where the other arguments then are.
    let file_reg = decode(code_at(r.vaddr)?).and_then(|i| gpr(i.operands[0]))?;
    let (reason_reg, line_reg) = argument_layout(file_reg)?;
    if regs.0[file_reg] != Some(r.target) {
        return None;
    }
    let mut jumps = 0;
    for _ in 0..MAX_ARGUMENT_TAIL {
        let i = decode(code_at(pc)?)?;
        if i.opcode == Opcode::BL {
            let small = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok());
            if regs.0[file_reg] != Some(r.target) {
                return None;
            }
            return Some(ErrorSite {
                at: r.vaddr,
                function,
                reason: small(regs.0[reason_reg]),
                line: small(regs.0[line_reg]),
                lib: regs.0[LIB_REG],
                callee: branch_target(&i, pc)?,
            });
        }
        if i.opcode == Opcode::B && jumps < 2 {
            let target = branch_target(&i, pc)?;
            if target < function || target - function > MAX_FUNCTION_SPAN {
                return None;
            }
            jumps += 1;
            pc = target;
            continue;
        }
        if ends_block(&i) {
            return None;
        }
        regs.apply(&i, pc);
        pc += 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x40_0000;
    /// The string `.../ssl/ssl_lib.cc`, one page below the code plus 0xCE4.
    const FILE: u64 = 0x3F_FCE4;

    fn bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// `adrp x3, FILE's page` at instruction `index`.
    fn adrp_x3(index: u64) -> u32 {
        let pc = BASE + index * 4;
        let pages = ((FILE & !0xFFF) as i64 - (pc & !0xFFF) as i64) >> 12;
        let imm = (pages as u32) & 0x1F_FFFF;
        0x9000_0003 | (imm & 3) << 29 | (imm >> 2) << 5
    }

    const ADD_X3: u32 = 0x9100_0063 | 0xCE4 << 10; // add x3, x3, #0xce4
    const MOV_W0_16: u32 = 0x5280_0200; // mov w0, #16
    const MOV_W1_WZR: u32 = 0x2A1F_03E1; // mov w1, wzr
    const STP_FP_LR: u32 = 0xA9BF_7BFD; // stp x29, x30, [sp, #-16]!
    const MOV_FP: u32 = 0x9100_03FD; // mov x29, sp
    const RET: u32 = 0xD65F_03C0;
    const PACIASP: u32 = 0xD503_233F;
    const BTI_C: u32 = 0xD503_245F;

    fn movz_w(reg: u32, imm: u32) -> u32 {
        0x5280_0000 | imm << 5 | reg
    }
    /// `bl`/`b` from instruction `from` to instruction `to`.
    fn branch(op: u32, from: u64, to: u64) -> u32 {
        op | ((to as i64 - from as i64) as u32 & 0x03FF_FFFF)
    }

    /// 0: bti c; paciasp; stp; mov x29; 4: adrp; add; mov w0; mov w1; mov w2, 226; mov w4, 958;
    /// 10: bl 20; 11: ret; 12: adrp; add; mov w0; mov w1; mov w2, 215; mov w4, 973; 18: b 10;
    /// 19: udf; 20: ret (the reporter).
    fn function() -> Vec<u32> {
        vec![
            BTI_C,
            PACIASP,
            STP_FP_LR,
            MOV_FP,
            adrp_x3(4),
            ADD_X3,
            MOV_W0_16,
            MOV_W1_WZR,
            movz_w(2, 226),
            movz_w(4, 958),
            branch(0x9400_0000, 10, 20),
            RET,
            adrp_x3(12),
            ADD_X3,
            MOV_W0_16,
            MOV_W1_WZR,
            movz_w(2, 215),
            movz_w(4, 973),
            branch(0x1400_0000, 18, 10),
            0,
            RET,
        ]
    }

    fn site_at(words: &[u32], index: u64) -> Option<ErrorSite> {
        let code = bytes(words);
        read_site(
            |pc| code.get(usize::try_from(pc - BASE).ok()?..),
            BASE,
            &Reference {
                vaddr: BASE + index * 4,
                target: FILE,
            },
        )
    }

    #[test]
    fn finds_adrp_add_references() {
        let code = bytes(&function());
        let refs = references(&code, BASE, &[FILE]);
        let at: Vec<u64> = refs.iter().map(|r| (r.vaddr - BASE) / 4).collect();
        assert_eq!(at, vec![5, 13]);
        // Another string on the same page is not a reference to FILE.
        assert!(references(&code, BASE, &[FILE + 8]).is_empty());
    }

    #[test]
    fn reads_a_direct_site() {
        let site = site_at(&function(), 5).expect("site");
        assert_eq!(
            (site.reason, site.line, site.lib, site.callee),
            (Some(226), Some(958), Some(16), BASE + 20 * 4)
        );
    }

    #[test]
    fn follows_the_branch_to_a_shared_call() {
        let site = site_at(&function(), 13).expect("site");
        assert_eq!((site.reason, site.line), (Some(215), Some(973)));
    }

    #[test]
    fn refuses_a_site_whose_register_is_not_the_file_argument() {
        let mut words = function();
        words[4] = adrp_x3(4) & !31 | 5; // adrp x5
        words[5] = 0x9100_00A5 | 0xCE4 << 10; // add x5, x5, #0xce4
        assert!(site_at(&words, 5).is_none());
        // A conditional branch between the load and the call breaks the site.
        let mut words = function();
        words[7] = 0x5400_0040; // b.eq +8
        assert!(site_at(&words, 5).is_none());
    }

    #[test]
    fn reads_a_site_without_the_unused_argument() {
        // adrp x2; add x2; mov w0, 16; mov w1, 66; mov w3, 706; bl
        let mut words = function();
        words[4] = adrp_x3(4) & !31 | 2;
        words[5] = 0x9100_0042 | 0xCE4 << 10;
        words[7] = movz_w(1, 66);
        words[8] = movz_w(3, 706);
        words[9] = 0xD503_201F; // nop
        let site = site_at(&words, 5).expect("site");
        assert_eq!(
            (site.reason, site.line, site.lib),
            (Some(66), Some(706), Some(16))
        );
    }

    #[test]
    fn prologues_with_and_without_landing_pads() {
        assert_eq!(
            prologue(&bytes(&[BTI_C, PACIASP, STP_FP_LR])).as_deref(),
            Some("bti c; paciasp; stp x29, x30, [sp, #-16]!")
        );
        assert_eq!(
            prologue(&bytes(&[0xD101_83FF, 0xA902_7BFD])).as_deref(), // sub sp, #0x60; stp [sp, #0x20]
            Some("sub sp, sp, #96; stp x29, x30, [sp, #32]")
        );
        assert!(prologue(&bytes(&[0xB400_0040, STP_FP_LR])).is_none()); // cbz first
        assert!(prologue(&bytes(&[0xA9BE_4FF4])).is_none()); // stp x20, x19
        assert!(prologue(&bytes(&[RET])).is_none());
    }

    /// An image whose only executable segment is `words` at `BASE`.
    fn image(data: &[u8]) -> ElfImage<'_> {
        ElfImage {
            data,
            arch: super::super::Arch::Aarch64,
            segments: vec![super::super::elf::Segment {
                vaddr: BASE,
                offset: 0,
                file_size: data.len() as u64,
                executable: true,
                writable: false,
            }],
            build_id: None,
            pie: false,
            needed: Vec::new(),
        }
    }

    #[test]
    fn assigns_sites_to_the_called_function_with_a_prologue() {
        let mut words = function();
        words.extend([branch(0x9400_0000, 21, 0)]); // 21: a caller: bl 0
        let data = bytes(&words);
        let image = image(&data);
        let code = Code::new(&image);
        let sites = code.error_sites(&[FILE], &Budget::unlimited()).unwrap();
        assert_eq!(sites.len(), 2, "{sites:?}");
        assert!(sites.iter().all(|s| s.function == BASE));
        assert!(code.calls_directly(BASE, BASE + 20 * 4));
        assert!(!code.calls_directly(BASE, BASE + 12 * 4));
    }

    #[test]
    fn refuses_a_site_past_another_functions_entry() {
        // 0: a called function with a prologue that returns at once, zero padding to 16 bytes,
        // then at 4 a function reached only through pointers (no prologue), holding the site.
        let mut words = vec![STP_FP_LR, RET, 0, 0, 0xB400_0040]; // 4: cbz x0, +8
        let tail = function();
        words.extend_from_slice(&tail[4..11]); // adrp .. bl (branch offsets shift, unused)
        words.push(branch(0x9400_0000, words.len() as u64, 0)); // bl 0: function 0 is called
        let mut data = bytes(&words);
        // Re-aim the adrp (now at 5) at FILE's page.
        data[20..24].copy_from_slice(&adrp_x3(5).to_le_bytes());
        let padded = image(&data);
        assert!(
            Code::new(&padded)
                .error_sites(&[FILE], &Budget::unlimited())
                .unwrap()
                .is_empty()
        );
        // Without the padding the boundary is invisible and nothing is refused: the padding is
        // what shows the second function.
        data[8..16].copy_from_slice(&bytes(&[0xD503_201F, 0xD503_201F])); // nop; nop
        data[4..8].copy_from_slice(&bytes(&[0xD503_201F])); // no ret either
        let unpadded = image(&data);
        assert_eq!(
            Code::new(&unpadded)
                .error_sites(&[FILE], &Budget::unlimited())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn bl_targets_are_found_and_walked_down() {
        let mut words = vec![RET; 200];
        words[0] = branch(0x9400_0000, 0, 150);
        words[10] = branch(0x9400_0000, 10, 70);
        words[20] = branch(0x9400_0000, 20, 400); // outside
        words[30] = branch(0x1400_0000, 30, 100); // b, not bl
        let t = BlTargets::scan(&bytes(&words), BASE);
        assert!(t.contains(BASE + 150 * 4));
        assert!(!t.contains(BASE + 100 * 4));
        assert!(!t.contains(BASE + 150 * 4 + 2));
        let below: Vec<u64> = t.at_or_below(BASE + 199 * 4, 1 << 20).collect();
        assert_eq!(below, vec![BASE + 150 * 4, BASE + 70 * 4]);
        assert_eq!(t.at_or_below(BASE + 149 * 4, 1 << 20).count(), 1);
        assert_eq!(t.at_or_below(BASE + 199 * 4, 4 * 40).count(), 0);
    }
}
