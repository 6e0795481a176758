"""
Defects found by the fortieth session's rounds and the notes of the last
ones, each reproduced here before it was mended.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import bcrypt
import treq
from twisted.trial.unittest import TestCase

from jobworker.server.services import UsersReloadService

from .support import CERT, KEY, LiveServer, basic, sharedPath


def _usersLine(name: str, role: str) -> str:
    hashed = bcrypt.hashpw(f"{name}-pass".encode(), bcrypt.gensalt(4))
    return f"{name}:{role}:{hashed.decode()}\n"


class RefusedReloadSaidTests(TestCase):
    """
    A SIGHUP whose users file or certificate was refused kept the old ones
    in force (a removed user kept access) with C{/healthz} C{ok} and no
    metric changed: the log alone said so (operator round 39). The probe
    says C{degraded} and C{jobworker_reload_failed} is 1 until a reload
    succeeds; the certificate's end is a metric.
    """

    def setUp(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.cert = os.path.join(folder, "server.pem")
        self.key = os.path.join(folder, "server.key")
        shutil.copy(CERT, self.cert)
        shutil.copy(KEY, self.key)
        os.chmod(self.key, 0o600)
        self.users = sharedPath(self)
        with open(self.users, "w") as f:
            f.write(_usersLine("ada", "Admin"))
        self.server = LiveServer(
            self, f"--users={self.users}", f"--cert={self.cert}", f"--key={self.key}"
        )
        self.reload = next(
            s for s in self.server.service if isinstance(s, UsersReloadService)
        )

    async def health(self) -> dict[str, Any]:
        response = await self.server.http.get(self.server.url + "/healthz")
        self.assertEqual(response.code, 200)
        body: dict[str, Any] = json.loads(await treq.content(response))
        return body

    async def metrics(self) -> str:
        response = await self.server.http.get(
            self.server.url + "/metrics", headers=basic("ada", "ada-pass")
        )
        self.assertEqual(response.code, 200)
        return (await treq.content(response)).decode()

    async def test_usersFileRefused(self) -> None:
        self.assertEqual(await self.health(), {"status": "ok"})
        self.assertIn('jobworker_reload_failed{file="users"} 0.0', await self.metrics())
        with open(self.users, "w") as f:
            f.write("carol:NoSuchRole:xx\n")
        await self.reload.hangUp()
        body = await self.health()
        self.assertEqual(body["status"], "degraded")
        self.assertIn("the users file was not reloaded", body["reload"])
        self.assertIn(body["reload"], body["reason"])
        text = await self.metrics()
        self.assertIn('jobworker_reload_failed{file="users"} 1.0', text)
        self.assertIn('jobworker_reloads_total{file="users",result="failed"} 1.0', text)
        # Mended, and reloaded: ok again.
        with open(self.users, "w") as f:
            f.write(_usersLine("ada", "Admin"))
        await self.reload.hangUp()
        self.assertEqual(await self.health(), {"status": "ok"})
        text = await self.metrics()
        self.assertIn('jobworker_reload_failed{file="users"} 0.0', text)
        self.assertIn('jobworker_reloads_total{file="users",result="ok"} 1.0', text)

    async def test_certificateRefused(self) -> None:
        text = await self.metrics()
        self.assertIn("jobworker_certificate_expiry_timestamp_seconds ", text)
        with open(self.cert, "w") as f:
            f.write("not a certificate\n")
        await self.reload.hangUp()
        body = await self.health()
        self.assertEqual(body["status"], "degraded")
        self.assertIn("the TLS certificate was not reloaded", body["reload"])
        self.assertNotIn("users file", body["reload"])
        self.assertIn(
            'jobworker_reload_failed{file="certificate"} 1.0', await self.metrics()
        )
        shutil.copy(CERT, self.cert)
        await self.reload.hangUp()
        self.assertEqual(await self.health(), {"status": "ok"})
