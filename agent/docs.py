"""The XML documents the agent reads from and writes to the Notification Server.

This module owns: parsing the policy (``GetClientPolicies.aspx``), the package info
(``getPackageInfo.aspx``), the event acknowledgement and the error document, all with
defusedxml; and building the ``<Event>`` body of ``PostEvent.aspx``. Parsers raise only
:class:`DocumentError`. The contract is ``server_stub/PROTOCOL.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element, tostring

import defusedxml.ElementTree as SafeET

MAX_DOC_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_CHARS = 4000  # the server refuses more than 4,096
_HASH_RE = re.compile(r"[0-9a-f]{64}")
# characters XML 1.0 cannot carry: C0 controls but tab/newline/CR, surrogates, U+FFFE/FFFF
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class DocumentError(Exception):
    """A document from the server is malformed."""


def _parse(data: bytes, tag: str) -> Element:
    if len(data) > MAX_DOC_BYTES:
        raise DocumentError(f"<{tag}> document is too large")
    try:
        root = SafeET.fromstring(data)
    except Exception as exc:  # defusedxml raises several types for hostile documents
        raise DocumentError(f"<{tag}> document is not well-formed XML: {exc}") from None
    if not isinstance(root, Element) or root.tag != tag:
        raise DocumentError(f"expected a <{tag}> document")
    return root


def _int(el: Element, name: str, default: int | None = None) -> int:
    raw = el.get(name)
    if raw is None or raw == "":
        if default is None:
            raise DocumentError(f"<{el.tag}> lacks attribute {name!r}")
        return default
    body = raw[1:] if raw.startswith("-") else raw
    if not body.isascii() or not body.isdigit():
        raise DocumentError(f"<{el.tag}> attribute {name}={raw[:40]!r} is not an integer")
    return int(raw)


def _bool(el: Element, name: str, default: bool) -> bool:
    raw = (el.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise DocumentError(f"<{el.tag}> attribute {name}={raw[:40]!r} is not a boolean")


# -- policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSettings:
    """The Agent Settings policy (defaults are the server's defaults)."""

    multicast_enabled: bool = True
    min_multicast_size: int = 1024 * 1024
    max_sessions_per_subnet: int = 2
    speed_test_codebases: bool = True
    max_trying_time_mins: int = 0
    check_in_interval_mins: int = 60


@dataclass(frozen=True)
class PolicyTask:
    task_id: str
    package_id: str
    package_name: str
    package_hash: str  # "" when the server knows no version of the package
    package_size: int
    package_version: int
    command: str
    schedule: str  # the raw ``when`` text; see agent.schedule
    credentials: str
    run_from: str  # "agent" or "server"


@dataclass(frozen=True)
class Policy:
    guid: str
    settings: AgentSettings
    tasks: tuple[PolicyTask, ...]


def parse_policy(data: bytes) -> Policy:
    root = _parse(data, "ClientPolicies")
    s = root.find("AgentSettings")
    settings = AgentSettings()
    if s is not None:
        settings = AgentSettings(
            multicast_enabled=_bool(s, "multicastEnabled", True),
            min_multicast_size=_int(s, "minMulticastSize", settings.min_multicast_size),
            max_sessions_per_subnet=_int(
                s, "maxSessionsPerSubnet", settings.max_sessions_per_subnet
            ),
            speed_test_codebases=_bool(s, "SpeedTestCodebases", True),
            max_trying_time_mins=_int(s, "MaxAgentDownloadTryingTimeMins", 0),
            check_in_interval_mins=_int(s, "checkInIntervalMins", 60),
        )
    tasks: list[PolicyTask] = []
    tasks_el = root.find("Tasks")
    for t in tasks_el.findall("Task") if tasks_el is not None else []:
        task_id, package_id = t.get("id") or "", t.get("packageId") or ""
        if not task_id or not package_id:
            raise DocumentError("<Task> lacks id or packageId")
        package_hash = (t.get("packageHash") or "").lower()
        if package_hash and not _HASH_RE.fullmatch(package_hash):
            raise DocumentError(f"<Task> packageHash {package_hash[:80]!r} is not a hash")
        sched, cred, exe = t.find("Schedule"), t.find("Credentials"), t.find("Execution")
        tasks.append(
            PolicyTask(
                task_id=task_id.lower(),
                package_id=package_id.lower(),
                package_name=t.get("packageName") or "",
                package_hash=package_hash,
                package_size=_int(t, "packageSize", 0),
                package_version=_int(t, "packageVersion", 0),
                command=(t.findtext("CommandLine") or "").strip(),
                schedule=(sched.get("when") if sched is not None else None) or "asap",
                credentials=(cred.get("ref") if cred is not None else None) or "system",
                run_from=(exe.get("runFrom") if exe is not None else None) or "agent",
            )
        )
    return Policy(root.get("guid") or "", settings, tuple(tasks))


# -- package info ---------------------------------------------------------------------


@dataclass(frozen=True)
class PackageInfo:
    package_id: str
    name: str
    version: int
    hash: str
    size: int
    block_size: int
    site: str
    snapshot_url: str
    codebases: tuple[str, ...]
    session_key: bytes | None


def parse_package_info(data: bytes) -> PackageInfo:
    root = _parse(data, "PackageInfo")
    hash_hex = (root.get("hash") or "").lower()
    if not _HASH_RE.fullmatch(hash_hex):
        raise DocumentError("<PackageInfo> hash is not 64 hex digits")
    snap = root.find("Snapshot")
    snapshot_url = snap.get("url") if snap is not None else None
    if not snapshot_url:
        raise DocumentError("<PackageInfo> lacks <Snapshot url=...>")
    cbs = root.find("Codebases")
    codebases = tuple(
        url for c in (cbs.findall("Codebase") if cbs is not None else []) if (url := c.get("url"))
    )
    key: bytes | None = None
    mc = root.find("Multicast")
    raw_key = mc.get("sessionKey") if mc is not None else None
    if raw_key:
        try:
            key = bytes.fromhex(raw_key)
        except ValueError:
            raise DocumentError("<Multicast> sessionKey is not hex") from None
    return PackageInfo(
        package_id=(root.get("packageId") or "").lower(),
        name=root.get("name") or "",
        version=_int(root, "version", 0),
        hash=hash_hex,
        size=_int(root, "size"),
        block_size=_int(root, "blockSize", 0),
        site=root.get("site") or "",
        snapshot_url=snapshot_url,
        codebases=codebases,
        session_key=key,
    )


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusEvent:
    event_id: str
    computer: str
    task_id: str
    state: str
    exit_code: int | None
    bytes_multicast: int
    bytes_http: int
    message: str
    agent_time: float


def clean_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Make text safe to carry in XML and short enough for the server (keeps the tail)."""
    text = _XML_BAD.sub("?", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def event_body(ev: StatusEvent) -> bytes:
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
    el.text = clean_message(ev.message)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + bytes(tostring(el, encoding="utf-8"))


def parse_ack(data: bytes) -> tuple[str, str]:
    """``<EventAck id=.. result=..>`` -> (id, result)."""
    root = _parse(data, "EventAck")
    return (root.get("id") or "").lower(), root.get("result") or ""


def error_text(data: bytes) -> str:
    """The message of an ``<Error>`` document, or the start of whatever the body is."""
    try:
        root = SafeET.fromstring(data[:65536])
        if isinstance(root, Element) and root.tag == "Error":
            return (root.text or "").strip()
    except Exception:
        pass
    return data[:200].decode("utf-8", "replace").strip()
