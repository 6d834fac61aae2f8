"""Who may ask the Notification Server what: signed requests, replay and skew, authorization
per computer, clamped event times, the per-computer rate limit, enrolment and its approval.

The server runs in-process on 127.0.0.1 (plain HTTP here: TLS is tests/test_agent_tls.py);
requests are signed by hand with :mod:`mcast.fleet_auth` where a test needs to control the
timestamp or the nonce.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcast.fleet_auth import (
    AuthError,
    Credentials,
    HmacAuth,
    authorization,
    enrolment_xml,
    fingerprint,
    load_secret,
    new_secret,
    parse_authorization,
    verify,
)
from server_stub import repo
from server_stub.app import create_app
from server_stub.cli import main as ns_main
from server_stub.docs import event_xml
from server_stub.store import EventRecord, Store, TaskRow
from server_stub.testing import Populated, agent_client, populate, running_server
from tests.harness import WAIT_S, await_for


@pytest.fixture
def pop(tmp_path: Path, ns_database: str | None) -> Populated:
    return populate(tmp_path / "ns", computers=2, package_bytes=5000, database=ns_database)


@pytest.fixture
async def url(pop: Populated) -> AsyncIterator[str]:
    async with running_server(create_app(pop.data_dir)) as base:
        yield base


def _event(pop: Populated, computer: str, state: str, agent_time: float) -> bytes:
    ev = EventRecord(str(uuid.uuid4()), computer, pop.task_id, state, 0, 0, 0, state, agent_time)
    return event_xml(ev)


def _requests(pop: Populated) -> list[tuple[str, str, bytes]]:
    """(method, path and query, body) of one valid request per agent endpoint, as computer 0."""
    g, p = pop.computers[0], pop.package.package_id
    event = _event(pop, g, "running", time.time())
    return [
        ("GET", f"/GetClientPolicies.aspx?guid={g}", b""),
        ("GET", f"/getPackageInfo.aspx?computer={g}&package={p}&ip=127.0.0.1", b""),
        ("GET", f"/getSnapshot.asp?package={p}", b""),
        ("POST", "/PostEvent.aspx", event),
        ("POST", "/status", event),
    ]


ENDPOINTS = ["policy", "package-info", "snapshot", "post-event", "status"]


async def _send(
    url: str, method: str, target: str, body: bytes, header: str | None
) -> httpx.Response:
    headers = {"Content-Type": "application/xml"}
    if header is not None:
        headers["Authorization"] = header
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        return await c.request(method, target, content=body, headers=headers)


def _sign(pop: Populated, method: str, target: str, body: bytes, **kw: object) -> str:
    guid = pop.computers[0]
    return authorization(pop.secrets[guid], guid, method, target, body, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("endpoint", range(5), ids=ENDPOINTS)
@pytest.mark.parametrize(
    "credentials", ["none", "other-scheme", "malformed", "wrong-secret", "unknown-computer"]
)
async def test_every_agent_endpoint_answers_401_without_valid_credentials(
    pop: Populated, url: str, endpoint: int, credentials: str
) -> None:
    method, target, body = _requests(pop)[endpoint]
    guid = pop.computers[0]
    header = {
        "none": None,
        "other-scheme": "Bearer abc",
        "malformed": f"MCAST-HMAC guid={guid}, ts=now, nonce=x, sig=y",
        "wrong-secret": authorization(new_secret(), guid, method, target, body),
        "unknown-computer": authorization(new_secret(), str(uuid.uuid4()), method, target, body),
    }[credentials]
    resp = await _send(url, method, target, body, header)
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("MCAST-HMAC")
    # and the same request, signed properly, is answered
    ok = await _send(url, method, target, body, _sign(pop, method, target, body))
    assert ok.status_code == 200, ok.text


async def test_package_content_stays_open(pop: Populated, url: str) -> None:
    """Documented: /pkg is verified against the signed snapshot, package servers hold no
    secrets, so it needs no credentials."""
    resp = await _send(url, "GET", f"/pkg/{pop.package.hash}/snapshot.xml", b"", None)
    assert resp.status_code == 200


async def test_a_computer_cannot_post_an_event_for_another(pop: Populated, url: str) -> None:
    b = pop.computers[1]
    async with pop.client(url, 0) as as_a:
        resp = await as_a.post("/PostEvent.aspx", content=_event(pop, b, "failed", time.time()))
        assert resp.status_code == 403 and "may not post an event" in resp.text
        resp = await as_a.get("/GetClientPolicies.aspx", params={"guid": b})
        assert resp.status_code == 403
    store = Store(pop.data_dir)
    try:
        assert store.queue_counts()["events"] == 0
        assert {r.computer: r.state for r in store.task_status()}[b] == "pending"
    finally:
        store.close()


async def test_a_package_key_goes_only_to_computers_targeted_with_it(
    pop: Populated, url: str, tmp_path: Path
) -> None:
    a, b = pop.computers
    src = tmp_path / "other-src"
    src.mkdir()
    (src / "secret.bin").write_bytes(os.urandom(3000))
    store = Store(pop.data_dir)
    try:
        other = repo.add_package(store, src, "other").row
        task = TaskRow(str(uuid.uuid4()), other.package_id, "x", "asap", "system", "agent")
        store.add_task(task, [b])  # only B needs it
    finally:
        store.close()
    params = {"package": other.package_id, "ip": "127.0.0.1"}
    async with pop.client(url, 0) as as_a, pop.client(url, 1) as as_b:
        resp = await as_a.get("/getPackageInfo.aspx", params={"computer": a, **params})
        assert resp.status_code == 403 and "no task targets" in resp.text
        assert other.session_key not in resp.text
        # B may not ask on A's behalf either, nor A on B's
        resp = await as_a.get("/getPackageInfo.aspx", params={"computer": b, **params})
        assert resp.status_code == 403 and other.session_key not in resp.text
        resp = await as_b.get("/getPackageInfo.aspx", params={"computer": b, **params})
        assert resp.status_code == 200 and other.session_key in resp.text


async def test_a_replayed_request_is_refused(pop: Populated, url: str) -> None:
    method, target, body = _requests(pop)[0]
    header = _sign(pop, method, target, body)
    first = await _send(url, method, target, body, header)
    assert first.status_code == 200, first.text
    again = await _send(url, method, target, body, header)
    assert again.status_code == 401 and "replayed" in again.text
    # a signature does not carry over to another request either
    other_target = target + "&ip=127.0.0.2"
    assert (await _send(url, method, other_target, body, header)).status_code == 401


@pytest.mark.parametrize("offset", [-301.0, 301.0, -86400.0 * 365])
async def test_a_request_outside_the_skew_is_refused(
    pop: Populated, url: str, offset: float
) -> None:
    method, target, body = _requests(pop)[3]  # an event
    header = _sign(pop, method, target, body, now=time.time() + offset)
    resp = await _send(url, method, target, body, header)
    assert resp.status_code == 401 and "server's clock" in resp.text
    store = Store(pop.data_dir)
    try:
        assert store.queue_counts()["events"] == 0
    finally:
        store.close()


async def test_an_event_time_of_1e300_is_clamped_and_cannot_pin_the_task(
    pop: Populated, url: str
) -> None:
    guid = pop.computers[0]
    async with pop.client(url, 0) as c:
        resp = await c.post("/PostEvent.aspx", content=_event(pop, guid, "succeeded", 1e300))
        assert resp.status_code == 200, resp.text
        after = time.time()  # a later report of the same agent, on a sane clock
        resp = await c.post("/PostEvent.aspx", content=_event(pop, guid, "failed", after))
        assert resp.status_code == 200, resp.text
    store = Store(pop.data_dir)
    try:
        await await_for(lambda: store.queue_counts()["pending"] == 0, "the fold", WAIT_S)
        row = {r.computer: r for r in store.task_status()}[guid]
        assert row.state == "failed" and row.events == 2
        with store._read() as db:
            times = [t for (t,) in db.execute("SELECT agent_time FROM events ORDER BY seq")]
    finally:
        store.close()
    assert times[0] <= after  # clamped to the server's receive time


async def test_the_rate_limit_answers_429_with_retry_after(pop: Populated) -> None:
    app = create_app(pop.data_dir, rate=0.01, burst=3)
    async with running_server(app) as url, pop.client(url, 0) as a, pop.client(url, 1) as b:
        codes = []
        for _ in range(4):
            resp = await a.get("/GetClientPolicies.aspx", params={"guid": pop.computers[0]})
            codes.append(resp.status_code)
        assert codes == [200, 200, 200, 429]
        assert int(resp.headers["retry-after"]) >= 1 and "too many requests" in resp.text
        # the budget is per computer: B is not throttled by A
        resp = await b.get("/GetClientPolicies.aspx", params={"guid": pop.computers[1]})
        assert resp.status_code == 200


def _ns(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = ns_main(list(argv))
    return code, out.getvalue()


async def test_enrolment_is_403_until_approved(pop: Populated, url: str) -> None:
    guid, secret = str(uuid.uuid4()), new_secret()
    data = str(pop.data_dir)
    async with httpx.AsyncClient(base_url=url, auth=HmacAuth(guid, secret)) as c:
        resp = await c.post("/Enrol.aspx", content=enrolment_xml(guid, secret))
        assert resp.status_code == 202 and 'state="pending"' in resp.text
        resp = await c.get("/GetClientPolicies.aspx", params={"guid": guid})
        assert resp.status_code == 403 and "waiting for approval" in resp.text
        # another secret for the same GUID is refused: the first request stands
        other = new_secret()
        async with httpx.AsyncClient(base_url=url, auth=HmacAuth(guid, other)) as thief:
            resp = await thief.post("/Enrol.aspx", content=enrolment_xml(guid, other))
            assert resp.status_code == 409
        code, listing = _ns("computer", "list", "--data", data)
        assert code == 0 and f"{guid}\tpending\t{fingerprint(secret)}" in listing
        assert _ns("computer", "approve", guid, "--data", data)[0] == 0
        resp = await c.get("/GetClientPolicies.aspx", params={"guid": guid})
        assert resp.status_code == 200, resp.text
        resp = await c.post("/Enrol.aspx", content=enrolment_xml(guid, secret))
        assert resp.status_code == 200 and 'state="approved"' in resp.text
    assert _ns("computer", "approve", str(uuid.uuid4()), "--data", data)[0] == 2


async def test_computer_add_writes_a_private_secret_the_server_accepts(
    pop: Populated, url: str, tmp_path: Path
) -> None:
    guid, path = str(uuid.uuid4()), tmp_path / "c.secret"
    code, out = _ns(
        "computer", "add", guid, "--data", str(pop.data_dir), "--secret-file", str(path)
    )
    assert code == 0 and "secret" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = load_secret(path)
    assert secret.hex() not in out  # written to the file, not printed
    async with agent_client(url, guid, secret) as c:
        resp = await c.get("/GetClientPolicies.aspx", params={"guid": guid})
        assert resp.status_code == 200, resp.text
    # without --secret-file the secret is printed once; --new-secret replaces it
    code, out = _ns("computer", "add", guid, "--data", str(pop.data_dir), "--new-secret")
    assert code == 0
    printed = bytes.fromhex(out.split("secret ")[1].split()[0])
    assert printed != secret
    async with agent_client(url, guid, secret) as old, agent_client(url, guid, printed) as new:
        assert (await old.get("/GetClientPolicies.aspx", params={"guid": guid})).status_code == 401
        assert (await new.get("/GetClientPolicies.aspx", params={"guid": guid})).status_code == 200


@given(st.one_of(st.text(max_size=600), st.builds(lambda t: "MCAST-HMAC " + t, st.text())))
def test_a_hostile_authorization_header_is_an_auth_error_or_credentials(header: str) -> None:
    try:
        creds = parse_authorization(header)
    except AuthError:
        return
    assert isinstance(creds, Credentials)


def test_a_signature_covers_method_target_time_nonce_and_body() -> None:
    secret, guid = new_secret(), str(uuid.uuid4())
    header = authorization(secret, guid, "POST", "/PostEvent.aspx", b"<Event/>", now=1000.0)
    creds = parse_authorization(header)
    verify(secret, creds, "POST", "/PostEvent.aspx", b"<Event/>")
    for method, target, body in [
        ("GET", "/PostEvent.aspx", b"<Event/>"),
        ("POST", "/status", b"<Event/>"),
        ("POST", "/PostEvent.aspx", b"<Event />"),
    ]:
        with pytest.raises(AuthError, match="bad signature"):
            verify(secret, creds, method, target, body)
    for field, value in [("ts", "1001"), ("nonce", "0" * 32)]:
        changed = header.replace(f"{field}={getattr(creds, field)}", f"{field}={value}")
        with pytest.raises(AuthError, match="bad signature"):
            verify(secret, parse_authorization(changed), "POST", "/PostEvent.aspx", b"<Event/>")
    with pytest.raises(AuthError, match="bad signature"):
        verify(new_secret(), creds, "POST", "/PostEvent.aspx", b"<Event/>")
