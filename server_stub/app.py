"""The Starlette application: every HTTP endpoint of the Notification Server and package server.

This module owns routing, the mapping of client errors to 4xx XML answers, the package content
responses (a stored file by Starlette's FileResponse, which honours Range, If-Range and
multiple ranges; the content of a package of several files streamed in chunks, whole or one
byte range), and the
lifespan task that runs the status event processor. Business rules live in the store
(SQL), the repository (files on disk) and docs (XML); handlers only glue them.

Two modes: ``notification`` (all endpoints) and ``package-server`` (only ``/pkg/...``).
The agent endpoints of a Notification Server answer only signed requests (:mod:`.auth`) and
only about the caller: its own policy, package info of packages a task targets it with, its
own events. ``/pkg/...`` and ``/health`` are open: content is verified against the signed
snapshot by whoever downloads it, and package servers hold no computer secrets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from mcast.fleet import DocumentError
from mcast.fleet_auth import DEFAULT_SKEW_S, enrolment_state_xml, parse_enrolment
from mcast.snapshot import (
    Snapshot,
    SnapshotError,
    TrustStore,
    UnsafePath,
    load_private_key,
    safe_relpath,
)
from mcast.task_sig import sign_task

from . import console, docs, repo
from .auth import Guard, Refused, Secret
from .events import EventProcessor
from .ratelimit import DEFAULT_BURST, DEFAULT_RATE, TokenBuckets
from .replica import replicate
from .replica_gate import ReplicaGate
from .store import SERVER_SITE, Store, StoreError

log = logging.getLogger("server_stub")
XML = "application/xml"
Mode = Literal["notification", "package-server"]
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]
MAX_ENROLMENT_BYTES = 4096
MAX_PENDING_ENROLMENTS = 1000


def xml_error(status: int, message: str) -> Response:
    return Response(docs.error_xml(status, message), status_code=status, media_type=XML)


class Server:
    """State shared by the handlers: the data directory, the store, the mode."""

    def __init__(
        self,
        data_dir: Path,
        mode: Mode,
        site: str | None,
        public_url: str | None,
        upstream: str | None = None,
        trust: TrustStore | None = None,
        prestage_bps: float = 0.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.prestage_bps = prestage_bps  # the cap on what pre-staging reads from upstream
        self.prestaging: set[str] = set()  # hashes being pre-staged now
        self.tasks: anyio.abc.TaskGroup | None = None  # set while the app runs
        self.upstream = upstream
        self.trust = trust
        self.replicas = ReplicaGate()  # bounds what replication may cost
        self.mode = mode
        self.site = site
        self.public_url = public_url.rstrip("/") + "/" if public_url else None
        if not (self.data_dir / repo.KEY_NAME).exists() and mode == "notification":
            raise FileNotFoundError(f"{self.data_dir} is not initialised (run `mcast-ns init`)")
        self.store = Store(self.data_dir) if mode == "notification" else None
        # signs every task of a policy (mcast.task_sig): the key that signs snapshots
        self.signing_key = (
            load_private_key(self.data_dir / repo.KEY_NAME) if mode == "notification" else None
        )
        self.processor = EventProcessor(self.store) if self.store else None
        self.guard: Guard | None = None  # set by create_app for a Notification Server

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args))

    def base_url(self, request: Request) -> str:
        return self.public_url or str(request.base_url)

    async def snapshot(self, hash_hex: str) -> Snapshot | None:
        """The snapshot of a stored package; a package server replicates it on first use,
        within the bounds of :class:`ReplicaGate`."""
        snap = await self.db(_snapshot_of, self, hash_hex)
        if snap is not None or self.upstream is None or self.trust is None:
            return snap
        return await self.replicas.fetch(
            hash_hex,
            partial(self.db, _snapshot_of, self, hash_hex),
            partial(replicate, self.data_dir, self.upstream, hash_hex, self.trust),
        )

    async def prestage(self, hash_hex: str) -> None:
        """Replicate a package in the background, capped at ``prestage_bps``, within the
        bounds of :class:`ReplicaGate`; failures are logged (the first agent request will
        try again)."""
        assert self.upstream is not None and self.trust is not None
        try:
            snap = await self.replicas.fetch(
                hash_hex,
                partial(self.db, _snapshot_of, self, hash_hex),
                partial(replicate, self.data_dir, self.upstream, hash_hex, self.trust,
                        self.prestage_bps),
            )  # fmt: skip
            if snap is not None:
                log.info("pre-staged package %s (%s)", hash_hex, snap.name)
        except Exception:
            log.exception("pre-staging %s failed", hash_hex)
        finally:
            self.prestaging.discard(hash_hex)

    def ns(self) -> Store:
        assert self.store is not None
        return self.store


# -- who is asking ----------------------------------------------------------------------


def _target(request: Request) -> str:
    """The path and query of the request exactly as the client sent them (what it signed)."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    query: bytes = request.scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


