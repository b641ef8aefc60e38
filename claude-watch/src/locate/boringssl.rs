//! Finding `SSL_write` and `SSL_read` in a stripped, statically linked BoringSSL (Bun, the native
//! Claude Code) from what the code itself says.
//!
//! BoringSSL's `OPENSSL_PUT_ERROR(SSL, reason)` passes `__FILE__` and `__LINE__` to
//! `ERR_put_error`. Every error site in `ssl/ssl_lib.cc` therefore loads the address of the
//! `.../ssl/ssl_lib.cc` string (on x86-64 an immediate in non-PIE code, a RIP-relative `lea` in
//! PIE code; on arm64 an `adrp`/`add` pair, read by [`super::aarch64`]) next to a reason code
//! and a line number. The reason codes of a function's sites are stable
//! across versions and pick out `SSL_write` ({226 UNINITIALIZED, 215 SSL_HANDSHAKE_FAILURE,
//! 111 BAD_LENGTH}), `ssl_read_impl` ({226, 215}, no 111) and `SSL_read` (one 66
//! SHOULD_NOT_HAVE_BEEN_CALLED site, inlined from `SSL_peek`, between the two in source order,
//! calling `ssl_read_impl`). Function starts come from the direct call targets with a
//! frame-pointer prologue; every site is confirmed by decoding its function linearly from that
//! start, and the result only stands if each role has exactly one candidate.

use std::collections::BTreeMap;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::aarch64;
use super::budget::{Budget, MAX_REFERENCES, MAX_STRINGS, OverBudget};
use super::elf::{Arch, ElfImage};
use super::scan::{self, CallTargets, ErrorSite, Reference};
use super::{Function, FunctionName};

/// BoringSSL's `ERR_LIB_SSL`.
const ERR_LIB_SSL: u64 = 16;
/// `ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED`.
const R_SHOULD_NOT_HAVE_BEEN_CALLED: u32 = 66;
/// `SSL_R_UNINITIALIZED`.
const R_UNINITIALIZED: u32 = 226;
/// `SSL_R_SSL_HANDSHAKE_FAILURE`.
const R_HANDSHAKE_FAILURE: u32 = 215;
/// `SSL_R_BAD_LENGTH`.
const R_BAD_LENGTH: u32 = 111;
/// How far below an error site its function may start.
const MAX_FUNCTION_SPAN: u64 = 64 * 1024;
/// How many instructions after the string reference the `call` may come.
const MAX_ARGUMENT_TAIL: usize = 16;
/// How far into `SSL_read` to look for its call to `ssl_read_impl`.
const MAX_READ_SPAN: u64 = 4096;

/// Why the BoringSSL functions could not be identified with certainty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotIdentified {
    /// The `ssl_lib.cc` string is there but no code loads it in an `ERR_put_error` call.
    #[error(
        "{strings} ssl_lib.cc string(s) but no verifiable error site references them (x86-64 non-PIE immediate or PIE lea, arm64 adrp+add, in a function with a frame prologue)"
    )]
    NoErrorSites {
        /// How many copies of the string were found.
        strings: usize,
    },
    /// No function, or more than one, has `SSL_write`'s error sites.
    #[error(
        "{count} functions have SSL_write's error sites (reasons 226, 215, 111), expected exactly one"
    )]
    SslWrite {
        /// How many candidates.
        count: usize,
    },
    /// No `ssl_read_impl` candidate (reasons 226 and 215 without 111, before `SSL_write`).
    #[error(
        "no ssl_read_impl candidate (reasons 226 and 215 without 111, before SSL_write in ssl_lib.cc)"
    )]
    NoReadImpl,
    /// No function, or more than one, passes all of `SSL_read`'s checks.
    #[error(
        "{count} functions pass SSL_read's checks (one reason-66 site between ssl_read_impl and SSL_write, calls ssl_read_impl), expected exactly one"
    )]
    SslRead {
        /// How many candidates.
        count: usize,
    },
    /// The file made the scans exceed their time budget or a candidate cap.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// Locates `SSL_write` and `SSL_read`. `Ok(None)` when the file holds no BoringSSL `ssl_lib.cc`.
