//! The daemon's configuration: TOML, every key optional (the defaults serve a typical host),
//! checked completely before anything starts. Errors name the file, line, column and key.
//!
//! ```toml
//! [daemon]
//! journal = "/var/lib/claude-watch/journal.jsonl"
//! metrics_listen = "127.0.0.1:9464"     # off unless set
//!
//! [detector]
//! latch_min_401s = 3
//! latch_min_span = "10s"
//!
//! [recovery]
//! supervisor = { kind = "auto" }         # systemd where the instance has a unit, else observe
//! backoff_initial = "1m"
//! backoff_max = "30m"
//! max_restarts = 6                       # then the notice; restarts go on (give_up = false)
//! escalation_hook = ["/usr/local/bin/page-oncall", "{instance}", "{reason}"]
//! fresh_session = false                  # claude --bg sessions: respawn (same session id)
//!
//! [[instance]]
//! name = "reviewer"
//! match = { exe = "/opt/claude/*", cwd = "/srv/reviewer" }
//! supervisor = { kind = "command", argv = ["supervisorctl", "restart", "{instance}"] }
//! # or { kind = "pm2" }, { kind = "supervisord", url = "unix:///run/supervisor.sock" }
//! ```

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use humantime::DurationError;
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::detect::DetectorConfig;
use crate::instance::MatchRule;
use crate::policy::PolicyConfig;

/// The configuration built into the binary: what `claude-watch daemon` uses without a file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Where the daemon and every command look for a configuration when none is given.
pub const DEFAULT_PATH: &str = "/etc/claude-watch/config.toml";

/// Placeholders a supervisor's argv template may use.
pub const PLACEHOLDERS: [&str; 3] = ["{instance}", "{unit}", "{pid}"];

/// Placeholders the escalation hook may use: the supervisor's, plus `{reason}` (a sentence:
/// why the notice) and `{instances}` (every instance it is for, comma-separated: one for an
/// instance's escalation, all members for an upstream incident's).
pub const HOOK_PLACEHOLDERS: [&str; 5] =
    ["{instance}", "{unit}", "{pid}", "{reason}", "{instances}"];

/// When the kernel wakes the reader for a TLS record (the kernel's `WAKEUP` global, see
/// [`claude_ebpf_common::wakeup`]). Whatever the policy, every record wakes it once a quarter of
/// the ring is unread; the rest waits for the reader's own timer (50 ms in the daemon, 200 ms in
/// `trace`). Process events do not follow it: an exec of Claude Code, of an interpreter or of a
/// watched process wakes the reader, one of an image not judged yet rides the timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wakeup {
    /// Every response wakes the reader: each exchange is seen within microseconds, at the cost
    /// of a wake-up on the client's CPU per response.
    Responses,
    /// Only responses a decision may hang on (status not 1xx–3xx, or a head in pieces) wake the
    /// reader; successful exchanges are read on its timer.
    #[default]
    Errors,
    /// No response wakes the reader; every exchange is read on its timer.
    Timer,
}

impl Wakeup {
    /// Every policy, as written.
    pub const ALL: [&str; 3] = ["responses", "errors", "timer"];

    /// The kernel's value.
    #[must_use]
    pub fn kernel(self) -> u32 {
        match self {
            Self::Responses => claude_ebpf_common::wakeup::RESPONSES,
            Self::Errors => claude_ebpf_common::wakeup::ERRORS,
            Self::Timer => claude_ebpf_common::wakeup::TIMER,
        }
    }
}

impl std::fmt::Display for Wakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Responses => "responses",
            Self::Errors => "errors",
            Self::Timer => "timer",
        })
    }
}

impl std::str::FromStr for Wakeup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "responses" => Ok(Self::Responses),
            "errors" => Ok(Self::Errors),
            "timer" => Ok(Self::Timer),
            _ => Err(format!("one of {}", Self::ALL.join(", "))),
        }
    }
}

/// Default ring buffer size: 4 MiB holds about 1,000 full 4 KiB heads, or far more of the
/// usual few-hundred-byte ones, between two reads. The kernel maps the ring's pages twice into
/// the reader (so a record that wraps reads as one piece): RSS counts it as 8 MiB.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Default of how many probe attachments may exist at once (`[daemon] max_attachments`).
pub const DEFAULT_MAX_ATTACHMENTS: u32 = 256;

/// Why a configuration cannot be used. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type or range.
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        /// The file (or `<built-in>`).
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// `key: ` naming the offending key, or empty when unknown.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// More than one thing is wrong: how many, then every one of them in file order, a line
    /// each, as [`ConfigError::Invalid`] shows it alone.
    #[error("{} problems:\n{}", errors.len(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several {
        /// Each error (never fewer than two).
        errors: Vec<ConfigError>,
    },
}

impl ConfigError {
    /// One error for `errors` (at least one): itself when alone, else [`ConfigError::Several`].
    fn of(mut errors: Vec<Self>) -> Self {
        if errors.len() == 1 {
            return errors.remove(0);
        }
        Self::Several { errors }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Files, sockets, capture.
    pub daemon: DaemonConfig,
    /// Latch detection thresholds.
    pub detector: DetectorSection,
    /// Restart policy and default supervisor.
    pub recovery: RecoverySection,
    /// Named instances: match rules and their own supervisors.
    #[serde(rename = "instance")]
    pub instances: Vec<InstanceSection>,
    /// The fleet's hold: restarts held while the fleet's incident alert fires.
    pub fleet: FleetSection,
}

/// `[fleet]`: Prometheus (scraping every host's daemon) decides that an upstream incident is
/// on, Alertmanager holds the answer, and every host asks it before restarting.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Alertmanager base URLs (`http://alertmanager:9093`), asked in turn until one answers;
    /// empty (the default): no fleet hold.
    pub alertmanager: Vec<String>,
    /// Label matchers of the incident alert, every one must match (default: the shipped
    /// rule's `alertname = "ClaudeFleetUpstreamIncident"`).
    pub matchers: std::collections::BTreeMap<String, String>,
    /// How often Alertmanager is asked.
    #[serde(deserialize_with = "duration")]
    pub poll_every: Duration,
    /// No answer for this long: local behaviour (never held on an old answer).
    #[serde(deserialize_with = "duration")]
    pub stale_after: Duration,
    /// When the alert resolves, the hosts resume spread over this long, each at an offset
    /// derived from its name.
    #[serde(deserialize_with = "duration")]
    pub stagger: Duration,
    /// This host's name in the fleet (default: the kernel's host name).
    pub host: Option<String>,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            alertmanager: Vec::new(),
            matchers: std::iter::once((
                "alertname".to_owned(),
                "ClaudeFleetUpstreamIncident".to_owned(),
            ))
            .collect(),
            poll_every: Duration::from_secs(10),
            stale_after: Duration::from_secs(60),
            stagger: Duration::from_secs(120),
            host: None,
        }
    }
}

