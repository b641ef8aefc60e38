//! What an unprivileged neighbour can do to the root daemon: each attack run as a user the test
//! creates (processes started through `setpriv` or as its own systemd units), against real
//! probes and a real daemon, each asserting the outcome (nothing done for the attacker that it
//! could not do itself, the honest agent next to it still watched, the refusal said).
//!
//! Needs root (`cargo xtask setup --tests`).

use claude_watch_tests::wait::one_at_a_time as serial;
use std::time::Duration;

use claude_watch::detect::EpisodeEnd;
use claude_watch::journal::Record;
use claude_watch::watch::status::InstanceView;
use claude_watch_tests::agents::{Agent, AgentConfig, Runtime, agent_unit, start_user_agent};
use claude_watch_tests::process::ScratchDir;
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::testbed::Testbed;
use claude_watch_tests::users::TestUser;
use claude_watch_tests::watch::{Daemon, metric};

use aya::maps::{HashMap, Map, MapData, loaded_maps};
use claude_watch_tests::process::ChildGuard;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::Trace;

/// The ids of the BPF maps a process holds open (from its fdinfo).
fn map_ids_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// Slots of the trace's `READ_ARGS` map (one per thread that reads: a read in flight, or empty
/// between reads) belonging to process `tgid`.
fn pending_reads_of(trace_pid: u32, tgid: u32) -> usize {
    let ids = map_ids_of(trace_pid);
    let info = loaded_maps()
        .filter_map(Result::ok)
        .find(|m| ids.contains(&m.id()) && m.name_as_str() == Some("READ_ARGS"))
        .expect("the trace holds a READ_ARGS map");
    let data = MapData::from_id(info.id()).expect("open READ_ARGS by id");
    let map = Map::LruHashMap(data);
    // Key: pid_tgid; value: `ReadArgs` (five u64s).
    let reads: HashMap<_, u64, [u64; 5]> =
        HashMap::try_from(&map).expect("READ_ARGS is a hash map of u64 to ReadArgs");
    reads
        .keys()
        .filter_map(Result::ok)
        .filter(|k| (k >> 32) as u32 == tgid)
        .count()
}

