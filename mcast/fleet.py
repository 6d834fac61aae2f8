"""The documents an agent and the Notification Server exchange, in one vocabulary.

This module owns what both ends of the HTTP protocol (``server_stub/PROTOCOL.md``) must agree
on, so that neither keeps its own copy:

- the policy with its tasks and the site's discovery key (``GetClientPolicies.aspx``):
  :class:`Policy`, :class:`PolicyTask`;
- the package info (``getPackageInfo.aspx``): :class:`PackageInfo`, :class:`Codebase`;
- the status event (``PostEvent.aspx``) and its acknowledgement: :class:`StatusEvent`,
  :class:`EventAck`; the error document every refusal carries;
- the job/status state names (:class:`JobState`, :data:`EVENT_STATES`, :data:`PENDING`);
- the Agent Settings: their names, types, defaults and valid values (:class:`AgentSettings`,
  :data:`SETTING_DEFAULTS`, :func:`parse_setting`);
- the size limits (:data:`MAX_DOC_BYTES`, :data:`MAX_EVENT_BYTES`, :data:`MAX_MESSAGE_CHARS`).

The trust key file the server hands out of band (``DATA/signing.pub``) is read by
:func:`mcast.snapshot.load_trust_key`, beside the snapshot signatures it checks.

Every document has a builder (``*_xml``) and a parser (``parse_*``); ``parse(build(doc))``
gives back ``doc``. Parsers read untrusted bytes with defusedxml and raise only
:class:`DocumentError` (:class:`DocumentTooLarge` past a size limit). Builders refuse, with
:class:`DocumentError`, text that XML 1.0 cannot carry, except for the free text of an event
message and of an error, which they clean (:func:`clean_message`) because it comes from
command output and must always be sendable. This module is pure (no clock, no sockets, no
files).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET

from .errors import TrustError

# -- limits ---------------------------------------------------------------------------

MAX_DOC_BYTES = 4 * 1024 * 1024  # a policy or package info document an agent will read
MAX_EVENT_BYTES = 64 * 1024  # a posted <Event> body
MAX_MESSAGE_CHARS = 4096  # the free text of an <Event>
MAX_INT = 2**63 - 1  # every integer attribute (SQLite's INTEGER)
_MAX_DIGITS = 19

_HASH_RE = re.compile(r"[0-9a-f]{64}")
# characters XML 1.0 cannot carry: C0 controls but tab/newline/CR, surrogates, U+FFFE/FFFF
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class DocumentError(TrustError, ValueError):
    """A document (or a value in one) is malformed; the message says what and where."""


class DocumentTooLarge(DocumentError):
    """A document is larger than its limit (a server answers 413)."""


# -- state names ----------------------------------------------------------------------


class JobState(Enum):
    """Where one job (a task with one package version) is; the values are the wire names.

    ``received -> downloading -> downloaded -> scheduled -> running -> succeeded | failed``;
    ``superseded`` (the task left the policy or its package changed before it ran) is the
    agent's own and never reported. The legal transitions are the agent's
    (``agent.state.TRANSITIONS``).
    """

    RECEIVED = "received"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.SUPERSEDED)

    @property
    def reported(self) -> bool:
        """Whether an agent sends a status event for this state."""
        return self is not JobState.SUPERSEDED


# the ``state`` of an <Event>, in the order a job passes through them
EVENT_STATES: tuple[str, ...] = tuple(s.value for s in JobState if s.reported)
# the status the server shows for a (computer, task) before any event of it was processed
PENDING = "pending"
# where a task's package runs from (``<Execution runFrom=...>``)
RUN_FROM: tuple[str, ...] = ("agent", "server")

# -- text -----------------------------------------------------------------------------


def check_text(value: str, what: str, *, element_text: bool = False) -> str:
    """``value`` if XML 1.0 can carry it unchanged, else DocumentError naming ``what``.

    Attribute values carry tab, newline and CR (escaped); element text cannot keep a CR
    (XML parsers turn it into a newline), so ``element_text`` refuses it too.
    """
    bad = _XML_BAD.search(value) or (element_text and "\r" in value)
    if bad:
        raise DocumentError(f"{what} contains a character XML cannot carry")
    return value


def clean_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Free text made sendable: line ends normalised to ``\\n``, characters XML cannot carry
    replaced by ``?``, and cut to ``limit`` characters keeping the tail (where the error of a
    command's output is). Idempotent; a clean text is returned unchanged."""
    text = _XML_BAD.sub("?", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def parse_guid(raw: str | None, what: str) -> str:
    """A GUID in any of the usual spellings (``{...}``, upper case) -> lower case, no braces."""
    if raw is None or raw == "":
        raise DocumentError(f"missing {what}")
    text = raw.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if len(text) != 36:
        raise DocumentError(f"{what} {raw[:80]!r} is not a GUID")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise DocumentError(f"{what} {raw[:80]!r} is not a GUID") from None


def parse_int(raw: str, what: str, *, signed: bool = False, minimum: int = 0) -> int:
    """A decimal integer of at most 19 digits within [minimum, MAX_INT] (or signed)."""
    body = raw[1:] if signed and raw.startswith("-") else raw
    if not body.isascii() or not body.isdigit() or len(body) > _MAX_DIGITS:
        raise DocumentError(f"{what} {raw[:40]!r} is not an integer")
    value = int(raw)
    if abs(value) > MAX_INT or (not signed and value < minimum):
        raise DocumentError(f"{what} {raw[:40]!r} is out of range")
    return value


def parse_bool(raw: str, what: str) -> bool:
    text = raw.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise DocumentError(f"{what} {raw[:40]!r} is not a boolean (true/false)")


MAX_SAME_CONTENT = 16  # renewals a task lists (the newest ones)


# -- the Agent Settings ----------------------------------------------------------------


@dataclass(frozen=True)
class AgentSettings:
    """The Agent Settings policy; the defaults are the server's defaults."""

    multicast_enabled: bool = True
    min_multicast_size: int = 1024 * 1024
    max_sessions_per_subnet: int = 2
    speed_test_codebases: bool = True
    max_trying_time_mins: int = 0  # 0 = off, as in the seed
    check_in_interval_mins: int = 60
    multicast_hold_secs: int = 2  # a new session holds its first data this long (0..60)
    min_session_kbps: int = 64  # a slower multicast session is left for HTTP; 0 = no floor
    peer_cache_hours: int = 24  # a package is offered to the subnet this long; 0 = never
    peer_cache_max_mb: int = 2048  # the peer cache's disk cap (least recently used go first)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, str]) -> AgentSettings:
        """From wire attributes; a missing one takes its default, unknown ones are ignored."""
        values: dict[str, bool | int] = {}
        for s in SETTINGS:
            raw = attrs.get(s.name)
            if raw is not None and raw != "":
                values[s.attr] = s.parse(raw)
        return cls(**values)  # type: ignore[arg-type]

    def to_attrs(self) -> dict[str, str]:
        """The wire attributes, sorted by name."""
        return {s.name: s.text(getattr(self, s.attr)) for s in sorted(SETTINGS, key=_by_name)}


@dataclass(frozen=True)
class Setting:
    """One Agent Setting: wire name, field of :class:`AgentSettings`, and valid values."""

    name: str
    attr: str
    minimum: int | None = None  # an integer setting; None: a boolean
    maximum: int = MAX_INT  # an integer setting's largest value
    true_text: str = "true"  # how a boolean is written on the wire
    false_text: str = "false"

    def parse(self, raw: str) -> bool | int:
        if self.minimum is None:
            return parse_bool(raw, self.name)
        value = parse_int(raw.strip(), self.name)
        if value < self.minimum:
            raise DocumentError(f"{self.name} must be at least {self.minimum}, not {value}")
        if value > self.maximum:
            raise DocumentError(f"{self.name} must be at most {self.maximum}, not {value}")
        return value

    def text(self, value: bool | int) -> str:
        if self.minimum is None:
            return self.true_text if value else self.false_text
        return str(int(value))


def _by_name(s: Setting) -> str:
    return s.name


_WEEK_MINS = 7 * 24 * 60
# every setting's type (boolean, or an integer with its range): the server refuses any other
# value when it is set, the agent when it reads a policy
SETTINGS: tuple[Setting, ...] = (
    Setting("multicastEnabled", "multicast_enabled"),
    Setting("minMulticastSize", "min_multicast_size", minimum=0),
    Setting("maxSessionsPerSubnet", "max_sessions_per_subnet", minimum=1, maximum=1024),
    Setting("SpeedTestCodebases", "speed_test_codebases", true_text="1", false_text="0"),
    Setting("MaxAgentDownloadTryingTimeMins", "max_trying_time_mins", 0, _WEEK_MINS),
    Setting("checkInIntervalMins", "check_in_interval_mins", minimum=1, maximum=_WEEK_MINS),
    Setting("multicastHoldSecs", "multicast_hold_secs", minimum=0, maximum=60),
    Setting("minSessionKBps", "min_session_kbps", minimum=0, maximum=100_000_000),
    Setting("peerCacheHours", "peer_cache_hours", minimum=0, maximum=24 * 366),
    Setting("peerCacheMaxMB", "peer_cache_max_mb", minimum=0, maximum=1 << 30),
)
assert {s.attr for s in SETTINGS} == {f.name for f in fields(AgentSettings)}
_SETTING_BY_NAME = {s.name: s for s in SETTINGS}

# wire name -> default wire text
SETTING_DEFAULTS: dict[str, str] = AgentSettings().to_attrs()


def parse_setting(name: str, raw: str) -> str:
    """The canonical wire text of Agent Setting ``name`` given as ``raw``; DocumentError for
    an unknown name or a value the agent would refuse."""
    setting = _SETTING_BY_NAME.get(name)
    if setting is None:
        raise DocumentError(f"unknown setting {name!r}; known: {', '.join(SETTING_DEFAULTS)}")
    return setting.text(setting.parse(raw))


# -- reading and writing XML ------------------------------------------------------------


def _xml(root: Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + bytes(tostring(root, encoding="utf-8"))


def _parse(data: bytes, tag: str, limit: int = MAX_DOC_BYTES) -> Element:
    if len(data) > limit:
        raise DocumentTooLarge(f"<{tag}> document is larger than {limit} bytes")
    try:
        root = SafeET.fromstring(data)
    except Exception:  # defusedxml raises several types for hostile documents
        raise DocumentError(
            f"<{tag}> document is not well-formed XML (or uses forbidden constructs)"
        ) from None
    if not isinstance(root, Element) or root.tag != tag:
        raise DocumentError(f"expected a <{tag}> document, got <{str(root.tag)[:40]}>")
    return root


def _int(el: Element, name: str, default: int | None = None, *, signed: bool = False) -> int:
    raw = el.get(name)
    if raw is None or raw == "":
        if default is None:
            raise DocumentError(f"<{el.tag}> lacks attribute {name!r}")
        return default
    return parse_int(raw, f"<{el.tag}> attribute {name}", signed=signed)


def _attrs(what: str, **attrs: str) -> dict[str, str]:
    for name, value in attrs.items():
        check_text(value, f"<{what}> attribute {name}")
    return attrs


# -- policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyTask:
    """One ``<Task>`` of a policy.

    ``package_*`` describe the newest version of the package, informative only; when the
    server knows no version, ``package_hash`` is ``""`` and the other three are ``""``/0.
    ``command`` has no surrounding whitespace (the parser strips it). ``credentials`` names
    the user the command runs as (see PROTOCOL.md). ``signature`` is the server's Ed25519
    signature of the task for one computer (:mod:`mcast.task_sig`), ``b""`` when the
    ``<Signature>`` element is absent or not hex.
    """

    task_id: str
    package_id: str
    package_name: str
    package_hash: str
    package_size: int
    package_version: int
    command: str
    schedule: str  # the raw ``when`` text; see mcast.schedule
    credentials: str  # a reference; secrets never travel in a policy
    run_from: str  # one of RUN_FROM
    signature: bytes = b""  # see mcast.task_sig
    # earlier versions (hashes) with exactly this content, whose snapshots were only re-signed
    # with a new validity (``mcast-ns package renew``): a job of one of them is this job
    same_content_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    guid: str
    settings: AgentSettings
    tasks: tuple[PolicyTask, ...]
    # the key of the discovery group of the computer's site (``<Multicast discoveryKey>``):
    # every agent of the site tags and checks announces, solicits and claims with it
    discovery_key: bytes | None = None


def policy_xml(policy: Policy) -> bytes:
    root = Element("ClientPolicies", _attrs("ClientPolicies", guid=policy.guid))
    SubElement(root, "AgentSettings", policy.settings.to_attrs())
    tasks_el = SubElement(root, "Tasks")
    for t in policy.tasks:
        attrs = _attrs("Task", id=t.task_id, packageId=t.package_id)
        if t.package_hash:
            attrs.update(
                _attrs(
                    "Task",
                    packageName=t.package_name,
                    packageHash=t.package_hash,
                    packageSize=str(t.package_size),
                    packageVersion=str(t.package_version),
                )
            )
            if t.same_content_as:
                attrs["sameContentAs"] = " ".join(t.same_content_as)
        task_el = SubElement(tasks_el, "Task", attrs)
        SubElement(task_el, "CommandLine").text = check_text(
            t.command, "<CommandLine>", element_text=True
        )
        SubElement(task_el, "Schedule", _attrs("Schedule", when=t.schedule))
        SubElement(task_el, "Credentials", _attrs("Credentials", ref=t.credentials))
        SubElement(task_el, "Execution", _attrs("Execution", runFrom=t.run_from))
        if t.signature:
            SubElement(task_el, "Signature").text = t.signature.hex()
    if policy.discovery_key:
        SubElement(root, "Multicast", {"discoveryKey": policy.discovery_key.hex()})
    return _xml(root)


def _hex_key(root: Element, name: str) -> bytes | None:
    """The key in attribute ``name`` of ``root``'s ``<Multicast>``, if any."""
    mc = root.find("Multicast")
    raw = mc.get(name) if mc is not None else None
    if not raw:
        return None
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise DocumentError(f"<Multicast> {name} is not hex") from None


def _policy_task(t: Element) -> PolicyTask:
    task_id, package_id = t.get("id") or "", t.get("packageId") or ""
    if not task_id or not package_id:
        raise DocumentError("<Task> lacks id or packageId")
    package_hash = (t.get("packageHash") or "").lower()
    if package_hash and not _HASH_RE.fullmatch(package_hash):
        raise DocumentError(f"<Task> packageHash {package_hash[:80]!r} is not a hash")
    same = tuple((t.get("sameContentAs") or "").lower().split())
    if len(same) > MAX_SAME_CONTENT or not all(_HASH_RE.fullmatch(h) for h in same):
        raise DocumentError("<Task> sameContentAs is not a list of package hashes")
    sched, cred, exe = t.find("Schedule"), t.find("Credentials"), t.find("Execution")
    run_from = (exe.get("runFrom") if exe is not None else None) or "agent"
    if run_from not in RUN_FROM:
        raise DocumentError(f"<Execution> runFrom {run_from[:40]!r} is not one of {RUN_FROM}")
    return PolicyTask(
        task_id=task_id.lower(),
        package_id=package_id.lower(),
        package_name=t.get("packageName") or "",
        package_hash=package_hash,
        package_size=_int(t, "packageSize", 0),
        package_version=_int(t, "packageVersion", 0),
        command=(t.findtext("CommandLine") or "").strip(),
        schedule=(sched.get("when") if sched is not None else None) or "asap",
        credentials=(cred.get("ref") if cred is not None else None) or "system",
        run_from=run_from,
        signature=_signature(t.findtext("Signature") or ""),
        same_content_as=same,
    )


def _signature(raw: str) -> bytes:
    """The bytes of a ``<Signature>`` text; ``b""`` (unsigned) when it is not hex, so that
    one bad task is refused on its own instead of making the whole policy malformed."""
    try:
        return bytes.fromhex(raw.strip())
    except ValueError:
        return b""


def parse_policy(data: bytes) -> Policy:
    root = _parse(data, "ClientPolicies")
    s = root.find("AgentSettings")
    settings = AgentSettings.from_attrs(s.attrib) if s is not None else AgentSettings()
    tasks_el = root.find("Tasks")
    tasks = [_policy_task(t) for t in (tasks_el.findall("Task") if tasks_el is not None else [])]
    return Policy(root.get("guid") or "", settings, tuple(tasks), _hex_key(root, "discoveryKey"))


# -- package info ---------------------------------------------------------------------


@dataclass(frozen=True)
class Codebase:
    url: str  # http://HOST:PORT/pkg/HASH/
    site: str  # the site of the package server ("" for the Notification Server's own)


@dataclass(frozen=True)
class PackageInfo:
    package_id: str
    name: str
    version: int
    hash: str  # 64 lower-case hex digits
    size: int
    block_size: int
    site: str  # the computer's site, "" when its address is in no site
    snapshot_url: str
    codebases: tuple[Codebase, ...]
    session_key: bytes | None  # the HMAC key of multicast datagram tags

    @property
    def codebase_urls(self) -> list[str]:
        return [c.url for c in self.codebases]


def package_info_xml(info: PackageInfo) -> bytes:
    root = Element(
        "PackageInfo",
        _attrs(
            "PackageInfo",
            packageId=info.package_id,
            name=info.name,
            version=str(info.version),
            hash=info.hash,
            size=str(info.size),
            blockSize=str(info.block_size),
            site=info.site,
        ),
    )
    SubElement(root, "Snapshot", _attrs("Snapshot", url=info.snapshot_url))
    cbs = SubElement(root, "Codebases")
    for cb in info.codebases:
        SubElement(cbs, "Codebase", _attrs("Codebase", url=cb.url, site=cb.site))
    if info.session_key:
        SubElement(root, "Multicast", {"sessionKey": info.session_key.hex()})
    return _xml(root)


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
        Codebase(url, c.get("site") or "")
        for c in (cbs.findall("Codebase") if cbs is not None else [])
        if (url := c.get("url"))
    )
    key = _hex_key(root, "sessionKey")
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


# -- status events --------------------------------------------------------------------


@dataclass(frozen=True)
class StatusEvent:
    """One status event of one (computer, task); ``event_id`` is reused for every retry."""

    event_id: str
    computer: str
    task_id: str
    state: str  # one of EVENT_STATES
    exit_code: int | None
    bytes_multicast: int
    bytes_http: int
    message: str
    agent_time: float  # the agent's clock, seconds since the epoch


def event_xml(ev: StatusEvent) -> bytes:
    """The body of ``PostEvent.aspx``; the message is cleaned (:func:`clean_message`)."""
    attrs = _attrs(
        "Event",
        id=ev.event_id,
        computer=ev.computer,
        task=ev.task_id,
        state=ev.state,
        bytesMulticast=str(ev.bytes_multicast),
        bytesHttp=str(ev.bytes_http),
        time=repr(ev.agent_time),
    )
    if ev.exit_code is not None:
        attrs["exitCode"] = str(ev.exit_code)
    el = Element("Event", attrs)
    el.text = clean_message(ev.message)
    return _xml(el)


def parse_event(body: bytes) -> StatusEvent:
    """Parse and validate a posted ``<Event>``: GUIDs normalised, state known, time finite
    and not negative, integers in range, message within MAX_MESSAGE_CHARS."""
    if len(body) > MAX_EVENT_BYTES:
        raise DocumentTooLarge(f"event body is larger than {MAX_EVENT_BYTES} bytes")
    if not body.strip():
        raise DocumentError("empty event body")
    root = _parse(body, "Event", MAX_EVENT_BYTES)
    if len(root):
        raise DocumentError("<Event> must not have child elements")
    state = root.get("state")
    if state not in EVENT_STATES:
        raise DocumentError(f"<Event> state must be one of {', '.join(EVENT_STATES)}")
    raw_time = root.get("time")
    try:
        agent_time = float(raw_time) if raw_time is not None else -1.0
    except ValueError:
        agent_time = -1.0
    if not math.isfinite(agent_time) or agent_time < 0:
        raise DocumentError("<Event> attribute 'time' must be seconds since the epoch")
    message = root.text or ""
    if len(message) > MAX_MESSAGE_CHARS:
        raise DocumentError(f"<Event> message is longer than {MAX_MESSAGE_CHARS} characters")
    exit_raw = root.get("exitCode")
    return StatusEvent(
        event_id=parse_guid(root.get("id"), "event id"),
        computer=parse_guid(root.get("computer"), "computer"),
        task_id=parse_guid(root.get("task"), "task"),
        state=state,
        exit_code=None if exit_raw is None else _int(root, "exitCode", signed=True),
        bytes_multicast=_int(root, "bytesMulticast", 0),
        bytes_http=_int(root, "bytesHttp", 0),
        message=message,
        agent_time=agent_time,
    )


@dataclass(frozen=True)
class EventAck:
    """The server's answer to an event, sent only once the event is on disk."""

    event_id: str
    stored: bool  # False: an identical event with this id was stored before (a retry)

    @property
    def result(self) -> str:
        return "stored" if self.stored else "duplicate"


def event_ack_xml(ack: EventAck) -> bytes:
    return _xml(Element("EventAck", _attrs("EventAck", id=ack.event_id, result=ack.result)))


def parse_ack(data: bytes) -> EventAck:
    root = _parse(data, "EventAck")
    result = root.get("result") or ""
    if result not in ("stored", "duplicate"):
        raise DocumentError(f"<EventAck> result {result[:40]!r} is not stored/duplicate")
    return EventAck((root.get("id") or "").lower(), result == "stored")


# -- the error document ---------------------------------------------------------------


def error_xml(status: int, message: str) -> bytes:
    """``<Error status="4xx">message</Error>``; the message is cleaned."""
    el = Element("Error", {"status": str(status)})
    el.text = clean_message(message)
    return _xml(el)


def error_text(data: bytes) -> str:
    """The message of an ``<Error>`` document, or the start of whatever the body is."""
    try:
        root = SafeET.fromstring(data[:MAX_EVENT_BYTES])
        if isinstance(root, Element) and root.tag == "Error":
            return (root.text or "").strip()
    except Exception:  # not an error document: show the start of the body instead
        pass
    return data[:200].decode("utf-8", "replace").strip()
