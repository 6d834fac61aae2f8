"""The NAK schedule alone, over a fake view of the blocks: back-off, suppression, re-NAK."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mcast.nak_schedule import NakSchedule, NakState, backoff_delay
from mcast.wire import NakEntry

BACKOFF, RETRY = 0.02, 0.08


class Blocks:
    def __init__(self, n: int, k: int = 10) -> None:
        self.needs = dict.fromkeys(range(n), k)
        self.horizons = dict.fromkeys(range(n), 0)
        self.finished: set[int] = set()

    def done(self, b: int) -> bool:
        return b in self.finished

    def need(self, b: int) -> int:
        return self.needs[b]

    def horizon(self, b: int) -> int:
        return self.horizons[b]


def make(n: int = 4, seed: int = 0) -> tuple[NakSchedule, Blocks]:
    blocks = Blocks(n)
    return NakSchedule(blocks, random.Random(seed), backoff=BACKOFF, retry=RETRY), blocks


def test_nothing_is_due_before_the_sender_passes_a_block():
    naks, _ = make()
    assert naks.deadline() is None
    assert naks.fire(10.0) == []
    assert naks.state(0) is NakState.IDLE


def test_a_passed_block_is_naked_after_a_random_backoff_then_waits():
    naks, blocks = make()
    blocks.horizons[0] = 3
    naks.advance(1, 1.0)
    due = naks.deadline()
    assert due is not None and 1.0 <= due <= 1.0 + BACKOFF
    assert naks.fire(due - 1e-9) == []
    assert naks.fire(due) == [NakEntry(0, 10, 3)]
    assert naks.state(0) is NakState.WAIT
    assert naks.deadline() == due + RETRY


def test_the_frontier_only_moves_forward_and_skips_complete_blocks():
    naks, blocks = make()
    blocks.finished.add(1)
    naks.advance(3, 0.0)
    naks.advance(1, 0.0)
    assert naks.frontier == 3
    assert [naks.state(b) for b in range(4)] == [
        NakState.BACKOFF, NakState.IDLE, NakState.BACKOFF, NakState.IDLE,
    ]  # fmt: skip


def test_an_equivalent_nak_heard_suppresses_ours():
    naks, blocks = make()
    blocks.horizons[0] = 2
    naks.advance(1, 0.0)
    assert naks.heard([NakEntry(0, 10, 2)], 0.001) == 1
    assert naks.state(0) is NakState.WAIT
    assert naks.fire(0.05) == []  # our own NAK never goes out
    assert naks.deadline() == 0.001 + RETRY


def test_a_nak_that_asks_for_less_or_saw_more_does_not_suppress():
    naks, blocks = make()
    blocks.horizons[0] = 2
    naks.advance(1, 0.0)
    assert naks.heard([NakEntry(0, 9, 2)], 0.0) == 0  # asks for fewer than we need
    assert naks.heard([NakEntry(0, 10, 3)], 0.0) == 0  # saw repairs we did not
    assert naks.heard([NakEntry(3, 10, 0), NakEntry(2**31, 1, 0)], 0.0) == 0  # not pending
    assert naks.state(0) is NakState.BACKOFF


def test_a_waiting_block_that_makes_no_progress_is_naked_again():
    naks, _ = make()
    naks.advance(1, 0.0)
    first = naks.fire(1.0)
    assert first == [NakEntry(0, 10, 0)]
    assert naks.fire(1.0 + RETRY) == []  # WAIT ran out: back to BACKOFF
    assert naks.state(0) is NakState.BACKOFF
    again = naks.deadline()
    assert again is not None and again <= 1.0 + RETRY + BACKOFF
    assert naks.fire(again) == [NakEntry(0, 10, 0)]


def test_progress_pushes_the_re_nak_back():
    naks, _ = make()
    naks.advance(1, 0.0)
    naks.fire(1.0)
    naks.progressed(0, 1.05)
    assert naks.deadline() == 1.05 + RETRY
    assert naks.fire(1.0 + RETRY) == [] and naks.state(0) is NakState.WAIT


def test_progress_does_not_hurry_or_delay_a_backoff():
    naks, _ = make()
    naks.advance(1, 0.0)
    due = naks.deadline()
    naks.progressed(0, 0.001)
    assert naks.deadline() == due and naks.state(0) is NakState.BACKOFF


def test_a_block_with_nothing_missing_is_not_naked():
    naks, blocks = make()
    naks.advance(1, 0.0)
    blocks.needs[0] = 0  # e.g. enough parity held, waiting for a decode
    assert naks.fire(1.0) == []
    assert naks.state(0) is NakState.WAIT


def test_a_completed_block_is_forgotten():
    naks, _ = make()
    naks.advance(2, 0.0)
    naks.forget(0)
    assert naks.state(0) is NakState.IDLE
    assert [e.block for e in naks.fire(1.0)] == [1]
    naks.clear()
    assert naks.deadline() is None


ops = st.lists(
    st.tuples(
        st.sampled_from(["advance", "progress", "heard", "forget", "fire"]),
        st.integers(0, 5),
        st.floats(0, 0.2),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, seed=st.integers(0, 1000))
def test_the_deadline_is_the_earliest_live_timer_and_forgotten_blocks_stay_quiet(ops, seed):
    naks, blocks = make(6, seed)
    now, forgotten = 0.0, set()
    for op, b, dt in ops:
        now += dt
        if op == "advance":
            naks.advance(b, now)
        elif op == "progress":
            naks.progressed(b, now)
        elif op == "heard":
            naks.heard([NakEntry(b, 10, 0)], now)
        elif op == "forget":
            naks.forget(b)
            blocks.finished.add(b)
            forgotten.add(b)
        else:
            assert not {e.block for e in naks.fire(now)} & forgotten
        armed = [due for _, due in naks._armed.values()]
        assert naks.deadline() == (min(armed) if armed else None)


@settings(max_examples=200, deadline=None)
@given(x=st.floats(0, 1, exclude_max=True), group=st.integers(1, 10**6))
def test_the_backoff_stays_in_a_window_that_grows_with_the_decades_of_the_group(x, group):
    window = BACKOFF * max(1.0, math.log10(group))
    delay = backoff_delay(x, BACKOFF, group)
    assert 0.0 <= delay < window * (1 + 1e-9)
    assert backoff_delay(0.0, BACKOFF, group) == 0.0


def naks_for_one_block(listeners: int, seed: int, delay: float = 0.0005) -> int:
    """``listeners`` receivers that all miss the same shards of block 0 and hear each
    other's NAKs ``delay`` after they go out: how many NAKs the group sends."""
    schedules = []
    for n in range(listeners):
        blocks = Blocks(1)
        naks = NakSchedule(
            blocks, random.Random(seed * 100_003 + n), backoff=BACKOFF, retry=RETRY,
            group=listeners,
        )  # fmt: skip
        naks.advance(1, 0.0)
        schedules.append(naks)
    sent: list[float] = []
    for due, naks in sorted(((s.deadline() or 0.0, s) for s in schedules), key=lambda t: t[0]):
        heard = [t for t in sent if t + delay <= due]
        if heard:
            naks.heard([NakEntry(0, 10, 0)], heard[0] + delay)
        if naks.fire(due):
            sent.append(due)
    return len(sent)


