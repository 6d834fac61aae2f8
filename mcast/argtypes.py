"""Argument parsing the command lines share: bad arguments refused when given, in one line.

This module owns :class:`Parser`, an ``argparse.ArgumentParser`` whose errors raise
:class:`mcast.errors.UsageError` (exit 2, one line, no usage dump) instead of exiting, and the
``type=`` functions of ``mcast``, ``mcast-agent`` and ``mcast-ns``. A type function refuses a
bad value with ``argparse.ArgumentTypeError`` (argparse names the option: a usage error,
exit 2); a file that cannot be read raises :class:`StorageError` (exit 4) and a key that is
not a key :class:`TrustError` (exit 3), which argparse lets through to the command line's one
``except McastError``.

The messages have one style: one line that names the bad value first, ``'x' is not an IPv4
address``, ``'-1' must be at least 0``; a file is named by its path, ``cannot read trust key
PATH: REASON``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import McastError, StorageError, TrustError, UsageError
from .scope import SAFE_GROUPS
from .snapshot import load_trust_key

if TYPE_CHECKING:
    from .discovery import Rank


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a one-line :class:`UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def one_line(exc: McastError) -> str:
    """The message of an error as one line (for ``prog: error: message`` on stderr)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def bad(message: str) -> NoReturn:
    """Refuse the value of an argument (argparse prefixes the option's name: exit 2)."""
    raise argparse.ArgumentTypeError(message)


# ---------------------------------------------------------------------------------------
# numbers


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        bad(f"{text!r} is not an integer")


def at_least(low: int) -> Callable[[str], int]:
    """The type of an integer that is ``low`` or more."""

    def check(text: str) -> int:
        value = integer(text)
        if value < low:
            bad(f"{text!r} must be at least {low}")
        return value

    return check


def _finite(text: str, unit: str, *, zero_ok: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        bad(f"{text!r} is not a number of {unit}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bad(f"{text!r} must be a finite number of {unit}, 0 or more" if zero_ok
            else f"{text!r} must be a finite number of {unit} greater than 0")  # fmt: skip
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds greater than 0."""
    return _finite(text, "seconds")


def non_negative_seconds(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    return _finite(text, "seconds", zero_ok=True)


def positive_days(text: str) -> float:
    """A finite number of days greater than 0."""
    return _finite(text, "days")


# ---------------------------------------------------------------------------------------
# addresses


def ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        bad(f"{text!r} is not an IPv4 address")


def interface(text: str) -> str:
    """An IPv4 interface address, or ``auto`` (the interface that routes to the server,
    resolved by the command once it knows the server: :func:`mcast.udp.resolve_interface`)."""
    if text.strip().lower() == "auto":
        return "auto"
    return ipv4(text)


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        bad(f"{text!r} is not an IP address")


def port(text: str) -> int:
    """A UDP or TCP port to send to, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 65536:
        bad(f"{text!r} is not a port (1..65535)")
    return value


def group(text: str) -> str:
    """An IPv4 multicast group the safety rules allow (239.255.0.0/16)."""
    address = ipv4(text)
    if ipaddress.IPv4Address(address) not in SAFE_GROUPS:
        bad(f"group {text!r} is outside {SAFE_GROUPS} (administratively scoped)")
    return address


def group_port(text: str) -> tuple[str, int]:
    """``GROUP:PORT`` of a multicast group the safety rules allow (239.255.0.0/16)."""
    address, sep, number = text.rpartition(":")
    if not sep:
        bad(f"{text!r} is not GROUP:PORT")
    return group(address), port(number)


def host_port(text: str) -> str:
    """``HOST:PORT`` to listen on (port 0: the kernel picks one)."""
    host, sep, number = text.rpartition(":")
    if not sep or not host or not number.isascii() or not number.isdigit() or int(number) > 65535:
        bad(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:0")
    return text


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def hostname(text: str) -> str:
    """A DNS name or an IP address a certificate can name (returned in lower case)."""
    value = text.strip().lower()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        bad(f"{text!r} is not a host name or IP address")
    return value


def subnet(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        bad(f"{text!r} is not a subnet in CIDR form")


def http_url(text: str) -> str:
    """An http(s) URL with a host; returned without a trailing slash."""
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        ok = False
    if not ok:
        bad(f"{text!r} is not an http(s) URL")
    return text.rstrip("/")


# ---------------------------------------------------------------------------------------
# the texts of the fleet's documents. mcast.fleet and mcast.schedule are imported by the
# types that use them: the mcast command line takes none of these and starts sooner without.


def guid(text: str) -> str:
    from .fleet import DocumentError, parse_guid

    try:
        return parse_guid(text, "GUID")
    except DocumentError as exc:
        bad(str(exc))


def guid_list(text: str) -> list[str]:
    """Comma-separated GUIDs, at least one."""
    items = [guid(t) for t in text.split(",") if t.strip()]
    if not items:
        bad("expected at least one computer GUID")
    return items


def name(text: str) -> str:
    """A non-empty name that an XML attribute can carry."""
    from .fleet import DocumentError, check_text

    if not text.strip():
        bad("must not be empty")
    try:
        return check_text(text, "the name")
    except DocumentError as exc:
        bad(str(exc))


def command_line(text: str) -> str:
    """A non-empty command line that the XML of a policy can carry unchanged."""
    from .fleet import DocumentError, check_text

    if not text.strip():
        bad("must not be empty")
    try:
        return check_text(text.strip(), "the command line", element_text=True)
    except DocumentError as exc:
        bad(str(exc))


def schedule(text: str) -> str:
    """A ``when`` text the agent can read (``mcast.schedule``), returned unchanged."""
    from .fleet import DocumentError, check_text
    from .schedule import ScheduleError, parse_schedule

    try:
        parse_schedule(check_text(text, "the schedule"))
    except (ScheduleError, DocumentError) as exc:
        bad(str(exc))
    return text


def rank(text: str) -> Rank:
    """What this machine weighs in a master election: package-server, wired, laptop or
    wireless (``mcast.discovery.Rank``)."""
    from .discovery import Rank  # imported here: only the agent's command line takes a rank

    key = text.strip().upper().replace("-", "_")
    if key not in Rank.__members__:
        names = ", ".join(r.name.lower().replace("_", "-") for r in reversed(Rank))
        bad(f"{text!r} is not a rank ({names})")
    return Rank[key]


# ---------------------------------------------------------------------------------------
# files


def read_file(path: Path, what: str) -> bytes:
    """The bytes of a file an argument names (else a file error, exit 4)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


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


def public_key(text: str) -> Ed25519PublicKey:
    """The Ed25519 public key of a PEM file (or the public half of a private key), for a
    command line that takes a key that is not a key as a bad argument (exit 2); a file that
    cannot be read is exit 4 as for :func:`trust_key`."""
    try:
        return load_trust_key(Path(text))
    except TrustError as exc:
        bad(str(exc))
