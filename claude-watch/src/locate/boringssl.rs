//! Finding `SSL_write` and `SSL_read` in a stripped, statically linked BoringSSL (Bun, the native
//! Claude Code) from what the code itself says.
//!
//! BoringSSL's `OPENSSL_PUT_ERROR(SSL, reason)` passes `__FILE__` and `__LINE__` to
//! `ERR_put_error`. Every error site in `ssl/ssl_lib.cc` therefore loads the address of the
//! `.../ssl/ssl_lib.cc` string (an immediate in non-PIE code, a RIP-relative `lea` in PIE code)
//! next to a reason code and a line number. The reason codes of a function's sites are stable
//! across versions and pick out `SSL_write` ({226 UNINITIALIZED, 215 SSL_HANDSHAKE_FAILURE,
//! 111 BAD_LENGTH}), `ssl_read_impl` ({226, 215}, no 111) and `SSL_read` (one 66
//! SHOULD_NOT_HAVE_BEEN_CALLED site, inlined from `SSL_peek`, between the two in source order,
//! calling `ssl_read_impl`). Function starts come from the direct call targets with a
//! frame-pointer prologue; every site is confirmed by decoding its function linearly from that
//! start, and the result only stands if each role has exactly one candidate.

use std::collections::BTreeMap;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::elf::ElfImage;
use super::scan::{self, CallTargets, Reference};
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
    #[error("{strings} ssl_lib.cc string(s) but no verifiable error site references them (x86-64 non-PIE immediate or PIE lea)")]
    NoErrorSites {
        /// How many copies of the string were found.
        strings: usize,
    },
    /// No function, or more than one, has `SSL_write`'s error sites.
    #[error("{count} functions have SSL_write's error sites (reasons 226, 215, 111), expected exactly one")]
    SslWrite {
        /// How many candidates.
        count: usize,
    },
    /// No `ssl_read_impl` candidate (reasons 226 and 215 without 111, before `SSL_write`).
    #[error("no ssl_read_impl candidate (reasons 226 and 215 without 111, before SSL_write in ssl_lib.cc)")]
    NoReadImpl,
    /// No function, or more than one, passes all of `SSL_read`'s checks.
    #[error("{count} functions pass SSL_read's checks (one reason-66 site between ssl_read_impl and SSL_write, calls ssl_read_impl), expected exactly one")]
    SslRead {
        /// How many candidates.
        count: usize,
    },
}

/// One verified `OPENSSL_PUT_ERROR` site.
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

/// Locates `SSL_write` and `SSL_read`. `Ok(None)` when the file holds no BoringSSL `ssl_lib.cc`.
///
/// # Errors
/// [`NotIdentified`] when BoringSSL is there but a check fails.
pub fn locate(image: &ElfImage<'_>) -> Result<Option<Vec<Function>>, NotIdentified> {
    let strings: Vec<u64> = image
        .segments
        .iter()
        .filter(|s| !s.executable)
        .flat_map(|s| scan::strings_ending_with(image.segment_bytes(s), s.vaddr, b"/ssl/ssl_lib.cc"))
        .collect();
    if strings.is_empty() {
        return Ok(None);
    }
    let mut sites = Vec::new();
    let mut calls_by_segment = Vec::new();
    for seg in image.segments.iter().filter(|s| s.executable) {
        let code = image.segment_bytes(seg);
        let refs = scan::references(code, seg.vaddr, &strings);
        if refs.is_empty() {
            continue;
        }
        let calls = CallTargets::scan(code, seg.vaddr);
        for r in &refs {
            let site = decode_site(image, &calls, r);
            tracing::trace!(at = format_args!("{:#x}", r.vaddr), ?site, "boringssl: reference");
            sites.extend(site);
        }
        calls_by_segment.push(calls);
    }
    tracing::debug!(strings = strings.len(), sites = sites.len(), "boringssl: error sites");
    let functions = classify(image, &sites, &calls_by_segment)?;
    Ok(Some(functions))
}

