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
    /// See it work in one command (root): sets up, builds, then three real Claude Code agents
    /// in units of a real systemd, the API stand-in on 127.0.0.1 and the daemon; one agent's
    /// session latches and is recovered, one is throttled on Opus, one stays healthy, while
    /// `status` and `episodes` are shown. Everything is cleaned up after (about 2 minutes).
    Demo,
    /// Set up, build, and run every test (unit and privileged integration tests) as root, then
    /// the benchmark's smoke run.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build claude-watch and measure it (probe overhead, capacity, latency, footprint,
    /// locate, exec burst, fleet soak); writes BENCHMARKS.md. Needs root.
    Bench {
        /// A tiny run of every part (for CI): checks that each part yields numbers, not timings.
        #[arg(long)]
        smoke: bool,
        /// Length of part 8, the fleet soak, in minutes (0 skips it; default 30, smoke 20 s).
        #[arg(long, value_name = "N")]
        soak_minutes: Option<u32>,
        /// Run only these parts, e.g. `8` or `1,2,4b`; the report then goes to
        /// `target/BENCHMARKS-partial.md`, never over BENCHMARKS.md.
        #[arg(long, value_name = "PARTS")]
        only: Option<String>,
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
    // The per-user bus (dbus.socket/dbus.service of user managers) of the test bed's
    // `user@<uid>.service` (tests/tests/supervisors.rs, hostile.rs).
    "dbus-user-session",
    // The benchmark's empty-probe floor, and its programs' run-time statistics.
    "bpftrace",
    "bpftool",
    // What the daemon opens and reads while attacked (tests/tests/hostile.rs).
    "strace",
    // Draws the `episodes --svg` picture to PNG in tests/history.rs.
    "chromium",
    // promtool: the shipped alert rules' unit tests (tests/rules.rs); Prometheus and
    // Alertmanager themselves: the fleet of tests/fleet.rs.
    "prometheus",
    "prometheus-alertmanager",
    // Where users run Claude Code: the musl build's loader, a Docker engine (and a busybox
    // userland for the test image), and what Debian's own node 18 links (its shared libssl.so.3).
    "musl",
    "docker.io",
    // Podman's Docker-compatible API service (tests/tests/docker.rs); runs containers with
    // docker.io's runc.
    "podman",
    "busybox-static",
    "libuv1",
    "libc-ares2",
    "libicu72",
    "libnghttp2-14",
    "libbrotli1",
    // arm64: the emulated ground truth of tests/tests/arm64.rs, and the aarch64 cross build.
    "qemu-user",
    "gdb-multiarch",
    "libc6-arm64-cross",
    "gcc-aarch64-linux-gnu",
    // Its C runtime (Scrt1.o, crti.o), only recommended by gcc-aarch64-linux-gnu.
    "libc6-dev-arm64-cross",
];
/// Debian packages unpacked (not installed) into `.test-deps/deb/node`: Debian's own node 18,
/// which links the system's shared `libssl.so.3` (it cannot be installed beside the machine's
/// node 20); its externalized builtins come along.
const DEBIAN_NODE: &[&str] = &[
    "nodejs",
    "libnode108",
    "node-undici",
    "node-acorn",
    "node-cjs-module-lexer",
];
/// The arm64 target `cargo xtask test` cross-builds the workspace for.
const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";
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
        Task::Demo => {
            setup(&root, true)?;
            build(&root)?;
            let mut cmd = as_root(Path::new("cargo"), &[]);
            cmd.args([
                "test",
                "--release",
                "-q",
                "-p",
                "claude-watch-tests",
                "--test",
                "demo",
                "--",
                "--nocapture",
            ])
            .current_dir(&root);
            cmd.env("CLAUDE_WATCH_BIN", root.join("target/release/claude-watch"));
            cmd.env("CLAUDE_WATCH_TEST_DEPS", root.join(".test-deps"));
            run(cmd)
        }
        Task::Test { args } => {
            setup(&root, true)?;
            build(&root)?;
            cross_build_arm64(&root)?;
            let mut cmd = as_root(Path::new("cargo"), &[]);
            // Every suite runs even when one fails, so one run reports every failure.
            cmd.args(["test", "--release", "--no-fail-fast"])
                .args(&args)
                .current_dir(&root);
            cmd.env("CLAUDE_WATCH_BIN", root.join("target/release/claude-watch"));
            cmd.env("CLAUDE_WATCH_TEST_DEPS", root.join(".test-deps"));
            run(cmd)?;
            if args.is_empty() {
                // The benchmark's smoke run: every part runs and yields numbers (none is timed).
                bench::run(
                    &root,
                    &bench::Options {
                        smoke: true,
                        ..bench::Options::default()
                    },
                )?;
            }
            Ok(())
        }
        Task::Bench {
            smoke,
            soak_minutes,
            only,
        } => bench::run(
            &root,
            &bench::Options {
                smoke,
                soak_minutes,
                only,
            },
        ),
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
        pip_deps(root)?;
        debian_node(root)?;
        arm64_musl(root)?;
        rust_target(ARM64_TARGET)?;
    }
    Ok(())
}

