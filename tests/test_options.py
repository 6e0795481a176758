"""
C{twistd jobworker} options as parsed (no process): durations finite and
bounded, default limits checked like a request's, errors naming the option.
"""

from __future__ import annotations

import io
import json
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from jobworker.errors import BadRequest
from jobworker.executors.local.executor import machineLimits
from jobworker.jobs.validation import MAX_TIMEOUT, parseJobRequest
from jobworker.server.options import Options


def parse(*argv: str) -> Options:
    """The options of C{twistd jobworker --tls *argv}, as a test calls them."""
    options = Options()
    options.parseOptions(["--tls", *argv])
    return options


class OptionsTestCase(SynchronousTestCase):
    def refused(self, *argv: str) -> str:
        """The one-line error of C{argv}, which must be refused."""
        error = self.assertRaises(usage.UsageError, parse, *argv)
        message = str(error)
        self.assertEqual(message.splitlines(), [message])
        return message


class DurationTests(OptionsTestCase):
    """Every duration is finite, positive and at most a request's timeout."""

    DURATIONS = ("default-timeout", "retain", "token-ttl")

    def test_notFinite(self) -> None:
        """inf, 1e400, nan (with or without a unit) are refused, naming the option."""
        for name in self.DURATIONS:
            for bad in ("inf", "1e400", "nan", "-inf", "Infinity", "1e308w", "infd"):
                message = self.refused(f"--{name}={bad}")
                self.assertTrue(message.startswith(f"--{name}: "), message)
                self.assertIn("finite", message)

    def test_atMostARequestsTimeout(self) -> None:
        """The bound is the request's (366 days): at it accepted, past it refused."""
        for name in self.DURATIONS:
            self.assertEqual(parse(f"--{name}={MAX_TIMEOUT}")[name], MAX_TIMEOUT)
            self.assertEqual(parse(f"--{name}=366d")[name], MAX_TIMEOUT)
            for bad in (f"{MAX_TIMEOUT + 1}", "367d", "53w"):
                message = self.refused(f"--{name}={bad}")
                self.assertTrue(message.startswith(f"--{name}"), message)
                self.assertIn(str(MAX_TIMEOUT), message)

    def test_positive(self) -> None:
        """0 and negative durations stay refused."""
        for name in self.DURATIONS:
            for bad in ("0", "0s", "-1h"):
                self.assertIn(f"--{name}", self.refused(f"--{name}={bad}"))

    def test_secondsAtMostARequestsTimeout(self) -> None:
        """Connection timeouts in seconds share the bound."""
        for name in ("idle-timeout", "header-timeout", "body-timeout"):
            self.assertEqual(parse(f"--{name}={MAX_TIMEOUT}")[name], MAX_TIMEOUT)
            message = self.refused(f"--{name}={MAX_TIMEOUT + 1}")
            self.assertTrue(message.startswith(f"--{name} "), message)
            self.assertIn(str(MAX_TIMEOUT), message)

    def test_jobRecordStaysJSON(self) -> None:
        """An accepted --default-timeout is a number strict JSON can carry."""
        timeout = parse("--default-timeout=1h")["default-timeout"]
        self.assertEqual(
            json.dumps({"timeout_seconds": timeout}, allow_nan=False),
            '{"timeout_seconds": 3600.0}',
        )

    def test_secondsFinite(self) -> None:
        """Options in plain seconds refuse inf and nan too, naming the option."""
        for name in (
            "stop-grace",
            "idle-timeout",
            "header-timeout",
            "body-timeout",
            "create-rate",
        ):
            for bad in ("inf", "nan", "1e400"):
                self.assertEqual(
                    self.refused(f"--{name}={bad}"),
                    f"--{name}: not a finite number: {bad!r}",
                )


def requestRefuses(name: str, value: int) -> bool:
    """Whether C{POST /jobs} refuses C{value} as its C{limits.name}."""
    body = {"command": "true", "limits": {name: value}}
    try:
        parseJobRequest(json.dumps(body).encode())
    except BadRequest:
        return True
    return False


