"""Unit tests for L{jobworker.jobs.validation}: parsing what clients send."""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.errors import BadRequest, NotFound
from jobworker.jobs.queries import (
    parseBool,
    parseCursor,
    parseLimit,
    parseOffset,
    parseOwner,
    parseStatus,
    parseStream,
    parseWait,
)
from jobworker.jobs.records import JobStatus
from jobworker.jobs.validation import (
    MAX_ARGS,
    MAX_ENV,
    JobRequest,
    parseJobId,
    parseJobRequest,
    parseJSONObject,
)


def body(value: Any) -> bytes:
    """Encode C{value} as a JSON request body."""
    return json.dumps(value).encode("utf-8")


class ParseJobRequestTests(SynchronousTestCase):
    """parseJobRequest accepts good bodies and refuses bad ones with 400."""

    def assertBad(self, raw: bytes, *fragments: str) -> BadRequest:
        """Assert C{raw} is refused with BadRequest mentioning C{fragments}."""
        error = self.assertRaises(BadRequest, parseJobRequest, raw)
        self.assertEqual(error.code, 400)
        for fragment in fragments:
            self.assertIn(fragment, error.message)
        return error

    def test_goodRequest(self) -> None:
        """A full, valid body gives the matching JobRequest."""
        request = parseJobRequest(
            body(
                {
                    "command": "sh",
                    "args": ["-c", "echo hi", ""],
                    "env": {"GREETING": "hello", "EMPTY": ""},
                    "cwd": "/tmp",
                }
            )
        )
        self.assertEqual(
            request,
            JobRequest(
                command="sh",
                args=["-c", "echo hi", ""],
                env={"GREETING": "hello", "EMPTY": ""},
                cwd="/tmp",
            ),
        )

    def test_commandOnly(self) -> None:
        """Only command is required: args, env and cwd default to empty/None."""
        request = parseJobRequest(body({"command": "true"}))
        self.assertEqual(request, JobRequest("true", [], {}, None))

    def test_nullCwd(self) -> None:
        """An explicit null cwd means no cwd."""
        self.assertIsNone(parseJobRequest(body({"command": "x", "cwd": None})).cwd)

    def test_nullMeansAbsent(self) -> None:
        """null for stdin and priority is the default, as the OpenAPI
        document's nullable types say (it was a 400)."""
        request = parseJobRequest(
            body({"command": "x", "stdin": None, "priority": None})
        )
        self.assertEqual((request.stdin, request.priority), (False, 0))

    def test_loneSurrogateInLabel(self) -> None:
        """A label value holding a lone surrogate is refused, escaped or as
        raw bytes: it would make every listing that shows the job invalid
        for a strict JSON parser (and no label filter could find it)."""
        self.assertBad(b'{"command": "x", "labels": {"k": "a\\ud800"}}', "label 'k'")
        # (As raw bytes it is not UTF-8: the body is not JSON, code review 36.)
        self.assertBad(
            b'{"command": "x", "labels": {"k": "a\xed\xa0\x80"}}', "not valid JSON"
        )
        # Characters outside the BMP, as a surrogate pair, are text.
        pair = b'{"command": "x", "labels": {"k": "\\ud83d\\ude00"}}'
        request = parseJobRequest(pair)
        self.assertEqual(request.labels, {"k": "\U0001f600"})

    def test_unicodeKept(self) -> None:
        """Non-ASCII text passes through unchanged."""
        request = parseJobRequest(body({"command": "écho", "args": ["☃"]}))
        self.assertEqual((request.command, request.args), ("écho", ["☃"]))

    def test_malformedJSON(self) -> None:
        """A body that is not JSON is refused."""
        self.assertBad(b'{"command": ', "not valid JSON")

    def test_emptyBody(self) -> None:
        """An empty body is not JSON."""
        self.assertBad(b"", "not valid JSON")

    def test_invalidUTF8(self) -> None:
        """Bytes that are not UTF-8 are refused as BadRequest, not a crash."""
        self.assertBad(b'{"command": "\xff\xfe"}')

    def test_nonObject(self) -> None:
        """JSON that is not an object is refused."""
        for value in ([], ["true"], "true", 1, None, True):
            self.assertBad(body(value), "JSON object")

    def test_unknownFields(self) -> None:
        """Unknown fields are refused and named, sorted."""
        self.assertBad(
            body({"command": "true", "zeta": 1, "alpha": 2}),
            "unknown field(s): alpha, zeta",
        )

    def test_unknownFieldOnly(self) -> None:
        """A single misspelt field is refused even with a valid command."""
        self.assertBad(body({"command": "true", "argv": []}), "argv")

    def test_missingCommand(self) -> None:
        """A body without command is refused."""
        self.assertBad(body({"args": ["x"]}), "command is required")

    def test_emptyCommand(self) -> None:
        """An empty command is refused."""
        self.assertBad(body({"command": ""}), "command", "empty")

    def test_nonStringCommand(self) -> None:
        """A command that is not a string is refused."""
        for value in (None, 1, ["sh"], {"a": "b"}, True):
            self.assertBad(body({"command": value}), "command must be a string")

    def test_nulInCommand(self) -> None:
        """A NUL byte in the command is refused."""
        self.assertBad(body({"command": "tr\x00ue"}), "command", "NUL")

    def test_nulInArgs(self) -> None:
        """A NUL byte in an argument is refused, naming its index."""
        self.assertBad(body({"command": "echo", "args": ["ok", "b\x00d"]}), "args[1]")

    def test_nulInEnvValue(self) -> None:
        """A NUL byte in an env value is refused."""
        self.assertBad(body({"command": "true", "env": {"A": "x\x00y"}}), "NUL")

    def test_nulInEnvName(self) -> None:
        """A NUL byte in an env name is refused."""
        self.assertBad(body({"command": "true", "env": {"A\x00B": "x"}}), "NUL")

    def test_nulInCwd(self) -> None:
        """A NUL byte in the cwd is refused."""
        self.assertBad(body({"command": "true", "cwd": "/tmp\x00"}), "cwd", "NUL")

    def test_argsNotList(self) -> None:
        """args must be a list."""
        for value in ("-c", {"0": "x"}, 1, None):
            self.assertBad(body({"command": "true", "args": value}), "args")

    def test_argsElementNotString(self) -> None:
        """Every argument must be a string."""
        for value in (1, None, ["x"], {"a": 1}):
            self.assertBad(
                body({"command": "true", "args": ["ok", value]}),
                "args[1] must be a string",
            )

    def test_tooManyArgs(self) -> None:
        """More than MAX_ARGS arguments are refused."""
        self.assertBad(
            body({"command": "true", "args": ["x"] * (MAX_ARGS + 1)}), str(MAX_ARGS)
        )

    def test_maxArgsAccepted(self) -> None:
        """Exactly MAX_ARGS arguments are fine."""
        request = parseJobRequest(body({"command": "true", "args": ["x"] * MAX_ARGS}))
        self.assertEqual(len(request.args), MAX_ARGS)

    def test_envNotObject(self) -> None:
        """env must be an object."""
        for value in (["A=b"], "A=b", 1, None):
            self.assertBad(body({"command": "true", "env": value}), "env")

    def test_envValueNotString(self) -> None:
        """Every env value must be a string."""
        for value in (1, None, True, ["x"], {"x": "y"}):
            self.assertBad(
                body({"command": "true", "env": {"A": value}}), "must be a string"
            )

    def test_envNameWithEquals(self) -> None:
        """An env name containing '=' is refused."""
        self.assertBad(body({"command": "true", "env": {"A=B": "c"}}), "'='")

    def test_emptyEnvName(self) -> None:
        """An empty env name is refused."""
        self.assertBad(body({"command": "true", "env": {"": "c"}}), "env name")

    def test_tooManyEnv(self) -> None:
        """More than MAX_ENV variables are refused."""
        env = {f"V{i}": "x" for i in range(MAX_ENV + 1)}
        self.assertBad(body({"command": "true", "env": env}), str(MAX_ENV))

    def test_cwdNotString(self) -> None:
        """cwd must be a string when given."""
        for value in (1, ["/tmp"], {"a": "b"}, False):
            self.assertBad(body({"command": "true", "cwd": value}), "cwd")

    def test_emptyCwd(self) -> None:
        """An empty cwd is refused."""
        self.assertBad(body({"command": "true", "cwd": ""}), "cwd", "empty")

    def test_relativeCwd(self) -> None:
        """
        A relative cwd is refused (it was taken from wherever the set-up
        stood, and the job failed with 127, or 126); jw's user meant a
        folder of their own machine, or of their home on the server.
        """
        for cwd in ("work", "./work", "~/work", "../tmp"):
            self.assertBad(body({"command": "true", "cwd": cwd}), "cwd", "absolute")


