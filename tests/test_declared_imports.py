"""Every third-party package the code imports is declared in pyproject.toml.

The packages (``mcast``, ``agent``, ``server_stub``) may import only runtime dependencies,
but for the modules in ``OPTIONAL``, which nothing else in them imports; ``tests`` and
``bench`` may also import the ``test`` extra. A package that is installed here
only because something else pulls it in (anyio under starlette) still has to be declared.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"mcast", "agent", "server_stub", "bench", "tests"}
PACKAGES = ("mcast", "agent", "server_stub")
# modules of the packages that may use the test extra: the scapy dissector (see its docstring)
OPTIONAL = {"mcast/dissector.py"}


def _modules(path: Path) -> set[str]:
    """Every absolute import of one file (dotted names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(("." * node.level) + node.module)
    return names


def _files(*dirs: str) -> list[Path]:
    return [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]


def _third_party(files: list[Path]) -> set[str]:
    tops = {m.split(".")[0] for f in files for m in _modules(f) if not m.startswith(".")}
    return {n for n in tops if n not in OURS and n not in sys.stdlib_module_names}


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    dists = importlib.metadata.packages_distributions()
    return {m: {d.lower() for d in dists.get(m, [m])} for m in modules}


def test_every_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _declared(project["dependencies"])
    test_extra = runtime | _declared(project["optional-dependencies"]["test"])
    core = [f for f in _files(*PACKAGES) if f.relative_to(ROOT).as_posix() not in OPTIONAL]
    optional = [ROOT / f for f in sorted(OPTIONAL)]
    for files, allowed in ((core, runtime), (optional + _files("tests", "bench"), test_extra)):
        modules = _third_party(files)
        missing = {m: d for m, d in _distributions(modules).items() if not d & allowed}
        assert not missing, f"undeclared packages imported: {missing}"


def test_optional_modules_stay_optional() -> None:
    names = {f[: -len(".py")].replace("/", ".") for f in OPTIONAL}
    for f in _files(*PACKAGES):
        package = f.relative_to(ROOT).parts[0]
        imported = {package + "." + m.lstrip(".") if m.startswith(".") else m for m in _modules(f)}
        assert not imported & names, f"{f.relative_to(ROOT)} imports an optional module"
