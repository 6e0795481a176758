"""
A queued job starts only as a new request of its owner would (attacker
round 9): a user removed from the users file, demoted to Reader, or mapped
to another Unix account since the job was queued does not get it started,
not even after a restart; it ends FAILED, saying why.
"""

from __future__ import annotations

import os
import pwd
from typing import Any

import bcrypt
import treq
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.auth.permissions import Role, User, mayStartQueued
from jobworker.jobs.identity import Identity
from jobworker.server.services import UsersReloadService

from .support import LiveServer


class RuleTests(SynchronousTestCase):
    """L{mayStartQueued}, the rule, alone."""

    def account(self, name: str) -> Identity:
        return Identity(1500, 1500, (), name, "/home/x", "/bin/sh", name)

    def test_stillAllowed(self) -> None:
        """The same user, role and account: it may start."""
        for role in (Role.DEVELOPER, Role.ADMIN):
            self.assertIsNone(mayStartQueued(User("alice", role), "alice", None))
        mapped = User("alice", Role.DEVELOPER, self.account("games"))
        self.assertIsNone(mayStartQueued(mapped, "alice", "games"))

    def test_refused(self) -> None:
        """Removed, a Reader, or another account (or none, or one now): no."""
        developer = User("alice", Role.DEVELOPER)
        for user, queuedAs, why in (
            (None, None, "its owner alice is no longer a user of this server"),
            (
                User("alice", Role.READER),
                None,
                "its owner alice may no longer start jobs (now a Reader)",
            ),
            (
                User("alice", Role.DEVELOPER, self.account("nobody")),
                "games",
                "its owner alice's Unix account changed since it was queued "
                "(games, now nobody)",
            ),
            (developer, "games", "(games, now none)"),
            (
                User("alice", Role.DEVELOPER, self.account("games")),
                None,
                "(none, now games)",
            ),
        ):
            got = mayStartQueued(user, "alice", queuedAs)
            assert got is not None
            self.assertIn(why, got)


def usersLine(name: str, role: str, account: str | None = None) -> str:
    hashed = bcrypt.hashpw(f"{name}-pass".encode(), bcrypt.gensalt(4)).decode()
    return f"{name}:{role}:{hashed}" + (f":{account}" if account else "") + "\n"


class QueuedOwnerTests(TestCase):
    """Through a real server: alice queues a job behind another, then the
    users file changes before its turn."""

    timeout = 60

    def setUp(self) -> None:
        self.users = os.path.abspath(self.mktemp())
        self.admin = usersLine("ada", "Admin")

    def write(self, alice: str) -> None:
        with open(self.users, "w") as f:
            f.write(self.admin + alice)
        os.chmod(self.users, 0o600)

    async def reload(self, server: LiveServer) -> None:
        [service] = [s for s in server.service if isinstance(s, UsersReloadService)]
        await service.reload()

    async def queued(self, server: LiveServer) -> tuple[dict[str, Any], dict[str, Any]]:
        """alice's job X (waits for ever), and Y queued after it."""
        first = await self.create(server, {"command": "sleep", "args": ["300"]})
        second = await self.create(
            server, {"command": "echo", "args": ["ran"], "after": [first["id"]]}
        )
        self.assertEqual(second["status"], "PENDING", second)
        return first, second

    async def create(self, server: LiveServer, body: dict[str, Any]) -> dict[str, Any]:
        code, job = await server.json("POST", "/jobs", "alice", body)
        self.assertEqual(code, 201, job)
        return job  # type: ignore[no-any-return]

    async def endFirst(self, server: LiveServer, first: dict[str, Any]) -> None:
        code, _ = await server.json("POST", f"/jobs/{first['id']}/stop", "ada")
        self.assertEqual(code, 200)
        await server.waitEnded(first["id"])

    async def assertRefused(
        self, server: LiveServer, second: dict[str, Any], why: str
    ) -> None:
        ended = await server.waitEnded(second["id"])
        self.assertEqual(ended["status"], "FAILED", ended)
        self.assertIn(why, ended["error"])
        self.assertIsNone(ended["started_at"])

    async def test_removedUser(self) -> None:
        """alice removed: her queued job never runs."""
        self.write(usersLine("alice", "Developer"))
        server = LiveServer(self, f"--users={self.users}")
        first, second = await self.queued(server)
        self.write("")
        await self.reload(server)
        await self.endFirst(server, first)
        await self.assertRefused(server, second, "no longer a user")

    async def test_demotedUser(self) -> None:
        """alice now a Reader: her queued job never runs."""
        self.write(usersLine("alice", "Developer"))
        server = LiveServer(self, f"--users={self.users}")
        first, second = await self.queued(server)
        self.write(usersLine("alice", "Reader"))
        await self.reload(server)
        await self.endFirst(server, first)
        await self.assertRefused(server, second, "may no longer start jobs")

    async def test_unchangedUserStarts(self) -> None:
        """A reload that leaves alice as she was: her job runs (a control)."""
        self.write(usersLine("alice", "Developer"))
        server = LiveServer(self, f"--users={self.users}")
        first, second = await self.queued(server)
        await self.reload(server)
        await self.endFirst(server, first)
        ended = await server.waitEnded(second["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)

    async def test_remappedAcrossARestart(self) -> None:
        """alice queued as nobody, remapped to daemon while the server was
        down: at the restart her job does not run as nobody (it did)."""
        if os.getuid() != 0:
            raise SkipTest("running jobs as accounts needs root")
        for name in ("nobody", "daemon"):
            pwd.getpwnam(name)
        self.write(usersLine("alice", "Developer", "nobody"))
        state = os.path.abspath(self.mktemp())
        server = LiveServer(self, f"--users={self.users}", stateDir=state)
        _, second = await self.queued(server)
        self.assertEqual(second["run_as"], "nobody")
        await server.stop()
        self.write(usersLine("alice", "Developer", "daemon"))
        again = LiveServer(self, f"--users={self.users}", stateDir=state)
        await self.assertRefused(again, second, "(nobody, now daemon)")

    async def test_sharedAccountQueuedAcrossARestart(self) -> None:
        """alice and bob mapped to one account: alice's job queued before a
        restart starts, after it, in a PID namespace of its own, as every
        job of that account does (the account looked up again by its name
        lost that, and the job could prlimit bob's)."""
        if os.getuid() != 0:
            raise SkipTest("running jobs as accounts needs root")
        pwd.getpwnam("nobody")
        with open(self.users, "w") as f:
            f.write(
                self.admin
                + usersLine("alice", "Developer", "nobody")
                + usersLine("bob", "Developer", "nobody")
            )
        os.chmod(self.users, 0o600)
        state = os.path.abspath(self.mktemp())
        server = LiveServer(self, f"--users={self.users}", stateDir=state)
        first = await self.create(server, {"command": "sleep", "args": ["300"]})
        second = await self.create(
            server,
            {"command": "sh", "args": ["-c", "echo $$"], "after": [first["id"]]},
        )
        await server.stop()
        again = LiveServer(self, f"--users={self.users}", stateDir=state)
        ended = await again.waitEnded(second["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        response = await again.request("GET", f"/jobs/{second['id']}/logs", "ada")
        text = await treq.content(response)
        self.assertEqual(text, b"2\n")