impl FleetSection {
    /// Whether the fleet's hold is on (an Alertmanager is named).
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.alertmanager.is_empty()
    }

    /// The matchers as Alertmanager's `filter` syntax: `alertname="X"`, one per matcher.
    #[must_use]
    pub fn filters(&self) -> Vec<String> {
        self.matchers
            .iter()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect()
    }

    /// The core's tunables, `host` the name to use when none is configured.
    #[must_use]
    pub fn fleet_config(&self, host: &str) -> crate::fleet::FleetConfig {
        crate::fleet::FleetConfig {
            host: self.host.clone().unwrap_or_else(|| host.to_owned()),
            alert: self.filters().join(", "),
            stale_after: self.stale_after,
            stagger: self.stagger,
        }
    }
}

/// Where the fleet's poller asks for `url`, a base URL `http://host[:port][/path]`: `host:port`
/// (port 80 when none is given) and the path prefix.
///
/// # Errors
/// What is wrong with it, with the form to write.
pub fn alertmanager_address(url: &str) -> Result<(String, String), UrlError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(UrlError::NotHttp(url.to_owned()));
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(UrlError::NotHostPort(url.to_owned()));
    }
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let authority = match port {
        Some(_) => authority.to_owned(),
        None => format!("{authority}:80"),
    };
    Ok((authority, path.trim_end_matches('/').to_owned()))
}

/// Why an Alertmanager URL cannot be asked ([`alertmanager_address`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `http://`.
    #[error(
        "{0:?}: only http:// is supported (e.g. \"http://alertmanager:9093\"); put a TLS proxy on the host if Alertmanager is only reachable over https"
    )]
    NotHttp(String),
    /// No host, or a user or a space in it.
    #[error("{0:?}: expected http://host[:port][/path], e.g. \"http://alertmanager:9093\"")]
    NotHostPort(String),
}

/// `[daemon]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The episode journal (JSON lines).
    pub journal: PathBuf,
    /// Rotate the journal past this size.
    pub journal_max_bytes: u64,
    /// Rotated journal files kept.
    pub journal_keep: u32,
    /// Where recovery state survives daemon restarts.
    pub state_dir: PathBuf,
    /// The control socket `claude-watch status` talks to.
    pub control_socket: PathBuf,
    /// Prometheus metrics on this address (`host:port`); off when unset.
    #[serde(deserialize_with = "optional_socket_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Cache of located TLS functions, by build id.
    pub locate_cache: PathBuf,
    /// Ring buffer size in MiB (a power of two).
    pub ring_mib: u32,
    /// TLS records (HTTP heads) one process may send to user space per second; the kernel drops
    /// and counts the rest, so one flooding process cannot fill the ring everyone shares.
    /// 0: no budget. Takes effect at the next start.
    pub record_budget: u32,
    /// Records one user other than root may send per second over all their processes: HTTP
    /// heads (within each process's `record_budget`) and execs of images not judged yet. The
    /// kernel drops and counts the rest, so one user starting many flooding processes, or
    /// exec'ing fresh files in a loop, spends only their own share (their own agents are
    /// looked at again by a rescan). 0: no budget. Takes effect at the next start.
    pub record_budget_per_user: u32,
    /// When the kernel wakes the daemon for a record: `errors` (only a response a decision may
    /// hang on: not 1xx–3xx; successful exchanges are read every 50 ms), `responses` (every
    /// response), `timer` (no response). Takes effect at the next start.
    pub wakeup: Wakeup,
    /// Keep execs of images judged not Claude Code in the kernel (decided from the new image's
    /// inode; needs the kernel's BTF, else every exec is looked at in user space as with
    /// `false`). Takes effect at the next start.
    pub exec_filter: bool,
    /// Probe attachments (files, or a script's files per process) held at once; new ones beyond
    /// it are refused and their processes shown unobserved.
    pub max_attachments: u32,
    /// Attachments that count for one user other than root at most (those their processes
    /// made); beyond it their new files are refused and shown unobserved, and the rest of the
    /// cap stays for other users. Unset: a quarter of `max_attachments`.
    pub max_attachments_per_user: Option<u32>,
    /// Detect and report, never restart (also `--dry-run`).
    pub dry_run: bool,
    /// Watch only the processes in this cgroup subtree (as `/proc/<pid>/cgroup` names it, e.g.
    /// `/system.slice/agents.slice`): several daemons on one host, each with its own scope.
    /// Unset: every process, and a second daemon on the host is refused.
    pub scope: Option<String>,
    /// The Docker Engine API socket, asked for the names of containers that agents run in and
    /// through which `auto` restarts them (a Podman service socket speaks the same API).
    pub docker_socket: PathBuf,
    /// How often the coverage audit compares each watched process's TCP traffic (the kernel's
    /// counters) with what its probes captured: a process that moves API-sized traffic while
    /// nothing is captured reads `blind`. `"0s"`: no audit.
    #[serde(deserialize_with = "duration")]
    pub coverage_audit: Duration,
}

impl DaemonConfig {
    /// The keys whose new value (in `new`) a running daemon takes only at its next start: the
    /// files and sockets it holds open and what the kernel side was loaded with. A reload
    /// keeps the running values of these (and says which were changed).
    #[must_use]
    pub fn changed_at_next_start(&self, new: &Self) -> Vec<&'static str> {
        [
            ("journal", self.journal != new.journal),
            ("control_socket", self.control_socket != new.control_socket),
            ("metrics_listen", self.metrics_listen != new.metrics_listen),
            ("ring_mib", self.ring_mib != new.ring_mib),
            ("record_budget", self.record_budget != new.record_budget),
            (
                "record_budget_per_user",
                self.record_budget_per_user != new.record_budget_per_user,
            ),
            ("wakeup", self.wakeup != new.wakeup),
            ("exec_filter", self.exec_filter != new.exec_filter),
            ("scope", self.scope != new.scope),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            journal: "/var/lib/claude-watch/journal.jsonl".into(),
            journal_max_bytes: 16 << 20,
            journal_keep: 5,
            state_dir: "/var/lib/claude-watch".into(),
            control_socket: "/run/claude-watch/control.sock".into(),
            metrics_listen: None,
            locate_cache: "/var/cache/claude-watch/locate".into(),
            ring_mib: DEFAULT_RING_BYTES >> 20,
            record_budget: claude_ebpf_common::BUDGET_RECORDS,
            record_budget_per_user: claude_ebpf_common::USER_BUDGET_RECORDS,
            wakeup: Wakeup::default(),
            exec_filter: true,
            max_attachments: DEFAULT_MAX_ATTACHMENTS,
            max_attachments_per_user: None,
            dry_run: false,
            scope: None,
            docker_socket: "/var/run/docker.sock".into(),
            coverage_audit: Duration::from_secs(30),
        }
    }
}

