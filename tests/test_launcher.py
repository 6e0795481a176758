"""
The job launcher (jobworker/data/launcher.c): how it is built and found,
its arguments, and, as root on the real kernel, that a job started through
it gets what the exec chain gives (identity, no capabilities, private
mounts, environment, working directory, exit codes, the gate), side by side
with the chain; and that the server says which it uses and falls back to
the chain when the launcher cannot be built.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.executors.local import launcher
from jobworker.executors.local.sandbox import (
    ROOT_ENVIRONMENT,
    WORKDIR,
    Sandbox,
    SandboxError,
    jobEnvironment,
    logicalFolder,
    privateFolders,
)
from jobworker.jobs.identity import DynamicUids, Identities, Identity
from jobworker.jobs.stopping import STOP_SIGNALS

from .fakes import noLiveUidProcesses
from .support import LiveServer, sharedPath, sleep

#: Ids of the jobs these tests start by hand (outside the servers' range).
UID, GID, GROUPS = 72100, 72101, (72103, 72102)


def compiled(testCase: SynchronousTestCase) -> str:
    """The launcher, built (or found in the cache) as the server would."""
    try:
        compiler = launcher.findCompiler()
        return launcher.build(
            [launcher.CACHE_DIR, os.path.abspath(testCase.mktemp())], compiler
        )
    except launcher.LauncherUnavailable as e:
        raise SkipTest(f"no launcher here: {e}") from None


def requireRoot() -> None:
    if os.getuid() != 0:
        raise SkipTest("the sandbox needs root")
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            raise SkipTest(f"util-linux {tool} is not installed")


def testIdentity(home: str | None = None) -> Identity:
    """The identity of the jobs started by hand: two supplementary groups."""
    return Identity(  # noqa: S604 (a login shell, not a subprocess flag)
        uid=UID,
        gid=GID,
        groups=tuple(sorted(GROUPS)),
        name="jwlaunchtest",
        home=home,
        shell="/bin/sh",
        label="jwlaunchtest",
    )


# -- building ---------------------------------------------------------------


class CompilerCase(SynchronousTestCase):
    """A C compiler (else skipped, saying why) and a cache folder of its own."""

    def setUp(self) -> None:
        try:
            self.compiler = launcher.findCompiler()
        except launcher.LauncherUnavailable as e:
            raise SkipTest(str(e)) from None
        self.cache = os.path.abspath(self.mktemp())


class BuildTests(CompilerCase):
    """Compiled once per source and compiler, atomically, root-only."""

    def test_theStopSignalsAgree(self) -> None:
        """The signals the launcher lets pass to a PID namespace's job are a
        stop's (jobs/stopping.py) but KILL, which none can catch."""
        text = launcher.source().decode()
        line = next(
            each
            for each in text.splitlines()
            if each.startswith("static const int stopSignals")
        )
        names = re.findall(r"SIG([A-Z0-9]+)", line.split("=", 1)[1])
        self.assertEqual(set(names), set(STOP_SIGNALS) - {"KILL"})

    def test_warningFree(self) -> None:
        """The shipped source compiles with -Wall -Wextra -Werror -pedantic,
        and stays small (under 1,300 lines; 260 before the environment moved
        to the gate, 283 before the PID namespace, 370 before the
        spawner, 890 before the keyrings, 971 before Landlock and the pipes,
        997 before the jobs' descriptor limit, 1,016 before the OOM score
        and io_setup, 1,023 before the user namespaces, 1,098 before the
        pidfd filter and the umask, 1,147 before naming a missing #!
        interpreter, 1,151 before reaping the children it did not fork, 1,207
        before passing on a stop that came while a PID namespace was made,
        1,259 before looking for it again after the command's fork)."""
        text = launcher.source()
        self.assertLess(text.count(b"\n"), 1300)
        path = os.path.join(self.mktemp())
        with open(path, "wb") as f:
            f.write(text)
        result = subprocess.run(
            [
                *(self.compiler, "-Wall", "-Wextra", "-Werror", "-pedantic"),
                *("-std=gnu11", "-O2", "-fsyntax-only", "-x", "c", path),
            ],
            capture_output=True,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_compiledOnceThenReused(self) -> None:
        """A second build finds the first one's file (no compiler run); the
        folder and the file are the server's alone."""
        first = launcher.build([self.cache], self.compiler)
        self.assertEqual(os.path.dirname(first), self.cache)
        self.assertEqual(stat.S_IMODE(os.stat(self.cache).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(first).st_mode), 0o700)
        before = os.stat(first).st_mtime_ns
        self.patch(launcher, "_compile", lambda *a: self.fail("compiled again"))
        self.assertEqual(launcher.build([self.cache], self.compiler), first)
        self.assertEqual(os.stat(first).st_mtime_ns, before)
        # No temporary files left beside it.
        self.assertEqual(os.listdir(self.cache), [os.path.basename(first)])

    def test_keyedBySourceAndCompiler(self) -> None:
        """Another source or another compiler is another file."""
        first = launcher.build([self.cache], self.compiler)
        other = launcher.build(
            [self.cache], self.compiler, launcher.source() + b"\n/* v2 */\n"
        )
        self.assertNotEqual(first, other)

    def test_compilerFailureSaysWhy(self) -> None:
        """A failing compiler: LauncherUnavailable naming it, nothing left."""
        false = shutil.which("false") or "/bin/false"
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([self.cache], false)
        self.assertIn(f"{false} failed", str(caught.exception))
        self.assertEqual(os.listdir(self.cache), [])
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([self.cache], self.compiler, b"int main(void) { x }\n")
        self.assertIn("error", str(caught.exception))

    def test_sourceMissing(self) -> None:
        """A package without launcher.c: LauncherUnavailable, not a crash."""

        def missing() -> bytes:
            raise FileNotFoundError(2, "No such file or directory")

        self.patch(launcher, "source", missing)
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([self.cache], self.compiler)
        self.assertIn("no launcher.c", str(caught.exception))

    def test_unsafeFolderOrFileRefused(self) -> None:
        """A cache folder others may write is skipped for the next one; a
        binary others may write is compiled again, never run."""
        os.makedirs(self.cache)
        os.chmod(self.cache, 0o777)  # noqa: S103
        fallback = os.path.abspath(self.mktemp())
        path = launcher.build([self.cache, fallback], self.compiler)
        self.assertEqual(os.path.dirname(path), fallback)
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([self.cache], self.compiler)
        self.assertIn("writable by others", str(caught.exception))
        os.chmod(path, 0o777)  # noqa: S103
        self.assertEqual(launcher.build([fallback], self.compiler), path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)

    def test_unwritableFolderFallsBack(self) -> None:
        """A cache folder that cannot be written (a read-only /var) gives way
        to the next one, as one others may write does."""
        compileForReal = launcher._compile
        first = self.cache

        def readOnlyFirst(compiler: str, code: bytes, folder: str, target: str) -> None:
            if folder == first:
                raise OSError(30, "Read-only file system")
            compileForReal(compiler, code, folder, target)

        self.patch(launcher, "_compile", readOnlyFirst)
        fallback = os.path.abspath(self.mktemp())
        path = launcher.build([first, fallback], self.compiler)
        self.assertEqual(os.path.dirname(path), fallback)
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([first], self.compiler)
        self.assertIn("Read-only file system", str(caught.exception))

    def test_compilerFromEnvironment(self) -> None:
        """$JW_LAUNCHER_CC names the compiler; a missing one is said."""
        false = shutil.which("false") or "/bin/false"
        self.assertEqual(launcher.findCompiler({"JW_LAUNCHER_CC": false}), false)
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.findCompiler({"JW_LAUNCHER_CC": "no-such-cc-jw"})
        self.assertIn("no-such-cc-jw", str(caught.exception))


# -- arguments ----------------------------------------------------------------


class ArgvTests(SynchronousTestCase):
    """What the server hands the launcher."""

    def setUp(self) -> None:
        self.identity = testIdentity()

    def sandbox(self, **kwargs: Any) -> Sandbox:
        return Sandbox(
            self.mktemp(), 1 << 20, folders=["/tmp"], launcher="/L", **kwargs
        )

    def test_layout(self) -> None:
        """Options, start, ids, groups, cwd, counted mounts and environment,
        then the command; the mounts are the fstab's."""
        sandbox = self.sandbox()
        argv = sandbox.argv(self.identity, ["id", "-u"], None, True, {"A": "1"})
        count = len(sandbox.mounts(self.identity))
        self.assertEqual(
            argv[:8],
            ["/L", "ge", WORKDIR, "72100", "72101", "72102,72103", "", str(count)],
        )
        mounts = argv[8 : 8 + 5 * count]
        self.assertEqual(
            mounts[:5], ["jobworker-proc", "/proc", "proc", "sdx", "hidepid=invisible"]
        )
        self.assertEqual(mounts[5:9], ["jobworker-tmp", "/tmp", "tmpfs", "sd"])
        self.assertEqual(mounts[-5:-1], ["jobworker-work", WORKDIR, "tmpfs", "sdm"])
        self.assertIn(f"uid={UID},gid={GID}", mounts[-1])
        # Gated, the environment is not on the command line but on the gate.
        self.assertEqual(argv[8 + 5 * count :], ["0", "id", "-u"])
        block = f"A=1\0PWD={WORKDIR}\0".encode()
        self.assertEqual(
            sandbox.gate(self.identity, None, {"A": "1"}),
            b"go %d\n" % len(block) + block,
        )
        # The chain's fstab holds the same mounts.
        chain = Sandbox(self.mktemp(), 1 << 20, folders=["/tmp"])
        with open(chain.fstab(self.identity)) as f:
            fstab = f.read()
        self.assertIn("jobworker-proc /proc proc nosuid,nodev,noexec,hidepid", fstab)
        self.assertIn(mounts[-1], fstab)

    def test_cwdAndNetwork(self) -> None:
        """A cwd: start at /, the cwd (logical) entered as the job, PWD set
        and OLDPWD gone; --isolate net is option n; no groups is '-'."""
        sandbox = self.sandbox(isolate=frozenset({"net"}))
        identity = Identity.ofDynamicUid(72104)
        env = {"OLDPWD": "/x", "PWD": "/y", "B": "2"}
        argv = sandbox.argv(identity, ["pwd"], "srv//a/../b/", False, env)
        self.assertEqual(argv[1:7], ["nk", "/", "72104", "72104", "-", "/srv/b"])
        self.assertEqual(argv[-4:], ["2", "PWD=/srv/b", "B=2", "pwd"])
        self.assertEqual(
            sandbox.gate(identity, "srv//a/../b/", env), b"go 15\nPWD=/srv/b\0B=2\0"
        )
        # The chain takes the environment as arguments of env -i; its gate
        # is the line alone.
        chain = Sandbox(self.mktemp(), 1 << 20, folders=["/tmp"])
        self.assertEqual(chain.gate(identity, None, env), b"go\n")

    def test_pidNamespaceIsOptionP(self) -> None:
        """--isolate pid goes through the launcher too (option p): the
        environment stays on the gate, never on a command line."""
        sandbox = self.sandbox(isolate=frozenset({"pid", "net"}))
        self.assertTrue(sandbox.usesLauncher)
        argv, gate = sandbox.gatedStart(self.identity, ["id"], None, {"S": "s3"})
        self.assertEqual(argv[:2], ["/L", "genp"])
        self.assertNotIn("--pid", argv)
        self.assertFalse(any("s3" in arg for arg in argv), argv)
        self.assertIn(b"\nS=s3\0", gate)

    def test_environmentRules(self) -> None:
        """PWD: the start folder unless the request set one; with a cwd,
        the logical cwd."""
        self.assertEqual(jobEnvironment({}, None, "/h"), {"PWD": "/h"})
        self.assertEqual(jobEnvironment({"PWD": "/p"}, None, "/h"), {"PWD": "/p"})
        self.assertEqual(
            jobEnvironment({"OLDPWD": "/o", "X": "y"}, "a/b", "/"),
            {"X": "y", "PWD": "/a/b"},
        )
        self.assertEqual(logicalFolder("/a/./b/../c//"), "/a/c")

    def test_rootStagesSeeNoRequestEnvironment(self) -> None:
        """The launcher is spawned with ROOT_ENVIRONMENT; the request's
        variables are only arguments, for the command."""
        from .fakes import spawnHostileJob

        spawned = spawnHostileJob(self, 72110, launcher="/L")
        self.assertEqual(spawned.env, ROOT_ENVIRONMENT)
        self.assertEqual(spawned.args[:2], ["/L", "gek"])
        self.assertEqual(spawned.args[-1], "true")
        # Not on the command line (any local user reads /proc/<pid>/cmdline
        # until the exec): on the gate, once the record is stored.
        self.assertFalse(any("s3" in arg for arg in spawned.args), spawned.args)
        [gate] = spawned.transport.gate
        self.assertIn(b"\0SECRET=s3\0", gate)
        line, block = gate.split(b"\n", 1)
        self.assertEqual(line, b"go %d" % len(block))


# -- the real kernel: the launcher beside the chain ---------------------------


def run(
    argv: list[str],
    gate: bytes | None = None,
    wait: float = 0.0,
    beforeGate: Callable[[int], object] | None = None,
    pieces: list[bytes] | None = None,
    env: dict[str, str] = ROOT_ENVIRONMENT,
) -> subprocess.CompletedProcess[bytes]:
    """
    Run C{argv} as the server would (C{env}: ROOT_ENVIRONMENT, no other
    descriptor than 0-2, and fd 3 a pipe when C{gate} is given: C{wait}
    seconds later, and after C{beforeGate(pid)}, it gets C{gate}, or
    C{pieces} one after the other, and is closed).
    """
    if gate is None:
        return subprocess.run(
            argv, capture_output=True, env=env, timeout=60, check=False
        )
    # Every descriptor Python opens is close-on-exec: only the dup2'd ones
    # reach the child.
    reader, writer = os.pipe()
    outRead, outWrite = os.pipe()
    errRead, errWrite = os.pipe()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, outWrite, 1),
        (os.POSIX_SPAWN_DUP2, errWrite, 2),
        (os.POSIX_SPAWN_DUP2, reader, 3),
    ]
    # Every signal this process ignores back to its default, as the server's
    # spawnProcess does: a test run started with SIGINT ignored (a CI job
    # in a shell's background) would otherwise pass that on to the chain's
    # job, which the server never does.
    ignored = [
        signum
        for signum in range(1, signal.NSIG)
        if signal.getsignal(signum) == signal.SIG_IGN
    ]
    try:
        pid = os.posix_spawn(
            argv[0], argv, env, file_actions=actions, setsigdef=ignored
        )
    finally:
        for fd in (reader, outWrite, errWrite):
            os.close(fd)
    time.sleep(wait)
    if beforeGate is not None:
        try:
            beforeGate(pid)
        except BaseException:
            os.close(writer)  # the closed gate: the launcher exits 125
            os.waitpid(pid, 0)
            raise
    try:
        with os.fdopen(writer, "wb", buffering=0) as pipe:
            for piece in pieces or [gate]:
                pipe.write(piece)
                time.sleep(0.05 if pieces else 0)
    except BrokenPipeError:  # the launcher refused what it read, and left
        pass
    with os.fdopen(outRead, "rb") as out, os.fdopen(errRead, "rb") as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(
        argv, os.waitstatus_to_exitcode(status), stdout, stderr
    )