/// A function start with its prologue, for a site at `at`.
fn function_start(image: &ElfImage<'_>, calls: &CallTargets, r: &Reference) -> Option<(u64, Vec<Instruction>)> {
    for start in calls.at_or_below(r.vaddr, MAX_FUNCTION_SPAN).take(64) {
        let Some(code) = image.bytes_at(start) else { continue };
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
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
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
    i.is_call_near() || i.is_jcc_short_or_near() || i.is_jmp_short_or_near() || matches!(i.mnemonic(), Mnemonic::Ret | Mnemonic::Int3 | Mnemonic::Ud2 | Mnemonic::Jmp | Mnemonic::Call)
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
        let dest = (i.op_count() > 0 && i.op0_kind() == OpKind::Register).then(|| gpr(i.op0_register())).flatten();
        let value = match i.code() {
            Code::Mov_r32_imm32 => Some(u64::from(i.immediate32())),
            Code::Mov_rm64_imm32 if i.op0_kind() == OpKind::Register => Some(i.immediate32to64() as u64),
            Code::Lea_r64_m if i.memory_base() == Register::RIP => Some(i.memory_displacement64()),
            // `xor r32, r32` zeroes the register.
            Code::Xor_r32_rm32 | Code::Xor_rm32_r32 if i.op1_kind() == OpKind::Register && i.op0_register() == i.op1_register() => Some(0),
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
        let mut decoder = Decoder::with_ip(64, &code[..code.len().min(16)], ip, DecoderOptions::NONE);
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

/// Assigns roles to the functions holding the error sites; see the module documentation.
fn classify(image: &ElfImage<'_>, sites: &[ErrorSite], calls: &[CallTargets]) -> Result<Vec<Function>, NotIdentified> {
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
    for s in sites.iter().filter(|s| s.callee == reporter && s.lib.is_none_or(|l| l == ERR_LIB_SSL)) {
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
        .filter(|(_, p)| p.has(R_UNINITIALIZED) && p.has(R_HANDSHAKE_FAILURE) && p.has(R_BAD_LENGTH))
        .collect();
    let [(&write, write_profile)] = writes[..] else {
        return Err(NotIdentified::SslWrite { count: writes.len() });
    };
    let write_first = write_profile.min_line().unwrap_or(u32::MAX);
    let read_impls: Vec<(&u64, &Profile)> = profiles
        .iter()
        .filter(|(_, p)| p.has(R_UNINITIALIZED) && p.has(R_HANDSHAKE_FAILURE) && !p.has(R_BAD_LENGTH))
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
            let after_impl = impl_profile.max_line().is_some_and(|l| l < line);
            if after_impl && line < write_first && calls_directly(image, calls, start, read_impl) {
                reads.push((start, read_impl, line));
            }
        }
    }
    let [(read, read_impl, read_line)] = reads[..] else {
        return Err(NotIdentified::SslRead { count: reads.len() });
    };
    let function = |name, vaddr: u64, evidence: String| Function {
        name,
        vaddr,
        file_offset: image.file_offset(vaddr).unwrap_or_default(),
        evidence,
    };
    let mut write_reasons = write_profile.reasons.clone();
    write_reasons.sort_unstable();
    write_reasons.dedup();
    Ok(vec![
        function(
            FunctionName::SslWrite,
            write,
            format!(
                "ssl_lib.cc error sites with reasons {write_reasons:?} (lines {}..={}); direct call target with push rbp; mov rbp,rsp",
                write_first,
                write_profile.max_line().unwrap_or_default()
            ),
        ),
        function(
            FunctionName::SslRead,
            read,
            format!(
                "one ssl_lib.cc reason-66 site (line {read_line}) between ssl_read_impl@{read_impl:#x} and SSL_write; calls ssl_read_impl; direct call target with push rbp; mov rbp,rsp"
            ),
        ),
    ])
}

/// Whether the function at `start` calls (or tail-jumps to) `callee` within its first
/// [`MAX_READ_SPAN`] bytes, before the next function starts.
fn calls_directly(image: &ElfImage<'_>, calls: &[CallTargets], start: u64, callee: u64) -> bool {
    let Some(code) = image.bytes_at(start) else { return false };
    let code = &code[..code.len().min(MAX_READ_SPAN as usize)];
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut i = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut i);
        if i.is_invalid() {
            return false;
        }
        if i.ip() != start && calls.iter().any(|c| c.contains(i.ip())) && scan::has_prologue(&code[(i.ip() - start) as usize..]) {
            return false;
        }
        if (i.is_call_near() || i.is_jmp_near()) && i.op0_kind() == OpKind::NearBranch64 && i.near_branch64() == callee {
            return true;
        }
    }
    false
}
