"""
Issue 17: jw as people expect a CLI to behave, in memory (L{cli.run} over
C{StubTreq} of the real API, on the fake process reactor): Ctrl-C with a
meaning, output in the job's order, short ids, names and labels, stop with
a signal, bulk delete, --json as one document, readable status.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from jobworker.client.calls import EXIT_STATUS_LOST, exitStatusOf
from jobworker.client.completion import COMPLETION, OPTIONS
from jobworker.client.http import JobworkerClient
from jobworker.client.interrupts import SIGNALS, Interrupts
from jobworker.client.parser import buildParser
from jobworker.client.show import jobLines, outcome
from jobworker.client.streams import Streams

from .support import basic
from .test_cli_memory import SERVER, MemoryCLITestCase, Run


class InterruptTests(MemoryCLITestCase):
    """Finding 2: Ctrl-C (and SIGTERM, SIGHUP) on exec --follow, logs -f, wait."""

    def interruptible(self, *argv: str) -> tuple[Run, Interrupts]:
        interrupts = Interrupts()
        run = Run()
        from twisted.internet.defer import ensureDeferred

        from jobworker.client import cli

        run.done = ensureDeferred(
            cli.run(
                self.reactor,
                list(argv),
                self.environ(),
                run.streams,
                self.connect,
                interrupts,
            )
        )
        self.flush()
        return run, interrupts

    def test_execFollowCtrlCStopsTheJob(self) -> None:
        """
        The job id is printed as it starts; the first Ctrl-C stops the job
        with SIGINT, as a local command gets it (it was TERM: a Python job's
        KeyboardInterrupt clean-up never ran), jw waits for its end and
        exits 130; the job is STOPPED by the user.
        """
        run, interrupts = self.interruptible("exec", "-f", "--", "sleep", "300")
        [spawned] = self.reactor.spawned
        err = run.err.getvalue()
        jobId = err.split()[2].decode()
        self.assertEqual(err, f"jw: job {jobId} started\n".encode())
        interrupts.fire("SIGINT")
        self.flush()
        self.assertEqual([(spawned.pid, signal.SIGINT)], self.killer.calls)
        assert run.done is not None
        self.assertNoResult(run.done)  # waits for the end
        self.endJob(jobId, signum=signal.SIGINT)
        _out, err, code = self.finish(run)
        self.assertEqual(code, 130, err)
        self.assertIn(b"stopping job", err)
        job = self.statusJSON(jobId)
        self.assertEqual((job["status"], job["stopped_by"]), ("STOPPED", "alice"))

    def test_ctrlBackslashStopsTheJobWithQuit(self) -> None:
        """
        Ctrl-\\ (SIGQUIT) is an interrupt too: the job is stopped with
        QUIT, and jw exits 131 (it was killed, leaving the job running).
        """
        self.assertIn(signal.SIGQUIT, SIGNALS)
        run, interrupts = self.interruptible("exec", "-f", "--", "sleep", "300")
        [spawned] = self.reactor.spawned
        jobId = run.err.getvalue().split()[2].decode()
        interrupts.fire("SIGQUIT")
        self.flush()
        self.assertEqual([(spawned.pid, signal.SIGQUIT)], self.killer.calls)
        self.endJob(jobId, signum=signal.SIGQUIT)
        _out, err, code = self.finish(run)
        self.assertEqual(code, 131, err)

    def test_secondCtrlCDetaches(self) -> None:
        """A second Ctrl-C stops following, and says a stop was asked for (it
        said the job was left running: its KILL came after the grace)."""
        run, interrupts = self.interruptible("exec", "-f", "--", "sleep", "300")
        jobId = run.err.getvalue().split()[2].decode()
        # The job ignores TERM: the first Ctrl-C's stop is still waiting.
        interrupts.fire("SIGINT")
        self.flush()
        interrupts.fire("SIGINT")
        _out, err, code = self.finish(run)
        self.assertEqual(code, 130)
        self.assertIn(b"a stop was asked for", err)
        self.assertIn(f"jw status {jobId}".encode(), err)
        self.assertNotIn(b"left job", err)
        self.assertNotIn(b"Traceback", err)

    def test_stoppedByAnotherSaysSo(self) -> None:
        """
        A followed job stopped by someone else (an admin, the server's
        shutdown): jw exec -f and jw logs -f say so in one line, beside the
        exit status (143 came with no word).
        """
        run, _spawned = self.followed("sleep", "300")
        jobId = run.err.getvalue().split()[2].decode()
        logs = self.start("logs", "-f", jobId)
        headers = basic("ada")
        headers[b"content-type"] = [b"application/json"]
        stopping = self.http.request(
            "POST", f"{SERVER}/jobs/{jobId}/stop", headers=headers
        )
        self.flush()
        self.endJob(jobId, signum=signal.SIGTERM)
        self.assertEqual(self.successResultOf(stopping).code, 200)
        line = f"jw: job {jobId}: killed by SIGTERM (stopped by ada)\n".encode()
        for each in (run, logs):
            _out, err, code = self.finish(each)
            self.assertEqual(code, 143, err)
            self.assertTrue(err.endswith(line), err)

    def test_endWithoutAnExitStatusSaysSo(self) -> None:
        """
        A job that never ran (its after_ok dependency failed): jw wait and
        jw logs -f say so in one line beside their exit status (127 came
        with no word, as 255 did for a job the server's restart ended:
        new user and fault rounds 28).
        """
        first = self.execId("false")
        self.endJob(first, code=1)
        out, _err, _code = self.jw("exec", "--after-ok", first, "--", "true")
        jobId = out.decode("ascii").strip()
        line = f"jw: job {jobId}: never ran".encode()
        for argv in (("wait", jobId), ("logs", "-f", jobId)):
            _out, err, code = self.jw(*argv)
            self.assertEqual(code, 127, err)
            self.assertTrue(err.startswith(line), err)
            self.assertEqual(err.count(b"\n"), 1, err)

    def test_detachOnInterrupt(self) -> None:
        """--detach-on-interrupt: Ctrl-C leaves the job running, saying so."""
        run, interrupts = self.interruptible(
            "exec", "-f", "--detach-on-interrupt", "--", "sleep", "300"
        )
        jobId = run.err.getvalue().split()[2].decode()
        interrupts.fire("SIGTERM")
        _out, err, code = self.finish(run)
        self.assertEqual(code, 143)  # 128 + SIGTERM, as a shell's
        self.assertIn(
            f"left job {jobId} running (follow it again: jw logs -f {jobId}; ".encode(),
            err,
        )
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(self.statusJSON(jobId)["status"], "RUNNING")

    def test_detachOnInterruptWithJSON(self) -> None:
        """
        --json with --detach-on-interrupt: the job left running is the one
        JSON document on stdout (there was none: a script kept no id).
        """
        run, interrupts = self.interruptible(
            "exec", "-f", "--json", "--detach-on-interrupt", "--", "sleep", "300"
        )
        interrupts.fire("SIGINT")
        out, err, code = self.finish(run)
        self.assertEqual(code, 130, err)
        job = json.loads(out)
        self.assertEqual(job["status"], "RUNNING")
        self.assertIn(f"left job {job['id']} running".encode(), err)

    def test_logsFollowAndWaitStopQuietly(self) -> None:
        """jw logs -f and jw wait on Ctrl-C: no message, exit 130, job untouched."""
        jobId = self.execId("sleep", "300")
        for argv in (("logs", "-f", jobId), ("wait", jobId)):
            run, interrupts = self.interruptible(*argv)
            assert run.done is not None
            self.assertNoResult(run.done)
            interrupts.fire("SIGINT")
            out, err, code = self.finish(run)
            self.assertEqual((out, err, code), (b"", b"", 130), argv)
        self.assertEqual(self.statusJSON(jobId)["status"], "RUNNING")


class OrderTests(MemoryCLITestCase):
    """Finding 3: stdout and stderr in the order the job wrote them."""

    def test_followKeepsTheJobsOrder(self) -> None:
        """
        With both written to one place (2>&1), jw exec -f and jw logs show
        the job's order, each chunk on the stream the job used.
        """
        run, spawned = self.followed("sh", "-c", "echo out1; echo err1 >&2; ...")
        jobId = run.err.getvalue().split()[2].decode()
        shared: list[bytes] = []
        run.out.write = lambda data: shared.append(b"O" + data)  # type: ignore[method-assign,assignment,return-value]
        run.err.write = lambda data: shared.append(b"E" + data)  # type: ignore[method-assign,assignment,return-value]
        for data, stream in (
            (b"out1\n", "out"),
            (b"err1\n", "err"),
            (b"out2\n", "out"),
            (b"err2\n", "err"),
        ):
            (spawned.output if stream == "out" else spawned.errors)(data)
        self.flush()
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        self.finish(run)
        self.assertEqual(shared, [b"Oout1\n", b"Eerr1\n", b"Oout2\n", b"Eerr2\n"])
        out, err, code = self.jw("logs", jobId)
        self.assertEqual((out, err, code), (b"out1\nout2\n", b"err1\nerr2\n", 0))

    def test_serverWithoutFrames(self) -> None:
        """
        A server from before format=frames answers 400: jw follows the
        combined order as Server-Sent Events instead, the same bytes.
        """
        from jobworker.server import logs

        self.patch(logs, "FORMATS", ("raw", "sse"))
        self.test_followKeepsTheJobsOrder()

    def test_malformedFramesAreOneLine(self) -> None:
        """
        A frame stream that is not one (a length past the cap, a position
        that is not JSON) ends as jw's one-line error after the retries,
        never a traceback.
        """
        from twisted.internet.defer import Deferred

        from jobworker.client.errors import ClientError
        from jobworker.client.follow import FOLLOW_RETRIES, followCombined
        from jobworker.client.streams import Streams

        class Garbage:
            def __init__(self, body: bytes) -> None:
                self.body = body
                self.asked = 0

            async def events(self, *args: Any, **kwargs: Any) -> None:
                self.asked += 1
                args[1](self.body)

            async def pause(self, seconds: float) -> None:
                pass

        for body in (b"o\xff\xff\xff\xff", b"p\x00\x00\x00\x01{"):
            client = Garbage(body)
            streams = Streams.__new__(Streams)
            streams.writer = lambda name: lambda data: None  # type: ignore[method-assign]
            done = Deferred.fromCoroutine(followCombined(client, "id", streams))
            failure = self.failureResultOf(done, ClientError)
            self.assertIn("malformed", str(failure.value))
            self.assertEqual(client.asked, FOLLOW_RETRIES + 1)

    def test_aFollowThatGetsSomewhereKeepsTrying(self) -> None:
        """
        A raw follow whose connection breaks more than FOLLOW_RETRIES times,
        each after some bytes (a flaky link over days), resumes each time
        after the last byte and ends with everything; one that breaks that
        many times in a row with nothing received gives up, after pausing
        long enough for a server to restart (it gave up after 3 s).
        """
        from twisted.internet.defer import Deferred

        from jobworker.client.errors import ClientError
        from jobworker.client.follow import FOLLOW_RETRIES, followStream

        class Flaky:
            def __init__(self, chunks: int) -> None:
                self.chunks = chunks
                self.offsets: list[int] = []
                self.paused: list[float] = []

            async def logs(
                self, jobId: str, sink: Any, stream: str, offset: int, **kwargs: Any
            ) -> None:
                self.offsets.append(offset)
                if len(self.offsets) <= self.chunks:
                    sink(b"x" * 10)
                    raise ClientError("log stream broke off")
                if self.chunks < 0:
                    raise ClientError("cannot connect")

            async def pause(self, seconds: float) -> None:
                self.paused.append(seconds)

        got = bytearray()
        client = Flaky(3 * FOLLOW_RETRIES)
        self.successResultOf(
            Deferred.fromCoroutine(followStream(client, "id", "stdout", got.extend))
        )
        self.assertEqual(len(got), 30 * FOLLOW_RETRIES)
        self.assertEqual(client.offsets, list(range(0, 30 * FOLLOW_RETRIES + 1, 10)))
        dead = Flaky(-1)
        done = Deferred.fromCoroutine(followStream(dead, "id", "stdout", got.extend))
        self.failureResultOf(done, ClientError)
        self.assertGreaterEqual(sum(dead.paused), 10.0)
        self.assertLessEqual(max(dead.paused), 2.0)
        self.assertEqual(len(dead.offsets), FOLLOW_RETRIES + 1)

    def test_framesResumeWhereTheServerStarted(self) -> None:
        """
        The position frame of a tail sets where each stream starts, so a
        resumption asks for the byte after the last one received.
        """
        from jobworker.client.follow import _CombinedFollower
        from jobworker.client.streams import Streams

        written: list[tuple[str, bytes]] = []
        streams = Streams.__new__(Streams)
        streams.writer = lambda name: lambda data: written.append((name, data))  # type: ignore[method-assign]
        follower = _CombinedFollower(streams)
        self.assertIsNone(follower.lastId)
        follower.frame(b"p", b'{"stdout":100,"stderr":7}')
        follower.frame(b"o", b"abc")
        self.assertEqual(follower.lastId, "combined:103:7")
        follower.frame(b"e", b"zz")
        follower.frame(b"h", b"")
        follower.frame(b"?", b"a tag from a newer server")
        self.assertEqual(follower.lastId, "combined:103:9")
        follower.frame(b"x", b'{"status": "COMPLETED"}')
        self.assertEqual(follower.end, {"status": "COMPLETED"})
        self.assertEqual(written, [("stdout", b"abc"), ("stderr", b"zz")])


class FindingTests(MemoryCLITestCase):
    """Finding 7: short ids, names and labels."""

    def test_shortIds(self) -> None:
        """Any unique prefix of 6+ characters works; ambiguous ones say so."""
        jobId = self.execId("sleep", "60")
        job = self.statusJSON(jobId[:6])
        self.assertEqual(job["id"], jobId)
        # In capitals, the same (they were "not a job id": new user round 28).
        for text in (jobId.upper(), jobId[:8].upper()):
            self.assertEqual(self.statusJSON(text)["id"], jobId)
        self.assertOneLineFailure(self.jw("status", jobId[:5]), b"6 or more")
        # Two ids sharing a prefix: make one by hand in the store's order.
        other = self.execId("sleep", "60")
        common = ""
        for a, b in zip(jobId, other, strict=True):
            if a != b:
                break
            common += a
        if len(common) >= 6:  # rare, but then it must be ambiguous
            self.assertOneLineFailure(self.jw("status", common), b"ambiguous")
        self.assertOneLineFailure(self.jw("status", "ffffff"), b"no job id starts")

    def test_namesAndLabels(self) -> None:
        """jw exec --name/--label; jw list --name/--label finds them."""
        named = (
            self.assertSucceeded(
                self.jw("exec", "--name", "nightly", "-l", "team=web", "--", "true")
            )
            .decode()
            .strip()
        )
        self.execId("true")
        job = self.statusJSON(named)
        self.assertEqual((job["name"], job["labels"]), ("nightly", {"team": "web"}))
        for argv in (("--name", "nightly"), ("--label", "team=web")):
            out = self.assertSucceeded(self.jw("list", "--json", *argv))
            self.assertEqual([j["id"] for j in json.loads(out)["jobs"]], [named])
        out = self.assertSucceeded(self.jw("list", "--label", "team=ops", "--json"))
        self.assertEqual(json.loads(out)["jobs"], [])
        self.assertOneLineFailure(
            self.jw("exec", "--name", "bad name", "--", "true"), b"name"
        )
        table = self.assertSucceeded(self.jw("list")).decode()
        self.assertIn("NAME", table.splitlines()[0])
        self.assertIn("nightly", table)


class ControlTests(MemoryCLITestCase):
    """Finding 5: jw stop --signal/--kill/--grace; limits from jw exec."""

    def test_stopWithSignal(self) -> None:
        """--signal INT sends SIGINT to the job's group first."""
        jobId = self.execId("sleep", "300")
        run = self.start("stop", "--signal", "INT", jobId[:8])
        spawned = self.process(jobId)
        self.assertIn((spawned.pid, signal.SIGINT), self.killer.calls)
        self.assertNotIn((spawned.pid, signal.SIGTERM), self.killer.calls)
        self.endJob(jobId, signum=signal.SIGINT)
        out, err, code = self.finish(run)
        self.assertEqual(code, 0, err)
        self.assertIn("outcome: killed by SIGINT (stopped by alice)", self.fields(out))

    def test_stopKillAtOnce(self) -> None:
        """--kill: SIGKILL now, no TERM, no grace."""
        jobId = self.execId("sleep", "300")
        run = self.start("stop", "--kill", jobId)
        spawned = self.process(jobId)
        self.assertIn((spawned.pid, signal.SIGKILL), self.killer.calls)
        self.assertNotIn((spawned.pid, signal.SIGTERM), self.killer.calls)
        self.endJob(jobId, signum=signal.SIGKILL)
        self.assertSucceeded(self.finish(run))
        self.assertOneLineFailure(
            self.jw("stop", "--kill", "--signal", "INT", jobId), b"--kill"
        )

    def test_stopSignalCheckedByJw(self) -> None:
        """
        A signal no stop may begin with is refused by jw, as its other
        flags are (exit 2, the choices named), before anything is asked:
        it was "server answered 400", exit 1 (a new user's round).
        """
        jobId = self.execId("sleep", "300")
        out, err, code = self.jw("stop", "--signal", "FOO", jobId)
        self.assertEqual(code, 2, err)
        self.assertOneLineFailure((out, err, code), b"--signal", b"TERM, INT")
        self.assertNotIn(b"server answered", err)
        self.assertEqual(self.statusJSON(jobId)["status"], "RUNNING")
        parser = buildParser(Streams(inp=None))
        for name in ("hup", "SIGUSR1", "Kill"):
            options = parser.parse_args(["stop", "--signal", name, jobId])
            self.assertEqual(options.signal, name)  # the server reads it

    def test_stopSaysWhatItWaitsFor(self) -> None:
        """A stop that takes more than a second says it is waiting."""
        jobId = self.execId("sleep", "300")
        run = self.start("stop", jobId)
        self.reactor.advance(1.5)
        self.flush()
        self.assertIn(b"waiting for job", run.err.getvalue())
        self.endJob(jobId, signum=signal.SIGTERM)
        self.assertSucceeded(self.finish(run))

    def test_badSignalIsOneLine(self) -> None:
        """An unknown signal is the server's 400, one line."""
        jobId = self.execId("sleep", "300")
        self.assertOneLineFailure(self.jw("stop", "-s", "STOP", jobId), b"signal")


