"""The Notification Server and package server over real HTTP on 127.0.0.1 (httpx + trio)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import defusedxml.ElementTree as SafeET
import httpx
import pytest
import trio

from mcast.fleet import SETTING_DEFAULTS
from mcast.snapshot import TrustStore, load_public_key, load_verified
from server_stub import repo
from server_stub.app import create_app
from server_stub.docs import event_xml
from server_stub.store import EventRecord, Store
from server_stub.testing import Populated, populate, running_server
from tests.harness import WAIT_S, within

PACKAGE_BYTES = 700_000  # > 10 hash units of 64 KiB, not a multiple of one


@pytest.fixture
def pop(tmp_path: Path, ns_database: str | None) -> Populated:
    return populate(
        tmp_path / "ns", computers=2, package_bytes=PACKAGE_BYTES, database=ns_database
    )


@pytest.fixture
async def url(pop: Populated) -> AsyncIterator[str]:
    async with running_server(create_app(pop.data_dir)) as base:
        yield base


@pytest.fixture
async def client(pop: Populated, url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with pop.client(url, timeout=10) as c:  # signs as computer 0
        yield c


def xml(resp: httpx.Response):  # type: ignore[no-untyped-def]
    assert resp.headers["content-type"].startswith("application/xml"), resp.headers
    return SafeET.fromstring(resp.content)


def full_content(pop: Populated) -> bytes:
    snap = repo.load_snapshot(pop.data_dir, pop.package.hash)
    return b"".join(
        (pop.data_dir / "packages" / pop.package.hash / "files" / f.path).read_bytes()
        for f in snap.files
    )


# -- GetClientPolicies.aspx -----------------------------------------------------------


async def test_policy_lists_task_and_agent_settings(pop: Populated, client: httpx.AsyncClient):
    guid = pop.computers[0]
    resp = await client.get("/GetClientPolicies.aspx", params={"guid": "{" + guid.upper() + "}"})
    assert resp.status_code == 200
    root = xml(resp)
    assert root.tag == "ClientPolicies" and root.get("guid") == guid
    settings = root.find("AgentSettings")
    assert settings.get("multicastEnabled") == "true"
    assert settings.get("MaxAgentDownloadTryingTimeMins") == "0"
    for key in ("minMulticastSize", "maxSessionsPerSubnet", "SpeedTestCodebases"):
        assert settings.get(key, "").isdigit()
    (task,) = root.find("Tasks").findall("Task")
    assert task.get("id") == pop.task_id
    assert task.get("packageId") == pop.package.package_id
    assert task.get("packageHash") == pop.package.hash
    assert task.find("CommandLine").text == "setup.exe /q"
    assert task.find("Schedule").get("when") == "asap"
    assert task.find("Credentials").get("ref") == "system"
    assert task.find("Execution").get("runFrom") == "agent"


@pytest.mark.parametrize(
    ("key", "stored"),
    [("maxSessionsPerSubnet", "two"), ("MaxAgentDownloadTryingTimeMins", "-5"),
     ("checkInIntervalMins", "99999999"), ("multicastEnabled", b"\x00\x01"),
     ("serverSite", "gone-site")],
)  # fmt: skip
async def test_a_stored_bad_setting_is_never_a_500(
    pop: Populated,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    ns_database: str | None,
    key: str,
    stored: object,
):
    """A value an older version stored and this one refuses: policy and package info still
    answer 200, with the setting's default, and the server logs what it ignored."""
    if ns_database is not None and isinstance(stored, bytes):
        stored = stored.replace(b"\x00", b"").decode()  # PostgreSQL text holds no NUL byte
    store = Store(pop.data_dir)
    with store._write() as db:  # behind the CLI's back, as an older version might have
        db.execute("UPDATE settings SET value = ? WHERE key = ?", (stored, key))
    assert store.settings()[key] == stored
    store.close()
    resp = await client.get("/GetClientPolicies.aspx", params={"guid": pop.computers[0]})
    assert resp.status_code == 200, resp.text
    got = xml(resp).find("AgentSettings").get(key)
    assert got == SETTING_DEFAULTS.get(key)  # serverSite is no Agent Setting: absent
    root = await _info(client, pop, "127.0.0.9", totaltime=10**6)
    assert [c.get("url") for c in root.iter("Codebase")] != []
    if key in SETTING_DEFAULTS:
        assert "stored setting ignored" in caplog.text and key in caplog.text


