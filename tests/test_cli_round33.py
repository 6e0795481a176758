"""
What the thirty-third session's new user and Slurm user found in jw.

The new user's: a C{--ca} (C{JW_CA}) of C{/dev/zero} filled the memory and a
FIFO hung C{jw list} (the verbs on the standard library's client read it
whole; C{jw stop} read it as the server does); a follow that outlived its
login token exited 1 without a word of the job running on; C{--memory 0},
C{--nodes 0}, C{--tail 1000001} and an id starting with C{-} were refused by
the server, in the API's words; C{https://host:} was taken for port 443; a
repeated C{jw list} filter kept only its last; C{jw config} did not show
C{JW_KEEPALIVE}; C{jw logs --tail N} said "the last N lines" of what are
each stream's; C{jobworker-hash-password} took Ctrl-C and Ctrl-D for "no
password given".

The Slurm user's: C{jw stop} and C{jw rm} of some hundreds of ids opened a
connection per id at once, past the server's C{--max-connections-per-client},
and C{jw rm} did not say which failed; C{jw stop} of a job whose end is not
known yet said it "had already ended (RUNNING)".
"""

from __future__ import annotations

import getpass
import io
import json
import os
import resource
import signal
import subprocess
import sys
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker import pemfiles, tls
from jobworker.auth import hashpw
from jobworker.client.calls import errorFor
from jobworker.client.failures import EXIT_ALREADY_ENDED, EXIT_NOT_FOLLOWED
from jobworker.client.http import JobworkerClient
from jobworker.client.verbs import IDS_AT_ONCE
from jobworker.jobs import queries

from . import test_cli_habits
from .support import CA, CERTS, JW, LiveServer, runJW
from .test_cli_memory import MemoryCLITestCase

UNKNOWN = "00000000-0000-4000-8000-000000000000"

#: Every verb that reads the CA file, with the arguments it needs.
VERBS_READING_CA = (
    ("list",),
    ("status", UNKNOWN),
    ("exec", "--", "true"),
    ("logs", UNKNOWN),
    ("wait", UNKNOWN),
    ("clean",),
    ("stop", UNKNOWN),
    ("rm", UNKNOWN),
)


def _boundedMemory() -> None:
    # A jw that reads /dev/zero whole stops at a MemoryError, not at the
    # machine's OOM killer (it took 24 GB: new user round 33).
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


class SubprocessJW:
    """The installed C{jw}, its environment without the tester's C{JW_*}."""

    mktemp: Any
    fail: Any

    def jw(
        self, *argv: str, timeout: float = 15, **environ: str
    ) -> tuple[bytes, bytes, int]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JW_")},
            "XDG_CONFIG_HOME": os.path.abspath(self.mktemp()),
            "JW_SERVER": "https://localhost:1",
            "JW_CA": CA,
            "JW_TOKEN": "t",
            **environ,
        }
        try:
            done = subprocess.run(
                [JW, *argv],
                env=env,
                capture_output=True,
                timeout=timeout,
                check=False,
                preexec_fn=_boundedMemory,
            )
        except subprocess.TimeoutExpired:
            self.fail(f"jw {' '.join(argv)} still running after {timeout}s")
        return done.stdout, done.stderr, done.returncode


