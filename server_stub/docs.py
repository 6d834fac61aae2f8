"""The server's side of the documents: validation of client input, and rows to documents.

The documents themselves (policy, package info, status event, acknowledgement, error) and
their limits are shared with the agent in :mod:`mcast.fleet`. This module owns what only the
server does with them: parsing query parameters and the posted event body into values whose
errors are safe to show the client (:class:`BadRequest`, carrying the 4xx to answer with),
and turning store rows into fleet documents. PROTOCOL.md is the prose form of both.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping

from mcast import fleet
from mcast.errors import UsageError
from mcast.fleet import (
    MAX_EVENT_BYTES,
    SETTING_DEFAULTS,
    AgentSettings,
    Codebase,
    DocumentError,
    DocumentTooLarge,
    EventAck,
    PackageInfo,
    Policy,
    PolicyTask,
    StatusEvent,
    error_xml,
    event_xml,
    parse_setting,
)

from .store import PackageRow, TaskRow

__all__ = [
    "MAX_EVENT_BYTES",
    "BadRequest",
    "Codebase",
    "error_xml",
    "event_ack_xml",
    "event_xml",
    "package_info_xml",
    "parse_event_untrusted",
    "parse_guid",
    "parse_hash",
    "parse_ip",
    "parse_nonneg_int",
    "policy_xml",
]

_HASH_RE = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger("server_stub.docs")


class BadRequest(UsageError, ValueError):
    """Client input is malformed; ``status`` is the 4xx to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- query parameters -----------------------------------------------------------------


def parse_guid(raw: str | None, what: str) -> str:
    """A GUID in any of the usual spellings ({...}, upper case) -> lower case, no braces."""
    if raw is None or raw == "":
        raise BadRequest(f"missing parameter {what!r}")
    try:
        return fleet.parse_guid(raw, what)
    except DocumentError as exc:
        raise BadRequest(str(exc)) from None


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


def parse_event_untrusted(body: bytes) -> StatusEvent:
    """Parse and validate a posted ``<Event>``; raises only BadRequest (413 when too large)."""
    try:
        return fleet.parse_event(body)
    except DocumentTooLarge as exc:
        raise BadRequest(str(exc), 413) from None
    except DocumentError as exc:
        raise BadRequest(str(exc)) from None


# -- store rows to documents ------------------------------------------------------------


def policy_task(
    task: TaskRow, package: PackageRow | None, same_content_as: tuple[str, ...] = ()
) -> PolicyTask:
    """The ``<Task>`` of a task row, with the newest version of its package if any, and the
    earlier versions that version only renews."""
    return PolicyTask(
        task_id=task.task_id,
        package_id=task.package_id,
        package_name=package.name if package else "",
        package_hash=package.hash if package else "",
        package_size=package.size if package else 0,
        package_version=package.version if package else 0,
        command=task.command,
        schedule=task.schedule,
        credentials=task.credentials,
        run_from=task.run_from,
        same_content_as=same_content_as if package else (),
    )


def agent_settings(stored: Mapping[str, str]) -> AgentSettings:
    """The Agent Settings of the stored settings (server-only keys ignored). A value stored
    before ``settings set`` checked values, and refused now, takes its default (logged)
    rather than making every policy unreadable."""
    good: dict[str, str] = {}
    for key, value in stored.items():
        if key in SETTING_DEFAULTS:
            try:
                if not isinstance(value, str):
                    raise DocumentError(f"{key} is stored as {type(value).__name__}, not text")
                good[key] = parse_setting(key, value)
            except DocumentError as exc:
                log.warning("stored setting ignored, its default is used: %s", exc)
    return AgentSettings.from_attrs(good)


def policy_xml(
    guid: str,
    settings: Mapping[str, str],
    tasks: list[PolicyTask],
    discovery_key: bytes | None = None,
) -> bytes:
    """The policy of computer ``guid``; ``settings`` as stored, ``discovery_key`` its site's."""
    return fleet.policy_xml(Policy(guid, agent_settings(settings), tuple(tasks), discovery_key))


def package_info_xml(
    package: PackageRow,
    snapshot_url: str,
    codebases: list[Codebase],
    computer_site: str | None,
    block_size: int,
) -> bytes:
    info = PackageInfo(
        package_id=package.package_id,
        name=package.name,
        version=package.version,
        hash=package.hash,
        size=package.size,
        block_size=block_size,
        site=computer_site or "",
        snapshot_url=snapshot_url,
        codebases=tuple(codebases),
        session_key=bytes.fromhex(package.session_key),
    )
    return fleet.package_info_xml(info)


def event_ack_xml(event_id: str, stored: bool) -> bytes:
    return fleet.event_ack_xml(EventAck(event_id, stored))
