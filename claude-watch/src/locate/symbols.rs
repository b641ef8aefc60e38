//! The symbol path: files that name their TLS functions (node's static OpenSSL, `libssl.so.3`,
//! unstripped BoringSSL builds).

use super::elf::{ElfImage, Table};
use super::{Function, FunctionName, Located, Method, TlsLibrary};

/// Functions named by defined symbols, when at least `SSL_write` and `SSL_read` are; `None`
/// otherwise (including when they are only imported).
#[must_use]
pub fn locate(image: &ElfImage<'_>) -> Option<Located> {
    locate_in(image, &[Table::Dynamic, Table::Static])
}

/// [`locate`] from the symbols of `tables` only (a name defined in an earlier one is taken
/// from it).
#[must_use]
pub fn locate_in(image: &ElfImage<'_>, tables: &[Table]) -> Option<Located> {
    let names: Vec<&str> = FunctionName::ALL.iter().map(|n| n.symbol()).collect();
    let (symbols, _) = image.function_symbols_in(&names, tables);
    let mut functions: Vec<Function> = symbols
        .iter()
        .filter_map(|sym| {
            let name = FunctionName::ALL
                .into_iter()
                .find(|n| n.symbol() == sym.name)?;
            let seg = image.segment_of(sym.vaddr).filter(|s| s.executable)?;
            Some(Function {
                name,
                vaddr: sym.vaddr,
                file_offset: sym.vaddr - seg.vaddr + seg.offset,
                evidence: format!("defined function symbol {} in {}", sym.name, sym.table),
            })
        })
        .collect();
    functions.sort_by_key(|f| f.name);
    let has = |n| functions.iter().any(|f| f.name == n);
    if !(has(FunctionName::SslWrite) && has(FunctionName::SslRead)) {
        return None;
    }
    // BoringSSL builds that keep symbols export BORINGSSL_* helpers; OpenSSL has none.
    let library = if image.has_dynamic_symbol_prefix("BORINGSSL_") {
        TlsLibrary::BoringSsl
    } else {
        TlsLibrary::OpenSsl
    };
    Some(Located {
        build_id: image.build_id.clone(),
        arch: image.arch,
        library,
        method: Method::Symbols,
        functions,
    })
}