class PEMFilesBoundedTests(SubprocessJW, SynchronousTestCase):
    """
    A CA, certificate or key file is read as the server reads its own: a
    regular file (or a link to one) of at most 4 MiB, never waited on;
    anything else is refused in one line, exit 2, alike by every verb.
    """

    def refused(self, argv: tuple[str, ...], said: bytes, **environ: str) -> None:
        out, err, code = self.jw(*argv, **environ)
        self.assertEqual((out, code), (b"", 2), (argv, err))
        self.assertEqual(err.count(b"\n"), 1, (argv, err))
        self.assertIn(said, err, argv)

    def fifo(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.mkfifo(path)
        return path

    def test_fifoCA(self) -> None:
        path = self.fifo()
        said = f"jw: cannot read CA certificate {path}: not a regular file".encode()
        for argv in VERBS_READING_CA:
            self.refused(argv, said, JW_CA=path)
        self.refused(("list", "--ca", path), said)

    def test_deviceCA(self) -> None:
        said = b"jw: cannot read CA certificate /dev/zero: not a regular file"
        for argv in VERBS_READING_CA:
            self.refused(argv, said, JW_CA="/dev/zero")

    def test_tooBig(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(CA, "rb") as f:
            pem = f.read()
        with open(path, "wb") as f:
            f.write(pem + b"#" * pemfiles.MAX_PEM_BYTES)
        said = f"jw: CA certificate {path} is over 4 MiB".encode()
        for argv in (("list",), ("stop", UNKNOWN)):
            self.refused(argv, said, JW_CA=path)

    def test_clientCertificateAndKey(self) -> None:
        path = self.fifo()
        clients = os.path.join(CERTS, "clients")
        cert, key = (
            os.path.join(clients, "alice.pem"),
            os.path.join(clients, "alice.key"),
        )
        for argv in (("list",), ("stop", UNKNOWN)):
            self.refused(
                argv,
                f"cannot read client certificate {path}: not a regular file".encode(),
                JW_CERT=path,
                JW_KEY=key,
            )
            self.refused(
                argv,
                f"cannot read client key {path}: not a regular file".encode(),
                JW_CERT=cert,
                JW_KEY=path,
            )

    def test_configSays(self) -> None:
        """C{jw config} says why the file is unusable, and is not hung on it."""
        path = self.fifo()
        out, err, code = self.jw("config", JW_CA=path)
        self.assertEqual(code, 0, err)
        self.assertIn(b"(cannot read it: not a regular file)", out)

    def test_boundIsTheServers(self) -> None:
        """One reader, the server's and jw's."""
        self.assertIs(tls.readPEM, pemfiles.readPEM)


class FollowOutlivesLoginTests(MemoryCLITestCase):
    """
    A follow whose login token expires under it (the server ends its log
    responses and long polls then): exit 125, one line saying that the job
    runs on and how to get back to it, not exit 1 and "run jw login" alone
    (new user round 33).
    """

    def token(self) -> dict[str, str]:
        """The environment of a jw run on a token of an hour (as CI's)."""
        code, body = self.apiJSON("POST", "/tokens", "alice")
        self.assertEqual(code, 201, body)
        return {"JW_TOKEN": body["token"], "JW_USER": "", "JW_PASSWORD": ""}

    def expire(self) -> None:
        """The token's hour passes (its long polls and streams answered)."""
        for _ in range(80):
            self.reactor.advance(50)
            self.flush()

    def outlived(self, *argv: str, jobId: str) -> None:
        run = self.start(*argv, **self.token())
        assert run.done is not None
        self.assertNoResult(run.done)
        self.expire()
        _out, err, code = self.finish(run)
        last = err.decode().splitlines()[-1]
        self.assertEqual(code, EXIT_NOT_FOLLOWED, err)
        self.assertTrue(last.startswith(f"jw: cannot follow job {jobId} ("), last)
        self.assertIn("expired", last)
        # (JW_TOKEN's to renew, not a login: new user round 41.)
        self.assertIn("it is still running: JW_TOKEN was refused (it expired at ", last)
        self.assertIn(
            f"set a new one, then jw logs -f {jobId} to follow it, jw stop {jobId} "
            "to stop it",
            last,
        )
        self.assertEqual(self.statusJSON(jobId)["status"], "RUNNING")

    def test_execFollowed(self) -> None:
        run = self.start("exec", "-f", "--", "sleep", "9999", **self.token())
        assert run.done is not None
        self.assertNoResult(run.done)
        [jobId] = self.listedIds()
        self.expire()
        _out, err, code = self.finish(run)
        self.assertEqual(code, EXIT_NOT_FOLLOWED, err)
        last = err.decode().splitlines()[-1]
        # (JW_TOKEN's to renew, not a login: new user round 41.)
        self.assertIn("it is still running: JW_TOKEN was refused (it expired at ", last)
        self.assertIn(
            f"set a new one, then jw logs -f {jobId} to follow it, jw stop {jobId} "
            "to stop it",
            last,
        )
        self.assertIn("expired", last)

    def test_wait(self) -> None:
        jobId = self.execId("sleep", "9999")
        self.outlived("wait", jobId, jobId=jobId)

    def test_logsFollowed(self) -> None:
        jobId = self.execId("sleep", "9999")
        self.outlived("logs", "-f", jobId, jobId=jobId)

    def test_logsFollowedOneStream(self) -> None:
        jobId = self.execId("sleep", "9999")
        self.outlived("logs", "-f", "--stderr", jobId, jobId=jobId)

    def test_refusedAtOnceStillSaysLogin(self) -> None:
        """A token refused before any answer: a refusal, exit 1, as it was."""
        jobId = self.execId("sleep", "9999")
        environ = self.token()
        self.reactor.advance(3601)
        for argv in (("wait", jobId), ("logs", "-f", jobId)):
            out, err, code = self.jw(*argv, **environ)
            self.assertEqual((out, code), (b"", 1), err)
            self.assertIn(b"authentication failed", err)
            self.assertNotIn(b"cannot follow", err)


class ManyIdsLiveTests(TestCase):
    """
    C{jw stop} and C{jw rm} of more ids than the server's
    C{--max-connections-per-client}: a few at a time, all stopped and all
    deleted (one connection per id at once: the ids past the cap failed,
    and C{jw rm} said one line that named none: Slurm user round 33).
    """

    timeout = 180

    async def test_stopAndRemoveAll(self) -> None:
        server = LiveServer(self, "--max-connections-per-client=24")
        ids = [(await server.createJob("sleep", "60"))["id"] for _ in range(50)]
        _out, err, code = await runJW(server.url, "stop", "--json", *ids)
        self.assertEqual(code, 0, err)
        for jobId in ids:
            job = await server.waitEnded(jobId)
            self.assertEqual(job["status"], "STOPPED", job)
        _out, err, code = await runJW(server.url, "rm", *ids)
        self.assertEqual((code, err), (0, b""))
        status, body = await server.json("GET", "/jobs?limit=100")
        self.assertEqual((status, body["jobs"]), (200, []))


class RefusingSome:
    """An HTTP client over another whose requests naming some ids get no
    connection (a server at its connection cap for them)."""

    def __init__(self, http: Any, refused: set[str]) -> None:
        self._http = http
        self._refused = refused

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        if any(jobId in str(url) for jobId in self._refused):
            return fail(ConnectionRefusedError())
        return self._http.request(method, url, **kwargs)


class ManyIdsEachNamedTests(MemoryCLITestCase):
    """Each id that failed is named, in the order of the arguments."""

    def connectRefusing(self, refused: set[str]) -> Any:
        def connect(*args: Any, **kwargs: Any) -> JobworkerClient:
            client = self.connect(*args, **kwargs)
            client._http = RefusingSome(self.http, refused)  # type: ignore[assignment]
            return client

        return connect

    def test_named(self) -> None:
        ids = [self.execId("true") for _ in range(6)]
        for jobId in ids:
            self.endJob(jobId)
        refused = {ids[4], ids[2]}
        for verb in ("stop", "rm"):
            _out, err, code = self.jw(verb, *ids, connect=self.connectRefusing(refused))
            self.assertEqual(code, 1, err)
            lines = [
                line for line in err.decode().splitlines() if "cannot connect" in line
            ]
            self.assertEqual(len(lines), 2, err)
            for line, jobId in zip(lines, (ids[2], ids[4]), strict=True):
                self.assertTrue(line.startswith(f"jw: {jobId}: cannot connect"), line)
        self.assertEqual(sorted(self.listedIds()), sorted(refused))

    def test_noneReachedSaidOnce(self) -> None:
        ids = [self.execId("sleep", "60") for _ in range(3)]
        for verb in ("stop", "rm"):
            result = self.jw(verb, *ids, connect=self.connectRefusing(set(ids)))
            self.assertOneLineFailure(result, b"cannot connect")


class FixedRangesTests(MemoryCLITestCase):
    """
    The ranges fixed for every server, checked before anything is sent:
    one line naming the flag, exit 2 (they were the server's 400s, in the
    API's field names, exit 1: new user round 33).
    """

    def refused(self, *argv: str) -> bytes:
        out, err, code = self.jw(*argv)
        self.assertEqual((out, code), (b"", 2), (argv, err))
        self.assertEqual(err.count(b"\n"), 1, err)
        return err

    def test_sizesAndCounts(self) -> None:
        for flag in ("--memory", "--io-read", "--io-write", "--nodes", "--ntasks"):
            err = self.refused("exec", flag, "0", "--", "true")
            self.assertIn(f"jw: {flag} must be at least 1".encode(), err)
        for flag in ("--memory", "--io-read", "--io-write"):
            err = self.refused("exec", flag, str((1 << 62) + 1), "--", "true")
            self.assertIn(f"jw: {flag} must be at most".encode(), err)
        self.assertEqual(self.listedIds(), [])

    def test_tail(self) -> None:
        from jobworker.client.calls import MAX_TAIL  # (new this round)

        self.assertEqual(MAX_TAIL, queries.MAX_TAIL)
        jobId = self.execId("true")
        err = self.refused("logs", "--tail", str(MAX_TAIL + 1), jobId)
        self.assertIn(b"jw: --tail must be from 0 to 1000000", err)
        self.assertSucceeded(self.jw("logs", "--tail", str(MAX_TAIL), jobId))

    def test_idStartingWithDash(self) -> None:
        for verb in ("status", "stop", "rm", "logs", "wait"):
            for text in ("-abcdef", "------"):
                err = self.refused(verb, "--", text)
                self.assertIn(f"'{text}' is not a job id".encode(), err)


class ServerEmptyPortTests(SubprocessJW, SynchronousTestCase):
    """C{https://host:}: refused by every verb as C{https://host:99999} is
    (most went to port 443, C{jw stop} said "port must not be empty")."""

    def test_refused(self) -> None:
        for server in ("https://127.0.0.1:", "https://localhost:/"):
            for argv in (("list",), ("stop", UNKNOWN), ("config",)):
                out, err, code = self.jw(*argv, JW_SERVER=server)
                if argv == ("config",):
                    continue  # (it shows the settings, whatever they are)
                self.assertEqual((out, code), (b"", 2), (server, argv, err))
                self.assertEqual(err.count(b"\n"), 1, err)
                self.assertIn(b"server must be an https:// URL", err)


class RepeatedFilterTests(MemoryCLITestCase):
    """A filter given twice is refused, one line, exit 2 (the last one
    was kept, silently)."""

    def test_refused(self) -> None:
        jobId = self.execId("sleep", "60")
        for verb, flag, value in (
            ("list", "--status", "RUNNING"),
            ("list", "--name", "a"),
            ("list", "--owner", "alice"),
            ("clean", "--status", "COMPLETED"),
            ("clean", "--owner", "alice"),
        ):
            out, err, code = self.jw(verb, flag, value, flag, value)
            self.assertEqual((out, code), (b"", 2), (verb, flag, err))
            self.assertEqual(
                err, f"jw: {flag} given twice: jw {verb} takes one\n".encode()
            )
        self.assertEqual(self.listedIds(), [jobId])

    def test_onceStillTaken(self) -> None:
        jobId = self.execId("sleep", "60")
        out = self.assertSucceeded(
            self.jw("list", "--status", "RUNNING", "--owner", "alice", "--json")
        )
        self.assertIn(jobId.encode(), out)
        out = self.assertSucceeded(self.jw("list", "--status", "PENDING", "--json"))
        self.assertNotIn(jobId.encode(), out)


#: The server's 409 for a stop of a Slurm job that ended before the stop,
#: its end not known yet (executors/slurm/job.py).
END_UNKNOWN = (
    "job already ended in Slurm: nothing to stop (its end is not known yet: "
    "it is recorded once Slurm's accounting answers)"
)


class StopOfUnknownEndTests(MemoryCLITestCase):
    """
    C{jw stop} answered 409 with a record that is not final (a Slurm job
    that ended, its end not read yet: RUNNING): the server's reason, exit
    3, not "had already ended (RUNNING)" (Slurm user round 33).
    """

    def endUnknown(self, record: dict[str, Any]) -> Any:
        """A connect whose stop of the job is the server's 409 for it."""

        def connect(*args: Any, **kwargs: Any) -> JobworkerClient:
            client = self.connect(*args, **kwargs)

            async def stop(jobId: str, *more: Any) -> dict[str, Any]:
                body = json.dumps({"error": END_UNKNOWN, "job": record}).encode()
                raise errorFor(409, body, path=f"/jobs/{jobId}/stop")

            client.stop = stop  # type: ignore[method-assign]
            return client

        return connect

    def test_serversReason(self) -> None:
        jobId = self.execId("sleep", "60")
        record = self.statusJSON(jobId)
        self.assertEqual(record["status"], "RUNNING")
        out, err, code = self.jw("stop", jobId, connect=self.endUnknown(record))
        self.assertEqual((out, code), (b"", EXIT_ALREADY_ENDED), err)
        self.assertEqual(err, f"jw: job {jobId}: {END_UNKNOWN}\n".encode())

    def test_json(self) -> None:
        jobId = self.execId("sleep", "60")
        record = self.statusJSON(jobId)
        out, err, code = self.jw(
            "stop", "--json", jobId, connect=self.endUnknown(record)
        )
        self.assertEqual(code, EXIT_ALREADY_ENDED, err)
        self.assertEqual(json.loads(out)["id"], jobId)
        self.assertEqual(err, f"jw: job {jobId}: {END_UNKNOWN}\n".encode())

    def test_severalIds(self) -> None:
        jobId = self.execId("sleep", "60")
        record = self.statusJSON(jobId)
        _out, err, code = self.jw("stop", jobId, jobId, connect=self.endUnknown(record))
        self.assertEqual(code, EXIT_ALREADY_ENDED, err)
        self.assertEqual(
            err.decode().splitlines(), [f"jw: {jobId}: job {jobId}: {END_UNKNOWN}"] * 2
        )

    def test_finalStillSaysItsStatus(self) -> None:
        """A final record: "had already ended (STATUS)", as before."""
        jobId = self.execId("true")
        self.endJob(jobId)
        record = self.statusJSON(jobId)
        out, err, code = self.jw("stop", jobId, connect=self.endUnknown(record))
        self.assertEqual((out, code), (b"", EXIT_ALREADY_ENDED), err)
        self.assertEqual(
            err,
            f"jw: job {jobId} had already ended (COMPLETED): nothing to "
            "stop\n".encode(),
        )


class KeepAliveShownTests(SubprocessJW, SynchronousTestCase):
    """
    C{jw config} shows C{keepalive} and whence; a bad C{JW_KEEPALIVE} is
    shown on its line, the rest shown too, then exit 2 (it exited 2 showing
    nothing); C{jw config --help} lists it (new user round 33).
    """

    def keepalive(self, out: bytes) -> str:
        [line] = [
            line for line in out.decode().splitlines() if line.startswith("keepalive")
        ]
        return line

    def test_default(self) -> None:
        out, err, code = self.jw("config")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.keepalive(out), "keepalive = 30    # default")

    def test_given(self) -> None:
        out, err, code = self.jw("config", JW_KEEPALIVE="45")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.keepalive(out), "keepalive = 45    # JW_KEEPALIVE")

    def test_bad(self) -> None:
        out, err, code = self.jw("config", JW_KEEPALIVE="0")
        self.assertEqual(code, 2, (out, err))
        self.assertEqual(
            self.keepalive(out),
            "keepalive = 0    # JW_KEEPALIVE (refused: must be whole seconds "
            "from 1 to 32767)",
        )
        for key in ("server", "ca", "user", "login token", "sent"):
            self.assertIn(f"\n{key} = ".encode(), out)
        self.assertEqual(
            err, b"jw: JW_KEEPALIVE must be whole seconds from 1 to 32767: '0'\n"
        )

    def test_otherVerbsStillRefuse(self) -> None:
        out, err, code = self.jw("list", JW_KEEPALIVE="0")
        self.assertEqual((out, code), (b"", 2), err)
        self.assertEqual(
            err, b"jw: JW_KEEPALIVE must be whole seconds from 1 to 32767: '0'\n"
        )

    def test_help(self) -> None:
        out, err, code = self.jw("config", "--help")
        self.assertEqual(code, 0, err)
        self.assertIn(b"JW_KEEPALIVE", out)


