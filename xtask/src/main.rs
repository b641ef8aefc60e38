//! Project tasks that a build script should not do: install the toolchain pieces, run
//! claude-watch as root, run the whole test suite (privileged tests included).
//!
//! `cargo xtask setup` is idempotent and fast when everything is in place; `run` and `test`
//! call it first, so on a fresh machine each of them is the only command needed.

mod bench;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Project tasks for claude-watch.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (Debian's llvm-22-dev, nightly rust-src, bpf-linker);
    /// with --tests also what the tests need (pinned npm clients, supervisor, curl).
    Setup {
        /// Also install the test dependencies.
        #[arg(long)]
        tests: bool,
    },
    /// Build claude-watch (release) and run it as root with the given arguments; without any,
    /// the daemon (`claude-watch daemon`). E.g. `cargo xtask run -- trace --json`.
    Run {
        /// Arguments for claude-watch.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install claude-watch on this host: binary, systemd unit, default configuration (kept if
    /// present), shell completions; then reload systemd if it runs.
    Install {
        /// Install under this root instead of / (for packaging or a dry look).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Set up, build, and run every test (unit and privileged integration tests) as root, then
    /// the benchmark's smoke run.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build claude-watch and measure it (probe overhead, capacity, latency, footprint,
    /// locate); writes BENCHMARKS.md. Needs root.
    Bench {
        /// A tiny run of every part (for CI): checks that each part yields numbers, not timings.
        #[arg(long)]
        smoke: bool,
    },
}

/// Debian packages bpf-linker is built against (see `shared/notes/toolchain.md`).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian packages the tests use: real clients and supervisors.
const TEST_PACKAGES: &[&str] = &[
    "curl",
    "openssl",
    "supervisor",
    "nodejs",
    "npm",
    "util-linux",
    "dbus",
    "systemd",
    // The benchmark's empty-probe floor.
    "bpftrace",
    // Draws the `episodes --svg` picture to PNG in tests/history.rs.
    "chromium",
];
/// The bpf-linker release that pairs with LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup { tests } => setup(&root, tests),
        Task::Install { root: dest } => {
            setup(&root, false)?;
            build(&root)?;
            install(&root, &dest)
        }
        Task::Run { mut args } => {
            setup(&root, false)?;
            build(&root)?;
            if args.is_empty() {
                args.push("daemon".into());
            }
            let bin = root.join("target/release/claude-watch");
            let status = as_root(&bin, &args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            setup(&root, true)?;
            build(&root)?;
            let mut cmd = as_root(Path::new("cargo"), &[]);
            cmd.args(["test", "--release"])
                .args(&args)
                .current_dir(&root);
            cmd.env("CLAUDE_WATCH_BIN", root.join("target/release/claude-watch"));
            cmd.env("CLAUDE_WATCH_TEST_DEPS", root.join(".test-deps"));
            run(cmd)?;
            if args.is_empty() {
                // The benchmark's smoke run: every part runs and yields numbers (none is timed).
                bench::run(&root, true)?;
            }
            Ok(())
        }
        Task::Bench { smoke } => bench::run(&root, smoke),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A command run as root: directly when we are root, through `sudo -E` otherwise.
fn as_root(program: &Path, args: &[String]) -> Command {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program).args(args);
        cmd
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn build(root: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("cargo");
    // The default members (everything but the eBPF crate, which only builds for BPF), as
    // `cargo test` sees them: both resolve the same features, neither rebuilds the other's work.
    cmd.args(["build", "--release"]).current_dir(root);
    cmd.env("PATH", path_with_cargo_bin());
    run(cmd)
}

fn setup(root: &Path, tests: bool) -> anyhow::Result<()> {
    let mut packages = BUILD_PACKAGES.to_vec();
    if tests {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    apt_install(&packages)?;
    rust_src()?;
    bpf_linker()?;
    if tests {
        npm_deps(root)?;
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"install ok installed"))
        })
        .collect();
    // A binary that is already on PATH (node from another source, say) counts as installed.
    let missing: Vec<&str> = missing
        .into_iter()
        .filter(|p| {
            !(matches!(*p, "nodejs" | "npm")
                && on_path(if *p == "nodejs" { "node" } else { "npm" }))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(as_root_cmd("apt-get", &["update", "-qq"]))?;
    // Another apt may hold the lock (engineers share machines): wait for it, not fail.
    let mut args = vec![
        "-o",
        "DPkg::Lock::Timeout=600",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
    ];
    args.extend(&missing);
    let mut cmd = as_root_cmd("apt-get", &args);
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    run(cmd)
}

fn as_root_cmd(program: &str, args: &[&str]) -> Command {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    as_root(Path::new(program), &args)
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (is the nightly toolchain installed?)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    run(cmd)
}

fn path_with_cargo_bin() -> String {
    let home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cargo",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    format!("{home}/bin:{}", std::env::var("PATH").unwrap_or_default())
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once)"
    );
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    cmd.env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22");
    cmd.env(
        "PATH",
        format!("/usr/lib/llvm-22/bin:{}", path_with_cargo_bin()),
    );
    run(cmd)
}

/// Copies the binary, unit, configuration and completions under `dest`.
fn install(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let bin = root.join("target/release/claude-watch");
    let place = |rel: &str| dest.join(rel.trim_start_matches('/'));
    let copy = |from: &Path, to: &Path, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(to.parent().expect("an absolute path"))?;
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
        eprintln!("xtask: installed {}", to.display());
        Ok(())
    };
    copy(&bin, &place("/usr/local/bin/claude-watch"), 0o755)?;
    copy(
        &root.join("packaging/claude-watch.service"),
        &place("/etc/systemd/system/claude-watch.service"),
        0o644,
    )?;
    let config = place("/etc/claude-watch/config.toml");
    if config.exists() {
        eprintln!("xtask: kept the existing {}", config.display());
    } else {
        copy(
            &root.join("claude-watch/config/default.toml"),
            &config,
            0o644,
        )?;
    }
    let completions = Command::new(&bin)
        .args(["completions", "bash"])
        .output()
        .context("generating completions")?;
    let bash = place("/usr/share/bash-completion/completions/claude-watch");
    std::fs::create_dir_all(bash.parent().expect("absolute"))?;
    std::fs::write(&bash, completions.stdout)?;
    eprintln!("xtask: installed {}", bash.display());
    if dest == Path::new("/") && Path::new("/run/systemd/system").exists() {
        run(as_root_cmd("systemctl", &["daemon-reload"]))?;
        eprintln!("xtask: next: systemctl enable --now claude-watch && claude-watch status");
    } else {
        eprintln!(
            "xtask: systemd is not running here; start it with `claude-watch daemon` (as root)"
        );
    }
    Ok(())
}

/// Installs the pinned npm clients listed in `tests/npm-deps.txt` under `.test-deps/npm/`.
fn npm_deps(root: &Path) -> anyhow::Result<()> {
    let list = root.join("tests/npm-deps.txt");
    let text =
        std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((dir, package)) = line.split_once(char::is_whitespace) else {
            bail!(
                "{}: bad line {line:?}: want `<dir> <package@version>`",
                list.display()
            );
        };
        let prefix = root.join(".test-deps/npm").join(dir);
        let marker = prefix.join(".installed");
        if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == package.trim()) {
            continue;
        }
        eprintln!("xtask: npm install {package} into {}", prefix.display());
        std::fs::create_dir_all(&prefix)?;
        let mut cmd = Command::new("npm");
        cmd.args([
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--silent",
            "--prefix",
        ])
        .arg(&prefix)
        .arg(package.trim());
        run(cmd)?;
        std::fs::write(&marker, package.trim())?;
    }
    Ok(())
}
