"""The durable status queue survives SIGKILL: nothing acknowledged is lost or counted twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.status_queue import run_crash_test


@pytest.mark.slow
async def test_sigkill_mid_run_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, ns_database: str | None
):
    out = await run_crash_test(
        tmp_path / "ns", events=1000, clients=50, kill_at=500, database=ns_database
    )
    print(out)  # the figures, for the record (pytest -s)
    assert out["engine"] == ("postgresql" if ns_database else "sqlite")
    assert out["errors"] == []
    assert out["killed_at"] is not None and out["killed_at"] >= 500
    assert out["killed_at"] < 1000, "the kill must land mid-run"
    assert out["acked"] == 1000  # every event acknowledged exactly once to its client
    assert out["rows"] == 1000 and out["lost"] == 0
    assert out["processed"] == 1000
    assert out["counted"] == 1000 and out["twice"] == 0
    assert out["computers_ok"] == 50  # each computer's task status counts its 20 events


def test_a_batch_that_dies_half_way_is_not_counted_at_all(
    tmp_path: Path, ns_database: str | None, monkeypatch: pytest.MonkeyPatch
):
    """Crash inside the fold transaction: nothing of the batch counts, the retry counts all."""
    import time
    import uuid

    from server_stub import db
    from server_stub.store import EventRecord, Store
    from server_stub.testing import populate

    pop = populate(tmp_path / "ns", computers=1, package_bytes=10, database=ns_database)
    store = Store(pop.data_dir)
    for i in range(10):
        ev = EventRecord(str(uuid.uuid4()), pop.computers[0], pop.task_id, "running", None,
                         i, 0, "", time.time() + i)  # fmt: skip
        assert store.record_event(ev) is True
        assert store.record_event(ev) is False  # a retry is not a second row

    marks = 0
    real = db.Conn.execute

    def dying(self: db.Conn, sql: str, params: object = ()) -> object:
        """The 6th 'mark processed' update dies like a SIGKILL would."""
        nonlocal marks
        if sql.startswith("UPDATE events SET processed"):
            marks += 1
            if marks == 6:
                raise KeyboardInterrupt("killed")
        return real(self, sql, params)  # type: ignore[arg-type]

    monkeypatch.setattr(db.Conn, "execute", dying)
    with pytest.raises(KeyboardInterrupt):
        store.process_events()
    monkeypatch.undo()
    assert marks == 6
    assert store.queue_counts() == {"events": 10, "processed": 0, "pending": 10, "counted": 0}
    assert store.process_events() == 10
    assert store.queue_counts() == {"events": 10, "processed": 10, "pending": 0, "counted": 10}
    assert store.process_events() == 0
    store.close()