class TailOfCombinedTests(MemoryCLITestCase):
    """
    C{jw logs --tail N} (both streams, no C{-f}): the last N lines of the
    output as jw shows it, as C{tail -n} (it was N of each stream: up to
    2N; new user round 33).
    """

    def interleaved(self) -> str:
        jobId = self.execId("sh", "-c", "echo o1; echo e1 >&2; echo o2; echo e2 >&2")
        spawned = self.process(jobId)
        for write, line in (
            (spawned.output, b"o1\n"),
            (spawned.errors, b"e1\n"),
            (spawned.output, b"o2\n"),
            (spawned.errors, b"e2\n"),
        ):
            write(line)
            self.reactor.advance(0.2)
            self.flush()
        self.endJob(jobId)
        return jobId

    def test_lastLines(self) -> None:
        jobId = self.interleaved()
        for tail, shown in (
            ("0", (b"", b"")),
            ("1", (b"", b"e2\n")),
            ("2", (b"o2\n", b"e2\n")),
            ("3", (b"o2\n", b"e1\ne2\n")),
            ("4", (b"o1\no2\n", b"e1\ne2\n")),
            ("9", (b"o1\no2\n", b"e1\ne2\n")),
        ):
            self.assertEqual(self.jw("logs", "--tail", tail, jobId), (*shown, 0), tail)

    def test_unfinishedLine(self) -> None:
        """A last line without its newline counts, as tail -n counts it."""
        jobId = self.execId("sh", "-c", "echo o1; printf e1 >&2")
        spawned = self.process(jobId)
        spawned.output(b"o1\n")
        self.reactor.advance(0.2)
        self.flush()
        spawned.errors(b"e1")
        self.endJob(jobId)
        self.assertEqual(self.jw("logs", "--tail", "1", jobId), (b"", b"e1", 0))

    def test_lastLinesOf(self) -> None:
        from jobworker.client.follow import LastLines  # (new this round)

        crossed = [(0, b"a"), (1, b"x\n"), (0, b"b\n"), (1, b"y\n")]
        for pieces, count, kept in (
            # A line of one stream cut by the other's ends where it is shown
            # to end: tail -n of what jw shows (new user round 37).
            (crossed, 2, [b"b\n", b"y\n"]),
            (crossed, 3, [b"ab\n", b"x\ny\n"]),
            ([(0, b"a\nb\nc\n")], 2, [b"b\nc\n", b""]),
            ([(0, b"a\nb"), (0, b"c\n")], 1, [b"bc\n", b""]),
            ([], 3, [b"", b""]),
        ):
            shown = [io.BytesIO(), io.BytesIO()]
            last = LastLines(count)
            for index, data in pieces:
                last.add(index, data)
            last.release([shown[0].write, shown[1].write])
            self.assertEqual([f.getvalue() for f in shown], kept, (pieces, count))

    def test_helpSays(self) -> None:
        out = self.assertSucceeded(self.jw("logs", "--help"))
        self.assertIn(b"the last N lines of the output", b" ".join(out.split()))


