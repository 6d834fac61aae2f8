"""The web console over HTTP (httpx against the app): what each page shows, in what order,
escaped, and to whom."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from mcast.fleet import StatusEvent
from mcast.fleet_auth import fingerprint, new_secret
from server_stub import cli
from server_stub.app import create_app
from server_stub.console_auth import COOKIE, admin_token
from server_stub.store import Store, TaskRow
from server_stub.testing import Populated, populate

SESSION = "00c0ffee00c0ffee"
HOSTILE = "<script>alert('tail')</script>"


@dataclass(frozen=True)
class Fleet:
    pop: Populated
    old_task: str  # computers 0, 1 and 2: one succeeded, one failed, one pending
    new_task: str  # computers 0 and 2, created later: one downloading, one pending
    failed_tail: str


def _event(
    guid: str, task: str, state: str, at: float, message: str = "", **kw: int
) -> StatusEvent:
    return StatusEvent(
        str(uuid.uuid4()),
        guid,
        task,
        state,
        kw.get("exit_code"),
        kw.get("bytes_multicast", 0),
        kw.get("bytes_http", 0),
        message,
        at,
    )


def make_fleet(tmp_path: Path, database: str | None = None) -> Fleet:
    """A store with known events: the first task failed on one computer, the newer second
    task has no failure, so "failures first" is not "newest first". ``database``: a
    PostgreSQL URL, or None for SQLite."""
    pop = populate(tmp_path / "ns", computers=3, package_bytes=50_000, database=database)
    a, b, c = pop.computers
    store = Store(pop.data_dir)
    try:
        store.add_site("branch", ["127.1.0.0/16"])
        store.add_pkgserver("branch", "http://127.1.0.5:8081/")
        store.add_computer(b, "build-box")
        mark = time.time()  # the first task was created at or before this
        while time.time() <= mark:  # so the second one is created strictly later
            pass
        new_task = TaskRow(str(uuid.uuid4()), pop.package.package_id, "echo again", "asap",
                           "system", "agent")  # fmt: skip
        store.add_task(new_task, [a, c])
        t0 = time.time() - 60
        tail = f"installing\nERROR: disk full {HOSTILE}\n"
        events = [
            _event(a, pop.task_id, "received", t0),
            _event(a, pop.task_id, "downloaded", t0 + 1,
                   f"downloaded via master in session {SESSION}", bytes_multicast=50_000),
            _event(a, pop.task_id, "succeeded", t0 + 2, "all good", exit_code=0),
            _event(b, pop.task_id, "downloaded", t0 + 1,
                   f"downloaded via joined in session {SESSION} (a note)", bytes_multicast=40_000,
                   bytes_http=10_000),
            _event(b, pop.task_id, "running", t0 + 3, "running setup.exe /q as nobody"),
            _event(b, pop.task_id, "failed", t0 + 4, f"exit code 3\n{tail}", exit_code=3),
            _event(a, new_task.task_id, "downloading", t0 + 5, "locating the package"),
        ]  # fmt: skip
        for ev in events:
            assert store.record_event(ev)
        store.process_events()
    finally:
        store.close()
    return Fleet(pop, pop.task_id, new_task.task_id, tail)


@pytest.fixture
def fleet(tmp_path: Path, ns_database: str | None) -> Fleet:
    """The same fleet on each engine: the console's queries are plain SQL for both."""
    return make_fleet(tmp_path, ns_database)


@pytest.fixture
async def console(fleet: Fleet) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(fleet.pop.data_dir)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


