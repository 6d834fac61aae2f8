"""The per-site discovery key and the fleet-session settings in the policy the server hands
out (``GetClientPolicies.aspx``): one random key per site, found by the agent's address as
getPackageInfo finds the site, one server-wide key for addresses in no site, never a
package's session key; bad setting values are refused by ``settings set``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mcast import fleet
from server_stub.app import create_app
from server_stub.store import Store, StoreError
from server_stub.testing import Populated, populate, running_server


@pytest.fixture
def pop(tmp_path: Path, ns_database: str | None) -> Populated:
    pop = populate(tmp_path / "ns", computers=1, subnet="127.0.0.0/8", database=ns_database)
    store = Store(pop.data_dir)
    try:
        store.add_site("branch", ["198.18.5.0/24"])
    finally:
        store.close()
    return pop


@pytest.fixture
async def client(pop: Populated) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_server(create_app(pop.data_dir)) as base,
        pop.client(base, timeout=10) as c,
    ):
        yield c


async def _policy(client: httpx.AsyncClient, guid: str, ip: str | None) -> fleet.Policy:
    params = {"guid": guid} | ({"ip": ip} if ip is not None else {})
    resp = await client.get("/GetClientPolicies.aspx", params=params)
    assert resp.status_code == 200, resp.text
    return fleet.parse_policy(resp.content)


async def test_the_discovery_key_is_per_site(pop: Populated, client: httpx.AsyncClient) -> None:
    guid = pop.computers[0]
    lab = (await _policy(client, guid, "127.0.0.5")).discovery_key
    lab_again = (await _policy(client, guid, "127.9.9.9")).discovery_key
    branch = (await _policy(client, guid, "198.18.5.7")).discovery_key
    nowhere = (await _policy(client, guid, "192.0.2.7")).discovery_key
    nowhere_too = (await _policy(client, guid, "192.0.2.1")).discovery_key
    assert lab is not None and branch is not None and nowhere is not None
    assert len(lab) == len(branch) == len(nowhere) == 32
    assert lab == lab_again  # every agent of a site gets the same key
    assert nowhere == nowhere_too  # one server-wide key for addresses in no site
    assert len({lab, branch, nowhere}) == 3
    assert pop.package.session_key not in (lab.hex(), branch.hex(), nowhere.hex())
    # without ip= the server uses the address the agent connected from (loopback: lab)
    assert (await _policy(client, guid, None)).discovery_key == lab


async def test_the_discovery_keys_survive_a_restart(pop: Populated) -> None:
    keys = []
    for _ in range(2):
        async with (
            running_server(create_app(pop.data_dir)) as base,
            pop.client(base, timeout=10) as c,
        ):
            keys.append((await _policy(c, pop.computers[0], "198.18.5.1")).discovery_key)
    assert keys[0] == keys[1] is not None


async def test_a_bad_ip_is_refused(pop: Populated, client: httpx.AsyncClient) -> None:
    resp = await client.get(
        "/GetClientPolicies.aspx", params={"guid": pop.computers[0], "ip": "not-an-ip"}
    )
    assert resp.status_code == 400


async def test_fleet_settings_reach_the_policy(pop: Populated, client: httpx.AsyncClient) -> None:
    store = Store(pop.data_dir)
    try:
        for key, value in [("multicastHoldSecs", "5"), ("minSessionKBps", "0"),
                           ("peerCacheHours", "3"), ("peerCacheMaxMB", "100")]:  # fmt: skip
            store.set_setting(key, value)
    finally:
        store.close()
    s = (await _policy(client, pop.computers[0], "127.0.0.1")).settings
    assert (s.multicast_hold_secs, s.min_session_kbps, s.peer_cache_hours,
            s.peer_cache_max_mb) == (5, 0, 3, 100)  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"),
    [("multicastHoldSecs", "61"), ("multicastHoldSecs", "-1"), ("minSessionKBps", "x"),
     ("peerCacheHours", "-1"), ("peerCacheMaxMB", "1e3")],
)  # fmt: skip
def test_bad_setting_values_are_refused(pop: Populated, key: str, value: str) -> None:
    store = Store(pop.data_dir)
    try:
        with pytest.raises(StoreError):
            store.set_setting(key, value)
        assert store.settings()[key] == fleet.SETTING_DEFAULTS[key]
    finally:
        store.close()
