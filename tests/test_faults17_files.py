"""
Fault injection round 17, the files the server reads and writes itself:
a users file that is not a regular file (#13), the token key written
without fsync (#7), and a cached launcher that a power cut left empty or
truncated (#12). Real files, real processes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.auth.tokens import KEY_BYTES, loadOrCreateKey
from jobworker.auth.users import DEVELOPMENT_USERS, UserDatabase, UsersFileError
from jobworker.executors.local import launcher
from jobworker.server.services import UsersReloadService

from .support import CERT, FREE_UIDS, KEY, TWISTD, RecordingAuthenticator, pythonChild
from .test_launcher import CompilerCase

#: How long a users file load may take before it counts as hung.
PROMPT = 5.0


def _release(fifo: str) -> None:
    """Unblock a reader stuck opening C{fifo} (a writer comes, and goes)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


# -- #13: a users file that is not a regular file -----------------------------


class UsersFileKindTests(TestCase):
    """
    The SIGHUP reload, as the server runs it (in a thread of a real pool),
    refuses a FIFO or a device in place of the users file at once, keeping
    the old users; a symlink to a regular file stays fine.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "users")
        with open(self.path, "w") as f:
            f.write(DEVELOPMENT_USERS)
        self.pool = ThreadPool(minthreads=1, maxthreads=2, name="faults17")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.authenticator = RecordingAuthenticator()
        self.service = UsersReloadService(
            self.path,
            self.authenticator,  # type: ignore[arg-type]
            reactor,
            lambda f, *a: deferToThreadPool(reactor, self.pool, f, *a),
        )
        self.events: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.events.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def reloadPromptly(self) -> float:
        """Reload; fail if it takes over L{PROMPT} seconds. The time taken."""
        began = time.monotonic()
        done: Deferred[None] = self.service.reload()
        timedOut: list[bool] = []

        def late() -> None:
            timedOut.append(True)
            if os.path.exists(self.path) and stat.S_ISFIFO(os.lstat(self.path).st_mode):
                _release(self.path)

        timer = reactor.callLater(PROMPT, late)  # type: ignore[attr-defined]
        try:
            await done
        finally:
            if timer.active():
                timer.cancel()
        self.assertEqual(timedOut, [], "the reload hung on the users file")
        return time.monotonic() - began

    async def test_fifoRefusedPromptly(self) -> None:
        """A FIFO as the users file: an error naming it at once, old users kept
        (it used to block the reload thread until a writer came)."""
        await self.reloadPromptly()
        self.assertEqual(len(self.authenticator.replaced), 1)
        os.unlink(self.path)
        os.mkfifo(self.path)
        await self.reloadPromptly()
        self.assertEqual(len(self.authenticator.replaced), 1)
        line = [each for each in self.events if "not reloaded" in each][-1]
        self.assertIn(self.path, line)
        self.assertIn("not a regular file", line)
        # The next reload, with a proper file back, works: nothing is stuck.
        os.unlink(self.path)
        with open(self.path, "w") as f:
            f.write(DEVELOPMENT_USERS)
        await self.reloadPromptly()
        self.assertEqual(len(self.authenticator.replaced), 2)

    async def test_symlinkToRegularFileAllowed(self) -> None:
        """Operators link the users file from elsewhere: still read."""
        real = os.path.join(self.folder, "users.real")
        os.rename(self.path, real)
        os.symlink(real, self.path)
        await self.reloadPromptly()
        self.assertEqual(len(self.authenticator.replaced), 1)
        self.assertEqual(len(self.authenticator.replaced[0]), 4)

    def test_directoryRefused(self) -> None:
        """A folder in its place is refused, naming it (as before)."""
        os.unlink(self.path)
        os.mkdir(self.path)
        error = self.assertRaises(UsersFileError, UserDatabase.fromFile, self.path)
        self.assertIn(self.path, str(error))

    def test_tooBigRefused(self) -> None:
        """A regular file over the cap (sparse here) is refused, saying so."""
        with open(self.path, "r+b") as f:
            f.truncate(16 * 1024 * 1024 + 1)
        error = self.assertRaises(UsersFileError, UserDatabase.fromFile, self.path)
        self.assertIn(self.path, str(error))
        self.assertIn("16 MiB", str(error))


#: Run in a child with a memory cap: the reload of a users file that links to
#: /dev/zero, as SIGHUP runs it; prints what happened as JSON.
_ZERO_CHILD = """
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from twisted.logger import formatEvent, globalLogPublisher
from jobworker.auth.users import DEVELOPMENT_USERS
from jobworker.server.services import UsersReloadService

