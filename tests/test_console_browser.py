"""The web console as a person sees it: `mcast-ns serve` on 127.0.0.1, opened in headless
Chromium. The DOM Chromium built and a screenshot (kept under the test's temp dir) are
checked: the failed job first, the counts per state, the output tail as text, and the
failure rows painted in their colour."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from server_stub.testing import ServerProcess
from tests.test_console import HOSTILE, Text, make_fleet, table

WIDTH, HEIGHT = 1280, 900
FAILURE_RGB = (0xFD, 0xE2, 0xE1)  # the background of a failed row (templates/base.html)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)"
)


def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium to the end; its stdout. As root it needs --no-sandbox."""
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    fleet = make_fleet(tmp_path)
    server = ServerProcess(fleet.pop.data_dir, "127.0.0.1:0", "--plain-http")
    url = server.start()  # waits for the URL line: the server is listening
    try:
        yield fleet, url
    finally:
        server.stop()


def test_console_in_headless_chromium(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet, url = served
    assert url.startswith("http://127.0.0.1:")
    page_url = f"{url}/console"
    dom = chromium(tmp_path / "profile-dom", "--dump-dom", page_url)
    page = Text()
    page.feed(dom)
    # what a person reads: the failed job first, on the computer's name, with its tail as text
    assert dom.index('id="failures"') < dom.index('id="tasks"')
    (failure,) = table(page, "failures-table")
    assert failure["computer"] == "build-box" and failure["exit code"] == "3"
    assert HOSTILE in failure["output tail"]
    assert page.scripts == 0
    tasks = table(page, "tasks-table")
    assert [t["task"] for t in tasks] == [fleet.old_task[:8], fleet.new_task[:8]]
    assert (tasks[0]["succeeded"], tasks[0]["failed"], tasks[0]["pending"]) == ("1", "1", "1")
    assert (tasks[1]["downloading"], tasks[1]["pending"]) == ("1", "1")

    shot = tmp_path / "console.png"
    chromium(tmp_path / "profile-shot", f"--screenshot={shot}",
             f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", page_url)  # fmt: skip
    assert shot.is_file()
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    pixels = [bytes(r[i : i + 3]) for r in rows for i in range(0, len(r), 3)]
    # a rendered page, not a blank one, with failure rows painted in their colour
    assert len(set(pixels)) > 50
    assert pixels.count(bytes(FAILURE_RGB)) > 1000
