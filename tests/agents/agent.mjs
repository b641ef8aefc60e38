// A light stand-in for a headless Claude Code instance, for fast tests.
//
// Runs unchanged under node (>= 18, global fetch) and Bun. A long-running process that makes one
// streamed `POST /v1/messages?beta=true` turn every AGENT_INTERVAL_MS, carrying one
// `X-Claude-Code-Session-Id` for its whole life (like a real instance), and retries a failed
// turn (401, 429, 5xx, network error) with Claude-Code-like growing delays, forever.
//
// Environment:
//   ANTHROPIC_BASE_URL    base URL of the (stand-in) API, e.g. https://127.0.0.1:PORT (required)
//   ANTHROPIC_API_KEY     credential sent as x-api-key (never printed)
//   ANTHROPIC_MODEL       model to ask for (default claude-opus-4-8)
//   AGENT_INTERVAL_MS     pause between successful turns (default 3000)
//   AGENT_BACKOFF_SCALE   multiplier on the retry delays, to speed tests up (default 1)
//   AGENT_SESSION_ID      session id to use (default: a fresh random UUID)
//   AGENT_USER_AGENT      User-Agent header (default claude-watch-agent/0.1 (<runtime>))
// Set NODE_TLS_REJECT_UNAUTHORIZED=0 for the stand-in's self-signed certificate.
//
// Standard output: one JSON line per event, never the key or the prompt:
//   {"event":"start","pid":..,"session":..,"runtime":..,"model":..}
//   {"event":"response","status":200,"request_id":"req_..","model":..,"session":..,"turn":N,"attempt":K,"text":".."}
//   {"event":"error","message":..,"turn":N,"attempt":K}   (network errors)

const base = process.env.ANTHROPIC_BASE_URL;
if (!base) {
  console.error("agent: ANTHROPIC_BASE_URL is required");
  process.exit(2);
}
const key = process.env.ANTHROPIC_API_KEY ?? "";
const model = process.env.ANTHROPIC_MODEL || "claude-opus-4-8";
const interval = Number(process.env.AGENT_INTERVAL_MS ?? 3000);
const scale = Number(process.env.AGENT_BACKOFF_SCALE ?? 1);
const session = process.env.AGENT_SESSION_ID || crypto.randomUUID();
const runtime = typeof Bun !== "undefined" ? `bun/${Bun.version}` : `node/${process.versions.node}`;
// Delays Claude Code 2.1.331 was seen to use between retries of a 401 (ms), then capped.
const BACKOFF = [600, 1100, 2000, 4700, 8800, 20000];

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Reads an SSE body to the end; returns the concatenated text deltas and whether message_stop came.
function parseSse(body) {
  let text = "";
  let stopped = false;
  for (const block of body.split("\n\n")) {
    const data = block.split("\n").find((l) => l.startsWith("data:"));
    if (!data) continue;
    let ev;
    try {
      ev = JSON.parse(data.slice(5));
    } catch {
      continue;
    }
    if (ev.type === "content_block_delta" && ev.delta?.type === "text_delta") text += ev.delta.text;
    if (ev.type === "message_stop") stopped = true;
  }
  return { text, stopped };
}

async function attempt(turn, retry) {
  const res = await fetch(new URL("/v1/messages?beta=true", base), {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "anthropic-version": "2023-06-01",
      "x-api-key": key,
      "X-Claude-Code-Session-Id": session,
      "X-Stainless-Retry-Count": String(retry),
      "User-Agent": process.env.AGENT_USER_AGENT || `claude-watch-agent/0.1 (${runtime})`,
    },
    body: JSON.stringify({
      model,
      max_tokens: 64,
      stream: true,
      messages: [{ role: "user", content: `turn ${turn}` }],
    }),
  });
  const body = await res.text(); // read to the end, so the connection can be reused
  const out = {
    event: "response",
    status: res.status,
    request_id: res.headers.get("request-id"),
    model,
    session,
    turn,
    attempt: retry,
  };
  if (res.status === 200) {
    const { text, stopped } = parseSse(body);
    out.text = text;
    out.complete = stopped;
  } else {
    try {
      out.error_type = JSON.parse(body)?.error?.type ?? null;
    } catch {
      out.error_type = null;
    }
  }
  say(out);
  return res.status;
}

say({ event: "start", pid: process.pid, session, runtime, model });
for (let turn = 1; ; turn++) {
  for (let retry = 0; ; retry++) {
    let status;
    try {
      status = await attempt(turn, retry);
    } catch (e) {
      say({ event: "error", message: String(e?.message ?? e), turn, attempt: retry });
    }
    if (status === 200) break;
    await sleep(BACKOFF[Math.min(retry, BACKOFF.length - 1)] * scale);
  }
  await sleep(interval);
}
