//! Where the pinned test clients (node, Bun builds, Claude Code releases) live.
//!
//! Pinned npm packages are installed by `cargo xtask setup` under
//! `$CLAUDE_WATCH_TEST_DEPS/npm/<dir>/node_modules/...` (see `tests/npm-deps.txt`);
//! `CLAUDE_WATCH_TEST_DEPS` defaults to `<workspace root>/.test-deps`.

use std::path::{Path, PathBuf};

/// Environment variable naming the directory of pinned test dependencies.
pub const TEST_DEPS_ENV: &str = "CLAUDE_WATCH_TEST_DEPS";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// The directory of pinned test dependencies (`$CLAUDE_WATCH_TEST_DEPS` or `<root>/.test-deps`).
pub fn test_deps_dir() -> PathBuf {
    std::env::var_os(TEST_DEPS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".test-deps"))
}

/// Directory of this crate's non-Rust assets (`tests/`: stand-in server, agent scripts).
pub fn assets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[track_caller]
fn required(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        is_executable(&path) || path.is_file(),
        "{what} not found at {} (run `cargo xtask setup`, or set {TEST_DEPS_ENV})",
        path.display()
    );
    path
}

/// The system `node` (its OpenSSL is statically linked and exports `SSL_read`/`SSL_write`).
#[track_caller]
pub fn node() -> PathBuf {
    find_on_path("node").expect("`node` is not on PATH")
}

/// A Python 3 interpreter (runs the stand-in server).
#[track_caller]
pub fn python3() -> PathBuf {
    ["/usr/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_executable(p))
        .or_else(|| find_on_path("python3"))
        .expect("`python3` is not installed")
}

/// The pinned Bun builds (npm `@oven/bun-linux-x64*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bun {
    /// `@oven/bun-linux-x64@1.4.5`.
    V1_4_5,
    /// `@oven/bun-linux-x64-baseline@1.3.11`.
    Baseline1_3_11,
    /// `@oven/bun-linux-x64@1.2.23`.
    V1_2_23,
}

impl Bun {
    /// Path of this build's `bun` executable; panics if it is not installed.
    #[track_caller]
    pub fn path(self) -> PathBuf {
        let (dir, package) = match self {
            Bun::V1_4_5 => ("bun-1.4.5", "bun-linux-x64"),
            Bun::Baseline1_3_11 => ("bun-baseline-1.3.11", "bun-linux-x64-baseline"),
            Bun::V1_2_23 => ("bun-1.2.23", "bun-linux-x64"),
        };
        let path = test_deps_dir()
            .join("npm")
            .join(dir)
            .join("node_modules/@oven")
            .join(package)
            .join("bin/bun");
        required(path, "pinned Bun")
    }
}

/// The pinned Claude Code releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaudeCode {
    /// Native (Bun single-file) executable 2.1.331.
    Native2_1_331,
    /// Native (Bun single-file) executable 2.1.197.
    Native2_1_197,
    /// `cli.js` 2.0.77, run by `node`.
    Node2_0_77,
}

impl ClaudeCode {
    /// The program and leading arguments that run this release; panics if it is not installed.
    #[track_caller]
    pub fn command(self) -> (PathBuf, Vec<PathBuf>) {
        let npm = test_deps_dir().join("npm");
        let native = |dir: &str| {
            npm.join(dir)
                .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude")
        };
        match self {
            ClaudeCode::Native2_1_331 => {
                (required(native("claude-2.1.331"), "Claude Code"), vec![])
            }
            ClaudeCode::Native2_1_197 => {
                (required(native("claude-2.1.197"), "Claude Code"), vec![])
            }
            ClaudeCode::Node2_0_77 => {
                let cli =
                    npm.join("claude-node-2.0.77/node_modules/@anthropic-ai/claude-code/cli.js");
                (node(), vec![required(cli, "Claude Code cli.js")])
            }
        }
    }
}

/// The latest pinned Claude Code release (the one the install tests run).
pub const LATEST: &str = "2.1.332";

/// The `npm install -g @anthropic-ai/claude-code@2.1.332` prefix: `bin/claude` is npm's symlink
/// to `lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe`, which the package's
/// postinstall hard-linked (or copied) from the platform package.
#[track_caller]
pub fn npm_global_prefix() -> PathBuf {
    let prefix = test_deps_dir().join("npm/claude-global-2.1.332");
    required(
        prefix.join("lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe"),
        "npm install -g @anthropic-ai/claude-code (with its postinstall)",
    );
    prefix
}

/// The platform package's native binary of the latest release (`claude`).
#[track_caller]
pub fn native_latest() -> PathBuf {
    required(
        test_deps_dir()
            .join("npm/claude-2.1.332/node_modules/@anthropic-ai/claude-code-linux-x64/claude"),
        "Claude Code 2.1.332",
    )
}

/// The musl build of the latest release (`@anthropic-ai/claude-code-linux-x64-musl`).
#[track_caller]
pub fn native_musl() -> PathBuf {
    required(
        test_deps_dir().join(
            "npm/claude-musl-2.1.332/node_modules/@anthropic-ai/claude-code-linux-x64-musl/claude",
        ),
        "Claude Code 2.1.332 (musl)",
    )
}

/// The TypeScript Agent SDK install (`node_modules` holding `@anthropic-ai/claude-agent-sdk` and
/// its platform package with the bundled Claude Code).
#[track_caller]
pub fn agent_sdk_modules() -> PathBuf {
    let modules = test_deps_dir().join("npm/agent-sdk-0.3.332/node_modules");
    required(
        modules.join("@anthropic-ai/claude-agent-sdk-linux-x64/claude"),
        "the TypeScript Agent SDK's bundled Claude Code",
    );
    modules
}

/// The Python Agent SDK (`claude-agent-sdk` from PyPI): the interpreter it was installed for and
/// the directory to put on `PYTHONPATH`.
#[track_caller]
pub fn python_agent_sdk() -> (PathBuf, PathBuf) {
    let dir = test_deps_dir().join("pip/claude-agent-sdk-0.2.189");
    required(
        dir.join("claude_agent_sdk/_bundled/claude"),
        "the Python Agent SDK's bundled Claude Code",
    );
    let python = std::fs::read_to_string(dir.join(".python")).unwrap_or_else(|e| {
        panic!(
            "{}/.python: {e} (run `cargo xtask setup --tests`)",
            dir.display()
        )
    });
    (PathBuf::from(python.trim()), dir)
}

/// Debian's own node 18, unpacked by `cargo xtask setup --tests` under `.test-deps/deb/node`:
/// it links the system's shared `libssl.so.3`.
#[track_caller]
pub fn debian_node_root() -> PathBuf {
    let root = test_deps_dir().join("deb/node");
    required(root.join("usr/bin/node"), "Debian's node (nodejs 18)");
    root
}

/// A Bun program that is not Claude Code: `source` written to `<dir>/app.js` and compiled with
/// the pinned Bun into the single-file executable `<dir>/<name>` (a Bun executable with a
/// `.bun` section, like Claude Code's). Returns the script and the executable.
#[track_caller]
pub fn compile_bun_program(dir: &Path, source: &str, name: &str) -> (PathBuf, PathBuf) {
    let app = dir.join("app.js");
    std::fs::write(&app, source).expect("write app.js");
    let compiled = dir.join(name);
    let status = std::process::Command::new(Bun::V1_4_5.path())
        .args(["build", "--compile"])
        .arg(&app)
        .arg("--outfile")
        .arg(&compiled)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run bun build --compile");
    assert!(status.success(), "bun build --compile {}", app.display());
    (app, compiled)
}
