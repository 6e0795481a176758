"""
What the fortieth session's fault injector and new user found in jw, the
second part.

Against a server that sent its headers and then nothing, C{jw status} said
"cannot connect ...: timed out" after 300 s, though it had connected and
had the headers; one that sent a byte every few seconds held it without
end, its 300 s bounding each read, not the answer (fault round 40).
Completion of a job id offered every user's 200 newest jobs for any verb:
ended ones to C{jw stop}, running ones to C{jw rm}, another Developer's to
both, and one's own fell out of them on a busy server (new user round 40).
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from jobworker.client import quick
from jobworker.client.completion import COMPLETION
from jobworker.client.errors import ClientError
from jobworker.client.quick import QuickClient, drive
from jobworker.client.streams import Streams
from jobworker.client.verbs import doIds

from .support import CA, CERT, KEY, bashOffers
from .test_cli_memory import UUID_LINE, MemoryCLITestCase

#: The deadline of an answer here (L{quick.TIMEOUT}, 300 s in use).
_DUE = 2

#: Seconds a test waits at most for what should take L{_DUE}.
_BOUND = 12.0

#: A job id (the fake server answers any).
_ID = "c1062613-3bc3-4884-ad87-6cd9f1b1c258"

#: A job record, as the fake server's body.
_RECORD = (
    b'{"id":"%s","status":"COMPLETED","owner":"alice","command":"true",'
    b'"args":[],"exit_code":0}' % _ID.encode()
)


class _StallingServer:
    """
    A fake jobworker over TLS, in threads of this process: it reads a
    request, then answers as C{mode} says:
      - C{silent}: nothing;
      - C{headers}: the status line and headers, then nothing;
      - C{drip}: a byte every C{pace} seconds, headers without end;
      - C{bodydrip}: the headers at once, then the body a byte at a time;
      - C{record}: the job's record at once.
    It drips for at most L{_BOUND} seconds.
    """

    def __init__(self, mode: str, pace: float = 0.25) -> None:
        self.mode = mode
        self.pace = pace
        self.done = threading.Event()
        self.held: list[socket.socket] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(CERT, KEY)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"https://localhost:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.done.set()
        self.listener.close()
        for connection in self.held:
            connection.close()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._serve, args=(connection,), daemon=True
            ).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            connection = self.context.wrap_socket(raw, server_side=True)
            self.held.append(connection)
            connection.recv(65536)
            if self.mode == "headers":
                connection.sendall(self._head(100))
            elif self.mode == "record":
                while True:  # (kept alive: each request answered)
                    connection.sendall(self._head(len(_RECORD)) + _RECORD)
                    if not connection.recv(65536):
                        return
            elif self.mode == "drip":
                self._drip(connection, b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 1000)
            elif self.mode == "bodydrip":
                connection.sendall(self._head(len(_RECORD)))
                self._drip(connection, _RECORD)
            self.done.wait(_BOUND)
        except OSError:
            pass  # closed at the end of the test

    @staticmethod
    def _head(length: int) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % length
        )

    def _drip(self, connection: ssl.SSLSocket, data: bytes) -> None:
        ends = time.monotonic() + _BOUND
        for byte in data:
            if self.done.is_set() or time.monotonic() > ends:
                return
            connection.sendall(bytes([byte]))
            time.sleep(self.pace)


class AnswerDeadlineTests(SynchronousTestCase):
    """
    A request/response call of the quick client (C{jw status}, C{jw list},
    ...) has a deadline for its whole answer, L{quick.TIMEOUT} after the
    request (short here), and a server that stops mid-answer is said to
    have done so, not to be out of reach (fault round 40).
    """

    def setUp(self) -> None:
        self.patch(quick, "TIMEOUT", _DUE)

    def server(self, mode: str) -> _StallingServer:
        fake = _StallingServer(mode)
        self.addCleanup(fake.close)
        return fake

    def failure(self, mode: str) -> tuple[str, float]:
        """C{jw status}'s call against a server in C{mode}: its error, and when."""
        client = QuickClient.connect(None, self.server(mode).url, CA, token="t")
        self.addCleanup(lambda: drive(client.close()))
        began = time.monotonic()
        with self.assertRaises(ClientError) as raised:
            drive(client.job(_ID))
        self.assertIsNone(raised.exception.status)
        return str(raised.exception), time.monotonic() - began

    def test_headersThenNothing(self) -> None:
        """
        The headers came, then nothing: the server stopped answering
        mid-answer (it was "cannot connect ...: timed out").
        """
        line, took = self.failure("headers")
        self.assertNotIn("cannot connect", line)
        self.assertIn("stopped answering mid-answer", line)
        self.assertIn(f"within {_DUE} s of the request", line)
        self.assertLess(took, _BOUND)

    def test_aByteNowAndThen(self) -> None:
        """
        Headers that come a byte at a time, without end, fail at the
        deadline: each read waited up to the timeout, and a byte came
        before it did.
        """
        line, took = self.failure("drip")
        self.assertLess(took, _DUE + 3)  # (it waited as long as the drip)
        self.assertGreaterEqual(took, _DUE - 0.5)
        self.assertIn("stopped answering mid-answer", line)

    def test_aBodyNowAndThen(self) -> None:
        """A body that comes a byte at a time fails at the deadline too."""
        line, took = self.failure("bodydrip")
        self.assertLess(took, _DUE + 3)
        self.assertIn("stopped answering mid-answer", line)

    def test_noAnswerAtAll(self) -> None:
        """No byte of an answer: said as before, after the deadline."""
        line, took = self.failure("silent")
        self.assertIn(f"sent no answer in {_DUE} s", line)
        self.assertLess(took, _DUE + 3)

    def test_answered(self) -> None:
        """An answer that comes is taken, and the next request too."""
        client = QuickClient.connect(None, self.server("record").url, CA, token="t")
        self.addCleanup(lambda: drive(client.close()))
        self.assertEqual(drive(client.job(_ID))["status"], "COMPLETED")
        self.assertEqual(drive(client.job(_ID))["id"], _ID)

    def test_aLogIsReadAsLongAsItComes(self) -> None:
        """
        A log's body may be gigabytes: only its headers are due; it is
        read as long as it keeps coming (each read bounded on its own), a
        byte at a time here for longer than the deadline.
        """
        fake = self.server("bodydrip")
        fake.pace = 0.05  # (the record's bytes in about 5 s)
        client = QuickClient.connect(None, fake.url, CA, token="t")
        self.addCleanup(lambda: drive(client.close()))
        got = bytearray()
        began = time.monotonic()
        drive(client.logs(_ID, lambda piece: got.extend(piece)))
        self.assertEqual(bytes(got), _RECORD)
        self.assertGreater(time.monotonic() - began, _DUE)


