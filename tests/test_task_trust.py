"""What an agent runs is what the server signed, re-hashed just before, as the right user.

Against a real Notification Server stub on 127.0.0.1: a policy changed in transit (command
line, run-as, package hash, signature removed) is refused task by task and nothing of it runs;
a package changed in the cache after it was downloaded is not run; commands run as their
task's run-as user, and never as root unless the task says so (root-only tests).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, tostring

import defusedxml.ElementTree as SafeET
import httpx
import pytest

from agent import Agent, AgentConfig, runas
from agent.config import ConfigError
from tests.test_agent_support import ME, NS, CountingFetcher, agent_config, make_ns

ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to another user (nobody) needs root"
)


@pytest.fixture
def ns(tmp_path: Path) -> NS:
    return make_ns(tmp_path, computers=1)


class Tamper(httpx.AsyncHTTPTransport):
    """Stands for whoever answers for the server's address: rewrites the ``<Task>`` of one
    task id in every policy on its way to the agent."""

    def __init__(self, task_id: str, edit: Callable[[Element], None]) -> None:
        super().__init__()
        self.task_id, self.edit, self.policies = task_id, edit, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await super().handle_async_request(request)
        if not request.url.path.endswith("/GetClientPolicies.aspx"):
            return resp
        root = SafeET.fromstring(await resp.aread())
        (task,) = [t for t in root.iter("Task") if t.get("id") == self.task_id]
        self.edit(task)
        self.policies += 1
        headers = {"content-type": resp.headers["content-type"]}
        return httpx.Response(resp.status_code, headers=headers, content=tostring(root))


def _set_text(tag: str, text: str) -> Callable[[Element], None]:
    def edit(task: Element) -> None:
        el = task.find(tag)
        assert el is not None
        el.text = text

    return edit


def _set_attr(tag: str | None, name: str, value: str) -> Callable[[Element], None]:
    def edit(task: Element) -> None:
        el = task if tag is None else task.find(tag)
        assert el is not None and el.get(name) is not None
        el.set(name, value)

    return edit


def _drop_signature(task: Element) -> None:
    sig = task.find("Signature")
    assert sig is not None
    task.remove(sig)


async def run_agent(
    ns: NS, url: str, state: Path, **kw: Any
) -> tuple[Any, list[dict[str, Any]], CountingFetcher]:
    """One check-in and all it leads to; the result, the agent's events and its fetcher."""
    events: list[dict[str, Any]] = []
    fetcher = kw.pop("fetcher", None) or CountingFetcher()
    transport = kw.pop("transport", None)
    cfg = agent_config(ns, url, ns.guids[0], state, **kw)
    with Agent(cfg, fetcher=fetcher, transport=transport, on_event=events.append) as agent:
        result = await agent.run_once()
        jobs = {j.task_id for j in agent.state.jobs()}
    return (result, jobs), events, fetcher


EDITS = {
    "command": lambda evidence: _set_text("CommandLine", f"touch {evidence}"),
    # to root (to bin when the tests, and so their tasks, already run as root, as in CI)
    "run_as": lambda evidence: _set_attr("Credentials", "ref", "root" if ME != "root" else "bin"),
    "package_hash": lambda evidence: _set_attr(None, "packageHash", "cd" * 32),
    "no_signature": lambda evidence: _drop_signature,
}


@pytest.mark.parametrize("change", sorted(EDITS))
async def test_task_changed_in_transit_is_refused_and_nothing_of_it_runs(
    ns: NS, url: str, tmp_path: Path, change: str
) -> None:
    """command line / run-as / package hash changed, or the signature removed, on the way:
    that task is refused (reported, never stored, never downloaded or run); the other task of
    the same policy still runs."""
    evidence = tmp_path / "tampered-command-ran"
    victim = ns.add_task()
    other = ns.add_task()
    tamper = Tamper(victim, EDITS[change](evidence))
    (result, jobs), events, fetcher = await run_agent(ns, url, tmp_path / "a", transport=tamper)
    assert tamper.policies == 1
    refused = [e for e in events if e["event"] == "task-refused"]
    assert [e["task"] for e in refused] == [victim]
    assert ("missing" if change == "no_signature" else "bad signature") in refused[0]["reason"]
    assert victim not in jobs and victim not in result.finished
    assert result.finished == {other: "succeeded"}
    assert fetcher.calls == 1  # for the other task only
    # the one run is the other task's (the marker line names the task); nothing else ran
    assert [line.split()[0] for line in ns.runs(ns.guids[0])] == [other]
    assert not evidence.exists()


async def test_untampered_policy_from_the_same_transport_runs(
    ns: NS, url: str, tmp_path: Path
) -> None:
    """The tamper tests' transport itself changes nothing when its edit changes nothing."""
    task = ns.add_task()
    tamper = Tamper(task, lambda el: None)
    (result, _), events, _ = await run_agent(ns, url, tmp_path / "a", transport=tamper)
    assert tamper.policies == 1 and not [e for e in events if e["event"] == "task-refused"]
    assert result.finished == {task: "succeeded"}


