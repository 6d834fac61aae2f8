"""Discovery rules: join, start or wait; races settle on one session and the limit holds."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mcast.discovery import (
    Action,
    Claim,
    SessionTable,
    claim_outcome,
    data_channel,
    decide,
    election_key,
)
from mcast.udp import DISCOVERY_GROUP, check_endpoint
from mcast.wire import Announce

H1, H2 = b"\x01" * 32, b"\x02" * 32


def announce(session: int, package: bytes, claiming: bool = False, complete: bool = False,
             rank: int = 0, verified: int = 0) -> Announce:
    return Announce(session, package, 1, 1432, 16, 100, 10**8, "239.255.1.1", 47000, 0,
                    False, 0, 0, claiming, complete, rank, verified)  # fmt: skip


def test_join_an_existing_session_for_the_package():
    t = SessionTable()
    t.heard(announce(5, H1), 0.0)
    action, heard = decide(t, H1, 1, 0.1)
    assert action is Action.JOIN and heard is not None and heard.announce.session == 5


def test_start_while_under_the_limit_wait_at_it():
    t = SessionTable()
    assert decide(t, H1, 1, 0.0)[0] is Action.START
    t.heard(announce(5, H2), 0.0)
    assert decide(t, H1, 1, 0.1)[0] is Action.WAIT
    assert decide(t, H1, 2, 0.1)[0] is Action.START


def test_sessions_expire_and_end():
    t = SessionTable(ttl=1.0)
    t.heard(announce(5, H2), 0.0)
    assert decide(t, H1, 1, 0.5)[0] is Action.WAIT
    assert decide(t, H1, 1, 1.5)[0] is Action.START  # not heard for longer than the TTL
    t.heard(announce(6, H2), 2.0)
    t.ended(6)
    assert decide(t, H1, 1, 2.1)[0] is Action.START


def test_an_established_session_beats_a_claim_whatever_its_id():
    t = SessionTable()
    t.heard(announce(999, H1), 1.1)  # a running session, heard during our claim
    t.heard(announce(3, H1, claiming=True, complete=True, rank=3), 1.0)  # ours: the best claim
    outcome, heard = claim_outcome(t, 3, H1, max_sessions=5, now=1.2)
    assert outcome is Claim.JOIN and heard is not None and heard.announce.session == 999


def test_a_cache_holder_wins_over_a_master_that_must_fetch_whatever_the_ids():
    """A complete copy beats a package server that must fetch; rank beats verified units."""
    claims = [announce(1, H1, True, rank=3, verified=900),  # package server, 900 units
              announce(2, H1, True, rank=0, verified=5),  # wireless, 5 units
              announce(9, H1, True, complete=True, rank=1)]  # laptop with the package cached
    outcomes = {}
    for mine in (1, 2, 9):
        t = SessionTable()
        for a in claims:
            t.heard(a, 0.0)
        outcomes[mine] = claim_outcome(t, mine, H1, 1, 0.3)[0]
        assert t.for_package(H1, 0.3).announce.session == 9  # a newcomer joins the winner
    assert outcomes == {1: Claim.JOIN, 2: Claim.JOIN, 9: Claim.WON}
    t = SessionTable()
    t.heard(announce(4, H1, True, rank=2, verified=10), 0.0)
    t.heard(announce(5, H1, True, rank=1, verified=999), 0.0)
    assert claim_outcome(t, 5, H1, 1, 0.1)[0] is Claim.JOIN  # rank first, then units


@settings(max_examples=300, deadline=None)
@given(
    claims=st.lists(
        st.tuples(st.integers(1, 2**63), st.sampled_from([H1, H2]), st.booleans(),
                  st.integers(0, 3), st.integers(0, 3)),
        min_size=1,
        max_size=6,
        unique_by=lambda c: c[0],
    ),
    limit=st.integers(1, 3),
    seed=st.integers(0, 2**32),
)
def test_simultaneous_claims_settle_on_one_session_per_package_within_the_limit(
    claims, limit, seed
):
    """Every claimant hears every other claim (in any order); the outcomes must agree."""
    rnd = random.Random(seed)
    won = []
    ann = {c[0]: announce(c[0], c[1], True, c[2], c[3], c[4]) for c in claims}
    for mine, package, *_ in claims:
        t = SessionTable()
        start = 10.0
        order = list(ann.values())
        rnd.shuffle(order)
        for i, a in enumerate(order):
            t.heard(a, start + 0.001 * i)  # all heard during the claim
        outcome, _ = claim_outcome(t, mine, package, limit, start + 0.2)
        if outcome is Claim.WON:
            won.append((mine, package))
    packages = [p for _, p in won]
    assert len(packages) == len(set(packages))  # never two sessions for one package
    assert len(won) <= limit
    assert won  # someone always wins: the best claim has nobody that beats it
    best = max(ann.values(), key=election_key)
    assert (best.session, best.package_hash) in won


def test_data_channels_are_safe_and_clear_of_discovery():
    for i in range(2000):
        group, _port = data_channel(i.to_bytes(32, "big"))
        check_endpoint(group, "127.0.0.1")
        assert group != DISCOVERY_GROUP and not group.endswith((".0", ".255"))
    assert data_channel(H1) == data_channel(H1)
    groups = {data_channel(bytes([a, b]) * 16)[0] for a, b in itertools.product(range(8), repeat=2)}
    assert len(groups) > 40  # different packages mostly get different groups