///
/// # Errors
/// [`NotIdentified`] when BoringSSL is there but a check fails, or `budget` runs out.
pub fn locate(
    image: &ElfImage<'_>,
    budget: &Budget,
) -> Result<Option<Vec<Function>>, NotIdentified> {
    let strings: Vec<u64> = image
        .segments
        .iter()
        .filter(|s| !s.executable && !s.unread())
        .flat_map(|s| {
            scan::strings_ending_with(image.segment_bytes(s), s.vaddr, b"/ssl/ssl_lib.cc")
        })
        .collect();
    if strings.is_empty() {
        return Ok(None);
    }
    Budget::cap(strings.len(), MAX_STRINGS, "ssl_lib.cc strings")?;
    budget.check("strings")?;
    match image.arch {
        Arch::X86_64 => {
            let (mut scans, mut seen) = (Vec::new(), 0);
            for seg in image.segments.iter().filter(|s| s.executable) {
                let code = image.segment_bytes(seg);
                let refs = scan::references(code, seg.vaddr, &strings);
                seen += refs.len();
                references_within(seen, budget)?;
                scans.push(Scanned::new(refs, |near, radius| {
                    CallTargets::scan_near(code, seg.vaddr, near, radius)
                }));
            }
            identify_x86_64(image, strings.len(), &scans, budget).map(Some)
        }
        Arch::Aarch64 => {
            let code = aarch64::Code::new(image);
            let sites = code.error_sites(&strings, budget)?;
            tracing::debug!(
                strings = strings.len(),
                sites = sites.len(),
                "boringssl/arm64: error sites"
            );
            if sites.is_empty() {
                return Err(NotIdentified::NoErrorSites {
                    strings: strings.len(),
                });
            }
            let roles = classify(&sites, budget, |from, to| code.calls_directly(from, to))?;
            let write = code.prologue_at(roles.write).unwrap_or_default();
            let read = code.prologue_at(roles.read).unwrap_or_default();
            Ok(Some(functions(image, &roles, &write, &read)))
        }
    }
}

/// What the linear scans of one executable segment found: its references to the
/// `ssl_lib.cc` strings and the direct call targets around them.
#[derive(Debug)]
pub struct Scanned {
    refs: Vec<Reference>,
    calls: Option<CallTargets>,
}

impl Scanned {
    /// The scans of a segment whose references are `refs`; `calls(near, radius)` scans its
    /// call targets within `radius` of the addresses `near` (not at all without references).
    pub fn new(refs: Vec<Reference>, calls: impl FnOnce(&[u64], u64) -> CallTargets) -> Self {
        // Only around the sites is anything asked of the call targets: a function start at
        // most MAX_FUNCTION_SPAN below a site, and what it calls in its first MAX_READ_SPAN.
        let near: Vec<u64> = refs.iter().map(|r| r.vaddr).collect();
        let calls = (!refs.is_empty()).then(|| calls(&near, CALLS_RADIUS));
        Self { refs, calls }
    }

    /// The addresses whose bytes the identification decodes: within [`CODE_RADIUS`] of each
    /// reference.
    pub fn code_windows(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.refs.iter().map(|r| {
            (
                r.vaddr.saturating_sub(CODE_RADIUS),
                r.vaddr.saturating_add(CODE_RADIUS),
            )
        })
    }
}

/// How far around a site the call targets are kept (see [`Scanned::new`]).
pub const CALLS_RADIUS: u64 = MAX_FUNCTION_SPAN + MAX_READ_SPAN;

/// How far around a site the identification reads code: its function (at most
/// `MAX_FUNCTION_SPAN` below), the functions it may call within `MAX_READ_SPAN`, and the
/// jumps compilers use to share one `call ERR_put_error` between a function's sites.
pub const CODE_RADIUS: u64 = 2 * MAX_FUNCTION_SPAN;

/// Whether `seen` references so far stay within [`MAX_REFERENCES`] and `budget`.
///
/// # Errors
/// [`NotIdentified::OverBudget`] otherwise.
pub fn references_within(seen: usize, budget: &Budget) -> Result<(), NotIdentified> {
    Budget::cap(seen, MAX_REFERENCES, "references to ssl_lib.cc")?;
    budget.check("references")?;
    Ok(())
}