/// `[detector]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorSection {
    /// N: 401s in one window before an instance is latched.
    pub latch_min_401s: NonZeroU32,
    /// T: how long the window must be open.
    #[serde(deserialize_with = "duration")]
    pub latch_min_span: Duration,
    /// A suspect window without new 401s is forgotten after this.
    #[serde(deserialize_with = "duration")]
    pub suspect_forget_after: Duration,
    /// A model without a new 429 for this long is no longer throttled.
    #[serde(deserialize_with = "duration")]
    pub throttle_clear_after: Duration,
}

impl Default for DetectorSection {
    fn default() -> Self {
        let d = DetectorConfig::default();
        Self {
            latch_min_401s: NonZeroU32::new(d.latch_min_401s).unwrap_or(NonZeroU32::MIN),
            latch_min_span: d.latch_min_span,
            suspect_forget_after: d.suspect_forget_after,
            throttle_clear_after: d.throttle_clear_after,
        }
    }
}

impl DetectorSection {
    /// The detector's thresholds.
    pub fn detector_config(&self) -> DetectorConfig {
        DetectorConfig {
            latch_min_401s: self.latch_min_401s.get(),
            latch_min_span: self.latch_min_span,
            suspect_forget_after: self.suspect_forget_after,
            throttle_clear_after: self.throttle_clear_after,
        }
    }
}

/// `[recovery]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverySection {
    /// Supervisor of instances without their own.
    #[serde(deserialize_with = "supervisor")]
    pub supervisor: SupervisorSpec,
    /// The first quiet window after a restart that did not heal.
    #[serde(deserialize_with = "duration")]
    pub backoff_initial: Duration,
    /// The largest quiet window.
    #[serde(deserialize_with = "spanned_duration")]
    pub backoff_max: Spanned<Duration>,
    /// Healthy this long resets the backoff.
    #[serde(deserialize_with = "duration")]
    pub healthy_reset: Duration,
    /// K: restarts without a confirmed recovery (an incident's: rejected canary tries) before
    /// the escalation notice.
    pub max_restarts: NonZeroU32,
    /// Also escalate an instance (or an incident) latched this long (off unless set).
    #[serde(deserialize_with = "optional_duration")]
    pub escalate_after: Option<Duration>,
    /// Stop restarting an escalated instance until it answers non-401 on its own (off: an
    /// escalation is a notice, restarts go on at the quiet window).
    pub give_up: bool,
    /// Instances latched together are one upstream incident: one canary restart per quiet
    /// window, the others restarted once it heals, one notice per incident.
    pub canary: bool,
    /// How long one restart (job and confirmation) may take.
    #[serde(deserialize_with = "duration")]
    pub restart_timeout: Duration,
    /// Run once when an instance is escalated (argv, no shell; placeholders allowed).
    pub escalation_hook: Option<Spanned<Vec<String>>>,
    /// How long the hook may run.
    #[serde(deserialize_with = "duration")]
    pub hook_timeout: Duration,
    /// D-Bus address of systemd (default: the system bus).
    pub systemd_bus: Option<String>,
    /// Background sessions of Claude Code's daemon are recovered with a fresh session (`claude
    /// stop <id>`, then `claude --bg` in the same directory; the conversation is lost) instead of
    /// `claude respawn`, which keeps the session id.
    pub fresh_session: bool,
}

impl Default for RecoverySection {
    fn default() -> Self {
        let p = PolicyConfig::default();
        Self {
            supervisor: SupervisorSpec::Auto,
            backoff_initial: p.initial_backoff,
            backoff_max: Spanned::new(0..0, p.max_backoff),
            healthy_reset: p.healthy_reset,
            max_restarts: NonZeroU32::new(p.max_restarts).unwrap_or(NonZeroU32::MIN),
            escalate_after: p.escalate_after,
            give_up: p.give_up,
            canary: p.canary,
            restart_timeout: p.restart_timeout,
            escalation_hook: None,
            hook_timeout: Duration::from_secs(30),
            systemd_bus: None,
            fresh_session: false,
        }
    }
}

impl RecoverySection {
    /// The policy's tunables.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            initial_backoff: self.backoff_initial,
            max_backoff: *self.backoff_max.get_ref(),
            healthy_reset: self.healthy_reset,
            max_restarts: self.max_restarts.get(),
            restart_timeout: self.restart_timeout,
            escalate_after: self.escalate_after,
            give_up: self.give_up,
            canary: self.canary,
        }
    }
}

/// `[[instance]]`: a name for the processes a rule matches, and optionally their supervisor.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSection {
    /// Instance name.
    pub name: Spanned<String>,
    /// Conditions; every one given must hold.
    #[serde(rename = "match", default)]
    pub matches: MatchSection,
    /// How to restart it (default: `[recovery] supervisor`).
    #[serde(default, deserialize_with = "optional_supervisor")]
    pub supervisor: Option<SupervisorSpec>,
}

/// The conditions of a match rule.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSection {
    /// Glob over the executable path.
    pub exe: Option<String>,
    /// Substring one argument must contain.
    pub arg: Option<String>,
    /// Substring of the cgroup path.
    pub cgroup: Option<String>,
    /// The working directory or a parent of it.
    pub cwd: Option<PathBuf>,
    /// The owner's user id. Without it, a process of another user than the instance's running
    /// members is refused (it could borrow the instance's name); with it, only that user's
    /// processes match.
    pub uid: Option<u32>,
}

/// How an instance is restarted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SupervisorSpec {
    /// `docker` for a container when the engine's socket exists, systemd where the instance has a
    /// unit and a bus is reachable, observe-only elsewhere.
    #[default]
    Auto,
    /// systemd over D-Bus: `RestartUnit`, or `KillUnit` for units that restart themselves.
    Systemd {
        /// `restart` (default) or `kill`.
        #[serde(default)]
        mode: SystemdModeSpec,
    },
    /// An argv template run without a shell (`{instance}`, `{unit}`, `{pid}`).
    Command {
        /// The program and its arguments.
        #[serde(deserialize_with = "argv")]
        argv: Vec<String>,
        /// How long it may run.
        #[serde(default = "default_command_timeout", deserialize_with = "duration")]
        timeout: Duration,
    },
    /// SIGTERM, then SIGKILL after `grace`, through a pidfd; the parent respawns.
    Signal {
        /// Time between SIGTERM and SIGKILL.
        #[serde(default = "default_grace", deserialize_with = "duration")]
        grace: Duration,
    },
    /// `pm2 restart <pm_id>` as the app's owner, after `pm2 jlist` confirmed the app's pid.
    Pm2 {
        /// The `pm2` executable (default: found next to the pm2 daemon's node, or on `PATH`).
        #[serde(default)]
        pm2: Option<PathBuf>,
    },
    /// supervisord over XML-RPC (`stopProcess` + `startProcess`), after `getProcessInfo`
    /// confirmed the program's pid.
    Supervisord {
        /// The server, `unix:///path/to/supervisor.sock` (default: the process's
        /// `SUPERVISOR_SERVER_URL`, checked against the supervisord that is its ancestor).
        #[serde(default)]
        url: Option<String>,
    },
    /// Restart the instance's container through the engine's API socket (Docker's, or a
    /// Podman service's), after the engine confirms the process runs in it.
    Docker {
        /// The engine's socket (default: `[daemon] docker_socket`).
        #[serde(default)]
        socket: Option<PathBuf>,
        /// Time between SIGTERM and SIGKILL (default: the container's own stop timeout).
        #[serde(default, deserialize_with = "optional_duration")]
        grace: Option<Duration>,
    },
    /// Detect and report only.
    Observe,
}

