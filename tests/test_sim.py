"""bench.sim prints one JSON object with the figures the issue asks for."""

from __future__ import annotations

import json

from bench.sim import main


def test_sim_prints_the_required_figures(capsys):
    assert main(["--receivers", "5", "--loss", "0.02", "--size", "300000", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "receivers",
        "completed",
        "all_bytes_verified",
        "source_packets",
        "data_packets_sent",
        "repair_packets_sent",
        "nak_packets_sent",
        "virtual_seconds",
    ):
        assert key in out
    assert out["receivers"] == out["completed"] == 5
    assert out["all_bytes_verified"] is True
    assert out["data_packets_sent"] == out["source_packets"]
    assert out["repair_packets_sent"] > 0 and out["nak_packets_sent"] > 0


def test_sim_refuses_bad_arguments(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["--receivers", "0"])
    assert exc.value.code == 2
    assert "receivers" in capsys.readouterr().err
