"""
C{jw drain}: an Admin drains the server before a restart (C{POST /drain}),
waits for its running jobs to end (C{--wait}: C{GET /drain?wait=300}, asked
again), looks at it (C{--status}) or ends it (C{--end}); a Developer is
refused in one line. Against a real server (L{LiveServer}), jw run as a
subprocess; the wait's own turns (a count that changes, a drain ended
meanwhile, an interrupt) also against a scripted client.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.completion import COMPLETION, OPTIONS
from jobworker.client.drain import doDrain, drainLine
from jobworker.client.interrupts import Interrupts
from jobworker.client.parser import VERBS
from jobworker.client.quick import drive
from jobworker.client.streams import Streams

from .support import (
    JW,
    JWAssertions,
    LiveServer,
    bashOffers,
    fishOffers,
    jwEnvironment,
    runJW,
    waitUntil,
)

#: A job that runs until a line comes on its stdin.
_READS = ("sh", "-c", "read l")

#: C{jw drain}'s line while jobs run: since when (local time, and how long
#: ago), whose, and the counts.
_DRAINING = re.compile(
    r"draining since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(\d+s ago\), by ada: "
    r"(\d+) running, (\d+) queued\n"
)


class DrainCLITests(TestCase, JWAssertions):
    """C{jw drain} against a real server."""

    timeout = 120

    def setUp(self) -> None:
        self.config = os.path.abspath(self.mktemp())
        os.makedirs(self.config)

    def jw(
        self, server: LiveServer, *args: str, user: str = "ada", **extra: str
    ) -> Any:
        """Run jw as C{user} (ada: an Admin) against C{server}."""
        return runJW(server.url, *args, user=user, XDG_CONFIG_HOME=self.config, **extra)

    async def reading(self, server: LiveServer) -> dict[str, Any]:
        """A job that runs until it is given a line (C{server.sendStdin})."""
        job = await server.createJob(*_READS, user="ada", stdin=True)

        async def started() -> bool:
            code, now = await server.json("GET", f"/jobs/{job['id']}", "ada")
            return code == 200 and now["status"] == "RUNNING"

        await waitUntil(started, what="the job's start")
        return job

    async def test_drainStatusEnd(self) -> None:
        """
        C{jw drain --status} before, C{jw drain}, C{--status} again, then
        C{--end} (and once more: none was on); new jobs are refused in
        between, and the running one runs on.
        """
        server = LiveServer(self, "--max-running=1")
        running = await self.reading(server)
        queued = await server.createJob("true", user="ada")
        self.assertEqual(queued["status"], "PENDING")

        out = self.assertSucceeded(await self.jw(server, "drain", "--status"))
        self.assertEqual(out, b"not draining: 1 running, 1 queued\n")
        self.assertFalse(server.manager.draining()["draining"])

        out = self.assertSucceeded(await self.jw(server, "drain"))
        self.assertRegex(out.decode(), _DRAINING)
        self.assertEqual(_DRAINING.fullmatch(out.decode()).groups(), ("1", "1"))  # type: ignore[union-attr]
        state = server.manager.draining()
        self.assertEqual((state["draining"], state["by"]), (True, "ada"))
        since = state["since"]
        # Again: the same drain (its time kept).
        out = self.assertSucceeded(await self.jw(server, "drain"))
        self.assertRegex(out.decode(), _DRAINING)
        self.assertEqual(server.manager.draining()["since"], since)
        # Nothing new is taken meanwhile.
        refused = await self.jw(server, "exec", "--", "true")
        self.assertOneLineFailure(refused, b"draining")

        out = self.assertSucceeded(await self.jw(server, "drain", "--status"))
        self.assertEqual(_DRAINING.fullmatch(out.decode()).groups(), ("1", "1"))  # type: ignore[union-attr]
        self.assertTrue(server.manager.draining()["draining"])

        out = self.assertSucceeded(await self.jw(server, "drain", "--end"))
        self.assertRegex(
            out.decode(),
            r"\Adrain ended: 1 running, 1 queued \(it was on since \d{4}-.* "
            r"\(\d+s ago\), by ada\)\n\Z",
        )
        self.assertFalse(server.manager.draining()["draining"])
        out = self.assertSucceeded(await self.jw(server, "drain", "--end"))
        self.assertEqual(out, b"no drain was on: 1 running, 1 queued\n")

        # The running job ran on; the queued one starts once it has ended.
        self.assertEqual(
            (await server.sendStdin(running["id"], b"go\n", user="ada"))[0], 200
        )
        self.assertEqual((await server.waitEnded(running["id"]))["status"], "COMPLETED")
        self.assertEqual((await server.waitEnded(queued["id"]))["status"], "COMPLETED")

    async def test_drainedAtOnce(self) -> None:
        """With no job running, C{jw drain} says the server may be restarted."""
        server = LiveServer(self)
        out = self.assertSucceeded(await self.jw(server, "drain"))
        self.assertEqual(
            out, b"drained: no job running (0 queued); the server may be restarted\n"
        )
        out = self.assertSucceeded(await self.jw(server, "drain", "--wait"))
        self.assertEqual(
            out, b"drained: no job running (0 queued); the server may be restarted\n"
        )

    async def test_wait(self) -> None:
        """
        C{jw drain --wait} returns once the running job has ended (fed its
        line), saying on stderr what it waits for; the queued job stays
        queued.
        """
        server = LiveServer(self, "--max-running=1")
        running = await self.reading(server)
        queued = await server.createJob("true", user="ada")
        waiting = self.jw(server, "drain", "--wait")
        await waitUntil(lambda: server.manager.draining()["draining"], what="the drain")
        self.assertFalse(waiting.called)
        self.assertEqual(
            (await server.sendStdin(running["id"], b"go\n", user="ada"))[0], 200
        )
        out, err, code = await waiting
        self.assertEqual(
            (code, err), (0, b"jw: waiting for 1 running job to end (1 queued)\n")
        )
        self.assertEqual(
            out, b"drained: no job running (1 queued); the server may be restarted\n"
        )
        self.assertEqual((await server.waitEnded(running["id"]))["status"], "COMPLETED")
        code, job = await server.json("GET", f"/jobs/{queued['id']}", "ada")
        self.assertEqual(job["status"], "PENDING")
        self.assertTrue(server.manager.draining()["draining"])

    async def test_waitEndedMeanwhile(self) -> None:
        """
        A drain ended by someone else while C{jw drain --wait} waits: said
        on stderr, exit 1; with C{--json}, the state as it is then.
        """
        server = LiveServer(self)
        running = await self.reading(server)
        self.addCleanup(server.sendStdin, running["id"], b"go\n", user="ada")
        waiting = self.jw(server, "drain", "--wait", "--json")
        await waitUntil(lambda: server.manager.draining()["draining"], what="the drain")
        code, _ = await server.json("DELETE", "/drain", "ada")
        self.assertEqual(code, 200)
        out, err, code = await waiting
        self.assertEqual(code, 1, (out, err))
        self.assertIn(b"jw: the drain was ended meanwhile", err)
        self.assertNotIn(b"Traceback", err)
        state = json.loads(out)
        self.assertEqual(
            (state["draining"], state["running"], state["queued"]), (False, 1, 0)
        )

    async def test_interrupted(self) -> None:
        """
        Ctrl-C on C{jw drain --wait}: exit 130, the drain goes on, and jw
        says so, with how to end it.
        """
        server = LiveServer(self)
        running = await self.reading(server)
        self.addCleanup(server.sendStdin, running["id"], b"go\n", user="ada")
        environ = jwEnvironment(server.url, "ada", XDG_CONFIG_HOME=self.config)

        def interrupt() -> tuple[int, bytes, bytes]:
            proc = subprocess.Popen(
                [JW, "drain", "--wait"],
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                assert proc.stderr is not None
                first = proc.stderr.readline()  # waiting for 1 running job
                proc.send_signal(signal.SIGINT)
                out, rest = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            return proc.returncode, out, first + rest

        code, out, err = await deferToThread(interrupt)
        self.assertEqual((code, out), (130, b""), err)
        self.assertEqual(
            err,
            b"jw: waiting for 1 running job to end (0 queued)\n"
            b"jw: SIGINT: no longer waiting; the drain goes on (jw drain --status "
            b"shows it, jw drain --end ends it)\n",
        )
        self.assertTrue(server.manager.draining()["draining"])

    async def test_developerRefused(self) -> None:
        """A Developer (or a Reader) gets the server's 403 in one line, exit 1."""
        server = LiveServer(self)
        for user in ("alice", "rita"):
            for args in ([], ["--wait"], ["--status"], ["--end"], ["--json"]):
                line = self.assertOneLineFailure(
                    await self.jw(server, "drain", *args, user=user),
                    b"jw: forbidden: ",
                    b"lacks permission server.drain",
                )
                self.assertIn(b"Developer" if user == "alice" else b"Reader", line)
        self.assertFalse(server.manager.draining()["draining"])
        # A password the server refuses: as for every verb.
        refused = await self.jw(server, "drain", JW_PASSWORD="wrong")
        self.assertOneLineFailure(refused, b"jw: authentication failed")
        self.assertEqual(refused[2], 1)
        self.assertFalse(server.manager.draining()["draining"])

    async def test_json(self) -> None:
        """C{--json}: the API's document, one on stdout, for each form."""
        server = LiveServer(self)
        running = await self.reading(server)
        out = self.assertSucceeded(await self.jw(server, "drain", "--status", "--json"))
        self.assertEqual(
            json.loads(out),
            {
                "draining": False,
                "since": None,
                "by": None,
                "reason": None,
                "running": 1,
                "queued": 0,
            },
        )
        out = self.assertSucceeded(await self.jw(server, "drain", "--json"))
        state = json.loads(out)
        self.assertEqual(
            (state["draining"], state["by"], state["running"]), (True, "ada", 1)
        )
        self.assertTrue(state["since"].endswith("Z"), state)
        waiting = self.jw(server, "drain", "--wait", "--json")
        self.assertEqual(
            (await server.sendStdin(running["id"], b"go\n", user="ada"))[0], 200
        )
        out, err, code = await waiting
        self.assertEqual(code, 0, err)
        state = json.loads(out)
        self.assertEqual((state["draining"], state["running"]), (True, 0))
        out = self.assertSucceeded(await self.jw(server, "drain", "--end", "--json"))
        self.assertEqual(
            json.loads(out),
            {
                "draining": False,
                "since": None,
                "by": None,
                "reason": None,
                "running": 0,
                "queued": 0,
            },
        )

    async def test_oneOfThem(self) -> None:
        """--wait, --status and --end exclude each other: exit 2, nothing sent."""
        server = LiveServer(self)
        for args in (
            ["--wait", "--end"],
            ["--status", "--end"],
            ["--wait", "--status"],
        ):
            result = await self.jw(server, "drain", *args)
            self.assertOneLineFailure(result, b"choose one")
            self.assertEqual(result[2], 2)
        self.assertFalse(server.manager.draining()["draining"])
        result = await self.jw(server, "drain", "extra")
        self.assertOneLineFailure(result, b"(see jw drain --help)")
        self.assertEqual(result[2], 2)

    async def test_help(self) -> None:
        """C{jw help drain} is C{jw drain --help}; C{jw --help} lists it."""
        server = LiveServer(self)
        help = self.assertSucceeded(await self.jw(server, "help", "drain"))
        self.assertEqual(
            help, self.assertSucceeded(await self.jw(server, "drain", "--help"))
        )
        for flag in (b"--wait", b"--status", b"--end", b"--json", b"Admins only"):
            self.assertIn(flag, help)
        self.assertRegex(
            self.assertSucceeded(await self.jw(server, "--help")).decode(),
            r"\n +drain +take no new job",
        )
        result = await self.jw(server, "drian")
        self.assertOneLineFailure(result, b"did you mean 'drain'?")


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def seconds(self) -> float:
        return self.now