/// `mode` of a systemd supervisor (`restart`, the default, or `kill`): the restarter's own.
pub use crate::supervise::SystemdMode as SystemdModeSpec;

fn default_command_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// The built-in configuration.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_TOML, "<built-in>").expect("the built-in configuration is valid")
    }

    /// Parses and checks TOML `text`; `origin` names it in errors. Every error of the file is
    /// reported at once: each syntax error; else each key whose value is wrong, one key at a
    /// time; else each cross-field check that fails.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let (root, syntax) = toml::de::DeTable::parse_recoverable(text);
        let at = |e: &toml::de::Error| {
            invalid(
                text,
                origin,
                e.span().unwrap_or(0..0),
                e.message().trim_end(),
            )
        };
        if !syntax.is_empty() {
            return Err(ConfigError::of(syntax.iter().map(at).collect()));
        }
        let read = |doc| Self::deserialize(toml::de::Deserializer::from(doc));
        let (mut errors, config) = match read(root.clone()) {
            Ok(config) => (Vec::new(), config),
            Err(whole) => {
                let (refused, rest) = sift(&root, |one| read(one).err());
                let mut errors: Vec<ConfigError> = refused.iter().map(at).collect();
                if errors.is_empty() {
                    errors.push(at(&whole));
                }
                match read(rest) {
                    Ok(config) => (errors, config),
                    Err(_) => return Err(ConfigError::of(errors)),
                }
            }
        };
        errors.extend(config.check(text, origin));
        if errors.is_empty() {
            return Ok(config);
        }
        errors.sort_by_key(|e| match e {
            ConfigError::Invalid { line, column, .. } => (*line, *column),
            _ => (0, 0),
        });
        Err(ConfigError::of(errors))
    }

    /// The match rules, in file order.
    pub fn rules(&self) -> Vec<MatchRule> {
        self.instances
            .iter()
            .map(|i| MatchRule {
                name: i.name.get_ref().clone(),
                exe: i.matches.exe.clone(),
                arg: i.matches.arg.clone(),
                cgroup: i.matches.cgroup.clone(),
                cwd: i.matches.cwd.clone(),
                uid: i.matches.uid,
            })
            .collect()
    }

    /// The supervisor of instance `name`.
    pub fn supervisor_for(&self, name: &str) -> &SupervisorSpec {
        self.instances
            .iter()
            .find(|i| i.name.get_ref() == name)
            .and_then(|i| i.supervisor.as_ref())
            .unwrap_or(&self.recovery.supervisor)
    }

    /// Cross-field checks the types cannot express.
    fn check(&self, text: &str, origin: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut error =
            |span: Range<usize>, message: &str| errors.push(invalid(text, origin, span, message));
        // Where the value of `key` in `[table]` is.
        let at = |table, key| value_span(text, table, key);
        let f = &self.fleet;
        for url in &f.alertmanager {
            if let Err(e) = alertmanager_address(url) {
                error(at("fleet", "alertmanager"), &e.to_string());
            }
        }
        if f.enabled() && f.matchers.is_empty() {
            error(
                at("fleet", "matchers"),
                "at least one matcher, e.g. { alertname = \"ClaudeFleetUpstreamIncident\" }",
            );
        }
        if f.poll_every < Duration::from_secs(1) || f.stale_after < f.poll_every * 2 {
            error(
                at("fleet", "stale_after"),
                "poll_every must be at least 1s, and stale_after at least twice poll_every",
            );
        }
        if let Some(scope) = &self.daemon.scope
            && (!scope.starts_with('/')
                || scope.len() < 2
                || scope.ends_with('/')
                || scope.contains(".."))
        {
            error(
                at("daemon", "scope"),
                "a cgroup path as /proc/<pid>/cgroup names it, e.g. \"/system.slice/agents.slice\"",
            );
        }
        let r = &self.recovery;
        if *r.backoff_max.get_ref() < r.backoff_initial {
            error(
                r.backoff_max.span(),
                "must not be shorter than backoff_initial",
            );
        }
        if !self.daemon.ring_mib.is_power_of_two() || self.daemon.ring_mib > 1024 {
            error(
                at("daemon", "ring_mib"),
                "must be a power of two from 1 to 1024",
            );
        }
        if self.daemon.max_attachments_per_user == Some(0) {
            error(
                at("daemon", "max_attachments_per_user"),
                "must be at least 1 (leave it out for a quarter of max_attachments)",
            );
        }
        if self.daemon.max_attachments == 0 {
            error(
                at("daemon", "max_attachments"),
                "must be at least 1 (no attachment watches nothing)",
            );
        }
        // An argv template checked where it is written.
        if let Some(hook) = &r.escalation_hook
            && let Err(e) = validate_argv(hook.get_ref(), &HOOK_PLACEHOLDERS)
        {
            error(hook.span(), &e.to_string());
        }
        let mut seen: Vec<&str> = Vec::new();
        for instance in &self.instances {
            let name = instance.name.get_ref();
            if name.is_empty() || name.starts_with("pid:") || name.contains(char::is_whitespace) {
                error(
                    instance.name.span(),
                    "an instance name must be non-empty, without spaces, and not start with `pid:`",
                );
            }
            if seen.contains(&name.as_str()) {
                error(
                    instance.name.span(),
                    &format!("instance {name:?} is defined twice"),
                );
            }
            seen.push(name);
            let m = &instance.matches;
            if m.exe.is_none()
                && m.arg.is_none()
                && m.cgroup.is_none()
                && m.cwd.is_none()
                && m.uid.is_none()
            {
                error(
                    instance.name.span(),
                    &format!(
                        "instance {name:?} has no `match` condition (exe, arg, cgroup, cwd or uid)"
                    ),
                );
            }
        }
        errors
    }
}

