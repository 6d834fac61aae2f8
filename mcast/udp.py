"""UDP multicast sockets under the network safety rules, with Linux GSO send and GRO receive.

Owns: checking that a group and interface are allowed (the scope of :mod:`mcast.scope`:
groups in 239.255.0.0/16, TTL 1 at most, the interface pinned and, unless the operator opts
out with MCAST_ALLOW_ANY_INTERFACE=1, on loopback or the 198.18.0.0/15 benchmarking range);
finding the interface that routes to a server (``--interface auto``: a UDP ``connect()``,
which sends nothing); opening one socket per endpoint bound to the group and joined on that
interface; and moving batches of datagrams through it: a run of equal-sized datagrams leaves
in one ``sendmsg`` with UDP_SEGMENT, and a GRO-coalesced read is split back into datagrams.
Where the kernel lacks either, plain one-datagram calls are used.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from mcast.errors import NetworkError
from mcast.scope import MAX_TTL, SAFE_GROUPS, SAFE_INTERFACES

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_RXQ_OVFL = 40  # ancillary data: datagrams this socket has dropped, cumulative
SO_MEMINFO = 55  # receive memory in use and the receive buffer size
SO_TIMESTAMPNS = 35  # ancillary data: when the kernel received the datagram (CLOCK_REALTIME)
_TIMESPEC = struct.Struct("=qq")
_ANCILLARY = 128  # room for GRO, overflow and timestamp messages together
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_GROUP = "239.255.77.1"
DEFAULT_PORT = 47000


@dataclass(frozen=True)
class Channel:
    """Where a session's data goes: its group, port, and the interface to use."""

    group: str = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    interface: str = DEFAULT_INTERFACE
DISCOVERY_GROUP = "239.255.77.77"
DISCOVERY_PORT = 47077


def is_loopback(interface: str) -> bool:
    return ipaddress.ip_address(interface).is_loopback


class UnsafeAddress(NetworkError, ValueError):
    """A group, interface or TTL outside what the safety rules allow."""


def check_endpoint(group: str, interface: str, ttl: int = 1) -> None:
    try:
        g = ipaddress.ip_address(group)
        i = ipaddress.ip_address(interface)
    except ValueError as exc:
        raise UnsafeAddress(str(exc)) from None
    if g not in SAFE_GROUPS:
        raise UnsafeAddress(f"group {group} is outside {SAFE_GROUPS} (administratively scoped)")
    if not 0 <= ttl <= MAX_TTL:
        raise UnsafeAddress("multicast TTL must be 0 or 1: sessions never leave the subnet")
    if os.environ.get("MCAST_ALLOW_ANY_INTERFACE") == "1":
        return
    if not any(i in net for net in SAFE_INTERFACES):
        raise UnsafeAddress(
            f"interface {interface} is neither loopback nor a lab address (198.18.0.0/15);"
            " set MCAST_ALLOW_ANY_INTERFACE=1 to use a real LAN interface"
        )


def interface_towards(host: str, port: int) -> str:
    """The IPv4 address of the local interface that routes to ``host:port``. A UDP socket's
    ``connect()`` only picks the route: no datagram is sent. NetworkError if there is none."""
    try:
        addrs = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(addrs[0][4])
            return str(s.getsockname()[0])
    except (OSError, IndexError) as exc:
        raise NetworkError(f"no IPv4 route to {host}:{port} to pick an interface: {exc}") from None


AUTO_INTERFACE = "auto"  # --interface auto: the interface that routes to the server


def resolve_interface(spec: str, group: str, host: str, port: int) -> str:
    """``spec`` (an IPv4 address, or ``auto``: the interface that routes to ``host:port``,
    resolved now), checked by :func:`check_endpoint` with ``group``; UnsafeAddress (exit 5)
    names what ``auto`` found and how to allow a real interface."""
    if spec != AUTO_INTERFACE:
        check_endpoint(group, spec)
        return spec
    found = interface_towards(host, port)
    try:
        check_endpoint(group, found)
    except UnsafeAddress as exc:
        found_where = f"--interface auto found {found} (the route to {host}:{port})"
        raise UnsafeAddress(f"{found_where}: {exc}") from None
    return found


@dataclass
class SocketInfo:
    gso: bool
    gro: bool
    rcvbuf: int
    sndbuf: int


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root may exceed rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return sock.getsockopt(socket.SOL_SOCKET, plain)


def open_multicast(
    group: str,
    port: int,
    interface: str = DEFAULT_INTERFACE,
    *,
    ttl: int = 1,
    buffer_bytes: int = 8 * 1024 * 1024,
    gro: bool = True,
    loop: bool = True,
) -> tuple[socket.socket, SocketInfo]:
    """A non-blocking UDP socket bound to ``group:port``, joined and sending on ``interface``."""
    check_endpoint(group, interface, ttl)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        raw.setblocking(False)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        raw.bind((group, port))  # only this group's traffic, not every group on the port
        mreq = socket.inet_aton(group) + socket.inet_aton(interface)
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
        rcv = _set_buffer(raw, 33, socket.SO_RCVBUF, buffer_bytes)  # 33 = SO_RCVBUFFORCE
        snd = _set_buffer(raw, 32, socket.SO_SNDBUF, buffer_bytes)  # 32 = SO_SNDBUFFORCE
        gro_on = False
        if gro:
            try:
                raw.setsockopt(SOL_UDP, UDP_GRO, 1)
                gro_on = True
            except OSError:
                pass
        gso_on = _probe_gso(raw)
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    except BaseException:
        raw.close()
        raise
    return raw, SocketInfo(gso_on, gro_on, rcv, snd)