class _ScriptedClient:
    """
    The drain calls of a client, answered from a script: C{POST /drain}
    with the first state, each C{GET /drain?wait=} with the next (or a
    function that raises, called).
    """

    renewal = None

    def __init__(self, *states: Any) -> None:
        self.reactor = _Clock()
        self.states = list(states)
        self.waits: list[float] = []

    def bearer(self) -> None:
        return None

    async def pause(self, seconds: float) -> None:
        self.reactor.now += seconds

    def _next(self) -> dict[str, Any]:
        state = self.states.pop(0)
        if callable(state):
            state()  # (it raises)
        self.reactor.now += 300
        return dict(state)

    async def startDrain(self) -> dict[str, Any]:
        return self._next()

    async def drainState(self, wait: float = 0) -> dict[str, Any]:
        self.waits.append(wait)
        return self._next()


def _state(running: int, draining: bool = True, queued: int = 0) -> dict[str, Any]:
    return {
        "draining": draining,
        "since": "2026-01-02T03:04:05.000Z" if draining else None,
        "by": "ada" if draining else None,
        "running": running,
        "queued": queued,
    }


class WaitTurnsTests(SynchronousTestCase):
    """The turns of C{jw drain --wait}'s long polls, on a scripted client."""

    def drain(self, client: _ScriptedClient, *flags: str) -> Any:
        options = argparse.Namespace(
            wait="--wait" in flags,
            status=False,
            end=False,
            json="--json" in flags,
        )
        out, messages = io.BytesIO(), io.StringIO()
        streams = Streams(out=out, err=out, messages=messages, inp=None)
        code = drive(doDrain(options, client, streams, Interrupts()))
        return out.getvalue(), messages.getvalue(), code

    def test_countChanges(self) -> None:
        """A line each time an answer shows another count of running jobs."""
        client = _ScriptedClient(_state(3, queued=2), _state(3), _state(1), _state(0))
        out, err, code = self.drain(client, "--wait")
        self.assertEqual(code, 0)
        self.assertEqual(
            err,
            "jw: waiting for 3 running jobs to end (2 queued)\n"
            "jw: waiting for 1 running job to end (0 queued)\n",
        )
        self.assertEqual(
            out, b"drained: no job running (0 queued); the server may be restarted\n"
        )
        self.assertEqual(client.waits, [300, 300, 300])

    def test_endedMeanwhile(self) -> None:
        client = _ScriptedClient(_state(1), _state(1, draining=False, queued=4))
        out, err, code = self.drain(client, "--wait", "--json")
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "jw: waiting for 1 running job to end (0 queued)\n"
            "jw: the drain was ended meanwhile (jw drain --end, or a restart of the "
            "server): not drained; 1 running, 4 queued\n",
        )
        self.assertEqual(json.loads(out)["draining"], False)

    def test_interrupted(self) -> None:
        """An interrupt in a long poll: the drain goes on, said; raised on."""
        interrupts = Interrupts()

        def interrupt() -> None:
            # (Counted, then raised, as the signal handler does.)
            interrupts._count("SIGTERM")
            raise KeyboardInterrupt("SIGTERM")

        client = _ScriptedClient(_state(2), _state(2), interrupt)
        streams = Streams(out=io.BytesIO(), messages=io.StringIO(), inp=None)
        options = argparse.Namespace(wait=True, status=False, end=False, json=False)
        with self.assertRaises(KeyboardInterrupt):
            drive(doDrain(options, client, streams, interrupts))
        self.assertEqual(
            streams.messages.getvalue(),  # type: ignore[attr-defined]
            "jw: waiting for 2 running jobs to end (0 queued)\n"
            "jw: SIGTERM: no longer waiting; the drain goes on (jw drain --status "
            "shows it, jw drain --end ends it)\n",
        )
        self.assertEqual(interrupts.status, 143)

    def test_lines(self) -> None:
        now = 1_000_000.0
        self.assertEqual(
            drainLine(_state(2, draining=False, queued=1), now),
            "not draining: 2 running, 1 queued",
        )
        self.assertEqual(
            drainLine(_state(0, queued=1), now),
            "drained: no job running (1 queued); the server may be restarted",
        )
        # A user name is shown printable, whatever the server sent.
        odd = {**_state(1), "since": None, "by": "a\x1bb"}
        self.assertEqual(
            drainLine(odd, now), "draining by a\\x1bb: 1 running, 0 queued"
        )