async def test_package_changed_in_the_cache_is_not_run(ns: NS, url: str, tmp_path: Path) -> None:
    """A file of the cached package altered after the download (same size, so the cache's
    size check passes): the next job of that package fails and runs nothing; the package
    leaves the cache and the job after it downloads it again and runs."""
    state = tmp_path / "a"
    first = ns.add_task()
    (result, _), _, fetcher = await run_agent(ns, url, state)
    assert result.finished == {first: "succeeded"} and fetcher.calls == 1
    setup = state / "cache" / ns.package_hash / "setup.py"
    evidence = tmp_path / "altered-setup-ran"
    altered = f"open({str(evidence)!r}, 'w').write('ran')\n".encode()
    size = setup.stat().st_size
    assert len(altered) < size
    setup.write_bytes(altered + b"#" * (size - len(altered)))

    second = ns.add_task()
    (result, _), events, fetcher = await run_agent(ns, url, state)
    assert result.finished == {second: "failed"} and fetcher.calls == 0  # "already cached"
    failed = [e for e in events if e["event"] == "job" and e["state"] == "failed"]
    assert "package changed in the cache, not run" in failed[0]["message"]
    assert not [e for e in events if e["event"] == "job" and e["state"] == "running"]
    assert not evidence.exists() and len(ns.runs(ns.guids[0])) == 1
    await ns.processed()
    assert "does not match the snapshot" in ns.status_of(ns.guids[0], second).message

    third = ns.add_task()
    (result, _), _, fetcher = await run_agent(ns, url, state)
    assert result.finished == {third: "succeeded"} and fetcher.calls == 1
    assert not evidence.exists() and len(ns.runs(ns.guids[0])) == 2


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the user ``nobody`` may write to (under /tmp: the test's own tmp_path is
    closed to other users)."""
    path = Path(tempfile.mkdtemp(prefix="mcast-runas-"))
    try:
        os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@ROOT_ONLY
@pytest.mark.parametrize("run_as", ["nobody", "system"])
async def test_task_runs_as_its_run_as_user_never_root_by_default(
    ns: NS, url: str, tmp_path: Path, nobody_dir: Path, run_as: str
) -> None:
    """``nobody`` named, or ``system`` (no user named: the agent's default, nobody): the
    command's ``id -u`` is nobody's, not root's, and it can read its package files."""
    nobody = pwd.getpwnam("nobody")
    out = nobody_dir
    command = f"id -u > {out}/uid && id -g > {out}/gid && wc -c < payload.bin > {out}/size"
    task = ns.add_task(command, run_as=run_as)
    (result, _), _, _ = await run_agent(ns, url, tmp_path / "a")
    assert result.finished == {task: "succeeded"}, result
    uid = int((nobody_dir / "uid").read_text())
    assert uid == nobody.pw_uid and uid != 0
    assert int((nobody_dir / "gid").read_text()) == nobody.pw_gid
    assert int((nobody_dir / "size").read_text()) == (ns.src / "payload.bin").stat().st_size


@ROOT_ONLY
async def test_task_that_says_root_runs_as_root(ns: NS, url: str, tmp_path: Path) -> None:
    out = tmp_path / "uid"
    task = ns.add_task(f"id -u > {out}", run_as="root")
    (result, _), _, _ = await run_agent(ns, url, tmp_path / "a")
    assert result.finished == {task: "succeeded"}
    assert int(out.read_text()) == 0


async def test_unknown_run_as_user_fails_the_job_unrun(ns: NS, url: str, tmp_path: Path) -> None:
    evidence = tmp_path / "ran"
    task = ns.add_task(f"touch {evidence}", run_as="no-such-user-mcast")
    (result, _), events, _ = await run_agent(ns, url, tmp_path / "a")
    assert result.finished == {task: "failed"} and not evidence.exists()
    (failed,) = [e for e in events if e["event"] == "job" and e["state"] == "failed"]
    assert "'no-such-user-mcast' does not exist" in failed["message"]


def test_default_run_as_user_may_not_be_root(ns: NS, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is root"):
        agent_config(ns, "http://127.0.0.1:9", ns.guids[0], tmp_path / "a", run_as_default="root")
    with pytest.raises(ConfigError, match="does not exist"):
        AgentConfig(
            server_url="http://127.0.0.1:9",
            guid=ns.guids[0],
            state_dir=tmp_path / "a",
            trust_key=ns.pub,
            run_as_default="no-such-user-mcast",
        )


def test_an_agent_that_is_not_root_runs_only_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen from an agent running as nobody: a task for root (or anyone else) fails with a
    clear error instead of running as the agent's own user; one for nobody needs no switch."""
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(runas.os, "geteuid", lambda: nobody.pw_uid)
    with pytest.raises(runas.RunAsError, match="cannot switch users"):
        runas.resolve("root", "nobody")
    assert runas.resolve("system", "nobody").is_self
    assert runas.resolve("nobody", "nobody").uid == nobody.pw_uid


def test_task_add_run_as_sets_the_run_as_user(ns: NS, capsys: pytest.CaptureFixture[str]) -> None:
    from server_stub.cli import main
    from server_stub.store import Store

    d = ["--data", str(ns.data)]
    g = ns.guids[0]
    base = ["task", "add", "--package", ns.package_name, "--command", "x", "--targets", g, *d]
    assert main([*base, "--run-as", "nobody"]) == 0
    assert main(base) == 0
    capsys.readouterr()
    store = Store(ns.data)
    try:
        assert [t.credentials for t in store.tasks_for(g)] == ["nobody", "system"]
    finally:
        store.close()