path = sys.argv[1]
replaced, events, failures = [], [], []
globalLogPublisher.addObserver(lambda e: events.append(formatEvent(e)))

class Authenticator:
    from jobworker.auth.users import UserDatabase
    users = UserDatabase.development()

    def replaceUsers(self, users):
        replaced.append(len(users))

service = UsersReloadService(path, Authenticator(), None)
service.reload().addErrback(lambda f: failures.append(repr(f.value)))
os.unlink(path)
os.symlink("/dev/zero", path)
service.reload().addErrback(lambda f: failures.append(repr(f.value)))
print(json.dumps({"replaced": replaced, "events": events, "failures": failures}))
"""


class UsersFileDeviceTests(SynchronousTestCase):
    """A users file linked to /dev/zero: an error, not a read without end."""

    def test_devZeroRefused(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "users")
        with open(path, "w") as f:
            f.write(DEVELOPMENT_USERS)
        try:
            result = pythonChild(_ZERO_CHILD, path)
        except subprocess.TimeoutExpired:
            self.fail("the reload of /dev/zero did not end")
        self.assertEqual(result.returncode, 0, result.stderr)
        outcome = json.loads(result.stdout)
        self.assertEqual(outcome["failures"], [])
        self.assertEqual(outcome["replaced"], [4])
        line = [each for each in outcome["events"] if "not reloaded" in each][-1]
        self.assertIn(path, line)
        self.assertIn("not a regular file", line)


class UsersFileStartupTests(SynchronousTestCase):
    """twistd jobworker --users=<FIFO or /dev/zero link>: one line, exit."""

    def refused(self, users: str) -> str:
        workDir = os.path.abspath(self.mktemp())
        os.makedirs(workDir)
        argv = [
            *(TWISTD, "-n", "--pidfile=", "jobworker", "--tls", "--port=0"),
            *(f"--cert={CERT}", f"--key={KEY}", f"--dynamic-uids={FREE_UIDS}"),
            f"--state-dir={os.path.join(workDir, 'state')}",
            f"--users={users}",
        ]

        # A memory cap (so /dev/zero cannot take the machine's), set in a
        # wrapper that then execs twistd: no preexec_fn in a threaded test.
        capped = [
            sys.executable,
            "-c",
            "import os, resource, sys; "
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "os.execv(sys.argv[1], sys.argv[1:])",
            *argv,
        ]
        try:
            result = subprocess.run(
                capped, capture_output=True, timeout=30, check=False, cwd=workDir
            )
        except subprocess.TimeoutExpired:
            if stat.S_ISFIFO(os.lstat(users).st_mode):
                _release(users)
            self.fail(f"twistd hung on --users={users}")
        stderr = result.stderr.decode("utf-8", "replace")
        self.assertNotEqual(result.returncode, 0, stderr)
        self.assertNotIn("Traceback", stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, stderr)
        return lines[0]

    def test_fifo(self) -> None:
        fifo = os.path.abspath(self.mktemp())
        os.mkfifo(fifo)
        line = self.refused(fifo)
        self.assertIn(fifo, line)
        self.assertIn("not a regular file", line)

    def test_devZero(self) -> None:
        link = os.path.abspath(self.mktemp())
        os.symlink("/dev/zero", link)
        line = self.refused(link)
        self.assertIn(link, line)
        self.assertIn("not a regular file", line)


# -- #7: the token key, made durable before it has its name ------------------


#: Run in a child: loadOrCreateKey with os.fsync, os.link and os.replace
#: watched (they still run), or a crash (os._exit) in place of the first
#: os.link or os.replace when argv[2] is "crash". Prints the events as JSON.
_KEY_CHILD = """
import json, os, sys
from jobworker.auth import tokens

path, mode = sys.argv[1], sys.argv[2]
events = []
realFsync, realLink, realReplace = os.fsync, os.link, os.replace

