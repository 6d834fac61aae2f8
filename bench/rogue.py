"""A rogue host for the namespace lab: it records a session's datagrams and replays them with
forged source addresses, to measure what a replaying host on the LAN costs.

Run in its own lab namespace (``bench.lab --rogue-replay RATE`` starts it), it joins the
groups it is given (the data group, the discovery group), records every datagram it hears
with its source, and replays the recording at ``--rate`` datagrams per second through a raw
socket (``IP_HDRINCL``), so every replay carries the source address and port it was recorded
with: DATA, PARITY, ANNOUNCE and END come "from the sender". Half of the STATUS and NAK replays
keep the receiver's source they were heard from; the other half are re-addressed to the
sender's source address and port, so a receiver that filters on the sender's address still
takes them. Replays mix control messages and data (``--control-share``); ``--garbage`` sends
the same datagrams with their tag inverted, the control run for what the bytes alone cost.
``--record FILE`` keeps what was heard, and ``--replay-file FILE`` replays a recording of an
earlier run (an earlier session's ANNOUNCE, say) from the first second on.

Safety: this tool forges packets, so it refuses to run outside the lab. The interface, every
source it writes and the sender address must be in the benchmarking range 198.18.0.0/15, every
destination must be a group in 239.255.0.0/16, and the TTL is 1: nothing leaves the lab LAN.

Prints JSON lines: ``listening`` once it has joined its groups, ``progress`` every second,
and on SIGTERM (or after ``--duration``) ``done`` with what it heard and sent, by type.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcast.wire import BadPacket, MsgType, peek_session_untrusted

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
GROUP_SCOPE = ipaddress.ip_network("239.255.0.0/16")
CONTROL = frozenset({MsgType.ANNOUNCE, MsgType.END, MsgType.STATUS, MsgType.NAK, MsgType.SOLICIT})
FEEDBACK = frozenset({MsgType.STATUS, MsgType.NAK})  # what receivers send
POOL = 4096  # datagrams kept per pool (control, data): the most recent ones
# datagrams written to a recording file at most: every control message up to the first
# limit (what an earlier session's replay needs), DATA and PARITY up to the second
RECORD_LIMITS = {True: 50_000, False: 5_000}
RECORD_MAGIC = b"MCROGUE1\n"
_RECORD = struct.Struct("!4sH4sHH")  # source ip, port; destination group, port; length


class Refused(Exception):
    """An address this tool must not use: outside the lab or the group scope."""


@dataclass(frozen=True)
class Heard:
    kind: MsgType
    src: tuple[str, int]
    dst: tuple[str, int]
    data: bytes


def lab_address(text: str, what: str) -> str:
    if ipaddress.ip_address(text) not in LAB_RANGE:
        raise Refused(f"{what} {text} is outside the lab range {LAB_RANGE}")
    return text


def group_port(text: str) -> tuple[str, int]:
    group, _, port = text.rpartition(":")
    try:
        if ipaddress.ip_address(group) not in GROUP_SCOPE:
            raise argparse.ArgumentTypeError(f"{group} is outside {GROUP_SCOPE}")
        return group, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not GROUP:PORT") from None


def packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4/UDP packet with a forged source; the kernel fills the IP id and checksum. The
    UDP checksum is 0 (none, allowed over IPv4)."""
    lab_address(src[0], "source")
    if ipaddress.ip_address(dst[0]) not in GROUP_SCOPE:
        raise Refused(f"destination {dst[0]} is not a group in {GROUP_SCOPE}")
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0)
    total = 20 + len(udp) + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, total, 0, 0, 1, socket.IPPROTO_UDP, 0,  # TTL 1
        socket.inet_aton(src[0]), socket.inet_aton(dst[0]),
    )  # fmt: skip
    return ip + udp + payload


