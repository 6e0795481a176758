"""
What the fortieth session's new user found in jw.

C{jw logs -f ID | grep -m1 ready} (and C{jw exec -f ... | grep -m1}) held
the pipeline until the job wrote again, where C{tail -f} ends as its
reader goes; under C{> log 2>&1}, jw's own line stuck to the job's
unfinished last one; completion had no C{help} verb, and fish no C{--help}.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.completion import COMPLETION
from jobworker.client.parser import VERBS
from jobworker.client.readergone import ReaderWatch, watchedOutput
from jobworker.client.streams import GatedStreams, Streams

from .support import JW, LiveServer, bashOffers, fishOffers, jwEnvironment
from .test_cli_exec_defects import BOUND

#: A job that says it is ready, then nothing for longer than any test
#: waits (a server).
_READY = "echo ready; sleep 60; echo more"

#: Seconds jw may take to end once its reader has gone (it took until the
#: job's next write).
_AT_ONCE = 8.0


def _readUntilGone(
    argv: list[str], environ: dict[str, str], stderr: Any
) -> tuple[int, float, bytes]:
    """
    Run jw with its stdout a pipe (its stderr C{stderr}: C{subprocess.STDOUT}
    for C{2>&1}); read to its C{ready} line, as C{grep -m1} does, then close the
    pipe: jw's exit status, the seconds it took to exit after, and its
    stderr (with C{2>&1}, the lines read).
    """
    proc = subprocess.Popen(
        [JW, *argv],
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    try:
        assert proc.stdout is not None
        seen = line = b"-"
        while line and b"ready" not in line:  # (jw's own lines, with 2>&1)
            line = proc.stdout.readline()
            seen += line
        assert line, "no ready line"
        proc.stdout.close()
        closed = time.monotonic()
        code = proc.wait(timeout=BOUND + 60)
        took = time.monotonic() - closed
        err = proc.stderr.read() if proc.stderr is not None else seen
        return code, took, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class ReaderGoneTests(TestCase):
    """
    A follow to a pipe ends, exit 141 (SIGPIPE's, as a failed write's), as
    soon as the pipe's reader has gone, the job quiet (it ended at the
    job's next write only: new user round 40). C{jw logs -f} leaves the job
    alone; C{jw exec -f} stops it, as at a failed write.
    """

    timeout = 180

    async def _logs(self, *options: str, stderr: Any) -> None:
        server = LiveServer(self)
        job = await server.createJob("/bin/sh", "-c", _READY)
        environ = jwEnvironment(server.url)
        code, took, err = await deferToThread(
            _readUntilGone, ["logs", "-f", *options, job["id"]], environ, stderr
        )
        self.assertEqual(code, 141, err)
        self.assertLess(took, _AT_ONCE)
        self.assertNotIn(b"jw:", err)  # quiet
        _, now = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual(now["status"], "RUNNING")  # left alone
        await server.json("POST", f"/jobs/{job['id']}/stop")

    async def test_logsCombined(self) -> None:
        """C{jw logs -f ID 2>&1 | grep -m1}: the combined stream."""
        await self._logs(stderr=subprocess.STDOUT)

    async def test_logsRaw(self) -> None:
        """C{jw logs -f ID | grep -m1}, stderr elsewhere: the raw streams."""
        await self._logs(stderr=subprocess.PIPE)

    async def test_logsOneStream(self) -> None:
        """C{jw logs -f --stdout ID | grep -m1}."""
        await self._logs("--stdout", stderr=subprocess.PIPE)

    async def test_exec(self) -> None:
        """C{jw exec -f -- ... | grep -m1}: the job is stopped, and said."""
        server = LiveServer(self)
        environ = jwEnvironment(server.url)
        code, took, err = await deferToThread(
            _readUntilGone,
            ["exec", "-f", "--", "/bin/sh", "-c", _READY],
            environ,
            subprocess.PIPE,
        )
        self.assertEqual(code, 141, err)
        self.assertLess(took, _AT_ONCE)
        self.assertIn(b"jw: stdout closed: stopping job", err)
        jobId = err.split(b"stopping job ")[1].split()[0].decode()
        ended = await server.waitEnded(jobId)
        self.assertEqual(ended["status"], "STOPPED")

    async def test_execCombined(self) -> None:
        """
        C{jw exec -f -- ... 2>&1 | grep -m1}: the combined stream; the job
        is stopped, its line lost with the pipe.
        """
        server = LiveServer(self)
        environ = jwEnvironment(server.url)
        code, took, seen = await deferToThread(
            _readUntilGone,
            ["exec", "-f", "--", "/bin/sh", "-c", _READY],
            environ,
            subprocess.STDOUT,
        )
        # Not 120: the line that says the job is stopped could not be
        # written, and Python's flush of it at the exit failed.
        self.assertEqual(code, 141)
        self.assertLess(took, _AT_ONCE)
        jobId = seen.split(b"jw: job ")[1].split()[0].decode()
        ended = await server.waitEnded(jobId)
        self.assertEqual(ended["status"], "STOPPED")


class ReaderWatchTests(SynchronousTestCase):
    """L{ReaderWatch} itself: a pipe's reader gone breaks the reads."""

    def test_broken(self) -> None:
        reading, writing = os.pipe()
        self.addCleanup(os.close, writing)
        one, two = socket.socketpair()
        self.addCleanup(one.close)
        self.addCleanup(two.close)
        watch = ReaderWatch(writing)
        watch.reading(one)
        one.settimeout(BOUND)
        os.close(reading)
        self.assertEqual(one.recv(10), b"")  # shut down: the read ends at once
        self.assertTrue(watch.gone)
        self.assertRaises(BrokenPipeError, watch.reading, two)

    def test_watched(self) -> None:
        reading, writing = os.pipe()
        self.addCleanup(os.close, reading)
        self.addCleanup(os.close, writing)
        self.assertTrue(watchedOutput(writing))
        with tempfile.TemporaryFile() as f:
            self.assertFalse(watchedOutput(f.fileno()))