class BulkTests(MemoryCLITestCase):
    """Finding 8: jw rm ID..., jw clean in one request."""

    def test_rmSeveral(self) -> None:
        """jw rm A B deletes both; an unknown one is reported, exit 1."""
        first, second = self.execId("true"), self.execId("true")
        self.endJob(first)
        self.endJob(second)
        self.assertSucceeded(self.jw("rm", first[:8], second))
        self.assertEqual(self.listedIds(), [])
        _out, err, code = self.jw("rm", "abcdef12")
        self.assertEqual(code, 1)
        self.assertIn(b"abcdef12", err)

    def test_rmReportsInArgumentOrder(self) -> None:
        """
        The failures of jw rm A B are one line each in the order of A and
        B, whichever answer comes first (they were in the order the answers
        came).
        """
        running = self.execId("sleep", "60")
        unknown = str(uuid.uuid4())
        answered: Deferred[None] = Deferred()
        realDelete = JobworkerClient.deleteJob

        async def slowForRunning(client: JobworkerClient, jobId: str) -> None:
            if jobId == running:
                await answered  # A's answer comes after B's
            await realDelete(client, jobId)

        self.patch(JobworkerClient, "deleteJob", slowForRunning)
        run = self.start("rm", running[:8], unknown)
        answered.callback(None)
        _out, err, code = self.finish(run)
        self.assertEqual(code, 1, err)
        named = [line.split(": ")[1] for line in err.decode().splitlines()]
        self.assertEqual(named, [running[:8], unknown], err)

    def test_clean(self) -> None:
        """jw clean deletes the caller's ended jobs, not running ones."""
        done, running = self.execId("true"), self.execId("sleep", "60")
        self.endJob(done)
        out = self.assertSucceeded(self.jw("clean"))
        self.assertEqual(out, b"deleted 1 ended job\n")
        self.assertEqual(self.listedIds(), [running])
        out = self.assertSucceeded(self.jw("clean", "--older-than", "7d", "--json"))
        self.assertEqual(json.loads(out), {"deleted": 0})
        self.assertOneLineFailure(self.jw("clean", "--older-than", "soon"), b"age")