/// Reads the document one value at a time (each key of a table, each `[[instance]]`, each
/// other top-level key, as a document of its own with its spans), so that every wrong value is
/// reported, not only the first: the errors of the values `read` refuses, and the document
/// without them (for the cross-field checks).
fn sift<'i>(
    root: &Spanned<toml::de::DeTable<'i>>,
    read: impl Fn(Spanned<toml::de::DeTable<'i>>) -> Option<toml::de::Error>,
) -> (Vec<toml::de::Error>, Spanned<toml::de::DeTable<'i>>) {
    use toml::de::{DeArray, DeTable, DeValue};
    let mut errors = Vec::new();
    let mut kept = DeTable::new();
    let mut try_one = |key: &Spanned<toml::de::DeString<'i>>, value: Spanned<DeValue<'i>>| {
        let mut t = DeTable::new();
        t.insert(key.clone(), value);
        match read(Spanned::new(root.span(), t)) {
            Some(e) => {
                errors.push(e);
                false
            }
            None => true,
        }
    };
    for (key, value) in root.get_ref() {
        let span = value.span();
        match value.get_ref() {
            DeValue::Table(table) if !table.is_empty() => {
                let mut good = DeTable::new();
                for (k, v) in table {
                    let mut one = DeTable::new();
                    one.insert(k.clone(), v.clone());
                    if try_one(key, Spanned::new(span.clone(), DeValue::Table(one))) {
                        good.insert(k.clone(), v.clone());
                    }
                }
                kept.insert(key.clone(), Spanned::new(span, DeValue::Table(good)));
            }
            DeValue::Array(items) if !items.is_empty() => {
                let mut good = DeArray::new();
                for item in items.iter() {
                    let mut one = DeArray::new();
                    one.push(item.clone());
                    if try_one(key, Spanned::new(span.clone(), DeValue::Array(one))) {
                        good.push(item.clone());
                    }
                }
                kept.insert(key.clone(), Spanned::new(span, DeValue::Array(good)));
            }
            _ => {
                if try_one(key, value.clone()) {
                    kept.insert(key.clone(), value.clone());
                }
            }
        }
    }
    (errors, Spanned::new(root.span(), kept))
}

/// What is wrong with an argv template ([`validate_argv`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    /// No program.
    #[error("the command is empty: give at least the program")]
    Empty,
    /// The program is a placeholder.
    #[error("the program {0:?} must not be a placeholder")]
    ProgramPlaceholder(String),
    /// A `{` without its `}`, in this argument.
    #[error("unclosed `{{` in {0:?}")]
    Unclosed(String),
    /// A placeholder not known here, the argument, the known ones.
    #[error("unknown placeholder {0} in {1:?} (known: {known})", known = .2.join(", "))]
    UnknownPlaceholder(String, String, Vec<&'static str>),
}

/// An argv template: non-empty, a real program first, only the `known` placeholders.
pub fn validate_argv(argv: &[String], known: &[&'static str]) -> Result<(), ArgvError> {
    let Some(program) = argv.first() else {
        return Err(ArgvError::Empty);
    };
    if program.contains('{') {
        return Err(ArgvError::ProgramPlaceholder(program.clone()));
    }
    for arg in argv {
        let mut rest = arg.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return Err(ArgvError::Unclosed(arg.clone()));
            };
            let placeholder = &rest[open..open + close + 1];
            if !known.contains(&placeholder) {
                let known = known.to_vec();
                return Err(ArgvError::UnknownPlaceholder(
                    placeholder.into(),
                    arg.clone(),
                    known,
                ));
            }
            rest = &rest[open + close + 1..];
        }
    }
    Ok(())
}

fn argv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let argv = Vec::<String>::deserialize(d)?;
    validate_argv(&argv, &PLACEHOLDERS).map_err(serde::de::Error::custom)?;
    Ok(argv)
}

/// An error at byte range `span` of `text`, naming the key on that line.
fn invalid(text: &str, origin: &str, span: Range<usize>, message: &str) -> ConfigError {
    let at = span.start.min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..at].chars().count() + 1;
    let key = key_at(text, at)
        .map(|k| format!("{k}: "))
        .unwrap_or_default();
    ConfigError::Invalid {
        path: origin.to_owned(),
        line,
        column,
        key,
        message: message.to_owned(),
    }
}

/// The dotted key of the outermost `key = value` around byte `at`, by toml's own spans: the
/// tables of `[headers]` and of dotted keys (`a.b = 1`) are walked through, the keys of an
/// inline table are its key's.
fn key_at(text: &str, at: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    // `from`: where the dotted key being walked through began (the range the error may be in).
    fn find(table: &DeTable<'_>, at: usize, from: Option<usize>) -> Option<Vec<String>> {
        table.iter().find_map(|(k, v)| {
            let (key, value) = (k.span(), v.span());
            let start = from.unwrap_or(key.start);
            let inner = |t: &DeTable<'_>| {
                let path = find(t, at, (value == key).then_some(start))?;
                Some([vec![k.get_ref().to_string()], path].concat())
            };
            match v.get_ref() {
                _ if value.start >= key.end => (start..value.end)
                    .contains(&at)
                    .then(|| vec![k.get_ref().to_string()]),
                DeValue::Table(t) => inner(t),
                DeValue::Array(items) => items.iter().find_map(|i| inner(i.get_ref().as_table()?)),
                _ => None,
            }
        })
    }
    let root = DeTable::parse_recoverable(text).0;
    find(root.get_ref(), at, None).map(|path| path.join("."))
}

/// Where the value of `key` in `[table]` is, by toml's own spans (`0..0` when not given).
fn value_span(text: &str, table: &str, key: &str) -> Range<usize> {
    let root = toml::de::DeTable::parse(text).ok();
    let table = root.as_ref().and_then(|r| r.get_ref().get(table));
    table
        .and_then(|t| t.get_ref().get(key))
        .map_or(0..0, Spanned::span)
}

/// Parses `"10s"`, `"1m"`, `"1h30m"`, `"500ms"`, `"2d"` (or a bare number of seconds), and the
/// other units `humantime` reads (`min`, `days`, `w`, ...); no space inside.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return bounded(Duration::from_secs(secs));
    }
    match humantime::parse_duration(s) {
        Ok(_) if s.contains(char::is_whitespace) => Err(not_a_duration(s)),
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) | Err(DurationError::NumberOverflow) => Err(too_long(s)),
        Err(DurationError::Empty) => Err("empty duration".into()),
        Err(DurationError::UnknownUnit { unit, .. }) => Err(format!(
            "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
        )),
        Err(_) => Err(not_a_duration(s)),
    }
}