async def test_policy_of_another_guid_is_403(client: httpx.AsyncClient):
    resp = await client.get("/GetClientPolicies.aspx", params={"guid": str(uuid.uuid4())})
    assert resp.status_code == 403
    assert "may not read the policy" in xml(resp).text


# -- getPackageInfo.aspx ----------------------------------------------------------------


async def _info(client: httpx.AsyncClient, pop: Populated, ip: str, totaltime: int = 0):  # type: ignore[no-untyped-def]
    resp = await client.get(
        "/getPackageInfo.aspx",
        params={
            "computer": pop.computers[0],
            "package": pop.package.package_id,
            "ip": ip,
            "totaltime": str(totaltime),
        },
    )
    assert resp.status_code == 200, resp.text
    return xml(resp)


async def test_package_info_falls_back_to_the_server_itself(
    pop: Populated, url: str, client: httpx.AsyncClient
):
    root = await _info(client, pop, "127.0.0.9")
    assert root.get("hash") == pop.package.hash and root.get("site") == "lab"
    assert root.get("size") == str(PACKAGE_BYTES + 21)
    (cb,) = root.find("Codebases").findall("Codebase")
    assert cb.get("url") == f"{url}/pkg/{pop.package.hash}/"
    assert len(bytes.fromhex(root.find("Multicast").get("sessionKey"))) == 32
    assert root.find("Snapshot").get("url").endswith(f"package={pop.package.package_id}")


async def test_package_info_site_servers_and_totaltime(pop: Populated, client: httpx.AsyncClient):
    store = Store(pop.data_dir)
    store.add_site("hq", ["198.18.0.0/16"])
    store.add_site("branch", ["198.19.7.0/24"])
    store.add_pkgserver("branch", "http://127.0.0.1:9001/")
    store.add_pkgserver("branch", "http://127.0.0.1:9002/")
    store.add_pkgserver("hq", "http://127.0.0.1:9100/")
    store.set_setting("serverSite", "hq")
    store.set_setting("MaxAgentDownloadTryingTimeMins", "30")
    store.close()
    h = pop.package.hash

    root = await _info(client, pop, "198.19.7.20", totaltime=5)
    urls = [(c.get("url"), c.get("site")) for c in root.iter("Codebase")]
    assert root.get("site") == "branch"
    assert urls == [
        (f"http://127.0.0.1:9001/pkg/{h}/", "branch"),
        (f"http://127.0.0.1:9002/pkg/{h}/", "branch"),
    ]
    # trying for longer than MaxAgentDownloadTryingTimeMins: the servers of the NS's own site
    root = await _info(client, pop, "198.19.7.20", totaltime=31)
    assert [c.get("url") for c in root.iter("Codebase")] == [f"http://127.0.0.1:9100/pkg/{h}/"]
    # an address in no site gets the server itself
    root = await _info(client, pop, "198.19.200.1")
    assert root.get("site") == ""
    assert [c.get("site") for c in root.iter("Codebase")] == ["hq"]


# -- getSnapshot.asp and package content ---------------------------------------------


async def test_snapshot_is_signed_and_matches_content(pop: Populated, client: httpx.AsyncClient):
    resp = await client.get("/getSnapshot.asp", params={"package": pop.package.package_id})
    assert resp.status_code == 200
    trust = TrustStore.of(load_public_key((pop.data_dir / repo.PUB_NAME).read_bytes()))
    snap = load_verified(resp.content, trust, time.time())
    assert snap.package_hash_hex == pop.package.hash
    body = (await client.get(f"/pkg/{pop.package.hash}/content")).content
    assert hashlib.sha256(body).digest() == snap.content_hash
    for i, expected in enumerate(snap.block_hashes):
        start, length = snap.block_range(i)
        assert hashlib.sha256(body[start : start + length]).digest() == expected
    same = await client.get(f"/pkg/{pop.package.hash}/snapshot.xml")
    assert same.content == resp.content


