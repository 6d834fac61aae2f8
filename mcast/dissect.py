"""What each captured datagram is, and whether a receiver would act on it: the verdicts of
``mcast dissect``.

:class:`Judge` reads datagrams in capture order and gives each a :class:`Verdict`, the way an
admin needs to see an attack:

- ``ok``: the tag is good under one of the keys given, and nothing below applies;
- ``unchecked``: no key was given, so the tag could not be checked;
- ``bad tag``: a tag that matches none of the keys: forged, or changed on the way;
- ``no tag``: the all-zero tag of an unauthenticated sender, where a key was expected;
- ``malformed``: not a datagram of this protocol version, or a body that does not decode;
- ``stale``: a control message whose counter is not newer than the last from its origin
  (a replay; receivers and senders drop it);
- ``duplicate``: a shard seen before byte for byte (a replay, or a copy on the wire);
- ``ended session``: a datagram of a session whose END came earlier in the capture;
- ``other session``: not the session asked about (``--session``).

Pure: no sockets, no scapy; the CLI reads the capture and prints.
"""

from __future__ import annotations

import hashlib
from collections import Counter as Tally
from collections import OrderedDict
from dataclasses import dataclass, field

from mcast.freshness import ReplayGuard
from mcast.wire import (
    TAG_LEN,
    Announce,
    BadPacket,
    Data,
    End,
    Message,
    MsgType,
    Nak,
    Parity,
    Solicit,
    Status,
    TagMismatch,
    decode_untrusted,
    peek_session_untrusted,
)

_SEEN_SHARDS = 200_000  # digests of shards kept to spot duplicates


@dataclass(frozen=True)
class Verdict:
    kind: str  # the message type's name, or "?" when the header is not ours
    session: int | None
    verdict: str
    detail: str  # the message's main fields, or why it is malformed
    key: str = ""  # the name of the key its tag matched

    def as_dict(self) -> dict[str, object]:
        session = None if self.session is None else f"{self.session:016x}"
        return {"type": self.kind, "session": session, "verdict": self.verdict,
                "detail": self.detail, "key": self.key}  # fmt: skip


@dataclass
class Judge:
    keys: dict[str, bytes]  # name -> key (a package's session key, a site's discovery key)
    session: int | None = None  # only this session is "ok"; the others are "other session"
    tally: Tally[str] = field(default_factory=Tally)
    _guard: ReplayGuard = field(default_factory=lambda: ReplayGuard(max_origins=65536))
    _ended: set[int] = field(default_factory=set)
    _shards: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def judge(self, data: bytes) -> Verdict:
        v = self._judge(data)
        self.tally[v.verdict] += 1
        return v

    def _judge(self, data: bytes) -> Verdict:
        try:
            kind, session = peek_session_untrusted(data)
        except BadPacket as exc:
            return Verdict("?", None, "malformed", str(exc))
        name = kind.name
        msg, key_name, tag_problem = self._open(data)
        if msg is None:
            return Verdict(name, session, tag_problem, "")
        detail = describe(msg)
        if self.session is not None and session not in (self.session, 0):
            return Verdict(name, session, "other session", detail, key_name)
        if session in self._ended and not isinstance(msg, End):
            return Verdict(name, session, "ended session", detail, key_name)
        if not self._fresh(msg, data):
            stale = "duplicate" if isinstance(msg, Data | Parity) else "stale"
            return Verdict(name, session, stale, detail, key_name)
        if isinstance(msg, End):
            self._ended.add(session)
        return Verdict(name, session, "ok" if key_name else "unchecked", detail, key_name)

    def _open(self, data: bytes) -> tuple[Message | None, str, str]:
        """The message, the name of the key whose tag it carries ("" unchecked), or the
        verdict that stops here."""
        if not self.keys:
            try:
                return decode_untrusted(data, None), "", ""
            except BadPacket as exc:
                return None, "", f"malformed: {exc}"
        for name, key in self.keys.items():
            try:
                return decode_untrusted(data, key), name, ""
            except TagMismatch:
                continue  # perhaps the next key's
            except BadPacket as exc:
                return None, "", f"malformed: {exc}"
        return None, "", "no tag" if data[-TAG_LEN:] == bytes(TAG_LEN) else "bad tag"

    def _fresh(self, msg: Message, data: bytes) -> bool:
        if isinstance(msg, Data | Parity):
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if digest in self._shards:
                return False
            self._shards[digest] = None
            if len(self._shards) > _SEEN_SHARDS:
                self._shards.popitem(last=False)
            return True
        if isinstance(msg, Announce | End):  # the session's sender: one counter
            origin = msg.session << 65 | 1 << 64
        else:  # a receiver, within the session
            assert isinstance(msg, Nak | Status | Solicit)
            origin = msg.session << 65 | msg.receiver_id
        return self._guard.fresh(origin, msg.seq)


def describe(msg: Message) -> str:
    """The fields an admin reads first, one line."""
    if isinstance(msg, Data):
        return f"block={msg.block} index={msg.index} len={len(msg.payload)}"
    if isinstance(msg, Parity):
        return f"block={msg.block} seq={msg.seq} len={len(msg.payload)}"
    if isinstance(msg, Announce):
        what = "claim" if msg.claiming else f"next_block={msg.next_block}"
        return (f"package={msg.package_hash.hex()[:16]} group={msg.group}:{msg.port} {what}"
                f" seq={msg.seq} echoes={len(msg.echoes)}"
                + (f" report_ms={msg.report_ms}" if msg.report_ms else ""))  # fmt: skip
    if isinstance(msg, Nak):
        return f"receiver={msg.receiver_id:x} entries={len(msg.entries)} seq={msg.seq}"
    if isinstance(msg, Status):
        return (f"receiver={msg.receiver_id:x} verified={msg.verified_units} done={msg.done}"
                f" qdelay_us={msg.qdelay_us} seq={msg.seq}")  # fmt: skip
    if isinstance(msg, End):
        return f"reason={msg.reason!r} seq={msg.seq}"
    return (f"package={msg.package_hash.hex()[:16]} receiver={msg.receiver_id:x}"
            f" nonce={msg.nonce:x} seq={msg.seq}")


__all__ = ["Judge", "MsgType", "Verdict", "describe"]
