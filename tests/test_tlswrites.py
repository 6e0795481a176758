"""Large writes through the server's TLS arrive whole and in order."""

from __future__ import annotations

import hashlib
import os
import subprocess

import treq
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server.tlswrites import (
    PIECE,
    RELIED_ON,
    LargeWritesTLSFactory,
    LargeWritesTLSProtocol,
)

from .support import CA, LiveServer


class TwistedTests(SynchronousTestCase):
    def test_twistedStillHasWhatWeRelyOn(self) -> None:
        """
        The subclass uses private parts of Twisted's class: a Twisted that
        renamed them fails here, not in a user's follow.
        """
        certs = os.path.join(os.path.dirname(CA))
        with (
            open(os.path.join(certs, "server.pem")) as c,
            open(os.path.join(certs, "server.key")) as k,
        ):
            identity = PrivateCertificate.loadPEM(c.read() + k.read())
        factory = LargeWritesTLSFactory(
            identity.options(), False, Factory.forProtocol(Protocol)
        )
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        self.assertIsInstance(protocol, LargeWritesTLSProtocol)
        protocol.makeConnection(StringTransport())
        for name in RELIED_ON:
            self.assertTrue(hasattr(protocol, name), name)
        self.assertIsNot(LargeWritesTLSProtocol.write, TLSMemoryBIOProtocol.write)


class LargeWritesTests(TestCase):
    async def test_aLargeLogArrivesWhole(self) -> None:
        """
        A finished log, a follow and an SSE follow of a job printing
        several PIECEs of numbered lines: every byte, in order.
        """
        server = LiveServer(self)
        count = 4 * PIECE // 7  # about 4 pieces of "NNNNNN\n"
        expected = subprocess.run(
            ["seq", str(count)], capture_output=True, check=True
        ).stdout
        job = await server.createJob("seq", str(count))
        follow = await server.request("GET", f"/jobs/{job['id']}/logs?follow=true")
        self.assertEqual(await treq.content(follow), expected)
        await server.waitEnded(job["id"])
        finished = await server.request("GET", f"/jobs/{job['id']}/logs")
        body = await treq.content(finished)
        self.assertEqual(len(body), len(expected))
        self.assertEqual(
            hashlib.sha256(body).digest(), hashlib.sha256(expected).digest()
        )
