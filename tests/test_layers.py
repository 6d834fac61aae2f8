"""The layering of the project, checked from its source.

* the engine (``mcast/``) imports nothing above it: not ``bench``, ``agent`` or
  ``server_stub``, in any import form, at module level or lazily inside a function
  (``mcast demo`` reaches the demo through the ``mcast.commands`` entry point instead);
* no import cycles, neither between modules nor between the four packages;
* the pure cores load no trio, no socket and no HTTP client: importing them in a fresh
  interpreter leaves those out of ``sys.modules``.

The import graph is read with ``ast`` from every module of the four packages; a
``from package import name`` counts as an import of ``package.name`` when that is a module.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mcast", "agent", "server_stub", "bench")
ABOVE_THE_ENGINE = ("bench", "agent", "server_stub")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the four packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def _resolve(module: str, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of ``from <level dots><module> import ...`` inside ``importer``."""
    if level == 0:
        return module
    base = importer.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """Every module ``name`` imports, anywhere in its source (top level, functions, class
    bodies, ``if TYPE_CHECKING``), with the line; also ``importlib.import_module("...")``
    and ``__import__("...")`` calls with a literal name."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, name, is_package)
            yield base, node.lineno
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # ``from pkg import submodule``
                    yield f"{base}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (
                called in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                yield arg.value, node.lineno


def graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for name in MODULES:
        for target, _ in imports_of(name):
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_every_import_form() -> None:
    """The reader itself: absolute, relative, from-package, lazy and importlib forms."""
    assert "mcast.errors" in graph()["mcast.units"]
    assert "mcast.snapshot" in graph()["mcast.partial"]
    lazy = [t for t, _ in imports_of("mcast.cli") if t == "mcast.fetch"]
    assert lazy, "the lazy import of mcast.fetch inside cmd_fetch must be seen"
    assert _resolve("wire", 1, "mcast.sender", False) == "mcast.wire"
    assert _resolve("", 1, "mcast", True) == "mcast"
    assert _resolve("x", 2, "bench.sub.mod", False) == "bench.x"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_engine_imports_nothing_above_it() -> None:
    bad = []
    for name in MODULES:
        if name.split(".")[0] != "mcast":
            continue
        for target, line in imports_of(name):
            if target.split(".")[0] in ABOVE_THE_ENGINE:
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
    assert bad == [], "mcast/ must not import the layers above it:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules() -> None:
    found = cycles(graph())
    assert found == [], f"import cycles: {found}"


def test_no_import_cycles_between_packages() -> None:
    edges: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for name, targets in graph().items():
        for target in targets:
            if target.split(".")[0] != name.split(".")[0]:
                edges[name.split(".")[0]].add(target.split(".")[0])
    assert cycles(edges) == [], edges
    assert edges["mcast"] == set(), edges


CORES = [
    "mcast.sender",  # the sans-I/O cores, and through them every part they delegate to
    "mcast.receiver",
    "mcast.wire",
    "mcast.snapshot",
    "mcast.geometry",
    "mcast.fec",
    "mcast.pacing",
    "mcast.events",
    "mcast.errors",
    "mcast.units",
]
NOT_IN_A_CORE = ["trio", "socket", "httpx", "ssl", "asyncio"]

_PROBE = textwrap.dedent(
    """
    import importlib, json, sys, traceback

    forbidden, cores = set(sys.argv[1].split(",")), sys.argv[2].split(",")
    who = {}

    class Watch:  # records which project line first pulled in a forbidden module
        def find_spec(self, name, path=None, target=None):
            if name in forbidden and name not in who:
                frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()
                          if "/importlib/" not in f.filename and "<frozen" not in f.filename]
                who[name] = frames[-6:]
            return None

    sys.meta_path.insert(0, Watch())
    for name in cores:
        importlib.import_module(name)
    loaded = sorted(m for m in forbidden if m in sys.modules)
    print(json.dumps({"loaded": loaded, "who": {m: who.get(m) for m in loaded},
                      "project": sorted(m for m in sys.modules if m.startswith("mcast."))}))
    """
)


def test_importing_the_cores_loads_no_trio_socket_or_http() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(NOT_IN_A_CORE), ",".join(CORES)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["loaded"] == [], json.dumps(report["who"], indent=1)
    drivers = {"mcast.udp", "mcast.send_driver", "mcast.recv_driver", "mcast.fetch"}
    assert not drivers & set(report["project"]), report["project"]


@pytest.mark.parametrize("module", ["mcast.cli"])
def test_the_cli_needs_no_package_above_the_engine(module: str) -> None:
    """Importing the CLI in a fresh interpreter loads no bench/agent/server_stub module."""
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bench', 'agent', "
        "'server_stub')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_cli_loads_only_the_send_side_before_a_command_needs_more() -> None:
    """``mcast send`` should reach its first datagram soon after the process starts: the
    CLI itself loads neither the receive side, nor fetch and discovery, nor the entry-point
    machinery (read only for a plug-in command), nor rich (only on a terminal)."""
    code = (
        "import sys, mcast.cli; "
        "print(sorted(m for m in ('mcast.receiver', 'mcast.recv_driver', 'mcast.partial', "
        "'mcast.fetch', 'mcast.discovery', 'mcast.http_fetch', 'importlib.metadata', 'rich', "
        "'httpx') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        check=False, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
