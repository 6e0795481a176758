"""
A job's stdin fed from the API, when the job never takes it (fault round
6b): a write still waiting for the pipe when the job closed it (it exited)
was answered 200 "written", for bytes the job never got.
"""

from __future__ import annotations

import json

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import TestCase

from .support import LiveServer
from .test_integration import call


class UnreadStdinTests(TestCase):
    timeout = 60

    async def test_writeTheJobNeverTookIsRefused(self) -> None:
        """
        A job that never reads (sleep 1), fed three writes of 60,000 bytes
        at once: more than the pipe and the server's buffer hold, so one
        waits for room, and gets 409 once the job has exited, not 200.
        """
        server = LiveServer(self)
        job = await server.createJob("sleep", "1", stdin=True)

        async def write() -> tuple[int, dict[str, object]]:
            response, body = await call(
                server,
                "POST",
                f"/jobs/{job['id']}/stdin",
                raw=b"x" * 60000,
                contentType=b"application/octet-stream",
            )
            return response.code, json.loads(body)

        answers = await gatherResults([ensureDeferred(write()) for _ in range(3)])
        codes = sorted(code for code, _ in answers)
        self.assertIn(409, codes, answers)
        self.assertEqual(set(codes), {200, 409}, answers)
        refused = [body["error"] for code, body in answers if code == 409]
        self.assertTrue(
            any("before it took" in str(error) for error in refused), answers
        )