/// Identifies `SSL_write` and `SSL_read` on x86-64 from the `scans` of the executable
/// segments, decoding the code of `image` around each reference (`strings`: how many copies of
/// the string were found).
///
/// # Errors
/// [`NotIdentified`] when a check fails, or `budget` runs out.
pub fn identify_x86_64(
    image: &ElfImage<'_>,
    strings: usize,
    scans: &[Scanned],
    budget: &Budget,
) -> Result<Vec<Function>, NotIdentified> {
    let mut sites = Vec::new();
    for scan in scans {
        let Some(calls) = &scan.calls else { continue };
        for r in &scan.refs {
            budget.check("error sites")?;
            let site = decode_site(image, calls, r);
            tracing::trace!(
                at = format_args!("{:#x}", r.vaddr),
                ?site,
                "boringssl: reference"
            );
            sites.extend(site);
        }
    }
    tracing::debug!(strings, sites = sites.len(), "boringssl: error sites");
    if sites.is_empty() {
        return Err(NotIdentified::NoErrorSites { strings });
    }
    let calls: Vec<&CallTargets> = scans.iter().filter_map(|s| s.calls.as_ref()).collect();
    let roles = classify(&sites, budget, |from, to| {
        calls_directly(image, &calls, from, to)
    })?;
    let prologue = "push rbp; mov rbp,rsp";
    Ok(functions(image, &roles, prologue, prologue))
}

/// `SSL_write` and `SSL_read` as identified in `roles`, with their evidence.
fn functions(
    image: &ElfImage<'_>,
    roles: &Roles,
    write_prologue: &str,
    read_prologue: &str,
) -> Vec<Function> {
    tracing::debug!(
        arch = %image.arch,
        ssl_write = format_args!("{:#x}", roles.write),
        ssl_read = format_args!("{:#x}", roles.read),
        ssl_read_impl = format_args!("{:#x}", roles.read_impl),
        "boringssl: identified"
    );
    let function = |name, vaddr: u64, evidence: String| Function {
        name,
        vaddr,
        file_offset: image.file_offset(vaddr).unwrap_or_default(),
        evidence,
    };
    vec![
        function(
            FunctionName::SslWrite,
            roles.write,
            format!(
                "ssl_lib.cc error sites with reasons {:?} (lines {}..={}); directly called; {write_prologue} prologue",
                roles.write_reasons, roles.write_lines.0, roles.write_lines.1
            ),
        ),
        function(
            FunctionName::SslRead,
            roles.read,
            format!(
                "one ssl_lib.cc reason-66 site (line {}) between ssl_read_impl@{:#x} and SSL_write; calls ssl_read_impl; directly called; {read_prologue} prologue",
                roles.read_line, roles.read_impl
            ),
        ),
    ]
}

/// A function start with its prologue, for a site at `at`.
fn function_start(
    image: &ElfImage<'_>,
    calls: &CallTargets,
    r: &Reference,
) -> Option<(u64, Vec<Instruction>)> {
    for start in calls.at_or_below(r.vaddr, MAX_FUNCTION_SPAN).take(64) {
        let Some(code) = image.bytes_at(start) else {
            continue;
        };
        if !scan::has_prologue(code) {
            continue;
        }
        if let Some(instructions) = decode_to(code, start, r.vaddr) {
            return Some((start, instructions));
        }
    }
    None
}

/// Decodes `code` (at `start`) linearly up to and including the instruction at `target` plus
/// [`MAX_ARGUMENT_TAIL`] more; `None` unless an instruction starts exactly at `target`.
fn decode_to(code: &[u8], start: u64, target: u64) -> Option<Vec<Instruction>> {
    let span = usize::try_from(target - start).ok()?;
    let window = &code[..code.len().min(span + 16 * MAX_ARGUMENT_TAIL)];
    let mut decoder = Decoder::with_ip(64, window, start, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut instruction = Instruction::default();
    let mut landed = None;
    let mut after_padding = false;
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        // `int3` padding then a prologue is the next function: the site is not in the function
        // that starts at `start` (it is only reached through pointers); refuse to assign it.
        let offset = (instruction.ip() - start) as usize;
        if after_padding && landed.is_none() && scan::has_prologue(&window[offset..]) {
            return None;
        }
        after_padding = instruction.mnemonic() == Mnemonic::Int3;
        if instruction.ip() == target {
            landed = Some(out.len());
        }
        if instruction.ip() > target && landed.is_none() {
            return None;
        }
        out.push(instruction);
        if landed.is_some_and(|i| out.len() > i + MAX_ARGUMENT_TAIL) {
            break;
        }
    }
    landed.map(|_| out)
}

/// Index of a 64-bit general purpose register (RAX = 0 .. R15 = 15).
fn gpr(reg: Register) -> Option<usize> {
    let full = reg.full_register();
    let index = (full as usize).checked_sub(Register::RAX as usize)?;
    (index < 16).then_some(index)
}