class LoginFileTests(MemoryCLITestCase):
    """The tokens C{jw login} keeps (test_cli: an empty C{JW_PASSWORD})."""

    def tokensFile(self) -> str:
        return os.path.join(self.configHome, "jobworker", "tokens.json")

    def test_tokensFileOthersMayReadIsRefused(self) -> None:
        """
        A tokens file that group or others may read is refused as ssh
        refuses such a key: one line naming it and C{chmod 600}, exit 2,
        nothing sent (it was used without a word); C{jw config} says so.
        Once private again, it is used.
        """
        self.assertSucceeded(self.jw("login"))
        path = self.tokensFile()
        os.chmod(path, 0o644)
        requests: list[str] = []
        realRequest = self.http.request

        def counted(method: str, url: str, **kwargs: Any) -> Any:
            requests.append(url)
            return realRequest(method, url, **kwargs)

        self.patch(self.http, "request", counted)
        for argv in (("list",), ("login",), ("logout",)):
            result = self.jw(*argv)
            self.assertOneLineFailure(result, path.encode(), b"chmod 600")
            self.assertEqual(result[2], 2, argv)
        self.assertEqual(requests, [])
        out = self.assertSucceeded(self.jw("config"))
        self.assertIn(b"login token = refused: ", out)
        os.chmod(path, 0o600)
        self.assertSucceeded(self.jw("list"))

    def test_loginKeepsTokensPrivate(self) -> None:
        """jw login writes the tokens file 0600 whatever the umask."""
        old = os.umask(0)
        try:
            self.assertSucceeded(self.jw("login"))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.tokensFile()).st_mode), 0o600)


