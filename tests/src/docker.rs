//! A real Docker engine for tests: Debian's `dockerd`, started by the test when none answers
//! (and stopped by it), and an image imported from a root filesystem made here (busybox, the
//! glibc libraries Claude Code needs, a Claude Code binary): no registry, no pulls. Containers
//! use the host network, so an agent inside reaches the stand-in on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ChildGuard, ScratchDir};
use crate::wait::wait_until;

/// The engine's API socket (Docker's default, which claude-watch asks by default too).
pub const SOCKET: &str = "/var/run/docker.sock";

/// How long dockerd may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The Docker engine, for as long as a test needs it.
pub struct Engine {
    /// dockerd, when this test started it (stopped on drop); `None` when one was running.
    dockerd: Option<ChildGuard>,
}

/// Runs the `docker` client with `args` against [`SOCKET`].
pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{SOCKET}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

fn answers() -> bool {
    docker(&["version", "--format", "{{.Server.Version}}"])
        .status
        .success()
}

impl Engine {
    /// Uses the engine that answers on [`SOCKET`], or starts Debian's dockerd (no bridge, no
    /// iptables: containers use the host network).
    #[track_caller]
    pub fn start() -> Self {
        if answers() {
            return Self { dockerd: None };
        }
        let mut command = Command::new("dockerd");
        command.args([
            "--host",
            &format!("unix://{SOCKET}"),
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ]);
        let mut dockerd = ChildGuard::spawn("dockerd", &mut command);
        wait_until(START_TIMEOUT, "dockerd to answer", || {
            if dockerd.has_exited() {
                panic!("dockerd exited:\n{}", dockerd.stderr_tail().join("\n"));
            }
            answers().then_some(())
        });
        Self {
            dockerd: Some(dockerd),
        }
    }

    /// An image `name` whose root filesystem holds busybox (as `/bin/sh`), the glibc libraries
    /// the native Claude Code links, and `claude` at `/usr/local/bin/claude`; imported once.
    #[track_caller]
    pub fn claude_image(&self, name: &str, claude: &Path) -> String {
        if docker(&["image", "inspect", name]).status.success() {
            return name.to_owned();
        }
        let (root, tar) = claude_rootfs_tar(claude);
        let out = docker(&["import", tar.to_str().expect("utf-8"), name]);
        let _ = std::fs::remove_file(&tar);
        drop(root);
        assert!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        name.to_owned()
    }
}

/// A root filesystem (busybox as `/bin/sh`, the glibc libraries the native Claude Code links,
/// `claude` at `/usr/local/bin/claude`) as a tar file next to its scratch directory.
#[track_caller]
fn claude_rootfs_tar(claude: &Path) -> (ScratchDir, PathBuf) {
    let root = ScratchDir::new("claude-watch-rootfs");
    let put = |from: &Path, to: &str| {
        let dest = root.path().join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("a parent"))
            .unwrap_or_else(|e| panic!("mkdir for {to}: {e}"));
        let from =
            std::fs::canonicalize(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        if std::fs::hard_link(&from, &dest).is_err() {
            std::fs::copy(&from, &dest)
                .unwrap_or_else(|e| panic!("copy {} to {to}: {e}", from.display()));
        }
    };
    put(Path::new("/bin/busybox"), "/bin/busybox");
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).expect("sh link");
    for lib in [
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ] {
        put(
            &Path::new("/lib/x86_64-linux-gnu").join(lib),
            &format!("/lib/x86_64-linux-gnu/{lib}"),
        );
    }
    put(
        Path::new("/lib64/ld-linux-x86-64.so.2"),
        "/lib64/ld-linux-x86-64.so.2",
    );
    put(claude, "/usr/local/bin/claude");
    for dir in ["root", "tmp", "etc"] {
        std::fs::create_dir_all(root.path().join(dir)).expect("mkdir");
    }
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .expect("passwd");
    let tar = root.path().with_extension("tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of the root filesystem failed");
    (root, tar)
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            dockerd.terminate(Duration::from_secs(20));
        }
    }
}

/// Which engine's client a [`Container`] is handled with.
#[derive(Clone, Copy, Debug)]
enum Client {
    Docker,
    Podman,
}

impl Client {
    fn run(&self, args: &[&str]) -> std::process::Output {
        match self {
            Client::Docker => docker(args),
            Client::Podman => podman(args),
        }
    }
}

/// A container, removed (with `docker rm -f` or `podman rm -f`) on drop.
pub struct Container {
    name: String,
    client: Client,
}