/// A Python process whose threads block inside `SSL_read`: a TLS server that never answers and
/// clients that wait for its answer.
const BLOCKED_READERS: &str = r#"
import os, socket, ssl, subprocess, sys, tempfile, threading
d = tempfile.mkdtemp()
cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"], check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
port = listener.getsockname()[1]
print("ready", flush=True)
sys.stdin.readline()
def serve():
    while True:
        conn, _ = listener.accept()
        tls = server_ctx.wrap_socket(conn, server_side=True)
        threading.Thread(target=tls.recv, args=(100,), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE
def client():
    tls = client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
    tls.recv(100)
for _ in range(20):
    threading.Thread(target=client, daemon=True).start()
print("blocking", flush=True)
threading.Event().wait()
"#;

#[test]
fn threads_that_exit_inside_ssl_read_leave_no_pending_read_behind() {
    let mut command = std::process::Command::new(claude_watch_tests::deps::python3());
    command.args(["-c", BLOCKED_READERS]);
    let mut readers = ChildGuard::spawn("blocked TLS readers", &mut command);
    readers.wait_for_line(0, Duration::from_secs(30), "python ready", |l| l == "ready");
    let pid = readers.pid();
    let trace = Trace::start(&["--pid", &pid.to_string()]);
    readers.write_line("go");
    readers.wait_for_line(0, Duration::from_secs(30), "the readers blocking", |l| {
        l == "blocking"
    });
    // Forty threads (twenty clients, twenty server connections) sit inside SSL_read.
    wait_until(
        Duration::from_secs(20),
        "reads in flight in READ_ARGS",
        || (pending_reads_of(trace.pid(), pid) >= 20).then_some(()),
    );
    // Killed there, the threads never return: their entries must go with them, or a user could
    // fill the map and every response on the host would go unseen.
    readers.kill();
    wait_until(
        Duration::from_secs(5),
        "the dead threads' entries freed",
        || (pending_reads_of(trace.pid(), pid) == 0).then_some(()),
    );
}

/// The unprivileged user who runs the attacks on recovery.
const ATTACKER: &str = "cwtest-unit";
const WAIT: Duration = Duration::from_secs(45);

/// Fast detection, short quiet windows, the test bed's system bus.
fn recovery_config(bed: &Testbed) -> String {
    format!(
        "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n[recovery]\nsystemd_bus = \"{}\"\nrestart_timeout = \"20s\"\nbackoff_initial = \"3s\"\n",
        bed.bus_address()
    )
}

/// What the attacks on recovery start from: the attacker's account, the stand-in, a scratch
/// directory and a test bed whose system runs its own `nginx.service`.
struct Scene {
    bed: Testbed,
    dir: ScratchDir,
    standin: StandIn,
    user: TestUser,
    /// The main pid of the system's `nginx.service`.
    system_nginx: u32,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Scene {
    #[track_caller]
    fn start(tag: &str) -> Self {
        let _serial = serial();
        let user = TestUser::ensure(ATTACKER);
        let standin = StandIn::start();
        let dir = ScratchDir::new(&format!("cw-{tag}"));
        let bed = Testbed::start(tag);
        bed.start_sleeper("nginx.service");
        let system_nginx = wait_until(WAIT, "the system nginx", || bed.main_pid("nginx.service"));
        Self {
            bed,
            dir,
            standin,
            user,
            system_nginx,
            _serial,
        }
    }

    /// The user's manager, running the user's agent as their own `nginx.service`; returns the
    /// instance's name.
    #[track_caller]
    fn users_agent_named_nginx(&self) -> String {
        self.bed.start_user_manager(&self.user);
        start_user_agent(
            &self.bed,
            &self.user,
            "nginx.service",
            &self.standin,
            self.dir.path(),
        );
        format!("user:{}:nginx.service", self.user.uid)
    }

    /// Starts the daemon, waits until instance `name` has answered 200, and latches its
    /// session; returns the daemon and the instance as it was healthy.
    #[track_caller]
    fn watch_and_latch(&self, name: &str) -> (Daemon, InstanceView) {
        let daemon = Daemon::start("", &recovery_config(&self.bed));
        let healthy = daemon.wait_for(name, WAIT, "the agent healthy", |i| {
            i.last_status == Some(200)
        });
        self.standin
            .latch_session(healthy.session_id.as_deref().expect("session"));
        (daemon, healthy)
    }

    /// The system's `nginx.service` still runs its first main process.
    #[track_caller]
    fn assert_system_nginx_untouched(&self) {
        assert_eq!(
            self.bed.main_pid("nginx.service"),
            Some(self.system_nginx),
            "the system's nginx.service was not touched"
        );
    }
}

/// systemd's `MainPID` of system unit `unit` (a test bed PID).
fn ns_main_pid(bed: &Testbed, unit: &str) -> String {
    let out = bed.systemctl(&["show", "-p", "MainPID", "--value", unit]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A user's service named like a system service (`nginx.service` in their own manager, while
/// the system runs `nginx.service` too): latching the user's agent restarts the user's unit
/// through the user's manager, and the system's unit keeps its main process.
#[test]
fn a_user_unit_named_like_a_system_unit_gets_only_the_users_unit_restarted() {
    let scene = Scene::start("hostile-nginx");
    let (bed, user) = (&scene.bed, &scene.user);
    let name = scene.users_agent_named_nginx();
    let users_nginx = wait_until(WAIT, "the user's nginx", || {
        bed.user_main_pid(user, "nginx.service")
    });
    let (daemon, healthy) = scene.watch_and_latch(&name);
    assert_eq!(healthy.supervisor, "systemd-user", "{healthy:?}");

    wait_until(WAIT, "the user's episode recovered after a restart", || {
        daemon.records().into_iter().find(|r| {
            matches!(r, Record::Episode { episode, .. } if episode.end == EpisodeEnd::RecoveredAfterRestart)
        })
    });
    let new_users_nginx = bed.user_main_pid(user, "nginx.service");
    assert!(
        new_users_nginx.is_some_and(|p| p != users_nginx),
        "the user's unit was restarted: {new_users_nginx:?}"
    );
    scene.assert_system_nginx_untouched();
    let done = daemon.restarts();
    assert_eq!(done.len(), 1, "{done:?}");
    let detail = done[0].detail.clone().unwrap_or_default();
    assert!(
        done[0].ok && detail.contains(&format!("user@{}'s manager", user.uid)),
        "{done:?}"
    );
}

/// The user's own system service (`User=`, `Delegate=yes`) moves its agent into a sub-cgroup
/// named `nginx.service`: by its cgroup path the agent is the system's `nginx.service`, but the
/// system manager says its process belongs to the user's service. The restart is refused,
/// journalled with both names and shown in `status`; nothing is restarted.
#[test]
fn a_delegated_subcgroup_named_like_a_system_unit_is_refused_and_nothing_is_restarted() {
    let scene = Scene::start("hostile-delegate");
    let (bed, user, dir, standin) = (&scene.bed, &scene.user, &scene.dir, &scene.standin);
    let config = AgentConfig::haiku_as_claude();
    let mover = dir.path().join("move.sh");
    std::fs::write(
        &mover,
        "#!/bin/sh\ncg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)\nmkdir \"$cg/nginx.service\"\necho $$ > \"$cg/nginx.service/cgroup.procs\"\nexec \"$@\"\n",
    )
    .expect("write move.sh");
    let unit = agent_unit(standin, Runtime::Node, &config, dir.path()).replace(
        "ExecStart=",
        &format!("ExecStart=/bin/sh {} ", mover.display()),
    );
    user.chown(dir.path());
    bed.add_unit(
        "attacker.service",
        &format!("{unit}User={}\nDelegate=yes\n", user.name),
    );
    bed.daemon_reload();
    let out = bed.systemctl(&["start", "attacker.service"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attacker = ns_main_pid(bed, "attacker.service");

    let (daemon, _) = scene.watch_and_latch("nginx.service");

    let refused = wait_until(WAIT, "a refused restart in the journal", || {
        daemon.restarts().into_iter().find(|a| !a.ok)
    });
    let detail = refused.detail.unwrap_or_default();
    assert!(
        detail.contains("refused")
            && detail.contains("nginx.service")
            && detail.contains("attacker.service"),
        "{detail}"
    );
    let shown = daemon.wait_for("nginx.service", WAIT, "the refusal in status", |i| {
        i.last_error.is_some()
    });
    let shown = shown.last_error.unwrap_or_default();
    assert!(
        shown.contains("nginx.service") && shown.contains("attacker.service"),
        "{shown}"
    );
    assert!(
        daemon
            .status_text()
            .contains("last restart failed:\n  nginx.service  refused"),
        "{}",
        daemon.status_text()
    );
    assert!(daemon.restarts().iter().all(|a| !a.ok), "nothing restarted");
    scene.assert_system_nginx_untouched();
    assert_eq!(ns_main_pid(bed, "attacker.service"), attacker);
}

/// The user swaps their bus socket for a link to the system bus, hoping the root daemon will
/// take the system manager for theirs (an absolute link seen through `/proc/<pid>/root` even
/// resolves in the daemon's own root: the host's system bus). The daemon connects as the user
/// and only to a socket the user owns, never through a link: refused, journalled, nothing
/// restarted.
#[test]
fn a_user_bus_pointed_at_the_system_bus_gets_nothing_restarted() {
    let scene = Scene::start("hostile-bus");
    let (bed, user) = (&scene.bed, &scene.user);
    let name = scene.users_agent_named_nginx();
    // As the user, inside the test bed: their runtime directory is theirs to change.
    let runtime = format!("/run/user/{}", user.uid);
    let out = std::process::Command::new("nsenter")
        .args(["-t", &bed.pid1().to_string(), "-m", "-p", "setpriv"])
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args([
            "--clear-groups",
            "ln",
            "-sfn",
            "/run/dbus/system_bus_socket",
        ])
        .arg(format!("{runtime}/bus"))
        .output()
        .expect("run ln as the user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (daemon, healthy) = scene.watch_and_latch(&name);
    let refused = wait_until(WAIT, "a refused restart in the journal", || {
        daemon.restarts().into_iter().find(|a| !a.ok)
    });
    let detail = refused.detail.unwrap_or_default();
    assert!(
        detail.contains(&format!("not a socket owned by uid {}", user.uid)),
        "{detail}"
    );
    assert!(daemon.restarts().iter().all(|a| !a.ok), "nothing restarted");
    scene.assert_system_nginx_untouched();
    let now = daemon.wait_for(&name, WAIT, "the agent", |_| true);
    assert_eq!(
        now.pids, healthy.pids,
        "the user's agent was not restarted either"
    );
}

/// Fast thresholds: latched after 3 401s over 2 s.
const DETECTOR: &str = "[detector]\nlatch_min_401s = 3\nlatch_min_span = \"2s\"\n";

#[test]
fn another_user_cannot_borrow_a_named_instance_and_get_it_restarted() {
    let standin = StandIn::start();
    let marks = ScratchDir::new("claude-watch-borrow");
    // An instance named by a rule the attacker can satisfy (it runs the same cli.js), restarted
    // by a command that leaves a mark.
    let rule = format!(
        "{DETECTOR}[[instance]]\nname = \"reviewer\"\nmatch = {{ arg = \"claude-code/cli.js\" }}\n\
         supervisor = {{ kind = \"command\", argv = [\"touch\", \"{}/restarted-{{pid}}\"] }}\n",
        marks.path().display()
    );
    let _serial = serial();
    let daemon = Daemon::start("", &rule);
    let config = AgentConfig::haiku_as_claude();
    let honest = Agent::start(&standin, Runtime::Node, &config);
    daemon.wait_for(
        "reviewer",
        Duration::from_secs(30),
        "the honest agent",
        |i| i.state == "healthy" && i.pids == [honest.pid()],
    );
    // The attacker: same script, same rule, another user; it latches itself and exits.
    let user = TestUser::ensure(ATTACKER);
    let attacker = Agent::start_as(&standin, &user, &config);
    standin.latch_session(attacker.session_id());
    let own = format!("pid:{}", attacker.pid());
    daemon.wait_for(
        &own,
        Duration::from_secs(30),
        "the attacker latched under its own pid",
        |i| i.state == "latched",
    );
    drop(attacker);
    std::thread::sleep(Duration::from_secs(3));
    // The honest instance was neither joined nor restarted.
    let reviewer = daemon.wait_for("reviewer", Duration::from_secs(5), "reviewer", |_| true);
    assert_eq!(reviewer.state, "healthy", "{reviewer:?}");
    assert_eq!(reviewer.pids, [honest.pid()], "{reviewer:?}");
    assert_eq!(reviewer.restarts, 0, "{reviewer:?}");
    let marks_left: Vec<_> = std::fs::read_dir(marks.path())
        .expect("read the marks dir")
        .collect();
    assert!(marks_left.is_empty(), "a restart ran: {marks_left:?}");
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("refused") && l.contains("claimed=reviewer")),
        "the refusal is logged: {:?}",
        daemon.log()
    );
    drop(honest);
}

/// Open file descriptors of process `pid`.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// A node program installed as Claude Code's `cli.js` (so discovery takes it for claude) that
/// floods: its own TLS server on 127.0.0.1 swallows whatever its client writes, and the client
/// writes 4,000-byte buffers that each begin a request head, as fast as TLS carries them.
const FLOOD: &str = r#"
import fs from "node:fs";
import tls from "node:tls";
const cert = fs.readFileSync(process.env.FLOOD_CERT);
const key = fs.readFileSync(process.env.FLOOD_KEY);
const server = tls.createServer({ cert, key }, (s) => { s.on("data", () => {}); s.on("error", () => {}); });
server.listen(0, "127.0.0.1", () => {
  const port = server.address().port;
  const c = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
    const head = Buffer.alloc(4000, "a");
    head.write("POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1\r\nx-pad: ");
    let writes = 0;
    const pump = () => { while (c.write(head)) writes++; c.once("drain", pump); };
    pump();
    setInterval(() => console.log(JSON.stringify({ writes })), 500);
  });
});
"#;

/// Root's honest agent, started next to an attack: watched healthy on its own 200, then
/// latched by the stand-in and its latch detected.
fn honest_agent_latched(daemon: &Daemon, standin: &StandIn) -> Agent {
    let honest = Agent::start(standin, Runtime::Node, &AgentConfig::haiku_as_claude());
    let instance = format!("pid:{}", honest.pid());
    daemon.wait_for(&instance, WAIT, "the honest agent healthy", |i| {
        i.state == "healthy" && i.last_status == Some(200)
    });
    standin.latch_session(honest.session_id());
    daemon.wait_for(&instance, WAIT, "the honest agent's latch detected", |i| {
        i.state == "latched"
    });
    honest
}

/// Starts the [`FLOOD`] installed as `cli` as `user`, and waits for it to write.
fn spawn_flood(
    user: &TestUser,
    dir: &std::path::Path,
    cli: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> ChildGuard {
    let mut command = std::process::Command::new("setpriv");
    command
        .args(user.setpriv_args())
        .arg(claude_watch_tests::deps::node())
        .arg(cli)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FLOOD_CERT", cert)
        .env("FLOOD_KEY", key)
        .current_dir(dir);
    let mut flood = ChildGuard::spawn("flooding claude", &mut command);
    flood.wait_for_line(0, Duration::from_secs(20), "the flood going", |l| {
        l.contains("writes")
    });
    flood
}

/// The rate of a `/metrics` counter over `span`.
fn rate_of(daemon: &Daemon, name: &str, span: Duration) -> f64 {
    let before = metric(&daemon.metrics(), name).unwrap_or_default();
    let started = std::time::Instant::now();
    std::thread::sleep(span);
    let after = metric(&daemon.metrics(), name).unwrap_or_default();
    (after - before) / started.elapsed().as_secs_f64()
}

/// An unprivileged user's process taken for claude floods its TLS writes; the kernel budget
/// drops its records beyond its share, so the honest agent next to it keeps being watched: its
/// latch is detected, no record is lost to a full ring, and the flood shows in `/metrics` and
/// `status`.
#[test]
fn a_process_flooding_tls_writes_does_not_blind_the_honest_agent() {
    let _serial = serial();
    let user = TestUser::ensure(ATTACKER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-hostile-flood");
    let cli = claude_watch_tests::agents::claude_code_package(dir.path(), FLOOD.as_bytes());
    let (cert, key) = claude_watch_tests::standin::self_signed_certificate(dir.path());
    user.chown(dir.path());

    let daemon = Daemon::start(
        &format!(
            "metrics_listen = \"127.0.0.1:{}\"",
            claude_watch_tests::watch::free_port()
        ),
        DETECTOR,
    );
    let flood = spawn_flood(&user, dir.path(), &cli, &cert, &key);
    // The flood is watched (so its writes reach the probes) and goes over its budget.
    let dropped = wait_until(WAIT, "the flood over its budget in /metrics", || {
        metric(&daemon.metrics(), "claude_watch_kernel_over_budget_total").filter(|&v| v > 1000.0)
    });

    let _honest = honest_agent_latched(&daemon, &standin);
    let writes = flood.lines().len();
    let text = daemon.metrics();
    let over = metric(&text, "claude_watch_kernel_over_budget_total").unwrap_or_default();
    assert!(over > dropped, "the flood kept being dropped: {over}");
    assert_eq!(
        metric(&text, "claude_watch_lost_events_total"),
        Some(0.0),
        "no record lost to a full ring:\n{text}"
    );
    assert!(
        metric(&text, "claude_watch_over_budget_processes").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    let status = daemon.status_text();
    assert!(
        status.contains(&format!("pid {} (", flood.pid())),
        "the flooding process is named in status:\n{status}"
    );
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("over its record budget") && l.contains(&flood.pid().to_string())),
        "the flood is logged"
    );
    eprintln!("flood: {writes} progress lines, {over} records dropped over budget");
}

/// The per-user record budget the next two tests give the daemon: well under what the
/// attacker's processes send together.
const USER_SHARE: u32 = 300;

/// A daemon started as the unit starts it, with metrics and a user share of [`USER_SHARE`].
fn daemon_with_user_share(scratch: &str) -> Daemon {
    Daemon::start_as_service(
        ScratchDir::new(scratch),
        &format!(
            "metrics_listen = \"127.0.0.1:{}\"\nrecord_budget_per_user = {USER_SHARE}",
            claude_watch_tests::watch::free_port()
        ),
        DETECTOR,
    )
}

/// One unprivileged user starts four flooding processes, each within its own record budget
/// (256 a second) but over the user's share together: the kernel sends at most the user's
/// share a second (before the share, all four budgets: about 1,000 a second), says the user
/// in `/metrics`, `status` and the log, loses nothing to a full ring, and root's honest agent
/// next to them is watched and its latch detected.
#[test]
fn one_users_many_flooding_processes_spend_only_the_users_share() {
    let _serial = serial();
    let user = TestUser::ensure(ATTACKER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-hostile-user-flood");
    let cli = claude_watch_tests::agents::claude_code_package(dir.path(), FLOOD.as_bytes());
    let (cert, key) = claude_watch_tests::standin::self_signed_certificate(dir.path());
    user.chown(dir.path());
    let daemon = daemon_with_user_share("cw-user-flood-daemon");
    let floods: Vec<ChildGuard> = (0..4)
        .map(|_| spawn_flood(&user, dir.path(), &cli, &cert, &key))
        .collect();
    wait_until(WAIT, "the user over their share in /metrics", || {
        metric(
            &daemon.metrics(),
            "claude_watch_kernel_over_user_budget_total",
        )
        .filter(|&v| v > 1000.0)
    });
    let rate = rate_of(
        &daemon,
        "claude_watch_kernel_records_total",
        Duration::from_secs(5),
    );
    assert!(
        rate <= f64::from(USER_SHARE) * 1.3,
        "the user's four processes sent {rate:.0} records a second, over their share of {USER_SHARE}"
    );
    assert!(
        rate >= f64::from(USER_SHARE) * 0.5,
        "the user's share is spent, not refused whole: {rate:.0} a second"
    );

    let _honest = honest_agent_latched(&daemon, &standin);
    let text = daemon.metrics();
    assert_eq!(
        metric(&text, "claude_watch_lost_events_total"),
        Some(0.0),
        "no record lost to a full ring:\n{text}"
    );
    assert_eq!(
        metric(&text, "claude_watch_over_budget_users"),
        Some(1.0),
        "{text}"
    );
    let status = daemon.status_text();
    assert!(
        status.contains("over a user's budget") && status.contains(&format!("uid {} (", user.uid)),
        "the user is named in status:\n{status}"
    );
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("over their record budget")
                && l.contains(&format!("uid={}", user.uid))),
        "the user is logged"
    );
    assert!(
        floods
            .iter()
            .all(|f| claude_watch_tests::process::alive(f.pid()))
    );
    eprintln!("user flood: 4 processes, {rate:.0} records a second reached user space");
}

/// A program that execs a fresh image in a loop: it writes a new `./fresh` (the old one
/// unlinked, so a reader still holding it never makes the write fail) with its own bytes and
/// one more trailing byte each time (a new size, so a new image to the kernel even when the
/// inode is reused, for the first 65,536 runs) and runs it, which exits at once.
const EXEC_LOOP: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1) return 0;
    static char self[1 << 20];
    int fd = open("/proc/self/exe", O_RDONLY);
    ssize_t n = read(fd, self, sizeof self);
    close(fd);
    if (n <= 0) return 1;
    static char pad[1 << 16];
    for (unsigned long i = 0;; i++) {
        unlink("fresh");
        int out = open("fresh", O_WRONLY | O_CREAT | O_EXCL, 0700);
        if (out < 0) { perror("open"); return 2; }
        if (write(out, self, n) != n) { perror("write"); return 3; }
        if (write(out, pad, i % sizeof pad) < 0) { perror("write"); return 3; }
        close(out);
        pid_t child = fork();
        if (child == 0) {
            char *args[] = { "fresh", "child", NULL };
            execv("./fresh", args);
            _exit(127);
        }
        int st;
        waitpid(child, &st, 0);
        if (i % 1000 == 0) { printf("execs %lu\n", i); fflush(stdout); }
    }
}
"#;

/// A program that only waits, installed as Claude Code's `cli.js`.
const IDLE_CLAUDE: &str = "setInterval(() => {}, 1000);\n";

/// One unprivileged user execs fresh images in a loop (each one a look for the daemon): the
/// kernel sends at most the user's share of them a second (before: every one, thousands a
/// second) and counts the rest; the user's own Claude Code started meanwhile is still found
/// (the daemon looks at every process again when execs were dropped), root's honest agent is
/// watched and its latch detected, and `status` answers within a second throughout.
#[test]
fn a_user_execing_fresh_images_in_a_loop_spends_only_their_share() {
    let _serial = serial();
    let user = TestUser::ensure(ATTACKER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-hostile-exec-loop");
    std::fs::write(dir.path().join("loop.c"), EXEC_LOOP).expect("write loop.c");
    let out = std::process::Command::new("cc")
        .args(["-O1", "-o"])
        .arg(dir.path().join("loop"))
        .arg(dir.path().join("loop.c"))
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = claude_watch_tests::agents::claude_code_package(dir.path(), IDLE_CLAUDE.as_bytes());
    user.chown(dir.path());
    let mut daemon = daemon_with_user_share("cw-exec-loop-daemon");
    let mut command = std::process::Command::new("setpriv");
    command
        .args(user.setpriv_args())
        .arg(dir.path().join("loop"))
        .current_dir(dir.path());
    let mut exec_loop = ChildGuard::spawn("exec loop", &mut command);
    exec_loop.wait_for_line(0, Duration::from_secs(20), "the loop going", |l| {
        l.starts_with("execs 1000")
    });
    wait_until(WAIT, "execs dropped over the user's share", || {
        metric(
            &daemon.metrics(),
            "claude_watch_kernel_execs_over_budget_total",
        )
        .filter(|&v| v > 1000.0)
    });
    let sent = rate_of(
        &daemon,
        "claude_watch_kernel_execs_sent_total",
        Duration::from_secs(5),
    );
    let dropped = rate_of(
        &daemon,
        "claude_watch_kernel_execs_over_budget_total",
        Duration::from_secs(3),
    );
    assert!(
        sent <= f64::from(USER_SHARE) * 1.3,
        "{sent:.0} execs a second reached user space, over the user's share of {USER_SHARE}"
    );
    assert!(
        dropped > 0.0,
        "the loop is still dropped: {dropped:.0} a second"
    );

    // The user's own Claude Code, started during the loop, is found all the same.
    let mut command = std::process::Command::new("setpriv");
    command
        .args(user.setpriv_args())
        .arg(claude_watch_tests::deps::node())
        .arg(&cli)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(dir.path());
    let own = ChildGuard::spawn("the user's claude", &mut command);
    daemon.wait_for(
        &format!("pid:{}", own.pid()),
        WAIT,
        "the user's own claude found during the loop",
        |_| true,
    );

    let _honest = honest_agent_latched(&daemon, &standin);
    let slowest = assert_steady(&mut daemon, Duration::from_secs(5), "the exec loop");
    let status = daemon.status_text();
    assert!(
        status.contains(&format!("uid {} (", user.uid)),
        "the user is named in status:\n{status}"
    );
    assert!(
        !exec_loop.has_exited(),
        "the loop ran throughout: {:?}",
        exec_loop.stderr_tail()
    );
    eprintln!(
        "exec loop: {sent:.0} execs a second sent, {dropped:.0} dropped; status at worst {slowest:?}"
    );
}

/// A tiny program named `claude` that exports `SSL_write` and `SSL_read` (found by its
/// symbols) and waits for its standard input to close.
const TINY_CLAUDE: &str = r"
#include <unistd.h>
int SSL_write(void *s, const void *b, int n) { return n; }
int SSL_read(void *s, void *b, int n) { return 0; }
int main(void) { char c; read(0, &c, 1); return 0; }
";

/// Starts `n` distinct copies (each its own file) of the tiny claude as `user`.
fn tiny_claudes(dir: &std::path::Path, user: &TestUser, from: usize, n: usize) -> Vec<ChildGuard> {
    let built = dir.join("tiny");
    if !built.exists() {
        std::fs::write(dir.join("tiny.c"), TINY_CLAUDE).expect("write tiny.c");
        let out = std::process::Command::new("cc")
            .args(["-O1", "-rdynamic", "-o"])
            .arg(&built)
            .arg(dir.join("tiny.c"))
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (from..from + n)
        .map(|i| {
            let home = dir.join(format!("c{i}"));
            std::fs::create_dir_all(&home).expect("create a copy's dir");
            let exe = home.join("claude");
            std::fs::copy(&built, &exe).expect("copy the tiny claude");
            user.chown(&home);
            let mut command = std::process::Command::new("setpriv");
            command
                .args(user.setpriv_args())
                .arg(&exe)
                .current_dir(&home);
            ChildGuard::spawn("tiny claude", &mut command)
        })
        .collect()
}

/// An unprivileged user runs many distinct `claude` files: the daemon attaches at most
/// `max_attachments` of them, shows the rest unobserved with the reason (and counts them),
/// and detaches each file when its last process exits, so attachments and file descriptors
/// return to where they were. (The user's share is the whole cap here, to reach the cap.)
#[test]
fn many_distinct_claude_files_are_capped_and_detached_when_they_exit() {
    let _serial = serial();
    let user = TestUser::ensure(ATTACKER);
    let dir = ScratchDir::new("cw-hostile-tiny");
    let daemon = Daemon::start(
        &format!(
            "metrics_listen = \"127.0.0.1:{}\"\nmax_attachments = 8\nmax_attachments_per_user = 8",
            claude_watch_tests::watch::free_port()
        ),
        "",
    );
    let attachments = || {
        wait_until(WAIT, "the attachments gauge", || {
            metric(&daemon.metrics(), "claude_watch_probe_attachments")
        })
    };
    // Other claude processes of the host may hold attachments already.
    let base = attachments();
    let base_fds = fds_of(daemon.pid());
    assert!(base < 4.0, "room under the cap for the test: {base}");
    let room = 8 - base as usize;

    let mut tinies = tiny_claudes(dir.path(), &user, 0, room + 4);
    wait_until(WAIT, "every copy seen, the cap reached", || {
        let seen = tinies
            .iter()
            .filter(|t| daemon.instance_with_pid(t.pid()).is_some())
            .count();
        (seen == tinies.len() && attachments() == 8.0).then_some(())
    });
    // The cap is reached while the last copies may still wait for their look: each is refused
    // at its turn.
    wait_until(WAIT, "the 4 copies over the cap refused", || {
        let refused = tinies
            .iter()
            .filter_map(|t| daemon.instance_with_pid(t.pid()))
            .filter(|i| {
                i.unobserved
                    .as_deref()
                    .is_some_and(|w| w.contains("max_attachments"))
            })
            .count();
        (refused == 4).then_some(())
    });
    let text = daemon.metrics();
    assert!(
        metric(&text, "claude_watch_probe_attachments_refused_total").is_some_and(|v| v >= 4.0),
        "{text}"
    );
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("attachment cap reached") && l.contains("pid=")),
        "the refusal is logged with its fields"
    );
    assert!(daemon.status_text().contains("attachments refused (cap 8"));
    let capped_fds = fds_of(daemon.pid());

    for t in &mut tinies {
        t.close_stdin();
    }
    wait_until(WAIT, "every file detached after its process exited", || {
        (attachments() == base).then_some(())
    });
    drop(tinies);
    let after_fds = fds_of(daemon.pid());
    assert!(
        after_fds <= base_fds + 2,
        "fds back near {base_fds}: {after_fds} (at the cap: {capped_fds})"
    );

    // Room again: new files attach, and go too.
    let mut again = tiny_claudes(dir.path(), &user, 100, room);
    wait_until(WAIT, "the new copies attached", || {
        (attachments() == 8.0).then_some(())
    });
    for t in &again {
        let view = daemon.instance_with_pid(t.pid()).expect("seen");
        assert!(view.unobserved.is_none(), "{view:?}");
    }
    for t in &mut again {
        t.close_stdin();
    }
    wait_until(WAIT, "detached again", || {
        (attachments() == base).then_some(())
    });
    eprintln!("fds: {base_fds} at start, {capped_fds} at the cap, {after_fds} after");
    // The daemon still answers status (with instances of the library's own shape).
    daemon.instances();
}

// The daemon's own reads (#28): paths an unprivileged user chooses, given to a process the
// daemon looks at, against a daemon started as the packaged unit starts it (a session leader
// without a terminal).

/// A program named `node` that waits for its standard input to close: discovery takes its
/// first argument for the script it runs, and looks at that file.
const TINY_NODE: &str =
    "#include <unistd.h>\nint main(void) { char c; read(0, &c, 1); return 0; }\n";

/// How fast `status` must answer while an attack runs.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// The attacker's working directory, theirs, with their own `node` in it.
struct Workdir {
    user: TestUser,
    dir: ScratchDir,
}

impl Workdir {
    #[track_caller]
    fn new(tag: &str) -> Self {
        let user = TestUser::ensure(ATTACKER);
        let dir = ScratchDir::new(&format!("cw-{tag}"));
        std::fs::write(dir.path().join("node.c"), TINY_NODE).expect("write node.c");
        let out = std::process::Command::new("cc")
            .args(["-O1", "-o"])
            .arg(dir.path().join("node"))
            .arg(dir.path().join("node.c"))
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        user.chown(dir.path());
        Self { user, dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Runs `./node <script>` as the attacker, in their directory.
    #[track_caller]
    fn node(&self, script: &str) -> ChildGuard {
        let mut command = std::process::Command::new("setpriv");
        command
            .args(self.user.setpriv_args())
            .arg(self.path().join("node"))
            .arg(script)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(self.path());
        ChildGuard::spawn("the attacker's node", &mut command)
    }

    /// Runs `cmd args...` as the attacker, in their directory, to completion.
    #[track_caller]
    fn run(&self, cmd: &str, args: &[&str]) {
        let out = std::process::Command::new("setpriv")
            .args(self.user.setpriv_args())
            .arg(cmd)
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("run as the attacker");
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// For `period`, every quarter second: the daemon runs, has no controlling terminal, and
/// `status` answers within [`ANSWER_WITHIN`]. Returns the slowest answer.
#[track_caller]
fn assert_steady(daemon: &mut Daemon, period: Duration, during: &str) -> Duration {
    let started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < period {
        assert!(daemon.running(), "the daemon exited {during}");
        assert_eq!(
            daemon.controlling_terminal(),
            Some(0),
            "the daemon has a controlling terminal {during}"
        );
        let took = daemon
            .status_latency(ANSWER_WITHIN)
            .unwrap_or_else(|| panic!("status did not answer within {ANSWER_WITHIN:?} {during}"));
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(250));
    }
    slowest
}

/// The test bed running one honest agent in `agent.service` (root's, taken for Claude Code),
/// and the daemon's configuration to restart it there.
fn honest_unit(tag: &str, standin: &StandIn, dir: &std::path::Path) -> (Testbed, String) {
    let bed = Testbed::start(tag);
    let config = AgentConfig::haiku_as_claude();
    bed.add_unit(
        "agent.service",
        &agent_unit(standin, Runtime::Node, &config, dir),
    );
    bed.daemon_reload();
    let out = bed.systemctl(&["start", "agent.service"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = recovery_config(&bed);
    (bed, config)
}

/// The honest agent in `agent.service` is latched and recovered by a restart, confirmed by its
/// new process's own 200.
#[track_caller]
fn assert_honest_agent_recovered(daemon: &Daemon, standin: &StandIn) {
    let healthy = daemon.wait_for("agent.service", WAIT, "the honest agent healthy", |i| {
        i.last_status == Some(200) && i.unobserved.is_none()
    });
    let old_session = healthy.session_id.clone().expect("session");
    let latched_at = claude_watch_tests::wait::now_ms();
    standin.latch_session(&old_session);
    daemon.wait_closed_episode(
        Some("agent.service"),
        EpisodeEnd::RecoveredAfterRestart,
        WAIT,
    );
    daemon.assert_recovered_by_new_session(
        standin,
        "agent.service",
        &old_session,
        latched_at,
        WAIT,
    );
}

/// A node process whose script is a FIFO (by a relative path, resolved in its working
/// directory, and by an absolute one): the daemon never waits for a writer. `status` answers
/// within a second throughout, also after the daemon restarts with the process still there (its
/// startup scan meets it first), no instance is made of it, and the honest agent next to it is
/// observed, latched and recovered.
#[test]
fn a_fifo_as_a_script_does_not_stop_the_daemon() {
    let _serial = serial();
    let standin = StandIn::start();
    let scratch = ScratchDir::new("cw-hostile-fifo-agent");
    let (_bed, config) = honest_unit("hostile-fifo", &standin, scratch.path());
    let attacker = Workdir::new("hostile-fifo");
    attacker.run("mkfifo", &["cli.js"]);
    let absolute = attacker.path().join("cli.js");

    let mut daemon = Daemon::start_as_service(ScratchDir::new("cw-fifo-daemon"), "", &config);
    daemon.wait_for("agent.service", WAIT, "the honest agent seen", |_| true);
    let fifos = [
        attacker.node("cli.js"),
        attacker.node(absolute.to_str().expect("utf-8")),
    ];
    let slowest = assert_steady(&mut daemon, Duration::from_secs(4), "with FIFO scripts");
    for fifo in &fifos {
        assert!(
            daemon.instance_with_pid(fifo.pid()).is_none(),
            "a process whose script is a FIFO is no instance"
        );
    }

    // Restarted with the processes still there: the startup scan meets them first.
    let dir = daemon.stop();
    let mut daemon = Daemon::start_as_service(dir, "", &config);
    let after = assert_steady(&mut daemon, Duration::from_secs(2), "after a restart");
    assert_honest_agent_recovered(&daemon, &standin);
    assert_steady(
        &mut daemon,
        Duration::from_millis(500),
        "after the recovery",
    );
    drop(fifos);
    eprintln!("slowest status answer: {slowest:?} with the FIFOs, {after:?} after a restart");
}

/// The daemon's `open`s and `read`s, as `strace -f -y` shows them, while it is attached.
struct SyscallTrace {
    strace: ChildGuard,
    out: std::path::PathBuf,
}

impl SyscallTrace {
    #[track_caller]
    fn attach(pid: u32, dir: &std::path::Path) -> Self {
        let out = dir.join("strace.txt");
        let mut command = std::process::Command::new("strace");
        command
            .args([
                "-f",
                "-qq",
                "-y",
                "-e",
                "trace=open,openat,openat2,read,pread64",
            ])
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()]);
        let strace = ChildGuard::spawn("strace", &mut command);
        wait_until(Duration::from_secs(10), "strace attached", || {
            out.exists().then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        Self { strace, out }
    }

    /// Detaches; the calls seen, one per line (a call interrupted by another thread's joined
    /// with its resumption).
    #[track_caller]
    fn finish(mut self) -> Vec<String> {
        self.strace.terminate(Duration::from_secs(10));
        let text = std::fs::read_to_string(&self.out).expect("strace output");
        let mut calls = Vec::new();
        let mut unfinished: std::collections::HashMap<String, String> =
            std::collections::HashMap::new();
        for line in text.lines() {
            let pid = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(start) = line.strip_suffix("<unfinished ...>") {
                unfinished.insert(pid, start.to_owned());
            } else if line.contains(" resumed>") {
                let start = unfinished.remove(&pid).unwrap_or_default();
                calls.push(format!("{start}{line}"));
            } else {
                calls.push(line.to_owned());
            }
        }
        calls
    }
}

/// The calls that opened `device` for I/O (anything but `O_PATH`, which runs no driver code)
/// or read from it.
fn device_io<'a>(calls: &'a [String], device: &str) -> Vec<&'a String> {
    let shown = format!("<{device}>");
    calls
        .iter()
        .filter(|c| c.contains(&shown))
        .filter(|c| {
            let read = c.contains("read(") || c.contains("pread64(");
            read || !c.contains("O_PATH")
        })
        .collect()
}

/// Device nodes given as a script (`/dev/zero` by its path, and through a link in the
/// attacker's directory): the daemon never opens them for I/O nor reads them (`strace` of the
/// daemon throughout), keeps answering, and keeps watching an honest agent.
#[test]
fn a_device_as_a_script_is_never_opened_or_read() {
    let _serial = serial();
    let standin = StandIn::start();
    let attacker = Workdir::new("hostile-device");
    attacker.run("ln", &["-s", "/dev/zero", "zero.js"]);
    let mut daemon = Daemon::start_as_service(ScratchDir::new("cw-device-daemon"), "", DETECTOR);
    let trace = SyscallTrace::attach(daemon.pid(), daemon.dir());
    let devices = [attacker.node("/dev/zero"), attacker.node("zero.js")];
    let honest = Agent::start(&standin, Runtime::Node, &AgentConfig::haiku_as_claude());
    let name = format!("pid:{}", honest.pid());
    assert_steady(&mut daemon, Duration::from_secs(3), "with device scripts");
    daemon.wait_for(&name, WAIT, "the honest agent observed", |i| {
        i.last_status == Some(200) && i.unobserved.is_none()
    });
    standin.latch_session(honest.session_id());
    daemon.wait_for(&name, WAIT, "the honest agent latched", |i| {
        i.state == "latched"
    });
    let calls = trace.finish();
    let opened = device_io(&calls, "/dev/zero");
    assert!(
        opened.is_empty(),
        "the daemon opened or read /dev/zero for the attacker:\n{opened:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.contains("zero.js") || c.contains("dev/zero")),
        "the daemon looked at the paths (the trace saw it): {} calls",
        calls.len()
    );
    for device in &devices {
        assert!(daemon.instance_with_pid(device.pid()).is_none());
    }
}

/// The attacker's pty: a fresh pair whose slave their `node` names as its script (through a
/// link), and a master they type into.
const PTY_ATTACK: &str = r#"
import os, subprocess, sys
master, slave = os.openpty()
os.symlink(os.ttyname(slave), "cli.js")
os.close(slave)
node = subprocess.Popen([os.path.abspath("node"), "cli.js"], stdin=subprocess.PIPE)
print("ready", node.pid, flush=True)
for line in sys.stdin:
    # ^C, ^\ and ^Z: SIGINT, SIGQUIT and SIGTSTP to the terminal's foreground group.
    os.write(master, b"\x03\x1c\x1a\n")
    print("typed", flush=True)
"#;

/// A node process whose script is a link to a fresh pty slave of the attacker's: the daemon
/// (a session leader without a terminal, as under systemd) never makes it its controlling
/// terminal (`tty_nr` stays 0), and ^C, ^\ and ^Z typed on the master leave it running and
/// answering; the honest agent is still observed, latched and recovered.
#[test]
fn a_pty_as_a_script_never_becomes_the_daemons_terminal() {
    let _serial = serial();
    let standin = StandIn::start();
    let scratch = ScratchDir::new("cw-hostile-pty-agent");
    let (_bed, config) = honest_unit("hostile-pty", &standin, scratch.path());
    let attacker = Workdir::new("hostile-pty");
    let mut daemon = Daemon::start_as_service(ScratchDir::new("cw-pty-daemon"), "", &config);
    daemon.wait_for("agent.service", WAIT, "the honest agent seen", |_| true);

    let mut command = std::process::Command::new("setpriv");
    command
        .args(attacker.user.setpriv_args())
        .arg(claude_watch_tests::deps::python3())
        .args(["-c", PTY_ATTACK])
        .current_dir(attacker.path());
    let mut pty = ChildGuard::spawn("the attacker's pty", &mut command);
    pty.wait_for_line(0, Duration::from_secs(10), "the pty ready", |l| {
        l.starts_with("ready")
    });
    assert_steady(&mut daemon, Duration::from_secs(3), "with a pty script");
    for round in 0..3 {
        pty.write_line("type");
        pty.wait_for_line(round, Duration::from_secs(5), "the keys typed", |l| {
            l == "typed"
        });
        assert_steady(
            &mut daemon,
            Duration::from_secs(1),
            "after ^C ^\\ ^Z on the pty",
        );
    }
    assert!(
        !daemon.log().iter().any(|l| l.contains("stopping")),
        "the daemon did not stop"
    );
    assert_honest_agent_recovered(&daemon, &standin);
    assert_steady(
        &mut daemon,
        Duration::from_millis(500),
        "after the recovery",
    );
}

/// `requestId`s in the transcripts under `dir`.
fn request_ids(dir: &std::path::Path) -> Vec<String> {
    let mut ids = Vec::new();
    for file in std::fs::read_dir(dir).expect("read the transcripts") {
        let text = std::fs::read_to_string(file.expect("entry").path()).expect("read");
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for id in [&v["requestId"], &v["error"]["requestId"]] {
                if let Some(id) = id.as_str() {
                    ids.push(id.to_owned());
                }
            }
        }
    }
    ids
}

/// A copy of fixture project `name` at `to`.
fn copy_project(name: &str, to: &std::path::Path) {
    let from = claude_watch_tests::deps::assets_dir()
        .join("fixtures/transcripts/projects")
        .join(name);
    std::fs::create_dir_all(to).expect("create the project");
    for f in std::fs::read_dir(from).expect("fixtures") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, to.join(f.file_name().expect("name"))).expect("copy");
    }
}

/// `episodes --import` of a user's `~/.claude` that holds, next to an honest transcript: a
/// FIFO, a 64 GiB sparse file, a link to another user's transcript, and a link to another
/// user's whole project directory, all named like transcripts. The import finishes in
/// seconds with bounded memory, imports the honest transcript, reads nothing through the
/// links, and says what it skipped.
#[test]
fn the_history_import_skips_fifos_huge_files_and_links() {
    let attacker = Workdir::new("hostile-import");
    let victim = attacker.path().join("victim-projects/-srv-victim");
    copy_project("-tmp-cw-transcript-fixtures-fleet-c", &victim);
    let home = attacker.path().join("home/.claude");
    let honest = home.join("projects/-srv-honest");
    copy_project("-tmp-cw-transcript-fixtures-fleet-a", &honest);
    let evil = home.join("projects/-srv-evil");
    std::fs::create_dir_all(&evil).expect("create the evil project");
    let status = std::process::Command::new("mkfifo")
        .arg(evil.join("fifo.jsonl"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    std::fs::File::create(evil.join("huge.jsonl"))
        .and_then(|f| f.set_len(64 << 30))
        .expect("a sparse 64 GiB file");
    let stolen = std::fs::read_dir(&victim)
        .expect("victim")
        .next()
        .expect("a transcript")
        .expect("entry")
        .path();
    std::os::unix::fs::symlink(&stolen, evil.join("stolen.jsonl")).expect("link a file");
    std::os::unix::fs::symlink(&victim, home.join("projects/-srv-linked")).expect("link a dir");
    attacker.user.chown(&attacker.path().join("home"));

    let journal = attacker.path().join("journal.jsonl");
    let config = attacker.path().join("config.toml");
    std::fs::write(&config, "").expect("write the config");
    let started = std::time::Instant::now();
    #[expect(
        clippy::zombie_processes,
        reason = "reaped below by wait4, which also gives its peak RSS"
    )]
    let mut child = std::process::Command::new(claude_watch_tests::watch::bin())
        .args(["episodes", "--json", "--import"])
        .arg(&home)
        .arg("--journal")
        .arg(&journal)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run episodes --import");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // Reaped here with its resource usage (peak RSS).
    let (status, peak_kib) = loop {
        let mut raw = 0;
        // SAFETY: plain syscall on our own child; rusage is written by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let done = unsafe { libc::wait4(pid, &raw mut raw, libc::WNOHANG, &raw mut usage) };
        if done == pid {
            break (raw, usage.ru_maxrss);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the import did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the import failed ({status:#x}):\n{stderr}"
    );
    assert!(
        peak_kib < 256 * 1024,
        "the import's peak RSS is {peak_kib} KiB"
    );
    let text = std::fs::read_to_string(&journal).expect("the journal");
    let imported = request_ids(&honest);
    assert!(
        imported.iter().any(|id| text.contains(id.as_str())),
        "the honest transcript was imported"
    );
    let leaked: Vec<_> = request_ids(&victim)
        .into_iter()
        .filter(|id| text.contains(id.as_str()))
        .collect();
    assert!(leaked.is_empty(), "read through a link: {leaked:?}");
    for skipped in ["fifo.jsonl", "huge.jsonl", "stolen.jsonl", "-srv-linked"] {
        assert!(
            stderr.contains(skipped),
            "the import says it skipped {skipped}:\n{stderr}"
        );
    }
    eprintln!("import: {:?}, peak RSS {peak_kib} KiB", started.elapsed());
}

/// An unprivileged user starts as many distinct `claude` files as the whole attachment cap
/// (12): only their share (a quarter of the cap) is attached, the rest of their files are shown
/// unobserved with the reason, and another user's agent started afterwards is still attached,
/// observed and its latch detected.
#[test]
fn one_user_filling_the_attachment_cap_leaves_room_for_another_users_agent() {
    let _serial = serial();
    let user = TestUser::ensure(ATTACKER);
    let standin = StandIn::start();
    let dir = ScratchDir::new("cw-hostile-share");
    let daemon = Daemon::start(
        &format!(
            "metrics_listen = \"127.0.0.1:{}\"\nmax_attachments = 12",
            claude_watch_tests::watch::free_port()
        ),
        DETECTOR,
    );
    let attachments = || {
        wait_until(WAIT, "the attachments gauge", || {
            metric(&daemon.metrics(), "claude_watch_probe_attachments")
        })
    };
    let base = attachments();
    assert!(base < 3.0, "room under the share for the test: {base}");
    let tinies = tiny_claudes(dir.path(), &user, 0, 12);
    let share = 12 / 4;
    wait_until(WAIT, "every copy seen, each attached or refused", || {
        let views: Vec<_> = tinies
            .iter()
            .filter_map(|t| daemon.instance_with_pid(t.pid()))
            .collect();
        let refused = views
            .iter()
            .filter(|i| {
                i.unobserved
                    .as_deref()
                    .is_some_and(|w| w.contains("max_attachments"))
            })
            .count();
        (views.len() == tinies.len() && refused >= tinies.len() - share).then_some(refused)
    });
    let refused: Vec<String> = tinies
        .iter()
        .filter_map(|t| daemon.instance_with_pid(t.pid())?.unobserved)
        .collect();
    assert_eq!(refused.len(), tinies.len() - share, "{refused:#?}");
    assert!(
        refused.iter().all(|w| w.contains(&format!(
            "uid {} holds {share} attachments already (its share",
            user.uid
        ))),
        "{refused:#?}"
    );
    assert_eq!(attachments(), base + share as f64);

    // Another user's agent (root's) is attached and watched: the cap is not the attacker's.
    let honest = Agent::start(&standin, Runtime::Node, &AgentConfig::haiku_as_claude());
    let name = format!("pid:{}", honest.pid());
    daemon.wait_for(&name, WAIT, "the honest agent observed", |i| {
        i.last_status == Some(200) && i.unobserved.is_none()
    });
    standin.latch_session(honest.session_id());
    daemon.wait_for(&name, WAIT, "the honest agent's latch detected", |i| {
        i.state == "latched"
    });
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("share of attachments is used up") && l.contains("uid=")),
        "the refusal is logged with its fields"
    );
    drop(tinies);
}

/// Connections a user opens to the metrics port and leaves idle.
const IDLE_CONNECTIONS: &str = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = int(sys.argv[2]) + 64
resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
socks = []
for _ in range(min(int(sys.argv[2]), hard - 64)):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
    except BlockingIOError:
        pass
    socks.append(s)
print("open", len(socks), flush=True)
sys.stdin.readline()
"#;

/// An unprivileged user opens thousands of connections to the metrics port and leaves them
/// idle: the daemon serves at most a few at once, so its descriptors stay bounded, `status`
/// answers within a second, and an honest agent started meanwhile is attached and watched.
/// The user holds at most their share of the connections served (8 of 32): root's scrapes
/// meanwhile are answered at once (before the share, the user's idle connections took every
/// slot for 5 s each, and a scrape waited behind them).
#[test]
fn idle_metrics_connections_do_not_take_the_daemons_descriptors() {
    let _serial = serial();
    let user = TestUser::ensure(ATTACKER);
    let standin = StandIn::start();
    let port = claude_watch_tests::watch::free_port();
    let mut daemon = Daemon::start_as_service(
        ScratchDir::new("cw-metrics-daemon"),
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
        DETECTOR,
    );
    let base_fds = fds_of(daemon.pid());
    let mut command = std::process::Command::new("setpriv");
    command
        .args(user.setpriv_args())
        .arg(claude_watch_tests::deps::python3())
        .args(["-c", IDLE_CONNECTIONS, &port.to_string(), "3000"]);
    let mut idle = ChildGuard::spawn("idle metrics connections", &mut command);
    let (_, opened) = idle.wait_for_line(0, Duration::from_secs(30), "the connections open", |l| {
        l.starts_with("open")
    });
    let honest = Agent::start(&standin, Runtime::Node, &AgentConfig::haiku_as_claude());
    let started = std::time::Instant::now();
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(6) {
        most = most.max(fds_of(daemon.pid()));
        assert_steady(
            &mut daemon,
            Duration::from_millis(1),
            "with idle metrics connections",
        );
    }
    assert!(
        most <= base_fds + 32 + 16,
        "the daemon's descriptors stay bounded: {most} at most, {base_fds} before ({opened})"
    );
    let mut slowest_scrape = Duration::ZERO;
    for _ in 0..5 {
        let asked = std::time::Instant::now();
        assert!(daemon.metrics().contains("claude_watch_"));
        slowest_scrape = slowest_scrape.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        slowest_scrape < Duration::from_secs(3),
        "root's scrapes wait behind the user's idle connections: {slowest_scrape:?}"
    );
    daemon.wait_for(
        &format!("pid:{}", honest.pid()),
        WAIT,
        "the honest agent observed",
        |i| i.last_status == Some(200) && i.unobserved.is_none(),
    );
    eprintln!(
        "{opened}: the daemon held at most {most} descriptors ({base_fds} before); root's slowest scrape {slowest_scrape:?}"
    );
}

/// Starts `argv` in a new session whose controlling terminal is a fresh pty, as a process that
/// does not lead that session (a shell's job), printing its pid and then what it writes there.
const ON_A_TERMINAL: &str = r#"
import os, pty, sys
pid, master = pty.fork()
if pid == 0:
    child = os.fork()
    if child == 0:
        os.execv(sys.argv[1], sys.argv[1:])
    print("pid", child, flush=True)
    os.waitpid(child, 0)
    os._exit(0)
buf = b""
while True:
    try:
        data = os.read(master, 4096)
    except OSError:
        break
    if not data:
        break
    buf += data
    *lines, buf = buf.split(b"\n")
    for line in lines:
        print(line.decode(errors="replace").rstrip("\r"), flush=True)
"#;

/// Started by hand from a terminal (a shell's job, not the session's leader), the daemon gives
/// that terminal up at start: it has none (`tty_nr` 0), and not leading its session it can never
/// get one.
#[test]
fn a_daemon_started_from_a_terminal_gives_it_up() {
    let _serial = serial();
    let dir = ScratchDir::new("cw-hostile-tty");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\njournal = \"{d}/journal.jsonl\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\n",
            d = dir.path().display()
        ),
    )
    .expect("write the config");
    let bin = claude_watch_tests::watch::bin();
    let mut command = std::process::Command::new(claude_watch_tests::deps::python3());
    command
        .args(["-c", ON_A_TERMINAL])
        .arg(&bin)
        .args(["daemon", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info");
    let mut terminal = ChildGuard::spawn("the daemon on a terminal", &mut command);
    let (_, line) = terminal.wait_for_line(0, Duration::from_secs(10), "the daemon's pid", |l| {
        l.starts_with("pid ")
    });
    let pid: u32 = line[4..].trim().parse().expect("a pid");
    /// SIGTERM to the daemon however the test ends (it is in a session of its own, which the
    /// guard of its starter does not reach).
    struct Stop(libc::pid_t);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: plain syscall on a process this test started.
            unsafe {
                libc::kill(self.0, libc::SIGTERM);
            }
        }
    }
    let _stop = Stop(libc::pid_t::try_from(pid).expect("pid"));
    terminal.wait_for_line(0, Duration::from_secs(30), "the daemon watching", |l| {
        l.contains("claude-watch is watching")
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon runs");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 1..]
        .split_whitespace()
        .collect();
    let (session, tty) = (fields[3], fields[4]);
    assert_ne!(
        session,
        pid.to_string(),
        "the daemon does not lead its session"
    );
    assert_eq!(tty, "0", "the daemon has no controlling terminal");
    assert!(
        terminal
            .lines()
            .iter()
            .any(|l| l.contains("gave up the controlling terminal")),
        "{:?}",
        terminal.lines()
    );
}

/// The honest process of a named instance (a rule without `uid`, which its processes satisfy
/// by what they run) exits, as it does during its own restart; another user's process that
/// matches the rule meanwhile is refused the name all the same (the instance remembers its
/// owner), and is watched under its own pid; the honest process, back, takes its name again.
#[test]
fn another_user_cannot_squat_a_named_instance_while_its_process_is_down() {
    let standin = StandIn::start();
    let rule = format!(
        "{DETECTOR}[[instance]]\nname = \"reviewer\"\nmatch = {{ arg = \"claude-code/cli.js\" }}\n"
    );
    let _serial = serial();
    let daemon = Daemon::start("", &rule);
    let config = AgentConfig::haiku_as_claude();
    let mut honest = Agent::start(&standin, Runtime::Node, &config);
    daemon.wait_for("reviewer", WAIT, "the honest agent", |i| {
        i.state == "healthy" && i.pids == [honest.pid()]
    });
    honest.kill();
    daemon.wait_for("reviewer", WAIT, "the instance without a process", |i| {
        i.pids.is_empty()
    });
    let user = TestUser::ensure(ATTACKER);
    let attacker = Agent::start_as(&standin, &user, &config);
    let own = format!("pid:{}", attacker.pid());
    daemon.wait_for(&own, WAIT, "the attacker under its own pid", |i| {
        i.state == "healthy"
    });
    let reviewer = daemon.wait_for("reviewer", WAIT, "reviewer", |_| true);
    assert!(reviewer.pids.is_empty(), "{reviewer:?}");
    assert!(
        daemon
            .log()
            .iter()
            .any(|l| l.contains("refused") && l.contains("claimed=reviewer")),
        "the refusal is logged"
    );
    let back = Agent::start(&standin, Runtime::Node, &config);
    daemon.wait_for(
        "reviewer",
        WAIT,
        "the honest agent back under its name",
        |i| i.pids == [back.pid()],
    );
}