/// Cross-builds claude-watch (with its eBPF object built for `bpf_target_arch = "aarch64"` by
/// build.rs) for arm64, so nothing x86-only creeps in, and checks the result is an arm64 ELF.
fn cross_build_arm64(root: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut cmd = Command::new("cargo");
    cmd.args([
        "build",
        "--release",
        "--target",
        ARM64_TARGET,
        "-p",
        "claude-watch",
    ])
    .current_dir(root);
    cmd.env("PATH", path_with_cargo_bin());
    run(cmd)?;
    let bin = root
        .join("target")
        .join(ARM64_TARGET)
        .join("release/claude-watch");
    let mut header = [0u8; 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open(&bin).with_context(|| format!("opening {}", bin.display()))?,
        &mut header,
    )
    .with_context(|| format!("reading {}", bin.display()))?;
    // e_machine (offset 18, little-endian) is EM_AARCH64 = 183.
    if header[18..20] != 183u16.to_le_bytes() {
        bail!("{} is not an arm64 ELF", bin.display());
    }
    // It runs (emulated, with Debian's arm64 glibc).
    let mut cmd = Command::new("qemu-aarch64");
    cmd.args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&bin)
        .arg("--version");
    run(cmd)?;
    eprintln!(
        "xtask: cross-built {} for {ARM64_TARGET} in {:.0?}",
        bin.display(),
        started.elapsed()
    );
    Ok(())
}

/// Adds a standard library target to the default toolchain (rustup's own server is reachable).
fn rust_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {target} standard library (rustup target add)");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", target]);
    run(cmd)
}

/// Debian has `musl` only for the host architecture; the arm64 musl builds of Claude Code need
/// `/lib/ld-musl-aarch64.so.1` (and Alpine's name for it, `libc.musl-aarch64.so.1`) under the
/// sysroot qemu-user is given. Extracts Debian's `musl:arm64` package (downloaded, not
/// installed: `dpkg --add-architecture arm64` only makes apt list arm64 packages) into
/// `.test-deps/arm64-musl`.
fn arm64_musl(root: &Path) -> anyhow::Result<()> {
    let dest = root.join(".test-deps/arm64-musl");
    if dest.join("lib/ld-musl-aarch64.so.1").exists()
        && dest.join("lib/libc.musl-aarch64.so.1").exists()
    {
        return Ok(());
    }
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .context("running dpkg")?;
    if !String::from_utf8_lossy(&foreign.stdout)
        .lines()
        .any(|l| l.trim() == "arm64")
    {
        eprintln!("xtask: dpkg --add-architecture arm64 (to download musl:arm64)");
        run(as_root_cmd("dpkg", &["--add-architecture", "arm64"]))?;
        run(as_root_cmd("apt-get", &["update", "-qq"]))?;
    }
    let download = root.join(".test-deps/arm64-musl.download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", "-qq", "musl:arm64"])
        .current_dir(&download);
    if run(cmd).is_err() {
        // Lists older than the arm64 architecture: refresh once and retry.
        run(as_root_cmd("apt-get", &["update", "-qq"]))?;
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-qq", "musl:arm64"])
            .current_dir(&download);
        run(cmd)?;
    }
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download musl:arm64 left no .deb")?;
    let _ = std::fs::remove_dir_all(&dest);
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(&deb).arg(&dest);
    run(cmd)?;
    std::os::unix::fs::symlink(
        "ld-musl-aarch64.so.1",
        dest.join("lib/libc.musl-aarch64.so.1"),
    )?;
    std::fs::remove_dir_all(&download)?;
    eprintln!("xtask: extracted musl:arm64 into {}", dest.display());
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
            &root.join("claude-watch-core/config/default.toml"),
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
///
/// A line is `<dir> <package@version> [global] [force]`: `global` installs the way users do
/// (`npm install -g --prefix <dir>`, install scripts run: Claude Code's postinstall links its
/// native binary as `bin/claude.exe`); `force` installs a package built for another libc (the
/// musl build). Other packages are installed without their scripts.
fn npm_deps(root: &Path) -> anyhow::Result<()> {
    let list = root.join("tests/npm-deps.txt");
    let text =
        std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut words = line.split_whitespace();
        let (Some(dir), Some(package)) = (words.next(), words.next()) else {
            bail!(
                "{}: bad line {line:?}: want `<dir> <package@version> [global] [force]`",
                list.display()
            );
        };
        let flags: Vec<&str> = words.collect();
        if let Some(bad) = flags.iter().find(|f| !matches!(**f, "global" | "force")) {
            bail!("{}: unknown flag {bad:?} in {line:?}", list.display());
        }
        let prefix = root.join(".test-deps/npm").join(dir);
        let marker = prefix.join(".installed");
        let wanted = if flags.is_empty() { package } else { line };
        if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted) {
            continue;
        }
        eprintln!("xtask: npm install {line} into {}", prefix.display());
        std::fs::create_dir_all(&prefix)?;
        let mut cmd = Command::new("npm");
        cmd.args(["install", "--no-audit", "--no-fund", "--silent"]);
        if flags.contains(&"global") {
            cmd.args(["--global", "--foreground-scripts"]);
        } else {
            cmd.arg("--ignore-scripts");
        }
        // Another libc's or cpu's build (npm says EBADPLATFORM; --cpu/--os do not lift that for
        // a package named directly): install it anyway, it is only read, emulated or run here
        // with its own loader.
        let name = package.rsplit_once('@').map_or(package, |(n, _)| n);
        if flags.contains(&"force")
            || [
                "-linux-arm64",
                "-linux-arm64-musl",
                "-linux-aarch64",
                "-linux-aarch64-musl",
            ]
            .iter()
            .any(|suffix| name.ends_with(suffix))
        {
            cmd.arg("--force");
        }
        cmd.arg("--prefix").arg(&prefix).arg(package);
        run(cmd)?;
        std::fs::write(&marker, wanted)?;
    }
    Ok(())
}