def gateFor(
    sandbox: Sandbox,
    identity: Identity,
    cwd: str | None,
    env: dict[str, str],
    gate: bytes | None,
) -> bytes | None:
    """What the server writes on the gate when the test says C{b"go\\n"}
    (a gate that closes without its line: C{gate} itself)."""
    if gate is None or b"\n" not in gate:
        return gate
    return sandbox.gate(identity, cwd, env)


#: What a job reports of itself: who, capabilities, mounts, folders, env.
REPORT = r"""
id -u; id -g; id -G
grep -E '^(CapPrm|CapEff|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
awk '$0 ~ / jobworker-/ { n = split($0, f, " - "); split(f[1], a, " ");
  print a[5], a[6], f[2] }' /proc/self/mountinfo | sort
awk '$7 ~ /shared:/ { n++ } END { print n + 0, "shared mounts" }' /proc/self/mountinfo
stat -c '%n %a %u %g' /tmp /tmp/job
pwd; echo "PWD=$PWD"
test -e /proc/$$/fd/3 && echo fd3-open || echo fd3-closed
ps -o pid=,pgid=,sid= -p $$ | awk '{ print ($1 == $2 && $2 == $3) ? "own" : "shared" }'
env | sort
"""


class SideBySideTests(TestCase):
    """
    The same job through the launcher and through the chain, on the real
    kernel: everything the job can observe of its set-up must be equal.
    """

    timeout = 120

    def setUp(self) -> None:
        requireRoot()
        self.launcher = compiled(self)
        self.folders = privateFolders()

    def sandboxes(self) -> tuple[Sandbox, Sandbox]:
        folder = os.path.abspath(self.mktemp())
        return (
            Sandbox(folder, 1 << 20, folders=self.folders, launcher=self.launcher),
            Sandbox(folder, 1 << 20, folders=self.folders),
        )

    def both(
        self,
        command: list[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        identity: Identity | None = None,
        gate: bytes | None = b"go\n",
    ) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
        identity = identity or testIdentity()
        env = (
            {"PATH": "/usr/bin:/bin", "HOME": "/h", "K": "v w"} if env is None else env
        )
        viaLauncher, viaChain = self.sandboxes()
        gated = gate is not None
        one = run(
            viaLauncher.argv(identity, command, cwd, gated, env),
            gateFor(viaLauncher, identity, cwd, env, gate),
        )
        self.assertEqual(
            viaLauncher.argv(identity, command, cwd, gated, env)[0], self.launcher
        )
        two = run(
            viaChain.argv(identity, command, cwd, gated, env),
            gateFor(viaChain, identity, cwd, env, gate),
        )
        return one, two

    def test_whatTheJobSees(self) -> None:
        """Identity, no capabilities, private mounts as the fstab has them,
        the work folder's owner and mode, PWD, fd 3 closed, own session,
        exactly the job's environment: equal, and as expected."""
        one, two = self.both(["sh", "-c", REPORT])
        self.assertEqual((one.returncode, one.stderr), (0, b""))
        self.assertEqual(one.stdout, two.stdout)
        seen = one.stdout.decode()
        lines = seen.splitlines()
        self.assertEqual(lines[:3], [str(UID), str(GID), f"{GID} 72102 72103"])
        for field in ("CapPrm", "CapEff", "CapAmb"):
            self.assertIn(f"{field}:\t0000000000000000", seen)
        self.assertIn("NoNewPrivs:\t0", seen)
        self.assertRegex(
            seen,
            r"/proc \S*nosuid,nodev,noexec\S* proc jobworker-proc "
            r"\S*hidepid=invisible",
        )
        self.assertIn("\n0 shared mounts\n", seen)
        self.assertIn(f"{WORKDIR} 700 {UID} {GID}", seen)
        self.assertIn("/tmp 1777 0 0", seen)
        self.assertIn(f"{WORKDIR}\nPWD={WORKDIR}\n", seen)
        self.assertIn("fd3-closed", seen)
        self.assertIn("fd3-closed\nown\n", seen)
        environment = seen.split("fd3-closed\nown\n", 1)[1].splitlines()
        self.assertEqual(
            environment,
            ["HOME=/h", "K=v w", "PATH=/usr/bin:/bin", f"PWD={WORKDIR}"],
        )

    def test_namespaces(self) -> None:
        """New mount and IPC namespaces; a network one only under --isolate
        net (option n), as unshare --net."""
        kinds = ("mnt", "ipc", "net")
        host = [os.readlink(f"/proc/self/ns/{kind}") for kind in kinds]
        report = [
            "sh",
            "-c",
            "readlink /proc/self/ns/mnt /proc/self/ns/ipc /proc/self/ns/net",
        ]
        one, _ = self.both(report)
        seen = one.stdout.decode().split()
        self.assertNotEqual(seen[0], host[0])
        self.assertNotEqual(seen[1], host[1])
        self.assertEqual(seen[2], host[2])
        folder = os.path.abspath(self.mktemp())
        net = frozenset({"net"})
        for sandbox in (
            Sandbox(folder, 1 << 20, net, self.folders, launcher=self.launcher),
            Sandbox(folder, 1 << 20, net, self.folders),
        ):
            argv = sandbox.argv(testIdentity(), report, None, False, {})
            result = run(argv)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertNotEqual(result.stdout.decode().split()[2], host[2])

    def test_privateTmp(self) -> None:
        """What the job writes in /tmp stays in its own tmpfs."""
        name = f"jw-launch-{os.getpid()}"
        one, _ = self.both(["sh", "-c", f"echo x > /tmp/{name} && ls /tmp"])
        self.assertEqual(one.stdout.split(), [b"job", name.encode()])
        self.assertFalse(os.path.exists(f"/tmp/{name}"))

    def test_cwdEnteredAsTheJob(self) -> None:
        """A cwd only the job's uid may enter is entered; one only root may
        enter fails with 126, as the chain's; the logical path is PWD."""
        base = sharedPath(self)
        mine = os.path.join(base, "mine")
        os.makedirs(os.path.join(mine, "sub"))
        os.chmod(base, 0o755)  # noqa: S103
        os.chown(mine, UID, GID)
        os.chmod(mine, 0o700)
        one, two = self.both(["sh", "-c", 'pwd; echo "$PWD"'], cwd=mine + "/sub/..")
        self.assertEqual(
            (one.returncode, one.stdout), (0, f"{mine}\n{mine}\n".encode())
        )
        self.assertEqual(one.stdout, two.stdout)
        os.chown(mine, 0, 0)
        one, two = self.both(["pwd"], cwd=mine)
        self.assertEqual((one.returncode, two.returncode), (126, 126))
        self.assertEqual(
            one.stderr,
            f"jobworker-launch: cannot enter the working directory '{mine}': "
            "Permission denied\n".encode(),
        )
        self.assertIn(b"can't cd to", two.stderr)
        self.assertEqual(one.stdout, b"")

    def test_startFolderEnteredAsRoot(self) -> None:
        """Without a cwd the job starts in its home, entered before the
        identity change (as the chain's root shell does)."""
        home = sharedPath(self)
        os.makedirs(home, mode=0o700)
        one, two = self.both(["pwd"], identity=testIdentity(home))
        self.assertEqual((one.returncode, one.stdout), (0, f"{home}\n".encode()))
        self.assertEqual(one.stdout, two.stdout)

    def test_exitCodes(self) -> None:
        """127 command not found (PATH searched), 126 not runnable: as env's,
        with a message naming the command; a file that is there but whose
        #! interpreter (or ELF loader) is not is said to be so."""
        script = sharedPath(self)
        with open(script, "w") as f:
            f.write("#!/no/such/interpreter\n")
        os.chmod(script, 0o755)  # noqa: S103
        missing = b"its #! interpreter or loader is missing: "
        for command, code, why, said in (
            ("no-such-command-jw", 127, b"No such file or directory", b""),
            (script, 127, b"No such file or directory", missing),
            (script + "-not-there", 127, b"No such file or directory", b""),
            ("/etc/passwd", 126, b"Permission denied", b""),
            ("/", 126, b"Permission denied", b""),
        ):
            one, two = self.both([command])
            self.assertEqual((one.returncode, two.returncode), (code, code), command)
            self.assertEqual(
                one.stderr,
                b"jobworker-launch: "
                + said
                + b"cannot run '"
                + command.encode()
                + b"': "
                + why
                + b"\n",
            )
            self.assertIn(command.encode(), two.stderr)
        one, _ = self.both(["id", "-u"], env={"PATH": "/nowhere:/usr/bin"})
        self.assertEqual(one.stdout, f"{UID}\n".encode())
        # The job's PATH is searched, not the launcher's own: a command only
        # in a folder the job names is found; without /usr/bin, id is not.
        folder = os.path.dirname(sharedPath(self))
        with open(os.path.join(folder, "jw-only-here"), "w") as f:
            f.write("#!/bin/sh\necho found here\n")
        os.chmod(os.path.join(folder, "jw-only-here"), 0o755)  # noqa: S103
        one, two = self.both(["jw-only-here"], env={"PATH": folder})
        self.assertEqual((one.stdout, two.stdout), (b"found here\n",) * 2, one)
        one, two = self.both(["id"], env={"PATH": folder})
        self.assertEqual((one.returncode, two.returncode), (127, 127), one)

    def test_gateHolds(self) -> None:
        """Nothing of the job runs before the line on fd 3; EOF instead:
        exit 125 and nothing ran, through the launcher as through the chain."""
        marker = sharedPath(self)
        os.chmod(os.path.dirname(marker), 0o1777)  # noqa: S103
        command = ["sh", "-c", f"date +%s.%N > {marker}"]
        one, two = self.both(command, gate=b"")
        self.assertEqual((one.returncode, two.returncode), (125, 125))
        self.assertEqual(one.stderr, b"")
        self.assertFalse(os.path.exists(marker))
        viaLauncher, _ = self.sandboxes()
        argv = viaLauncher.argv(testIdentity(), command, None, True, {})
        released = time.time() + 0.5
        result = run(argv, viaLauncher.gate(testIdentity(), None, {}), wait=0.5)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(marker) as f:
            self.assertGreaterEqual(float(f.read()), released - 0.05)
        # A gate line in pieces is still one line.
        self.assertEqual(run(argv, b"g", wait=0.1).returncode, 125)

    def test_environmentOnlyOnTheGate(self) -> None:
        """While a gated job waits, its command line holds no variable of
        the request (other users may read it); after the gate the job has
        exactly its environment, values with newlines and '=' included."""
        viaLauncher, _ = self.sandboxes()
        identity = testIdentity()
        env = {"PATH": "/usr/bin:/bin", "SECRET": "s3cr3t\nline=2"}
        argv = viaLauncher.argv(identity, ["env"], None, True, env)

        def commandLineHoldsNoSecret(pid: int) -> None:
            # Until the gate opens the launcher waits with this command line.
            deadline = time.monotonic() + 10
            while True:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                if cmdline.startswith(self.launcher.encode()):
                    break
                self.assertLess(time.monotonic(), deadline, cmdline)
                time.sleep(0.01)
            self.assertNotIn(b"s3cr3t", cmdline)

        result = run(
            argv,
            viaLauncher.gate(identity, None, env),
            beforeGate=commandLineHoldsNoSecret,
        )
        self.assertEqual(result.returncode, 0, result)
        seen = result.stdout
        self.assertEqual(
            sorted(seen.decode().split("\n")),
            sorted(
                ["", "PATH=/usr/bin:/bin", f"PWD={WORKDIR}", "SECRET=s3cr3t", "line=2"]
            ),
        )

    def test_badGateEnvironmentRefused(self) -> None:
        """Option e without the gate, variables on the command line as well,
        an environment not ended by NUL, an entry without '=' or one too
        large: 125 and nothing ran."""
        viaLauncher, _ = self.sandboxes()
        identity = testIdentity()
        argv = viaLauncher.argv(identity, ["true"], None, True, {})
        self.assertEqual(argv[1], "ge")
        self.assertEqual(run(argv, b"go 4\nA=1\0").returncode, 0)
        # In pieces, the line cut too: the launcher reads until it has all.
        split = [b"go", b" 8\nA=1", b"\0B=", b"2\0"]
        self.assertEqual(run(argv, b"", pieces=split).returncode, 0)
        self.assertEqual(run(argv, b"go 0\n").returncode, 0)
        for gate in (
            b"go\nA=1\0",  # no LENGTH
            b"go x\nA=1\0",
            b"go 3\nA=1",  # not ended by NUL
            b"go 9\nNOEQUALS\0",
            b"go 3\n=x\0",
            b"go 2\nA=1\0",  # more than announced
            b"go 300000\n",  # over the launcher's cap
            b"go 4\n" + b"A=" + b"x" * (256 * 1024) + b"\0",
        ):
            result = run(argv, gate)
            self.assertEqual(result.returncode, 125, (gate[:20], result))
            self.assertTrue(result.stderr.startswith(b"jobworker-launch: "), result)
        # Cut short (the server died while writing): a closed gate, silently.
        self.assertEqual(run(argv, b"go 10\nA=1\0").returncode, 125)
        environment = 8 + 5 * int(argv[7])
        self.assertEqual(argv[environment], "0")
        for bad in (
            [argv[0], "e", *argv[2:]],
            [*argv[:environment], "1", "A=1", *argv[environment + 1 :]],
        ):
            result = run(bad, b"go\n")
            self.assertEqual(result.returncode, 125, (bad[:2], result))

    def test_badArgumentsRefused(self) -> None:
        """Anything but the exact layout: 125 before any change; never uid 0."""
        good = Sandbox(
            os.path.abspath(self.mktemp()), 1 << 20, folders=[], launcher=self.launcher
        ).argv(testIdentity(), ["true"], None, False, {})
        self.assertEqual(run(good).returncode, 0, run(good).stderr)
        for index, value in (
            (1, "x"),
            (2, "relative"),
            (3, "0"),
            (4, "0"),
            (3, "-1"),
            (3, "4294967295"),
            (5, "1,,2"),
            (5, "0"),
            (5, "27,0"),
            (7, "99"),
            (11, "q"),
        ):
            bad = list(good)
            bad[index] = value
            result = run(bad)
            self.assertEqual(result.returncode, 125, (index, value, result))
            self.assertTrue(result.stderr.startswith(b"jobworker-launch: "))
        self.assertEqual(run(good[:-1]).returncode, 125)
        environment = 8 + 5 * int(good[7])
        self.assertEqual(good[environment:], ["1", "PWD=/tmp/job", "true"])
        for tail in (["1", "NOEQUALS", "true"], ["1", "=x", "true"], ["2", "A=1"]):
            result = run([*good[:environment], *tail])
            self.assertEqual(result.returncode, 125, (tail, result))


# -- the server ----------------------------------------------------------------


class ServerLogs:
    """Collect the server's log lines while it starts."""

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event))

    def which(self) -> list[str]:
        return [line for line in self.lines if "sandboxed jobs start" in line]


