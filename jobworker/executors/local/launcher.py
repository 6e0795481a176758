"""
The job launcher: C{jobworker/data/launcher.c}, one small C program that
sets up a sandboxed job in one process (setsid, the gate, namespaces,
mounts, identity, working directory) and execs its command; compiled here,
at server start-up, into a root-only cache keyed by what was compiled; and
built again should it go from there while the server runs (L{KeptLauncher}).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The environment variable naming the C compiler (default: cc, else gcc).
COMPILER_VARIABLE = "JW_LAUNCHER_CC"

#: Where compiled launchers are kept, one per source, compiler and flags;
#: the server's state dir is the fallback when this cannot be used.
CACHE_DIR = "/var/cache/jobworker"

#: No -Werror here: a newer compiler's new warning must not turn the
#: launcher off; the tests compile with -Werror (tests/test_launcher.py).
FLAGS = ("-O2", "-Wall", "-Wextra")

#: How long a compilation may take.
COMPILE_TIMEOUT = 120.0

#: Seconds between two tries to build again a launcher that could not be.
REBUILD_INTERVAL = 10.0

#: How os.fsencode encodes a str.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


#: The Landlock ABI that scopes abstract unix sockets and signals (Linux 6.12).
LANDLOCK_SCOPES = 6


def landlockABI() -> int:
    """
    The kernel's Landlock ABI version (0: none, or not enabled). The
    launcher scopes each job's abstract unix sockets and signals from
    L{LANDLOCK_SCOPES}.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    version = libc.syscall(444, None, 0, 1)
    return max(0, int(version))


def encodeArguments(args: Sequence[str]) -> bytes:
    """
    C{args} as the launcher reads them from a start request or its gate:
    each as C{os.fsencode} makes it, ended by a NUL byte (one encode for
    all: a job has dozens).
    """
    text = "\0".join(args) + "\0" if args else ""
    return text.encode(_FS_ENCODING, _FS_ERRORS)


class LauncherUnavailable(Exception):
    """The launcher cannot be built or used here; the message says why."""


class LauncherGone(OSError):
    """
    The compiled launcher is gone or changed while the server runs: the
    server's trouble, not a job's (nothing can start through it until it
    is built again, L{building} if under way).
    """

    def __init__(self, why: str, building: bool) -> None:
        super().__init__(errno.ENOENT, why)
        self.building = building


@dataclass(frozen=True)
class _Recipe:
    """What a launcher was compiled from, and where."""

    code: bytes
    compiler: str
    folder: str


#: What each launcher L{build} gave in this process was made from, by its
#: path: to build it again should it go (L{KeptLauncher}).
_recipes: dict[str, _Recipe] = {}


def source() -> bytes:
    """The launcher's C source, as shipped in the package."""
    return files("jobworker").joinpath("data", "launcher.c").read_bytes()


def findCompiler(environ: dict[str, str] | None = None) -> str:
    """
    The C compiler to use: C{$JW_LAUNCHER_CC}, else C{cc}, else C{gcc}.

    @raise LauncherUnavailable: there is none.
    """
    environ = dict(os.environ) if environ is None else environ
    wanted = environ.get(COMPILER_VARIABLE)
    names = [wanted] if wanted else ["cc", "gcc"]
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return os.path.abspath(found)
    raise LauncherUnavailable(f"no C compiler ({' or '.join(names)}) found")