def _probe_gso(raw: socket.socket) -> bool:
    try:
        raw.getsockopt(SOL_UDP, UDP_SEGMENT)
        return True
    except OSError:
        return False


def gso_batches(datagrams: list[bytes]) -> Iterator[tuple[list[bytes], int]]:
    """Group consecutive datagrams into GSO sends: equal sizes, the last may be shorter."""
    i, n = 0, len(datagrams)
    while i < n:
        size = len(datagrams[i])
        j, total = i + 1, size
        while j < n and j - i < MAX_GSO_SEGMENTS and total + len(datagrams[j]) <= MAX_GSO_BYTES:
            nxt = len(datagrams[j])
            if nxt > size:
                break
            total += nxt
            j += 1
            if nxt < size:
                break  # a shorter datagram can only end a batch
        yield datagrams[i:j], size
        i = j


_RETRY_LATER = (errno.ENOBUFS, errno.EAGAIN)


class Endpoint:
    """A joined multicast socket with batched send and receive; counts what it moves."""

    def __init__(self, sock: socket.socket, info: SocketInfo, group: str, port: int) -> None:
        self.sock = sock
        self.info = info
        self.dest = (group, port)
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.datagrams_received = 0
        self.send_drops = 0
        self.socket_drops = 0  # what the kernel dropped because we read too slowly
        # With stamps: when the kernel received each datagram of the last batch (time.time()
        # seconds; NaN where it did not say), so a reader that is late does not count its own
        # lateness as network delay (mcast.ledbat). Linux turns stamping on for the whole
        # host from a work item the first time a socket asks; what arrives before that runs
        # is stamped when read, so the first samples of a fresh host may include the reader's
        # lateness.
        self.stamps = False
        self.arrivals: list[float] = []

    @classmethod
    def open(
        cls,
        group: str,
        port: int,
        interface: str = DEFAULT_INTERFACE,
        *,
        ttl: int = 1,
        loop: bool = True,
        stamps: bool = False,
    ) -> Endpoint:
        """``loop=False``: this socket's own sends are not delivered to this host.
        ``stamps``: record the kernel's receive time of each datagram (``arrivals``)."""
        sock, info = open_multicast(group, port, interface, ttl=ttl, loop=loop)
        endpoint = cls(sock, info, group, port)
        if stamps:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                endpoint.stamps = True
            except OSError:
                pass  # no kernel timestamps: the reader's clock it is
        return endpoint

    def close(self) -> None:
        self.sock.close()

    async def send_many(self, datagrams: list[bytes]) -> None:
        """Send in order; GSO runs where possible. A full device queue waits, then retries."""
        if self.info.gso:
            for batch, size in gso_batches(datagrams):
                if len(batch) == 1:
                    await self._send(batch[0])
                else:
                    await self._send_gso(batch, size)
        else:
            for d in datagrams:
                await self._send(d)
        self.datagrams_sent += len(datagrams)
        self.bytes_sent += sum(len(d) for d in datagrams)
        await trio.lowlevel.checkpoint()

    async def _send_gso(self, batch: list[bytes], size: int) -> None:
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        for _ in range(100):
            try:
                self.sock.sendmsg(batch, cmsg, 0, self.dest)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
            except OSError as exc:
                if exc.errno in _RETRY_LATER:
                    await trio.sleep(0.0005)
                elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.EIO):
                    self.info.gso = False  # the kernel or device refused: plain sends for good
                    for d in batch:
                        await self._send(d)
                    return
                else:
                    raise
        self.send_drops += len(batch)  # the protocol repairs what never left

    async def _send(self, data: bytes) -> None:
        for _ in range(100):
            try:
                self.sock.sendto(data, self.dest)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
            except OSError as exc:
                if exc.errno not in _RETRY_LATER:
                    raise
                await trio.sleep(0.0005)
        self.send_drops += 1

    def backlog(self) -> float:
        """How full the socket's receive queue is (0..1): reading too slowly shows here first."""
        try:
            rmem, rcvbuf = struct.unpack_from(
                "=II", self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36)
            )
        except OSError:
            return 0.0
        return min(1.0, rmem / rcvbuf) if rcvbuf else 0.0

    async def receive_batch(self, max_datagrams: int = 512) -> list[tuple[bytes, object]]:
        """Wait for at least one datagram, then take what is queued without waiting again."""
        out: list[tuple[bytes, object]] = []
        arrivals = self.arrivals
        arrivals.clear()
        while not out:
            await trio.lowlevel.wait_readable(self.sock)
            while len(out) < max_datagrams:
                try:
                    data, anc, _flags, addr = self.sock.recvmsg(65536, _ANCILLARY)
                except BlockingIOError:
                    break
                seg = 0
                stamp = math.nan
                for level, kind, value in anc:
                    if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                        seg = int(struct.unpack("=i", value[:4])[0])
                    elif level != socket.SOL_SOCKET:
                        continue
                    elif kind == SO_RXQ_OVFL and len(value) >= 4:
                        self.socket_drops = int(struct.unpack("=I", value[:4])[0])
                    elif kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                        sec, nsec = _TIMESPEC.unpack_from(value)
                        stamp = sec + nsec * 1e-9
                before = len(out)
                if seg and len(data) > seg:
                    out.extend((data[k : k + seg], addr) for k in range(0, len(data), seg))
                else:
                    out.append((data, addr))
                if self.stamps:
                    arrivals.extend([stamp] * (len(out) - before))
        self.datagrams_received += len(out)
        return out
