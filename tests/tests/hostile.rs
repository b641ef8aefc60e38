//! What an unprivileged neighbour can do to the root daemon: each attack run as a user the test
//! creates (processes started through `setpriv`), against real probes and a real daemon, each
//! asserting the outcome (nothing done for the attacker that it could not do itself, the honest
//! agent next to it still watched, the refusal said).
//!
//! Needs root (`cargo xtask setup --tests`).

use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, loaded_maps};
use claude_watch_tests::agents::{Agent, AgentConfig, Runtime};
use claude_watch_tests::process::{ChildGuard, ScratchDir};
use claude_watch_tests::standin::StandIn;
use claude_watch_tests::users::test_user;
use claude_watch_tests::wait::wait_until;
use claude_watch_tests::watch::{Daemon, Trace};

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

/// Entries of the trace's `READ_ARGS` map (reads in flight) belonging to process `tgid`.
fn pending_reads_of(trace_pid: u32, tgid: u32) -> usize {
    let ids = map_ids_of(trace_pid);
    let info = loaded_maps()
        .filter_map(Result::ok)
        .find(|m| ids.contains(&m.id()) && m.name_as_str() == Some("READ_ARGS"))
        .expect("the trace holds a READ_ARGS map");
    let data = MapData::from_id(info.id()).expect("open READ_ARGS by id");
    let map = Map::LruHashMap(data);
    // Key: pid_tgid; value: `ReadArgs` (three u64s).
    let reads: HashMap<_, u64, [u64; 3]> =
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
    let daemon = Daemon::start("", &rule);
    let config = AgentConfig {
        model: "claude-haiku-4-5".into(),
        as_claude: true,
        ..AgentConfig::default()
    };
    let honest = Agent::start(&standin, Runtime::Node, &config);
    daemon.wait_instance(
        "reviewer",
        Duration::from_secs(30),
        "the honest agent",
        |i| i["state"] == "healthy" && i["pids"] == serde_json::json!([honest.pid()]),
    );
    // The attacker: same script, same rule, another user; it latches itself and exits.
    let user = test_user("cwtest-hostile");
    let attacker = Agent::start_as(&standin, user, &config);
    standin.latch_session(attacker.session_id());
    let own = format!("pid:{}", attacker.pid());
    daemon.wait_instance(
        &own,
        Duration::from_secs(30),
        "the attacker latched under its own pid",
        |i| i["state"] == "latched",
    );
    drop(attacker);
    std::thread::sleep(Duration::from_secs(3));
    // The honest instance was neither joined nor restarted.
    let reviewer = daemon.wait_instance("reviewer", Duration::from_secs(5), "reviewer", |_| true);
    assert_eq!(reviewer["state"], "healthy", "{reviewer}");
    assert_eq!(
        reviewer["pids"],
        serde_json::json!([honest.pid()]),
        "{reviewer}"
    );
    assert_eq!(reviewer["restarts"], 0, "{reviewer}");
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
