"""
C{jw stop ID...} and C{jw status ID...}: several ids (prefixes too), as
C{jw rm ID...} takes them. Each id gets what the command alone would show
for it; the records go to stdout in the order of the ids (a blank line
between two; with C{--json}, one list), then each failure is one line on
stderr, C{jw: ID: why}, in the order of the ids. The exit status is 1 if
any id failed; for C{jw stop}, else 3 if any job had already ended; else 0.
With one id nothing changed. The stops are sent at once, not one grace
after another.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import treq

from .support import LiveServer, runJW, waitUntil
from .test_cli import CLITestCase

#: A job that ignores SIGTERM (so only the stop's KILL ends it) and says
#: "ready" once it does.
DEAF = ("sh", "-c", 'trap "" TERM; echo ready; exec sleep 300')


async def deafJob(server: LiveServer) -> str:
    """A running job that ignores SIGTERM: its id."""
    job = await server.createJob(*DEAF)

    async def ready() -> bool:
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=stdout&follow=false"
        )
        return b"ready" in await treq.content(response)

    await waitUntil(ready, what="the job to ignore SIGTERM")
    return str(job["id"])


async def endedJob(server: LiveServer) -> str:
    """A job that has ended (COMPLETED): its id."""
    job = await server.createJob("true")
    await server.waitEnded(job["id"])
    return str(job["id"])


async def running(server: LiveServer, jobId: str) -> None:
    """Wait until the job runs."""

    async def isRunning() -> bool:
        _code, job = await server.json("GET", f"/jobs/{jobId}")
        return bool(job["status"] == "RUNNING")

    await waitUntil(isRunning, what="the job to run")


def field(block: list[str], key: str) -> str:
    """The value of C{key} in a record shown as lines."""
    for line in block:
        name, _, value = line.partition(":")
        if name == key:
            return value.strip()
    raise AssertionError(f"no {key} in {block}")


def records(out: bytes) -> list[list[str]]:
    """C{jw status A B}'s stdout: each record's lines (blocks split at blank lines)."""
    text = out.decode()
    if not text:
        return []
    return [block.splitlines() for block in text.split("\n\n")]


def recordId(block: list[str]) -> str:
    """The id of a record shown as lines (its first, C{id: ...})."""
    key, value = block[0].split(None, 1)
    assert key == "id:", block
    return value


def failureLines(err: bytes) -> list[list[str]]:
    """Each stderr line as C{[jw, ID, why]} (the waiting lines left out)."""
    return [
        line.split(": ", 2)
        for line in err.decode().splitlines()
        if not line.startswith("jw: waiting for job")
    ]


class StatusSeveralTests(CLITestCase):
    """C{jw status ID [ID ...]}."""

    timeout = 120

    async def test_severalInArgumentOrder(self) -> None:
        """
        jw status A B shows A's record then B's (whichever was created
        first), as the lines each shows alone, with a blank line between.
        """
        server = LiveServer(self)
        first = await endedJob(server)
        second = (await server.createJob("sleep", "60"))["id"]
        out = self.assertSucceeded(await runJW(server.url, "status", second[:8], first))
        blocks = records(out)
        self.assertEqual([recordId(b) for b in blocks], [second, first], out)
        alone = self.assertSucceeded(await runJW(server.url, "status", first))
        self.assertEqual(blocks[1], alone.decode().splitlines())
        self.assertEqual(field(blocks[1], "status"), "COMPLETED")

    async def test_severalAsJSONList(self) -> None:
        """jw status --json A B: one JSON document, the list of both records."""
        server = LiveServer(self)
        first, second = await endedJob(server), await endedJob(server)
        out = self.assertSucceeded(
            await runJW(server.url, "status", "--json", second[:8], first)
        )
        shown = json.loads(out)
        self.assertIsInstance(shown, list)
        self.assertEqual([job["id"] for job in shown], [second, first])
        self.assertEqual(out.count(b"\n"), 1, out)

    async def test_failuresOneLineEachExitOne(self) -> None:
        """
        jw status A UNKNOWN PREFIX B: the records of A and B on stdout; one
        line per failure on stderr, naming the id as given, in the order of
        the ids; exit 1.
        """
        server = LiveServer(self)
        first, second = await endedJob(server), await endedJob(server)
        unknown = str(uuid.uuid4())
        out, err, code = await runJW(
            server.url, "status", first, unknown, "abcdef12", second[:8]
        )
        self.assertEqual(code, 1, (out, err))
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual([recordId(b) for b in records(out)], [first, second])
        lines = failureLines(err)
        self.assertEqual(
            [line[:2] for line in lines], [["jw", unknown], ["jw", "abcdef12"]]
        )
        self.assertIn("no job id starts with abcdef12", lines[1][2])

    async def test_failuresWithJSON(self) -> None:
        """--json: the list holds the records found; failures go to stderr."""
        server = LiveServer(self)
        first = await endedJob(server)
        out, err, code = await runJW(server.url, "status", "--json", "abcdef12", first)
        self.assertEqual(code, 1, (out, err))
        self.assertEqual([job["id"] for job in json.loads(out)], [first])
        self.assertEqual([line[1] for line in failureLines(err)], ["abcdef12"])

    async def test_everyIdFailing(self) -> None:
        """Every id unknown: nothing on stdout (--json: an empty list), exit 1."""
        server = LiveServer(self)
        out, err, code = await runJW(server.url, "status", "abcdef12", "bcdef123")
        self.assertEqual((out, code), (b"", 1), err)
        self.assertEqual(len(failureLines(err)), 2, err)
        out, err, code = await runJW(
            server.url, "status", "--json", "abcdef12", "bcdef123"
        )
        self.assertEqual((json.loads(out), code), ([], 1), err)

    async def test_oneIdAsBefore(self) -> None:
        """
        One id: the record alone (--json: the object, not a list); an unknown
        one, the one line it always was, without the id before it.
        """
        server = LiveServer(self)
        first = await endedJob(server)
        out = self.assertSucceeded(await runJW(server.url, "status", "--json", first))
        self.assertEqual(json.loads(out)["id"], first)
        line = self.assertOneLineFailure(await runJW(server.url, "status", "abcdef12"))
        self.assertEqual(line, b"jw: no job id starts with abcdef12\n")

    async def test_badIdRefusedBeforeAnything(self) -> None:
        """An id that cannot be one among good ones: exit 2, nothing shown."""
        server = LiveServer(self)
        first = await endedJob(server)
        result = await runJW(server.url, "status", first, "not-an-id")
        self.assertOneLineFailure(result, b"not-an-id")
        self.assertEqual(result[2], 2)


class StopSeveralTests(CLITestCase):
    """C{jw stop ID [ID ...]}."""

    timeout = 120

    async def test_stopsSentAtOnce(self) -> None:
        """
        jw stop --grace 3 A B, both ignoring TERM: both are stopped (KILL
        after the grace) in about one grace, not two; each record shown, in
        the order of the ids; exit 0.
        """
        server = LiveServer(self)
        first, second = await deafJob(server), await deafJob(server)
        out, err, code = await runJW(
            server.url, "stop", "--grace", "3", second[:8], first
        )
        self.assertEqual(code, 0, (out, err))
        # Both stops were asked for before either job ended (one after the
        # other, the second would come a grace after the first).
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        asked = [e["time"] for e in entries if e.get("event") == "job.stop"]
        ended = [
            (await server.json("GET", f"/jobs/{i}"))[1]["ended_at"]
            for i in (first, second)
        ]
        self.assertEqual(len(asked), 2, entries)
        self.assertLess(max(asked), min(ended), "one stop after the other")
        blocks = records(out)
        self.assertEqual([recordId(b) for b in blocks], [second, first], out)
        for block in blocks:
            self.assertEqual(field(block, "status"), "STOPPED")
        # Only the lines that say what jw waits for, one per job.
        self.assertEqual(failureLines(err), [], err)
        self.assertEqual(err.count(b"jw: waiting for job"), 2, err)

    async def test_orderOfIdsNotOfAnswers(self) -> None:
        """
        jw stop A B where A takes its grace and B ends at TERM at once:
        A's record still comes first (and --json: one list, in that order).
        """
        server = LiveServer(self)
        deaf = await deafJob(server)
        quick = (await server.createJob("sleep", "300"))["id"]
        await running(server, quick)
        out, err, code = await runJW(
            server.url, "stop", "--json", "--grace", "2", deaf, quick[:8]
        )
        self.assertEqual(code, 0, (out, err))
        shown = json.loads(out)
        self.assertEqual([job["id"] for job in shown], [deaf, quick])
        self.assertEqual([job["status"] for job in shown], ["STOPPED", "STOPPED"])
        self.assertEqual(out.count(b"\n"), 1, out)

    async def test_alreadyEndedExitsThree(self) -> None:
        """
        jw stop RUNNING ENDED: the running one is stopped and shown; the
        ended one is one line (its status, nothing to stop); exit 3, as the
        stop of one ended job. With --json its record is in the list too.
        """
        server = LiveServer(self)
        ended = await endedJob(server)
        running = (await server.createJob("sleep", "300"))["id"]
        out, err, code = await runJW(server.url, "stop", running, ended[:8])
        self.assertEqual(code, 3, (out, err))
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual([recordId(b) for b in records(out)], [running])
        self.assertEqual(
            failureLines(err),
            [
                [
                    "jw",
                    ended[:8],
                    f"job {ended} had already ended (COMPLETED): nothing to stop",
                ]
            ],
        )
        again = (await server.createJob("sleep", "300"))["id"]
        out, err, code = await runJW(server.url, "stop", "--json", ended, again)
        self.assertEqual(code, 3, (out, err))
        shown = json.loads(out)
        self.assertEqual([job["id"] for job in shown], [ended, again])
        self.assertEqual([job["status"] for job in shown], ["COMPLETED", "STOPPED"])

    async def test_failureOutranksAlreadyEnded(self) -> None:
        """
        jw stop RUNNING UNKNOWN ENDED: the running one is still stopped; a
        line for each of the others, in the order of the ids; exit 1 (a
        failure), not 3.
        """
        server = LiveServer(self)
        ended = await endedJob(server)
        running = (await server.createJob("sleep", "300"))["id"]
        out, err, code = await runJW(server.url, "stop", running, "abcdef12", ended)
        self.assertEqual(code, 1, (out, err))
        self.assertEqual([recordId(b) for b in records(out)], [running])
        self.assertEqual([line[1] for line in failureLines(err)], ["abcdef12", ended])
        job = await server.waitEnded(running)
        self.assertEqual(job["status"], "STOPPED")

    async def test_otherUsersJobFails(self) -> None:
        """bob's jw stop of alice's job among his own: one line, exit 1."""
        server = LiveServer(self)
        alices = (await server.createJob("sleep", "300"))["id"]
        bobs = (await server.createJob("sleep", "300", user="bob"))["id"]
        out, err, code = await runJW(server.url, "stop", bobs, alices, user="bob")
        self.assertEqual(code, 1, (out, err))
        self.assertEqual([recordId(b) for b in records(out)], [bobs])
        self.assertEqual([line[1] for line in failureLines(err)], [alices])
        _code, job = await server.json("GET", f"/jobs/{alices}", "ada")
        self.assertEqual(job["status"], "RUNNING")

    async def test_oneIdAsBefore(self) -> None:
        """
        One ended id: the one line it always was (no id before it), exit 3,
        --json the record itself (not a list).
        """
        server = LiveServer(self)
        ended = await endedJob(server)
        line = self.assertOneLineFailure(await runJW(server.url, "stop", ended[:8]))
        said = f"jw: job {ended} had already ended (COMPLETED): nothing to stop\n"
        self.assertEqual(line, said.encode())
        out, _err, code = await runJW(server.url, "stop", "--json", ended)
        self.assertEqual((json.loads(out)["id"], code), (ended, 3))

    async def test_badIdRefusedBeforeAnything(self) -> None:
        """An id that cannot be one among good ones: exit 2, nothing stopped."""
        server = LiveServer(self)
        running = (await server.createJob("sleep", "300"))["id"]
        result = await runJW(server.url, "stop", running, "xyz")
        self.assertOneLineFailure(result, b"xyz")
        self.assertEqual(result[2], 2)
        _code, job = await server.json("GET", f"/jobs/{running}", "ada")
        self.assertEqual(job["status"], "RUNNING")


class SingleIdVerbsTests(CLITestCase):
    """C{jw logs} and C{jw wait} still take one id."""

    timeout = 60

    async def test_logsAndWaitTakeOne(self) -> None:
        server = LiveServer(self)
        some: Any = [str(uuid.uuid4()), str(uuid.uuid4())]
        for verb in ("logs", "wait"):
            result = await runJW(server.url, verb, *some)
            self.assertOneLineFailure(result, b"takes one ID")
            self.assertEqual(result[2], 2)


class NoServerTests(CLITestCase):
    """
    Several ids and no server to answer (none listening, a wrong CA): one
    line, as for one id, exit 1; it was said again for each id (new user
    round 28).
    """

    async def test_oneLineForAllIds(self) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"https://localhost:{port}"  # (nothing listens there now)
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for verb in ("status", "stop", "rm"):
            out, err, code = await runJW(url, verb, *ids)
            self.assertEqual(code, 1, (verb, err))
            self.assertEqual(out, b"", verb)
            self.assertEqual(err.count(b"\n"), 1, (verb, err))
            self.assertNotIn(ids[0].encode(), err, verb)
