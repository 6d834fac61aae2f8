"""Property tests of every parser of client input: only the declared 4xx errors escape."""

from __future__ import annotations

import uuid
import warnings
from dataclasses import replace
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():  # starlette prefers httpx2 for its TestClient; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from mcast.errors import ExitCode, McastError
from mcast.fleet import clean_message
from server_stub.app import _one_range, create_app
from server_stub.docs import (
    BadRequest,
    agent_settings,
    event_xml,
    parse_event_untrusted,
    parse_guid,
    parse_ip,
    parse_nonneg_int,
)
from server_stub.replica import ReplicaError
from server_stub.repo import RepoError
from server_stub.store import EventRecord, StoreError
from server_stub.testing import populate


@given(st.binary(max_size=2000))
def test_event_parser_raises_only_bad_request(body: bytes):
    try:
        ev = parse_event_untrusted(body)
    except BadRequest as exc:
        assert 400 <= exc.status < 500
    else:
        assert isinstance(ev, EventRecord)


@given(
    st.uuids(), st.uuids(), st.uuids(),
    st.sampled_from(["downloading", "succeeded", "failed"]),
    st.none() | st.integers(-(2**31), 2**31),
    st.integers(0, 2**62), st.integers(0, 2**62),
    st.text(max_size=300).filter(lambda s: "\r" not in s),
    st.floats(0, 2e9),
)  # fmt: skip
def test_event_round_trip(e, c, t, state, code, bmc, bhttp, msg, when):  # type: ignore[no-untyped-def]
    ev = EventRecord(str(e), str(c), str(t), state, code, bmc, bhttp, msg, when)
    # text XML 1.0 cannot carry (control characters) is cleaned by the builder, nothing else
    assert parse_event_untrusted(event_xml(ev)) == replace(ev, message=clean_message(msg))


@given(st.text(max_size=60), st.integers(0, 10**12))
def test_range_parser(header: str, size: int):
    rng = _one_range(header, size)
    assert rng is None or rng == 416 or 0 <= rng[0] < rng[1] <= size


@given(st.text(max_size=60))
def test_query_parsers(text: str):
    for parse in (
        lambda s: parse_guid(s, "guid"),
        parse_ip,
        lambda s: parse_nonneg_int(s, "n"),
    ):
        try:
            parse(text)
        except BadRequest as exc:
            assert exc.status == 400


def test_guid_spellings_normalise():
    g = uuid.uuid4()
    for spelling in (str(g), str(g).upper(), "{" + str(g) + "}"):
        assert parse_guid(spelling, "guid") == str(g)
    with pytest.raises(BadRequest):
        parse_guid(g.hex, "guid")  # 32 digits without dashes is not accepted


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    pop = populate(tmp_path_factory.mktemp("fuzz") / "ns", computers=1, package_bytes=1000)
    return TestClient(create_app(pop.data_dir), raise_server_exceptions=False)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["/GetClientPolicies.aspx", "/getPackageInfo.aspx", "/getSnapshot.asp"]),
    st.dictionaries(
        st.sampled_from(["guid", "computer", "package", "ip", "totaltime", "x"]),
        st.text(max_size=50),
        max_size=5,
    ),
)
def test_no_query_string_makes_a_500(http: TestClient, path: str, params: dict[str, str]):
    r = http.get(path, params=params)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_no_package_path_makes_a_500(http: TestClient, tail: str):
    r = http.get("/pkg/" + quote(tail, safe="/%.\\"))
    assert r.status_code < 500, (r.status_code, r.text)


def test_server_errors_belong_to_the_one_family():
    table = [
        (BadRequest("x"), ExitCode.USAGE, True),
        (StoreError("x"), ExitCode.USAGE, True),
        (RepoError("x"), ExitCode.IO, False),
        (ReplicaError("x"), ExitCode.NET, False),
    ]
    for exc, code, value_error in table:
        assert isinstance(exc, McastError) and exc.exit_code == code, exc
        assert isinstance(exc, ValueError) == value_error, exc
    assert BadRequest("x", 413).status == 413


def test_a_setting_stored_before_values_were_checked_takes_its_default():
    stored = {"maxSessionsPerSubnet": "0", "minMulticastSize": "5", "serverSite": "hq"}
    settings = agent_settings(stored)
    assert settings.max_sessions_per_subnet == 2 and settings.min_multicast_size == 5
