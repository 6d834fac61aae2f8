"""The durable status queue survives SIGKILL: nothing acknowledged is lost or counted twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.status_queue import run_crash_test


@pytest.mark.slow
async def test_sigkill_mid_run_loses_nothing_and_counts_nothing_twice(tmp_path: Path):
    out = await run_crash_test(tmp_path / "ns", events=1000, clients=50, kill_at=500)
    print(out)  # the figures, for the record (pytest -s)
    assert out["errors"] == []
    assert out["killed_at"] is not None and out["killed_at"] >= 500
    assert out["killed_at"] < 1000, "the kill must land mid-run"
    assert out["acked"] == 1000  # every event acknowledged exactly once to its client
    assert out["rows"] == 1000 and out["lost"] == 0
    assert out["processed"] == 1000
    assert out["counted"] == 1000 and out["twice"] == 0
    assert out["computers_ok"] == 50  # each computer's task status counts its 20 events