class OwnLineInSharedFileTests(SynchronousTestCase):
    """
    jw's own line after job output that left a line unfinished, the two in
    one file or pipe (C{> log 2>&1}, C{2>&1 | tee log}): on a line of its
    own, as on a terminal (it read C{progress 50%jw: job ...: timed out},
    which C{grep '^jw: '} misses: new user round 40). Two places apart are
    left as they are.
    """

    def shared(self, fd: int) -> Streams:
        """Streams whose output and messages all go to C{fd}."""
        out = os.fdopen(os.dup(fd), "wb")
        messages = os.fdopen(os.dup(fd), "w")
        self.addCleanup(out.close)
        self.addCleanup(messages.close)
        return Streams(out, out, messages, inp=None)

    def test_file(self) -> None:
        with tempfile.TemporaryFile() as log:
            streams = self.shared(log.fileno())
            gated = GatedStreams(streams)
            gated.writer("stdout")(b"progress 50%")
            streams.say("jw: job 1: timed out")
            gated.writer("stderr")(b"done\n")
            gated.say("jw: job 2")
            streams.messages.flush()
            log.seek(0)
            self.assertEqual(
                log.read(), b"progress 50%\njw: job 1: timed out\ndone\njw: job 2\n"
            )

    def test_pipe(self) -> None:
        reading, writing = os.pipe()
        self.addCleanup(os.close, reading)
        streams = self.shared(writing)
        os.close(writing)
        streams.writer("stderr")(b"50%")
        streams.say("jw: x")
        self.assertEqual(os.read(reading, 100), b"50%\njw: x\n")

    def test_apart(self) -> None:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            messages = os.fdopen(os.dup(err.fileno()), "w")
            self.addCleanup(messages.close)
            streams = Streams(out, out, messages, inp=None)  # type: ignore[arg-type]
            streams.writer("stdout")(b"partial")
            streams.say("jw: x")
            messages.flush()
            err.seek(0)
            self.assertEqual(err.read(), b"jw: x\n")


#: A job that leaves its line unfinished, then runs on.
_PARTIAL = 'printf "progress 50%%"; sleep 5'