class DefaultLimitTests(OptionsTestCase):
    """A --default-X passes what a request's limit passes, and --max-X."""

    LIMITS = {
        "default-memory": "memory_bytes",
        "default-cpu": "cpu_millicores",
        "default-pids": "pids",
    }

    def test_zeroRefused(self) -> None:
        """--default-memory 0 (every job out of memory) is refused, as in a request."""
        self.assertTrue(requestRefuses("memory_bytes", 0))
        self.assertIn("--default-memory", self.refused("--default-memory=0"))

    def test_hugeCpuRefused(self) -> None:
        """--default-cpu 10**20 (no cgroup takes it) is refused, as in a request."""
        self.assertTrue(requestRefuses("cpu_millicores", 10**20))
        message = self.refused("--default-cpu=100000000000000000000")
        self.assertIn("--default-cpu", message)

    def test_sameRuleAsARequest(self) -> None:
        """Each default is refused exactly when a request's value is."""
        for option, field in self.LIMITS.items():
            for value in (0, 1, 1 << 62, (1 << 62) + 1, 10**20):
                argv = [f"--{option}={value}", "--executor=slurm"]
                argv.append(f"--slurm-output-dir={self.mktemp()}")
                try:
                    parse(*argv)
                except usage.UsageError as e:
                    self.assertIn(f"--{option}", str(e))
                    refused = True
                else:
                    refused = False
                self.assertEqual(refused, requestRefuses(field, value), (option, value))

    def test_overMaximumRefused(self) -> None:
        """A default over the matching --max-X is refused, naming both."""
        for argv in (
            ("--default-memory=1G", "--max-memory=1M"),
            ("--default-cpu=200", "--max-cpu=100"),
            ("--default-pids=100", "--max-pids=10"),
        ):
            message = self.refused(*argv)
            for option in argv:
                self.assertIn(option.split("=")[0], message)

    def test_atMaximumAccepted(self) -> None:
        """A default equal to its maximum, or without one, is accepted."""
        options = parse("--default-memory=1M", "--max-memory=1M", "--default-cpu=500")
        self.assertEqual(options["default-memory"], 1 << 20)
        self.assertEqual(options["default-cpu"], 500)

    def test_overTheMachineRefused(self) -> None:
        """
        With the local executor, a default more than this machine has (a
        request asking it is a 400) is refused: --default-cpu 10**12 (every
        job would fail writing its CPU quota).
        """
        machine = machineLimits()
        assert machine.cpu_millicores is not None
        message = self.refused(f"--default-cpu={machine.cpu_millicores + 1}")
        self.assertIn("--default-cpu", message)
        self.assertIn("machine", self.refused("--default-cpu=1000000000000"))
        parse(f"--default-cpu={machine.cpu_millicores}")

    def test_maximaPositive(self) -> None:
        """A maximum of 0 (or too large to mean anything) is refused."""
        for name in ("max-memory", "max-cpu", "max-pids", "max-io-bps"):
            self.assertIn(f"--{name}", self.refused(f"--{name}=0"))
            self.assertIn(f"--{name}", self.refused(f"--{name}={10**20}"))


class OptionErrorTests(OptionsTestCase):
    """Every bad value is one line naming its option."""

    def test_wholeNumbers(self) -> None:
        """--port abc names --port (not 'invalid literal for int()')."""
        self.assertEqual(
            self.refused("--port=abc"), "--port: not a whole number: 'abc'"
        )
        self.assertEqual(self.refused("-p", "1.5"), "--port: not a whole number: '1.5'")
        for name in ("max-running", "keepalive", "default-pids", "slurm-max-nodes"):
            self.assertEqual(
                self.refused(f"--{name}=x"), f"--{name}: not a whole number: 'x'"
            )

    def test_numbers(self) -> None:
        """--stop-grace soon names --stop-grace."""
        self.assertEqual(
            self.refused("--stop-grace=soon"), "--stop-grace: not a number: 'soon'"
        )

    def test_sizesDurationsRanges(self) -> None:
        """The other coercions name their option too."""
        for name, bad in (
            ("max-log-bytes", "lots"),
            ("default-memory", "1.5G"),
            ("retain", "soon"),
            ("dynamic-uids", "many"),
        ):
            message = self.refused(f"--{name}={bad}")
            self.assertTrue(message.startswith(f"--{name}: "), message)
            self.assertIn(repr(bad), message)

    def test_underTwistdOneLineOnStderr(self) -> None:
        """
        As twistd's subcommand (a parent parser that would print its whole
        usage first), a bad value is one line on stderr and exit status 2.
        """
        stderr, stdout = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(sys, "stdout", stdout)
        options = Options()
        options.parent = usage.Options()
        error = self.assertRaises(
            SystemExit, options.parseOptions, ["--tls", "--port=abc"]
        )
        self.assertEqual(error.code, 2)
        self.assertEqual(
            stderr.getvalue(), "jobworker: error: --port: not a whole number: 'abc'\n"
        )
        self.assertEqual(stdout.getvalue(), "")

    def test_bareWord(self) -> None:
        """A word that is no option is named (not "Wrong number of arguments")."""
        self.assertEqual(
            self.refused("--retain", "7d", "soon"),
            "unexpected argument(s): soon (options are --name=value)",
        )

    def test_calledDirectlyStillRaises(self) -> None:
        """Without a parent (code calling it), a UsageError is raised as before."""
        self.assertRaises(usage.UsageError, parse, "--port=70000")


class JobOomScoreTests(OptionsTestCase):
    def test_range(self) -> None:
        self.assertEqual(parse("--job-oom-score-adj=0")["job-oom-score-adj"], 0)
        self.assertEqual(parse("--job-oom-score-adj=1000")["job-oom-score-adj"], 1000)
        self.assertIsNone(parse()["job-oom-score-adj"])
        for bad in ("-1", "1001", "-1000"):
            self.assertIn("from 0 to 1000", self.refused(f"--job-oom-score-adj={bad}"))