class OutputTests(MemoryCLITestCase):
    """Finding 6: --json is one document; status for people; list quoting."""

    def test_execJSONFollowIsOneDocument(self) -> None:
        """exec --json -f: stdout holds only the final record; output on stderr."""
        run, spawned = self.followed("sh", "-c", "echo hi")
        # (followed() starts without --json: start another with it)
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        self.finish(run)
        run = self.start("exec", "--json", "-f", "--", "echo", "hi")
        spawned = self.reactor.spawned[-1]
        spawned.output(b"hi\n")
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        out, err, code = self.finish(run)
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["status"], "COMPLETED")
        self.assertIn(b"hi\n", err)

    def test_statusForPeople(self) -> None:
        """No Python reprs, no empty executor fields, an outcome in words."""
        jobId = self.execId("sh", "-c", "exit 4")
        self.endJob(jobId, 4)
        out = self.assertSucceeded(self.jw("status", jobId))
        text = out.decode()
        for junk in ("None", "['", "{'", "False", "slurm_job_id", "node:"):
            self.assertNotIn(junk, text)
        self.assertIn("outcome: exited with code 4", self.fields(out))
        self.assertIn("command: sh -c 'exit 4'", self.fields(out))
        # Empty fields left out (no "after: []"), and the error is in the
        # outcome, not once more on a line of its own.
        for line in out.decode().splitlines():
            self.assertTrue(line.partition(":")[2].strip(" []{}"), line)
        self.assertEqual(text.count("exited with code 4"), 1, text)

    def test_listQuotesCommands(self) -> None:
        """A command with spaces in its name is shown quoted, as a shell needs it
        (it cannot start: said, exit 127, as with -f)."""
        _out, err, code = self.jw("exec", "--", "echo hi")
        self.assertEqual(code, 127, err)
        table = self.assertSucceeded(self.jw("list", "--wide")).decode()
        self.assertIn("'echo hi'", table)