async def _lookup(srv: Server, guid: str) -> Secret | None:
    found = await srv.db(srv.ns().secret_of, guid)
    return Secret(*found) if found else None


def agent_endpoint(handler: Handler) -> Handler:
    """Run ``handler`` only for a signed request of an enrolled computer; it finds the
    caller's GUID in ``request.state.computer`` and the body in ``request.state.body``."""

    async def endpoint(request: Request) -> Response:
        srv: Server = request.app.state.server
        assert srv.guard is not None
        now = time.time()
        creds = srv.guard.credentials(request.headers.get("authorization"), now)
        body = b""
        if request.method == "POST":
            body = await _read_capped(request, docs.MAX_EVENT_BYTES)
        stored = await _lookup(srv, creds.guid)
        request.state.computer = srv.guard.check(
            creds, stored, request.method, _target(request), body, now
        )
        request.state.body = body
        return await handler(request)

    return endpoint


def _not_yours(what: str, guid: str, caller: str) -> Response:
    return xml_error(403, f"computer {caller} may not {what} of computer {guid}")


async def enrol(request: Request) -> Response:
    """An agent with a secret of its own asks to be enrolled; an administrator approves it
    (``mcast-ns computer approve``). Signed with that secret, so the request proves it."""
    srv: Server = request.app.state.server
    assert srv.guard is not None
    now = time.time()
    creds = srv.guard.credentials(request.headers.get("authorization"), now)
    body = await _read_capped(request, MAX_ENROLMENT_BYTES)
    try:
        guid, secret = parse_enrolment(body)
    except DocumentError as exc:
        return xml_error(400, str(exc))
    if guid != creds.guid:
        return xml_error(403, f"credentials of {creds.guid} cannot enrol computer {guid}")
    srv.guard.verify(creds, secret, request.method, _target(request), body)
    srv.guard.admit(creds, now)
    state = await srv.db(srv.ns().request_enrolment, guid, secret, MAX_PENDING_ENROLMENTS)
    if state == "conflict":
        return xml_error(409, f"computer {guid} already has another secret or enrolment request")
    if state == "full":
        return xml_error(503, "too many enrolment requests are waiting for approval")
    status = 200 if state == "approved" else 202
    return Response(enrolment_state_xml(guid, state), status_code=status, media_type=XML)


# -- Notification Server endpoints ----------------------------------------------------


async def get_client_policies(request: Request) -> Response:
    srv: Server = request.app.state.server
    guid = docs.parse_guid(request.query_params.get("guid"), "guid")
    if guid != request.state.computer:
        return _not_yours("read the policy", guid, request.state.computer)
    raw_ip = request.query_params.get("ip")
    if not raw_ip:  # an agent that does not say: the address it connected from
        raw_ip = request.client.host if request.client else "127.0.0.1"
    ip = docs.parse_ip(raw_ip)
    store = srv.ns()
    if not await srv.db(store.computer_exists, guid):
        return xml_error(404, f"unknown computer {guid}")
    site = await srv.db(store.site_of, ip)
    discovery_key = await srv.db(store.discovery_key, site)
    settings = await srv.db(store.settings)
    tasks = await srv.db(store.tasks_for, guid)
    assert srv.signing_key is not None
    items = []
    for t in tasks:
        package = await srv.db(partial(store.latest_package, package_id=t.package_id))
        same = await srv.db(repo.same_content_as, store, package) if package else ()
        items.append(sign_task(srv.signing_key, guid, docs.policy_task(t, package, same)))
    return Response(docs.policy_xml(guid, settings, items, discovery_key), media_type=XML)


