//! What an unprivileged neighbour can do to the probes (the start of the hostile-user suite).
//!
//! Needs root (`cargo xtask setup --tests`).

use std::time::Duration;

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
