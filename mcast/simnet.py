"""A virtual-time multicast LAN for driving sans-I/O cores: the test and simulation harness.

Every datagram a node sends is fanned out to every other started node, each copy lost,
duplicated or delayed (jitter, hence reordering) independently by the link model. Copies
that arrive at the same instant (no jitter) share one queue entry that names their
recipients, so a datagram to ten thousand receivers costs one heap push, not ten thousand. Nodes are
anything with the core interface (``receive_datagram``, ``handle_timer``,
``datagrams_to_send``, ``get_timer``, ``next_event``); a node may start late (a late joiner)
or be stopped (a crash). Time is a float that jumps from event to event, so a run of a
hundred receivers over megabytes takes seconds of real time and is exactly reproducible from
its seed.

With ``by_node``, the deliveries due within ``delay`` of the earliest are taken node by node
rather than datagram by datagram: nothing a node sends in answer can arrive before ``delay``
has passed, so within that window no node can tell the difference (the conservative
lookahead of parallel discrete-event simulation), and one receiver's state is touched for a
run of datagrams at a time instead of once per datagram across ten thousand receivers. A
node's own timer that falls due within the window still fires between its deliveries in
time order. The random draws then come in another order: runs are as reproducible, but not
the same runs as without it.

Events the cores emit go to ``on_event`` when one is set; only without one are they kept in
``events`` (a ``UnitVerified`` carries its unit's bytes: keeping them all would hold a copy
of the package per receiver).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Core(Protocol):
    def receive_datagram(self, data: bytes, addr: object, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[bytes]: ...
    def get_timer(self) -> float | None: ...
    def next_event(self) -> Any: ...


@dataclass
class Link:
    """How datagrams reach one node: independent loss, duplication and extra delay."""

    loss: float = 0.0
    duplicate: float = 0.0
    jitter: float = 0.0  # uniform extra delay in [0, jitter): reorders datagrams
    drop: Callable[[bytes], bool] | None = None  # a custom filter: True drops the datagram
    drop_by_content: bool = False  # ``drop`` depends on the datagram alone: asked once for
    # all the links that share it, not once per recipient
    # extra delay of a datagram sent at a time: a bottleneck's queue (tests of --yield)
    queue: Callable[[float, bytes], float] | None = None


@dataclass
class _Node:
    name: str
    factory: Callable[[float], Core]
    start_at: float
    link: Link
    core: Core | None = None
    stopped: bool = False
    timer: float | None = None
    received: int = 0
    sent: int = 0


_START, _TIMER, _DELIVER = 0, 1, 2


class SimNet:
    def __init__(self, *, seed: int = 0, delay: float = 0.0005, by_node: bool = False) -> None:
        self.rng = random.Random(seed)
        self.delay = delay
        self.by_node = by_node and delay > 0
        self.now = 0.0
        self.nodes: dict[str, _Node] = {}
        # time, seq, kind, node(s), datagram, source: a delivery names all its recipients
        self._heap: list[tuple[float, int, int, str | tuple[str, ...], bytes, str]] = []
        self._seq = 0
        self.events: list[tuple[float, str, Any]] = []
        self.on_event: Callable[[float, str, Any], None] | None = None
        self.delivered = 0

    def add(
        self,
        name: str,
        factory: Callable[[float], Core],
        *,
        start_at: float = 0.0,
        link: Link | None = None,
    ) -> None:
        """Add a node; ``factory(now)`` builds its core when it starts."""
        self.nodes[name] = _Node(name, factory, start_at, link or Link())
        self._push(start_at, _START, name)

    def core(self, name: str) -> Core:
        core = self.nodes[name].core
        if core is None:
            raise KeyError(f"{name} has not started")
        return core

    def stop(self, name: str) -> None:
        """Crash a node: it neither sends nor receives from now on."""
        self.nodes[name].stopped = True

    def run(self, until: float, done: Callable[[], bool] | None = None) -> float:
        """Process events until virtual time ``until`` or until ``done()`` holds."""
        while self._heap:
            if done is not None and done():
                break
            if self._heap[0][0] > until:
                break
            time, _, kind, target, data, src = heapq.heappop(self._heap)
            self.now = time
            if kind == _DELIVER:
                assert isinstance(target, tuple)
                if self.by_node:
                    self._deliver_window(time, target, data, src, until)
                else:
                    self._deliver(target, data, src)
                continue
            assert isinstance(target, str)
            node = self.nodes[target]
            if node.stopped:
                continue
            if kind == _START:
                node.core = node.factory(self.now)
            elif node.core is None:
                continue
            else:
                if node.timer is None or node.timer > self.now:
                    continue  # stale
                node.timer = None
                node.core.handle_timer(self.now)
            self._after(node)
        return self.now

    # -- internals -------------------------------------------------------------------------
    def _push(
        self, time: float, kind: int, node: str | tuple[str, ...], data: bytes = b"", src: str = ""
    ) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, node, data, src))

    def _deliver(self, names: tuple[str, ...], data: bytes, src: str) -> None:
        """One datagram reaching its recipients, in the order they were drawn."""
        nodes, now = self.nodes, self.now
        for name in names:
            node = nodes[name]
            core = node.core
            if node.stopped or core is None:
                continue
            node.received += 1
            self.delivered += 1
            core.receive_datagram(data, src, now)
            self._after(node)

    def _deliver_window(
        self, start: float, names: tuple[str, ...], data: bytes, src: str, until: float
    ) -> None:
        """The deliveries at the top of the queue due before ``start + delay``, node by node."""
        heap, end = self._heap, start + self.delay
        per_node: dict[str, list[tuple[float, bytes, str]]] = {}
        for name in names:
            per_node.setdefault(name, []).append((start, data, src))
        last = start
        while heap and heap[0][2] == _DELIVER and heap[0][0] < end and heap[0][0] <= until:
            time, _, _, target, more, source = heapq.heappop(heap)
            assert isinstance(target, tuple)
            for name in target:
                per_node.setdefault(name, []).append((time, more, source))
            last = time
        nodes = self.nodes
        for name, arrivals in per_node.items():
            node = nodes[name]
            for time, dgram, source in arrivals:
                core = node.core
                if node.stopped or core is None:
                    break
                while node.timer is not None and node.timer <= time:  # its own timer first
                    self.now, node.timer = node.timer, None
                    core.handle_timer(self.now)
                    self._after(node)
                self.now = time
                node.received += 1
                self.delivered += 1
                core.receive_datagram(dgram, source, time)
                self._after(node)
        self.now = last

    def _after(self, node: _Node) -> None:
        core = node.core
        assert core is not None
        for dgram in core.datagrams_to_send(self.now):
            node.sent += 1
            self._fan_out(node.name, dgram)
        while (event := core.next_event()) is not None:
            if self.on_event is not None:
                self.on_event(self.now, node.name, event)
            else:
                self.events.append((self.now, node.name, event))
        timer = core.get_timer()
        if timer is not None:
            timer = max(timer, self.now + 1e-7)  # a timer in the past fires next, not forever
            if timer != node.timer:
                node.timer = timer  # an older heap entry for this node is now stale
                self._push(timer, _TIMER, node.name)

    def _fan_out(self, src: str, dgram: bytes) -> None:
        """Draw each recipient's fate; the copies that arrive after just ``delay`` go out as
        one delivery, jittered ones each on their own (the draws are the same either way)."""
        rng, now = self.rng, self.now
        together: list[str] = []
        verdicts: dict[Callable[[bytes], bool], bool] = {}  # drop_by_content filters' answers
        for name, dst in self.nodes.items():
            if name == src or dst.stopped or dst.start_at > now:
                continue
            link = dst.link
            if link.loss and rng.random() < link.loss:
                continue
            drop = link.drop
            if drop is not None:
                if not link.drop_by_content:
                    if drop(dgram):
                        continue
                else:
                    verdict = verdicts.get(drop)
                    if verdict is None:
                        verdict = verdicts[drop] = drop(dgram)
                    if verdict:
                        continue
            copies = 2 if link.duplicate and rng.random() < link.duplicate else 1
            if not link.jitter and link.queue is None:
                together.extend([name] * copies)
                continue
            for _ in range(copies):
                extra = rng.random() * link.jitter if link.jitter else 0.0
                if link.queue is not None:
                    extra += link.queue(now, dgram)
                self._push(now + self.delay + extra, _DELIVER, (name,), dgram, src)
        if together:
            self._push(now + self.delay, _DELIVER, tuple(together), dgram, src)
