"""bench.peers on the namespace lab: every tool that runs delivers the file to every receiver
(re-hashed on disk), the report carries each field, and the plot is a PNG.

Skipped with the reason when not root or without iproute2/nftables; CI runs them as root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import labnet, peers

LAB_OK, LAB_WHY = labnet.lab_available()
pytestmark = [
    pytest.mark.skipif(not LAB_OK, reason=f"lab unavailable: {LAB_WHY}"),
    pytest.mark.lab,
]
MiB = 1 << 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_small_run_every_tool_verifies_every_receiver(tmp_path: Path) -> None:
    if peers.tool_missing("udpcast"):
        pytest.skip(f"udpcast: {peers.tool_missing('udpcast')}")
    report = peers.run_peers(2, 2 * MiB, 50_000_000, 0.0, list(peers.TOOLS), workdir=str(tmp_path))
    assert report["lab_leftovers"] == []
    assert report["line_rate_s"] == pytest.approx(2 * MiB * 8 / 50e6, rel=1e-3)
    tools = report["tools"]
    assert list(tools) == list(peers.TOOLS)
    for name in ("mcast", "udpcast"):
        assert "skipped" not in tools[name] and "failed" not in tools[name], tools[name]
    for name, res in tools.items():
        if "skipped" in res:  # only a tool that is not installed may be left out
            assert peers.tool_missing(name) == res["skipped"]
            continue
        assert "failed" not in res, (name, res)
        assert res["verified"] is True and res["receivers_verified"] == 2, (name, res)
        assert res["unverified"] == []
        assert res["wall_s"] > 0
        assert res["ratio_line_rate"] == pytest.approx(
            res["wall_s"] / report["line_rate_s"], rel=2e-3
        )
        assert res["ratio_mcast"] == pytest.approx(
            res["wall_s"] / tools["mcast"]["wall_s"], rel=2e-3
        )
    assert tools["mcast"]["ratio_mcast"] == 1.0
    out = tmp_path / "peers.png"
    peers.plot(report, out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_a_missing_tool_is_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(peers, "_which", lambda name: None)  # as if none were installed
    report = peers.run_peers(
        1, 64 * 1024, 0, 0.0, ["udpcast", "uftp", "http"], workdir=str(tmp_path)
    )
    for name in ("udpcast", "uftp", "http"):
        assert report["tools"][name]["skipped"].startswith("not installed:"), report
    assert report["lab_leftovers"] == []
