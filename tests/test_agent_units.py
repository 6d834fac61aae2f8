"""Unit tests of the agent's pieces: schedule, documents, state machine, command runner."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ConfigError
from agent.core import Permanent, Retryable
from agent.runner import run_command
from agent.state import AgentState, Job, JobState, Report, StateError
from mcast.errors import ExitCode, McastError
from mcast.fleet import (
    MAX_MESSAGE_CHARS,
    DocumentError,
    StatusEvent,
    clean_message,
    event_xml,
    parse_package_info,
    parse_policy,
)
from mcast.schedule import Kind, ScheduleError, decide, parse_schedule
from server_stub.docs import parse_event_untrusted
from tests.harness import await_for, within

# -- schedule ------------------------------------------------------------------------------


def test_schedule_forms() -> None:
    assert parse_schedule("asap").kind is Kind.ASAP
    assert parse_schedule("").kind is Kind.ASAP
    at = parse_schedule("2030-01-01T00:00:00Z")
    assert at.kind is Kind.AT and at.start == dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    w = parse_schedule("2030-01-01T00:00:00Z/2030-01-01T02:00:00+00:00")
    assert w.kind is Kind.WINDOW and w.end - w.start == 7200
    assert parse_schedule("22:00/04:30").daily == (22 * 60, 4 * 60 + 30)
    for bad in ("tomorrow", "2030-01-01/2029-01-01", "25:00/01:00", "10:00/10:00"):
        with pytest.raises(ScheduleError):
            parse_schedule(bad)


def test_schedule_decisions() -> None:
    at = parse_schedule("2030-01-01T00:00:00Z")
    assert not decide(at, at.start - 1).due and decide(at, at.start - 1).next_check == at.start
    assert decide(at, at.start).due
    w = parse_schedule("2030-01-01T00:00:00Z/2030-01-01T01:00:00Z")
    assert decide(w, w.start - 5).next_check == w.start
    assert decide(w, w.start + 5).due
    assert decide(w, w.end).missed and not decide(w, w.end).due


def test_daily_window_wraps_midnight() -> None:
    s = parse_schedule("22:00/02:00")
    day = dt.datetime(2030, 6, 1, 12, 0).astimezone()
    assert not decide(s, day.timestamp()).due
    nxt = decide(s, day.timestamp()).next_check
    assert nxt == day.replace(hour=22).timestamp()
    assert decide(s, day.replace(hour=23).timestamp()).due
    assert decide(s, day.replace(hour=1).timestamp()).due
    assert not decide(s, day.replace(hour=2).timestamp()).due


# -- documents ------------------------------------------------------------------------------

POLICY = b"""<?xml version="1.0" encoding="utf-8"?>
<ClientPolicies guid="g"><AgentSettings multicastEnabled="false" minMulticastSize="5"
 maxSessionsPerSubnet="4" SpeedTestCodebases="0" MaxAgentDownloadTryingTimeMins="7"
 checkInIntervalMins="3"/><Tasks><Task id="T" packageId="P" packageName="App"
 packageHash="%s" packageSize="10" packageVersion="2"><CommandLine> run.cmd </CommandLine>
 <Schedule when="22:00/23:00"/><Credentials ref="system"/><Execution runFrom="server"/></Task>
