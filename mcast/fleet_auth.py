"""How an agent proves who it is to the Notification Server: one HMAC per request.

Shared by the agent, which signs, and the server, which verifies; it imports neither. Each
computer holds a secret of 32 random bytes that the server also stores (``mcast-ns computer
add`` makes one, or the agent makes one and asks to be enrolled). Every request carries::

    Authorization: MCAST-HMAC guid=G, ts=SECONDS, nonce=32HEX, sig=64HEX

``sig`` is HMAC-SHA-256 with the secret over the lines of :func:`string_to_sign`: the scheme,
the GUID, the timestamp, the nonce, the method, the path with its query exactly as sent, and
the SHA-256 of the body. The server accepts a timestamp within ``DEFAULT_SKEW_S`` of its own
clock and a (guid, nonce) only once in that window, so a recorded request cannot be replayed.

This module also owns the secret file (64 hex digits and a newline, mode 0600) and the
enrolment request document, the one request an agent signs with a secret the server does not
know yet.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, tostring

import defusedxml.ElementTree as SafeET
import httpx

from .errors import StorageError, TrustError
from .fleet import DocumentError, parse_guid

SCHEME = "MCAST-HMAC"
SECRET_BYTES = 32
DEFAULT_SKEW_S = 300.0  # the clocks of agent and server may differ this much
MAX_HEADER = 512
_PARAM = re.compile(r"\s*([a-z]+)=([^,\s]+)\s*")
_HEX = re.compile(r"[0-9a-f]+")


class AuthError(TrustError):
    """Credentials that are missing, malformed or do not verify; the message says which."""


@dataclass(frozen=True)
class Credentials:
    """The parsed ``Authorization`` header of one request (not yet verified)."""

    guid: str
    ts: int
    nonce: str
    sig: str


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def string_to_sign(guid: str, ts: int, nonce: str, method: str, target: str, body: bytes) -> bytes:
    """What the signature covers; ``target`` is the path and ``?query`` as sent."""
    lines = (SCHEME, guid, str(ts), nonce, method.upper(), target, body_hash(body))
    return "\n".join(lines).encode()


def signature(secret: bytes, guid: str, ts: int, nonce: str, method: str, target: str,
              body: bytes) -> str:  # fmt: skip
    message = string_to_sign(guid, ts, nonce, method, target, body)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def authorization(
    secret: bytes,
    guid: str,
    method: str,
    target: str,
    body: bytes,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> str:
    """The ``Authorization`` header value for one request (a fresh nonce unless given)."""
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    sig = signature(secret, guid, ts, nonce, method, target, body)
    return f"{SCHEME} guid={guid}, ts={ts}, nonce={nonce}, sig={sig}"


def parse_authorization(value: str | None) -> Credentials:
    """The credentials of an ``Authorization`` header, or AuthError saying what is wrong."""
    if not value:
        raise AuthError(f"no credentials: sign the request ({SCHEME})")
    if len(value) > MAX_HEADER:
        raise AuthError("Authorization header is too long")
    scheme, _, rest = value.partition(" ")
    if scheme != SCHEME:
        raise AuthError(f"unsupported authorization scheme {scheme[:20]!r} (expected {SCHEME})")
    params: dict[str, str] = {}
    for item in rest.split(","):
        m = _PARAM.fullmatch(item)
        if m is None or m.group(1) in params:
            raise AuthError("malformed Authorization header")
        params[m.group(1)] = m.group(2)
    if set(params) != {"guid", "ts", "nonce", "sig"}:
        raise AuthError("Authorization needs exactly guid, ts, nonce and sig")
    try:
        guid = parse_guid(params["guid"], "guid")
    except DocumentError as exc:
        raise AuthError(str(exc)) from None
    ts, nonce, sig = params["ts"], params["nonce"], params["sig"]
    if not (ts.isdigit() and len(ts) <= 12):
        raise AuthError("ts must be whole seconds since the epoch")
    if len(nonce) != 32 or not _HEX.fullmatch(nonce):
        raise AuthError("nonce must be 32 lower-case hex digits")
    if len(sig) != 64 or not _HEX.fullmatch(sig):
        raise AuthError("sig must be 64 lower-case hex digits")
    return Credentials(guid, int(ts), nonce, sig)


def check_skew(creds: Credentials, now: float, skew_s: float = DEFAULT_SKEW_S) -> None:
    if abs(creds.ts - now) > skew_s:
        raise AuthError(
            f"request time {creds.ts} is more than {skew_s:g} s from the server's clock "
            f"({int(now)}): check the agent's clock"
        )


def verify(secret: bytes, creds: Credentials, method: str, target: str, body: bytes) -> None:
    """Raise AuthError unless ``creds.sig`` signs this request under ``secret``."""
    expected = signature(secret, creds.guid, creds.ts, creds.nonce, method, target, body)
    if not hmac.compare_digest(expected, creds.sig):
        raise AuthError("bad signature")


class HmacAuth(httpx.Auth):
    """Signs every request of an httpx client that goes to ``origin`` (scheme://host:port of
    the server); a request to any other origin leaves without credentials."""

    requires_request_body = True

    def __init__(self, guid: str, secret: bytes, origin: str | None = None) -> None:
        self.guid = guid
        self.secret = secret
        self.origin = _origin(origin) if origin else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.origin is None or _origin(str(request.url)) == self.origin:
            target = request.url.raw_path.decode("ascii")
            request.headers["Authorization"] = authorization(
                self.secret, self.guid, request.method, target, request.content
            )
        yield request


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


# -- the secret and its file --------------------------------------------------------------


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def fingerprint(secret: bytes) -> str:
    """What an administrator compares before approving an enrolment (not the secret)."""
    return hashlib.sha256(b"mcast-fingerprint\n" + secret).hexdigest()[:16]


def parse_secret(text: str) -> bytes:
    """A secret from its text (64 hex digits), or ValueError."""
    text = text.strip().lower()
    if len(text) != 2 * SECRET_BYTES or not _HEX.fullmatch(text):
        raise ValueError(f"a secret is {2 * SECRET_BYTES} hex digits")
    return bytes.fromhex(text)


def load_secret(path: Path) -> bytes:
    """The secret in ``path``: missing or unreadable exit 4, not a secret exit 3."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    try:
        return parse_secret(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrustError(f"secret file {path} is not a secret: {exc}") from None


def write_secret(path: Path, secret: bytes) -> None:
    """Write ``secret`` to ``path`` (replaced atomically), readable by its owner only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(secret.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write secret file {path}: {exc.strerror or exc}") from None


# -- the enrolment request ------------------------------------------------------------------


def enrolment_xml(guid: str, secret: bytes) -> bytes:
    doc: bytes = tostring(Element("Enrolment", computer=guid, secret=secret.hex()), "utf-8")
    return doc


def enrolment_state_xml(guid: str, state: str) -> bytes:
    """The server's answer to an enrolment request: ``pending`` or ``approved``."""
    doc: bytes = tostring(Element("Enrolment", computer=guid, state=state), "utf-8")
    return doc


def parse_enrolment(body: bytes) -> tuple[str, bytes]:
    """(guid, secret) of an enrolment request, or DocumentError."""
    try:
        root = SafeET.fromstring(body)
    except Exception as exc:  # defusedxml raises several kinds for hostile input
        raise DocumentError(f"enrolment is not well-formed XML: {exc.__class__.__name__}") from None
    if root.tag != "Enrolment":
        raise DocumentError("expected an <Enrolment> document")
    guid = parse_guid(root.get("computer"), "computer")
    try:
        return guid, parse_secret(root.get("secret") or "")
    except ValueError as exc:
        raise DocumentError(f"enrolment secret: {exc}") from None