/// Installs the pinned PyPI packages listed in `tests/pip-deps.txt` (`<dir> <requirement>`)
/// under `.test-deps/pip/<dir>` with the `python3` on PATH, which is recorded in `<dir>/.python`
/// so the tests run them with the interpreter they were built for.
fn pip_deps(root: &Path) -> anyhow::Result<()> {
    let list = root.join("tests/pip-deps.txt");
    let text =
        std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let python = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v python3"])
            .output()
            .context("looking for python3")?
            .stdout,
    )?
    .trim()
    .to_owned();
    if python.is_empty() {
        bail!("python3 is not on PATH");
    }
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((dir, requirement)) = line.split_once(char::is_whitespace) else {
            bail!(
                "{}: bad line {line:?}: want `<dir> <requirement>`",
                list.display()
            );
        };
        let target = root.join(".test-deps/pip").join(dir);
        let marker = target.join(".installed");
        if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == line) {
            continue;
        }
        eprintln!("xtask: pip install {requirement} into {}", target.display());
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir_all(&target)?;
        let mut cmd = Command::new(&python);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
        ])
        .arg(&target)
        .arg(requirement.trim());
        run(cmd)?;
        std::fs::write(target.join(".python"), &python)?;
        std::fs::write(&marker, line)?;
    }
    Ok(())
}

/// Unpacks Debian's own node (see [`DEBIAN_NODE`]) into `.test-deps/deb/node`: the highest
/// Debian build (`+dfsg`) of each package, whatever other node the machine has.
fn debian_node(root: &Path) -> anyhow::Result<()> {
    let dest = root.join(".test-deps/deb/node");
    let marker = dest.join(".installed");
    let wanted = DEBIAN_NODE.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted) {
        return Ok(());
    }
    let debs = dest.join("debs");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&debs)?;
    let mut specs = Vec::new();
    for package in DEBIAN_NODE {
        let madison = |update: bool| -> anyhow::Result<Option<String>> {
            if update {
                run(as_root_cmd("apt-get", &["update", "-qq"]))?;
            }
            let out = Command::new("apt-cache")
                .args(["madison", package])
                .output()
                .context("running apt-cache")?;
            // `nodejs | 18.20.4+dfsg-1~deb12u3 | http://deb.debian.org/... Packages`
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split('|').nth(1).map(str::trim))
                .find(|v| !v.contains("nodesource"))
                .map(str::to_owned))
        };
        let version = match madison(false)? {
            Some(v) => v,
            None => madison(true)?
                .with_context(|| format!("Debian has no {package} (apt-cache madison)"))?,
        };
        specs.push(format!("{package}={version}"));
    }
    eprintln!("xtask: unpacking Debian's node into {}", dest.display());
    let mut cmd = Command::new("apt-get");
    cmd.arg("download").args(&specs).current_dir(&debs);
    run(cmd)?;
    for deb in std::fs::read_dir(&debs)? {
        let deb = deb?.path();
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-x").arg(&deb).arg(&dest);
        run(cmd)?;
    }
    std::fs::remove_dir_all(&debs)?;
    std::fs::write(&marker, wanted)?;
    Ok(())
}