/// Whether an instruction ends a straight-line block.
fn ends_block(i: &Instruction) -> bool {
    i.is_call_near()
        || i.is_jcc_short_or_near()
        || i.is_jmp_short_or_near()
        || matches!(
            i.mnemonic(),
            Mnemonic::Ret | Mnemonic::Int3 | Mnemonic::Ud2 | Mnemonic::Jmp | Mnemonic::Call
        )
}

/// Confirms the reference `r` is an `ERR_put_error(SSL, .., reason, file, line)` call and reads
/// its arguments.
#[must_use]
pub fn decode_site(image: &ElfImage<'_>, calls: &CallTargets, r: &Reference) -> Option<ErrorSite> {
    let (function, instructions) = function_start(image, calls, r)?;
    read_site(|at| image.bytes_at(at), function, &instructions, r)
}

/// Register tracking through one straight-line path: which registers hold known constants.
#[derive(Debug, Clone, Copy, Default)]
struct Registers([Option<u64>; 16]);

impl Registers {
    /// Applies one non-branch instruction; returns the value it loaded into its destination.
    fn apply(&mut self, i: &Instruction) -> Option<u64> {
        let dest = (i.op_count() > 0 && i.op0_kind() == OpKind::Register)
            .then(|| gpr(i.op0_register()))
            .flatten();
        let value = match i.code() {
            Code::Mov_r32_imm32 => Some(u64::from(i.immediate32())),
            Code::Mov_rm64_imm32 if i.op0_kind() == OpKind::Register => {
                Some(i.immediate32to64() as u64)
            }
            Code::Lea_r64_m if i.memory_base() == Register::RIP => Some(i.memory_displacement64()),
            // `xor r32, r32` zeroes the register.
            Code::Xor_r32_rm32 | Code::Xor_rm32_r32
                if i.op1_kind() == OpKind::Register && i.op0_register() == i.op1_register() =>
            {
                Some(0)
            }
            _ => None,
        };
        if let Some(d) = dest {
            self.0[d] = value;
        }
        value
    }
}

/// Reads an error site: `before` is the linear decode of its function from `function` up to
/// and past the reference `r`; `code_at` gives the bytes at an address, for following the
/// unconditional jumps compilers use to share one `call ERR_put_error` between sites.
#[must_use]
pub fn read_site<'a>(
    code_at: impl Fn(u64) -> Option<&'a [u8]>,
    function: u64,
    before: &[Instruction],
    r: &Reference,
) -> Option<ErrorSite> {
    let mut regs = Registers::default();
    let mut file_reg = None;
    let mut next_ip = None;
    for i in before {
        if ends_block(i) {
            regs = Registers::default();
            continue;
        }
        let value = regs.apply(i);
        if i.ip() == r.vaddr {
            if value != Some(r.target) {
                return None;
            }
            file_reg = gpr(i.op0_register());
            next_ip = Some(i.next_ip());
            break;
        }
    }
    let (file_reg, mut ip) = (file_reg?, next_ip?);
    let mut jumps = 0;
    for _ in 0..MAX_ARGUMENT_TAIL {
        let code = code_at(ip)?;
        let mut decoder =
            Decoder::with_ip(64, &code[..code.len().min(16)], ip, DecoderOptions::NONE);
        let i = decoder.decode();
        if i.is_invalid() {
            return None;
        }
        if i.is_call_near() && i.op0_kind() == OpKind::NearBranch64 {
            let (reason_reg, line_reg) = match file_reg {
                2 => (6, 1), // file in rdx: reason in esi, line in ecx
                1 => (2, 8), // file in rcx: reason in edx, line in r8d
                _ => return None,
            };
            let small = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok());
            return Some(ErrorSite {
                at: r.vaddr,
                function,
                reason: small(regs.0[reason_reg]),
                line: small(regs.0[line_reg]),
                lib: regs.0[7],
                callee: i.near_branch64(),
            });
        }
        if i.is_jmp_short_or_near() && jumps < 2 {
            let target = i.near_branch64();
            if target < function || target - function > MAX_FUNCTION_SPAN {
                return None;
            }
            jumps += 1;
            ip = target;
            continue;
        }
        if ends_block(&i) {
            return None;
        }
        regs.apply(&i);
        ip = i.next_ip();
    }
    None
}

