// TLS-heavy clients for `cargo xtask bench`; run unchanged under node and Bun.
//
// Under node they use node:https with a keep-alive agent (node's OpenSSL: SSL_write/SSL_read);
// under Bun, fetch (Bun's BoringSSL). Only ever talks to https://127.0.0.1:PORT and accepts the
// bench's self-signed certificate.
//
// Usage: client.mjs MODE PORT [ARGS...]; prints JSON lines on standard output:
//   requests PORT COUNT            COUNT sequential GET /small over one keep-alive connection
//                                  -> {"ms":..,"cpu_ms":..,"count":..}
//   stream PORT EVENTS SIZE        one GET /stream read to the end in many small reads
//                                  -> {"ms":..,"cpu_ms":..,"chunks":..,"bytes":..}
//   blast PORT SECONDS CONNECTIONS raw TLS (node only, against the RAW=1 server): on each of
//                                  CONNECTIONS connections, write a request head, wait for the
//                                  response head, repeat, for SECONDS -> {"count":..,"ms":..}
//   latency PORT COUNT GAP_MS      COUNT GET /401?seq=I, GAP_MS apart; after each response head
//                                  -> {"seq":I,"status":401,"mono_ns":..} (CLOCK_MONOTONIC)
//   idle PORT                      one GET /small, then {"ready":true} and nothing; SIGUSR1 turns
//                                  it busy (sequential GET /small); SIGTERM -> {"count":..}, exit
import https from "node:https";
import tls from "node:tls";

const isBun = typeof Bun !== "undefined";
const [mode, portArg, ...rest] = process.argv.slice(2);
const port = Number(portArg);
if (!mode || !port) {
  console.error("usage: client.mjs MODE PORT [ARGS...]");
  process.exit(2);
}
const base = `https://127.0.0.1:${port}`;
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const now = () => performance.now();
// CPU time of this process (user + system, where uprobe hits are charged) in ms.
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
// CLOCK_MONOTONIC in ns, the clock of the kernel's bpf_ktime_get_ns().
const mono = () => process.hrtime.bigint();

const agent = isBun
  ? null
  : new https.Agent({ keepAlive: true, maxSockets: 256, rejectUnauthorized: false });

// GET `path`; calls onHead(status) when the response head is in, onChunk(len) per read chunk;
// resolves when the body has ended.
function get(path, onHead, onChunk) {
  if (isBun) {
    return fetch(base + path, { tls: { rejectUnauthorized: false }, keepalive: true }).then(
      async (res) => {
        onHead?.(res.status);
        const reader = res.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return;
          onChunk?.(value.length);
        }
      },
    );
  }
  return new Promise((resolve, reject) => {
    const req = https.get(base + path, { agent }, (res) => {
      onHead?.(res.statusCode);
      res.on("data", (chunk) => onChunk?.(chunk.length));
      res.on("end", resolve);
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

async function requests(count) {
  await get("/small"); // connect and handshake outside the timed part
  const [start, cpu0] = [now(), cpu()];
  for (let i = 0; i < count; i += 1) await get("/small");
  say({ ms: now() - start, cpu_ms: cpu() - cpu0, count });
}

async function stream(events, size) {
  await get("/small");
  let chunks = 0;
  let bytes = 0;
  const [start, cpu0] = [now(), cpu()];
  await get(`/stream?events=${events}&size=${size}`, null, (len) => {
    chunks += 1;
    bytes += len;
  });
  say({ ms: now() - start, cpu_ms: cpu() - cpu0, chunks, bytes });
}

// Bare HTTP/1.1 heads over TLS, one exchange in flight per connection: the most exchanges per
// second a node process can make, each still one SSL_write and one SSL_read.
async function blast(seconds, connections) {
  const REQUEST = "GET /blast HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";
  const end = now() + seconds * 1000;
  let count = 0;
  const start = now();
  const one = () =>
    new Promise((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
        socket.setNoDelay(true);
        socket.write(REQUEST);
      });
      socket.on("data", () => {
        count += 1;
        if (now() < end) socket.write(REQUEST);
        else socket.end(resolve);
      });
      socket.on("error", reject);
    });
  await Promise.all(Array.from({ length: connections }, one));
  say({ count, ms: now() - start });
}

async function latency(count, gap) {
  await get("/small");
  for (let seq = 0; seq < count; seq += 1) {
    let line = null;
    await get(`/401?seq=${seq}`, (status) => {
      line = { seq, status, mono_ns: String(mono()) };
    });
    say(line);
    await new Promise((r) => setTimeout(r, gap));
  }
}

async function idle() {
  await get("/small");
  let count = 0;
  let busy = false;
  process.on("SIGUSR1", async () => {
    if (busy) return;
    busy = true;
    while (busy) {
      await get("/small");
      count += 1;
    }
  });
  process.on("SIGTERM", () => {
    busy = false;
    say({ count });
    process.exit(0);
  });
  say({ ready: true });
  setInterval(() => {}, 1 << 30);
}

const n = (i, dflt) => Number(rest[i] ?? dflt);
const modes = {
  requests: () => requests(n(0, 1000)),
  stream: () => stream(n(0, 10000), n(1, 100)),
  blast: () => blast(n(0, 5), n(1, 8)),
  latency: () => latency(n(0, 200), n(1, 5)),
  idle: () => idle(),
};
if (!modes[mode]) {
  console.error(`client.mjs: unknown mode ${mode}`);
  process.exit(2);
}
modes[mode]().then(
  () => {
    if (mode !== "idle") process.exit(0);
  },
  (err) => {
    console.error(`client.mjs ${mode}: ${err.message}`);
    process.exit(1);
  },
);