def test_naks_per_block_grow_with_the_log_of_the_group_not_with_the_group():
    """With a uniform back-off of 20 ms and 0.5 ms to be heard, a thousand receivers send
    about 26 NAKs for a block that ten send 1-2 for; scaled to the group, a handful."""
    seeds = range(20)
    small = sum(naks_for_one_block(10, s) for s in seeds) / len(seeds)
    large = sum(naks_for_one_block(1000, s) for s in seeds) / len(seeds)
    assert large <= 3 * max(small, 1.0)
    assert large <= 6


def test_a_lone_receiver_still_naks_within_the_configured_backoff():
    naks, _ = make()
    naks.advance(1, 0.0)
    due = naks.deadline()
    assert due is not None and 0.0 <= due < BACKOFF


# -- the retry time follows how fast repairs answer ----------------------------------------


def _nak_then_answer(naks: NakSchedule, b: int, at: float, answer_after: float) -> None:
    naks.advance(b + 1, at)
    due = naks.deadline()
    assert due is not None
    assert [e.block for e in naks.fire(due)] == [b]
    naks.progressed(b, due + answer_after)  # its repairs arrive and complete it
    naks.forget(b)


def test_the_retry_starts_at_its_ceiling_and_falls_to_how_fast_repairs_answer():
    blocks = Blocks(40)
    naks = NakSchedule(blocks, random.Random(1), backoff=BACKOFF, retry=RETRY, min_retry=0.005)
    assert naks.retry_after() == RETRY  # nothing measured: the conservative wait
    for b in range(30):
        _nak_then_answer(naks, b, b * 1.0, 0.002)
    assert 0.005 <= naks.retry_after() < 0.012  # answers in ~2 ms: a lost repair costs ~10 ms
    # a block NAKed now whose repairs are lost is NAKed again after that short wait
    naks.advance(31, 40.0)
    first = naks.deadline()
    assert first is not None and [e.block for e in naks.fire(first)] == [30]
    wait_over = naks.deadline()
    assert wait_over is not None and abs(wait_over - first - naks.retry_after()) < 1e-9


def test_slow_answers_lengthen_the_retry_again_up_to_its_ceiling():
    blocks = Blocks(60)
    naks = NakSchedule(blocks, random.Random(2), backoff=BACKOFF, retry=RETRY, min_retry=0.005)
    for b in range(20):
        _nak_then_answer(naks, b, b * 1.0, 0.002)
    fast = naks.retry_after()
    for b in range(20, 50):
        _nak_then_answer(naks, b, b * 1.0, 0.5)  # a queue builds up somewhere
    assert naks.retry_after() == RETRY > fast


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=40), st.floats(0.001, 0.05))
def test_the_retry_stays_between_its_floor_and_its_ceiling(answers: list[float], floor: float):
    blocks = Blocks(len(answers) + 1)
    naks = NakSchedule(blocks, random.Random(3), backoff=BACKOFF, retry=RETRY, min_retry=floor)
    for b, after in enumerate(answers):
        _nak_then_answer(naks, b, b * 10.0, after)
        assert min(floor, RETRY) <= naks.retry_after() <= RETRY


def test_without_a_floor_the_retry_is_fixed():
    naks, _blocks = make(n=10)
    for b in range(8):
        _nak_then_answer(naks, b, b * 1.0, 0.001)
    assert naks.retry_after() == RETRY
