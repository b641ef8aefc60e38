//! Environment: binaries, scripts, the scratch directory, the server.

use super::*;

/// The ring buffer `claude-watch trace` runs with in the bench, MiB: claude-watch's default
/// (`capture::probes::DEFAULT_RING_BYTES`, and `[daemon] ring_mib`).
pub(super) const RING_MIB: u32 = 4;

/// Paths the bench uses, and a scratch directory removed at the end.
pub(super) struct BenchEnv {
    pub(super) claude_watch: PathBuf,
    pub(super) node: PathBuf,
    pub(super) bun: PathBuf,
    pub(super) claude: PathBuf,
    pub(super) scripts: PathBuf,
    /// `tests/`: the stand-in API and the light agent.
    pub(super) tests: PathBuf,
    pub(super) scratch: Scratch,
}

/// A temporary directory removed when dropped.
pub(super) struct Scratch(pub(super) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl BenchEnv {
    pub(super) fn new(root: &Path) -> anyhow::Result<Self> {
        let deps = std::env::var_os("CLAUDE_WATCH_TEST_DEPS")
            .map_or_else(|| root.join(".test-deps"), PathBuf::from);
        let node = which("node").context("`node` is not on PATH")?;
        let node = std::fs::canonicalize(&node).unwrap_or(node);
        let bun = deps.join("npm/bun-1.4.5/node_modules/@oven/bun-linux-x64/bin/bun");
        let claude =
            deps.join("npm/claude-2.1.331/node_modules/@anthropic-ai/claude-code-linux-x64/claude");
        for (what, path) in [("Bun 1.4.5", &bun), ("Claude Code 2.1.331", &claude)] {
            if !path.is_file() {
                bail!(
                    "{what} not found at {} (run `cargo xtask setup --tests`, or set CLAUDE_WATCH_TEST_DEPS)",
                    path.display()
                );
            }
        }
        let scratch =
            std::env::temp_dir().join(format!("claude-watch-bench-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let scratch = Scratch(scratch);
        let dir = &scratch.0;
        let mut openssl = Command::new("openssl");
        openssl
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(Stdio::null());
        crate::run(openssl).context("making the server's self-signed certificate")?;
        // The server runs from a copy of node (another inode): probes on node stay out of it.
        std::fs::copy(&node, dir.join("node-server")).context("copying node for the server")?;
        Ok(Self {
            claude_watch: root.join("target/release/claude-watch"),
            node,
            bun,
            claude,
            scripts: root.join("bench"),
            tests: root.join("tests"),
            scratch,
        })
    }

    /// Starts `bench/server.mjs` with `workers` processes (`raw`: the bare TLS server of the
    /// `blast` client) and waits for its port.
    pub(super) fn server(&self, workers: u32, raw: bool) -> anyhow::Result<Server> {
        let dir = &self.scratch.0;
        let mut cmd = Command::new(dir.join("node-server"));
        cmd.env("RAW", if raw { "1" } else { "0" });
        cmd.arg(self.scripts.join("server.mjs"))
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .arg(workers.to_string());
        let proc = Proc::spawn("server", &mut cmd, true)?;
        let line = proc.wait_stdout(|l| l.contains("port"), Duration::from_secs(20))?;
        let port = serde_json::from_str::<Value>(&line.text)?["port"]
            .as_u64()
            .context("server printed no port")?;
        Ok(Server {
            port: u16::try_from(port)?,
            _proc: proc,
        })
    }

    /// A client command (`bench/client.mjs MODE PORT ARGS...`) under node or Bun.
    pub(super) fn client(&self, client: Client, mode: &str, port: u16, args: &[String]) -> Command {
        let program = match client {
            Client::Node => &self.node,
            Client::Bun => &self.bun,
        };
        let mut cmd = Command::new(program);
        cmd.arg(self.scripts.join("client.mjs"))
            .arg(mode)
            .arg(port.to_string())
            .args(args)
            .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
            .env("BUN_CONFIG_NO_TELEMETRY", "1");
        for proxy in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(proxy);
        }
        cmd
    }

    /// Runs a client to the end and returns its last JSON line.
    pub(super) fn run_client(
        &self,
        client: Client,
        mode: &str,
        port: u16,
        args: &[String],
    ) -> anyhow::Result<Value> {
        let mut cmd = self.client(client, mode, port, args);
        let mut proc = Proc::spawn("client", &mut cmd, true)?;
        let lines = proc.finish(Duration::from_secs(120))?;
        let last = lines
            .last()
            .with_context(|| format!("client {mode} printed nothing"))?;
        serde_json::from_str(&last.text).with_context(|| format!("client output {:?}", last.text))
    }

    /// Starts `claude-watch trace --binary BINARY` (JSON lines on stdout when `keep_stdout`,
    /// else discarded) and waits until it is tracing.
    pub(super) fn trace(
        &self,
        binary: &Path,
        ring_mib: u32,
        keep_stdout: bool,
    ) -> anyhow::Result<Trace> {
        self.trace_with(binary, ring_mib, keep_stdout, &[])
    }

    /// [`Self::trace`] with more arguments (`--wakeup POLICY`, `--probe-time`).
    pub(super) fn trace_with(
        &self,
        binary: &Path,
        ring_mib: u32,
        keep_stdout: bool,
        extra: &[&str],
    ) -> anyhow::Result<Trace> {
        let mut cmd = Command::new(&self.claude_watch);
        cmd.args(["trace", "--json", "--ring-mib", &ring_mib.to_string()])
            .args(extra)
            .arg("--binary")
            .arg(binary);
        if !keep_stdout {
            cmd.stdout(Stdio::null());
        }
        let proc = Proc::spawn("claude-watch trace", &mut cmd, keep_stdout)?;
        proc.wait_stderr(|l| l.contains("tracing"), Duration::from_secs(60))
            .context("waiting for claude-watch trace to attach")?;
        Ok(Trace { proc })
    }
}

/// The bench's HTTPS server, stopped when dropped.
pub(super) struct Server {
    pub(super) port: u16,
    pub(super) _proc: Proc,
}

/// A client runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Client {
    Node,
    Bun,
}

impl Client {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Bun => "Bun 1.4.5",
        }
    }
}

pub(super) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