class HashPasswordPromptTests(SynchronousTestCase):
    """
    C{jobworker-hash-password} at its prompt: Ctrl-C exits 130 after a
    newline, Ctrl-D is one line, exit 2, as jw's (both were "no password
    given", exit 1); an invalid user name is refused with the rule.
    """

    def prompted(self, answer: type[BaseException]) -> tuple[int, str, str]:
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        def getpassRaising(prompt: str = "") -> str:
            raise answer()

        out, err = io.StringIO(), io.StringIO()
        self.patch(getpass, "getpass", getpassRaising)
        self.patch(sys, "stdin", Terminal())
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = hashpw.main(["--user", "carol", "--cost", "10"])
        return code, out.getvalue(), err.getvalue()

    def test_ctrlC(self) -> None:
        self.assertEqual(self.prompted(KeyboardInterrupt), (130, "", "\n"))

    def test_ctrlD(self) -> None:
        code, out, err = self.prompted(EOFError)
        self.assertEqual((code, out), (2, ""), err)
        self.assertEqual(
            err, "\njobworker-hash-password: no password given (end of input)\n"
        )

    def test_userNameRule(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "jobworker.auth.hashpw", "--user", "dörä"],
            input=b"pw\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
        self.assertEqual((done.returncode, done.stdout), (2, b""), done.stderr)
        self.assertEqual(
            done.stderr.decode(),
            "jobworker-hash-password: invalid user name 'dörä': 1 to 64 ASCII "
            "letters, digits or ._@- (the first a letter or digit) (see --help)\n",
        )


