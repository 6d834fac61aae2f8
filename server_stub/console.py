"""The web console of the Notification Server: read-only HTML pages under ``/console``.

This module owns the console's routes, who may view them and how they are rendered;
what they show comes from :mod:`.console_queries`. Pages are rendered on the server with
Jinja2 (autoescaping on: an agent's output tail is text, never markup), need no JavaScript,
and reload themselves every :data:`REFRESH_S` seconds (``<meta http-equiv="refresh">``).

Pages: ``/console`` (failed jobs first, then tasks with how many computers are in each state,
packages with the expiry of their signed snapshot, computers), ``/console/computers/GUID``
(that computer's jobs and its event history: state, exit code, output tail, time),
``/console/sites`` (sites, subnets, package servers) and ``/console/sessions`` (multicast
sessions agents reported within the last hour and the jobs downloading now).

Who may view: the console changes nothing, but it shows the output of commands and the
fleet's layout, so it answers only clients whose address is in ``allow`` (by default the
loopback addresses: an administrator on the server, or through an SSH tunnel); anyone else
gets a 403. ``mcast-ns serve --console-allow CIDR`` widens it. Every page is sent with a
Content-Security-Policy that allows no script at all and no framing.

Who may act: viewing needs no login, but the one action, approving a computer's waiting
enrolment (``POST /console/computers/GUID/approve``), needs the administrator: logged in at
``/console/login`` with the admin token (``mcast-ns admin token``), which sets a signed,
HttpOnly, SameSite=Strict session cookie, and the CSRF token of the form
(:mod:`.console_auth`). Forms are plain HTML forms; they need no script either.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mcast.fleet_auth import fingerprint

from . import console_auth as auth
from . import console_queries as q
from .store import StoreError

REFRESH_S = 10
DEFAULT_ALLOW: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FORM_BYTES = 4096


def when(ts: float | None) -> str:
    """A time as UTC, to the second ("" for none)."""
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def size(n: int) -> str:
    """A byte count for people: 1536 -> "1.5 KiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("server_stub", "templates"),
        autoescape=True,  # every value is text: a message with <script> shows as text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["size"] = size
    env.globals["refresh_s"] = REFRESH_S
    return env


ENV = _environment()


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _allowed(request: Request) -> bool:
    allow: tuple[Network, ...] = request.app.state.console_allow
    host = request.client.host if request.client else ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in allow)


def _session(request: Request) -> tuple[bytes, str] | None:
    """(admin token, session cookie) when the request comes from the logged-in admin."""
    token = auth.read_token(request.app.state.server.data_dir)
    value = request.cookies.get(auth.COOKIE)
    if token is None or value is None or not auth.valid_session(token, value):
        return None
    return token, value


