"""Cross traffic for the lab: one bulk TCP download with curl, its progress as JSON lines.

Started in a lab host before the session, it waits for a line on stdin ("go"), then
``--delay`` seconds more, then runs ``curl`` on the URL with the body on a pipe, counts the
bytes and prints ``{"event": "progress", "bytes": N}`` every ``--every`` seconds (the lab
timestamps each line as it arrives: the same monotonic clock for every namespace of the
host), then ``{"event": "done", "bytes": N, "rc": RC}`` when curl ends or on SIGTERM. The
delay lets the session's receivers see the link idle first, as a session that is running
when someone starts a download does (see DESIGN.md, "Bandwidth protection").

    python -m bench.cross_traffic http://198.18.0.1:8081/big.bin --delay 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def _line(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cross_traffic")
    ap.add_argument("url")
    ap.add_argument("--delay", type=float, default=1.0, help="seconds after go before curl")
    ap.add_argument("--every", type=float, default=0.1, help="seconds between progress lines")
    args = ap.parse_args(argv)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    _line(event="ready")
    sys.stdin.readline()
    time.sleep(args.delay)
    curl = subprocess.Popen(["curl", "-s", "--no-buffer", args.url], stdout=subprocess.PIPE)
    assert curl.stdout is not None
    fd = curl.stdout.fileno()
    total, next_line = 0, time.monotonic()
    _line(event="started", bytes=0)
    try:
        while not stop:
            try:
                chunk = os.read(fd, 1 << 20)
            except InterruptedError:
                continue
            if not chunk:
                break
            total += len(chunk)
            if time.monotonic() >= next_line:
                _line(event="progress", bytes=total)
                next_line = time.monotonic() + args.every
    finally:
        if curl.poll() is None:
            curl.terminate()
        rc = curl.wait()
        _line(event="done", bytes=total, rc=rc, stopped=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
