#!/usr/bin/env python3
"""A stand-in for the Anthropic API on 127.0.0.1, with switchable failure modes.

Standard library only (plus the `openssl` CLI for a throw-away certificate).

Two listeners, both bound to 127.0.0.1 on ephemeral ports:
  * the API port (HTTPS, HTTP/1.1 keep-alive) answers like api.anthropic.com:
    HEAD /, POST /v1/messages[?beta=true] (SSE or JSON), POST /v1/messages/count_tokens,
    GET /v1/models, and the test-only GET /bytes/<n>;
  * the control port (plain HTTP, JSON in and out) switches failure modes and reads the log.

When both are ready, one JSON line goes to stdout:
  {"event": "ready", "api_port": N, "control_port": M, "pid": P}
The server exits when its standard input reaches end of file (the test harness holds the
write end, so the server dies with the test), or on SIGTERM/SIGINT.

On its own (`python3 standin.py --help`):
  python3 tests/standin/standin.py --api-port 8443 --control-port 8080 --stay
  ANTHROPIC_BASE_URL=https://127.0.0.1:8443 NODE_TLS_REJECT_UNAUTHORIZED=0 \
      ANTHROPIC_API_KEY=sk-ant-fake claude -p "hello"          # a 200 from the stand-in
  curl -s -XPOST 127.0.0.1:8080/latch -d '{"next": true}'      # the next session latches
  curl -s 127.0.0.1:8080/sessions                              # who is latched
  curl -s -XPOST 127.0.0.1:8080/reset -d '{}'                  # everything off again
--stay keeps it up whatever its standard input does (until SIGTERM or ^C).

Control API (POST bodies are JSON; every answer is JSON):
  POST /latch        {"session": ID} | {"next": true, "count": N} | {"pid": P} | {"client_port": N}
                     -> that identity gets 401 on every /v1/messages request until reset/unlatch
                        (an identity is `session:<X-Claude-Code-Session-Id>`, or `conn:<client
                        port>` for clients without the header; a pid latch also catches the
                        process's later connections, and latches the session it used: a new
                        process with the same session id stays latched)
                     {"process": P}
                     -> a latch bound to the process, not the session: every request from pid P
                        gets 401 (reason `latched_process`), and another process with the same
                        session id is answered normally
  POST /unlatch      {"session": ID} | {"pid": P} | {"process": P}
  POST /window       {"seconds": T, "latch_existing": false}
                     -> for T seconds, a session first seen latches forever (all sessions making a
                        request inside the window, if latch_existing)
  POST /poison       {"credential": C}   -> every request with C gets 401 (no latch)
  POST /unpoison     {"credential": C} | {"all": true}
  POST /throttle     {"models": ["claude-opus-*", ...]}   -> 429 rate_limit_error for those models
  POST /idle_wake    {"seconds": X | null}  -> a session idle > X s latches on its next request
  POST /split_status {"pieces": N, "delay_ms": D, "count": K}
                     -> the status lines of the next K responses go out in N writes, D ms apart
  POST /reply        {"text": S}          -> text of successful answers
  POST /reset        {"clear_log": false} -> all modes off, every identity unlatched
  GET  /log?since=I  -> request log entries from index I (no credentials, no bodies)
  GET  /sessions     -> known identities with their latch state
Precedence on /v1/messages: poisoned credential (401) > latched (401) > throttled (429) > 200.
`GET /v1/models` (the token probe) fails only for a poisoned credential.

Credentials are kept in memory only and never printed: logs carry an 8-hex-digit SHA-256
prefix. Request bodies and prompts are never logged.
"""

import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

