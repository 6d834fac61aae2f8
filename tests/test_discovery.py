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
)
from mcast.udp import DISCOVERY_GROUP, check_endpoint
from mcast.wire import Announce

H1, H2 = b"\x01" * 32, b"\x02" * 32


def announce(session: int, package: bytes) -> Announce:
    return Announce(session, package, 1, 1432, 16, 100, 10**8, "239.255.1.1", 47000, 0,
                    False, 0, 0)  # fmt: skip


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
    t.heard(announce(999, H1), 0.0)  # heard before we claimed
    t.heard(announce(3, H1), 1.0)  # our own claim, id 3
    outcome, heard = claim_outcome(t, 3, H1, claim_started=1.0, max_sessions=5, now=1.2)
    assert outcome is Claim.JOIN and heard is not None and heard.announce.session == 999


@settings(max_examples=300, deadline=None)
@given(
    claims=st.lists(
        st.tuples(st.integers(1, 2**63), st.sampled_from([H1, H2])),
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
    for mine, package in claims:
        t = SessionTable()
        start = 10.0
        order = claims[:]
        rnd.shuffle(order)
        for i, (sid, pkg) in enumerate(order):
            t.heard(announce(sid, pkg), start + 0.001 * i)  # all heard during the claim
        outcome, _ = claim_outcome(t, mine, package, start - 0.0001, limit, start + 0.2)
        if outcome is Claim.WON:
            won.append((mine, package))
    packages = [p for _, p in won]
    assert len(packages) == len(set(packages))  # never two sessions for one package
    assert len(won) <= limit
    assert won  # someone always wins: the lowest id has nobody that beats it


def test_data_channels_are_safe_and_clear_of_discovery():
    for i in range(2000):
        group, _port = data_channel(i.to_bytes(32, "big"))
        check_endpoint(group, "127.0.0.1")
        assert group != DISCOVERY_GROUP and not group.endswith((".0", ".255"))
    assert data_channel(H1) == data_channel(H1)
    groups = {data_channel(bytes([a, b]) * 16)[0] for a, b in itertools.product(range(8), repeat=2)}
    assert len(groups) > 40  # different packages mostly get different groups
