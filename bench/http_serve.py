"""A small Range-capable static HTTP server for the lab's unicast baseline.

It owns nothing but serving the files under one directory: ``GET``/``HEAD`` with a single
``Range: bytes=...`` (206/416), streamed with ``socket.sendfile`` so a 1 GiB package is
never held in memory. One thread per connection (stdlib ``ThreadingHTTPServer``), which is
what a plain package server does. On start it prints one JSON line
``{"event": "ready", "host": ..., "port": ...}`` so the lab knows when to start clients.

``--rate`` caps the bytes of all bodies together (one token bucket shared by every
connection) to stand in for a WAN link between the agents and their package server
(``mcast demo``); without it, bodies go out with ``sendfile`` as fast as the link allows.

    python -m bench.http_serve --root DIR --bind 198.18.0.1 --port 8080 [--rate 20mbit]
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import signal
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from mcast.units import parse_rate

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 16 * 1024  # what a throttled body is sent in


class Throttle:
    """One token bucket for every connection of the server: ``take(n)`` returns once ``n``
    more bytes fit under ``rate_bps`` (bits per second), with a burst of one chunk."""

    def __init__(self, rate_bps: int) -> None:
        self.bytes_per_s = rate_bps / 8
        self._lock = threading.Lock()
        self._next = time.monotonic()  # when the link is free again

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now - _CHUNK / self.bytes_per_s, self._next)
            self._next = start + n / self.bytes_per_s
            wait = self._next - now
        if wait > 0:
            time.sleep(wait)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end_inclusive)`` for a satisfiable single range, None for none, "bad" if 416."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # unsupported forms (multi-range): serve the whole file, as RFC 9110 allows
    if not m.group(1):  # suffix: last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "bad"
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return "bad"
    return start, min(end, size - 1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mcast-lab-http/1"
    root: Path = Path(".")
    throttle: Throttle | None = None

    def log_message(self, format: str, *args: object) -> None:  # quiet: the lab measures
        pass

    def _resolve(self) -> Path | None:
        path = urllib.parse.urlsplit(self.path).path
        rel = posixpath.normpath(urllib.parse.unquote(path)).lstrip("/")
        if rel.startswith("..") or "\x00" in rel:
            return None
        full = (self.root / rel).resolve()
        if self.root not in full.parents and full != self.root:
            return None
        return full if full.is_file() else None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        full = self._resolve()
        if full is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = full.stat().st_size
        rng = parse_range(self.headers.get("Range"), size)
        if rng == "bad":
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(rng, tuple):
            start, end = rng
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            start, end = 0, size - 1
            self.send_response(HTTPStatus.OK)
        length = end - start + 1
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if body and length > 0:
            with open(full, "rb") as f:
                try:
                    if self.throttle is None:
                        self.connection.sendfile(f, offset=start, count=length)
                    else:
                        self._send_throttled(f, start, length, self.throttle)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

    def _send_throttled(self, f: BinaryIO, start: int, length: int, throttle: Throttle) -> None:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(_CHUNK, length))
            if not chunk:
                break
            throttle.take(len(chunk))
            self.connection.sendall(chunk)
            length -= len(chunk)


def make_server(
    root: str | os.PathLike[str], bind: str, port: int, rate_bps: int = 0
) -> ThreadingHTTPServer:
    throttle = Throttle(rate_bps) if rate_bps > 0 else None
    handler = type("BoundHandler", (Handler,), {"root": Path(root).resolve(), "throttle": throttle})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--rate", type=parse_rate, default=0,
                    help="cap on all bodies together, e.g. 20mbit (default 0: no cap)")
    args = ap.parse_args(argv)
    server = make_server(args.root, args.bind, args.port, args.rate)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(json.dumps({"event": "ready", "host": host, "port": port}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
