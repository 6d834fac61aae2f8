"""How long ``mcast send`` takes from its process start to its first datagram, and where the
time goes. Prints one JSON object.

Each run starts ``mcast send`` on loopback (a small keyed package, nobody receiving) the way a
user runs it, and reads the sender's own ``timeline`` from its JSON summary: ``start`` (the
send driver begins) and ``first_send`` (the first datagram leaves), on the host's monotonic
clock, which this process shares, so both are measured from the moment it started the child.
Where the time goes: the imports of ``mcast.cli`` in a fresh interpreter
(``python -X importtime``), largest first, and an empty interpreter's start for comparison,
with and without ``site`` (the ``.pth`` hooks of this host's site-packages run there).

The package is byte-compiled first, as ``pip install`` does (:mod:`bench.pyc`).

    python -m bench.startup [--runs 7] [--size 4M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.pyc import compile_engine
from mcast.units import parse_size

PY = sys.executable


def _package(work: Path, size: int) -> list[str]:
    """A keyed package and the ``mcast send`` arguments that serve it on loopback."""
    (work / "pkg.bin").write_bytes(os.urandom(size))
    (work / "k").write_text(os.urandom(32).hex())
    subprocess.run([PY, "-m", "mcast.cli", "snapshot", str(work / "pkg.bin"), "-o",
                    str(work / "s.xml"), "--key", str(work / "sk.pem")],
                   check=True, capture_output=True)  # fmt: skip
    return [PY, "-m", "mcast.cli", "send", str(work / "pkg.bin"), "--snapshot",
            str(work / "s.xml"), "--session-key-file", str(work / "k"), "--group",
            "239.255.9.9", "--port", "47123", "--interface", "127.0.0.1", "--json",
            "--linger", "0.1", "--receiver-timeout", "0.2", "--no-discovery"]  # fmt: skip


def _one(argv: list[str]) -> dict[str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    tl = summary["timeline"]
    return {"to_driver_s": tl["start"] - t0, "to_first_datagram_s": tl["first_send"] - t0}


def _timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True)
    return time.monotonic() - t0


def _imports() -> dict[str, Any]:
    """Cumulative import time of mcast.cli and its largest direct imports (ms)."""
    proc = subprocess.run([PY, "-X", "importtime", "-c", "import mcast.cli"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit():
            continue
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((name.strip(), int(cumulative) / 1000, depth))
    total = next((ms for n, ms, _ in rows if n == "mcast.cli"), 0.0)
    direct = sorted(((n, ms) for n, ms, d in rows if d == 1), key=lambda r: -r[1])[:8]
    return {"mcast_cli_ms": round(total, 1), "largest_ms": {n: round(ms, 1) for n, ms in direct}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--size", type=parse_size, default=4 * 2**20)
    args = ap.parse_args(argv)
    compiled = compile_engine()
    with tempfile.TemporaryDirectory() as tmp:
        send = _package(Path(tmp), args.size)
        runs = [_one(send) for _ in range(args.runs)]
    bare = min(_timed([PY, "-c", "pass"]) for _ in range(3))
    bare_no_site = min(_timed([PY, "-S", "-c", "pass"]) for _ in range(3))
    first = [r["to_first_datagram_s"] for r in runs]
    json.dump({
        "runs": args.runs, "size": args.size,
        "first_datagram_s_median": round(statistics.median(first), 4),
        "first_datagram_s_min": round(min(first), 4),
        "to_driver_s_median": round(statistics.median(r["to_driver_s"] for r in runs), 4),
        "bare_interpreter_s": round(bare, 4),
        "bare_interpreter_without_site_s": round(bare_no_site, 4),
        "bytecode_precompiled": bool(compiled),
        "imports": _imports(),
    }, sys.stdout)  # fmt: skip
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
