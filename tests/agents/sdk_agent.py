"""A host program built on the Python Agent SDK (`claude-agent-sdk` from PyPI), as users write
them: one `ClaudeSDKClient` kept open (one Claude Code process, one session), given a turn for
every stream-json user line on stdin, printing a `{"type":"result",...}` line per turn (the shape
`claude -p --output-format stream-json` prints, so the test harness drives it like Claude Code).

The SDK runs the Claude Code its wheel bundles (`claude_agent_sdk/_bundled/claude`); nothing
here names it. The CLI inherits the stand-in's ANTHROPIC_BASE_URL / ANTHROPIC_API_KEY.
"""

import asyncio
import json
import sys

from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage


async def main() -> None:
    options = ClaudeAgentOptions()
    loop = asyncio.get_running_loop()
    async with ClaudeSDKClient(options=options) as client:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            if not line.strip():
                continue
            turn = json.loads(line)
            await client.query(turn["message"]["content"])
            async for message in client.receive_response():
                if isinstance(message, ResultMessage):
                    print(
                        json.dumps(
                            {
                                "type": "result",
                                "subtype": message.subtype,
                                "is_error": message.is_error,
                                "result": message.result or "",
                                "session_id": message.session_id,
                            }
                        ),
                        flush=True,
                    )


asyncio.run(main())
