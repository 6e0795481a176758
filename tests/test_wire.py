"""
The API as bytes on the wire: the site the server builds (C{tap._site}),
fed raw requests over a string transport. What an HTTP library never sends:
a method in lower case, a malformed header, C{Expect: 100-continue} with a
body too large, C{HEAD} of a log that is still being written.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from jobworker.auth.authenticator import Authenticator, makePortal
from jobworker.auth.users import UserDatabase
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.records import JobStatus
from jobworker.metrics import Metrics
from jobworker.server.api import JobsAPI
from jobworker.server.options import Options
from jobworker.server.requests import _json
from jobworker.server.tap import _site

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .test_api import syncRunner

ALICE = b"Basic " + base64.b64encode(b"alice:alice-pass")


def parse(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """The first response in C{raw}: status, headers (lower-case), body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, body


def dechunk(raw: bytes) -> bytes:
    """A chunked body's bytes (up to its last chunk, or what arrived)."""
    body = b""
    while raw:
        size, _, raw = raw.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        body, raw = body + raw[:length], raw[length + 2 :]
    return body


class WireTests(SynchronousTestCase):
    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.manager = localJobManager(self.reactor, self.mktemp(), 5.0, GroupKiller())
        self.addCleanup(self.manager.close)
        self.api = api = JobsAPI(
            self.manager,
            Authenticator(makePortal(UserDatabase.development(), syncRunner)),
            self.reactor,
            Metrics(),
        )
        options = Options()
        options.parseOptions(["--tls", "--max-body-bytes=1K"])
        self.site = _site(options, api, Metrics())
        # The site's connection timers on the fake clock, not the reactor.
        self.site.reactor = self.reactor  # type: ignore[attr-defined]

    def exchange(self, raw: bytes) -> tuple[StringTransport, Any]:
        """Send C{raw} on a new connection; its transport and channel."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        return transport, channel

    def request(
        self, method: bytes, path: bytes, *headers: bytes, body: bytes = b""
    ) -> bytes:
        lines = [method + b" " + path + b" HTTP/1.1", b"Host: localhost", *headers]
        if body:
            lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def test_lowerCaseMethodIsNoMethod(self) -> None:
        """
        C{post} is not C{POST} (methods are case-sensitive): it is refused
        as a method the route does not have, before the handler, so the
        CSRF check cannot be stepped around with it (werkzeug's routing
        would capitalise it and call the POST handler; the check, reading
        C{request.method}, did not know it). No job is made.
        """
        for method in (b"post", b"Post", b"delete"):
            path = b"/jobs"
            raw = self.request(
                method,
                path,
                b"Authorization: " + ALICE,
                b"Content-Type: text/plain",
                b"Origin: https://evil.example",
                b"Sec-Fetch-Site: cross-site",
                body=b'{"command": "true"}',
            )
            transport, _ = self.exchange(raw)
            code, headers, body = parse(transport.value())
            self.assertEqual(code, 405, (method, transport.value()))
            self.assertEqual(headers[b"allow"], b"DELETE, GET, HEAD, POST")
            self.assertIn("case-sensitive", json.loads(body)["error"])
        transport, _ = self.exchange(self.request(b"get", b"/nowhere"))
        self.assertEqual(parse(transport.value())[0], 404)
        self.assertEqual(self.manager.page()[0], [])
        # The same request in capitals reaches the CSRF check, and stops there.
        transport, _ = self.exchange(
            self.request(
                b"POST",
                b"/jobs",
                b"Authorization: " + ALICE,
                b"Content-Type: text/plain",
                body=b'{"command": "true"}',
            )
        )
        self.assertEqual(parse(transport.value())[0], 415)

    def test_malformedRequestsAnsweredInJSON(self) -> None:
        """What Twisted's parser refuses is a 400 with a JSON message (it
        answered with no body at all), and the connection is closed."""
        for raw in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Content-Length: 1\r\n\r\nx",
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET /healthz\r\n\r\n",
        ):
            transport, _ = self.exchange(raw)
            code, headers, body = parse(transport.value())
            self.assertEqual(code, 400, raw)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertIn("malformed", json.loads(body)["error"])
            self.assertTrue(transport.disconnecting)

    def test_expectContinueOverTheCap(self) -> None:
        """
        A client that asks first (C{Expect: 100-continue}) about a body
        over C{--max-body-bytes} is answered 413 at once, and never told
        to send it; whatever it sends anyway is not read. Under the cap it
        is told to go on, as before.
        """
        transport, channel = self.exchange(
            self.request(
                b"POST",
                b"/jobs",
                b"Expect: 100-continue",
                b"Content-Type: application/json",
                b"Content-Length: 1000000000",
            )
        )
        code, _, body = parse(transport.value())
        self.assertEqual(code, 413)
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertIn("1024", json.loads(body)["error"])
        self.assertTrue(transport.disconnecting)
        sent = transport.value()
        channel.dataReceived(b"x" * 100000)
        # Nothing more is read, and no deadline is armed for it: no 408
        # after the 413 (the header deadline is 10 s; the idle timeout, 60 s,
        # would find the connection closed, as this fake one never is).
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        self.reactor.advance(30)
        self.assertEqual(transport.value(), sent)

        transport, _ = self.exchange(
            self.request(
                b"POST",
                b"/jobs",
                b"Authorization: " + ALICE,
                b"Expect: 100-continue",
                b"Content-Type: application/json",
                b"Content-Length: 19",
            )
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertFalse(transport.disconnecting)

    def test_reasonPhrases(self) -> None:
        """A 429 or 431 answer has its reason phrase (twisted.web's table
        has none: its status line said "Unknown Status")."""
        for code, phrase in (
            (429, b"Too Many Requests"),
            (431, b"Request Header Fields Too Large"),
        ):
            request = DummyRequest([b""])
            _json(request, {"error": "x"}, code)
            self.assertEqual(
                (request.responseCode, request.responseMessage), (code, phrase)
            )

    def test_healthzQueryChecked(self) -> None:
        """/healthz refuses unknown parameters, as every other route."""
        transport, _ = self.exchange(self.request(b"GET", b"/healthz?bogus=1"))
        code, _, body = parse(transport.value())
        self.assertEqual(code, 400)
        self.assertIn("bogus", json.loads(body)["error"])
        transport, _ = self.exchange(self.request(b"GET", b"/healthz"))
        self.assertEqual(parse(transport.value())[0], 200)

    def test_headOfAFollowedLog(self) -> None:
        """
        C{HEAD} of a log that is followed (raw, SSE, frames; one stream or
        both) answers its headers at once: it sent no body but stayed open
        until the job ended, holding a log-stream slot and the connection.
        """
        created = self.exchange(
            self.request(
                b"POST",
                b"/jobs",
                b"Authorization: " + ALICE,
                b"Content-Type: application/json",
                body=b'{"command": "sleep", "args": ["100"]}',
            )
        )[0]
        job = json.loads(parse(created.value())[2])
        self.assertEqual(job["status"], JobStatus.RUNNING.value)
        for query in (
            b"follow=true",
            b"format=sse",
            b"stream=combined&follow=true",
            b"stream=combined&format=sse",
            b"stream=combined&format=frames&follow=true",
            b"follow=false",
        ):
            path = b"/jobs/" + job["id"].encode() + b"/logs?" + query
            transport, _ = self.exchange(
                self.request(b"HEAD", path, b"Authorization: " + ALICE)
            )
            code, headers, body = parse(transport.value())
            self.assertEqual((code, body), (200, b""), query)
            self.assertEqual(headers[b"x-job-status"], b"RUNNING")
            self.assertTrue(transport.value().endswith(b"\r\n\r\n"), query)
            # Finished: its log-stream slot is free again (a HEAD of a
            # followed log held it until the job ended).
            self.assertEqual(len(self.api._logs), 0, query)
