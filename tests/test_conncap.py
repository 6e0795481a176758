"""
C{jw exec -f} against a server at its connection cap (fault round 27):
sixteen C{jw exec -f} from one host filled the 64 connections it allows a
client; the next ones said "TLS handshake failed" (the server had closed
the connection before its handshake, as its log said), and one whose job
was created left it running unfollowed with exit 1 and no word of it.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import TestCase

from .support import JWAssertions, LiveServer, runJW, sleep

#: A job that writes to stdout and stderr, followed for a while.
SPLIT = ("sh", "-c", "echo out; echo err >&2; sleep 2")


class ConnectionCapTests(TestCase, JWAssertions):
    timeout = 120

    async def test_followRefusedAfterTheJobWasCreated(self) -> None:
        """
        One connection allowed, and a follow with stdout and stderr apart
        (a stream each, and the long poll of the job's end): the job is
        created, its follow cannot connect. jw says why (the server closed
        the connection at the handshake: its connection cap, maybe), that
        the job may still be running and how to follow or stop it, and
        exits 125, as for a follow the server keeps refusing.
        """
        server = LiveServer(self, "--max-connections-per-client=1")
        out, err, code = await runJW(server.url, "exec", "-f", "--", *SPLIT)
        self.assertEqual(code, 125, (out, err))
        lines = err.decode().splitlines()
        jobId = lines[0].split()[2]
        self.assertIn(
            "the server closed the connection during the TLS handshake", lines[-1]
        )
        # (Still running, or ended by the time jw asked: either way, how.)
        self.assertIn(f"jw logs -f {jobId}", lines[-1])
        self.assertNotIn("TLS handshake failed", err.decode())

    async def test_createdJobsConnectionNotHeld(self) -> None:
        """
        Three connections allowed: a follow with stdout and stderr apart
        takes them all (two streams and the long poll), and the connection
        the job was created on is not held idle beside them (it failed now
        and then with "TLS handshake failed").
        """
        server = LiveServer(self, "--max-connections-per-client=3")
        out, err, code = await runJW(server.url, "exec", "-f", "--", *SPLIT)
        self.assertEqual((code, out), (0, b"out\n"), err)
        self.assertIn(b"err\n", err)

    async def test_everyCommandSaysSo(self) -> None:
        """
        A server at its cap: every command says the server closed the
        connection at the handshake, the quick client's and Twisted's.
        """
        server = LiveServer(self, "--max-connections-per-client=1")
        job = await server.createJob("sleep", "30")
        held = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(held.close)
        await sleep(0.2)  # (the server has taken it)
        for verb in ("status", "stop", "rm"):
            out, err, code = await runJW(server.url, verb, job["id"])
            self.assertEqual(code, 1, (verb, out, err))
            self.assertIn(
                b"the server closed the connection during the TLS handshake",
                err,
                verb,
            )
