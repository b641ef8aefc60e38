//! Renderings of a [`Located`] for people and for programs.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::Located;

/// Several lines: the file, build id, architecture, library, method, then one block per function.
#[must_use]
pub fn human(path: &Path, located: &Located) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "file:     {}", path.display());
    let _ = writeln!(
        out,
        "build id: {}",
        located.build_id.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(out, "arch:     {}", located.arch);
    let _ = writeln!(out, "library:  {}", located.library);
    let _ = writeln!(out, "method:   {}", located.method);
    for f in &located.functions {
        let _ = writeln!(
            out,
            "{:<13} vaddr {:#x}  file offset {:#x}",
            f.name.symbol(),
            f.vaddr,
            f.file_offset
        );
        let _ = writeln!(out, "              evidence: {}", f.evidence);
    }
    out
}

/// One JSON object: `build_id`, `arch` (`x86-64` or `arm64`), `library`, `method`, and
/// `functions` mapping each C name to
/// `{"vaddr": N, "file_offset": N, "evidence": "..."}`.
#[must_use]
pub fn json(located: &Located) -> Value {
    let functions: Map<String, Value> = located
        .functions
        .iter()
        .map(|f| {
            (
                f.name.symbol().to_owned(),
                json!({ "vaddr": f.vaddr, "file_offset": f.file_offset, "evidence": f.evidence }),
            )
        })
        .collect();
    json!({
        "build_id": located.build_id,
        "arch": located.arch.to_string(),
        "library": located.library.to_string(),
        "method": located.method.to_string(),
        "functions": functions,
    })
}