class OwnLineInLogTests(TestCase):
    """C{jw exec -f ... > log 2>&1} of a job timed out mid-line (the report's)."""

    timeout = 60

    async def test_timedOut(self) -> None:
        server = LiveServer(self)
        log = os.path.abspath(self.mktemp())
        with open(log, "wb") as f:
            done = await deferToThread(
                subprocess.run,
                [JW, "exec", "-f", "--timeout", "1", "--", "/bin/sh", "-c", _PARTIAL],
                env=jwEnvironment(server.url),
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=BOUND,
                check=False,
            )
        self.assertEqual(done.returncode, 143)
        with open(log, "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[-2], b"progress 50%")
        self.assertTrue(lines[-1].startswith(b"jw: job "), lines)
        self.assertIn(b"timed out", lines[-1])


class HelpCompletionTests(SynchronousTestCase):
    """
    Completion offers the C{help} verb and, after it, the verbs, in bash,
    zsh and fish; fish offers C{--help} where bash does, and C{--version}
    before a verb (none of them did: new user round 40).
    """

    def fish(self, line: str) -> list[str]:
        return fishOffers(line)

    def zsh(self, *words: str) -> list[str]:
        """What zsh's C{_jw} hands compadd with C{words} on the line."""
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

    def test_bash(self) -> None:
        self.assertEqual(bashOffers("jw", "he"), ["help"])
        self.assertEqual(bashOffers("jw", "help", ""), list(VERBS))
        self.assertEqual(bashOffers("jw", "help", "wa"), ["wait"])
        self.assertEqual(bashOffers("jw", "help", "wait", ""), [])

    def test_zsh(self) -> None:
        self.assertIn("help", self.zsh("jw", "he"))
        self.assertEqual(self.zsh("jw", "help", ""), ["--", *VERBS])
        self.assertEqual(self.zsh("jw", "help", "wait", ""), [])

    def test_fishHelpVerb(self) -> None:
        self.assertEqual(self.fish("jw he"), ["help"])
        self.assertEqual(sorted(self.fish("jw help ")), sorted(VERBS))
        self.assertEqual(self.fish("jw help wait "), [])

    def test_fishHelpOption(self) -> None:
        for verb in ("login", "list", "exec", "stop"):
            self.assertIn("--help", self.fish(f"jw {verb} -"), verb)
            self.assertNotIn("--version", self.fish(f"jw {verb} -"), verb)
        self.assertEqual(
            sorted(self.fish("jw login -")),
            sorted(bashOffers("jw", "login", "-")),
        )
        self.assertIn("--help", self.fish("jw -"))
        self.assertIn("--version", self.fish("jw -"))
        # Not the job's: after exec's COMMAND, or --.
        self.assertNotIn("--help", self.fish("jw exec -- no-such-command -"))
        self.assertNotIn("--help", self.fish("jw exec no-such-command -"))


class StdinLoopTests(TestCase):
    """
    C{jw exec} without C{-i} in a C{while read} loop says nothing of its
    stdin: what waits there is the rest of the loop's list, which jw
    rightly leaves (it said "jw's stdin is not sent (use -i)" on every
    pass but the last: new user round 40). Data handed to jw itself is
    still said to be left.
    """

    timeout = 120

    async def sh(self, script: str, shell: str = "/bin/sh") -> bytes:
        """
        Run C{script} in C{shell} (C{JW}: jw, C{LIST}: a file of 3 lines):
        its stderr.
        """
        server = LiveServer(self)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        listed = os.path.join(folder, "list")
        with open(listed, "w") as f:
            f.write("a\nb\nc\n")
        done = await deferToThread(
            subprocess.run,
            [shell, "-c", script.replace("JW", JW).replace("LIST", listed)],
            env=jwEnvironment(server.url),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BOUND * 2,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stderr

    async def test_fileLoop(self) -> None:
        err = await self.sh('while read x; do JW exec -f -- echo "$x"; done < LIST')
        self.assertEqual(err.count(b"jw: job "), 3, err)  # (started)
        self.assertNotIn(b"stdin", err)

    async def test_pipeLoop(self) -> None:
        err = await self.sh(
            'cat LIST | while read x; do JW exec -f -- echo "$x" | cat; done'
        )
        self.assertEqual(err.count(b"jw: job "), 3, err)
        self.assertNotIn(b"stdin", err)

    async def test_bashLoops(self) -> None:
        """The report's, in bash (which redirects in the child, dash in the shell)."""
        for script in (
            'while read x; do JW exec -f -- echo "$x" | cat; done < LIST',
            'cat LIST | while read x; do JW exec -f -- echo "$x"; done',
        ):
            err = await self.sh(script, "/bin/bash")
            self.assertEqual(err.count(b"jw: job "), 3, err)
            self.assertNotIn(b"stdin", err)
        err = await self.sh("JW exec -- cat < LIST", "/bin/bash")
        self.assertIn(b"jw's stdin is not sent (use -i)", err)

    async def test_fileToJw(self) -> None:
        err = await self.sh("JW exec -- cat < LIST")
        self.assertIn(b"jw's stdin is not sent (use -i)", err)

    async def test_pipeToJw(self) -> None:
        err = await self.sh("cat LIST | JW exec -- cat")
        self.assertIn(b"jw's stdin is not sent (use -i)", err)
