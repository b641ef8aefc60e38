// A small, fast HTTPS server on 127.0.0.1 for `cargo xtask bench`.
//
// The bench runs it from a private copy of the node executable, so uprobes attached to
// /usr/bin/node (by inode) never fire in the server: only the client's TLS calls are measured.
//
// Usage: node server.mjs CERT KEY [WORKERS]
//   Listens on 127.0.0.1 at a free port and prints `{"port":N}` on standard output once ready.
//   WORKERS > 1 runs that many processes (node:cluster) sharing the port.
//
// Routes (any method; request bodies are read and dropped):
//   /small             200, a short JSON body: the request loop and the load clients.
//   /stream?events=N&size=S
//                      200 text/event-stream, N SSE events of about S bytes, each written
//                      in its own event-loop turn (one TLS record each): the shape of a Claude turn.
//   /401?seq=N         401 with the Anthropic authentication_error body: capture latency.
//   anything else      404.
// With RAW=1 it is instead a bare TLS server that answers every request head it reads
// (each ending in a blank line) with a bodiless `HTTP/1.1 200 OK`, written on its own: the
// cheapest server, for the capacity test's `blast` client.
import cluster from "node:cluster";
import { readFileSync } from "node:fs";
import https from "node:https";
import tls from "node:tls";

const [cert, key, workersArg] = process.argv.slice(2);
const workers = Number(workersArg ?? 1);

const SMALL = JSON.stringify({ type: "ok" });
const AUTH_ERROR = JSON.stringify({
  type: "error",
  error: { type: "authentication_error", message: "Invalid authentication credentials" },
});

const RAW_RESPONSE = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

function serveRaw(port, onListening) {
  const server = tls.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (socket) => {
    socket.setNoDelay(true);
    let tail = "";
    socket.on("data", (chunk) => {
      const parts = (tail + chunk.toString("latin1")).split("\r\n\r\n");
      tail = parts.pop();
      for (let i = 0; i < parts.length; i += 1) socket.write(RAW_RESPONSE);
    });
    socket.on("error", () => {});
  });
  server.listen(port, "127.0.0.1", () => onListening(server.address().port));
}

function serve(port, onListening) {
  if (process.env.RAW === "1") return serveRaw(port, onListening);
  const server = https.createServer(
    { cert: readFileSync(cert), key: readFileSync(key), keepAliveTimeout: 60_000 },
    (req, res) => {
      req.resume();
      const url = new URL(req.url, "https://127.0.0.1");
      if (url.pathname === "/small") {
        res.writeHead(200, { "content-type": "application/json", "content-length": SMALL.length });
        res.end(SMALL);
      } else if (url.pathname === "/stream") {
        const events = Number(url.searchParams.get("events") ?? 1000);
        const size = Number(url.searchParams.get("size") ?? 100);
        const event = `event: content_block_delta\ndata: ${"x".repeat(Math.max(0, size - 40))}\n\n`;
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
        // One event per turn of the event loop, so each becomes its own TLS record and the
        // client reads it with its own SSL_read, as with a model streaming tokens.
        let sent = 0;
        const pump = () => {
          if (sent === events) {
            res.end("event: message_stop\ndata: {}\n\n");
            return;
          }
          sent += 1;
          if (res.write(event)) setImmediate(pump);
          else res.once("drain", pump);
        };
        pump();
      } else if (url.pathname === "/401") {
        res.writeHead(401, {
          "content-type": "application/json",
          "content-length": AUTH_ERROR.length,
          "request-id": `req_bench${url.searchParams.get("seq") ?? ""}`,
        });
        res.end(AUTH_ERROR);
      } else {
        res.writeHead(404, { "content-length": 0 });
        res.end();
      }
    },
  );
  server.listen(port, "127.0.0.1", () => onListening(server.address().port));
}

if (workers <= 1) {
  serve(0, (port) => process.stdout.write(JSON.stringify({ port }) + "\n"));
} else if (cluster.isPrimary) {
  // The primary picks the port, then the workers share it.
  const probe = https.createServer();
  probe.listen(0, "127.0.0.1", () => {
    const port = probe.address().port;
    probe.close(() => {
      let ready = 0;
      for (let i = 0; i < workers; i += 1) {
        cluster.fork({ BENCH_PORT: String(port) }).on("message", () => {
          ready += 1;
          if (ready === workers) process.stdout.write(JSON.stringify({ port }) + "\n");
        });
      }
    });
  });
  process.on("SIGTERM", () => {
    for (const w of Object.values(cluster.workers)) w.kill("SIGKILL");
    process.exit(0);
  });
} else {
  serve(Number(process.env.BENCH_PORT), () => process.send("ready"));
}
