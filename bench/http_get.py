"""One lab receiver of the HTTP baseline: stream one URL to disk and report.

Streams with httpx (never holds the body in memory), hashes while writing, and prints one
JSON line ``{"event": "done", "bytes", "sha256", "wall_s", "peak_rss_mb", "status"}``;
``peak_rss_mb`` is this process's own ``ru_maxrss``. With ``--wait-go`` it first imports
everything, prints ``{"event": "ready"}`` and waits for a line on stdin, so that N clients
start their downloads at the same moment and interpreter start-up is not measured.

    python -m bench.http_get http://198.18.0.1:8080/big.bin --out /tmp/x/big.bin
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time

import httpx

CHUNK = 1 << 20


def fetch(url: str, out: str, timeout: float) -> dict[str, object]:
    digest = hashlib.sha256()
    n = 0
    t0 = time.monotonic()
    tmp = out + ".part"
    # trust_env=False: never route through a proxy from the environment
    with httpx.Client(trust_env=False, timeout=timeout) as client, \
            client.stream("GET", url) as resp, open(tmp, "wb") as f:
        resp.raise_for_status()
        for chunk in resp.iter_raw(CHUNK):
            f.write(chunk)
            digest.update(chunk)
            n += len(chunk)
        status = resp.status_code
    os.replace(tmp, out)
    wall = time.monotonic() - t0
    return {"event": "done", "url": url, "status": status, "bytes": n,
            "sha256": digest.hexdigest(), "wall_s": round(wall, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=60.0, help="per read/connect, seconds")
    ap.add_argument("--wait-go", action="store_true", help="print ready, wait for a stdin line")
    args = ap.parse_args(argv)
    if args.wait_go:
        print(json.dumps({"event": "ready"}), flush=True)
        sys.stdin.readline()
    try:
        result = fetch(args.url, args.out, args.timeout)
    except (httpx.HTTPError, OSError) as exc:
        print(json.dumps({"event": "error", "url": args.url, "error": repr(exc)}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
