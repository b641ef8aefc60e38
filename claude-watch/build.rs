//! Builds the eBPF programs (`claude-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, where `capture::probes` embeds it. Needs `bpf-linker` and nightly `rust-src`
//! (`cargo xtask setup` installs both).
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "claude-ebpf")
        .ok_or_else(|| anyhow!("claude-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // aya-build replays every line the inner cargo prints as a `warning:` of this crate (about
    // 40 `Compiling ...` lines per build); quiet, the inner cargo prints only what is wrong.
    // SAFETY: a build script is single-threaded here; the variable is read by the child cargo.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