class DuplicateKeyTests(SynchronousTestCase):
    """
    A body naming a key twice was taken with the last value: a stop's
    {"signal": "TERM", "signal": "KILL"} was a KILL, read by a proxy or an
    audit tool that keeps the first as a TERM. It is a 400 now, at any depth.
    """

    def test_refused(self) -> None:
        for body in (
            b'{"signal": "TERM", "signal": "KILL"}',
            b'{"command": "true", "env": {"A": "1", "A": "2"}}',
        ):
            error = self.assertRaises(BadRequest, parseJSONObject, body)
            self.assertIn("duplicate key", error.message)

    def test_sameKeyInTwoObjects(self) -> None:
        """The same key in two different objects is no duplicate."""
        body = b'{"labels": {"a": "1"}, "limits": {"a": 2}, "a": 3}'
        self.assertEqual(parseJSONObject(body)["a"], 3)


class ParseJobIdTests(SynchronousTestCase):
    """parseJobId accepts only canonical UUIDs; anything else is not found."""

    def test_canonical(self) -> None:
        """A canonical (lower-case, hyphenated) UUID is returned unchanged."""
        jobId = str(uuid.uuid4())
        self.assertEqual(parseJobId(jobId), jobId)

    def test_notUUID(self) -> None:
        """Text that is not a UUID is NotFound (404), not BadRequest."""
        for text in ("", "abc", "123", "../etc/passwd", "jobs", "\x00"):
            error = self.assertRaises(NotFound, parseJobId, text)
            self.assertEqual(error.code, 404)

    def test_nonCanonical(self) -> None:
        """UUIDs in other spellings are NotFound too."""
        jobId = uuid.UUID("0b5f6c1e-3d0a-4c8e-9a43-1f0e2d3c4b5a")
        for text in (
            str(jobId).upper(),
            jobId.hex,
            "{" + str(jobId) + "}",
            jobId.urn,
            " " + str(jobId),
        ):
            self.assertRaises(NotFound, parseJobId, text)