class CompletionTests(SynchronousTestCase):
    """C{drain} and its options complete as every verb's do, in each shell."""

    def test_verbAndOptions(self) -> None:
        self.assertIn("drain", VERBS)
        self.assertEqual(OPTIONS["drain"], "--wait --status --end --json")
        self.assertEqual(bashOffers("jw", "dr"), ["drain"])
        self.assertEqual(bashOffers("jw", "help", "dr"), ["drain"])
        self.assertEqual(
            sorted(bashOffers("jw", "drain", "--")),
            sorted(
                [
                    *OPTIONS["drain"].split(),
                    *"--server --ca --cert --key --help".split(),
                ]
            ),
        )
        # --status takes no value here (jw list's takes a status).
        self.assertEqual(bashOffers("jw", "drain", "--status", ""), [])
        self.assertIn("--end", bashOffers("jw", "drain", "--status", "--"))
        self.assertIn("RUNNING", bashOffers("jw", "list", "--status", ""))
        # No job ids: drain takes none.
        self.assertEqual(
            bashOffers("jw", "drain", "", jw='jw() { [ "$1" = _ids ] && echo id1; }'),
            [],
        )

    def zsh(self, *words: str) -> list[str]:
        if shutil.which("zsh") is None:
            self.skipTest("no zsh")
        script = (
            "compdef() { : }\n"
            + COMPLETION["zsh"]
            + "\njw() { [[ $1 == _ids ]] && print id1 id2 }\n"
            + 'compadd() { print -r -- "$@" }\n'
            + 'words=("$@"); CURRENT=$#; PREFIX=$words[CURRENT]; _jw\n'
        )
        done = subprocess.run(
            ["zsh", "-f", "-c", script, "zsh", *words],
            capture_output=True,
            check=True,
            timeout=30,
        )
        return done.stdout.decode().split()

    def test_zsh(self) -> None:
        self.assertIn("drain", self.zsh("jw", "dr"))
        self.assertIn("drain", self.zsh("jw", "help", ""))
        offered = self.zsh("jw", "drain", "--")
        for flag in ("--wait", "--status", "--end", "--json", "--help"):
            self.assertIn(flag, offered)
        after = self.zsh("jw", "drain", "--status", "")
        self.assertNotIn("RUNNING", after)
        self.assertNotIn("id1", after)
        self.assertIn("RUNNING", self.zsh("jw", "list", "--status", ""))

    def test_fish(self) -> None:
        self.assertEqual(fishOffers("jw dr"), ["drain"])
        self.assertEqual(fishOffers("jw help dr"), ["drain"])
        self.assertEqual(
            sorted(fishOffers("jw drain -")),
            sorted(bashOffers("jw", "drain", "-")),
        )
        self.assertEqual(fishOffers("jw drain --status "), [])
        self.assertIn("--end", fishOffers("jw drain --status -"))
        self.assertIn("RUNNING", fishOffers("jw list --status "))
        self.assertEqual(fishOffers("jw drain "), [])
