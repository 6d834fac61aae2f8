"""bench.core_speed measures a receiver that really joins and completes, not one that drops
every datagram (a result of 'fast' from a receiver that never joined would mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_speed_receiver_completes_the_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.core_speed", "--size", "1M"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["complete"] is True and result["units_verified"] == 16
    assert result["receiver_us_per_datagram"] > 0


def test_core_speed_decoding_run_really_decodes_and_repairs() -> None:
    """The lossy run must lose data, get repairs and decode, or its figure is the lossless one
    again under another name."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.core_speed", "--size", "2M", "--loss", "5"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    decoding = json.loads(proc.stdout)["decoding"]
    assert decoding["complete"] is True
    assert decoding["decodes"] >= 1 and decoding["repairs_sent"] >= 1
    assert decoding["receiver_us_per_datagram"] > 0 < decoding["sender_us_per_datagram"]


def test_core_speed_refuses_a_loss_out_of_range() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.core_speed", "--size", "1M", "--loss", "70"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--loss" in proc.stderr