class Text(HTMLParser):
    """The text a person reads on a page (no markup), and the ids and rows of its tables."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.scripts = 0
        self.rows: dict[str, list[list[str]]] = {}  # table id -> rows of cell texts
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.rows[self._table] = []
        if tag == "tr" and self._table is not None:
            self.rows[self._table].append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.parts))


def parse(resp: httpx.Response) -> Text:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    page = Text()
    page.feed(resp.text)
    return page


def table(page: Text, name: str) -> list[dict[str, str]]:
    header, *rows = page.rows[name]
    return [dict(zip(header, r, strict=True)) for r in rows]


async def test_overview_lists_failures_first_and_counts_per_state(
    fleet: Fleet, console: httpx.AsyncClient
) -> None:
    resp = await console.get("/console")
    page = parse(resp)
    a, b, c = fleet.pop.computers
    # the failed job, with its computer's name, exit code and output tail
    failures = table(page, "failures-table")
    assert len(failures) == 1
    assert failures[0]["computer"] == "build-box"
    assert failures[0]["exit code"] == "3"
    assert "ERROR: disk full" in failures[0]["output tail"]
    assert f'href="/console/computers/{b}"' in resp.text
    # failures come before the tasks on the page, and the failing task before the newer one
    assert resp.text.index('id="failures"') < resp.text.index('id="tasks"')
    tasks = table(page, "tasks-table")
    assert [t["task"] for t in tasks] == [fleet.old_task[:8], fleet.new_task[:8]]
    old, new = tasks
    assert (old["computers"], old["succeeded"], old["failed"], old["pending"]) == (
        "3",
        "1",
        "1",
        "1",
    )
    assert (old["running"], old["downloading"]) == ("0", "0")
    assert (new["computers"], new["downloading"], new["pending"], new["failed"]) == (
        "2",
        "1",
        "1",
        "0",
    )
    assert "1 failed job(s)" in page.text
    # the package and the expiry of its signed snapshot
    packages = table(page, "packages-table")
    assert [p["name"] for p in packages] == ["demo"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", packages[0]["snapshot expires"])
    # every computer, linked to its history
    assert {r["computer"] for r in table(page, "computers-table")} == {a, b, c}


async def test_output_tail_with_markup_is_text(fleet: Fleet, console: httpx.AsyncClient) -> None:
    b = fleet.pop.computers[1]
    for path in ("/console", f"/console/computers/{b}"):
        resp = await console.get(path)
        page = parse(resp)
        assert page.scripts == 0, path  # the tail's <script> is not an element
        assert HOSTILE in page.text, path  # a person reads it as it was sent
        assert "&lt;script&gt;alert(&#39;tail&#39;)&lt;/script&gt;" in resp.text, path
        csp = resp.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script" not in csp


async def test_computer_history_shows_each_event(fleet: Fleet, console: httpx.AsyncClient) -> None:
    b = fleet.pop.computers[1]
    page = parse(await console.get(f"/console/computers/{b}"))
    history = table(page, "history-table")
    assert [e["state"] for e in history] == ["failed", "running", "downloaded"]  # newest first
    assert [e["exit code"] for e in history] == ["3", "", ""]
    assert history[0]["message or output tail"] == f"exit code 3\n{fleet.failed_tail}".strip()
    assert history[2]["multicast"] == "39.1 KiB" and history[2]["HTTP"] == "9.8 KiB"
    assert all(re.fullmatch(r"\d{4}-.* UTC", e["time (agent)"]) for e in history)
    jobs = table(page, "jobs-table")
    assert [(j["state"], j["exit code"]) for j in jobs] == [("failed", "3")]
    assert "build-box" in page.text
    # GUIDs in other spellings find the same computer; an unknown one is a 404 page
    upper = await console.get(f"/console/computers/{{{b.upper()}}}")
    assert table(parse(upper), "history-table") == history
    unknown = await console.get(f"/console/computers/{uuid.uuid4()}")
    assert unknown.status_code == 404 and "No computer" in unknown.text


async def test_sites_page(console: httpx.AsyncClient) -> None:
    page = parse(await console.get("/console/sites"))
    sites = {s["site"]: s for s in table(page, "sites-table")}
    assert set(sites) == {"branch", "lab"}
    assert sites["branch"]["subnets"] == "127.1.0.0/16"
    assert sites["branch"]["package servers"] == "http://127.1.0.5:8081/"
    assert sites["lab"]["package servers"].startswith("none")


async def test_sessions_page_from_agent_reports(fleet: Fleet, console: httpx.AsyncClient) -> None:
    a, b, _c = fleet.pop.computers
    resp = await console.get("/console/sessions")
    page = parse(resp)
    (session,) = table(page, "sessions-table")
    assert session["session"] == SESSION
    assert session["master"] == a[:8] and session["joined"] == b[:8]
    assert session["bytes by multicast"] == "87.9 KiB"  # 50,000 + 40,000
    assert "master 1" in page.text and "joined 1" in page.text
    (busy,) = table(page, "downloading-table")
    assert busy["last report"] == "locating the package"
    assert busy["task"] == fleet.new_task[:8]


async def test_every_page_refreshes_itself_without_script(console: httpx.AsyncClient) -> None:
    for path in ("/console", "/console/sites", "/console/sessions"):
        resp = await console.get(path)
        assert re.search(r'<meta http-equiv="refresh" content="\d+">', resp.text), path
        assert "<script" not in resp.text, path
        assert resp.headers["cache-control"] == "no-store"


async def test_console_answers_only_allowed_addresses(fleet: Fleet) -> None:
    app = create_app(fleet.pop.data_dir, console_allow=("127.0.0.2/32",))
    for host, status in (("127.0.0.1", 403), ("127.0.0.2", 200)):
        transport = httpx.ASGITransport(app=app, client=(host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            for path in ("/console", "/console/sites", "/console/sessions",
                         f"/console/computers/{fleet.pop.computers[0]}"):  # fmt: skip
                resp = await c.get(path)
                assert resp.status_code == status, (host, path)
                if status == 403:
                    assert "build-box" not in resp.text and "disk full" not in resp.text


async def test_console_is_read_only(console: httpx.AsyncClient) -> None:
    for path in ("/console", "/console/sites"):
        resp = await console.post(path, content=b"x")
        assert resp.status_code == 405


# -- the administrator -------------------------------------------------------------------


def cookie_header(session: str | None) -> dict[str, str]:
    """The Cookie header a browser sends with the console's session (none: no header)."""
    return {"Cookie": f"{COOKIE}={session}"} if session else {}