class HabitTests(MemoryCLITestCase):
    """Finding 8: habits from other CLIs."""

    def test_globalFlagsAnywhere(self) -> None:
        """--server after the verb works as before it."""
        out = self.assertSucceeded(
            self.jw("list", "--server", "https://localhost:8443")
        )
        self.assertIn(b"ID", out)

    def test_version(self) -> None:
        """jw --version prints the version."""
        out = self.assertSucceeded(self.jw("--version"))
        self.assertRegex(out, rb"\Ajw \d+\.\d+")

    def test_execWithoutCommand(self) -> None:
        """jw exec with no command says how to give one, in one line."""
        self.assertOneLineFailure(self.jw("exec"), b"jw exec -- ")

    def test_brokenPipeOnEveryVerb(self) -> None:
        """A closed stdout on config, completion, logout: exit 141, no traceback."""
        for argv in (("config",), ("completion", "bash"), ("logout",)):
            run = Run()

            def gone(data: bytes) -> int:
                raise BrokenPipeError(32, "Broken pipe")

            run.out.write = gone  # type: ignore[method-assign]
            from twisted.internet.defer import ensureDeferred

            from jobworker.client import cli

            run.done = ensureDeferred(
                cli.run(
                    self.reactor, list(argv), self.environ(), run.streams, self.connect
                )
            )
            _out, err, code = self.finish(run)
            self.assertEqual((err, code), (b"", 141), argv)

    def test_completionKnowsEveryOption(self) -> None:
        """
        Each verb's completion offers exactly the options its parser takes;
        status values and files after -- are completed in every shell.
        """
        parser = buildParser(Streams(inp=None))
        verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        shared = {"--server", "--ca", "--cert", "--key", "--help", "-h"}
        for verb, options in OPTIONS.items():
            taken = {
                flag
                for action in verbs[verb]._actions
                for flag in action.option_strings
                if flag.startswith("--")
            } - shared
            self.assertEqual(set(options.split()), taken, verb)
        for shell, script in COMPLETION.items():
            self.assertIn("COMPLETED", script, shell)
        self.assertIn("compgen -c -f", COMPLETION["bash"])
        self.assertIn("_files", COMPLETION["zsh"])
        self.assertIn("-F", COMPLETION["fish"])