class _Listed:
    """
    A client for C{jw _ids} (L{doIds}): what C{whoami} answers (a
    L{ClientError}: raised), and the listings asked for.
    """

    def __init__(self, whoami: Any) -> None:
        self.me = whoami
        self.asked: list[dict[str, Any]] = []

    async def whoami(self) -> dict[str, Any]:
        if isinstance(self.me, ClientError):
            raise self.me
        return dict(self.me)

    async def listJobs(
        self,
        status: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
    ) -> tuple[list[Any], None]:
        self.asked.append({"status": status, "owner": owner, "limit": limit})
        return [], None


class CompletionIdsByVerbTests(MemoryCLITestCase):
    """
    Completion of a job id offers the ids its verb can use: for C{stop},
    the jobs not ended; for C{rm}, the ended ones; for the others, any;
    and the user's own only, unless their role may act on every job (an
    Admin; a Reader, who has none, sees every user's, and has nothing to
    stop or remove). The scripts say the verb in C{JW_IDS_VERB}; without
    it, every user's 200 newest, as before (new user round 40).
    """

    def jobOf(self, user: str, *command: str) -> str:
        out = self.assertSucceeded(self.jw("exec", "--", *command, user=user))
        self.assertRegex(out, UUID_LINE)
        return out.decode("ascii").strip()

    def setUp(self) -> None:
        super().setUp()
        self.aliceRunning = self.jobOf("alice", "sleep", "60")
        self.aliceEnded = self.jobOf("alice", "true")
        self.endJob(self.aliceEnded)
        self.bobRunning = self.jobOf("bob", "sleep", "60")
        self.bobEnded = self.jobOf("bob", "true")
        self.endJob(self.bobEnded)
        self.flush()

    def offered(self, verb: str | None, user: str = "alice") -> set[str]:
        extra = {} if verb is None else {"JW_IDS_VERB": verb}
        out = self.assertSucceeded(self.jw("_ids", user=user, **extra))
        return set(out.decode().split())

    def test_stop(self) -> None:
        self.assertEqual(self.offered("stop"), {self.aliceRunning})

    def test_rm(self) -> None:
        self.assertEqual(self.offered("rm"), {self.aliceEnded})

    def test_others(self) -> None:
        for verb in ("status", "logs", "wait", "exec"):
            self.assertEqual(
                self.offered(verb), {self.aliceRunning, self.aliceEnded}, verb
            )

    def test_admin(self) -> None:
        self.assertEqual(
            self.offered("stop", "ada"), {self.aliceRunning, self.bobRunning}
        )
        self.assertEqual(self.offered("rm", "ada"), {self.aliceEnded, self.bobEnded})

    def test_reader(self) -> None:
        self.assertEqual(self.offered("stop", "rita"), set())
        self.assertEqual(self.offered("rm", "rita"), set())
        self.assertEqual(self.offered("logs", "rita"), set())
        self.assertEqual(len(self.offered("status", "rita")), 4)

    def test_noVerbAsBefore(self) -> None:
        self.assertEqual(len(self.offered(None)), 4)

    def test_withinTheDeadline(self) -> None:
        """
        Its two requests (or three) are within completion's 2 s in all:
        a listing that does not come after C{whoami} was answered is
        given up at 2 s, nothing printed.
        """
        asked: Deferred[Any] = Deferred()

        class Slow:
            def whoami(self) -> Deferred[Any]:
                return succeed({"user": "alice", "permissions": {"jobs.stop": "own"}})

            def listJobs(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                return asked

            async def close(self) -> None:
                pass

        run = self.start(
            "_ids", connect=lambda *args, **kwargs: Slow(), JW_IDS_VERB="stop"
        )
        assert run.done is not None
        self.reactor.advance(1.9)
        self.assertNoResult(run.done)
        self.reactor.advance(0.2)
        self.assertEqual(self.finish(run), (b"", b"", 1))
        self.assertTrue(asked.called)  # cancelled


class CompletionIdsQueriesTests(SynchronousTestCase):
    """L{doIds}'s requests, by verb and by what C{GET /whoami} says."""

    DEVELOPER = {
        "user": "alice",
        "role": "Developer",
        "permissions": {"jobs.get": "all", "jobs.stop": "own", "jobs.delete": "own"},
    }

    def asked(self, verb: str | None, whoami: Any) -> list[dict[str, Any]]:
        client = _Listed(whoami)
        out = io.BytesIO()
        streams = Streams(out=out, err=io.BytesIO(), inp=None)
        options = argparse.Namespace(completed=verb)
        code = self.successResultOf(
            ensureDeferred(doIds(options, client, streams, None))  # type: ignore[arg-type]
        )
        self.assertEqual(code, 0)
        return client.asked

    def test_stopAsksForEachLiveStatus(self) -> None:
        self.assertEqual(
            self.asked("stop", self.DEVELOPER),
            [
                {"status": "PENDING", "owner": "alice", "limit": 200},
                {"status": "RUNNING", "owner": "alice", "limit": 200},
            ],
        )

    def test_noWhoami(self) -> None:
        """A server with no C{/whoami} (404): every user's, as before."""
        asked = self.asked("status", ClientError("not found", 404))
        self.assertEqual(asked, [{"status": None, "owner": None, "limit": 200}])

    def test_noPermissionsSaid(self) -> None:
        """A C{whoami} that says only the user: their own jobs."""
        asked = self.asked("rm", {"user": "alice"})
        self.assertEqual(asked, [{"status": None, "owner": "alice", "limit": 200}])


class CompletionScriptsSayTheVerbTests(SynchronousTestCase):
    """Each shell's script tells C{jw _ids} the verb (C{JW_IDS_VERB})."""

    JW = '[ "$1" = _ids ] && echo "verb-$JW_IDS_VERB"'

    def test_bash(self) -> None:
        jw = f"jw() {{ {self.JW}; }}"
        for verb in ("stop", "rm", "status", "logs", "wait"):
            self.assertEqual(bashOffers("jw", verb, "", jw=jw), [f"verb-{verb}"])
        self.assertEqual(bashOffers("jw", "exec", "--after", "", jw=jw), ["verb-exec"])

    def test_zsh(self) -> None:
        if shutil.which("zsh") is None:
            self.skipTest("no zsh")
        script = (
            "compdef() { : }\n"
            + COMPLETION["zsh"]
            + '\njw() { [[ $1 == _ids ]] && print "verb-$JW_IDS_VERB" }\n'
            + 'compadd() { print -r -- "$@" }\n'
            + 'words=("$@"); CURRENT=$#; PREFIX=$words[CURRENT]; _jw\n'
        )
        for verb in ("stop", "rm"):
            done = subprocess.run(
                ["zsh", "-f", "-c", script, "zsh", "jw", verb, ""],
                capture_output=True,
                check=True,
                timeout=30,
            )
            self.assertIn(f"verb-{verb}", done.stdout.decode().split())

    def test_fish(self) -> None:
        if shutil.which("fish") is None:
            self.skipTest("no fish")
        script = (
            COMPLETION["fish"]
            + '\nfunction jw; test "$argv[1]" = _ids; and echo verb-$JW_IDS_VERB; end\n'
            + 'complete -C "$argv[1]"\n'
        )
        for verb in ("stop", "rm"):
            done = subprocess.run(
                ["fish", "--no-config", "-c", script, f"jw {verb} "],
                capture_output=True,
                check=True,
                timeout=30,
            )
            offered = [e.split("\t")[0] for e in done.stdout.decode().splitlines()]
            self.assertEqual(offered, [f"verb-{verb}"])