/// What the sites say about one function.
#[derive(Debug, Default, Clone)]
struct Profile {
    reasons: Vec<u32>,
    lines: Vec<u32>,
}

impl Profile {
    fn has(&self, reason: u32) -> bool {
        self.reasons.contains(&reason)
    }
    fn min_line(&self) -> Option<u32> {
        self.lines.iter().copied().min()
    }
    fn max_line(&self) -> Option<u32> {
        self.lines.iter().copied().max()
    }
}

/// The functions identified, with what identified them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// `SSL_write`'s start.
    pub write: u64,
    /// Distinct reason codes of `SSL_write`'s sites.
    pub write_reasons: Vec<u32>,
    /// Lowest and highest line of `SSL_write`'s sites.
    pub write_lines: (u32, u32),
    /// `SSL_read`'s start.
    pub read: u64,
    /// Line of `SSL_read`'s (inlined `SSL_peek`) site.
    pub read_line: u32,
    /// `ssl_read_impl`'s start.
    pub read_impl: u64,
}

/// Assigns roles to the functions holding `sites`; see the module documentation.
/// `calls(from, to)` says whether the function starting at `from` calls the one at `to`.
///
/// # Errors
/// [`NotIdentified`] unless each role has exactly one candidate, or when `budget` runs out.
pub fn classify(
    sites: &[ErrorSite],
    budget: &Budget,
    calls: impl Fn(u64, u64) -> bool,
) -> Result<Roles, NotIdentified> {
    // The error reporter is the callee most sites share; sites calling anything else are not
    // OPENSSL_PUT_ERROR expansions.
    let mut callees: BTreeMap<u64, usize> = BTreeMap::new();
    for s in sites {
        *callees.entry(s.callee).or_default() += 1;
    }
    let Some((&reporter, _)) = callees.iter().max_by_key(|(_, n)| **n) else {
        return Err(NotIdentified::NoErrorSites { strings: 1 });
    };
    let mut profiles: BTreeMap<u64, Profile> = BTreeMap::new();
    for s in sites
        .iter()
        .filter(|s| s.callee == reporter && s.lib.is_none_or(|l| l == ERR_LIB_SSL))
    {
        let p = profiles.entry(s.function).or_default();
        if let Some(reason) = s.reason {
            p.reasons.push(reason);
        }
        if let Some(line) = s.line {
            p.lines.push(line);
        }
    }
    for (start, p) in &profiles {
        tracing::trace!(start = format_args!("{start:#x}"), reasons = ?p.reasons, lines = ?p.lines, "boringssl: function");
    }
    let writes: Vec<(&u64, &Profile)> = profiles
        .iter()
        .filter(|(_, p)| {
            p.has(R_UNINITIALIZED) && p.has(R_HANDSHAKE_FAILURE) && p.has(R_BAD_LENGTH)
        })
        .collect();
    let [(&write, write_profile)] = writes[..] else {
        return Err(NotIdentified::SslWrite {
            count: writes.len(),
        });
    };
    let write_first = write_profile.min_line().unwrap_or(u32::MAX);
    let read_impls: Vec<(&u64, &Profile)> = profiles
        .iter()
        .filter(|(_, p)| {
            p.has(R_UNINITIALIZED) && p.has(R_HANDSHAKE_FAILURE) && !p.has(R_BAD_LENGTH)
        })
        .filter(|(_, p)| p.max_line().is_some_and(|l| l < write_first))
        .collect();
    if read_impls.is_empty() {
        return Err(NotIdentified::NoReadImpl);
    }
    let mut reads = Vec::new();
    for (&start, p) in &profiles {
        if p.reasons != [R_SHOULD_NOT_HAVE_BEEN_CALLED] || p.lines.len() != 1 {
            continue;
        }
        let line = p.lines[0];
        for &(&read_impl, impl_profile) in &read_impls {
            budget.check("classifying")?;
            let after_impl = impl_profile.max_line().is_some_and(|l| l < line);
            if after_impl && line < write_first && calls(start, read_impl) {
                reads.push((start, read_impl, line));
            }
        }
    }
    let [(read, read_impl, read_line)] = reads[..] else {
        return Err(NotIdentified::SslRead { count: reads.len() });
    };
    let mut write_reasons = write_profile.reasons.clone();
    write_reasons.sort_unstable();
    write_reasons.dedup();
    Ok(Roles {
        write,
        write_reasons,
        write_lines: (write_first, write_profile.max_line().unwrap_or_default()),
        read,
        read_line,
        read_impl,
    })
}