class StdinTests(MemoryCLITestCase):
    """Finding 4: jw exec -i streams jw's stdin to the job; without -i it says so."""

    def test_stdinReachesTheJob(self) -> None:
        """jw exec -i -f: every byte of jw's stdin, then end of file."""
        run = Run()
        run.inp.write(b"hello\n" + bytes(range(256)) * 300)  # over one chunk
        run.inp.seek(0)
        from twisted.internet.defer import ensureDeferred

        from jobworker.client import cli

        run.done = ensureDeferred(
            cli.run(
                self.reactor,
                ["exec", "-i", "-f", "--", "cat"],
                self.environ(),
                run.streams,
                self.connect,
            )
        )
        self.flush()
        spawned = self.reactor.spawned[-1]
        self.assertEqual(b"".join(spawned.transport.stdin), run.inp.getvalue())
        self.assertTrue(spawned.transport.stdinClosed)
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        _out, err, code = self.finish(run)
        self.assertEqual(code, 0, err)

    def test_withoutDashIStdinStaysClosed(self) -> None:
        """Without -i the job's stdin is closed, and jw says so if it has data."""
        run = Run()
        run.inp.write(b"hello\n")
        run.inp.seek(0)
        from twisted.internet.defer import ensureDeferred

        from jobworker.client import cli

        run.done = ensureDeferred(
            cli.run(
                self.reactor,
                ["exec", "--", "cat"],
                self.environ(),
                run.streams,
                self.connect,
            )
        )
        spawned = self.reactor.spawned[-1]
        self.assertTrue(spawned.transport.stdinClosed)
        self.assertEqual(spawned.transport.stdin, [])
        _out, err, code = self.finish(run)
        self.assertEqual(code, 0)
        self.assertEqual(err.count(b"stdin is closed"), 1, err)

    def sendStdin(self, jobId: str, user: str, data: bytes, query: str = "") -> int:
        """POST /jobs/ID/stdin as C{user}: the status."""
        headers = basic(user)
        headers[b"content-type"] = [b"application/octet-stream"]
        response = self.successResultOf(
            self.http.request(
                "POST",
                f"{SERVER}/jobs/{jobId}/stdin{query}",
                headers=headers,
                data=data,
            )
        )
        return int(response.code)

    def test_stdinRouteRules(self) -> None:
        """
        POST /jobs/ID/stdin: the owner and Admins (403 for others), raw
        bytes only (415 for JSON), 409 for a job without stdin or once
        closed; the job sees the bytes, then end of file.
        """
        plain = self.execId("sleep", "60")
        code, body = self.apiJSON("POST", f"/jobs/{plain}/stdin", "alice")
        self.assertEqual(code, 415, body)
        self.assertEqual(self.sendStdin(plain, "alice", b"x"), 409)
        headers = basic("alice")
        headers[b"content-type"] = [b"application/json"]
        response = self.successResultOf(
            self.http.request(
                "POST",
                f"{SERVER}/jobs",
                headers=headers,
                data=b'{"command": "cat", "stdin": true}',
            )
        )
        fed = json.loads(self.successResultOf(response.content()))
        self.assertTrue(fed["stdin"])
        spawned = self.process(fed["id"])
        self.assertFalse(spawned.transport.stdinClosed)
        codes = {u: self.sendStdin(fed["id"], u, u.encode()) for u in ("bob", "rita")}
        self.assertEqual(codes, {"bob": 403, "rita": 403})
        self.assertEqual(self.sendStdin(fed["id"], "alice", b"a"), 200)
        self.assertEqual(self.sendStdin(fed["id"], "ada", b"b", "?eof=true"), 200)
        self.assertEqual(spawned.transport.stdin, [b"a", b"b"])
        self.assertTrue(spawned.transport.stdinClosed)
        self.assertEqual(self.sendStdin(fed["id"], "alice", b"c"), 409)