impl Container {
    /// Takes charge of the Docker container `name` (started by the caller).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            client: Client::Docker,
        }
    }

    /// Takes charge of the Podman container `name` (the service `_podman` answers for it).
    pub fn podman(name: &str, _podman: &Podman) -> Self {
        Self {
            name: name.to_owned(),
            client: Client::Podman,
        }
    }

    /// The `docker run` arguments that start `image` as this container on the host network,
    /// interactive (stdin kept open), with `env`; the caller appends the command.
    pub fn run_args(&self, image: &str, env: &[(&str, String)]) -> Vec<String> {
        let mut args = vec![
            "run".to_owned(),
            "-i".to_owned(),
            "--rm".to_owned(),
            "--name".to_owned(),
            self.name.clone(),
            "--network".to_owned(),
            "host".to_owned(),
        ];
        for (k, v) in env {
            args.push("-e".to_owned());
            args.push(format!("{k}={v}"));
        }
        args.push(image.to_owned());
        args
    }

    /// Starts `image` detached as this container on the host network with `args` (options such
    /// as `-e`, `-v`, `--stop-timeout`) before the image and `command` after it, no `--rm` (so
    /// that it can be restarted).
    #[track_caller]
    pub fn run_detached(&self, image: &str, args: &[String], command: &[&str]) {
        let mut all: Vec<String> = ["run", "-d", "--name", &self.name, "--network", "host"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if let Client::Podman = self.client {
            // Podman raises the open-files and process limits past the hard limits by default,
            // which needs CAP_SYS_RESOURCE (not granted where these tests run): keep this
            // process's open-files limits, and a modest process limit (runc was refused even the
            // host's own here).
            let (soft, hard) = limits(libc::RLIMIT_NOFILE);
            all.extend([
                "--ulimit".into(),
                format!("nofile={soft}:{hard}"),
                "--ulimit".into(),
                "nproc=4096:4096".into(),
            ]);
        }
        all.extend(args.iter().cloned());
        all.push(image.to_owned());
        all.extend(command.iter().map(|s| (*s).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = self.client.run(&all);
        assert!(
            out.status.success(),
            "run {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `docker inspect -f <format>` of the container, trimmed.
    #[track_caller]
    pub fn inspect(&self, format: &str) -> String {
        let out = self.client.run(&["inspect", "-f", format, &self.name]);
        assert!(
            out.status.success(),
            "inspect {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The full container id.
    #[track_caller]
    pub fn id(&self) -> String {
        self.inspect("{{.Id}}")
    }

    /// The host pid of the container's main process, once it runs.
    #[track_caller]
    pub fn main_pid(&self) -> u32 {
        wait_until(Duration::from_secs(30), "the container to run", || {
            let out = self
                .client
                .run(&["inspect", "-f", "{{.State.Pid}}", &self.name]);
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&p| p > 0)
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.client.run(&["rm", "-f", &self.name]);
    }
}

/// The engine's events of container `name` from `since` to `until` (Unix seconds), oldest first,
/// as `(time in ms since the epoch, action)` (`kill`, `die`, `stop`, `start`, `restart`...).
#[track_caller]
pub fn container_events(name: &str, since: u64, until: u64) -> Vec<(u64, String)> {
    let out = docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.TimeNano}} {{.Action}}",
    ]);
    assert!(
        out.status.success(),
        "docker events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (nanos, action) = l.split_once(' ')?;
            Some((nanos.parse::<u64>().ok()? / 1_000_000, action.to_owned()))
        })
        .collect()
}

/// The `docker` client program, with [`SOCKET`] as its host.
pub fn client() -> (PathBuf, Vec<(&'static str, String)>) {
    (
        PathBuf::from("docker"),
        vec![("DOCKER_HOST", format!("unix://{SOCKET}"))],
    )
}

/// This process's `(soft, hard)` limits of `resource`, as `--ulimit` takes them (`-1`: none).
fn limits(resource: libc::__rlimit_resource_t) -> (String, String) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(resource, &raw mut limit) };
    assert_eq!(rc, 0, "getrlimit");
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "-1".to_owned()
        } else {
            v.to_string()
        }
    };
    (show(limit.rlim_cur), show(limit.rlim_max))
}

/// Runs the `podman` client with `args` (cgroupfs manager, events in a file: no systemd here).
pub fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(["--cgroup-manager=cgroupfs", "--events-backend=file"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e}"))
}

/// A rootful Podman API service (`podman system service`) on a socket of its own, stopped on
/// drop: the Docker-compatible API that claude-watch's `docker` supervisor speaks.
pub struct Podman {
    service: ChildGuard,
    socket: PathBuf,
}

impl Podman {
    /// Starts the service on `/run/claude-watch-test-podman-<pid>.sock`.
    #[track_caller]
    pub fn start() -> Self {
        let socket = PathBuf::from(format!(
            "/run/claude-watch-test-podman-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket);
        let mut command = Command::new("podman");
        command
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "system",
                "service",
                "--time=0",
            ])
            .arg(format!("unix://{}", socket.display()));
        let mut service = ChildGuard::spawn("podman system service", &mut command);
        wait_until(START_TIMEOUT, "the podman service socket", || {
            if service.has_exited() {
                panic!(
                    "podman system service exited:\n{}",
                    service.stderr_tail().join("\n")
                );
            }
            std::os::unix::net::UnixStream::connect(&socket)
                .is_ok()
                .then_some(())
        });
        Self { service, socket }
    }

    /// The service's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The image of [`Engine::claude_image`], imported into Podman's store once.
    #[track_caller]
    pub fn claude_image(&self, name: &str, claude: &Path) -> String {
        let local = format!("localhost/{name}");
        if podman(&["image", "exists", &local]).status.success() {
            return local;
        }
        let (root, tar) = claude_rootfs_tar(claude);
        let out = podman(&["import", tar.to_str().expect("utf-8"), &local]);
        let _ = std::fs::remove_file(&tar);
        drop(root);
        assert!(
            out.status.success(),
            "podman import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        local
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.service.terminate(Duration::from_secs(10));
        let _ = std::fs::remove_file(&self.socket);
    }
}
