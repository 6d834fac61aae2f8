"""The XML documents the server speaks, and validation of everything a client sends.

This module owns: the policy document (``GetClientPolicies.aspx``), the package info
document (``getPackageInfo.aspx``), the status event body (``PostEvent.aspx``) and its
acknowledgement, the error document, and the parsers of query parameters. Every parser of
client input raises only :class:`BadRequest`, whose message is safe to show to the client.
PROTOCOL.md is the prose form of this module.
"""

from __future__ import annotations

import ipaddress
import math
import re
import uuid
from dataclasses import dataclass
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET

from .store import EventRecord, PackageRow, TaskRow

MAX_EVENT_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4096
STATES = ("received", "downloading", "downloaded", "scheduled", "running", "succeeded", "failed")
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_MAX_INT = 2**63 - 1


class BadRequest(Exception):
    """Client input is malformed; ``status`` is the 4xx to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _xml(root: Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + bytes(tostring(root, encoding="utf-8"))


# -- query parameters -----------------------------------------------------------------


def parse_guid(raw: str | None, what: str) -> str:
    """A GUID in any of the usual spellings ({...}, upper case) -> lower case, no braces."""
    if raw is None or raw == "":
        raise BadRequest(f"missing parameter {what!r}")
    text = raw.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if len(text) != 36:
        raise BadRequest(f"{what} {raw[:80]!r} is not a GUID")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise BadRequest(f"{what} {raw[:80]!r} is not a GUID") from None


def parse_ip(raw: str | None) -> str:
    if raw is None or raw == "":
        raise BadRequest("missing parameter 'ip'")
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise BadRequest(f"ip {raw[:80]!r} is not an IP address") from None


def parse_nonneg_int(raw: str | None, what: str, default: int | None = None) -> int:
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"missing parameter {what!r}")
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{what} {raw[:80]!r} is not a non-negative integer")
    return int(raw)


def parse_hash(raw: str) -> str:
    if not _HASH_RE.fullmatch(raw):
        raise BadRequest(f"{raw[:80]!r} is not a package hash (64 lower-case hex digits)")
    return raw


# -- documents the server sends -------------------------------------------------------


def error_xml(status: int, message: str) -> bytes:
    el = Element("Error", {"status": str(status)})
    el.text = message
    return _xml(el)


@dataclass(frozen=True)
class PolicyTask:
    task: TaskRow
    package: PackageRow | None


def policy_xml(guid: str, settings: dict[str, str], tasks: list[PolicyTask]) -> bytes:
    root = Element("ClientPolicies", {"guid": guid})
    SubElement(
        root,
        "AgentSettings",
        {k: v for k, v in sorted(settings.items()) if k != "serverSite"},
    )
    tasks_el = SubElement(root, "Tasks")
    for item in tasks:
        t, p = item.task, item.package
        attrs = {"id": t.task_id, "packageId": t.package_id}
        if p is not None:
            attrs.update(
                packageName=p.name,
                packageHash=p.hash,
                packageSize=str(p.size),
                packageVersion=str(p.version),
            )
        task_el = SubElement(tasks_el, "Task", attrs)
        SubElement(task_el, "CommandLine").text = t.command
        SubElement(task_el, "Schedule", {"when": t.schedule})
        SubElement(task_el, "Credentials", {"ref": t.credentials})
        SubElement(task_el, "Execution", {"runFrom": t.run_from})
    return _xml(root)


@dataclass(frozen=True)
class Codebase:
    url: str
    site: str


def package_info_xml(
    package: PackageRow,
    snapshot_url: str,
    codebases: list[Codebase],
    computer_site: str | None,
    block_size: int,
) -> bytes:
    root = Element(
        "PackageInfo",
        {
            "packageId": package.package_id,
            "name": package.name,
            "version": str(package.version),
            "hash": package.hash,
            "size": str(package.size),
            "blockSize": str(block_size),
            "site": computer_site or "",
        },
    )
    SubElement(root, "Snapshot", {"url": snapshot_url})
    cbs = SubElement(root, "Codebases")
    for cb in codebases:
        SubElement(cbs, "Codebase", {"url": cb.url, "site": cb.site})
    SubElement(root, "Multicast", {"sessionKey": package.session_key})
    return _xml(root)


def event_ack_xml(event_id: str, stored: bool) -> bytes:
    return _xml(
        Element("EventAck", {"id": event_id, "result": "stored" if stored else "duplicate"})
    )


# -- the status event body ------------------------------------------------------------


def event_xml(ev: EventRecord) -> bytes:
    """The body an agent posts (used by the agent, tests and the bench)."""
    attrs = {
        "id": ev.event_id,
        "computer": ev.computer,
        "task": ev.task_id,
        "state": ev.state,
        "bytesMulticast": str(ev.bytes_multicast),
        "bytesHttp": str(ev.bytes_http),
        "time": repr(ev.agent_time),
    }
    if ev.exit_code is not None:
        attrs["exitCode"] = str(ev.exit_code)
    el = Element("Event", attrs)
    el.text = ev.message
    return _xml(el)


def _int_attr(el: Element, name: str, *, required: bool, signed: bool = False) -> int | None:
    raw = el.get(name)
    if raw is None:
        if required:
            raise BadRequest(f"<Event> lacks attribute {name!r}")
        return None
    body = raw[1:] if signed and raw.startswith("-") else raw
    if not body.isascii() or not body.isdigit() or len(body) > 19:
        raise BadRequest(f"<Event> attribute {name}={raw[:40]!r} is not an integer")
    value = int(raw)
    if abs(value) > _MAX_INT:
        raise BadRequest(f"<Event> attribute {name} is out of range")
    return value


def parse_event_untrusted(body: bytes) -> EventRecord:
    """Parse and validate a posted ``<Event>``; raises only BadRequest."""
    if len(body) > MAX_EVENT_BYTES:
        raise BadRequest(f"event body is larger than {MAX_EVENT_BYTES} bytes", 413)
    if not body.strip():
        raise BadRequest("empty event body")
    try:
        root = SafeET.fromstring(body)
    except Exception:  # defusedxml raises several types for hostile documents
        raise BadRequest(
            "event body is not well-formed XML (or uses forbidden constructs)"
        ) from None
    if root.tag != "Event":
        raise BadRequest(f"expected an <Event> document, got <{str(root.tag)[:40]}>")
    if len(root):
        raise BadRequest("<Event> must not have child elements")
    state = root.get("state")
    if state not in STATES:
        raise BadRequest(f"<Event> state must be one of {', '.join(STATES)}")
    raw_time = root.get("time")
    try:
        agent_time = float(raw_time) if raw_time is not None else -1.0
    except ValueError:
        agent_time = -1.0
    if not math.isfinite(agent_time) or agent_time < 0:
        raise BadRequest("<Event> attribute 'time' must be seconds since the epoch")
    message = root.text or ""
    if len(message) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"<Event> message is longer than {MAX_MESSAGE_CHARS} characters")
    bmc = _int_attr(root, "bytesMulticast", required=False) or 0
    bhttp = _int_attr(root, "bytesHttp", required=False) or 0
    return EventRecord(
        event_id=parse_guid(root.get("id"), "event id"),
        computer=parse_guid(root.get("computer"), "computer"),
        task_id=parse_guid(root.get("task"), "task"),
        state=state,
        exit_code=_int_attr(root, "exitCode", required=False, signed=True),
        bytes_multicast=bmc,
        bytes_http=bhttp,
        message=message,
        agent_time=agent_time,
    )
