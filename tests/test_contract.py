"""Framed log streams (SSE), tails, long polls and the health check."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import treq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.jobs.spool import tailOffset
from jobworker.server.sse import EventStream, frame, parseLastEventId, payload

from .support import LiveServer, basic, runJW, sharedPath, sleep


def parseEvents(body: bytes) -> list[dict[str, Any]]:
    """Split an SSE body into events (comments dropped), data decoded as JSON."""
    events = []
    for block in body.decode("utf-8").split("\n\n"):
        event: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            event[name] = json.loads(value) if name == "data" else value
        if event:
            events.append(event)
    return events


def bytesOf(events: list[dict[str, Any]], stream: str) -> bytes:
    """The output carried by the C{stream} events, decoded."""
    out = b""
    for event in events:
        if event.get("event") == stream:
            data = event["data"]
            out += (
                data["text"].encode("utf-8")
                if "text" in data
                else base64.b64decode(data["base64"])
            )
    return out


class RecordingConsumer:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class FramingTests(SynchronousTestCase):
    def test_payloadSaysWhich(self) -> None:
        """UTF-8 goes as text, anything else as base64, and says which."""
        self.assertEqual(payload("h\u00e9\n".encode()), {"text": "h\u00e9\n"})
        self.assertEqual(payload(b"\xff\x00"), {"base64": "/wA="})

    def test_frame(self) -> None:
        """An event is id, event and one JSON data line, then a blank line."""
        self.assertEqual(
            frame("stdout", {"text": "a\nb"}, "stdout:3"),
            b'id: stdout:3\nevent: stdout\ndata: {"text":"a\\nb"}\n\n',
        )

    def test_lastEventId(self) -> None:
        """Last-Event-ID resumes its own stream; any other id is ignored."""
        self.assertEqual(parseLastEventId("stderr:42", "stderr"), 42)
        for other in ("stdout:42", "stderr:", "stderr:x", "garbage"):
            self.assertIsNone(parseLastEventId(other, "stderr"))

    def test_heartbeatAndOffsets(self) -> None:
        """Ids carry the offset after each chunk; a comment every 15 s."""
        clock = Clock()
        consumer = RecordingConsumer()
        events = EventStream(consumer, "stdout", 10, clock)  # type: ignore[arg-type]
        events.write(b"abc")
        clock.advance(15)
        events.write(b"de")
        clock.advance(15)
        events.close()
        clock.advance(60)
        self.assertEqual(
            consumer.written,
            [
                frame("stdout", {"text": "abc"}, "stdout:13"),
                b": heartbeat\n\n",
                frame("stdout", {"text": "de"}, "stdout:15"),
                b": heartbeat\n\n",
            ],
        )
        self.assertEqual(clock.getDelayedCalls(), [])


class TailOffsetTests(SynchronousTestCase):
    def check(self, content: bytes, lines: int) -> bytes:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return content[tailOffset(path, len(content), lines, block=4) :]

    def test_tail(self) -> None:
        """Like tail -n: trailing newline or not, short files, zero lines."""
        self.assertEqual(self.check(b"a\nb\nc\n", 2), b"b\nc\n")
        self.assertEqual(self.check(b"a\nb\nc", 2), b"b\nc")
        self.assertEqual(self.check(b"a\nb\n", 5), b"a\nb\n")
        self.assertEqual(self.check(b"a\nb\n", 0), b"")
        self.assertEqual(self.check(b"", 3), b"")
        self.assertEqual(self.check(b"\n\n\n", 2), b"\n\n")
        long = b"".join(b"line %d\n" % i for i in range(100))
        self.assertEqual(self.check(long, 3), b"line 97\nline 98\nline 99\n")


class LiveContractTests(TestCase):
    async def waitFile(self, server: LiveServer, jobId: str, expected: bytes) -> None:
        for _ in range(500):
            response = await server.request("GET", f"/jobs/{jobId}/logs")
            if expected in await treq.content(response):
                return
            await sleep(0.02)
        raise AssertionError("output never came")

    async def test_sseStreamAndEnd(self) -> None:
        """SSE: chunks with stream:offset ids, base64 for binary, a final end."""
        server = LiveServer(self)
        go = sharedPath(self)
        job = await server.createJob(
            "sh",
            "-c",
            'printf "one\\n"; printf "\\377\\376" >&2; '
            'while [ ! -e "$1" ]; do sleep 0.02; done; printf "two\\n"; exit 3',
            "sh",
            go,
        )
        await self.waitFile(server, job["id"], b"one\n")
        pending = server.request(
            "GET",
            f"/jobs/{job['id']}/logs",
            headers={b"accept": [b"text/event-stream"]},
        )
        open(go, "w").close()
        response = await pending
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"),
            [b"text/event-stream; charset=utf-8"],
        )
        events = parseEvents(await treq.content(response))
        self.assertEqual(bytesOf(events, "stdout"), b"one\ntwo\n")
        self.assertEqual(events[-1]["event"], "end")
        self.assertEqual(events[-1]["data"]["status"], "FAILED")
        self.assertEqual(events[-1]["data"]["exit_code"], 3)
        self.assertEqual([e["id"] for e in events if "id" in e][-1], "stdout:8")
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?format=sse&stream=stderr"
        )
        events = parseEvents(await treq.content(response))
        self.assertEqual(events[0]["data"], {"base64": "//4="})
        self.assertEqual(events[0]["id"], "stderr:2")

    async def test_resumeWithLastEventId(self) -> None:
        """Reconnecting with Last-Event-ID gives the rest: no gap, no repeat."""
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "for i in 1 2 3 4 5; do echo $i; done")
        await server.waitEnded(job["id"])
        response = await server.request("GET", f"/jobs/{job['id']}/logs?format=sse")
        events = parseEvents(await treq.content(response))
        whole = bytesOf(events, "stdout")
        self.assertEqual(whole, b"1\n2\n3\n4\n5\n")
        headers = {**basic("alice"), b"last-event-id": [b"stdout:4"]}
        response = await server.http.request(
            "GET", f"{server.url}/jobs/{job['id']}/logs?format=sse", headers=headers
        )
        rest = bytesOf(parseEvents(await treq.content(response)), "stdout")
        self.assertEqual(whole[:4] + rest, whole)
        headers[b"last-event-id"] = [b"stderr:4"]
        response = await server.http.request(
            "GET", f"{server.url}/jobs/{job['id']}/logs?format=sse", headers=headers
        )
        everything = bytesOf(parseEvents(await treq.content(response)), "stdout")
        self.assertEqual(everything, whole)

    async def test_truncatedEvent(self) -> None:
        """Output dropped past the cap is announced before the end."""
        server = LiveServer(self, "--max-log-bytes=4")
        job = await server.createJob("echo", "too long")
        await server.waitEnded(job["id"])
        response = await server.request("GET", f"/jobs/{job['id']}/logs?format=sse")
        events = parseEvents(await treq.content(response))
        self.assertEqual(bytesOf(events, "stdout"), b"too ")
        self.assertEqual([e["event"] for e in events][-2:], ["truncated", "end"])
        self.assertEqual(events[-2]["data"], {"stream": "stdout", "dropped": 5})

    async def test_tailQuery(self) -> None:
        """?tail=N gives the last N lines (none before offset); bad format is 400."""
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "seq 1 10")
        await server.waitEnded(job["id"])
        response = await server.request("GET", f"/jobs/{job['id']}/logs?tail=3")
        self.assertEqual(await treq.content(response), b"8\n9\n10\n")
        self.assertEqual(response.headers.getRawHeaders(b"x-output-offset"), [b"14"])
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?tail=3&offset=18"
        )
        self.assertEqual(await treq.content(response), b"10\n")
        code, _ = await server.json("GET", f"/jobs/{job['id']}/logs?format=xml")
        self.assertEqual(code, 400)

    async def test_waitLongPoll(self) -> None:
        """?wait returns when the job ends, or when the wait passes."""
        server = LiveServer(self)
        go = sharedPath(self)
        job = await server.createJob(
            "sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.02; done', "sh", go
        )
        code, still = await server.json("GET", f"/jobs/{job['id']}?wait=0.2")
        self.assertEqual((code, still["status"]), (200, "RUNNING"))
        # Sent now (a coroutine would wait for its await, after the go).
        pending = ensureDeferred(server.json("GET", f"/jobs/{job['id']}?wait=30"))
        await sleep(0.5)
        self.assertFalse(pending.called, "answered while the job ran")
        open(go, "w").close()
        code, ended = await pending
        self.assertEqual(ended["status"], "COMPLETED")
        for bad in ("-1", "301", "soon"):
            code, _ = await server.json("GET", f"/jobs/{job['id']}?wait={bad}")
            self.assertEqual(code, 400, bad)

    async def test_repeatedOrUnknownParameters(self) -> None:
        """A query parameter given twice, or unknown, is a 400, never ignored."""
        server = LiveServer(self)
        for query in ("limit=1&limit=2", "limits=5", "status=RUNNING&status=FAILED"):
            code, body = await server.json("GET", f"/jobs?{query}")
            self.assertEqual(code, 400, query)
            self.assertIn("error", body)

    async def test_healthz(self) -> None:
        """/healthz answers without credentials and says nothing more."""
        server = LiveServer(self)
        code, body = await server.json("GET", "/healthz", user=None)
        self.assertEqual((code, body), (200, {"status": "ok"}))

    async def test_jwWaitAndTail(self) -> None:
        """jw wait exits with the job's status (124 on timeout); jw logs --tail."""
        server = LiveServer(self)
        go = sharedPath(self)
        job = await server.createJob(
            "sh",
            "-c",
            'seq 1 5; while [ ! -e "$1" ]; do sleep 0.02; done; exit 4',
            "sh",
            go,
        )
        out, err, code = await runJW(server.url, "wait", "--timeout", "0.2", job["id"])
        self.assertEqual(code, 124, err)
        self.assertIn(b"has not ended (RUNNING)", err)
        open(go, "w").close()
        out, err, code = await runJW(server.url, "wait", job["id"])
        self.assertEqual(code, 4, err)
        out, err, code = await runJW(server.url, "logs", "--tail", "2", job["id"])
        self.assertEqual((out, code), (b"4\n5\n", 0))
        out, err, code = await runJW(
            server.url, "logs", "--follow", "--tail", "1", job["id"]
        )
        self.assertEqual((out, code), (b"5\n", 4))