def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    session = _session(request)
    csrf = auth.csrf_token(*session) if session else ""
    body = ENV.get_template(template).render(
        now=time.time(), admin=session is not None, csrf=csrf, **context
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _message(request: Request, status: int, title: str, message: str) -> Response:
    return _page(request, "message.html", status, title=title, message=message)


def _refused(request: Request) -> Response:
    host = request.client.host if request.client else "an unknown address"
    return _message(
        request,
        403,
        "Not allowed",
        f"The console answers only the addresses mcast-ns serve --console-allow "
        f"names; {host} is not one of them.",
    )


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (at most MAX_FORM_BYTES), first values."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


async def overview(request: Request) -> Response:
    if not _allowed(request):
        return _refused(request)
    srv = request.app.state.server
    store = srv.ns()
    tasks = await srv.db(q.tasks, store)
    computers = await srv.db(store.computers)
    return _page(
        request,
        "overview.html",
        title="Overview",
        failures=await srv.db(q.failures, store),
        failing_computers=await srv.db(q.computers_with_failures, store),
        tasks=tasks,
        columns=q.counts_columns(tasks),
        packages=await srv.db(q.packages, store, srv.data_dir),
        computers=[(g, n, s) for g, n, s, _secret in computers],
        waiting=[(g, fingerprint(bytes.fromhex(k))) for g, _n, s, k in computers if s == "pending"],
        queue=await srv.db(store.queue_counts),
    )


async def computer(request: Request) -> Response:
    if not _allowed(request):
        return _refused(request)
    srv = request.app.state.server
    guid = request.path_params["guid"].strip("{}").lower()
    view = await srv.db(q.computer, srv.ns(), guid)
    if view is None:
        return _message(request, 404, "Unknown computer",
                        f"No computer {guid} is known to this server.")  # fmt: skip
    return _page(request, "computer.html", title=f"Computer {view.name or view.guid}", c=view)


async def sites(request: Request) -> Response:
    if not _allowed(request):
        return _refused(request)
    srv = request.app.state.server
    store = srv.ns()
    settings = await srv.db(store.settings)
    return _page(
        request,
        "sites.html",
        title="Sites",
        sites=await srv.db(q.sites, store),
        server_site=settings.get("serverSite", ""),
    )


async def sessions(request: Request) -> Response:
    if not _allowed(request):
        return _refused(request)
    srv = request.app.state.server
    view = await srv.db(q.sessions, srv.ns())
    return _page(request, "sessions.html", title="Multicast sessions", v=view)


async def login_form(request: Request) -> Response:
    if not _allowed(request):
        return _refused(request)
    srv = request.app.state.server
    return _page(
        request, "login.html", title="Log in", has_token=auth.read_token(srv.data_dir) is not None
    )


async def login(request: Request) -> Response:
    if not _allowed(request):
        return _refused(request)
    token = auth.read_token(request.app.state.server.data_dir)
    form = await _form(request)
    if token is None or not auth.check_login(token, form.get("token", "")):
        return _message(request, 403, "Log in refused", "That is not the admin token.")
    resp = RedirectResponse("/console", status_code=303, headers=HEADERS)
    resp.set_cookie(
        auth.COOKIE,
        auth.new_session(token),
        max_age=auth.SESSION_S,
        path="/console",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return resp


async def _admin_form(request: Request) -> Response | None:
    """A refusal, or None when the logged-in admin posted a form with its CSRF token."""
    if not _allowed(request):
        return _refused(request)
    session = _session(request)
    if session is None:
        return _message(request, 403, "Not logged in", "Log in as the administrator first.")
    form = await _form(request)
    if not auth.valid_csrf(*session, form.get("csrf", "")):
        return _message(request, 403, "Refused", "The form's CSRF token is missing or wrong.")
    return None


async def logout(request: Request) -> Response:
    refused = await _admin_form(request)
    if refused is not None:
        return refused
    resp = RedirectResponse("/console", status_code=303, headers=HEADERS)
    resp.delete_cookie(auth.COOKIE, path="/console", httponly=True, samesite="strict")
    return resp


async def approve(request: Request) -> Response:
    refused = await _admin_form(request)
    if refused is not None:
        return refused
    srv = request.app.state.server
    guid = request.path_params["guid"].strip("{}").lower()
    try:
        await srv.db(srv.ns().approve, guid)
    except StoreError as exc:
        return _message(request, 409, "Not approved", str(exc))
    return RedirectResponse("/console", status_code=303, headers=HEADERS)


def routes() -> list[Route]:
    """The console's routes, for a Notification Server's app."""
    return [
        Route("/console", overview, methods=["GET"]),
        Route("/console/", overview, methods=["GET"]),
        Route("/console/computers/{guid}", computer, methods=["GET"]),
        Route("/console/computers/{guid}/approve", approve, methods=["POST"]),
        Route("/console/sites", sites, methods=["GET"]),
        Route("/console/sessions", sessions, methods=["GET"]),
        Route("/console/login", login_form, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", logout, methods=["POST"]),
    ]