class DetachQueuedTests(MemoryCLITestCase):
    """
    C{jw exec -f --detach-on-interrupt} of a job still queued: "left job
    ID queued", not "running" (new user round 33).
    """

    interruptible = test_cli_habits.InterruptTests.interruptible

    def test_queued(self) -> None:
        first = self.execId("sleep", "60")
        run, interrupts = self.interruptible(
            "exec", "-f", "--detach-on-interrupt", "--after", first, "--", "true"
        )
        interrupts.fire("SIGINT")
        _out, err, code = self.finish(run)
        self.assertEqual(code, 130, err)
        [jobId] = [i for i in self.listedIds() if i != first]
        self.assertEqual(self.statusJSON(jobId)["status"], "PENDING")
        self.assertIn(
            f"jw: SIGINT: left job {jobId} queued (follow it again: jw logs -f "
            f"{jobId}; stop it: jw stop {jobId})".encode(),
            err,
        )
        self.assertNotIn(b"running", err)

    def test_runningStillSaysRunning(self) -> None:
        run, interrupts = self.interruptible(
            "exec", "-f", "--detach-on-interrupt", "--", "sleep", "60"
        )
        interrupts.fire("SIGINT")
        _out, err, code = self.finish(run)
        self.assertEqual(code, 130, err)
        self.assertIn(b" running (follow it again", err)