</Tasks></ClientPolicies>""" % (b"ab" * 32)


def test_parse_policy() -> None:
    p = parse_policy(POLICY)
    s = p.settings
    assert (s.multicast_enabled, s.min_multicast_size, s.max_sessions_per_subnet) == (False, 5, 4)
    assert (s.speed_test_codebases, s.max_trying_time_mins, s.check_in_interval_mins) == (
        False, 7, 3)  # fmt: skip
    (t,) = p.tasks
    assert (t.task_id, t.package_id, t.command, t.schedule, t.run_from) == (
        "t", "p", "run.cmd", "22:00/23:00", "server")  # fmt: skip


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"<Other/>",
        b'<!DOCTYPE x [<!ENTITY a "b">]><ClientPolicies>&a;</ClientPolicies>',
        b'<ClientPolicies><AgentSettings minMulticastSize="x"/></ClientPolicies>',
        b'<ClientPolicies><Tasks><Task id="t"/></Tasks></ClientPolicies>',
        b'<ClientPolicies><Tasks><Task id="t" packageId="p" packageHash="zz"/></Tasks>'
        b"</ClientPolicies>",
    ],
)
def test_bad_policies_are_refused(doc: bytes) -> None:
    with pytest.raises(DocumentError):
        parse_policy(doc)


@given(st.binary(max_size=300))
def test_parsers_raise_only_document_error(data: bytes) -> None:
    for parse in (parse_policy, parse_package_info):
        with contextlib.suppress(DocumentError):
            parse(data)


@given(st.text(max_size=5000))
def test_event_body_is_accepted_by_the_server(text: str) -> None:
    ev = StatusEvent(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), "failed", -1,
                     3, 4, text, time.time())  # fmt: skip
    rec = parse_event_untrusted(event_xml(ev))
    assert rec.event_id == ev.event_id and rec.exit_code == -1 and rec.agent_time == ev.agent_time
    assert rec.message == clean_message(text).replace("\r", "\n")
    assert len(rec.message) <= MAX_MESSAGE_CHARS


# -- state machine ------------------------------------------------------------------------


def _job(task: str = "t") -> Job:
    return Job(task, "h" * 64, "p", "App", "cmd", "asap", "system", "agent",
               JobState.RECEIVED, None, None, "", 0, 0, "", 0)  # fmt: skip


def test_transitions_are_checked_and_evented(tmp_path: Path) -> None:
    st_ = AgentState(tmp_path)
    job = _job()
    assert st_.add_job(job, "g", Report(message="hi"))
    assert not st_.add_job(job, "g", Report())  # known: not received twice
    with pytest.raises(StateError):
        st_.transition(job, JobState.RUNNING)
    job = st_.transition(job, JobState.DOWNLOADING)
    assert job.first_try is not None
    first = job.first_try
    job = st_.transition(job, JobState.DOWNLOADING, event=False)
    assert job.first_try == first  # TotalTime counts from the first attempt
    for s in (JobState.DOWNLOADED, JobState.SCHEDULED, JobState.RUNNING):
        job = st_.transition(job, s)
    job = st_.transition(job, JobState.SUCCEEDED, Report(exit_code=0))
    with pytest.raises(StateError):
        st_.transition(job, JobState.RUNNING)  # terminal
    events = st_.outbox()
    assert [e.state for e in events] == [
        "received", "downloading", "downloaded", "scheduled", "running", "succeeded"
    ]  # fmt: skip
    times = [e.agent_time for e in events]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len({e.event_id for e in events}) == 6
    st_.close()
    again = AgentState(tmp_path)  # durable
    assert again.job("t", "h" * 64) == job and len(again.outbox()) == 6
    again.close()


# -- runner -------------------------------------------------------------------------------


async def test_runner_bounds_the_output_tail(tmp_path: Path) -> None:
    cmd = "python3 -c \"import sys; sys.stdout.write('x' * 100000 + 'END'); sys.exit(7)\""
    res = await run_command(cmd, tmp_path, timeout_s=20, tail_bytes=100)
    assert res.exit_code == 7 and not res.timed_out and not res.ok
    assert len(res.output_tail) == 100 and res.output_tail.endswith("END")


def _living(argv: list[str]) -> list[int]:
    """Processes (not zombies) running exactly ``argv``."""
    want = ("\0".join(argv) + "\0").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (proc / "stat").read_text()
            if (proc / "cmdline").read_bytes() == want and stat.rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(proc.name))
    return pids


async def test_runner_timeout_kills_the_process_group(tmp_path: Path) -> None:
    nap = ["sleep", f"{600 + uuid.uuid4().int % 1000}"]  # ours alone, found by its argv
    cmd = f"{' '.join(nap)} & {' '.join(nap)}; echo never"
    with within(120, "the runner to end a 10-minute command at its 0.3 s timeout"):
        res = await run_command(cmd, tmp_path, timeout_s=0.3)
    assert res.timed_out and res.exit_code is None
    assert "never" not in res.output_tail
    # the whole group went, the background sleep too, not only the shell
    await await_for(lambda: not _living(nap), f"no {nap} left running", limit=30)


async def test_runner_cwd_and_env(tmp_path: Path) -> None:
    res = await run_command('pwd; echo "$FOO"', tmp_path, timeout_s=10, env={"FOO": "bar"})
    assert res.ok and res.output_tail.split() == [str(await trio.Path(tmp_path).resolve()), "bar"]


# -- error classes ------------------------------------------------------------------------


def test_agent_errors_belong_to_the_one_family() -> None:
    table = [
        (ConfigError, ExitCode.USAGE, True),
        (ScheduleError, ExitCode.USAGE, True),
        (DocumentError, ExitCode.TRUST, True),
        (StateError, ExitCode.IO, False),
        (Retryable, ExitCode.NET, False),
        (Permanent, ExitCode.NET, False),
    ]
    for cls, code, value_error in table:
        assert issubclass(cls, McastError) and cls("x").exit_code == code, cls
        assert issubclass(cls, ValueError) == value_error, cls