#: A job reporting what it was given; the first line: its cgroups.
JOB_REPORT = "cat /proc/self/cgroup; id -u; id -G; pwd; env | sort"


#: What a job in a PID namespace reports: its pid, the pids it sees, its
#: namespaces' identity (mnt, ipc, pid), and its environment.
PID_REPORT = r"""
echo "pid $$"
ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\n' ' '; echo
id -u
env | sort
"""


class PidNamespaceTests(TestCase):
    """
    --isolate pid through the launcher (option p) beside the chain
    (unshare --pid --fork --kill-child --mount-proc): the job is PID 1 of
    a namespace of its own and sees only its own processes; the launcher
    exits as the job did; SIGTERM is for the job; if the launcher dies,
    the job dies with it.
    """

    timeout = 120

    def setUp(self) -> None:
        requireRoot()
        self.launcher = compiled(self)
        self.folders = privateFolders()
        folder = os.path.abspath(self.mktemp())
        pid = frozenset({"pid"})
        self.viaLauncher = Sandbox(
            folder, 1 << 20, pid, self.folders, launcher=self.launcher
        )
        self.viaChain = Sandbox(folder, 1 << 20, pid, self.folders)

    def both(
        self, command: list[str]
    ) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
        env = {"PATH": "/usr/bin:/bin", "K": "v"}
        results = []
        for sandbox in (self.viaLauncher, self.viaChain):
            argv = sandbox.argv(testIdentity(), command, None, True, env)
            results.append(run(argv, sandbox.gate(testIdentity(), None, env)))
        self.assertEqual(
            self.viaLauncher.argv(testIdentity(), command, None, True, env)[:2],
            [self.launcher, "gep"],
        )
        return results[0], results[1]

    def test_whatTheJobSees(self) -> None:
        """PID 1, its own processes only, its identity and environment:
        the same through both."""
        one, two = self.both(["sh", "-c", PID_REPORT])
        self.assertEqual((one.returncode, one.stderr), (0, b""))
        self.assertEqual(two.returncode, 0, two.stderr)
        lines = one.stdout.decode().splitlines()
        # The launcher's init is PID 1, the job 2; through the chain the
        # job is PID 1 itself.
        self.assertEqual(lines[0], "pid 2")
        # The init (1), sh (2), ls and grep: nothing of the host.
        self.assertTrue(all(int(p) < 10 for p in lines[1].split()), lines[1])
        self.assertEqual(lines[2], str(UID))
        self.assertEqual(lines[3:], ["K=v", "PATH=/usr/bin:/bin", f"PWD={WORKDIR}"])
        # The chain's PID 1 forks mount(8) first: its pids start further on.
        other = two.stdout.decode().splitlines()
        self.assertEqual(other[0], "pid 1")
        self.assertEqual(other[2:], lines[2:])
        self.assertTrue(all(int(p) < 10 for p in other[1].split()), other[1])
        host = os.readlink("/proc/self/ns/pid")
        seen, _ = self.both(["readlink", "/proc/self/ns/pid"])
        self.assertNotEqual(seen.stdout.decode().strip(), host)

    def test_jobKeepsDefaultSignals(self) -> None:
        """The launcher blocks SIGTERM and SIGINT from its start (a stop
        is for the job, passed on to it); the job does not inherit that:
        neither is in its ignored nor its blocked set, as with the chain."""
        one, two = self.both(["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"])
        for result in (one, two):
            self.assertEqual(result.returncode, 0, result.stderr)
            for line in result.stdout.splitlines():
                masked = int(line.split()[1], 16)
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self.assertFalse(masked & (1 << (signum - 1)), result.stdout)

    def test_aStopDuringTheSetUpIsForTheJob(self) -> None:
        """A SIGTERM that reaches the launcher before it has made the
        namespace (here: at the gate) does not end the launcher: it is the
        job's, passed on to the command once it is forked, which ends by it
        (it was ignored and lost: the command ran its grace out, code
        review 34)."""
        env = {"PATH": "/usr/bin:/bin"}
        argv = self.viaLauncher.argv(testIdentity(), ["echo", "ran"], None, True, env)
        result = run(
            argv,
            self.viaLauncher.gate(testIdentity(), None, env),
            wait=0.2,
            beforeGate=lambda pid: os.kill(pid, signal.SIGTERM),
        )
        self.assertEqual((result.returncode, result.stdout), (-signal.SIGTERM, b""))

    def test_exitStatus(self) -> None:
        """The launcher exits with the job's status; set-up and exec
        failures keep their codes."""
        for command, code in (
            (["sh", "-c", "exit 3"], 3),
            (["true"], 0),
            (["no-such-command-jw"], 127),
            (["/etc/passwd"], 126),
        ):
            one, two = self.both(command)
            self.assertEqual((one.returncode, two.returncode), (code, code), command)

    def test_orphansReaped(self) -> None:
        """
        The namespace's PID 1 is the launcher's init, which reaps what is
        left to it: a grandchild orphaned in the namespace does not stay a
        zombie while the job runs (the job, a program that never waits for
        children it did not start, was PID 1 before and kept it).
        """
        script = (
            "import os, subprocess, time\n"
            "subprocess.run(['sh', '-c', 'sleep 0.1 &'])\n"
            "time.sleep(1.5)\n"
            "states = []\n"
            "for p in os.listdir('/proc'):\n"
            "    try:\n"
            "        with open(f'/proc/{p}/stat') as f:\n"
            "            states.append(f.read().rsplit(')', 1)[1].split()[0])\n"
            "    except (OSError, IndexError):\n"
            "        pass\n"
            "print(os.getpid(), states.count('Z'))\n"
        )
        env = {"PATH": "/usr/bin:/bin"}
        argv = self.viaLauncher.argv(
            testIdentity(), ["python3", "-c", script], None, True, env
        )
        result = run(argv, self.viaLauncher.gate(testIdentity(), None, env))
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        pid, zombies = result.stdout.split()
        self.assertEqual((pid, zombies), (b"2", b"0"))

    def start(self, command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
        """The launcher running C{command} (ungated); the job's host pid."""
        argv = self.viaLauncher.argv(testIdentity(), command, None, False, {})
        proc = subprocess.Popen(
            argv,
            env=ROOT_ENVIRONMENT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # The launcher's child is the namespace's init; the job its child.
            for init in childrenOf(proc.pid):
                for job in childrenOf(init):
                    if readComm(job) == "sleep":
                        self.addCleanup(killQuietly, job)
                        return proc, job
            time.sleep(0.01)
        self.fail("the job did not start")

    def test_signalsReachTheJob(self) -> None:
        """
        The launcher and the namespace's init ignore SIGTERM (a stop's
        signal is for the job); the job, PID 2, dies of a default-action
        SIGTERM (as PID 1 it ignored one it did not handle), and the
        launcher then dies of the same signal; so for SIGKILL.
        """
        for signum in (signal.SIGTERM, signal.SIGKILL):
            proc, job = self.start(["sleep", "30"])
            os.kill(proc.pid, signal.SIGTERM)
            for init in childrenOf(proc.pid):
                os.kill(init, signal.SIGTERM)
            time.sleep(0.2)
            self.assertIsNone(proc.poll())
            os.kill(job, signum)
            self.assertEqual(proc.wait(10), -signum)

    def test_theJobDiesWithTheLauncher(self) -> None:
        """SIGKILL of the launcher alone kills the job (no orphan)."""
        proc, job = self.start(["sleep", "30"])
        os.kill(proc.pid, 9)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{job}") and readState(job) != "Z":
            self.assertLess(time.monotonic(), deadline, "the job outlived it")
            time.sleep(0.01)


def childrenOf(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def readComm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def readState(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def killQuietly(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except OSError:
        pass


class ServerLauncherTests(TestCase):
    """The default root server uses the launcher; jobs see what they must."""

    timeout = 60
    serverOptions: tuple[str, ...] = ()
    expected = "the launcher"

    def setUp(self) -> None:
        requireRoot()
        compiled(self)

    async def test_jobThroughTheServer(self) -> None:
        """The log says which start path; the job runs in its cgroup from its
        first instruction, as its dynamic uid with no groups, in its private
        work folder, with exactly its environment."""
        logs = ServerLogs(self)
        server = LiveServer(self)
        [which] = logs.which()
        self.assertIn(self.expected, which)
        sandbox = server.manager._executor.sandbox  # type: ignore[attr-defined]
        self.assertEqual(sandbox.usesLauncher, self.expected == "the launcher")
        job = await server.createJob("sh", "-c", JOB_REPORT, env={"A": "b c"})
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        response = await server.request("GET", f"/jobs/{job['id']}/logs", "ada")
        text = (await treq.content(response)).decode()
        uid = job["run_as"].split(":")[1]
        if server.manager._executor._cgroups is not None:  # type: ignore[attr-defined]
            cgroups = text.split(f"\n{uid}\n")[0]
            self.assertIn(job["id"], cgroups)
        after = text.split(f"\n{uid}\n", 1)[1].splitlines()
        self.assertEqual(after[:2], [uid, WORKDIR])
        self.assertEqual(
            after[2:],
            sorted(
                [
                    "A=b c",
                    f"HOME={WORKDIR}",
                    "LANG=C.UTF-8",
                    f"LOGNAME=jobworker-{uid}",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    f"PWD={WORKDIR}",
                    "SHELL=/bin/sh",
                    f"USER=jobworker-{uid}",
                ]
            ),
        )

    async def test_failuresRecordedAlike(self) -> None:
        """A command that passes the start check but cannot run (a missing
        interpreter: 127; not executable by the kernel: 126) ends with the
        same record whichever path started it."""
        server = LiveServer(self)
        script = sharedPath(self)
        with open(script, "w") as f:
            f.write("#!/no/such/interpreter\n")
        os.chmod(script, 0o755)  # noqa: S103
        job = await server.createJob(script)
        ended = await server.waitEnded(job["id"])
        self.assertEqual(
            (ended["status"], ended["exit_code"], ended["error"]),
            ("FAILED", 127, "exited with code 127"),
        )
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=stderr", "ada"
        )
        err = await treq.content(response)
        self.assertIn(script.encode(), err)
        self.assertIn(b"No such file or directory", err)


class ServerPidNamespaceTests(ServerLauncherTests):
    """--isolate pid: the launcher too (it forks the namespace's PID 1)."""

    serverOptions = ("--isolate=pid",)

    async def test_stoppedWhole(self) -> None:
        """A stop reaches the job under the namespace's init: a job that
        handles SIGTERM ends by its handler; one that does not dies of it
        (as it would without the namespace; it was PID 1 before, which a
        default-action SIGTERM never reaches, and was killed after the
        grace), and nothing of either is left."""
        server = LiveServer(self)
        handles = await server.createJob(
            "sh", "-c", "trap 'echo bye; exit 7' TERM; echo up; sleep 60 & wait"
        )
        ignores = await server.createJob("sh", "-c", "echo up; exec sleep 60")
        deadline = time.monotonic() + 10
        for job in (handles, ignores):
            # Running as PID 1 (the trap set): past the launcher's set-up.
            while (await server.json("GET", f"/jobs/{job['id']}"))[1][
                "stdout_bytes"
            ] == 0:
                self.assertLess(time.monotonic(), deadline, "the job is not up")
                await sleep(0.05)
        for job in (handles, ignores):
            code, _ = await server.json("POST", f"/jobs/{job['id']}/stop")
            self.assertEqual(code, 200)
        first = await server.waitEnded(handles["id"])
        second = await server.waitEnded(ignores["id"])
        self.assertEqual((first["status"], first["exit_code"]), ("STOPPED", 7))
        self.assertEqual((second["status"], second["signal"]), ("STOPPED", "SIGTERM"))
        for job in (first, second):
            self.assertFalse(os.path.exists(f"/proc/{job['pid']}"), job)


class ProbeFallbackTests(SynchronousTestCase):
    """A launcher that fails the start-up probe gives way to the chain."""

    def setUp(self) -> None:
        noLiveUidProcesses(self.patch)

    def test_brokenLauncherReplaced(self) -> None:
        from jobworker.executors.local.executor import LocalExecutor
        from jobworker.jobs.policy import JobPolicy
        from jobworker.server.identitysetup import probeSandbox

        from .fakes import FakeProcessReactor

        requireRoot()
        identities = Identities(pool=DynamicUids(72120, 72129, self.mktemp()))
        local = LocalExecutor(
            FakeProcessReactor(),
            os.path.join(os.path.abspath(self.mktemp()), "jobs"),
            5.0,
            policy=JobPolicy(identities=identities),
            launcher=shutil.which("false") or "/bin/false",
        )
        assert local.sandbox is not None
        self.assertTrue(local.sandbox.usesLauncher)
        logs = ServerLogs(self)
        probeSandbox(local, identities)
        self.assertIsNone(local.sandbox.launcher)
        [which] = logs.which()
        self.assertIn("the launcher failed its probe", which)


class ProbeWorkFolderTests(SynchronousTestCase):
    def test_sharedTmpRefused(self) -> None:
        """
        Where /tmp gets no private tmpfs (a symlink here), /tmp/job would be
        made in the shared /tmp, where a user may have planted a symlink to
        /etc: the probe refuses before anything runs.
        """
        sandbox = Sandbox(self.mktemp(), 1 << 20, folders=["/var/tmp"])
        with self.assertRaises(SandboxError) as caught:
            sandbox.probe(testIdentity())
        self.assertIn("/tmp is not a real folder here", str(caught.exception))


class ServerChainTests(ServerLauncherTests):
    """--launcher=off: the exec chain, with the same results."""

    serverOptions = ("--launcher=off",)
    expected = "the exec chain"


class ServerFallbackTests(ServerLauncherTests):
    """A compiler that fails: one log line why, then the chain."""

    expected = "the exec chain"

    def setUp(self) -> None:
        super().setUp()
        false = shutil.which("false") or "/bin/false"
        old = os.environ.get(launcher.COMPILER_VARIABLE)
        os.environ[launcher.COMPILER_VARIABLE] = false

        def restore() -> None:
            if old is None:
                os.environ.pop(launcher.COMPILER_VARIABLE, None)
            else:
                os.environ[launcher.COMPILER_VARIABLE] = old

        self.addCleanup(restore)

    async def test_saysWhy(self) -> None:
        """The line names the failing compiler."""
        logs = ServerLogs(self)
        LiveServer(self)
        [which] = logs.which()
        self.assertTrue(re.search(r"no launcher: \S*false failed", which), which)


class EncodingTests(SynchronousTestCase):
    """What a start request says of the launcher's arguments."""

    def test_asFsencodeMakesThem(self) -> None:
        """Each argument is encoded as os.fsencode would (undecodable bytes
        given back through surrogateescape included), each ended by NUL."""
        cases = [
            [],
            ["a"],
            ["", "", "x"],
            ["p\u00e9", "\u2603", os.fsdecode(b"raw\xff\xfe"), "=", "a b"],
        ]
        for args in cases:
            self.assertEqual(
                launcher.encodeArguments(args),
                b"".join(os.fsencode(arg) + b"\0" for arg in args),
            )

    def test_unencodable(self) -> None:
        """A lone surrogate that is no escaped byte cannot be encoded, as
        with os.fsencode: an error, not a mangled argument."""
        with self.assertRaises(UnicodeEncodeError):
            os.fsencode("\ud800")
        with self.assertRaises(UnicodeEncodeError):
            launcher.encodeArguments(["ok", "\ud800"])
