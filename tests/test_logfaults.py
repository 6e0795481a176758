"""
Log responses when the disk fails them, over real TLS: an output file that
cannot be read cuts the response (it ended as if that were all the output,
or hung on its Content-Length); a tail of it is a 503; an event stream whose
job is deleted while it is sent still ends with the job's end.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone, ResponseNeverReceived

from .support import LiveServer, sleep


async def waitFor(server: LiveServer, jobId: str, marker: bytes) -> None:
    for _ in range(500):
        response = await server.request("GET", f"/jobs/{jobId}/logs", "alice")
        if marker in await treq.content(response):
            return
        await sleep(0.02)
    raise AssertionError(f"job {jobId} never printed {marker!r}")


class Collect(Protocol):
    """A body, and how it ended (L{ResponseDone} or a failure)."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.ended.callback(None)


async def body(response: Any, within: float = 10.0) -> tuple[bytes, Failure]:
    collect = Collect()
    response.deliverBody(collect)
    await collect.ended.addTimeout(within, reactor)
    assert collect.reason is not None
    return collect.data, collect.reason


class UnreadableOutputTests(TestCase):
    timeout = 60

    async def test_goneOutputFailsTheResponse(self) -> None:
        """
        A running job's output file removed under it: a read (raw, with its
        Content-Length; followed; as events) fails at once instead of ending
        cleanly with nothing (or waiting out the idle timeout), and a tail
        is a 503 with Retry-After, not a 500.
        """
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "echo hello; exec sleep 30")
        await waitFor(server, job["id"], b"hello")
        os.unlink(os.path.join(server.stateDir, "jobs", job["id"], "stdout"))
        for query in ("", "?follow=true", "?format=sse", "?stream=combined"):
            try:
                response = await server.request(
                    "GET", f"/jobs/{job['id']}/logs{query}", "alice"
                )
            except ResponseNeverReceived:
                continue  # cut before its headers left: a failure too
            self.assertEqual(response.code, 200, query)
            data, reason = await body(response)
            self.assertFalse(reason.check(ResponseDone), (query, data, reason))
            self.assertNotIn(b"event: end", data, query)
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?tail=1", "alice"
        )
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"])
        self.assertIn("cannot be read", json.loads(await response.content())["error"])
        await server.json("POST", f"/jobs/{job['id']}/stop", "alice")

    async def test_eventsEndWhenTheJobIsDeletedMeanwhile(self) -> None:
        """
        A follower (one stream, or both) that reads slowly (paused) while
        its ended job is deleted still gets every byte and the C{end} event
        with the job's record: it got C{{"error": "no such job"}} in the middle of the
        event stream (a lookup after the output was sent).
        """
        for query in ("format=sse", "stream=combined&format=sse"):
            await self.deletedMeanwhile(query)

    async def deletedMeanwhile(self, query: str) -> None:
        """One follower of L{test_eventsEndWhenTheJobIsDeletedMeanwhile}."""
        server = LiveServer(self)
        size = 20_000_000
        job = await server.createJob(
            "sh", "-c", f"head -c {size} /dev/zero | tr '\\0' y"
        )
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?{query}", "alice"
        )
        self.assertEqual(response.code, 200)

        class Paused(Collect):
            paused = False

            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                if not self.paused:
                    self.paused = True
                    self.transport.pauseProducing()  # type: ignore[attr-defined]
                    resumed.addCallback(
                        lambda _: self.transport.resumeProducing()  # type: ignore[attr-defined]
                    )

        resumed: Deferred[None] = Deferred()
        collect = Paused()
        response.deliverBody(collect)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        code, _ = await server.json("DELETE", f"/jobs/{job['id']}", "alice")
        self.assertEqual(code, 200)
        resumed.callback(None)
        await collect.ended.addTimeout(30, reactor)
        reason = collect.reason
        assert reason is not None
        self.assertTrue(reason.check(ResponseDone), reason)
        self.assertNotIn(b'{"error"', collect.data[-4096:])
        last = collect.data.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
        self.assertIn(b"event: end", last)
        record = json.loads(last.split(b"data: ", 1)[1])
        self.assertEqual((record["id"], record["stdout_bytes"]), (job["id"], size))