def build(
    cacheDirs: list[str],
    compiler: str,
    text: bytes | None = None,
) -> str:
    """
    The path of the compiled launcher: from the first usable folder of
    C{cacheDirs} if it is already there, else compiled into it (a temporary
    name, then a rename: servers starting together never see half a file).

    @raise LauncherUnavailable: no folder is usable, or the compiler failed.
    """
    try:
        code = source() if text is None else text
    except OSError as e:
        raise LauncherUnavailable(f"no launcher.c in the package: {e}") from None
    key = hashlib.sha256(
        b"\0".join([code, compiler.encode(), " ".join(FLAGS).encode()])
    ).hexdigest()[:20]
    why = "no cache folder"
    for folder in cacheDirs:
        try:
            _privateFolder(folder)
        except OSError as e:
            why = f"cannot use {folder}: {e.strerror or e}"
            continue
        except LauncherUnavailable as e:
            why = str(e)
            continue
        target = os.path.join(folder, f"launcher-{key}")
        _recipes[target] = _Recipe(code, compiler, folder)
        if _trusted(target):
            if _plausibleELF(target):
                return target
            # Empty or cut short (a power cut before its blocks were
            # written): it would fail with ENOEXEC for good. Again.
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
            except OSError as e:
                why = f"cannot replace {target}: {e.strerror or e}"
                continue
        try:
            _compile(compiler, code, folder, target)
        except OSError as e:
            # A folder that cannot be written (read-only /var): the next.
            why = f"cannot compile into {folder}: {e.strerror or e}"
            continue
        return target
    raise LauncherUnavailable(why)


def _privateFolder(folder: str) -> None:
    """Make C{folder} (0700) if missing; refuse one others could change."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise LauncherUnavailable(f"{folder} is not a folder of this user")
    if st.st_mode & 0o022:
        raise LauncherUnavailable(f"{folder} is writable by others")


def _trusted(path: str) -> bool:
    """A regular file of this user that no one else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & 0o022
        and bool(st.st_mode & stat.S_IXUSR)
    )


#: The smallest launcher taken for whole (gcc -O2 makes some 32 KiB).
MIN_LAUNCHER_BYTES = 4096


def _plausibleELF(path: str) -> bool:
    """
    Whether C{path} looks like a whole ELF executable: the magic, a size
    of at least L{MIN_LAUNCHER_BYTES}, and room for the program and section
    header tables its header places (the linker puts the section headers
    at the end of the file, so a file cut short misses them).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        header = os.pread(fd, 64, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if size < MIN_LAUNCHER_BYTES or header[:4] != b"\x7fELF" or len(header) < 52:
        return False
    order = {1: "<", 2: ">"}.get(header[5])
    layout = {1: "HHIIIIIHHHHHH", 2: "HHIQQQIHHHHHH"}.get(header[4])
    if order is None or layout is None:
        return False
    fields: tuple[int, ...] = struct.unpack_from(order + layout, header, 16)
    phoff, shoff = fields[4], fields[5]
    phentsize, phnum, shentsize, shnum = fields[8], fields[9], fields[10], fields[11]
    return bool(
        phnum > 0
        and phoff + phnum * phentsize <= size
        and shoff + shnum * shentsize <= size
    )


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compile(compiler: str, code: bytes, folder: str, target: str) -> None:
    work = tempfile.mkdtemp(prefix=".build-", dir=folder)
    try:
        sourcePath = os.path.join(work, "launcher.c")
        binary = os.path.join(work, "launcher")
        with open(sourcePath, "wb") as f:
            f.write(code)
        try:
            result = subprocess.run(
                [compiler, *FLAGS, "-o", binary, sourcePath],
                capture_output=True,
                timeout=COMPILE_TIMEOUT,
                check=False,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LauncherUnavailable(f"{compiler}: {e}") from None
        if result.returncode != 0 or not os.path.isfile(binary):
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            errors = [line for line in lines if ": error:" in line] or lines
            why = errors[0] if errors else f"exit status {result.returncode}"
            raise LauncherUnavailable(f"{compiler} failed: {why}")
        os.chmod(binary, 0o700)
        # Durable before it has its name, and the name after: a power cut
        # must not leave an empty launcher under it.
        _fsync(binary)
        os.replace(binary, target)
        _fsync(folder, os.O_DIRECTORY)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fileIdentity(path: str) -> tuple[int, ...] | None:
    """
    What tells the file at C{path} from any other put there since: device,
    inode, size, modification time, owner and mode (None: no such file).
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_uid, st.st_mode)


