"""L{jobworker.peers}: what counts as one client for the per-client limits."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jobworker.peers import LOOPBACK, clientKey


class ClientKeyTests(SynchronousTestCase):
    def test_keys(self) -> None:
        """All of loopback is one client; an IPv6 client is its /64, but for
        a link-local one (every link's prefix is fe80::/64); any other
        address is itself; a key is its own key."""
        cases = {
            "127.0.0.1": LOOPBACK,
            "127.200.3.4": LOOPBACK,
            "::1": LOOPBACK,
            "::ffff:127.1.2.3": LOOPBACK,
            "::ffff:10.1.2.3": "10.1.2.3",
            "10.0.0.1": "10.0.0.1",
            "2001:db8:1:2::5": "2001:db8:1:2::/64",
            "2001:db8:1:2:ffff::9": "2001:db8:1:2::/64",
            "2001:db8:1:3::5": "2001:db8:1:3::/64",
            "fe80::1%eth0": "fe80::1%eth0",
            "fe80::2%eth1": "fe80::2%eth1",
            "unknown": "unknown",
        }
        for address, key in cases.items():
            self.assertEqual(clientKey(address), key, address)
            self.assertEqual(clientKey(key), key, key)
