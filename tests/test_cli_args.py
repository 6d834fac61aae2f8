"""Bad arguments of ``mcast``: refused when given, in one line, with the documented exit code.

Each row runs ``python -m mcast.cli`` as a user would (a subprocess, the worktree on
PYTHONPATH, another directory as cwd) and checks the exit status, that stderr is exactly one
line naming the problem, and that no traceback escapes. 2 is a bad argument, 3 a snapshot that
is not well formed, 4 a file that cannot be read, 5 a safety refusal (see mcast.errors).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from mcast import cli
from mcast.errors import ExitCode
from mcast.snapshot import build_snapshot, generate_key, public_key_pem, save_private_key
from mcast.units import BadQuantity, parse_rate, parse_size

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Good and bad inputs the table refers to as {name}."""
    d = tmp_path_factory.mktemp("cli-args")
    (d / "pkg").mkdir()
    (d / "pkg" / "a.bin").write_bytes(os.urandom(5000))
    key = generate_key()
    save_private_key(key, d / "sign.pem")
    (d / "sign.pem.pub").write_bytes(public_key_pem(key.public_key()))
    (d / "snap.xml").write_bytes(build_snapshot(d / "pkg").signed(key).to_xml())
    (d / "good.key").write_text(os.urandom(32).hex())
    (d / "short.key").write_text(os.urandom(8).hex())
    (d / "text.key").write_text("this is not a key, it is a sentence\n")
    (d / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    (d / "garbage.xml").write_text("<Snapshot>")
    (d / "a-file").write_text("x")
    names = ("pkg", "sign.pem", "sign.pem.pub", "snap.xml", "good.key", "short.key", "text.key",
             "garbage.pem", "garbage.xml", "a-file")  # fmt: skip
    out = {n.replace(".", "_").replace("-", "_"): str(d / n) for n in names}
    out["missing"] = str(d / "does-not-exist")
    out["out"] = str(d / "out")
    return out


KEYED = "--session-key-file {good_key}"
RECV = f"recv --snapshot {{snap_xml}} --trust-key {{sign_pem_pub}} --out {{out}} {KEYED}"
SEND = f"send {{pkg}} --snapshot {{snap_xml}} --trust-key {{sign_pem_pub}} {KEYED}"
FETCH = f"fetch --snapshot {{snap_xml}} --trust-key {{sign_pem_pub}} --out {{out}} {KEYED}"
UNKEYED_RECV = "recv --snapshot {snap_xml} --trust-key {sign_pem_pub} --out {out}"
SNAP = "snapshot {pkg} -o {out}.xml --key {sign_pem}"

# (arguments, exit code, what stderr must say)
BAD = [
    (f"{FETCH} --tries -1", 2, "argument --tries: '-1' must be at least 0"),
    (f"{FETCH} --tries 1.5", 2, "argument --tries: '1.5' is not an integer"),
    (f"{FETCH} --max-sessions 0", 2, "argument --max-sessions: '0' must be at least 1"),
    (f"{FETCH} --codebase ftp://host/pkg", 2, "not an http(s) URL"),
    (f"{FETCH} --min-multicast-size 12X", 2, "'12X' is not a size"),
    (f"{FETCH} --budget nan", 2, "must be a finite number of seconds greater than 0"),
    (f"{FETCH} --hold -1", 2, "argument --hold: '-1' must be a finite number of seconds, 0"),
    (f"{FETCH} --hold inf", 2, "argument --hold: 'inf' must be a finite number of seconds"),
    (f"{FETCH} --min-session-kbps -5", 2, "argument --min-session-kbps: '-5' must be at least 0"),
    (f"{FETCH} --discovery-key-file {{short_key}}", 2, "shorter than 16 bytes"),
    (f"{SEND} --discovery-key-file {{missing}}", 4, "cannot read discovery key"),
    (f"{RECV} --interface notanip", 2, "argument --interface: 'notanip' is not an IPv4 address"),
    (f"{RECV} --interface auto", 2, "'auto' is not an IPv4 address"),
    (f"{RECV} --group 224.0.0.1", 2, "outside 239.255.0.0/16"),
    (f"{RECV} --group 239.255.1.300", 2,
     "argument --group: '239.255.1.300' is not an IPv4 address"),
    (f"{RECV} --port 0", 2, "'0' is not a port (1..65535)"),
    (f"{RECV} --port http", 2, "'http' is not a port"),
    (f"{RECV} --timeout -1", 2, "argument --timeout: '-1' must be a finite number of seconds"),
    (f"{RECV} --session-key-file {{short_key}}", 2, "shorter than 16 bytes"),
    (f"{RECV} --session-key-file {{text_key}}", 2, "neither hex digits nor 32 raw bytes"),
    (f"{RECV} --session-key-file {{missing}}", 4, "cannot read session key"),
    (f"{RECV} --out {{a_file}}", 4, "is not a directory"),
    (f"{RECV} --interface 192.0.2.1", 5, "neither loopback nor a lab address"),
    ("recv --snapshot {snap_xml} --trust-key {garbage_pem} --out {out}", 2,
     "argument --trust-key: "),
    ("recv --snapshot {snap_xml} --trust-key {missing} --out {out}", 4, "cannot read trust key"),
    ("recv --snapshot {missing} --trust-key {sign_pem_pub} --out {out}", 4,
     "cannot read snapshot"),
    ("recv --snapshot {garbage_xml} --trust-key {sign_pem_pub} --out {out}", 3, "snapshot "),
    ("recv --snapshot {snap_xml}", 2, "required: --trust-key, --out"),
    (f"{RECV} --tries 3", 2, "unrecognized arguments: --tries 3"),
    (f"{SEND} --rate fast", 2, "argument --rate: 'fast' is not a rate"),
    (f"{SEND} --rate=-5mbit", 2, "argument --rate: '-5mbit' is not a rate"),
    (f"{SEND} --linger 0", 2, "argument --linger: '0' must be a finite number of seconds"),
    ("send {missing} --snapshot {snap_xml}", 4, "does-not-exist does not exist"),
    (f"{SNAP} --block-size 3", 2, "positive even number"),
    (f"{SNAP} --valid-days 0", 2, "argument --valid-days: '0' must be a finite number of days"),
    (f"{SNAP} --version -2", 2, "argument --version: '-2' must be at least 0"),
    ("snapshot {pkg} -o {out}.xml --key {garbage_pem}", 2, "is not an Ed25519 private key (PEM)"),
    ("snapshot {missing} -o {out}.xml --key {sign_pem}", 4, "does-not-exist does not exist"),
    ("snapshot {pkg} -o {out}.xml --key {missing}/sub/k.pem", 4, "cannot create signing key"),
    ("snapshot {pkg} -o {missing}/s.xml --key {sign_pem}", 4, "cannot write"),
    ("snapshot {pkg} -o {pkg} --key {sign_pem}", 4, "it is a directory"),
    ("sessions --duration 0", 2, "argument --duration"),
    ("sessions --interface 198.18.0.256", 2, "not an IPv4 address"),
    (UNKEYED_RECV, 2, "recv needs a session key: give --session-key-file FILE, or --insecure"),
    ("send {pkg} --snapshot {snap_xml}", 2, "send needs a session key"),
    ("fetch --snapshot {snap_xml} --trust-key {sign_pem_pub} --out {out}", 2, "fetch needs a"),
    (f"{RECV} --insecure", 2, "--insecure and --session-key-file contradict each other"),
    ("frobnicate", 2, "invalid choice: 'frobnicate'"),
    ("", 2, "required: COMMAND"),
]


IDS = [" ".join(row[0].split()[-2:]) for row in BAD]


@pytest.mark.parametrize(("argv", "code", "says"), BAD, ids=IDS)
def test_bad_argument_is_one_line_and_an_exit_code(
    files: dict[str, str], tmp_path: Path, argv: str, code: int, says: str
) -> None:
    words = [w.format(**files) for w in argv.split()]
    proc = subprocess.run(
        [sys.executable, "-m", "mcast.cli", *words], capture_output=True, text=True,
        timeout=60, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == code, proc.stderr
    assert lines[0].startswith("mcast: error: "), lines
    assert says in lines[0], lines[0]
    assert not Path(files["out"]).exists()  # refused before any work started


@pytest.mark.parametrize(
    ("argv", "code"),
    [(f"{RECV} --snapshot {{missing}}", ExitCode.IO), (f"{RECV} --port 0", ExitCode.USAGE)],
    ids=["file error", "bad value"],
)
def test_json_callers_get_the_error_as_a_json_line_too(
    files: dict[str, str], argv: str, code: int
) -> None:
    words = [w.format(**files) for w in argv.split()]
    proc = subprocess.run(
        [sys.executable, "-m", "mcast.cli", *words, "--json"], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert '"event": "error"' in proc.stdout and f'"code": {int(code)}' in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("bad", ["", "x", "-1M", "10 parsecs", "1.2.3M"])
def test_quantities_refuse_garbage_as_usage_errors(bad: str) -> None:
    for parse in (parse_size, parse_rate):
        with pytest.raises(BadQuantity) as info:
            parse(bad)
        assert info.value.exit_code == ExitCode.USAGE
        assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- plug-in commands


def _hello(words: list[str]) -> int:
    print("hello", *words)
    return 7


def test_a_plug_in_is_listed_in_help_and_gets_its_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = EntryPoint(name="hello", value=f"{__name__}:_hello", group=cli.PLUGIN_GROUP)
    monkeypatch.setattr(cli, "plugin_commands", lambda: {"hello": ep})
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    assert "hello" in capsys.readouterr().out
    assert cli.main(["hello", "--loud", "x"]) == 7
    assert capsys.readouterr().out == "hello --loud x\n"


def test_demo_not_installed_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "plugin_commands", dict)
    with pytest.raises(SystemExit) as done:
        cli.main(["demo", "--agents", "2"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'demo' is a plug-in command that is not installed" in err[0]


def test_a_plug_in_that_cannot_load_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = EntryPoint(name="demo", value="no_such_module_here:main", group=cli.PLUGIN_GROUP)
    monkeypatch.setattr(cli, "plugin_commands", lambda: {"demo": ep})
    with pytest.raises(SystemExit) as done:
        cli.main(["demo"])
    assert done.value.code == 2
    assert "cannot be loaded" in capsys.readouterr().err


def test_pyproject_registers_the_demo_as_a_plug_in() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"][cli.PLUGIN_GROUP]["demo"] == "bench.demo:main"


def test_session_key_files_that_are_fine(tmp_path: Path) -> None:
    raw = bytes(range(32))  # not text: taken as the raw key
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "hex").write_text(f"  {raw.hex()}\n")
    assert cli.session_key(str(tmp_path / "raw")) == raw
    assert cli.session_key(str(tmp_path / "hex")) == raw


# ---------------------------------------------------------------- keyed or --insecure

QUIET = "--group 239.255.{group} --port {port} --json"  # a channel nobody else uses
SESSION_RUNS = {
    "recv": f"{UNKEYED_RECV} --timeout 0.3 --interface 127.0.0.1",
    "send": "send {pkg} --snapshot {snap_xml} --no-discovery --receiver-timeout 0.3 --linger 1",
}


@pytest.mark.parametrize("command", sorted(SESSION_RUNS))
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "insecure"])
def test_the_report_says_whether_the_session_was_authenticated(
    files: dict[str, str], tmp_path: Path, command: str, keyed: bool
) -> None:
    rnd = random.Random()
    where = {"group": f"{rnd.randrange(100, 200)}.{rnd.randrange(1, 250)}",
             "port": rnd.randrange(40000, 60000)}  # fmt: skip
    argv = f"{SESSION_RUNS[command]} {QUIET} " + (KEYED if keyed else "--insecure")
    words = [w.format(**files, **where) for w in argv.split()]
    proc = subprocess.run(
        [sys.executable, "-m", "mcast.cli", *words], capture_output=True, text=True,
        timeout=60, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False,
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines and lines[-1]["event"] == "done", proc.stderr
    assert lines[0]["event"] == "start" and lines[0]["authenticated"] is keyed
    assert lines[-1]["authenticated"] is keyed
    warned = [line for line in proc.stderr.splitlines() if "warning: --insecure" in line]
    assert len(warned) == (0 if keyed else 1), proc.stderr
    shutil.rmtree(files["out"], ignore_errors=True)  # the table checks that it is never made


@pytest.mark.parametrize(("command", "quick"), [("recv", True), ("send", True), ("fetch", False)])
def test_only_send_and_recv_skip_the_interpreter_teardown(
    monkeypatch: pytest.MonkeyPatch, command: str, quick: bool
) -> None:
    """send and recv end with os._exit once their output is flushed; other commands, whose
    objects may still clean up at exit, end normally, with the same code."""
    import mcast.cli as cli

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli.sys, "argv", ["mcast", command, "--json"])
    if quick:
        with pytest.raises(Exited) as exc:
            cli.entry()
        assert exc.value.args == (3,)
    else:
        with pytest.raises(SystemExit) as normal:
            cli.entry()
        assert normal.value.code == 3