def _csrf(html: str) -> str:
    found = re.findall(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no form with a CSRF token on the page"
    return found[0]


async def test_approve_needs_the_logged_in_admin_and_the_csrf_token(
    fleet: Fleet, console: httpx.AsyncClient
) -> None:
    data = fleet.pop.data_dir
    guid, secret = str(uuid.uuid4()), new_secret()
    store = Store(data)
    try:
        assert store.request_enrolment(guid, secret, 10) == "pending"
    finally:
        store.close()

    def state() -> str:
        s = Store(data)
        try:
            return {g: st for g, _n, st, _k in s.computers()}[guid]
        finally:
            s.close()

    approve = f"/console/computers/{guid}/approve"
    # a viewer sees the request and its fingerprint, but no form to approve it
    page = await console.get("/console")
    (row,) = table(parse(page), "enrolments-table")
    assert (row["computer"], row["fingerprint"]) == (guid, fingerprint(secret))
    assert 'name="csrf"' not in page.text and "Log in as administrator" in page.text
    assert (await console.post(approve, data={"csrf": "0" * 64})).status_code == 403
    # no token yet, then a wrong token: no session
    token_hex = "ab" * 32
    assert (await console.post("/console/login", data={"token": token_hex})).status_code == 403
    token = admin_token(data)
    wrong = await console.post("/console/login", data={"token": token_hex})
    assert wrong.status_code == 403 and COOKIE not in wrong.cookies
    assert state() == "pending"

    login = await console.post("/console/login", data={"token": token.hex()})
    assert login.status_code == 303 and login.headers["location"] == "/console"
    set_cookie = login.headers["set-cookie"]
    assert f"{COOKIE}=" in set_cookie
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/console"):
        assert attribute.lower() in set_cookie.lower(), set_cookie
    assert "secure" not in set_cookie.lower()  # plain http here; https sets Secure
    session = login.cookies[COOKIE]
    console.cookies.clear()
    as_admin = {"headers": cookie_header(session)}

    page = await console.get("/console", **as_admin)
    csrf = _csrf(page.text)
    # the session without the form's token, with another token, a forged session: refused
    for cookie, form in (
        (session, {}),
        (session, {"csrf": "0" * 64}),
        (session[:-1] + ("0" if session[-1] != "0" else "1"), {"csrf": csrf}),
        (None, {"csrf": csrf}),
    ):
        resp = await console.post(approve, data=form, headers=cookie_header(cookie))
        assert resp.status_code == 403, (cookie, form)
        assert state() == "pending"
    done = await console.post(approve, data={"csrf": csrf}, **as_admin)
    assert done.status_code == 303 and state() == "approved"
    assert "enrolments-table" not in (await console.get("/console")).text

    # a new token ends the session
    admin_token(data, new=True)
    page = await console.get("/console", **as_admin)
    assert 'name="csrf"' not in page.text and "Log in as administrator" in page.text


async def test_logout_and_login_page(fleet: Fleet, console: httpx.AsyncClient) -> None:
    no_token = await console.get("/console/login")
    assert "mcast-ns admin token" in no_token.text and 'type="password"' not in no_token.text
    token = admin_token(fleet.pop.data_dir)
    form = await console.get("/console/login")
    assert 'type="password"' in form.text
    assert 'http-equiv="refresh"' not in form.text  # a reload would wipe what is typed
    session = (await console.post("/console/login", data={"token": token.hex()})).cookies[COOKIE]
    console.cookies.clear()
    csrf = _csrf((await console.get("/console", headers=cookie_header(session))).text)
    out = await console.post("/console/logout", data={"csrf": csrf}, headers=cookie_header(session))
    assert out.status_code == 303
    assert (
        f'{COOKIE}=""' in out.headers["set-cookie"]
        and "max-age=0" in out.headers["set-cookie"].lower()
    )


def test_admin_token_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "ns"
    assert cli.main(["init", "--data", str(data)]) == 0
    capsys.readouterr()
    printed = []
    for args in ([], [], ["--new"]):
        assert cli.main(["admin", "token", "--data", str(data), *args]) == 0
        printed.append(capsys.readouterr().out.split("\t")[0])
    assert printed[0] == printed[1] != printed[2]
    assert bytes.fromhex(printed[2]) == admin_token(data)
    assert (data / "console.token").stat().st_mode & 0o777 == 0o600
