"""
Log responses when the disk fails them, over real TLS: an output file that
cannot be read cuts the response (it ended as if that were all the output,
or hung on its Content-Length); a tail of it is a 503; an event stream whose
job is deleted while it is sent still ends with the job's end.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone, ResponseNeverReceived

from jobworker.jobs import combined, spool
from jobworker.jobs.folders import openOutput

from .support import LiveServer
from .test_identity import waitOutput


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
        cleanly with nothing (or waiting out the idle timeout): a 503 with
        the reason, as nothing was sent yet (it was a cut connection: fault
        round 30); and a tail is a 503 with Retry-After, not a 500.
        """
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "echo hello; exec sleep 30")
        await waitOutput(server, job["id"], b"hello")
        os.unlink(os.path.join(server.stateDir, "jobs", job["id"], "stdout"))
        for query in ("", "?follow=true", "?format=sse", "?stream=combined"):
            response = await server.request(
                "GET", f"/jobs/{job['id']}/logs{query}", "alice"
            )
            error = json.loads(await response.content())["error"]
            self.assertEqual(response.code, 503, (query, error))
            self.assertIn("cannot be read now", error, query)
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
        size = 20_000_000
        oneWriteThenTheOther = f"head -c {size} /dev/zero | tr '\\0' y; echo e >&2"
        # Thousands of switches: an order file longer than one read of it,
        # read on (through the descriptor kept) after the deletion.
        interleaved = (
            "/usr/bin/python3 -c 'import sys\n"
            "for i in range(2000):\n"
            ' sys.stdout.write("y" * 9999 + "\\n"); sys.stdout.flush()\n'
            ' sys.stderr.write("e\\n"); sys.stderr.flush()\''
        )
        for query, script in (
            ("format=sse", oneWriteThenTheOther),
            ("stream=combined&format=sse", oneWriteThenTheOther),
            ("stream=combined&format=sse", interleaved),
        ):
            await self.deletedMeanwhile(query, script, size)

    async def deletedMeanwhile(self, query: str, script: str, size: int) -> None:
        """One follower of L{test_eventsEndWhenTheJobIsDeletedMeanwhile}."""
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", script)
        # Ended before the stream starts: its files all exist then (stderr's
        # is read last, after the deletion, through the descriptor opened
        # at the start).
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
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
        if query.startswith("stream=combined"):
            # stderr, read after the deletion, from the file opened at the start.
            stderr = 0
            for block in collect.data.split(b"\n\n"):
                lines = dict(
                    line.split(b": ", 1) for line in block.split(b"\n") if b": " in line
                )
                if lines.get(b"event") == b"stderr":
                    stderr += len(json.loads(lines[b"data"])["text"])
            self.assertEqual(stderr, record["stderr_bytes"])


class DescriptorShortageTests(TestCase):
    timeout = 60

    async def test_shortOfDescriptorsAsksAgain(self) -> None:
        """
        The server has no descriptor left (EMFILE) as a log read opens the
        job's files: a 503 with Retry-After before any header, in every
        form, so a client asks again. It was 200, then the response broken
        off (a note of an earlier session). Once descriptors are back, the
        output is read.
        """
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "echo hello; echo oops >&2")
        await server.waitEnded(job["id"])
        folder = os.path.join(server.stateDir, "jobs", job["id"])

        def short(path: str) -> int:
            if path.startswith(folder):
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return openOutput(path)

        self.patch(spool, "openOutput", short)
        self.patch(combined, "openOutput", short)
        queries = (
            "",
            "?follow=true",
            "?format=sse",
            "?stream=combined",
            "?stream=combined&format=frames",
            "?stream=combined&format=sse",
        )
        for query in queries:
            response = await server.request(
                "GET", f"/jobs/{job['id']}/logs{query}", "alice"
            )
            self.assertEqual(response.code, 503, query)
            self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
            error = json.loads(await response.content())["error"]
            self.assertIn("Too many open files", error, query)
        self.patch(spool, "openOutput", openOutput)
        self.patch(combined, "openOutput", openOutput)
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=combined", "alice"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"hello\noops\n")


class OutputFileSwappedTests(TestCase):
    """
    A job's folder is its own where it writes its output itself (Slurm's
    shared --slurm-output-dir): it replaced its stdout with a symlink to a
    root-only file, and the server (root) served that file's bytes (the
    token key, the TLS key, /etc/shadow; a Slurm user's review). Output is
    opened without following a symlink, and must be a regular file with
    one link (a FIFO must not hang the reader either).
    """

    timeout = 30

    async def swapped(self, make: Any) -> bytes:
        server = LiveServer(self)
        job = await server.createJob("echo", "hello")
        await server.waitEnded(job["id"])
        path = os.path.join(server.manager._executor.outputDir(job["id"]), "stdout")
        os.unlink(path)
        make(path)
        try:
            response = await server.request(
                "GET", f"/jobs/{job['id']}/logs?stream=stdout", "alice"
            )
        except ResponseNeverReceived:
            return b""  # output that cannot be read cuts the response
        body = Collect()
        response.deliverBody(body)
        await body.ended
        return body.data

    async def test_symlink(self) -> None:
        secret = os.path.abspath(self.mktemp())
        with open(secret, "w") as f:
            f.write("SECRET-SECRET")
        os.chmod(secret, 0o600)
        data = await self.swapped(lambda path: os.symlink(secret, path))
        self.assertNotIn(b"SECRET", data)

    async def test_hardLink(self) -> None:
        secret = os.path.abspath(self.mktemp())
        with open(secret, "w") as f:
            f.write("SECRET-SECRET")
        data = await self.swapped(lambda path: os.link(secret, path))
        self.assertNotIn(b"SECRET", data)

    async def test_fifo(self) -> None:
        data = await self.swapped(os.mkfifo)
        self.assertEqual(data, b"")