class SilentJobTests(TestCase):
    async def test_silentJobHasNoFilesButEmptyLogs(self) -> None:
        """A job that prints nothing has no output files; its logs are empty."""
        server = LiveServer(self)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        self.assertFalse(
            os.path.exists(os.path.join(server.stateDir, "jobs", job["id"]))
        )
        for query in ("", "?stream=stderr", "?follow=true", "?tail=3"):
            response = await server.request("GET", f"/jobs/{job['id']}/logs{query}")
            self.assertEqual((response.code, await treq.content(response)), (200, b""))
        response = await server.request("GET", f"/jobs/{job['id']}/logs?format=sse")
        events = parseEvents(await treq.content(response))
        self.assertEqual([e["event"] for e in events], ["end"])
        code, _ = await server.json("DELETE", f"/jobs/{job['id']}")
        self.assertEqual(code, 200)


class FollowBothTests(TestCase):
    async def test_logsFollowBothStreamsAndExitStatus(self) -> None:
        """jw logs --follow: stdout to stdout, stderr to stderr, the job's status."""
        server = LiveServer(self)
        job = await server.createJob(
            "sh", "-c", "echo out; echo err >&2; sleep 0.3; echo more; exit 5"
        )
        out, err, code = await runJW(server.url, "logs", "--follow", job["id"])
        self.assertEqual((out, err, code), (b"out\nmore\n", b"err\n", 5))
        out, err, code = await runJW(
            server.url, "logs", "--follow", "--stderr", job["id"]
        )
        self.assertEqual((out, err, code), (b"err\n", b"", 5))
