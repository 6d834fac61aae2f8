"""The address scope the network safety rules allow, as plain data: pure, no sockets.

Groups are administratively scoped (239.255.0.0/16) and sessions never leave the subnet (TTL 1
at most). Interfaces are loopback or the 198.18.0.0/15 benchmarking range unless the operator
opts out. :mod:`mcast.udp` enforces this on every socket; :mod:`mcast.discovery` applies the
same scope to what announces ask a receiver to join.
"""

from __future__ import annotations

import ipaddress

SAFE_GROUPS = ipaddress.ip_network("239.255.0.0/16")
SAFE_INTERFACES = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/15"))
MAX_TTL = 1


def group_in_scope(group: str) -> bool:
    """``group`` is an IPv4 address inside the allowed multicast scope."""
    try:
        return ipaddress.ip_address(group) in SAFE_GROUPS
    except ValueError:
        return False