class ManyIdsInterruptedTests(MemoryCLITestCase):
    """
    Ctrl-C while C{jw stop} of more ids than go at once (L{IDS_AT_ONCE})
    waits: the ids whose turn had not come were never stopped and never
    named, and jw said C{unexpected error: FirstError[...]}, a traceback
    for each id, exit 1 (session review 33). Each is named now, and jw
    exits 130.
    """

    interruptible = test_cli_habits.InterruptTests.interruptible

    def stopInterrupted(self, ids: list[str]) -> str:
        """C{jw stop --grace 30 IDS}, Ctrl-C once it waits: what it said
        (it exits 130)."""
        run, interrupts = self.interruptible("stop", "--grace", "30", *ids)
        self.flush()
        interrupts.fire("SIGINT")
        _out, err, code = self.finish(run)
        text = err.decode()
        self.assertEqual(code, 130, text)
        return text

    def test_everyIdNamed(self) -> None:
        ids = [self.execId("sleep", "300") for _ in range(IDS_AT_ONCE + 4)]
        text = self.stopInterrupted(ids)
        self.assertNotIn("unexpected", text)
        self.assertNotIn("Traceback", text)
        lines = text.splitlines()
        for jobId in ids:
            said = [line for line in lines if jobId in line]
            self.assertEqual(len(said), 1, (jobId, text))
            signalled = (self.process(jobId).pid, signal.SIGTERM) in self.killer.calls
            if signalled:
                self.assertIn("goes on", said[0])
            else:
                self.assertIn("not stopped (interrupted before its turn)", said[0])
        notStopped = [line for line in lines if "not stopped" in line]
        self.assertEqual(len(notStopped), 4, text)

    def test_answeredIdsNamed(self) -> None:
        """Ids answered before the interrupt (a job that had ended, an id
        of no job) are named too (they were dropped: late review 33)."""
        done = self.execId("true")
        self.endJob(done)
        missing = "0123abcd-0000-4000-8000-000000000000"
        running = [self.execId("sleep", "300") for _ in range(IDS_AT_ONCE + 2)]
        ids = [running[0], done, missing, *running[1:]]
        text = self.stopInterrupted(ids)
        lines = text.splitlines()
        for jobId in ids:
            self.assertEqual(
                len([line for line in lines if jobId in line]), 1, (jobId, text)
            )
        [ended] = [line for line in lines if done in line]
        self.assertIn("already ended", ended)