async def test_range_download_resumes_a_partial_fetch(pop: Populated, client: httpx.AsyncClient):
    """Abort a streamed download part-way, then fetch the rest with Range: bytes=N-."""
    path = f"/pkg/{pop.package.hash}/content"
    partial = bytearray()
    async with client.stream("GET", path) as resp:
        assert resp.status_code == 200
        assert resp.headers["accept-ranges"] == "bytes"
        async for chunk in resp.aiter_raw():
            partial += chunk
            if len(partial) >= 200_000:
                break  # "connection lost" part-way through
    assert 0 < len(partial) < PACKAGE_BYTES
    print(f"range resume: {len(partial)} bytes before the abort")
    rest = await client.get(path, headers={"Range": f"bytes={len(partial)}-"})
    assert rest.status_code == 206
    size = PACKAGE_BYTES + 21
    assert rest.headers["content-range"] == f"bytes {len(partial)}-{size - 1}/{size}"
    assert int(rest.headers["content-length"]) == size - len(partial)
    whole = bytes(partial) + rest.content
    assert whole == full_content(pop)
    assert hashlib.sha256(whole).hexdigest() == pop.package.content_hash


async def test_ranges_of_hash_units_and_files(pop: Populated, client: httpx.AsyncClient):
    content = full_content(pop)
    base = f"/pkg/{pop.package.hash}"
    unit = 65536
    r = await client.get(f"{base}/content", headers={"Range": f"bytes={3 * unit}-{4 * unit - 1}"})
    assert r.status_code == 206 and r.content == content[3 * unit : 4 * unit]
    r = await client.get(f"{base}/content", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == content[-10:]  # spans the two files' border
    r = await client.get(f"{base}/files/sub/small.txt", headers={"Range": "bytes=6-9"})
    assert r.status_code == 206 and r.content == b"from"
    r = await client.get(f"{base}/files/big.bin")
    assert r.status_code == 200 and r.content == content[:PACKAGE_BYTES]
    r = await client.head(f"{base}/content")
    assert r.status_code == 200 and r.headers["content-length"] == str(len(content))
    assert r.content == b""
    r = await client.get(f"{base}/content", headers={"Range": f"bytes={len(content)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(content)}"
    r = await client.get(
        f"{base}/content", headers={"Range": "bytes=0-1", "If-Range": '"other-version"'}
    )
    assert r.status_code == 200 and len(r.content) == len(content)


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("/pkg/{h}/files/../../ns.sqlite3", {404}),  # the client normalises; still no file
        ("/pkg/{h}/files/sub/..%2F..%2Fsnapshot.xml", {400}),
        ("/pkg/{h}/files/%2E%2E/%2E%2E/signing.key", {400}),
        ("/pkg/{h}/files/sub%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fsigning.key", {400}),
        ("/pkg/{h}/files//etc/passwd", {400}),
        ("/pkg/{h}/files/sub\\..\\..\\signing.key", {400}),
        ("/pkg/{h}/files/nothere.txt", {404}),
        ("/pkg/{h}/files/snapshot.xml", {404}),
        ("/pkg/../signing.key", {404}),
        ("/pkg/%2E%2E/content", {400}),
        ("/pkg/" + "0" * 64 + "/content", {404}),
        ("/pkg/ABC/content", {400}),
        ("/pkg/{h}/nope", {404}),
    ],
)
async def test_package_paths_never_escape(
    pop: Populated, client: httpx.AsyncClient, path: str, statuses: set[int]
):
    r = await client.get(path.replace("{h}", pop.package.hash))
    assert r.status_code in statuses, (r.status_code, r.text)
    assert b"PRIVATE KEY" not in r.content and b"SQLite" not in r.content


@pytest.mark.parametrize(
    ("header", "status"),
    [("bytes=5-2", 200), ("bytes=0-1,5-9", 200), ("lines=0-1", 200), ("bytes=", 200),
     ("bytes=-0", 416), ("bytes=x-", 200), ("bytes=99999999999999999999-", 200),
     (f"bytes={PACKAGE_BYTES + 21}-", 416)],
)  # fmt: skip
async def test_ranges_the_content_does_not_honour(
    pop: Populated, client: httpx.AsyncClient, header: str, status: int
):
    """The content of several files honours one range; a header it cannot honour gets the
    whole content (RFC 9110 lets a server ignore Range), one past the end a 416."""
    r = await client.get(f"/pkg/{pop.package.hash}/content", headers={"Range": header})
    assert r.status_code == status, r.text
    if status == 200:
        assert r.content == full_content(pop)
    else:
        assert xml(r).tag == "Error"
        assert r.headers["content-range"] == f"bytes */{PACKAGE_BYTES + 21}"


async def test_files_honour_range_if_range_and_multiple_ranges(
    pop: Populated, client: httpx.AsyncClient
):
    big = full_content(pop)[:PACKAGE_BYTES]
    url = f"/pkg/{pop.package.hash}/files/big.bin"
    whole = await client.get(url)
    etag = whole.headers["etag"]
    assert whole.status_code == 200 and whole.content == big and etag.startswith('"')
    r = await client.get(url, headers={"Range": "bytes=100-199", "If-Range": etag})
    assert r.status_code == 206 and r.content == big[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{PACKAGE_BYTES}"
    r = await client.get(url, headers={"Range": "bytes=100-199", "If-Range": '"other"'})
    assert r.status_code == 200 and r.content == big
    r = await client.get(url, headers={"Range": "bytes=0-9,-5"})
    assert r.status_code == 206
    kind, _, boundary = r.headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges" and boundary
    parts = [p for p in r.content.split(b"--" + boundary.encode()) if b"\r\n\r\n" in p]
    got = [(p.split(b"\r\n\r\n", 1)[0], p.split(b"\r\n\r\n", 1)[1][:-2]) for p in parts]
    assert [body for _, body in got] == [big[:10], big[-5:]]
    assert f"bytes 0-9/{PACKAGE_BYTES}".encode() in got[0][0]
    r = await client.get(url, headers={"Range": f"bytes={PACKAGE_BYTES}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{PACKAGE_BYTES}"


async def test_content_of_one_file_is_that_file(pop: Populated, client: httpx.AsyncClient):
    """A package of one file serves its content as that file, ranges and all."""
    src = pop.data_dir.parent / "one-file.bin"
    src.write_bytes(os.urandom(70_000))
    row = repo.add_package(Store(pop.data_dir), src, "OneFile").row
    url = f"/pkg/{row.hash}/content"
    r = await client.get(url, headers={"Range": "bytes=65536-"})
    assert r.status_code == 206 and r.content == src.read_bytes()[65536:]
    assert r.headers["content-range"] == "bytes 65536-69999/70000"
    r = await client.get(url, headers={"Range": "bytes=0-0,-1"})
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges")


# -- status events ----------------------------------------------------------------------


def _event(pop: Populated, state: str = "succeeded", **kw: object) -> EventRecord:
    fields: dict[str, object] = dict(
        event_id=str(uuid.uuid4()),
        computer=pop.computers[0],
        task_id=pop.task_id,
        state=state,
        exit_code=0,
        bytes_multicast=PACKAGE_BYTES,
        bytes_http=21,
        message="done",
        agent_time=time.time(),
    )
    fields.update(kw)
    return EventRecord(**fields)  # type: ignore[arg-type]


async def _wait_processed(data_dir: Path, n: int) -> dict[str, int]:
    store = Store(data_dir)
    try:
        counts = store.queue_counts()
        with within(WAIT_S, f"the background processor to fold {n} events"):
            while counts["processed"] < n:
                await trio.sleep(0.02)
                counts = store.queue_counts()
        return counts
    finally:
        store.close()


async def test_status_event_is_stored_once_and_processed(pop: Populated, client: httpx.AsyncClient):
    first = _event(pop, "downloading", exit_code=None, agent_time=1000.0)
    last = _event(pop, "succeeded", agent_time=1001.0)
    for ev, result in ((first, "stored"), (last, "stored"), (first, "duplicate")):
        r = await client.post("/PostEvent.aspx", content=event_xml(ev))
        assert r.status_code == 200, r.text
        assert xml(r).get("result") == result and xml(r).get("id") == ev.event_id
    reused = _event(pop, "failed", event_id=first.event_id)
    r = await client.post("/status", content=event_xml(reused))
    assert r.status_code == 409
    counts = await _wait_processed(pop.data_dir, 2)
    assert counts == {"events": 2, "processed": 2, "pending": 0, "counted": 2}
    store = Store(pop.data_dir)
    rows = {r.computer: r for r in store.task_status()}
    store.close()
    done = rows[pop.computers[0]]
    assert (done.state, done.exit_code, done.events) == ("succeeded", 0, 2)
    assert (done.bytes_multicast, done.bytes_http) == (PACKAGE_BYTES, 21)
    assert rows[pop.computers[1]].state == "pending"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<Event id="&lol2;"/>"""


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda b: b"", 400),
        (lambda b: b"not xml at all", 400),
        (lambda b: b[:-5], 400),
        (lambda b: BILLION_LAUGHS, 400),
        (lambda b: b.replace(b"<Event", b"<Evnt").replace(b"</Event>", b"</Evnt>"), 400),
        (lambda b: b.replace(b'state="succeeded"', b'state="exploded"'), 400),
        (lambda b: b.replace(b'exitCode="0"', b'exitCode="zero"'), 400),
        (lambda b: b.replace(b'bytesHttp="21"', b'bytesHttp="-1"'), 400),
        (lambda b: b.replace(b'bytesHttp="21"', b'bytesHttp="1' + b"0" * 30 + b'"'), 400),
        (lambda b: b.replace(b' time="', b' time="nan'), 400),
        (lambda b: b.replace(b"done", b"x" * 70_000), 413),
        (lambda b: b.replace(b"done", b"x" * 5_000), 400),
        (lambda b: b.replace(b' id="', b' id="not-a-'), 400),
    ],
)
async def test_bad_status_bodies(pop: Populated, client: httpx.AsyncClient, mutate, status):  # type: ignore[no-untyped-def]
    r = await client.post("/PostEvent.aspx", content=mutate(event_xml(_event(pop))))
    assert r.status_code == status, r.text
    assert xml(r).tag == "Error"


async def test_status_for_unknown_computer_or_task(pop: Populated, client: httpx.AsyncClient):
    r = await client.post(
        "/PostEvent.aspx", content=event_xml(_event(pop, computer=str(uuid.uuid4())))
    )
    assert r.status_code == 403 and "may not post an event" in r.text
    r = await client.post(
        "/PostEvent.aspx", content=event_xml(_event(pop, task_id=str(uuid.uuid4())))
    )
    assert r.status_code == 404 and "not assigned" in r.text


async def test_oversized_chunked_status_body_is_413(client: httpx.AsyncClient):
    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"<" * 1024

    r = await client.post("/PostEvent.aspx", content=body())
    assert r.status_code == 413


# -- malformed parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/GetClientPolicies.aspx", {}, 400),
        ("/GetClientPolicies.aspx", {"guid": "x"}, 400),
        ("/GetClientPolicies.aspx", {"guid": "{" + "z" * 36 + "}"}, 400),
        ("/GetClientPolicies.aspx", {"guid": "\x00" * 36}, 400),
        ("/getPackageInfo.aspx", {"computer": "C", "package": "P", "ip": "1.2.3.4"}, 400),
        ("/getPackageInfo.aspx", {"computer": "{c}", "package": "{p}", "ip": "999.1.1.1"}, 400),
        ("/getPackageInfo.aspx", {"computer": "{c}", "package": "{p}"}, 400),
        ("/getPackageInfo.aspx", {"computer": "{c}", "package": "{p}", "ip": "127.0.0.1",
                                  "totaltime": "-5"}, 400),
        ("/getPackageInfo.aspx", {"computer": "{c}", "package": "{p}", "ip": "127.0.0.1",
                                  "totaltime": "1e9"}, 400),
        ("/getPackageInfo.aspx", {"computer": "{u}", "package": "{p}", "ip": "127.0.0.1"}, 403),
        ("/getPackageInfo.aspx", {"computer": "{c}", "package": "{u}", "ip": "127.0.0.1"}, 404),
        ("/getSnapshot.asp", {}, 400),
        ("/getSnapshot.asp", {"package": "../../signing.key"}, 400),
        ("/getSnapshot.asp", {"package": "{u}"}, 404),
        ("/PostEvent.aspx", {}, 405),
        ("/no/such/page", {}, 404),
    ],
)  # fmt: skip
async def test_malformed_parameters_are_4xx(
    pop: Populated, client: httpx.AsyncClient, path: str, params: dict[str, str], status: int
):
    subst = {"{c}": pop.computers[0], "{p}": pop.package.package_id, "{u}": str(uuid.uuid4())}
    params = {k: subst.get(v, v) for k, v in params.items()}
    r = await client.get(path, params=params)
    assert r.status_code == status, r.text
    assert xml(r).tag == "Error"


# -- package-server mode ------------------------------------------------------------------


async def test_package_server_mode_serves_only_content(pop: Populated):
    app = create_app(pop.data_dir, mode="package-server", site="lab")
    async with running_server(app) as base, httpx.AsyncClient(base_url=base) as c:
        r = await c.get(f"/pkg/{pop.package.hash}/files/sub/small.txt")
        assert r.status_code == 200 and r.content == b"hello from a package\n"
        r = await c.get("/GetClientPolicies.aspx", params={"guid": pop.computers[0]})
        assert r.status_code == 404
        r = await c.post("/PostEvent.aspx", content=b"<Event/>")
        assert r.status_code == 404


async def test_package_server_replicates_from_upstream_and_verifies(
    pop: Populated, url: str, tmp_path: Path
):
    trust = TrustStore.of(load_public_key((pop.data_dir / repo.PUB_NAME).read_bytes()))
    ps_dir = tmp_path / "ps"
    (ps_dir / "packages").mkdir(parents=True)
    app = create_app(ps_dir, mode="package-server", site="lab", upstream=url, trust=trust)
    h = pop.package.hash
    async with running_server(app) as base, httpx.AsyncClient(base_url=base, timeout=20) as c:
        r = await c.get(f"/pkg/{h}/content", headers={"Range": "bytes=65536-"})
        assert r.status_code == 206 and r.content == full_content(pop)[65536:]
        assert (ps_dir / "packages" / h / "files" / "sub" / "small.txt").exists()
        r = await c.get(f"/pkg/{'1' * 64}/content")
        assert r.status_code == 404
    # an upstream whose content does not match its signed snapshot is refused
    (pop.data_dir / "packages" / h / "files" / "big.bin").write_bytes(b"\0" * PACKAGE_BYTES)
    other = tmp_path / "ps2"
    (other / "packages").mkdir(parents=True)
    app = create_app(other, mode="package-server", site="lab", upstream=url, trust=trust)
    async with running_server(app) as base, httpx.AsyncClient(base_url=base, timeout=20) as c:
        r = await c.get(f"/pkg/{h}/files/sub/small.txt")
        assert r.status_code == 404
    assert not (other / "packages" / h).exists()
