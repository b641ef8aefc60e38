#!/usr/bin/env python3
"""Gives a background session of Claude Code its next turn, as a person would.

Usage: bg_send.py CLAUDE SHORT_ID TEXT

Runs `CLAUDE attach SHORT_ID` in a pseudo-terminal (the environment is inherited: the test
harness passes the scratch HOME and the stand-in's base URL), waits for the session's screen,
types TEXT and Enter, and leaves (the session keeps running: `attach` only shows it). Exits 0
once the text was typed, 1 if `attach` ended before that.
"""

import os
import pty
import select
import signal
import sys
import time


def drain(fd, seconds):
    """Reads what the terminal shows for `seconds`; False once the client has gone."""
    end = time.time() + seconds
    while time.time() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                if not os.read(fd, 65536):
                    return False
            except OSError:
                return False
    return True


def main():
    claude, short_id, text = sys.argv[1], sys.argv[2], sys.argv[3]
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(claude, [claude, "attach", short_id])
    alive = drain(fd, 3.0)
    if alive:
        os.write(fd, text.encode())
        alive = drain(fd, 0.5)
    if alive:
        os.write(fd, b"\r")
        alive = drain(fd, 2.0)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.exit(0 if alive else 1)


if __name__ == "__main__":
    main()
