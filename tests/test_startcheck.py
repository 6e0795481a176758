"""
The start check's walk (a review of attacker round 10's fix): it looks a
path up one name at a time as the job's identity, on the server's thread, so
its work must be bounded. A 32 KiB command of C{./} stat'ed the folder once
per C{.}; 40 links of 4,000 characters through a C{PATH} of 64 entries made
one refused C{POST /jobs} take 5 s. A path past C{PATH_MAX} is refused (the
job's C{execve} would be too), a check looks up L{MAX_WALK_STEPS} names at
most (then the job's own C{execvp} decides), and each folder is stat'ed once
a check. Through C{/proc} (the server's links, not the job's) the check does
not say either.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.executors.local import sandbox
from jobworker.executors.local.sandbox import (
    MAX_WALK_STEPS,
    SpawnRefused,
    checkRunnable,
)

from .support import sharedPath


class Other:
    """An identity that is not root and owns nothing here."""

    uid, gid, groups = 54321, 54321, ()

    def mayTraverse(self, st: os.stat_result) -> bool:
        return bool(st.st_mode & 0o001)

    def mayExecute(self, st: os.stat_result) -> bool:
        return bool(st.st_mode & 0o001)


class WalkCostTests(SynchronousTestCase):
    def counted(self) -> list[int]:
        """The stat and lstat calls the check makes, counted."""
        calls = [0]
        realStat, realLstat = os.stat, os.lstat

        def stat(*args: Any, **kwargs: Any) -> os.stat_result:
            calls[0] += 1
            return realStat(*args, **kwargs)

        def lstat(*args: Any, **kwargs: Any) -> os.stat_result:
            calls[0] += 1
            return realLstat(*args, **kwargs)

        self.patch(sandbox.os, "stat", stat)
        self.patch(sandbox.os, "lstat", lstat)
        return calls

    def test_pastPathMaxRefused(self) -> None:
        calls = self.counted()
        with self.assertRaises(SpawnRefused):
            checkRunnable("/" + "./" * 16000 + "bin/true", {}, None, Other(), "/")
        self.assertEqual(calls[0], 0)

    def test_linkChainsBounded(self) -> None:
        folder = sharedPath(self)
        os.makedirs(folder)
        self.addCleanup(shutil.rmtree, folder, True)
        os.chmod(folder, 0o755)  # noqa: S103
        for k in range(40):
            os.symlink("./" * 2000 + (f"L{k + 1}" if k < 39 else "."), f"{folder}/L{k}")
        env = {"PATH": ":".join(f"{folder}/L0" + "/../L0" * j for j in range(64))}
        calls = self.counted()
        started = time.perf_counter()
        checkRunnable("nothing", env, None, Other(), "/")  # (execvp decides)
        self.assertLess(time.perf_counter() - started, 0.5)
        self.assertLess(calls[0], 3 * MAX_WALK_STEPS)

    def test_foldersStatedOnceACheck(self) -> None:
        """A PATH of 64 folders under one long prefix: each folder on the
        way is stat'ed once, not once per entry."""
        calls = self.counted()
        deep = "/usr/share"
        env = {"PATH": ":".join(f"{deep}/nothing{n}" for n in range(64))}
        with self.assertRaises(SpawnRefused):
            checkRunnable("nothing", env, None, Other(), "/")
        self.assertLess(calls[0], 64 + 10)

    def test_longNamesCutInTheRefusal(self) -> None:
        """
        A refusal quotes at most 200 characters of the command (or folder)
        and says how long it was: a 30 KB command was stored twice in the
        record of a job refused for it (as the command, and in its error),
        and such records made every listing page twice as heavy (attacker
        round 12).
        """
        command = "nothing-" + "x" * 30_000
        with self.assertRaises(SpawnRefused) as refused:
            checkRunnable(command, {"PATH": "/usr/bin"}, None, Other(), "/")
        message = str(refused.exception)
        self.assertLess(len(message), 400, message[:500])
        self.assertIn(f"({len(command)} characters)", message)
        self.assertIn("'nothing-xxx", message)
        with self.assertRaises(SpawnRefused) as refused:
            checkRunnable("nothing", {"PATH": "/usr/bin"}, None, Other(), "/")
        self.assertIn("'nothing'", str(refused.exception))  # (short ones whole)

    def test_procUndecided(self) -> None:
        """/proc/self is the server, not the job: the check does not say."""
        checkRunnable("/proc/self/cwd/nothing", {}, None, Other(), "/")
        checkRunnable("nothing", {"PATH": "/proc/1/cwd"}, None, Other(), "/")