class ParseOffsetTests(SynchronousTestCase):
    """parseOffset accepts non-negative decimal integers."""

    def test_absent(self) -> None:
        """No offset means 0."""
        self.assertEqual(parseOffset(None), 0)

    def test_valid(self) -> None:
        """Decimal digits give their value."""
        self.assertEqual(parseOffset("0"), 0)
        self.assertEqual(parseOffset("17"), 17)
        self.assertEqual(parseOffset("0042"), 42)
        self.assertEqual(parseOffset(str(2**63 - 1)), 2**63 - 1)
        self.assertRaises(BadRequest, parseOffset, str(2**63))

    def test_invalid(self) -> None:
        """Negative, fractional, signed, spaced, non-ASCII or huge is refused."""
        for text in ("", "-1", "+1", "1.5", "1e3", "abc", " 1", "1 ", "٣", "9" * 20):
            error = self.assertRaises(BadRequest, parseOffset, text)
            self.assertIn("offset", error.message)


class ParseBoolTests(SynchronousTestCase):
    """parseBool accepts true/false and 1/0."""

    def test_absent(self) -> None:
        """Absent gives the default."""
        self.assertIs(parseBool(None, "follow"), False)
        self.assertIs(parseBool(None, "follow", default=True), True)

    def test_true(self) -> None:
        """true (any case) and 1 are True."""
        for text in ("true", "TRUE", "True", "1"):
            self.assertIs(parseBool(text, "follow"), True)

    def test_false(self) -> None:
        """false (any case) and 0 are False."""
        for text in ("false", "FALSE", "False", "0"):
            self.assertIs(parseBool(text, "follow", default=True), False)

    def test_invalid(self) -> None:
        """Anything else is refused, naming the parameter."""
        for text in ("", "yes", "no", "2", "t", " true"):
            error = self.assertRaises(BadRequest, parseBool, text, "follow")
            self.assertIn("follow", error.message)


class ParseStreamTests(SynchronousTestCase):
    """parseStream accepts stdout and stderr."""

    def test_default(self) -> None:
        """Absent means stdout."""
        self.assertEqual(parseStream(None), "stdout")

    def test_valid(self) -> None:
        """stdout and stderr are accepted."""
        self.assertEqual(parseStream("stdout"), "stdout")
        self.assertEqual(parseStream("stderr"), "stderr")

    def test_invalid(self) -> None:
        """Anything else, including other spellings, is refused."""
        for text in ("", "STDOUT", "stdin", "both", "1", "stdout "):
            error = self.assertRaises(BadRequest, parseStream, text)
            self.assertIn("stream", error.message)


