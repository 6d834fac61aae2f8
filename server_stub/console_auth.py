"""Who is the administrator of the web console: the admin token, the session cookie, CSRF.

The console's pages are read-only; its actions (POST) need the administrator. The admin
token is 32 random bytes in ``DATA/console.token`` (hex, mode 0600), made by ``mcast-ns admin
token``; whoever can read it administers the server anyway. The login form takes the token
and answers with a session cookie: ``EXPIRY.NONCE.MAC``, an HMAC-SHA-256 under a key derived
from the token, sent ``HttpOnly; SameSite=Strict; Path=/console`` (and ``Secure`` over
HTTPS). A new token (``mcast-ns admin token --new``) ends every session. Each action form
carries a CSRF token, the HMAC of the session cookie under another derived key, which a page
of another origin cannot read or compute.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

from mcast.fleet_auth import new_secret, parse_secret, write_secret

TOKEN_NAME = "console.token"
COOKIE = "mcast_console"
SESSION_S = 8 * 3600


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_NAME


def read_token(data_dir: Path) -> bytes | None:
    """The admin token, None when there is none (or the file is not one)."""
    try:
        return parse_secret(token_path(data_dir).read_text())
    except (OSError, ValueError):
        return None


def admin_token(data_dir: Path, *, new: bool = False) -> bytes:
    """The admin token, made (and written 0600) when missing or when ``new``."""
    found = None if new else read_token(data_dir)
    if found is not None:
        return found
    token = new_secret()
    write_secret(token_path(data_dir), token)
    return token


def _key(token: bytes, purpose: bytes) -> bytes:
    return hmac.new(token, b"mcast-console\0" + purpose, hashlib.sha256).digest()


def _mac(token: bytes, purpose: bytes, text: str) -> str:
    return hmac.new(_key(token, purpose), text.encode(), hashlib.sha256).hexdigest()


def check_login(token: bytes | None, typed: str) -> bool:
    """Whether ``typed`` is the admin token (compared in constant time)."""
    if token is None:
        return False
    try:
        given = parse_secret(typed)
    except ValueError:
        return False
    return hmac.compare_digest(given, token)


def new_session(token: bytes, now: float | None = None) -> str:
    """A session cookie's value, valid for :data:`SESSION_S`."""
    expiry = int((time.time() if now is None else now) + SESSION_S)
    body = f"{expiry}.{secrets.token_hex(16)}"
    return f"{body}.{_mac(token, b'session', body)}"


def valid_session(token: bytes | None, value: str | None, now: float | None = None) -> bool:
    if token is None or not value or value.count(".") != 2:
        return False
    body, _, mac = value.rpartition(".")
    if not hmac.compare_digest(mac.encode(), _mac(token, b"session", body).encode()):
        return False
    expiry = body.split(".", 1)[0]
    return expiry.isdigit() and int(expiry) > (time.time() if now is None else now)


def csrf_token(token: bytes, session: str) -> str:
    return _mac(token, b"csrf", session)


def valid_csrf(token: bytes, session: str, given: str) -> bool:
    return hmac.compare_digest(given.encode(), csrf_token(token, session).encode())