def _codebases(
    srv: Server, request: Request, site: str | None, totaltime: int
) -> list[docs.Codebase]:
    store = srv.ns()
    settings = store.settings()
    limit = docs.agent_settings(settings).max_trying_time_mins
    ns_site = str(settings.get(SERVER_SITE) or "")  # any stored value: it is only looked up
    if limit > 0 and totaltime > limit:
        servers = store.pkgservers(ns_site) if ns_site else []
    else:
        servers = store.pkgservers(site) if site else []
    if not servers:
        servers = [(srv.base_url(request), ns_site)]
    return [docs.Codebase(url.rstrip("/") + "/pkg/{hash}/", s) for url, s in servers]


async def get_package_info(request: Request) -> Response:
    srv: Server = request.app.state.server
    q = request.query_params
    computer = docs.parse_guid(q.get("computer"), "computer")
    package_id = docs.parse_guid(q.get("package"), "package")
    ip = docs.parse_ip(q.get("ip"))
    totaltime = docs.parse_nonneg_int(q.get("totaltime"), "totaltime", default=0)
    if computer != request.state.computer:
        return _not_yours("read the package info", computer, request.state.computer)
    store = srv.ns()
    if not await srv.db(store.computer_exists, computer):
        return xml_error(404, f"unknown computer {computer}")
    package = await srv.db(partial(store.latest_package, package_id=package_id))
    if package is None:
        return xml_error(404, f"unknown package {package_id}")
    # the package info carries the package's session key: only for computers that need it
    if not await srv.db(store.is_targeted_with, computer, package_id):
        return xml_error(403, f"no task targets computer {computer} with package {package_id}")
    site = await srv.db(store.site_of, ip)
    codebases = await srv.db(_codebases, srv, request, site, totaltime)
    codebases = [docs.Codebase(c.url.format(hash=package.hash), c.site) for c in codebases]
    snap = await srv.db(repo.load_snapshot, srv.data_dir, package.hash)
    snapshot_url = f"{srv.base_url(request)}getSnapshot.asp?package={package.package_id}"
    body = docs.package_info_xml(package, snapshot_url, codebases, site, snap.block_size)
    return Response(body, media_type=XML)


async def get_snapshot(request: Request) -> Response:
    srv: Server = request.app.state.server
    package_id = docs.parse_guid(request.query_params.get("package"), "package")
    package = await srv.db(partial(srv.ns().latest_package, package_id=package_id))
    if package is None:
        return xml_error(404, f"unknown package {package_id}")
    return Response(await srv.db(repo.snapshot_xml, srv.data_dir, package.hash), media_type=XML)


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise docs.BadRequest(f"body is larger than {cap} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise docs.BadRequest(f"body is larger than {cap} bytes", 413)
    return bytes(body)


async def post_event(request: Request) -> Response:
    srv: Server = request.app.state.server
    ev = docs.parse_event_untrusted(request.state.body)
    if ev.computer != request.state.computer:
        return _not_yours("post an event", ev.computer, request.state.computer)
    store = srv.ns()
    if not await srv.db(store.computer_exists, ev.computer):
        return xml_error(404, f"unknown computer {ev.computer}")
    if not await srv.db(store.is_target, ev.task_id, ev.computer):
        return xml_error(404, f"task {ev.task_id} is not assigned to computer {ev.computer}")
    try:
        # the agent's clock orders a task's events, but only within the allowed skew of ours:
        # no event can claim a time that outranks everything the agent reports later
        assert srv.guard is not None
        now = time.time()
        order = min(max(ev.agent_time, now - srv.guard.skew_s), now)
        stored = await srv.db(store.record_event, ev, order)
    except StoreError as exc:
        return xml_error(409, str(exc))
    # The event is committed (fsynced) at this point; only now do we acknowledge it.
    assert srv.processor is not None
    srv.processor.wake()
    return Response(docs.event_ack_xml(ev.event_id, stored), media_type=XML)


# -- package content (both modes) ----------------------------------------------------


async def _stream(pieces: list[tuple[Path, int, int]]) -> AsyncIterator[bytes]:
    chunks = repo.read_chunks(pieces)
    try:
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, None)
            if chunk is None:
                return
            yield chunk
    finally:
        chunks.close()


def _snapshot_of(srv: Server, hash_hex: str) -> Snapshot | None:
    try:
        return repo.load_snapshot(srv.data_dir, hash_hex)
    except (repo.RepoError, SnapshotError):
        return None


_CACHE = "public, max-age=31536000"  # a package version never changes under its hash


def _etag(snap: Snapshot, start: int, size: int) -> str:
    return f'"{snap.package_hash_hex}-{start}-{size}"'


