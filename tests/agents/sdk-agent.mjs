// A host program built on the TypeScript Agent SDK, as users write them: one `query()` kept
// open with streaming input, fed a turn for every stream-json user line on stdin, printing a
// `{"type":"result",...}` line per turn (the shape `claude -p --output-format stream-json`
// prints, so the test harness drives it like Claude Code itself).
//
// The SDK spawns the Claude Code its platform package bundles; nothing here names it.
// Environment: AGENT_SDK_MODULES (the node_modules holding @anthropic-ai/claude-agent-sdk), plus
// the stand-in's ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY, which the CLI inherits.
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const modules = process.env.AGENT_SDK_MODULES;
const { query } = await import(
  pathToFileURL(path.join(modules, '@anthropic-ai/claude-agent-sdk/sdk.mjs')).href
);

// Turns from stdin, as SDK user messages.
async function* turns() {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const turn = JSON.parse(line);
    yield {
      type: 'user',
      message: turn.message,
      parent_tool_use_id: null,
      session_id: '',
    };
  }
}

const q = query({
  prompt: turns(),
  options: {},
});
for await (const message of q) {
  if (message.type === 'result' || (message.type === 'system' && message.subtype === 'init')) {
    console.log(
      JSON.stringify({
        type: message.type,
        subtype: message.subtype,
        is_error: message.is_error ?? false,
        result: message.result ?? '',
        session_id: message.session_id,
      }),
    );
  }
}
