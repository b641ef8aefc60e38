//! A fleet on one machine: Debian's Prometheus and Alertmanager (`prometheus`,
//! `prometheus-alertmanager`, installed by `cargo xtask setup --tests`) started on loopback
//! ports, scraping the daemons that stand for hosts. Killed on drop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{ChildGuard, ScratchDir};
use crate::wait::wait_until;

/// How long a server may take to become ready.
const READY: Duration = Duration::from_secs(30);

/// A plain HTTP GET on 127.0.0.1:`port`: the status and the body.
#[must_use]
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A running Alertmanager.
pub struct Alertmanager {
    child: ChildGuard,
    /// Its web port.
    pub port: u16,
    _dir: ScratchDir,
}

impl Alertmanager {
    /// Starts Alertmanager with a receiver that sends nothing, no cluster, on a free port.
    #[must_use]
    pub fn start() -> Self {
        let dir = ScratchDir::new("cw-alertmanager");
        let port = crate::watch::free_port();
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            "route:\n  receiver: none\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: none\n",
        )
        .expect("write alertmanager.yml");
        let child = ChildGuard::spawn(
            "alertmanager",
            Command::new("prometheus-alertmanager")
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("alertmanager.yml").display()
                ))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address="),
        );
        wait_until(READY, "Alertmanager ready", || {
            http_get(port, "/-/ready").filter(|(s, _)| *s == 200)
        });
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// Its base URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The active alerts named `name`.
    #[must_use]
    pub fn alerts(&self, name: &str) -> Vec<Value> {
        let path = format!("/api/v2/alerts?active=true&filter=alertname%3D%22{name}%22");
        http_get(self.port, &path)
            .and_then(|(_, body)| serde_json::from_str::<Vec<Value>>(&body).ok())
            .unwrap_or_default()
    }

    /// Stops it (its port stops answering).
    pub fn stop(&mut self) {
        self.child.kill();
    }
}

/// A running Prometheus.
pub struct Prometheus {
    _child: ChildGuard,
    /// Its web port.
    pub port: u16,
    _dir: ScratchDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (ports on 127.0.0.1) every second, evaluating
    /// `rules` (a rules file's text) every second and sending alerts to `alertmanager`.
    #[must_use]
    pub fn start(targets: &[u16], rules: &str, alertmanager: u16) -> Self {
        let dir = ScratchDir::new("cw-prometheus");
        let port = crate::watch::free_port();
        std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{alertmanager}']\nscrape_configs:\n  - job_name: claude-watch\n    static_configs:\n      - targets: [{targets}]\n",
                rules = dir.path().join("rules.yml").display(),
                targets = targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let child = ChildGuard::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--rules.alert.resend-delay=1s"),
        );
        wait_until(READY, "Prometheus ready", || {
            http_get(port, "/-/ready").filter(|(s, _)| *s == 200)
        });
        Self {
            _child: child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query, when it has one sample.
    #[must_use]
    pub fn query(&self, expr: &str) -> Option<f64> {
        let mut encoded = String::new();
        for b in expr.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                encoded.push(char::from(b));
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let (_, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

/// The shipped rules (`packaging/prometheus/claude-watch.rules.yml`) with the fleet's
/// rejection horizon (600 s) shortened to `horizon_s`, for a test that cannot wait 10 minutes.
#[must_use]
pub fn rules_with_horizon(horizon_s: u32) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/prometheus/claude-watch.rules.yml");
    let text = std::fs::read_to_string(&path).expect("the shipped rules");
    let shipped = "claude_watch:restart_rejected:age_seconds < 600";
    assert!(
        text.contains(shipped),
        "the shipped fleet rule's horizon moved"
    );
    text.replace(
        shipped,
        &format!("claude_watch:restart_rejected:age_seconds < {horizon_s}"),
    )
}