class RemoveInterruptedTests(MemoryCLITestCase):
    """
    jw rm A B C, interrupted while C's DELETE is under way (A and B deleted
    already): A, answered before the others began, was never named, nor C
    (late review 33). Each id is one line, A's first.
    """

    interruptible = test_cli_habits.InterruptTests.interruptible

    def test_firstIdNamed(self) -> None:
        ids = []
        for _ in range(3):
            jobId = self.execId("true")
            self.endJob(jobId)
            ids.append(jobId)
        real = JobworkerClient.deleteJob

        def deleteJob(client: JobworkerClient, jobId: str) -> object:
            if jobId == ids[2]:
                return Deferred()  # under way until cancelled
            return real(client, jobId)

        self.patch(JobworkerClient, "deleteJob", deleteJob)
        run, interrupts = self.interruptible("rm", *ids)
        self.flush()
        interrupts.fire("SIGINT")
        _out, err, code = self.finish(run)
        text = err.decode()
        for jobId in ids[:2]:
            code_, _ = self.apiJSON("GET", f"/jobs/{jobId}")
            self.assertEqual(code_, 404)  # both were deleted
        self.assertEqual(code, 130, text)
        lines = text.splitlines()
        for jobId in ids:
            said = [line for line in lines if jobId in line]
            self.assertEqual(len(said), 1, (jobId, text))
        self.assertIn(ids[0], lines[0], text)
