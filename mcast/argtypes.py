"""Argument parsing the command lines share: bad arguments refused when given, in one line.

This module owns :class:`Parser`, an ``argparse.ArgumentParser`` whose errors raise
:class:`mcast.errors.UsageError` (exit 2, one line, no usage dump) instead of exiting, and the
``type=`` functions for values several command lines take. A type function refuses a bad
value with ``argparse.ArgumentTypeError`` (argparse names the option: a usage error, exit 2);
a file that cannot be read raises :class:`StorageError` (exit 4) and a key that is not a key
:class:`TrustError` (exit 3), which argparse lets through to the command line's one
``except McastError``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from .errors import McastError, StorageError, UsageError
from .fleet import DocumentError, check_text, load_trust_key, parse_guid
from .schedule import ScheduleError, parse_schedule
from .scope import SAFE_GROUPS


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a one-line :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def one_line(exc: McastError) -> str:
    """The message of an error as one line (for ``prog: message`` on stderr)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _bad(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(message)


def positive_seconds(text: str) -> float:
    """A finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        _bad(f"{text!r} is not a number of seconds")
    if not math.isfinite(value) or value <= 0:
        _bad(f"{text!r} must be a finite number of seconds greater than 0")
    return value


def ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        _bad(f"{text!r} is not an IPv4 address")


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        _bad(f"{text!r} is not an IP address")


def http_url(text: str) -> str:
    """An http(s) URL with a host; returned without a trailing slash."""
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        ok = False
    if not ok:
        _bad(f"{text!r} is not an http(s) URL")
    return text.rstrip("/")


def host_port(text: str) -> str:
    """``HOST:PORT`` to listen on (port 0: the kernel picks one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        _bad(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:0")
    return text


def group_port(text: str) -> tuple[str, int]:
    """``GROUP:PORT`` of a multicast group the safety rules allow (239.255.0.0/16)."""
    group, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        _bad(f"{text!r} is not GROUP:PORT")
    try:
        safe = ipaddress.ip_address(group) in SAFE_GROUPS
    except ValueError:
        safe = False
    if not safe:
        _bad(f"group {group!r} is not in {SAFE_GROUPS}")
    return group, int(port)


def guid(text: str) -> str:
    try:
        return parse_guid(text, "GUID")
    except DocumentError as exc:
        _bad(str(exc))


def guid_list(text: str) -> list[str]:
    """Comma-separated GUIDs, at least one."""
    items = [guid(t) for t in text.split(",") if t.strip()]
    if not items:
        _bad("expected at least one computer GUID")
    return items


def subnet(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        _bad(f"{text!r} is not a subnet in CIDR form")


def name(text: str) -> str:
    """A non-empty name that an XML attribute can carry."""
    if not text.strip():
        _bad("must not be empty")
    try:
        return check_text(text, "the name")
    except DocumentError as exc:
        _bad(str(exc))


def command_line(text: str) -> str:
    """A non-empty command line that the XML of a policy can carry unchanged."""
    if not text.strip():
        _bad("must not be empty")
    try:
        return check_text(text.strip(), "the command line", element_text=True)
    except DocumentError as exc:
        _bad(str(exc))


def schedule(text: str) -> str:
    """A ``when`` text the agent can read (``mcast.schedule``), returned unchanged."""
    try:
        parse_schedule(check_text(text, "the schedule"))
    except (ScheduleError, DocumentError) as exc:
        _bad(str(exc))
    return text


def existing_path(text: str) -> Path:
    """A file or directory that exists (else a file error, exit 4)."""
    path = Path(text)
    if not path.exists():
        raise StorageError(f"{text} does not exist")
    return path


def trust_key(text: str) -> Path:
    """A PEM file holding an Ed25519 public key: missing/unreadable exit 4, not a key exit 3."""
    path = Path(text)
    load_trust_key(path)
    return path