def classify(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> Heard | None:
    try:
        kind, _ = peek_session_untrusted(data)
    except BadPacket:
        return None
    return Heard(kind, src, dst, data)


def write_record(out: Any, h: Heard) -> None:
    head = _RECORD.pack(
        socket.inet_aton(h.src[0]), h.src[1], socket.inet_aton(h.dst[0]), h.dst[1], len(h.data)
    )
    out.write(head + h.data)


def read_recording(path: Path) -> Iterator[Heard]:
    raw = path.read_bytes()
    if not raw.startswith(RECORD_MAGIC):
        raise ValueError(f"{path} is not a rogue recording")
    at = len(RECORD_MAGIC)
    while at + _RECORD.size <= len(raw):
        sip, sport, dip, dport, n = _RECORD.unpack_from(raw, at)
        at += _RECORD.size
        src, dst = (socket.inet_ntoa(sip), sport), (socket.inet_ntoa(dip), dport)
        heard = classify(raw[at : at + n], src, dst)
        at += n
        if heard is not None:
            yield heard


class Rogue:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.control: deque[Heard] = deque(maxlen=POOL)
        self.data: deque[Heard] = deque(maxlen=POOL)
        self.sender: tuple[str, int] | None = None  # the source of announces and data heard
        self.heard: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.sent_total = 0
        self.send_errors = 0
        self.recorded: Counter[bool] = Counter()  # written to --record, control or not
        self.from_file = 0
        self.stop = False
        self.listen = [self._join(g) for g in args.listen]
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.raw.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.interface)
        )
        self.raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        self.record = None
        if args.record is not None:
            self.record = open(args.record, "wb")  # noqa: SIM115 - closed in close()
            self.record.write(RECORD_MAGIC)
        if args.replay_file is not None:
            for h in read_recording(args.replay_file):
                self._keep(h)
                self.from_file += 1

    def _join(self, where: tuple[str, int]) -> tuple[socket.socket, tuple[str, int]]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(where)
        mreq = socket.inet_aton(where[0]) + socket.inet_aton(self.args.interface)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        s.setblocking(False)
        return s, where

    def _keep(self, h: Heard) -> None:
        if h.kind in CONTROL:
            self.control.append(h)
        else:
            self.data.append(h)
        if h.kind not in FEEDBACK and h.kind is not MsgType.SOLICIT:
            self.sender = h.src

    def hear(self) -> None:
        for s, where in self.listen:
            while True:
                try:
                    data, src = s.recvfrom(65535)
                except BlockingIOError:
                    break
                h = classify(data, (src[0], src[1]), where)
                if h is None:
                    self.heard["other"] += 1
                    continue
                self.heard[h.kind.name] += 1
                self._keep(h)
                control = h.kind in CONTROL
                if self.record is not None and self.recorded[control] < RECORD_LIMITS[control]:
                    write_record(self.record, h)
                    self.recorded[control] += 1

    def pick(self) -> Heard | None:
        first, second = self.control, self.data
        if self.rng.random() >= self.args.control_share:
            first, second = second, first
        pool = first or second
        return pool[self.rng.randrange(len(pool))] if pool else None

    def replay_one(self) -> bool:
        h = self.pick()
        if h is None:
            return False
        src, label = h.src, h.kind.name
        if h.kind in FEEDBACK and self.sender is not None and self.rng.random() < 0.5:
            src, label = self.sender, f"{label}_as_sender"  # a receiver's report, re-addressed
        data = h.data
        if self.args.garbage:  # the same bytes with a broken tag: costs the link, nothing else
            data = data[:-16] + bytes(b ^ 0xFF for b in data[-16:])
            label = f"{label}_garbage"
        try:
            self.raw.sendto(packet(src, h.dst, data), (h.dst[0], 0))
        except OSError:
            self.send_errors += 1  # a full queue: the rate is a ceiling, not a promise
            return True
        self.sent[label] += 1
        self.sent_total += 1
        return True

    def summary(self, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "heard": dict(self.heard),
            "sent": dict(self.sent),
            "sent_total": self.sent_total,
            "send_errors": self.send_errors,
            "recorded": sum(self.recorded.values()),
            "replay_file_datagrams": self.from_file,
            "rate": self.args.rate,
        }

    def run(self) -> None:
        rate, started = self.args.rate, time.monotonic()
        end = started + self.args.duration if self.args.duration else float("inf")
        due, next_report = started, started + 1.0
        say({"event": "listening", "groups": [f"{g}:{p}" for _, (g, p) in self.listen]})
        while not self.stop:
            now = time.monotonic()
            if now >= end:
                break
            burst = 0
            while rate and due <= now and burst < 64:
                if not self.replay_one():
                    due = now  # nothing to replay yet: no credit piles up
                    break
                due += 1.0 / rate
                burst += 1
            if rate and now - due > 1.0:
                due = now - 1.0  # fell behind (CPU): at most a second of catch-up
            if now >= next_report:
                say(self.summary("progress"))
                next_report = now + 1.0
            wait = min(due - now, 0.05) if rate else 0.05
            readable, _, _ = select.select([s for s, _ in self.listen], [], [], max(wait, 0))
            if readable:
                self.hear()

    def close(self) -> None:
        for s, _ in self.listen:
            s.close()
        self.raw.close()
        if self.record is not None:
            self.record.close()


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rogue", description=__doc__.split("\n")[0])
    ap.add_argument("--interface", required=True, help="this lab host's address (198.18/15)")
    ap.add_argument(
        "--listen", type=group_port, action="append", required=True, metavar="GROUP:PORT",
        help="a group to join and record (repeatable: the data and the discovery group)",
    )  # fmt: skip
    ap.add_argument("--rate", type=float, default=3000.0, help="replays per second (0: none)")
    ap.add_argument(
        "--control-share", type=float, default=0.5,
        help="fraction of replays drawn from control messages (the rest: DATA and PARITY)",
    )  # fmt: skip
    ap.add_argument(
        "--garbage", action="store_true",
        help="send each replay with its tag inverted: the same bytes on the wire, never"
        " authentic (a control run that measures what the replays' bandwidth alone costs)",
    )  # fmt: skip
    ap.add_argument("--record", type=Path, help="write what is heard to this file")
    ap.add_argument("--replay-file", type=Path, help="also replay a recording of an earlier run")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds (0: until SIGTERM)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    if args.rate < 0 or not 0 <= args.control_share <= 1:
        ap.error("--rate must be >= 0 and --control-share within 0..1")
    try:
        lab_address(args.interface, "interface")
        rogue = Rogue(args)
    except (Refused, ValueError, OSError) as exc:
        print(f"rogue: error: {exc}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        rogue.stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        rogue.run()
    finally:
        rogue.close()
        say(rogue.summary("done"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