fn not_a_duration(s: &str) -> String {
    format!("{s:?} is not a duration (like 30s, 5m, 1h30m, 500ms)")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

/// The longest duration any setting takes: longer ones are refused, never overflow later
/// (a deadline `now + duration` must always be representable).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

fn too_long(s: &str) -> String {
    format!("{s:?} is too long (at most 366d)")
}

fn bounded(d: Duration) -> Result<Duration, String> {
    if d <= MAX_DURATION {
        Ok(d)
    } else {
        Err(too_long(&format!("{}s", d.as_secs())))
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match DurationValue::deserialize(d)? {
        DurationValue::Seconds(n) => bounded(Duration::from_secs(n)),
        DurationValue::Text(s) => parse_duration(&s),
    }
    .map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A supervisor: a table (`{ kind = "systemd", mode = "kill" }`), or the name of a kind that
/// needs no setting alone (`"systemd"`).
fn supervisor<'de, D: Deserializer<'de>>(d: D) -> Result<SupervisorSpec, D::Error> {
    use serde::de::Error as _;
    match toml::Value::deserialize(d)? {
        toml::Value::String(kind) => {
            let table: toml::Table =
                std::iter::once(("kind".to_owned(), kind.clone().into())).collect();
            SupervisorSpec::deserialize(toml::Value::Table(table)).map_err(|e| {
                let e = e.message().to_owned();
                if e.starts_with("missing field") {
                    D::Error::custom(format!(
                        "{kind:?} needs settings ({e}): write a table, e.g. supervisor = {{ kind = \"command\", argv = [\"supervisorctl\", \"restart\", \"{{instance}}\"] }}"
                    ))
                } else {
                    D::Error::custom(e)
                }
            })
        }
        value @ toml::Value::Table(_) => {
            SupervisorSpec::deserialize(value).map_err(|e| D::Error::custom(e.message()))
        }
        other => Err(D::Error::custom(format!(
            "expected a supervisor such as \"systemd\" or {{ kind = \"systemd\", mode = \"kill\" }}, found {}",
            other.type_str()
        ))),
    }
}

fn optional_supervisor<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SupervisorSpec>, D::Error> {
    supervisor(d).map(Some)
}

/// `host:port` with an IP address; the error gives the forms to write.
fn optional_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port: write e.g. \"127.0.0.1:9464\" (this host only), \"0.0.0.0:9464\" (every interface) or \"[::1]:9464\""
        ))
    })
}