class HelpAgreesWithREADMETests(MemoryCLITestCase):
    """Finding 8: the README's jw synopsis and each --help name the same options."""

    def test_synopsisMatchesTheParser(self) -> None:
        import re

        readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        block = text.split("## jw\n", 1)[1].split("```", 2)[1]
        documented: dict[str, set[str]] = {}
        verb = ""
        for line in block.splitlines():
            match = re.match(r"  (\w+) ", line + " ")
            if match and not line.startswith("   "):
                verb = match.group(1)
                documented.setdefault(verb, set())
                if "|" in line and "[" not in line:
                    verb = ""  # login | logout | ...: verbs without options
            if verb:
                documented[verb] |= set(re.findall(r"--[a-z-]+", line))
        parser = buildParser(Streams(inp=None))
        verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        shared = {"--server", "--ca", "--cert", "--key", "--help"}
        for name, sub in verbs.items():
            if name not in documented:
                continue  # login | logout | config | completion: one line
            taken = {
                flag
                for action in sub._actions
                for flag in action.option_strings
                if flag.startswith("--")
            } - shared
            self.assertEqual(documented[name], taken, name)
            for flag in taken:
                out = self.assertSucceeded(self.jw(name, "--help"))
                self.assertIn(flag.encode(), out, (name, flag))
        self.assertEqual(
            set(documented),
            {
                "exec",
                "list",
                "status",
                "logs",
                "wait",
                "stop",
                "rm",
                "clean",
                "drain",
                "login",
            },
        )