def fsync(fd):
    target = os.readlink(f"/proc/self/fd/{fd}")
    if os.path.isdir(target):
        events.append(["fsync-folder", target])
    else:
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            events.append(["fsync-file", target, f.read().hex()])
    realFsync(fd)

def link(source, target, *a, **k):
    if mode == "crash":
        os._exit(3)
    if mode == "race":
        with open(target, "xb") as f:
            f.write(b"r" * 32)
        os.chmod(target, 0o600)
    events.append(["link", os.fspath(source), os.fspath(target)])
    return realLink(source, target, *a, **k)

def replace(source, target, *a, **k):
    if mode == "crash":
        os._exit(3)
    events.append(["replace", os.fspath(source), os.fspath(target)])
    return realReplace(source, target, *a, **k)

os.fsync, os.link, os.replace = fsync, link, replace
key = tokens.loadOrCreateKey(path)
print(json.dumps({"key": key.hex(), "events": events}))
"""


class TokenKeyTests(SynchronousTestCase):
    """L{loadOrCreateKey}: no key file under its name until it is durable."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "token.key")

    def child(self, mode: str) -> subprocess.CompletedProcess[bytes]:
        return pythonChild(_KEY_CHILD, self.path, mode)

    def test_createdPrivateNoTemporary(self) -> None:
        """32+ random bytes, 0600, alone in its folder, kept on a reload."""
        key = loadOrCreateKey(self.path)
        self.assertGreaterEqual(len(key), KEY_BYTES)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.folder), ["token.key"])
        self.assertEqual(loadOrCreateKey(self.path), key)
        self.assertEqual(os.listdir(self.folder), ["token.key"])

    def test_existingKeyNeverOverwritten(self) -> None:
        """A key already there is read, never replaced."""
        with open(self.path, "wb") as f:
            f.write(b"e" * 40)
        os.chmod(self.path, 0o600)
        self.assertEqual(loadOrCreateKey(self.path), b"e" * 40)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"e" * 40)

    def test_keyMadeMeanwhileWins(self) -> None:
        """A key that another start made between our write and our link is
        kept, and is the one returned; our temporary file is gone."""
        result = self.child("race")
        self.assertEqual(result.returncode, 0, result.stderr)
        outcome = json.loads(result.stdout)
        self.assertEqual(bytes.fromhex(outcome["key"]), b"r" * 32)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"r" * 32)
        self.assertEqual(os.listdir(self.folder), ["token.key"])

    def test_fsyncedBeforeNamedFolderAfter(self) -> None:
        """The key's bytes are fsynced before the file gets its name, and
        the folder (the name) after."""
        result = self.child("watch")
        self.assertEqual(result.returncode, 0, result.stderr)
        outcome = json.loads(result.stdout)
        events = outcome["events"]
        kinds = [event[0] for event in events]
        self.assertIn("link", kinds, events)
        named = kinds.index("link")
        fsyncedFiles = [
            event
            for event in events[:named]
            if event[0] == "fsync-file" and event[2] == outcome["key"]
        ]
        self.assertTrue(fsyncedFiles, events)
        self.assertEqual(events[named][2], self.path)
        self.assertIn(["fsync-folder", self.folder], events[named:])
        self.assertEqual(os.listdir(self.folder), ["token.key"])

    def test_crashBeforeNamingLeavesNoKeyFile(self) -> None:
        """A crash after the key is written, before it is named: no (partial)
        file under the name, so the next start makes a good key."""
        result = self.child("crash")
        self.assertEqual(result.returncode, 3, (result.stdout, result.stderr))
        self.assertFalse(os.path.lexists(self.path))
        key = loadOrCreateKey(self.path)
        self.assertEqual(len(key), KEY_BYTES)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), key)


# -- #12: a cached launcher left empty or truncated --------------------------


