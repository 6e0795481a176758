"""Large writes through the server's TLS arrive whole and in order."""

from __future__ import annotations

import hashlib
import os
import subprocess

import treq
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server.tlswrites import (
    PIECE,
    RELIED_ON,
    LargeWritesTLSFactory,
    LargeWritesTLSProtocol,
)
from jobworker.tls import serverOptions

from .support import CA, CERT, KEY, LiveServer


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


class Answering(Protocol):
    """Answers each request in two small writes, as twisted.web does (the
    head, then the body); "bye" also closes, "big" adds a large write."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"head:" + data + b";")
        if data == b"big":
            self.transport.write(b"x" * (3 * PIECE // 2))
        self.transport.write(b"body;")
        if data == b"bye":
            self.transport.loseConnection()


class Collecting(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object) -> None:
        self.lost = True


def records(wire: bytes) -> int:
    """How many TLS records of application data C{wire} holds."""
    count = at = 0
    while at + 5 <= len(wire):
        if wire[at] == 23:
            count += 1
        at += 5 + int.from_bytes(wire[at + 3 : at + 5], "big")
    return count


class UnbufferedTLSFactory(TLSMemoryBIOFactory):
    """Twisted's TLS without its default buffering (which waits for the
    next reactor turn): what the server's protocol is built on."""

    protocol = TLSMemoryBIOProtocol


class HeldWritesTests(SynchronousTestCase):
    """Writes made while one request is handled leave as one record."""

    def connected(
        self, factoryClass: type[TLSMemoryBIOFactory]
    ) -> tuple[Collecting, list[bytes], object]:
        server = factoryClass(
            serverOptions(CERT, KEY), False, Factory.forProtocol(Answering)
        ).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        with open(CA) as f:
            trust = Certificate.loadPEM(f.read())
        collecting = Collecting()
        client = UnbufferedTLSFactory(
            optionsForClientTLS("localhost", trustRoot=trust),
            True,
            Factory.forProtocol(lambda: collecting),
        ).buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        serverTransport = FakeTransport(server, isServer=True)
        pump = connect(server, serverTransport, client, FakeTransport(client, False))
        pump.flush()  # the handshake, and TLS 1.3's session tickets
        sent: list[bytes] = []
        write = serverTransport.write

        def recording(data: bytes) -> None:
            sent.append(data)
            write(data)

        serverTransport.write = recording  # type: ignore[method-assign]
        return collecting, sent, pump

    def ask(
        self, factoryClass: type[TLSMemoryBIOFactory], what: bytes
    ) -> tuple[Collecting, list[bytes]]:
        collecting, sent, pump = self.connected(factoryClass)
        assert collecting.transport is not None
        collecting.transport.write(what)
        pump.flush()  # type: ignore[attr-defined]
        return collecting, sent

    def test_oneRecord(self) -> None:
        """A head and a body written while a request is handled: one record
        (Twisted's class under ours makes two), every byte in order."""
        plain, plainSent = self.ask(UnbufferedTLSFactory, b"ping")
        self.assertEqual(records(b"".join(plainSent)), 2)
        self.assertEqual(plain.received, b"head:ping;body;")
        held, heldSent = self.ask(LargeWritesTLSFactory, b"ping")
        self.assertEqual(records(b"".join(heldSent)), 1)
        self.assertEqual(len(heldSent), 1)
        self.assertEqual(held.received, b"head:ping;body;")

    def test_closedAfterWhatWasHeld(self) -> None:
        """A close while the request is handled comes after what it wrote."""
        collecting, _ = self.ask(LargeWritesTLSFactory, b"bye")
        self.assertEqual(collecting.received, b"head:bye;body;")
        self.assertTrue(collecting.lost)

    def test_largeWriteAfterHeld(self) -> None:
        """A large write sends what was held first: the order holds."""
        collecting, _ = self.ask(LargeWritesTLSFactory, b"big")
        self.assertEqual(
            collecting.received, b"head:big;" + b"x" * (3 * PIECE // 2) + b"body;"
        )