SESSION_HEADER = "x-claude-code-session-id"
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
AUTH_ERROR = {
    "type": "error",
    "error": {"type": "authentication_error", "message": "Invalid authentication credentials"},
}
RATE_ERROR = {"type": "error", "error": {"type": "rate_limit_error", "message": "Error"}}
MODELS = [
    ("claude-opus-4-8", "Claude Opus 4.8"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
]
BYTES_PATTERN = b"abcdefghijklmnopqrstuvwxyz0123456789\n"


def request_id():
    return "req_011C" + "".join(secrets.choice(BASE58) for _ in range(20))


def cred_hash(value):
    if not value:
        return None
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def peer_pid(client_port, server_port):
    """The pid of the process owning the loopback TCP socket with local port `client_port`."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, remote = parts[1], parts[2]
                    if (int(local.rsplit(":", 1)[1], 16) == client_port
                            and int(remote.rsplit(":", 1)[1], 16) == server_port):
                        inode = parts[9]
                        break
        except OSError:
            continue
        if inode:
            break
    if not inode or inode == "0":
        return None
    target = f"socket:[{inode}]"
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") == target:
                        return int(entry)
                except OSError:
                    pass
        except OSError:
            pass
    return None


class State:
    """All failure-mode switches and the request log, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.log = []
        self.sessions = {}  # identity -> {"first_seen", "last_seen", "latched", "requests"}
        self.clear_modes()

    def clear_modes(self):
        self.latch_next = 0
        self.latched_pids = set()
        self.latched_processes = set()  # process-bound latches: pids only, sessions untouched
        self.window_until = 0.0
        self.window_latch_existing = False
        self.poisoned = set()  # credential hashes (full sha256)
        self.throttled = []  # model globs
        self.idle_wake = None  # seconds
        self.split = None  # {"pieces", "delay_ms", "count"}
        self.reply_text = "Hello from the stand-in."
        for s in self.sessions.values():
            s["latched"] = False

    def decide(self, identity, pid, cred_full, model, now):
        """Status for a /v1/messages request from `identity`; updates the session table."""
        with self.lock:
            session = self.sessions.get(identity)
            new = session is None
            if new:
                session = {"first_seen": now, "last_seen": None, "latched": False,
                           "requests": 0, "pid": pid}
                self.sessions[identity] = session
            idle = None if session["last_seen"] is None else now - session["last_seen"]
            session["last_seen"] = now
            session["requests"] += 1
            if pid is not None:
                session["pid"] = pid
            in_window = now < self.window_until
            reason = None
            if self.latch_next > 0:
                self.latch_next -= 1
                session["latched"] = True
                reason = reason or "latch_next"
            if pid is not None and pid in self.latched_pids:
                session["latched"] = True
            if in_window and (new or self.window_latch_existing):
                session["latched"] = True
            if self.idle_wake is not None and idle is not None and idle > self.idle_wake:
                session["latched"] = True
            if cred_full and hashlib.sha256(cred_full.encode()).hexdigest() in self.poisoned:
                return 401, "poisoned"
            if pid is not None and pid in self.latched_processes:
                return 401, "latched_process"
            if session["latched"]:
                return 401, "latched"
            if model and any(fnmatch.fnmatchcase(model, g) for g in self.throttled):
                return 429, "throttled"
            return 200, None

    def take_split(self):
        with self.lock:
            if not self.split or self.split["count"] <= 0:
                return None
            self.split["count"] -= 1
            return dict(self.split)

    def record(self, entry):
        with self.lock:
            entry["index"] = len(self.log)
            self.log.append(entry)


STATE = State()


def emit(msg):
    """A diagnostic line on stderr (never credentials or bodies)."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin"
    sys_version = ""

    def setup(self):
        super().setup()
        self.conn_pid = "unresolved"

    def log_message(self, fmt, *args):
        pass

    def pid(self):
        if self.conn_pid == "unresolved":
            try:
                self.conn_pid = peer_pid(self.client_address[1], self.server.server_address[1])
            except Exception:  # noqa: BLE001 - diagnostics only
                self.conn_pid = None
        return self.conn_pid

    # ---- request plumbing -------------------------------------------------------------------

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def write_head(self, status, reason, headers):
        rid = request_id()
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        base = [("Date", self.date_time_string()), ("request-id", rid),
                ("Connection", "close" if self.close_connection else "keep-alive")]
        for k, v in base + headers:
            lines.append(f"{k}: {v}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        split = STATE.take_split()
        if split:
            status_len = len(lines[0])
            pieces = max(2, int(split.get("pieces", 2)))
            step = max(1, status_len // pieces)
            cuts = list(range(0, status_len, step))[:pieces] + [status_len]
            cuts = sorted(set(cuts))
            for a, b in zip(cuts, cuts[1:]):
                self.wfile.write(head[a:b])
                time.sleep(split.get("delay_ms", 20) / 1000.0)
            self.wfile.write(head[status_len:])
        else:
            self.wfile.write(head)
        return rid

    def send_json(self, status, reason, obj, extra=()):
        body = json.dumps(obj).encode()
        rid = self.write_head(status, reason, [("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body)))] + list(extra))
        if self.command != "HEAD":
            self.wfile.write(body)
        return rid

    def log_request_entry(self, status, rid, identity, model, reason, cred, started):
        STATE.record({
            "time": started,
            "duration_ms": round((time.time() - started) * 1000, 1),
            "method": self.command,
            "path": self.path,
            "session": self.headers.get(SESSION_HEADER),
            "identity": identity,
            "model": model,
            "status": status,
            "reason": reason,
            "request_id": rid,
            "client_port": self.client_address[1],
            "pid": self.conn_pid if isinstance(self.conn_pid, int) else None,
            "credential": cred_hash(cred),
            "retry_count": self.headers.get("X-Stainless-Retry-Count"),
            "user_agent": self.headers.get("User-Agent"),
            # Sizes only (what the kernel must copy to see the headers claude-watch reads):
            # the request head's bytes, and where the body's "model" value ends, if it does.
            "head_bytes": self.head_bytes(),
            "model_end": getattr(self, "model_end", None),
        })

    def head_bytes(self):
        line = len(self.raw_requestline or b"")
        fields = sum(len(k) + 2 + len(v) + 2 for k, v in self.headers.items())
        return line + fields + 2
        emit(f"api {self.command} {self.path} -> {status} {rid} identity={identity} model={model}")

    def credential(self):
        key = self.headers.get("x-api-key")
        if key:
            return key
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def identity(self):
        sid = self.headers.get(SESSION_HEADER)
        if sid:
            return "session:" + sid
        return f"conn:{self.client_address[1]}"

    # ---- verbs ------------------------------------------------------------------------------

    def do_HEAD(self):
        started = time.time()
        self.read_body()
        rid = self.write_head(200, "OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        self.log_request_entry(200, rid, None, None, None, None, started)

    def do_GET(self):
        started = time.time()
        self.read_body()
        path = urlsplit(self.path).path
        cred = self.credential()
        if path.startswith("/bytes/"):
            try:
                n = int(path[len("/bytes/"):])
            except ValueError:
                n = -1
            if n < 0:
                rid = self.send_json(400, "Bad Request", {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "bad length"}})
                self.log_request_entry(400, rid, None, None, None, None, started)
                return
            rid = self.write_head(200, "OK", [("Content-Type", "application/octet-stream"),
                                              ("Content-Length", str(n))])
            chunk = BYTES_PATTERN * (65536 // len(BYTES_PATTERN) + 1)
            sent = 0
            while sent < n:
                part = chunk[:min(len(chunk), n - sent)]
                self.wfile.write(part)
                sent += len(part)
            self.log_request_entry(200, rid, None, None, None, None, started)
            return
        if path in ("/v1/models", "/v1/models/"):
            self.pid()
            if self.poisoned(cred):
                rid = self.send_json(401, "Unauthorized", AUTH_ERROR)
                self.log_request_entry(401, rid, self.identity(), None, "poisoned", cred, started)
                return
            data = [{"type": "model", "id": m, "display_name": d,
                     "created_at": "2026-01-01T00:00:00Z"} for m, d in MODELS]
            rid = self.send_json(200, "OK", {"data": data, "has_more": False,
                                             "first_id": data[0]["id"], "last_id": data[-1]["id"]})
            self.log_request_entry(200, rid, self.identity(), None, None, cred, started)
            return
        self.not_found(started)

    def poisoned(self, cred):
        if not cred:
            return False
        with STATE.lock:
            return hashlib.sha256(cred.encode()).hexdigest() in STATE.poisoned

    def not_found(self, started):
        rid = self.send_json(404, "Not Found", {"type": "error", "error": {
            "type": "not_found_error", "message": "Not found"}})
        self.log_request_entry(404, rid, None, None, None, None, started)

    def do_POST(self):
        started = time.time()
        raw = self.read_body()
        path = urlsplit(self.path).path
        cred = self.credential()
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            req = {}
        model = req.get("model") if isinstance(req, dict) else None
        self.model_end = None
        if isinstance(model, str):
            at = raw.find(b'"model"')
            end = raw.find(json.dumps(model).encode(), at) if at >= 0 else -1
            self.model_end = end + len(json.dumps(model)) if end >= 0 else None
        if path == "/v1/messages/count_tokens":
            rid = self.send_json(200, "OK", {"input_tokens": max(1, len(raw) // 4)})
            self.log_request_entry(200, rid, self.identity(), model, None, cred, started)
            return
        if path != "/v1/messages":
            self.not_found(started)
            return
        identity = self.identity()
        status, reason = STATE.decide(identity, self.pid(), cred, model, started)
        if status == 401:
            rid = self.send_json(401, "Unauthorized", AUTH_ERROR)
        elif status == 429:
            rid = self.send_json(429, "Too Many Requests", RATE_ERROR, [("x-should-retry", "true")])
        elif req.get("stream"):
            rid = self.stream_message(model)
        else:
            rid = self.send_json(200, "OK", self.message(model))
        self.log_request_entry(status, rid, identity, model, reason, cred, started)

    # ---- successful answers ---------------------------------------------------------------

    def reply(self):
        with STATE.lock:
            return STATE.reply_text

    def message(self, model):
        text = self.reply()
        return {"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
                "model": model or "claude-opus-4-8",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": len(text.split())}}

    def stream_message(self, model):
        msg = self.message(model)
        text = msg["content"][0]["text"]
        start = dict(msg, content=[], stop_reason=None)
        start["usage"] = dict(msg["usage"], output_tokens=1)
        events = [("message_start", {"type": "message_start", "message": start}),
                  ("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}),
                  ("ping", {"type": "ping"})]
        words = text.split(" ")
        for i, w in enumerate(words):
            piece = w if i == len(words) - 1 else w + " "
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": piece}}))
        events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   ("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": msg["usage"]["output_tokens"]}}),
                   ("message_stop", {"type": "message_stop"})]
        rid = self.write_head(200, "OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                          ("Cache-Control", "no-cache"),
                                          ("Transfer-Encoding", "chunked")])
        for name, data in events:
            payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.wfile.write(b"0\r\n\r\n")
        return rid


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = urlsplit(self.path)
        if parts.path == "/log":
            since = int(parse_qs(parts.query).get("since", ["0"])[0])
            with STATE.lock:
                entries = [dict(e) for e in STATE.log[since:]]
            return self.reply(200, entries)
        if parts.path == "/sessions":
            with STATE.lock:
                sessions = [dict(v, identity=k) for k, v in STATE.sessions.items()]
            return self.reply(200, sessions)
        return self.reply(404, {"error": "unknown path"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.reply(400, {"error": "body is not JSON"})
        path = urlsplit(self.path).path
        handler = getattr(self, "ctl_" + path.strip("/"), None)
        if handler is None:
            return self.reply(404, {"error": "unknown control"})
        try:
            with STATE.lock:
                result = handler(body)
        except (KeyError, TypeError, ValueError) as e:
            return self.reply(400, {"error": f"bad arguments: {type(e).__name__}"})
        emit(f"control {path}")
        return self.reply(200, result if result is not None else {"ok": True})

    # Every ctl_* runs under STATE.lock.
    def ctl_latch(self, b):
        if "process" in b:
            STATE.latched_processes.add(int(b["process"]))
        elif "session" in b:
            key = "session:" + str(b["session"])
            STATE.sessions.setdefault(key, {"first_seen": time.time(), "last_seen": None,
                                            "latched": False, "requests": 0, "pid": None})
            STATE.sessions[key]["latched"] = True
        elif "client_port" in b:
            key = f"conn:{int(b['client_port'])}"
            STATE.sessions.setdefault(key, {"first_seen": time.time(), "last_seen": None,
                                            "latched": False, "requests": 0, "pid": None})
            STATE.sessions[key]["latched"] = True
        elif "pid" in b:
            pid = int(b["pid"])
            STATE.latched_pids.add(pid)
            for s in STATE.sessions.values():
                if s.get("pid") == pid:
                    s["latched"] = True
        elif b.get("next"):
            STATE.latch_next += int(b.get("count", 1))
        else:
            raise KeyError("session|client_port|pid|next")

    def ctl_unlatch(self, b):
        if "process" in b:
            STATE.latched_processes.discard(int(b["process"]))
        elif "session" in b:
            s = STATE.sessions.get("session:" + str(b["session"]))
            if s:
                s["latched"] = False
        elif "pid" in b:
            STATE.latched_pids.discard(int(b["pid"]))
            for s in STATE.sessions.values():
                if s.get("pid") == int(b["pid"]):
                    s["latched"] = False
        else:
            raise KeyError("session|pid")

    def ctl_window(self, b):
        STATE.window_until = time.time() + float(b["seconds"])
        STATE.window_latch_existing = bool(b.get("latch_existing", False))

    def ctl_poison(self, b):
        STATE.poisoned.add(hashlib.sha256(str(b["credential"]).encode()).hexdigest())

    def ctl_unpoison(self, b):
        if b.get("all"):
            STATE.poisoned.clear()
        else:
            STATE.poisoned.discard(hashlib.sha256(str(b["credential"]).encode()).hexdigest())

    def ctl_throttle(self, b):
        STATE.throttled = [str(m) for m in b["models"]]

    def ctl_idle_wake(self, b):
        STATE.idle_wake = None if b.get("seconds") is None else float(b["seconds"])

    def ctl_split_status(self, b):
        STATE.split = {"pieces": int(b.get("pieces", 3)), "delay_ms": float(b.get("delay_ms", 20)),
                       "count": int(b.get("count", 1))}

    def ctl_reply(self, b):
        STATE.reply_text = str(b["text"])

    def ctl_reset(self, b):
        STATE.clear_modes()
        if b.get("clear_log"):
            STATE.log.clear()


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


def make_certificate(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


class TlsServer(QuietServer):
    """Accepts TCP on the main thread; the TLS handshake runs in the handler thread."""

    def __init__(self, addr, handler, context):
        super().__init__(addr, handler)
        self.context = context

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(60)
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def main():
    import argparse
    parser = argparse.ArgumentParser(
        description="A stand-in for the Anthropic API on 127.0.0.1 (see the module docstring "
                    "for its control calls).")
    parser.add_argument("--api-port", type=int, default=0,
                        help="the HTTPS API port (default: any free one)")
    parser.add_argument("--control-port", type=int, default=0,
                        help="the plain-HTTP control port (default: any free one)")
    parser.add_argument("--plain-api", action="store_true",
                        help="serve the API over plain HTTP (a gateway on loopback, as LLM proxies "
                             "run: ANTHROPIC_BASE_URL=http://127.0.0.1:PORT)")
    parser.add_argument("--stay", action="store_true",
                        help="stay up when standard input ends (run it by hand, or under a "
                             "supervisor); stop it with SIGTERM or ^C")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="standin-")
    try:
        cert, key = make_certificate(tmp)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["http/1.1"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.plain_api:
        api = QuietServer(("127.0.0.1", args.api_port), ApiHandler)
    else:
        api = TlsServer(("127.0.0.1", args.api_port), ApiHandler, context)
    control = QuietServer(("127.0.0.1", args.control_port), ControlHandler)
    for srv in (api, control):
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        done.set()

    if not args.stay:
        threading.Thread(target=watch_stdin, daemon=True).start()
    print(json.dumps({"event": "ready", "api_port": api.server_address[1],
                      "control_port": control.server_address[1], "pid": os.getpid()}),
          flush=True)
    done.wait()
    os._exit(0)


if __name__ == "__main__":
    main()