class LauncherCacheTests(CompilerCase):
    """An implausible cached launcher is compiled again, not trusted."""

    def setUp(self) -> None:
        super().setUp()
        self.path = launcher.build([self.cache], self.compiler)
        with open(self.path, "rb") as f:
            self.good = f.read()

    def assertWorks(self, path: str) -> None:
        """The launcher runs (no ENOEXEC) and answers a bad call with usage."""
        self.assertEqual(path, self.path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(4), b"\x7fELF")
        result = subprocess.run([path], capture_output=True, timeout=30, check=False)
        self.assertIn(b"too few arguments", result.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
        self.assertEqual(os.listdir(self.cache), [os.path.basename(path)])

    def plant(self, data: bytes) -> None:
        """Put C{data} under the cached name, a trusted 0700 file of ours."""
        os.unlink(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def test_emptyRecompiled(self) -> None:
        self.plant(b"")
        self.assertWorks(launcher.build([self.cache], self.compiler))

    def test_truncatedRecompiled(self) -> None:
        """Cut in the middle: an ELF header, no end."""
        self.plant(self.good[: len(self.good) // 2])
        self.assertWorks(launcher.build([self.cache], self.compiler))

    def test_shortRecompiled(self) -> None:
        """Only the first page was written back."""
        self.plant(self.good[:4096])
        self.assertWorks(launcher.build([self.cache], self.compiler))

    def test_notELFRecompiled(self) -> None:
        """Zeros where the blocks were allocated but not written."""
        self.plant(b"\0" * len(self.good))
        self.assertWorks(launcher.build([self.cache], self.compiler))

    def test_goodKept(self) -> None:
        """A whole launcher is used as is (no compiler run)."""
        self.patch(launcher, "_compile", lambda *a: self.fail("compiled again"))
        self.assertWorks(launcher.build([self.cache], self.compiler))


_LAUNCHER_CHILD = """
import json, os, sys
from jobworker.executors.local import launcher

events = []
realFsync, realReplace = os.fsync, os.replace

def fsync(fd):
    target = os.readlink(f"/proc/self/fd/{fd}")
    kind = "folder" if os.path.isdir(target) else "file"
    events.append([f"fsync-{kind}", target])
    realFsync(fd)

def replace(source, target, *a, **k):
    events.append(["replace", os.fspath(source), os.fspath(target)])
    return realReplace(source, target, *a, **k)

os.fsync, os.replace = fsync, replace
path = launcher.build([sys.argv[1]], launcher.findCompiler())
print(json.dumps({"path": path, "events": events}))
"""


class LauncherDurableTests(SynchronousTestCase):
    """The compiled launcher is fsynced before its rename, the folder after."""

    def test_fsyncs(self) -> None:
        try:
            launcher.findCompiler()
        except launcher.LauncherUnavailable as e:
            raise SkipTest(str(e)) from None
        cache = os.path.abspath(self.mktemp())
        result = pythonChild(_LAUNCHER_CHILD, cache, timeout=180)
        self.assertEqual(result.returncode, 0, result.stderr)
        outcome = json.loads(result.stdout)
        events = outcome["events"]
        renames = [i for i, e in enumerate(events) if e[0] == "replace"]
        self.assertEqual(len(renames), 1, events)
        source = events[renames[0]][1]
        self.assertEqual(events[renames[0]][2], outcome["path"])
        self.assertIn(["fsync-file", source], events[: renames[0]])
        self.assertIn(["fsync-folder", cache], events[renames[0] :])


class TokenKeyWithoutHardLinksTests(SynchronousTestCase):
    """
    A state dir on a file system without hard links (vfat, some FUSE file
    systems: C{link(2)} fails with C{EPERM} or C{ENOTSUP}) could not get its
    first token key, and the server would not start (a diff review). The
    key is renamed into place there instead. (C{os.link} fails as those
    file systems' does: no vfat can be mounted on every test machine.)
    """

    def test_renamedWhereNoLinks(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "token.key")

        def noLinks(source: str, target: str) -> None:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        self.patch(os, "link", noLinks)
        key = loadOrCreateKey(path)
        self.assertGreaterEqual(len(key), KEY_BYTES)
        self.assertEqual(os.listdir(folder), ["token.key"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(loadOrCreateKey(path), key)

    def test_otherLinkErrorsStillRaise(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)

        def noRoom(source: str, target: str) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(os, "link", noRoom)
        self.assertRaises(OSError, loadOrCreateKey, os.path.join(folder, "token.key"))
        self.assertEqual(os.listdir(folder), [])