def _serve_file(request: Request, srv: Server, snap: Snapshot, entry_path: str, start: int,
                size: int) -> Response:  # fmt: skip
    """One stored file of the package, by Starlette's FileResponse: Range, If-Range and
    multiple ranges (multipart/byteranges) as RFC 9110 says."""
    path = repo.package_dir(srv.data_dir, snap.package_hash_hex) / "files"
    headers = {"ETag": _etag(snap, start, size), "Cache-Control": _CACHE}
    return FileResponse(
        path.joinpath(*entry_path.split("/")),
        headers=headers,
        media_type="application/octet-stream",
    )


def _one_range(header: str | None, size: int) -> tuple[int, int] | Literal[416] | None:
    """The one byte range [lo, hi) of a ``Range`` header the span streamer honours; None for
    the whole content (no header, or one it does not honour: several ranges, other units, or
    malformed, which RFC 9110 lets a server ignore); 416 for a range past the end."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or "," in spec:
        return None
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if (first == "" and last == "") or len(first) > 19 or len(last) > 19:
        return None
    if first == "":  # the last N bytes
        n = int(last)
        return (max(0, size - n), size) if n and size else 416
    lo = int(first)
    hi = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < lo:
        return None
    return (lo, hi) if lo < size else 416


async def _serve_span(request: Request, srv: Server, snap: Snapshot) -> Response:
    """The package's content (its files laid end to end) when it spans several files: one
    file cannot be a FileResponse. A single range is honoured; several ranges or a malformed
    header get the whole content with 200, which RFC 9110 allows and every client takes."""
    size = snap.total_size
    etag = _etag(snap, 0, size)
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": _CACHE}
    header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if header is not None and if_range is not None and if_range != etag:
        header = None  # the client's copy is of another version: send it all
    rng = _one_range(header, size)
    if rng == 416:
        headers["Content-Range"] = f"bytes */{size}"
        resp = xml_error(416, f"range {str(header)[:80]!r} is not satisfiable for size {size}")
        resp.headers.update(headers)
        return resp
    status, lo, hi = 200, 0, size
    if isinstance(rng, tuple):
        status, (lo, hi) = 206, rng
        headers["Content-Range"] = f"bytes {lo}-{hi - 1}/{size}"
    headers["Content-Length"] = str(hi - lo)
    media = "application/octet-stream"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media)
    pieces = list(repo.content_pieces(srv.data_dir, snap, lo, hi))
    return StreamingResponse(_stream(pieces), status_code=status, headers=headers, media_type=media)


async def pkg_content(request: Request) -> Response:
    srv: Server = request.app.state.server
    hash_hex = docs.parse_hash(request.path_params["hash"])
    snap = await srv.snapshot(hash_hex)
    if snap is None:
        return xml_error(404, f"no package with hash {hash_hex}")
    sized = [f for f in snap.files if f.size]
    if len(sized) == 1:  # the content is one stored file
        return _serve_file(request, srv, snap, sized[0].path, 0, snap.total_size)
    return await _serve_span(request, srv, snap)


async def pkg_file(request: Request) -> Response:
    srv: Server = request.app.state.server
    hash_hex = docs.parse_hash(request.path_params["hash"])
    relpath = request.path_params["relpath"]
    try:
        safe_relpath(relpath)
    except UnsafePath as exc:
        return xml_error(400, str(exc))
    snap = await srv.snapshot(hash_hex)
    if snap is None:
        return xml_error(404, f"no package with hash {hash_hex}")
    # Only names listed in the signed snapshot are served: nothing else is reachable.
    for entry, offset in snap.file_spans():
        if entry.path == relpath:
            return _serve_file(request, srv, snap, entry.path, offset, entry.size)
    return xml_error(404, f"package {hash_hex} has no file {relpath[:200]!r}")


MAX_PRESTAGING = 8  # packages a package server pre-stages at once


async def pkg_prestage(request: Request) -> Response:
    """``POST /pkg/HASH/prestage`` (a package server with an upstream): replicate the package
    now, in the background, before any agent asks. 200 when it is here, 202 when it is on
    its way. Open like the rest of ``/pkg``: it only fetches what the upstream signed, within
    the replication bounds."""
    srv: Server = request.app.state.server
    hash_hex = docs.parse_hash(request.path_params["hash"])
    if await srv.db(_snapshot_of, srv, hash_hex) is not None:
        return Response("present\n", media_type="text/plain")
    if hash_hex not in srv.prestaging:
        if len(srv.prestaging) >= MAX_PRESTAGING or srv.tasks is None:
            return xml_error(503, "too many packages are being pre-staged; ask again later")
        srv.prestaging.add(hash_hex)
        srv.tasks.start_soon(srv.prestage, hash_hex)
    return Response("staging\n", status_code=202, media_type="text/plain")


async def pkg_snapshot(request: Request) -> Response:
    srv: Server = request.app.state.server
    hash_hex = docs.parse_hash(request.path_params["hash"])
    try:
        await srv.snapshot(hash_hex)
        body = await srv.db(repo.snapshot_xml, srv.data_dir, hash_hex)
    except repo.RepoError:
        return xml_error(404, f"no package with hash {hash_hex}")
    return Response(body, media_type=XML)


async def health(request: Request) -> Response:
    srv: Server = request.app.state.server
    return Response(f"ok {srv.mode}\n", media_type="text/plain")


# -- errors -----------------------------------------------------------------------------


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, docs.BadRequest)
    return xml_error(exc.status, str(exc))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return xml_error(exc.status_code, str(exc.detail))


async def _disconnect(request: Request, exc: Exception) -> Response:
    return xml_error(400, "client disconnected")


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    resp = xml_error(exc.status, str(exc))
    resp.headers.update(exc.headers)
    return resp


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", request.url.path, exc_info=exc)
    return xml_error(500, "internal server error")


# -- assembly --------------------------------------------------------------------------


def create_app(
    data_dir: Path,
    *,
    mode: Mode = "notification",
    site: str | None = None,
    public_url: str | None = None,
    upstream: str | None = None,
    trust: TrustStore | None = None,
    rate: float = DEFAULT_RATE,
    burst: float = DEFAULT_BURST,
    skew_s: float = DEFAULT_SKEW_S,
    console_allow: tuple[str, ...] = console.DEFAULT_ALLOW,
    prestage_bps: float = 0.0,
) -> Starlette:
    """The ASGI app for one data directory. Serve it with :func:`server_stub.serve.serve`.

    A package server given ``upstream`` (the Notification Server's URL) and ``trust`` (its
    signing key) fetches and verifies packages it does not hold on first request. ``rate``
    and ``burst`` are each computer's request budget, ``skew_s`` how far an agent's clock
    may be from the server's. ``console_allow`` (CIDRs) are the addresses the web console
    (:mod:`.console`) answers. ``prestage_bps`` caps what a package server reads from
    upstream when it pre-stages a package (``POST /pkg/HASH/prestage``; 0: no cap).
    """
    srv = Server(data_dir, mode, site, public_url, upstream, trust, prestage_bps)
    if srv.store is not None:
        srv.guard = Guard(skew_s=skew_s, buckets=TokenBuckets(rate, burst))
    pkg_methods = ["GET", "HEAD"]
    routes = [
        Route("/pkg/{hash}/content", pkg_content, methods=pkg_methods),
        Route("/pkg/{hash}/files/{relpath:path}", pkg_file, methods=pkg_methods),
        Route("/pkg/{hash}/snapshot.xml", pkg_snapshot, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    if upstream is not None and trust is not None:
        routes.append(Route("/pkg/{hash}/prestage", pkg_prestage, methods=["POST"]))
    if mode == "notification":
        routes += [
            Route("/GetClientPolicies.aspx", agent_endpoint(get_client_policies), methods=["GET"]),
            Route("/getPackageInfo.aspx", agent_endpoint(get_package_info), methods=["GET"]),
            Route("/getSnapshot.asp", agent_endpoint(get_snapshot), methods=["GET"]),
            Route("/PostEvent.aspx", agent_endpoint(post_event), methods=["POST"]),
            Route("/status", agent_endpoint(post_event), methods=["POST"]),
            Route("/Enrol.aspx", enrol, methods=["POST"]),
            *console.routes(),
        ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            if srv.processor is not None:
                tg.start_soon(srv.processor.run)
            srv.tasks = tg
            yield
            srv.tasks = None
            tg.cancel_scope.cancel()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            docs.BadRequest: _bad_request,
            Refused: _refused,
            HTTPException: _http_exception,
            ClientDisconnect: _disconnect,
            Exception: _internal,
        },
    )
    app.state.server = srv
    app.state.console_allow = console.networks(console_allow)
    return app
