"""
What a new user's round (29) found in jw: the help written to a full disk
or a reader gone, results cut short without a word, why a job failed said
only sometimes, credentials in the server URL, a JSON page without its
cursor, and small completion and parsing slips.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.client.completion import COMPLETION
from jobworker.client.config import ConfigError, checkServer, resolve
from jobworker.client.show import endLine
from jobworker.client.streams import Streams
from jobworker.jobs.stopping import STOP_SIGNALS

from .support import JW, JWAssertions
from .test_cli_memory import MemoryCLITestCase


def run(script: str, *argv: str) -> tuple[bytes, bytes, int]:
    """C{script} run by sh with C{$0 $@} = C{jw argv}."""
    done = subprocess.run(
        ["sh", "-c", script, JW, *argv], capture_output=True, timeout=60, check=False
    )
    return done.stdout, done.stderr, done.returncode


class HelpWrittenNowhereTests(JWAssertions, SynchronousTestCase):
    """
    C{jw --help > /dev/full} (and C{--version}, C{jw exec --help}) was a
    traceback; so was a help whose reader had gone.
    """

    def test_fullDisk(self) -> None:
        for argv in (("--help",), ("--version",), ("exec", "--help")):
            _out, err, code = run('exec "$0" "$@" > /dev/full', *argv)
            self.assertEqual(code, 1, (argv, err))
            self.assertNotIn(b"Traceback", err)
            self.assertEqual(
                err, b"jw: cannot write to stdout: No space left on device\n", argv
            )

    def test_readerGone(self) -> None:
        """The reader gone before the help: 141, and nothing said."""
        out, err, _code = run(
            'exec 3>&1; { sleep 0.3; "$0" "$@"; echo "$?" >&3; } | true', "--help"
        )
        self.assertEqual(out, b"141\n", err)
        self.assertNotIn(b"Traceback", err)


class Shortening:
    """A stdout that takes at most C{most} bytes a write (as a pipe's
    buffered writer may: it says so by its count), then, once C{gone}, is
    a broken pipe."""

    def __init__(self, most: int, gone: int | None = None) -> None:
        self.most = most
        self.gone = gone
        self.data = b""

    def write(self, data: Any) -> int:
        if self.gone is not None and len(self.data) >= self.gone:
            raise BrokenPipeError(32, "Broken pipe")
        taken = bytes(data[: self.most])
        self.data += taken
        return len(taken)

    def flush(self) -> None:
        pass


class ShortWriteTests(SynchronousTestCase):
    """
    C{jw list --json | head -c 10} exited 0: the first 64 KiB were taken,
    the rest lost with the count that said so.
    """

    def test_everyByteWritten(self) -> None:
        out = Shortening(1000)
        Streams(out=out, inp=None).show("x" * 10_000 + "\n")  # type: ignore[arg-type]
        self.assertEqual(out.data, b"x" * 10_000 + b"\n")

    def test_aReaderGoneAfterPartIsABrokenPipe(self) -> None:
        out = Shortening(65_536, gone=65_536)
        with self.assertRaises(BrokenPipeError):
            Streams(out=out, inp=None).show("y" * 200_000)  # type: ignore[arg-type]


class FailureReasonTests(SynchronousTestCase):
    """
    Why a job failed, where its exit status does not say, in every command
    that waits for its end (jw exec -f said a timeout only when the job was
    killed by the signal; jw wait and jw logs -f never).
    """

    def final(self, **fields: Any) -> dict[str, Any]:
        job = {
            "id": "J",
            "status": "FAILED",
            "exit_code": None,
            "signal": None,
            "error": None,
            "stopped_by": None,
            "started_at": "2026-12-03T00:00:00Z",
        }
        job.update(fields)
        return job

    def test_timedOutJobThatCaughtTheSignal(self) -> None:
        line = endLine(self.final(exit_code=143, error="timed out after 2 seconds"))
        self.assertEqual(line, "jw: job J: timed out after 2 seconds")

    def test_outOfMemory(self) -> None:
        error = "killed (SIGKILL): it reached its memory limit"
        line = endLine(self.final(signal="SIGKILL", error=error))
        self.assertEqual(line, f"jw: job J: {error}")

    def test_anExitCodeSaysItAll(self) -> None:
        self.assertIsNone(endLine(self.final(exit_code=3, error="exited with code 3")))
        self.assertIsNone(endLine(self.final(status="COMPLETED", exit_code=0)))


class CredentialsInTheURLTests(JWAssertions, SynchronousTestCase):
    """
    C{--server https://bob:pass@host} was used as alice (JW_USER) and its
    password said back in every error and by jw config.
    """

    def test_refusedUnquoted(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            resolve({"server": "https://bob:s3cret@127.0.0.1:1"}, {}, "/nonexistent")
        self.assertNotIn("s3cret", str(raised.exception))
        self.assertIn("--server", str(raised.exception))
        for url in (
            "https://bob:s3cret@h:1",
            "http://bob:s3cret@h",
            "https://bob:s3cr#et@h:1",  # (the "@" in the fragment)
            "https://bob:s3cr?et@h:1",
            "https://bob:s3cr/et@h:1",
            "https://bob:1234#et@h",  # (host bob, port 1234, as parsed)
        ):
            with self.assertRaises(ConfigError) as raised:
                checkServer(url)
            self.assertNotIn("et@", str(raised.exception))
            with self.assertRaises(ConfigError) as raised:
                resolve({}, {"JW_SERVER": url}, "/nonexistent")
            self.assertNotIn("et@", str(raised.exception))

    def test_jwSaysOneLine(self) -> None:
        for argv in (("list",), ("config",)):
            result = run(
                'exec "$0" "$@"', "--server", "https://bob:s3cret@127.0.0.1:1", *argv
            )
            line = self.assertOneLineFailure(result, b"must not hold credentials")
            self.assertNotIn(b"s3cret", line)
            self.assertEqual(result[2], 2)


class ListCursorTests(MemoryCLITestCase):
    """C{jw list --json} kept no C{next_cursor}: a page cut short looked whole."""

    def test_cursorGivenAndFollowed(self) -> None:
        ids = []
        for _ in range(3):
            ids.append(self.execId("true"))
            self.reactor.advance(1)
        first = json.loads(
            self.assertSucceeded(self.jw("list", "--json", "--limit", "2"))
        )
        self.assertEqual([j["id"] for j in first["jobs"]], ids[:0:-1])
        self.assertIsNotNone(first["next_cursor"])
        rest = json.loads(
            self.assertSucceeded(
                self.jw("list", "--json", "--cursor", first["next_cursor"])
            )
        )
        self.assertEqual([j["id"] for j in rest["jobs"]], ids[:1])
        self.assertIsNone(rest["next_cursor"])


class SmallSlipsTests(SynchronousTestCase):
    """C{jw --bogus}, and completion of options' values."""

    def test_unknownOptionWithoutACommand(self) -> None:
        out, err, code = run('exec "$0" "$@"', "--bogus")
        self.assertEqual((out, code), (b"", 2))
        self.assertEqual(err, b"jw: unknown option --bogus (see jw --help)\n")

    def complete(self, *words: str) -> list[str]:
        """What bash completion offers after C{jw WORDS...} (ids: A1 B2)."""
        script = (
            COMPLETION["bash"]
            + '\njw() { [ "$1" = _ids ] && echo A1 B2; }\n'
            + f"COMP_WORDS=(jw {' '.join(words)} '')\n"
            + f"COMP_CWORD={len(words) + 1}\n"
            + '_jw; echo "${COMPREPLY[@]}"\n'
        )
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, check=True, timeout=30
        )
        return done.stdout.decode().split()

    def test_valuesOfOptions(self) -> None:
        self.assertEqual(self.complete("stop", "--signal"), list(STOP_SIGNALS))
        self.assertEqual(self.complete("logs", "--tail"), [])
        self.assertEqual(self.complete("exec", "-n"), [])
        self.assertEqual(self.complete("exec", "-e"), [])
        self.assertEqual(self.complete("exec", "--after"), ["A1", "B2"])
        self.assertEqual(self.complete("exec", "--after-ok"), ["A1", "B2"])
        self.assertEqual(self.complete("stop"), ["A1", "B2"])  # (control)

    def test_signalsAsTheServersStop(self) -> None:
        for shell in ("bash", "zsh", "fish"):
            self.assertIn(" ".join(STOP_SIGNALS), COMPLETION[shell], shell)