/// Whether the function at `start` calls (or tail-jumps to) `callee` within its first
/// [`MAX_READ_SPAN`] bytes, before the next function starts.
fn calls_directly(image: &ElfImage<'_>, calls: &[&CallTargets], start: u64, callee: u64) -> bool {
    let Some(code) = image.bytes_at(start) else {
        return false;
    };
    let code = &code[..code.len().min(MAX_READ_SPAN as usize)];
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut i = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut i);
        if i.is_invalid() {
            return false;
        }
        if i.ip() != start
            && calls.iter().any(|c| c.contains(i.ip()))
            && scan::has_prologue(&code[(i.ip() - start) as usize..])
        {
            return false;
        }
        if (i.is_call_near() || i.is_jmp_near())
            && i.op0_kind() == OpKind::NearBranch64
            && i.near_branch64() == callee
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: u64 = 0x1234_5678;
    const BASE: u64 = 0x1000;

    /// A function with a direct error site (file in ecx) and a second site that jumps to the
    /// first one's `call` (the tail-merged form compilers emit).
    fn code() -> Vec<u8> {
        let mut c = vec![0x55, 0x48, 0x89, 0xE5]; // push rbp; mov rbp,rsp
        c.extend([0xB9, 0x78, 0x56, 0x34, 0x12]); // 0x1004 mov ecx, FILE
        c.extend([0xBF, 0x10, 0, 0, 0]); // mov edi, 16
        c.extend([0x31, 0xF6]); // xor esi, esi
        c.extend([0xBA, 0xE2, 0, 0, 0]); // mov edx, 226
        c.extend([0x41, 0xB8, 0xFD, 0x03, 0, 0]); // mov r8d, 1021
        c.extend([0xE8, 0xE0, 0x0F, 0, 0]); // 0x101B call 0x2000
        c.extend([0x5D, 0xC3]); // pop rbp; ret
        c.extend([0xB9, 0x78, 0x56, 0x34, 0x12]); // 0x1022 mov ecx, FILE
        c.extend([0xBF, 0x10, 0, 0, 0]); // mov edi, 16
        c.extend([0x31, 0xF6]); // xor esi, esi
        c.extend([0xBA, 0xD7, 0, 0, 0]); // mov edx, 215
        c.extend([0x41, 0xB8, 0x10, 0, 0, 0]); // mov r8d, 16
        c.extend([0xEB, 0xE0]); // 0x1039 jmp 0x101B
        c.extend([0xCC; 8]);
        c
    }

    fn site_at(code: &[u8], at: u64) -> Option<ErrorSite> {
        let r = Reference {
            vaddr: at,
            target: FILE,
        };
        let before = decode_to(code, BASE, at)?;
        read_site(
            |ip| code.get(usize::try_from(ip - BASE).ok()?..),
            BASE,
            &before,
            &r,
        )
    }

    #[test]
    fn reads_a_direct_site_with_file_in_ecx() {
        let site = site_at(&code(), 0x1004).expect("site");
        assert_eq!(
            (site.reason, site.line, site.lib, site.callee),
            (Some(226), Some(1021), Some(16), 0x2000)
        );
        assert_eq!(site.function, BASE);
    }

    #[test]
    fn follows_the_jump_to_a_shared_call() {
        let site = site_at(&code(), 0x1022).expect("site");
        assert_eq!(
            (site.reason, site.line, site.callee),
            (Some(215), Some(16), 0x2000)
        );
    }

    #[test]
    fn reads_a_site_with_file_in_edx() {
        let mut c = vec![0x55, 0x48, 0x89, 0xE5];
        c.extend([0xBF, 0x10, 0, 0, 0]); // mov edi, 16
        c.extend([0xBA, 0x78, 0x56, 0x34, 0x12]); // 0x1009 mov edx, FILE
        c.extend([0xBE, 0x42, 0, 0, 0]); // mov esi, 66
        c.extend([0xB9, 0xA5, 0x03, 0, 0]); // mov ecx, 933
        c.extend([0xE8, 0, 0, 0, 0]); // call next
        let site = site_at(&c, 0x1009).expect("site");
        assert_eq!(
            (site.reason, site.line, site.lib),
            (Some(66), Some(933), Some(16))
        );
    }

    #[test]
    fn refuses_a_reference_the_linear_decode_does_not_reach() {
        // 0x1005 is inside the `mov ecx, FILE` instruction.
        assert!(decode_to(&code(), BASE, 0x1005).is_none());
        // A branch between the file load and the call breaks the site.
        let mut c = vec![0x55, 0x48, 0x89, 0xE5];
        c.extend([0xB9, 0x78, 0x56, 0x34, 0x12]); // mov ecx, FILE
        c.extend([0x74, 0x00]); // je +0
        c.extend([0xE8, 0, 0, 0, 0]);
        assert!(site_at(&c, 0x1004).is_none());
    }

    #[test]
    fn refuses_a_site_behind_the_next_functions_prologue() {
        // start: push rbp; mov rbp,rsp; pop rbp; ret; int3; then a function only reached
        // through pointers, holding the site.
        let mut c = vec![0x55, 0x48, 0x89, 0xE5, 0x5D, 0xC3, 0xCC, 0xCC];
        c.extend([0x55, 0x48, 0x89, 0xE5]); // 0x1008
        c.extend([0xB9, 0x78, 0x56, 0x34, 0x12]); // 0x100C mov ecx, FILE
        c.extend([0xE8, 0, 0, 0, 0]);
        assert!(decode_to(&c, BASE, 0x100C).is_none());
        assert!(decode_to(&c, 0x1008, 0x100C).is_some());
    }

    fn site(function: u64, reason: u32, line: u32) -> ErrorSite {
        ErrorSite {
            at: function + u64::from(line),
            function,
            reason: Some(reason),
            line: Some(line),
            lib: Some(16),
            callee: 0xE770,
        }
    }

    /// The profile seen in Bun 1.4.5: SSL_read 0x100, ssl_read_impl 0x200, SSL_write 0x300,
    /// plus SSL_do_handshake and unrelated single-66 functions.
    fn bun_like() -> Vec<ErrorSite> {
        vec![
            site(0x100, 66, 931),
            site(0x200, 226, 837),
            site(0x200, 215, 870),
            site(0x300, 66, 953),
            site(0x300, 215, 973),
            site(0x300, 226, 958),
            site(0x300, 111, 979),
            site(0x400, 226, 1021),
            site(0x400, 291, 1069),
            site(0x500, 66, 810),
            site(0x600, 66, 1671),
        ]
    }

    #[test]
    fn classifies_write_read_and_read_impl() {
        let all_call_impl = |_from: u64, to: u64| to == 0x200;
        let roles = classify(&bun_like(), &Budget::unlimited(), all_call_impl).expect("roles");
        assert_eq!(
            (roles.write, roles.read, roles.read_impl, roles.read_line),
            (0x300, 0x100, 0x200, 931)
        );
        assert_eq!(roles.write_reasons, vec![66, 111, 215, 226]);
    }

    #[test]
    fn refuses_when_read_does_not_call_read_impl() {
        let err = classify(&bun_like(), &Budget::unlimited(), |_, _| false).unwrap_err();
        assert_eq!(err, NotIdentified::SslRead { count: 0 });
    }

    #[test]
    fn refuses_two_write_candidates() {
        let mut sites = bun_like();
        sites.extend([
            site(0x700, 226, 990),
            site(0x700, 215, 991),
            site(0x700, 111, 992),
        ]);
        assert_eq!(
            classify(&sites, &Budget::unlimited(), |_, to| to == 0x200).unwrap_err(),
            NotIdentified::SslWrite { count: 2 }
        );
    }

    #[test]
    fn refuses_two_read_candidates_in_range() {
        let mut sites = bun_like();
        sites.push(site(0x800, 66, 940));
        assert_eq!(
            classify(&sites, &Budget::unlimited(), |_, to| to == 0x200).unwrap_err(),
            NotIdentified::SslRead { count: 2 }
        );
    }

    #[test]
    fn ignores_sites_calling_another_function_or_library() {
        let mut sites = bun_like();
        // A stray SSL_write-like profile reported through a different callee or library.
        let mut stray = vec![
            site(0x900, 226, 990),
            site(0x900, 215, 991),
            site(0x900, 111, 992),
        ];
        stray[0].callee = 0xBAD;
        stray[1].lib = Some(6);
        sites.extend(stray);
        assert_eq!(
            classify(&sites, &Budget::unlimited(), |_, to| to == 0x200)
                .expect("roles")
                .write,
            0x300
        );
    }
}
