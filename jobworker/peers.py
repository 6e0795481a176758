"""
What counts as one client, for the limits kept per client: connections
(L{ConnectionsPerClient<jobworker.server.connections.ConnectionsPerClient>})
and failed logins (L{LoginThrottle<jobworker.auth.throttle.LoginThrottle>}).
Logs and the audit log keep the address itself.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

#: The one client every loopback address is.
LOOPBACK = "loopback"


def clientKey(host: str) -> str:
    """
    The client a peer address counts as:
      - the whole loopback range (127.0.0.0/8, C{::1}, IPv4-mapped ones) is
        one: any local process, another user's job among them, may connect
        from any of its 16 million addresses;
      - an IPv6 address counts as its /64, the smallest network a site is
        given (whose owner picks any address in it), but for a link-local
        one (C{fe80::/64} is every link's prefix);
      - any other address is itself.
    The same key for the same client, whatever form it came in (so it may be
    applied twice).
    """
    if ":" not in host:
        return LOOPBACK if host.startswith("127.") else host
    return _ipv6Key(host)


@lru_cache(maxsize=4096)
def _ipv6Key(host: str) -> str:
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host  # a key already, or no address at all
    mapped = address.ipv4_mapped
    if mapped is not None:
        return clientKey(str(mapped))
    if address.is_loopback:
        return LOOPBACK
    if address.is_link_local:
        return host  # fe80::/64 is every link's: the address (and scope) itself
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def networkKey(host: str) -> str | None:
    """
    The wider network an IPv6 client's /64 is in, its /48 (a site's usual
    allocation: whoever has one has 65,536 /64s), for the limits that must
    not be reset by moving to the next /64; None for any other address.
    """
    key = clientKey(host)
    if "/" not in key:
        return None
    return _ipv6Network(key)


@lru_cache(maxsize=4096)
def _ipv6Network(key: str) -> str:
    network = ipaddress.IPv6Network(key, strict=False)
    return str(network.supernet(new_prefix=48))