class SlurmFlagTests(MemoryCLITestCase):
    """Issue 19, item 7: jw exec's Slurm flags reach the request's "slurm"."""

    def test_slurmFlagsSent(self) -> None:
        """--partition and --nodes go as "slurm"; the local server says 400."""
        seen: list[Any] = []
        original = self.api.app.execute_endpoint

        def spy(endpoint: str, request: Any, *args: Any, **kwargs: Any) -> Any:
            if endpoint == "createJob":
                request.content.seek(0)
                seen.append(json.loads(request.content.read()))
                request.content.seek(0)
            return original(endpoint, request, *args, **kwargs)

        self.patch(self.api.app, "execute_endpoint", spy)
        result = self.jw(
            "exec", "--partition", "debug", "--nodes", "2", "--exclusive", "--", "true"
        )
        self.assertOneLineFailure(result, b"jobs run in Slurm")
        self.assertEqual(
            seen[0]["slurm"], {"partition": "debug", "nodes": 2, "exclusive": True}
        )


class DestinationTests(MemoryCLITestCase):
    """Order where it shows: both streams to one place, or each apart."""

    def test_sharedDestination(self) -> None:
        """Two files: apart; one file twice (2>&1): shared; in memory: shared."""
        one = open(self.mktemp(), "wb")
        two = open(self.mktemp(), "wb")
        same = os.fdopen(os.dup(one.fileno()), "wb")
        for f in (one, two, same):
            self.addCleanup(f.close)
        self.assertFalse(Streams(one, two, inp=None).sharedDestination())
        self.assertTrue(Streams(one, same, inp=None).sharedDestination())
        self.assertTrue(Run().streams.sharedDestination())


class OutcomeTests(SynchronousTestCase):
    """How an ended job's end reads, and the exit status jw gives it."""

    LOST = {
        "status": "FAILED",
        "exit_code": None,
        "signal": None,
        "stopped_by": None,
        "error": "the worker restarted while the job ran",
        "started_at": "2026-12-01T20:00:00.000Z",
        "pid": 4242,
    }

    def test_aJobLostToACrashRan(self) -> None:
        """
        A job the server's crash took (it ran: a start, a pid, output) ended
        without an exit status, and jw exits 255 for it, as ssh does for a
        lost connection; it read "never ran" and exited 127, "could not
        start".
        """
        self.assertEqual(
            outcome(self.LOST),
            "ended without an exit status: the worker restarted while the job ran",
        )
        self.assertEqual(exitStatusOf(self.LOST), EXIT_STATUS_LOST)
        self.assertEqual(EXIT_STATUS_LOST, 255)

    def test_aJobThatNeverStarted(self) -> None:
        """A job that could not start never ran: 127."""
        job = {**self.LOST, "started_at": None, "pid": None, "error": "cannot start"}
        self.assertEqual(outcome(job), "never ran: cannot start")
        self.assertEqual(exitStatusOf(job), 127)

    def test_neverRanSaidOnce(self) -> None:
        """
        A server's error that already says the job never ran (the spawner
        died as it was being started; Slurm ended it while queued) is not
        told twice: it read "never ran: never ran: ...".
        """
        error = "never ran: the job spawner died as it was being started"
        job = {**self.LOST, "started_at": None, "pid": None, "error": error}
        self.assertEqual(outcome(job), error)
        stopped = {**job, "stopped_by": "alice", "error": "never ran: stopped"}
        self.assertEqual(outcome(stopped), "never ran (stopped by alice): stopped")

    def test_dependenciesReadAsAList(self) -> None:
        """after and after_ok read as ids, not as a Python list's repr."""
        job = {
            **self.LOST,
            "id": "c0ffee",
            "status": "PENDING",
            "command": "true",
            "args": [],
            "owner": "alice",
            "after_ok": ["a1", "b2"],
            "after": [],
        }
        lines = jobLines(job, 0.0).splitlines()
        self.assertIn("after_ok: a1, b2", [" ".join(line.split()) for line in lines])
        self.assertNotIn("[", jobLines(job, 0.0))
