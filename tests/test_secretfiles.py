"""
An operator's round: a users file (password hashes) or a TLS private key
that every user could read, or write, was taken without a word; a token key
of the same mode was refused.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from jobworker.auth.users import DEVELOPMENT_USERS
from jobworker.server.services import UsersReloadService
from jobworker.server.startup import StartupError, secretFile

from .support import CERT, FREE_UIDS, KEY, TWISTD, RecordingAuthenticator


class SecretFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write("secret\n")
        self.said: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.said.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_writableByOthersRefused(self) -> None:
        for mode in (0o666, 0o620, 0o602):
            os.chmod(self.path, mode)
            error = self.assertRaises(StartupError, secretFile, self.path, "the key")
            self.assertIn(
                f"may be written by other users (mode {mode:04o})", str(error)
            )
            self.assertIn(f"chmod go-w {self.path}", str(error))

    def test_ownedByAnotherUserRefused(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("gives the file to another user: needs root (CI is)")
        os.chmod(self.path, 0o600)
        os.chown(self.path, 65534, -1)
        error = self.assertRaises(StartupError, secretFile, self.path, "the key")
        self.assertIn("is owned by uid 65534", str(error))

    def test_inAFolderOthersMayWriteRefused(self) -> None:
        """
        Others may not write the file, but may replace it: its folder is
        theirs to write (without the sticky bit of /tmp).
        """
        os.chmod(self.path, 0o600)
        folder = os.path.dirname(self.path)
        os.chmod(folder, 0o777)  # noqa: S103 (the mistake under test)
        self.addCleanup(os.chmod, folder, 0o755)
        error = self.assertRaises(StartupError, secretFile, self.path, "the key")
        self.assertIn(f"is in {folder}, where other users may", str(error))
        os.chmod(folder, 0o1777)  # noqa: S103 (as /tmp)
        secretFile(self.path, "the key")

    def test_readableByOthersSaid(self) -> None:
        os.chmod(self.path, 0o644)
        secretFile(self.path, "the key")
        self.assertTrue(
            any("is readable by other users (mode 0644)" in line for line in self.said),
            self.said,
        )

    def test_privateSaysNothing(self) -> None:
        os.chmod(self.path, 0o600)
        secretFile(self.path, "the key")
        secretFile(self.path + ".missing", "the key")  # (its reader says why)
        self.assertFalse(any("other users" in line for line in self.said))


class StartupTests(SynchronousTestCase):
    def test_usersFileEveryoneMayWriteRefused(self) -> None:
        """
        A users file every user may write: anyone could add an admin of
        theirs. The server refuses to start, in one line.
        """
        workDir = os.path.abspath(self.mktemp())
        os.makedirs(workDir)
        users = os.path.join(workDir, "users")
        with open(users, "w") as f:
            f.write(DEVELOPMENT_USERS)
        os.chmod(users, 0o666)  # noqa: S103 (the mistake under test)
        result = subprocess.run(
            [
                *(TWISTD, "-n", "--pidfile=", "jobworker", "--tls", "--port=0"),
                *(f"--cert={CERT}", f"--key={KEY}", f"--dynamic-uids={FREE_UIDS}"),
                f"--state-dir={os.path.join(workDir, 'state')}",
                f"--users={users}",
            ],
            capture_output=True,
            timeout=60,
            check=False,
            cwd=workDir,
        )
        stderr = result.stderr.decode("utf-8", "replace")
        self.assertEqual(result.returncode, 1, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, stderr)
        self.assertIn("may be written by other users (mode 0666)", lines[0])


class UsersReloadTests(SynchronousTestCase):
    def test_aReloadChecksAsAStartDoes(self) -> None:
        """
        A users file made writable by others (or given to another user)
        after the start was reloaded on SIGHUP, a line of an Admin of
        someone else's added to it: refused as at a start, the old users
        kept.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(DEVELOPMENT_USERS)
        os.chmod(path, 0o600)
        authenticator = RecordingAuthenticator()
        service = UsersReloadService(path, authenticator, None)  # type: ignore[arg-type]
        said: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            said.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.successResultOf(service.reload())
        self.assertEqual(len(authenticator.replaced), 1)
        os.chmod(path, 0o666)  # noqa: S103 (the mistake under test)
        self.successResultOf(service.reload())
        self.assertEqual(len(authenticator.replaced), 1)
        self.assertTrue(
            any("not reloaded" in line and "may be written" in line for line in said),
            said,
        )
        os.chmod(path, 0o644)
        self.successResultOf(service.reload())
        self.assertEqual(len(authenticator.replaced), 2)
        self.assertTrue(any("is readable by other users" in line for line in said))