fn spanned_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Spanned<Duration>, D::Error> {
    let value: Spanned<toml::Value> = Spanned::deserialize(d)?;
    let span = value.span();
    let parsed = match value.get_ref() {
        toml::Value::Integer(n) if *n >= 0 => bounded(Duration::from_secs(n.unsigned_abs())),
        toml::Value::String(s) => parse_duration(s),
        other => Err(format!(
            "expected a duration like \"30m\", found {}",
            other.type_str()
        )),
    };
    parsed
        .map(|v| Spanned::new(span, v))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml")
            .expect_err("should be rejected")
            .to_string()
    }

    /// Every problem of a file at once, in file order: wrong values of several sections, an
    /// unknown key, a bad `[[instance]]` among good ones, and the cross-field checks on the
    /// values that were read.
    #[test]
    fn a_reload_names_the_keys_that_wait_for_the_next_start() {
        let old = Config::builtin().daemon;
        let same = Config::builtin().daemon;
        assert!(old.changed_at_next_start(&same).is_empty());
        let new = Config::parse(
            "[daemon]\nring_mib = 8\nexec_filter = false\nscope = \"/system.slice\"\nmax_attachments = 9\n",
            "t",
        )
        .expect("valid")
        .daemon;
        assert_eq!(
            old.changed_at_next_start(&new),
            ["ring_mib", "exec_filter", "scope"],
            "max_attachments takes effect at once"
        );
    }

    #[test]
    fn every_error_of_a_file_is_reported_at_once() {
        let text = "[daemon]\nring_mib = 3\nmetrics_listen = \"localhost:9464\"\njournl = \"/x\"\n\n\
                    [recovery]\nbackoff_initial = \"5 minutes\"\nsupervisor = \"systemdd\"\n\n\
                    [[instance]]\nname = \"a b\"\nmatch = { uid = 1000 }\n\n\
                    [[instance]]\nname = \"ok\"\nmatch = { uid = \"root\" }\n";
        let e = err(text);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines[0], "7 problems:", "{e}");
        let at: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split(": ").nth(1).unwrap_or(""))
            .collect();
        assert_eq!(
            at,
            [
                "daemon.ring_mib",
                "daemon.metrics_listen",
                "daemon.journl",
                "recovery.backoff_initial",
                "recovery.supervisor",
                "instance.name",
                "instance.match",
            ],
            "{e}"
        );
        assert!(lines[1].starts_with("test.toml:2:12: "), "{e}");
        assert!(lines[7].starts_with("test.toml:16:17: "), "{e}");
        // Syntax errors: every one too, and nothing else.
        let e = err("[daemon\nring_mib = = 4\n");
        assert!(
            e.starts_with("3 problems:\ntest.toml:1:8: unclosed table, expected `]`\n"),
            "{e}"
        );
        // One problem reads as before: the line alone.
        let e = err("[daemon]\nring_mib = 3\n");
        assert_eq!(
            e,
            "test.toml:2:12: daemon.ring_mib: must be a power of two from 1 to 1024"
        );
    }

    #[test]
    fn a_supervisor_may_be_named_alone_and_errors_show_the_form_to_write() {
        let c = Config::parse("[recovery]\nsupervisor = \"systemd\"\n", "t").expect("a name alone");
        assert_eq!(
            c.recovery.supervisor,
            SupervisorSpec::Systemd {
                mode: SystemdModeSpec::Restart
            }
        );
        let c = Config::parse(
            "[[instance]]\nname = \"a\"\nmatch = { uid = 1000 }\nsupervisor = \"pm2\"\n",
            "t",
        )
        .expect("a name alone");
        assert_eq!(
            c.instances[0].supervisor,
            Some(SupervisorSpec::Pm2 { pm2: None })
        );
        let e = err("[recovery]\nsupervisor = \"command\"\n");
        assert!(
            e.starts_with("test.toml:2:14: recovery.supervisor: \"command\" needs settings")
                && e.contains("argv = ["),
            "{e}"
        );
        let e = err("[recovery]\nsupervisor = \"systemdd\"\n");
        assert!(
            e.contains("unknown variant `systemdd`") && e.contains("`systemd`"),
            "{e}"
        );
        let e = err("[recovery]\nsupervisor = 3\n");
        assert!(
            e.contains("expected a supervisor such as \"systemd\""),
            "{e}"
        );
        let e = err("[daemon]\nmetrics_listen = \"localhost:9464\"\n");
        assert!(
            e.starts_with("test.toml:2:18: daemon.metrics_listen: \"localhost:9464\" is not an IP address and port: write e.g. \"127.0.0.1:9464\""),
            "{e}"
        );
        let c = Config::parse("[daemon]\nmetrics_listen = \"[::1]:9464\"\n", "t").expect("v6");
        assert_eq!(
            c.daemon.metrics_listen,
            Some("[::1]:9464".parse().expect("addr"))
        );
    }

    #[test]
    fn huge_durations_are_refused_not_overflowed() {
        for (text, key) in [
            (
                "[detector]\nlatch_min_span = \"99999999999999999d\"\n",
                "latch_min_span",
            ),
            (
                "[detector]\nlatch_min_span = \"18446744073709551615s\"\n",
                "latch_min_span",
            ),
            (
                "[recovery]\nbackoff_max = 9223372036854775807\n",
                "backoff_max",
            ),
            ("[recovery]\nhealthy_reset = \"400d\"\n", "healthy_reset"),
            (
                "[recovery]\nrestart_timeout = \"300d2000h\"\n",
                "restart_timeout",
            ),
            (
                "[detector]\nsuspect_forget_after = \"9223372036854775807\"\n",
                "suspect_forget_after",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(key) && e.contains("too long"), "{text}: {e}");
        }
        assert_eq!(parse_duration("366d"), Ok(MAX_DURATION));
        assert!(parse_duration("365d24h1ms").is_err());
    }

    #[test]
    fn the_wakeup_policy_defaults_to_errors_and_names_the_choices() {
        assert_eq!(Config::builtin().daemon.wakeup, Wakeup::Errors);
        for (text, want) in [
            ("responses", Wakeup::Responses),
            ("errors", Wakeup::Errors),
            ("timer", Wakeup::Timer),
        ] {
            let c = Config::parse(&format!("[daemon]\nwakeup = \"{text}\"\n"), "t").unwrap();
            assert_eq!(c.daemon.wakeup, want);
        }
        let e = err("[daemon]\nwakeup = \"always\"\n");
        assert!(
            e.contains("wakeup") && e.contains("responses") && e.contains("timer"),
            "{e}"
        );
    }

    #[test]
    fn fresh_session_is_opt_in() {
        assert!(!Config::builtin().recovery.fresh_session);
        let c = Config::parse("[recovery]\nfresh_session = true\n", "test").unwrap();
        assert!(c.recovery.fresh_session);
    }

    #[test]
    fn builtin_and_empty_configs_are_valid() {
        let c = Config::builtin();
        assert_eq!(c.detector.latch_min_401s.get(), 3);
        assert_eq!(c.recovery.supervisor, SupervisorSpec::Auto);
        assert!(c.daemon.metrics_listen.is_none());
        let empty = Config::parse("", "x").unwrap();
        assert_eq!(empty.recovery.policy_config(), PolicyConfig::default());
        assert_eq!(empty.detector.detector_config(), DetectorConfig::default());
    }

    #[test]
    fn a_full_config() {
        let c = Config::parse(
            r#"
[daemon]
metrics_listen = "127.0.0.1:9464"
dry_run = true
[detector]
latch_min_401s = 5
latch_min_span = "1m30s"
[recovery]
backoff_initial = 30
backoff_max = "1h"
escalation_hook = ["/usr/local/bin/page", "{instance}", "unit={unit}"]
supervisor = { kind = "systemd", mode = "kill" }
[[instance]]
name = "reviewer"
match = { exe = "/opt/claude/*", cwd = "/srv/reviewer" }
supervisor = { kind = "command", argv = ["supervisorctl", "restart", "{instance}"], timeout = "20s" }
[[instance]]
name = "writer"
match = { arg = "--writer" }
supervisor = { kind = "signal" }
[[instance]]
name = "boxed"
match = { cgroup = "docker" }
supervisor = { kind = "docker", grace = "3s" }
[[instance]]
name = "podded"
match = { cgroup = "libpod" }
supervisor = { kind = "docker", socket = "/run/podman/podman.sock" }
"#,
            "x",
        )
        .unwrap();
        assert_eq!(c.detector.latch_min_span, Duration::from_secs(90));
        assert_eq!(
            c.recovery.policy_config().max_backoff,
            Duration::from_secs(3600)
        );
        assert_eq!(
            c.recovery.policy_config().initial_backoff,
            Duration::from_secs(30)
        );
        assert_eq!(c.rules().len(), 4);
        assert_eq!(
            c.supervisor_for("boxed"),
            &SupervisorSpec::Docker {
                socket: None,
                grace: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            c.supervisor_for("podded"),
            &SupervisorSpec::Docker {
                socket: Some("/run/podman/podman.sock".into()),
                grace: None
            }
        );
        assert!(
            matches!(c.supervisor_for("reviewer"), SupervisorSpec::Command { timeout, .. } if *timeout == Duration::from_secs(20))
        );
        assert_eq!(
            c.supervisor_for("writer"),
            &SupervisorSpec::Signal {
                grace: Duration::from_secs(10)
            }
        );
        assert_eq!(
            c.supervisor_for("other"),
            &SupervisorSpec::Systemd {
                mode: SystemdModeSpec::Kill
            }
        );
    }

    #[test]
    fn every_error_class_names_file_line_and_key() {
        assert_eq!(
            err("[detector]\nlatch_min_401 = 3\n").split(": ").next(),
            Some("test.toml:2:1")
        );
        assert!(err("[detector]\nlatch_min_401 = 3\n").contains("unknown field `latch_min_401`"));
        assert!(err("[detectr]\n").contains("unknown field `detectr`"));
        let e = err("[detector]\nlatch_min_401s = 0\n");
        assert!(
            e.starts_with("test.toml:2:18: detector.latch_min_401s: "),
            "{e}"
        );
        let e = err("[detector]\nlatch_min_span = \"10 parsecs\"\n");
        assert!(
            e.contains("detector.latch_min_span") && e.contains("unknown unit"),
            "{e}"
        );
        let e = err("[recovery]\nbackoff_initial = \"10m\"\nbackoff_max = \"1m\"\n");
        assert!(
            e.starts_with("test.toml:3:15: recovery.backoff_max: must not be shorter"),
            "{e}"
        );
        let e = err("[recovery]\nescalation_hook = [\"/bin/page\", \"{user}\"]\n");
        assert!(
            e.contains("recovery.escalation_hook") && e.contains("unknown placeholder {user}"),
            "{e}"
        );
        let e = err("[recovery]\nescalation_hook = []\n");
        assert!(e.contains("the command is empty"), "{e}");
        let e = err(
            "[[instance]]\nname = \"a\"\nmatch = { exe = \"/x\" }\nsupervisor = { kind = \"command\", argv = [\"{pid}\"] }\n",
        );
        assert!(
            e.starts_with("test.toml:4:")
                && e.contains("instance.supervisor")
                && e.contains("must not be a placeholder"),
            "{e}"
        );
        let e = err("[recovery]\nsupervisor = { kind = \"upstart\" }\n");
        assert!(
            e.contains("recovery.supervisor") && e.contains("upstart"),
            "{e}"
        );
        let e = err("[daemon]\nmetrics_listen = \"localhost\"\n");
        assert!(e.contains("daemon.metrics_listen"), "{e}");
        let e = err("[daemon]\nring_mib = 3\n");
        assert!(
            e.starts_with("test.toml:2:12: daemon.ring_mib: must be a power of two"),
            "{e}"
        );
        let e = err("[daemon]\nmax_attachments = 0\n");
        assert!(
            e.contains("daemon.max_attachments: must be at least 1"),
            "{e}"
        );
        let e = err(
            "[[instance]]\nname = \"a\"\nmatch = { exe = \"/x\" }\n[[instance]]\nname = \"a\"\nmatch = { arg = \"y\" }\n",
        );
        assert!(
            e.starts_with("test.toml:5:8: instance.name: instance \"a\" is defined twice"),
            "{e}"
        );
        let e = err("[[instance]]\nname = \"a\"\n");
        assert!(e.contains("has no `match` condition"), "{e}");
        let e = err("[[instance]]\nname = \"a\"\nmatch = { exe = \"/x\", user = \"bob\" }\n");
        assert!(e.contains("unknown field `user`"), "{e}");
        // The key by toml's spans: an element on a later line of its array, a dotted key.
        let e = err("[recovery]\nescalation_hook = [\n  \"/bin/page\",\n  3,\n]\n");
        assert!(
            e.starts_with("test.toml:4:3: recovery.escalation_hook: "),
            "{e}"
        );
        let e = err("[daemon]\nring.mib = 4\n");
        assert!(
            e.starts_with("test.toml:2:1: daemon.ring.mib: unknown field `ring`"),
            "{e}"
        );
        let e = err("[daemon]\nring_mib = 4\n[detector.latch]\nx = 1\n");
        assert!(e.starts_with("test.toml:3:"), "a header names no key: {e}");
        let e = err("[detector\n");
        assert!(e.starts_with("test.toml:1:"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn process_manager_presets() {
        let c = Config::parse(
            "[recovery]\nsupervisor = { kind = \"supervisord\", url = \"unix:///run/supervisor.sock\" }\n",
            "x",
        )
        .unwrap();
        assert_eq!(
            c.recovery.supervisor,
            SupervisorSpec::Supervisord {
                url: Some("unix:///run/supervisor.sock".into())
            }
        );
        let c =
            Config::parse("[recovery]\nsupervisor = { kind = \"supervisord\" }\n", "x").unwrap();
        assert_eq!(
            c.recovery.supervisor,
            SupervisorSpec::Supervisord { url: None }
        );
        let c = Config::parse(
            "[recovery]\nsupervisor = { kind = \"pm2\", pm2 = \"/opt/pm2/bin/pm2\" }\n",
            "x",
        )
        .unwrap();
        assert_eq!(
            c.recovery.supervisor,
            SupervisorSpec::Pm2 {
                pm2: Some("/opt/pm2/bin/pm2".into())
            }
        );
    }

    #[test]
    fn argv_and_url_errors_are_typed() {
        assert_eq!(validate_argv(&[], &PLACEHOLDERS), Err(ArgvError::Empty));
        let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            validate_argv(&argv(&["x", "{a"]), &PLACEHOLDERS),
            Err(ArgvError::Unclosed("{a".into()))
        );
        let e = validate_argv(&argv(&["x", "-{user}"]), &PLACEHOLDERS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown placeholder {user} in \"-{user}\" (known: {instance}, {unit}, {pid})"
        );
        assert_eq!(
            alertmanager_address("https://am"),
            Err(UrlError::NotHttp("https://am".into()))
        );
        assert_eq!(
            alertmanager_address("http://u@am"),
            Err(UrlError::NotHostPort("http://u@am".into()))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5 m").is_err());
    }

    /// The field names a struct's `Deserialize` accepts, as serde's derive lists them.
    fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        use serde::de::{Error as _, Visitor};
        struct Recorder<'a>(&'a mut &'static [&'static str]);
        impl<'de> Deserializer<'de> for Recorder<'_> {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(Self::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(Self::Error::custom("recorded"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut out: &'static [&'static str] = &[];
        let _ = T::deserialize(Recorder(&mut out));
        assert!(
            !out.is_empty(),
            "{} is a struct",
            std::any::type_name::<T>()
        );
        out
    }

    /// `section`'s lines of the built-in file (its keys, set or commented out).
    fn section_lines(section: &str) -> Vec<&'static str> {
        let header = format!("[{section}]");
        DEFAULT_TOML
            .lines()
            .skip_while(|l| l.trim_start_matches("# ") != header)
            .skip(1)
            .take_while(|l| !l.trim_start_matches("# ").starts_with('['))
            .collect()
    }

    #[test]
    fn the_shown_configuration_lists_every_key_in_its_section() {
        let sections: [(&str, &[&str]); 5] = [
            ("daemon", fields::<DaemonConfig>()),
            ("detector", fields::<DetectorSection>()),
            ("recovery", fields::<RecoverySection>()),
            ("fleet", fields::<FleetSection>()),
            ("[instance]", fields::<InstanceSection>()),
        ];
        for (section, keys) in sections {
            let lines = section_lines(section);
            for key in keys {
                assert!(
                    lines.iter().any(|l| {
                        let l = l.trim_start_matches("# ");
                        l.starts_with(&format!("{key} =")) || l.contains(&format!(" {key} = "))
                    }),
                    "`config show` leaves out [{section}] {key}"
                );
            }
        }
        // Every way to match an instance is shown in the example rule.
        let rule = section_lines("[instance]").join("\n");
        for key in fields::<MatchSection>() {
            assert!(
                rule.contains(&format!("{key} = ")),
                "the example rule leaves out match.{key}"
            );
        }
        // `auto`'s comment names every supervisor it can choose.
        let recovery = section_lines("recovery").join("\n");
        for kind in [
            "docker",
            "pm2",
            "supervisord",
            "systemd",
            "background session",
            "signal",
            "observe",
        ] {
            assert!(
                recovery.contains(kind),
                "the auto comment leaves out {kind}"
            );
        }
    }

    #[test]
    fn the_shown_configuration_is_the_default_and_its_examples_parse() {
        // The set keys are the code's defaults: a file that leaves everything out and the shown
        // one configure the same daemon.
        let shown = Config::builtin();
        let default = Config::default();
        assert_eq!(
            format!("{:?}", shown.daemon),
            format!("{:?}", default.daemon)
        );
        assert_eq!(
            format!("{:?}", shown.detector.detector_config()),
            format!("{:?}", default.detector.detector_config())
        );
        assert_eq!(
            format!("{:?}", shown.recovery.policy_config()),
            format!("{:?}", default.recovery.policy_config())
        );
        assert_eq!(shown.recovery.supervisor, default.recovery.supervisor);
        assert_eq!(shown.recovery.hook_timeout, default.recovery.hook_timeout);
        assert_eq!(shown.recovery.fresh_session, default.recovery.fresh_session);
        assert_eq!(format!("{:?}", shown.fleet), format!("{:?}", default.fleet));
        assert!(shown.instances.is_empty());
        // Every commented-out key is valid where it stands, once uncommented.
        for section in ["daemon", "detector", "recovery", "fleet"] {
            for line in section_lines(section) {
                let Some(key) = line.strip_prefix("# ").filter(|l| {
                    l.split_once(" = ")
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                }) else {
                    continue;
                };
                let text = format!("[{section}]\n{key}\n");
                if let Err(e) = Config::parse(&text, "example") {
                    panic!("the example `{key}` in [{section}] does not parse: {e}");
                }
            }
        }
        let rule: String = section_lines("[instance]")
            .iter()
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        Config::parse(&format!("[[instance]]\n{rule}"), "example")
            .unwrap_or_else(|e| panic!("the example [[instance]] does not parse: {e}"));
    }
}
