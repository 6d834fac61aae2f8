"""The shared agent/server vocabulary (``mcast.fleet``) and the durable store helper.

Every document round-trips (build -> XML -> parse gives back the same document) for generated
content, awkward text included; the one set of limits is enforced on both sides; malformed
input of any shape raises only ``DocumentError``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mcast import fleet
from mcast.durable import open_store, transaction
from mcast.errors import ExitCode, StorageError, TrustError
from mcast.fleet import (
    EVENT_STATES,
    MAX_DOC_BYTES,
    MAX_EVENT_BYTES,
    MAX_INT,
    MAX_MESSAGE_CHARS,
    RUN_FROM,
    SETTING_DEFAULTS,
    AgentSettings,
    Codebase,
    DocumentError,
    DocumentTooLarge,
    EventAck,
    JobState,
    PackageInfo,
    Policy,
    PolicyTask,
    StatusEvent,
)

# characters XML 1.0 cannot carry at all
_UNCARRIABLE = "".join(chr(c) for c in [*range(9), 11, 12, *range(14, 32)]) + "\ufffe\uffff"
_chars = st.characters(exclude_categories=("Cs",), exclude_characters=_UNCARRIABLE)
AWKWARD = ["", " ", "\t\n", "<&>\"'", "]]>", "&amp;", "a\r\nb", "\u00e9\u4e2d\U0001f600", "\x85"]
# attribute values carry tab, newline and CR (escaped); element text cannot keep a CR
attr_text = st.one_of(st.sampled_from(AWKWARD), st.text(_chars, max_size=40))
nonempty_attr = attr_text.filter(bool)
element_text = st.text(_chars, max_size=200).map(lambda s: s.replace("\r", ""))
guids = st.uuids().map(str)
hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)
counts = st.integers(0, MAX_INT)

settings_st = st.builds(
    AgentSettings,
    **{  # each setting over its whole range, as fleet.SETTINGS declares it
        s.attr: st.booleans() if s.minimum is None else st.integers(s.minimum, s.maximum)
        for s in fleet.SETTINGS
    },
)


@st.composite
def policy_tasks(draw: Any) -> PolicyTask:
    known = draw(st.booleans())  # does the server know a version of the package?
    return PolicyTask(
        task_id=draw(guids),
        package_id=draw(guids),
        package_name=draw(attr_text) if known else "",
        package_hash=draw(hashes) if known else "",
        package_size=draw(counts) if known else 0,
        package_version=draw(counts) if known else 0,
        command=draw(element_text).strip(),
        schedule=draw(nonempty_attr),
        credentials=draw(nonempty_attr),
        run_from=draw(st.sampled_from(RUN_FROM)),
    )


policies = st.builds(
    Policy,
    attr_text,
    settings_st,
    st.lists(policy_tasks(), max_size=4).map(tuple),
    st.none() | st.binary(min_size=1, max_size=64),
)
package_infos = st.builds(
    PackageInfo,
    package_id=guids,
    name=attr_text,
    version=counts,
    hash=hashes,
    size=counts,
    block_size=counts,
    site=attr_text,
    snapshot_url=nonempty_attr,
    codebases=st.lists(st.builds(Codebase, nonempty_attr, attr_text), max_size=4).map(tuple),
    session_key=st.none() | st.binary(min_size=1, max_size=64),
)
events = st.builds(
    StatusEvent,
    event_id=guids,
    computer=guids,
    task_id=guids,
    state=st.sampled_from(EVENT_STATES),
    exit_code=st.none() | st.integers(-MAX_INT, MAX_INT),
    bytes_multicast=counts,
    bytes_http=counts,
    message=st.text(max_size=MAX_MESSAGE_CHARS + 50),
    agent_time=st.floats(0, 1e12),
)


# -- round trips -------------------------------------------------------------------------


@given(policies)
def test_policy_round_trip(policy: Policy) -> None:
    assert fleet.parse_policy(fleet.policy_xml(policy)) == policy


@given(package_infos)
def test_package_info_round_trip(info: PackageInfo) -> None:
    assert fleet.parse_package_info(fleet.package_info_xml(info)) == info


@given(events)
@example(replace(StatusEvent("0" * 8 + "-0000-0000-0000-" + "0" * 12, "a" * 8 + "-0000-0000-0000-"
                             + "0" * 12, "b" * 8 + "-0000-0000-0000-" + "0" * 12, "failed", -1, 0,
                             0, "", 0.0), message="x\r\ny\rz\x00\ufffe\ud800 <&>]]>"))  # fmt: skip
def test_event_round_trip(ev: StatusEvent) -> None:
    """Any message is sendable: the builder cleans it, and a clean message round-trips."""
    clean = fleet.clean_message(ev.message)
    assert fleet.clean_message(clean) == clean
    assert fleet.parse_event(fleet.event_xml(ev)) == replace(ev, message=clean)
    if ev.message == clean:
        assert fleet.parse_event(fleet.event_xml(ev)) == ev


@given(guids, st.booleans())
def test_ack_round_trip(event_id: str, stored: bool) -> None:
    ack = EventAck(event_id, stored)
    assert fleet.parse_ack(fleet.event_ack_xml(ack)) == ack


@given(st.integers(400, 599), st.text(max_size=300))
def test_error_round_trip(status: int, message: str) -> None:
    assert (
        fleet.error_text(fleet.error_xml(status, message)) == fleet.clean_message(message).strip()
    )


def test_error_text_of_something_else() -> None:
    assert fleet.error_text(b"plain failure\n") == "plain failure"
    assert fleet.error_text(b"<Other>x</Other>") == "<Other>x</Other>"


# -- settings ----------------------------------------------------------------------------


@given(settings_st)
def test_settings_round_trip(s: AgentSettings) -> None:
    assert AgentSettings.from_attrs(s.to_attrs()) == s
    for name, text in s.to_attrs().items():
        assert fleet.parse_setting(name, text) == text


def test_setting_defaults_are_the_wire_defaults() -> None:
    assert {
        "MaxAgentDownloadTryingTimeMins": "0",
        "SpeedTestCodebases": "1",
        "checkInIntervalMins": "60",
        "maxSessionsPerSubnet": "2",
        "minMulticastSize": str(1024 * 1024),
        "multicastEnabled": "true",
        "multicastHoldSecs": "2",
        "minSessionKBps": "64",
        "peerCacheHours": "24",
        "peerCacheMaxMB": "2048",
    } == SETTING_DEFAULTS
    assert AgentSettings.from_attrs({}) == AgentSettings()
    assert AgentSettings.from_attrs({"unknownFutureSetting": "x"}) == AgentSettings()


@pytest.mark.parametrize(
    ("name", "raw", "canonical"),
    [("multicastEnabled", "YES", "true"), ("SpeedTestCodebases", "false", "0"),
     ("minMulticastSize", " 42 ", "42"), ("maxSessionsPerSubnet", "1", "1"),
     ("multicastHoldSecs", "60", "60"), ("multicastHoldSecs", "0", "0"),
     ("minSessionKBps", "0", "0"), ("peerCacheHours", "0", "0"), ("peerCacheMaxMB", "10", "10")],
)  # fmt: skip
def test_settings_are_normalised(name: str, raw: str, canonical: str) -> None:
    assert fleet.parse_setting(name, raw) == canonical


@pytest.mark.parametrize(
    ("name", "raw"),
    [("noSuchSetting", "1"), ("multicastEnabled", "maybe"), ("minMulticastSize", "-1"),
     ("minMulticastSize", "1.5"), ("minMulticastSize", "9" * 30), ("maxSessionsPerSubnet", "0"),
     ("checkInIntervalMins", "0"), ("checkInIntervalMins", ""), ("multicastHoldSecs", "61"),
     ("multicastHoldSecs", "-1"), ("minSessionKBps", "-1"), ("minSessionKBps", "fast"),
     ("peerCacheHours", "1.5"), ("peerCacheMaxMB", "-5")],
)  # fmt: skip
def test_bad_settings_are_refused(name: str, raw: str) -> None:
    with pytest.raises(DocumentError):
        fleet.parse_setting(name, raw)


# -- limits ------------------------------------------------------------------------------


def _event(message: str = "") -> StatusEvent:
    g = "12345678-1234-5678-1234-567812345678"
    return StatusEvent(g, g, g, "failed", 1, 0, 0, message, 1.5)


def test_one_message_limit_for_builder_and_parser() -> None:
    # the builder keeps the tail of a long message, exactly as long as the parser accepts
    built = fleet.event_xml(_event("x" * (MAX_MESSAGE_CHARS * 3) + "END"))
    parsed = fleet.parse_event(built)
    assert len(parsed.message) == MAX_MESSAGE_CHARS and parsed.message.endswith("END")
    # one character more, written by hand, is refused
    over = fleet.event_xml(_event("y" * MAX_MESSAGE_CHARS)).replace(b"y<", b"yy<")
    with pytest.raises(DocumentError, match=str(MAX_MESSAGE_CHARS)):
        fleet.parse_event(over)


def test_oversize_documents_are_refused() -> None:
    body = fleet.event_xml(_event())
    padded = body + b" " * (MAX_EVENT_BYTES + 1 - len(body))
    with pytest.raises(DocumentTooLarge):
        fleet.parse_event(padded)
    assert fleet.parse_event(padded[:MAX_EVENT_BYTES]) == _event()
    doc = fleet.policy_xml(Policy("g", AgentSettings(), ()))
    with pytest.raises(DocumentTooLarge):
        fleet.parse_policy(doc + b" " * MAX_DOC_BYTES)
    with pytest.raises(DocumentTooLarge):
        fleet.parse_package_info(b" " * (MAX_DOC_BYTES + 1))


# -- malformed input -----------------------------------------------------------------------

PARSERS = (fleet.parse_policy, fleet.parse_package_info, fleet.parse_event, fleet.parse_ack)


@given(st.binary(max_size=400))
def test_parsers_raise_only_document_error(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(DocumentError):
            parse(data)


@given(st.sampled_from(PARSERS), st.text(_chars, max_size=60), st.text(_chars, max_size=60))
def test_attribute_soup_raises_only_document_error(parse: Any, name: str, value: str) -> None:
    tag = {fleet.parse_policy: "ClientPolicies", fleet.parse_package_info: "PackageInfo",
           fleet.parse_event: "Event", fleet.parse_ack: "EventAck"}[parse]  # fmt: skip
    safe = "".join(c for c in name if c.isalpha()) or "x"
    doc = f"<{tag} {safe}={quoteattr(value)} hash={quoteattr(value)} state={quoteattr(value)}/>"
    with contextlib.suppress(DocumentError):
        parse(doc.encode())


def _sample_docs() -> list[tuple[Any, bytes]]:
    task = PolicyTask("t", "p", "App", "ab" * 32, 10, 2, "run.cmd", "asap", "system", "agent")
    info = PackageInfo("p", "App", 2, "cd" * 32, 10, 4, "", "http://ns/s", (), b"k")
    return [
        (fleet.parse_policy, fleet.policy_xml(Policy("g", AgentSettings(), (task,), b"d" * 32))),
        (fleet.parse_package_info, fleet.package_info_xml(info)),
        (fleet.parse_event, fleet.event_xml(_event("hello"))),
        (fleet.parse_ack, fleet.event_ack_xml(EventAck("e", True))),
    ]


@pytest.mark.parametrize(("parse", "doc"), _sample_docs())
def test_every_prefix_and_trailing_junk_is_refused(parse: Any, doc: bytes) -> None:
    parse(doc)
    for cut in range(len(doc)):
        with pytest.raises(DocumentError):
            parse(doc[:cut])
    with pytest.raises(DocumentError):
        parse(doc + b"<junk/>")


@pytest.mark.parametrize(
    "doc",
    [
        b'<!DOCTYPE x [<!ENTITY a "b">]><ClientPolicies>&a;</ClientPolicies>',
        b'<ClientPolicies><AgentSettings minMulticastSize="x"/></ClientPolicies>',
        b'<ClientPolicies><AgentSettings maxSessionsPerSubnet="0"/></ClientPolicies>',
        b'<ClientPolicies><AgentSettings multicastHoldSecs="600"/></ClientPolicies>',
        b'<ClientPolicies><Multicast discoveryKey="not hex"/></ClientPolicies>',
        b'<ClientPolicies><Tasks><Task id="t"/></Tasks></ClientPolicies>',
        b'<ClientPolicies><Tasks><Task id="t" packageId="p" packageHash="zz"/></Tasks>'
        b"</ClientPolicies>",
        b'<ClientPolicies><Tasks><Task id="t" packageId="p" packageSize="1e3"/></Tasks>'
        b"</ClientPolicies>",
        b'<ClientPolicies><Tasks><Task id="t" packageId="p" sameContentAs="zz"/></Tasks>'
        b"</ClientPolicies>",
        b'<ClientPolicies><Tasks><Task id="t" packageId="p" sameContentAs="'
        + b" ".join([b"ab" * 32] * 17)
        + b'"/></Tasks></ClientPolicies>',
        b'<ClientPolicies><AgentSettings checkInIntervalMins="10081"/></ClientPolicies>',
        b'<ClientPolicies><Tasks><Task id="t" packageId="p"><Execution runFrom="moon"/></Task>'
        b"</Tasks></ClientPolicies>",
        b'<ClientPolicies><Tasks><Task id="t" packageId="p" packageVersion="'
        + b"9" * 5000
        + b'"/></Tasks></ClientPolicies>',
    ],
)
def test_bad_policies_are_refused(doc: bytes) -> None:
    with pytest.raises(DocumentError):
        fleet.parse_policy(doc)


@pytest.mark.parametrize("value", ["a\x00b", "bell\x07", "\ufffe", "lone \ud800 surrogate"])
def test_builders_refuse_text_xml_cannot_carry(value: str) -> None:
    task = PolicyTask("t", "p", "", "", 0, 0, "cmd", "asap", "system", "agent")
    for bad in (replace(task, command=value), replace(task, schedule=value)):
        with pytest.raises(DocumentError):
            fleet.policy_xml(Policy("g", AgentSettings(), (bad,)))
    info = PackageInfo("p", value, 1, "ab" * 32, 1, 1, "", "u", (), None)
    with pytest.raises(DocumentError):
        fleet.package_info_xml(info)
    # a carriage return is fine in an attribute, not in element text
    fleet.policy_xml(Policy("g", AgentSettings(), (replace(task, schedule="a\rb"),)))
    with pytest.raises(DocumentError):
        fleet.policy_xml(Policy("g", AgentSettings(), (replace(task, command="a\rb"),)))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("{12345678-ABCD-5678-1234-567812345678}", "12345678-abcd-5678-1234-567812345678"),
     (" 12345678-abcd-5678-1234-567812345678 ", "12345678-abcd-5678-1234-567812345678")],
)  # fmt: skip
def test_guid_spellings(raw: str, expected: str) -> None:
    assert fleet.parse_guid(raw, "task") == expected


@pytest.mark.parametrize("raw", [None, "", "x", "{" + "z" * 36 + "}", "\x00" * 36])
def test_bad_guids(raw: str | None) -> None:
    with pytest.raises(DocumentError):
        fleet.parse_guid(raw, "task")


def test_vocabulary() -> None:
    assert EVENT_STATES == ("received", "downloading", "downloaded", "scheduled", "running",
                            "succeeded", "failed")  # fmt: skip
    assert not JobState.SUPERSEDED.reported and JobState.SUPERSEDED.terminal
    assert fleet.PENDING not in EVENT_STATES
    # the one documented error: a trust failure (exit 3) that callers may catch as ValueError
    assert issubclass(DocumentError, TrustError) and issubclass(DocumentError, ValueError)
    assert DocumentError("x").exit_code == ExitCode.TRUST
    assert issubclass(DocumentTooLarge, DocumentError)


# -- the durable store helper --------------------------------------------------------------

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


def test_open_store_is_durable(tmp_path: Path) -> None:
    db = open_store(tmp_path / "s.sqlite3", SCHEMA, foreign_keys=True)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with transaction(db):
        db.execute("INSERT INTO t VALUES ('a', 1)")
    with pytest.raises(sqlite3.IntegrityError), transaction(db):
        db.execute("INSERT INTO t VALUES ('b', 2)")
        db.execute("INSERT INTO t VALUES ('a', 3)")  # fails: the whole transaction is undone
    assert db.execute("SELECT k, v FROM t").fetchall() == [("a", 1)]
    db.close()
    # opening again keeps the data (the schema is only created if missing)
    again = open_store(tmp_path / "s.sqlite3", SCHEMA)
    assert again.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    again.close()


def test_open_store_failures_are_storage_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot"):
        open_store(tmp_path, SCHEMA)  # a directory
    with pytest.raises(StorageError):
        open_store(tmp_path / "missing" / "s.sqlite3", SCHEMA)
    with pytest.raises(StorageError):
        open_store(tmp_path / "bad.sqlite3", "CREATE TABLE nonsense (")
