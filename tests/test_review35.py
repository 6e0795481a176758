"""
Defects found in the thirty-fifth session's rounds and reviews, each with a
test that failed against the code before its fix.
"""

from __future__ import annotations

import os
import signal
import subprocess

from twisted.trial.unittest import TestCase

from jobworker.executors.local import launcher
from jobworker.executors.local.sandbox import ROOT_ENVIRONMENT, Sandbox, privateFolders

from .test_launcher import compiled, requireRoot, run, testIdentity

#: A shim loaded into the launcher (C{LD_PRELOAD}): the namespace's init
#: (pid 1) sends its process group a SIGTERM right before it forks the
#: command, as a stop that reaches the group at that moment would.
STOP_BEFORE_FORK = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

pid_t fork(void) {
    pid_t (*real)(void) = (pid_t (*)(void))dlsym(RTLD_NEXT, "fork");
    if (getpid() == 1)
        kill(0, SIGTERM);
    return real();
}
"""


class StopRightBeforeTheCommandForkTests(TestCase):
    """
    Session review 34, unverified then: under C{--isolate pid} the
    namespace's init looked at the stops pending on it, then forked the
    command. A stop that reached the group between the two stayed pending
    on the init for good (a fork's child starts with none pending): the
    command never got its TERM and ran its grace out. The init now looks
    after the fork, and the command keeps the stops blocked until it has.
    """

    timeout = 60

    def setUp(self) -> None:
        requireRoot()
        self.launcher = compiled(self)
        compiler = launcher.findCompiler()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        source = os.path.join(folder, "stop.c")
        with open(source, "w") as f:
            f.write(STOP_BEFORE_FORK)
        self.shim = os.path.join(folder, "stop.so")
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-o", self.shim, source, "-ldl"],
            check=True,
            capture_output=True,
        )
        self.sandbox = Sandbox(
            os.path.join(folder, "jobs"),
            1 << 20,
            frozenset({"pid"}),
            privateFolders(),
            launcher=self.launcher,
        )

    def test_stopBeforeTheForkReachesTheCommand(self) -> None:
        env = {"PATH": "/usr/bin:/bin"}
        argv = self.sandbox.argv(testIdentity(), ["echo", "ran"], None, True, env)
        result = run(
            argv,
            self.sandbox.gate(testIdentity(), None, env),
            env={**ROOT_ENVIRONMENT, "LD_PRELOAD": self.shim},
        )
        self.assertEqual(
            (result.returncode, result.stdout), (-signal.SIGTERM, b""), result.stderr
        )
