"""A first end-to-end check of the live server helper."""

from twisted.trial.unittest import TestCase

from .support import LiveServer


class SmokeTests(TestCase):
    async def test_createAndComplete(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "echo hi")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED")
        self.assertEqual(ended["stdout_bytes"], 3)
