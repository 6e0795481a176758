"""Fixes from review: privilege, malformed input, shared state dirs, pipes, shutdown."""

from __future__ import annotations

import io
import json
import os
import sys

import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from jobworker.server.options import Options
from jobworker.server.tap import makeService

from .support import (
    CERT,
    FREE_UIDS,
    JW,
    KEY,
    LiveServer,
    basic,
    jwEnvironment,
    waitUntil,
)


class HardeningTests(TestCase):
    async def test_runAsRefusesLoaderVariables(self) -> None:
        """With --run-as, LD_PRELOAD and the like are refused (they run as root)."""
        if os.getuid() != 0:
            raise SkipTest("--run-as needs root")
        server = LiveServer(self, "--run-as=nobody")
        for name in (
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "LIBMOUNT_UTAB",
            "LIBMOUNT_FSTAB",
            "BASH_ENV",
            "ENV",
        ):
            code, body = await server.json(
                "POST", "/jobs", body={"command": "true", "env": {name: "/tmp/x"}}
            )
            self.assertEqual(code, 400, name)
            self.assertIn(name, body["error"])
        job = await server.createJob("true", env={"HARMLESS": "1"})
        self.assertEqual(job["status"], "RUNNING")

    async def test_deeplyNestedJSON(self) -> None:
        """JSON nested past the parser's depth is a 400, not a 500."""
        server = LiveServer(self)
        response = await server.request(
            "POST", "/jobs", raw=b"[" * 30000 + b"]" * 30000
        )
        self.assertEqual(response.code, 400)
        self.assertIn(b"nested too deeply", await treq.content(response))

    async def test_formContentTypeIsRefused(self) -> None:
        """
        A JSON body sent as a form is refused (415: no HTML form may change
        anything), and never parsed as query parameters.
        """
        server = LiveServer(self)
        headers = {
            **basic("alice"),
            b"content-type": [b"application/x-www-form-urlencoded"],
        }
        body = json.dumps({"command": "sh", "args": ["-c", "a=1; echo $a"]})
        response = await server.http.request(
            "POST", server.url + "/jobs", data=body.encode(), headers=headers
        )
        self.assertEqual(response.code, 415, await treq.content(response))

    async def test_doubleSlashIs404(self) -> None:
        """A path werkzeug would redirect ("//") is a JSON 404."""
        server = LiveServer(self)
        code, body = await server.json("GET", "/jobs//logs")
        self.assertEqual((code, body), (404, {"error": "no such route"}))

    async def test_secondServerOnSameStateDirRefused(self) -> None:
        """Two servers on one state dir: the second refuses to start, clearly."""
        first = LiveServer(self)
        job = await first.createJob("sleep", "30")
        options = Options()
        options.parseOptions(
            [
                "--tls",
                "--port=0",
                f"--cert={CERT}",
                f"--key={KEY}",
                f"--state-dir={first.stateDir}",
                f"--dynamic-uids={FREE_UIDS}",
            ]
        )
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        self.assertRaises(SystemExit, makeService, options, reactor)
        self.assertIn("another jobworker uses this state dir", errors.getvalue())
        _code, still = await first.json("GET", f"/jobs/{job['id']}")
        self.assertEqual(still["status"], "RUNNING")

    async def test_followersGetTheEndAtShutdown(self) -> None:
        """A follower still connected at shutdown receives the final end event."""
        server = LiveServer(self, grace=1.0)
        job = await server.createJob("sh", "-c", "echo started; exec sleep 300")
        response = await server.request("GET", f"/jobs/{job['id']}/logs?format=sse")
        received = bytearray()
        done = treq.collect(response, received.extend)
        # Mid-stream: the job's first output has reached the follower.
        await waitUntil(lambda: b"started" in received, 10.0, "the job's output")
        await server.stop()
        await done
        text = bytes(received)
        self.assertIn(b"event: end", text)
        self.assertIn(b'"STOPPED"', text)

    async def test_jwBadServerURL(self) -> None:
        """A malformed server URL is one line, exit 2."""
        env = jwEnvironment("https://[::1")
        _out, err, code = await getProcessOutputAndValue(JW, ["list"], env=env)
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertNotIn(b"Traceback", err)

    async def test_jwLogsFollowIntoClosedPipe(self) -> None:
        """jw logs -f | head stops at once (status 141), not when the job ends."""
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "while :; do echo x; sleep 0.02; done")
        script = (
            f'set -o pipefail; "{JW}" logs --follow {job["id"]} | head -c 1 >/dev/null'
        )
        _out, err, code = await getProcessOutputAndValue(
            "/bin/bash", ["-c", script], env=jwEnvironment(server.url)
        )
        self.assertEqual(code, 141, err)
        self.assertNotIn(b"Traceback", err)
        code, still = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual(still["status"], "RUNNING")


class HardeningChainTests(HardeningTests):
    """The same with sandboxed jobs started through the exec chain."""

    serverOptions = ("--launcher=off",)