class ParseLimitTests(SynchronousTestCase):
    """parseLimit accepts a page size from 1 to the maximum."""

    def test_absent(self) -> None:
        """Absent gives the default."""
        self.assertEqual(parseLimit(None), 100)
        self.assertEqual(parseLimit(None, default=7), 7)

    def test_valid(self) -> None:
        """1 to the maximum are accepted."""
        self.assertEqual(parseLimit("1"), 1)
        self.assertEqual(parseLimit("1000"), 1000)
        self.assertEqual(parseLimit("0050"), 50)
        self.assertEqual(parseLimit("5", maximum=5), 5)

    def test_invalid(self) -> None:
        """Zero, too large, negative, non-digits or empty are refused."""
        for text in ("0", "1001", "-1", "+1", "1.0", "ten", "", " 1", "\u0665"):
            error = self.assertRaises(BadRequest, parseLimit, text)
            self.assertIn("limit", error.message)

    def test_hugeNumberIsBadRequest(self) -> None:
        """A limit with thousands of digits is BadRequest, not a ValueError."""
        error = self.assertRaises(BadRequest, parseLimit, "9" * 5000)
        self.assertIn("limit", error.message)


class ParseCursorTests(SynchronousTestCase):
    """parseCursor accepts the opaque numeric tokens the server issues."""

    def test_absent(self) -> None:
        """Absent means no cursor; empty is refused."""
        self.assertIsNone(parseCursor(None))
        self.assertRaises(BadRequest, parseCursor, "")

    def test_valid(self) -> None:
        """A decimal token is its number."""
        self.assertEqual(parseCursor("42"), 42)
        self.assertEqual(parseCursor(str(2**63 - 1)), 2**63 - 1)
        self.assertRaises(BadRequest, parseCursor, str(2**63))

    def test_invalid(self) -> None:
        """Anything else is refused."""
        for text in ("abc", "-1", "1.5", "9" * 20, "\u0665", " 1"):
            error = self.assertRaises(BadRequest, parseCursor, text)
            self.assertIn("cursor", error.message)


class ParseStatusTests(SynchronousTestCase):
    """parseStatus accepts a job status name, in any case."""

    def test_absent(self) -> None:
        """Absent means no filter; empty is refused."""
        self.assertIsNone(parseStatus(None))
        self.assertRaises(BadRequest, parseStatus, "")

    def test_valid(self) -> None:
        """Every status is accepted, case-insensitively."""
        for status in JobStatus:
            self.assertIs(parseStatus(status.value), status)
            self.assertIs(parseStatus(status.value.lower()), status)

    def test_invalid(self) -> None:
        """Unknown names are refused, listing the valid ones."""
        error = self.assertRaises(BadRequest, parseStatus, "DONE")
        for status in JobStatus:
            self.assertIn(status.value, error.message)


class ParseOwnerTests(SynchronousTestCase):
    """parseOwner accepts a user name."""

    def test_absent(self) -> None:
        """Absent means no filter; empty is refused."""
        self.assertIsNone(parseOwner(None))
        self.assertRaises(BadRequest, parseOwner, "")

    def test_valid(self) -> None:
        """Valid user names are returned."""
        for name in ("alice", "a.b-c_d@example", "A1"):
            self.assertEqual(parseOwner(name), name)

    def test_invalid(self) -> None:
        """Invalid user names are refused."""
        for text in ("al ice", "-alice", "a" * 65, "al:ice", "alice\x00"):
            error = self.assertRaises(BadRequest, parseOwner, text)
            self.assertIn("owner", error.message)

    def test_trailingNewlineRefused(self) -> None:
        """A name followed by a newline is not a valid user name."""
        error = self.assertRaises(BadRequest, parseOwner, "alice\n")
        self.assertIn("owner", error.message)


class ParseWaitTests(SynchronousTestCase):
    """parseWait takes seconds as a JSON number (the OpenAPI type)."""

    def test_valid(self) -> None:
        """Whole and fractional seconds within the bound."""
        self.assertEqual(parseWait(None), 0.0)
        self.assertEqual(parseWait("0"), 0.0)
        self.assertEqual(parseWait("2.5"), 2.5)
        self.assertEqual(parseWait("30"), 30.0)
        self.assertEqual(parseWait("1e1"), 10.0)  # a JSON number, as documented
        self.assertEqual(parseWait("1e-05"), 1e-05)  # how jw's {:g} writes it
        # As Python (and schemathesis) print a float: 17 significant digits.
        self.assertEqual(parseWait("18.288028410254658"), 18.288028410254658)

    def test_invalid(self) -> None:
        """What float() would take but is no JSON number is refused:
        underscores (C{1_0} is ten), spaces, a plus sign, other scripts'
        digits, C{nan}, C{inf}; and numbers out of range."""
        for text in ("1_0", " 1 ", "+1", "\u0661", "nan", "inf", "", ".", "301", "-1"):
            error = self.assertRaises(BadRequest, parseWait, text)
            self.assertIn("wait", error.message)
