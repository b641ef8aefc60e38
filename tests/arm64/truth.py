"""Ground truth for located TLS functions, run inside gdb-multiarch against qemu-user's gdb stub.

    TRUTH_SOCKET=<qemu -g socket> TRUTH_WRITE=<hex vaddr> TRUTH_READ=<hex vaddr> \
        gdb-multiarch -batch -nx -x truth.py

Breakpoints at the entries of the located SSL_write and SSL_read (AAPCS64: ssl in x0, buf in x1,
num in w2) and at each return address of SSL_read (x30 at entry; the count is in w0 on return).
Prints one `TRUTH {json}` line per event:
  {"event": "write", "len": N, "head": "<first 64 bytes of buf>"}
  {"event": "read", "ret": N, "head": "<first 512 bytes read, when N > 0>"}
  {"event": "end", "why": "seen" | "exited" | "<gdb error>" | "limit"}
and stops (killing the program) once a write began `POST /v1/messages` and a later read began
`HTTP/1.1 200` with a `text/event-stream` head (the streamed answer to a message, not the 200
of the `HEAD /` Claude Code sends first). Bytes are shown as Latin-1 text.
"""
import json
import os

import gdb

WRITE = int(os.environ["TRUTH_WRITE"], 16)
READ = int(os.environ["TRUTH_READ"], 16)
MAX_STOPS = int(os.environ.get("TRUTH_MAX_STOPS", "2000"))


def emit(**event):
    print("TRUTH " + json.dumps(event), flush=True)


def reg(name):
    return int(gdb.parse_and_eval("$" + name)) & 0xFFFFFFFFFFFFFFFF


def head(address, count, limit=64):
    return bytes(gdb.selected_inferior().read_memory(address, min(count, limit))).decode("latin1")


gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("target remote " + os.environ["TRUTH_SOCKET"])
gdb.Breakpoint("*%#x" % WRITE, internal=True)
gdb.Breakpoint("*%#x" % READ, internal=True)
returns = set()
pending = {}  # thread -> buf of the SSL_read in progress
seen_post = seen_200 = False
why = "limit"
for _ in range(MAX_STOPS):
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error as error:
        why = str(error)
        break
    if not gdb.selected_inferior().threads():
        why = "exited"
        break
    pc = reg("pc")
    thread = gdb.selected_thread().ptid[1]
    if pc == WRITE:
        n = reg("x2") & 0xFFFFFFFF
        text = head(reg("x1"), n) if 0 < n < 1 << 31 else ""
        emit(event="write", len=n, head=text)
        seen_post |= text.startswith("POST /v1/messages")
    elif pc == READ:
        pending[thread] = reg("x1")
        ret = reg("x30")
        if ret not in returns:
            returns.add(ret)
            gdb.Breakpoint("*%#x" % ret, internal=True)
    if pc in returns and thread in pending:
        n = reg("x0") & 0xFFFFFFFF
        n = n - (1 << 32) if n & 0x80000000 else n
        text = head(pending.pop(thread), n, 512) if n > 0 else ""
        emit(event="read", ret=n, head=text)
        seen_200 |= (
            seen_post
            and text.startswith("HTTP/1.1 200")
            and "text/event-stream" in text.lower()
        )
    if seen_post and seen_200:
        why = "seen"
        break
emit(event="end", why=why)
try:
    gdb.execute("kill")
except gdb.error:
    pass