def _buildAgain(path: str, recipe: _Recipe) -> tuple[int, ...]:
    """
    In a thread: the launcher at C{path} as L{build} makes it (taken as
    another server left it if whole, else compiled); its identity.

    @raise LauncherUnavailable: it cannot be built there.
    """
    made = build([recipe.folder], recipe.compiler, recipe.code)
    seen = _fileIdentity(made)
    if made != path or seen is None:  # (the same key: never another path)
        raise LauncherUnavailable(f"{path} is gone again")
    return seen


class KeptLauncher:
    """
    The compiled launcher while the server runs. Its cache may be cleaned
    under a running server (a cache cleaner, C{rm -rf /var/cache/*}): each
    start of the launcher (a spawner, or each job under C{--launcher
    exec}) first looks at it (L{trouble}: one C{lstat}). Found gone, or
    not the file compiled (another inode, size, time, owner or mode), it is
    built again (L{build}: from the same source and compiler, into the same
    folder) in the server's thread pool, said once in the log, while jobs
    are refused (the server's trouble, not theirs).

    @param runInThread: runs a build in the server's thread pool (None: in
        the caller's thread, for tests).
    """

    log = Logger()

    def __init__(
        self, path: str, runInThread: Callable[..., Deferred[Any]] | None = None
    ) -> None:
        self.path = path
        self._runInThread = runInThread
        #: The identity of the file compiled (or built again since).
        self._seen = _fileIdentity(path)
        #: A build again is under way.
        self.building = False
        #: Why the last build again failed, and when (time.monotonic).
        self._failed: tuple[str, float] | None = None
        #: The last failure the log was told of.
        self._told: str | None = None

    def trouble(self) -> str | None:
        """
        Why the launcher cannot be started now, in a few words for users
        and /healthz, no path (None: it is the file compiled). Gone or
        changed, it is built again (once at a time; after a failure, again
        L{REBUILD_INTERVAL} seconds later; the log says why it failed).
        """
        seen = _fileIdentity(self.path)
        if seen is not None and seen == self._seen:
            return None
        failed = self._failed
        if not self.building and (
            failed is None or time.monotonic() - failed[1] >= REBUILD_INTERVAL
        ):
            self._rebuild()
        if self.building:
            return "its job launcher is being built again"
        if self._failed is not None:
            return "its job launcher is gone, and cannot be built again now"
        return None  # built again already (no thread)

    def _rebuild(self) -> None:
        recipe = _recipes.get(self.path)
        if recipe is None:
            self._fail("is gone, and was not built by this server")
            return
        self.building = True
        if self._failed is None:  # (not a try again: said already)
            self.log.warn(
                "the job launcher {path} was removed or replaced while the "
                "server ran: building it again; new jobs are refused until it is",
                path=self.path,
            )
        if self._runInThread is None:
            started = maybeDeferred(_buildAgain, self.path, recipe)
        else:
            started = self._runInThread(_buildAgain, self.path, recipe)
        started.addCallbacks(self._built, self._notBuilt)

    def _built(self, seen: tuple[int, ...]) -> None:
        self.building = False
        self._seen = seen
        self._failed = self._told = None
        self.log.info("the job launcher {path} is built again", path=self.path)

    def _notBuilt(self, failure: Failure) -> None:
        self.building = False
        self._fail(f"cannot be built again: {failure.getErrorMessage()}")

    def _fail(self, why: str) -> None:
        """No launcher for now (C{why}): said once in the log, tried again
        in L{REBUILD_INTERVAL} seconds."""
        self._failed = (why, time.monotonic())
        if why != self._told:
            self._told = why
            self.log.error(
                "the job launcher {path} {why}: new jobs are refused until it "
                "is built (tried again every {interval:g}s)",
                path=self.path,
                why=why,
                interval=REBUILD_INTERVAL,
            )
