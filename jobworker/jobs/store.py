"""The job store: job records in SQLite (WAL), behind a narrow interface."""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import shutil
import sqlite3
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.logger import Logger

from ..errors import ServiceUnavailable
from .records import JobRecord, JobStatus
from .schema import (
    INSERT,
    INSERT_LABEL,
    MIGRATIONS,
    SCHEMA_VERSION,
    SELECT,
    SELECT_FROM,
    UPDATE,
    DamagedRecord,
    fromRow,
    toRow,
)
from .selection import ANY_JOB, JobFilter

#: Largest page a caller may ask for.
MAX_PAGE = 1000

#: How many job sequence numbers one page of a listing with two filters or
#: more searches at most. One filter's index leads and the others are
#: tested job by job: a combination matching nothing read every job of the
#: leading index, 90-190 ms at 300,000 jobs on the reactor's thread, and
#: any role could hold the server with it (attacker round 10). A page past
#: that span ends with what it found (none, maybe) and a cursor below it.
SEARCH_SPAN = 10_000


# The sqlite3 module adapts every parameter that is not an exact int, float,
# str or bytearray, None included: it looks for an adapter, fails (building
# an AttributeError's message), and binds the value as it is. A job's row
# holds a dozen NULLs, written twice: that failed search cost more than the
# rest of the binding. With an adapter for None the search ends at once;
# the value bound is the same NULL. The adapter is an empty dict's get (None
# for None, and a C call: no Python frame per NULL).
_NONE_TO_NONE: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NONE_TO_NONE.get)


log = Logger(namespace="jobworker.jobs.store")

#: The first bytes of a WAL file (its checksums' byte order: 0x377F0682 or
#: 0x377F0683).
WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


@dataclass(frozen=True)
class QueuedEntry:
    """A job waiting in jobworker's queue, as a restart needs it."""

    jobId: str
    owner: str
    priority: int
    seq: int
    runAs: str | None
    after: list[str]
    afterOk: list[str]


class StoreError(Exception):
    """
    The store cannot be opened or used; the message says why.

    @ivar errorName: SQLite's name for the error (C{SQLITE_FULL}), if it
        came from SQLite.
    """

    def __init__(self, message: str, errorName: str | None = None) -> None:
        super().__init__(message)
        self.errorName = errorName

    @classmethod
    def of(cls, message: str, error: sqlite3.Error) -> StoreError:
        """C{message}, then SQLite's own words, keeping its error's name."""
        return cls(f"{message}: {error}", getattr(error, "sqlite_errorname", None))

    @property
    def full(self) -> bool:
        """Did the disk refuse for want of room?"""
        return self.errorName == "SQLITE_FULL"

    @property
    def reason(self) -> str:
        """Why, in words an operator acts on (never a guess at "disk full")."""
        name = self.errorName or ""
        if name == "SQLITE_FULL":
            return "the state dir's disk is full"
        if name.startswith("SQLITE_READONLY"):
            return "the store is read-only (a read-only mount or file?)"
        if name.startswith("SQLITE_IOERR"):
            return "the state dir's disk failed to read or write (I/O error)"
        if name in DAMAGE:
            return 'the store is damaged (see the README\'s "Durability")'
        if (
            name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
            or name == "SQLITE_PROTOCOL"
        ):
            return "the store is locked by another program"
        return "the store refused"


class WalCut(StoreError):
    """The store's WAL was cut short in place (L{JobStore.relink}): no
    room made on the disk mends it."""


class RecordDamaged(ServiceUnavailable):
    """
    A job's record no longer parses (L{DamagedRecord}): it cannot be read,
    now or later. A 503 that names the job, as every store error is; but no
    L{StoreError}, which the server waits out (a queued job whose record
    could not be read stayed first in line, tried every second for ever).

    @ivar record: what could be read of it.
    """

    def __init__(self, record: DamagedRecord) -> None:
        super().__init__(
            f"the stored record of job {record.id} is damaged ({record.problem}): "
            f"it cannot be shown; DELETE /jobs/{record.id} removes it"
        )
        self.record = record


_F = TypeVar("_F", bound=Callable[..., Any])


def _mapped(what: str, write: bool = False) -> Callable[[_F], _F]:
    """
    Turn any SQLite error of the wrapped method into a L{StoreError}: any
    statement, a read or a C{DELETE} included, may fail with "database or
    disk is full" or "database disk image is malformed". A C{write}'s
    outcome is the store's L{JobStore.refusal}.
    """

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            self._refuseWhileMarksHeld(what, write)
            try:
                result = method(self, *args, **kwargs)
            except sqlite3.Error as e:
                error = self._failed(f"cannot {what}", e)
                if write:
                    self._refusal = error
                raise error from None
            if write:
                self._refusal = None
                self._ioFailed = False
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


#: The WAL index's lock bytes in the C{-shm} file a reader waits on: of
#: SQLite's 8 from C{WALINDEX_LOCK_OFFSET} (120: write, checkpoint,
#: recover, then the 5 read marks), the recovery's and the read marks'
#: (another program's write or checkpoint does not hold a reader up).
_WAL_LOCKS = (122, 6)


def readMarksHeld(shm: str) -> bool:
    """
    Does another process hold a write lock among the WAL index's locks of
    C{shm} that hold a reader up (a POSIX lock, as SQLite takes them; this
    process's own are not seen)? One C{F_GETLK}; False if the file cannot
    be looked at.
    """
    try:
        fd = os.open(shm, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        start, length = _WAL_LOCKS
        probe = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, start, length, 0)
        found = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(struct.unpack("hhqqi4x", found)[0] != fcntl.F_UNLCK)


def roomForAFile(folder: str, strict: bool = False) -> bool:
    """
    Whether a new file can be made in C{folder}: False only if there is no
    room for one (no inode left, or the quota's); another error (a
    read-only folder) is for what tries to write there to say.

    @raise OSError: that other error, if C{strict}.
    """
    probe = os.path.join(folder, f".room-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return False
        if strict:
            raise
        return True
    os.close(fd)
    os.unlink(probe)
    return True


def _refuseStrangeCompanions(path: str) -> None:
    """
    SQLite's C{-wal} and C{-shm} files beside the store, if there, must be
    regular files: with a FIFO or a folder there the store opened, and then
    refused every write for good ("disk I/O error", "read-only").

    @raise StoreError: one is something else (a symlink included).
    """
    for companion in (path + "-wal", path + "-shm"):
        try:
            mode = os.lstat(companion).st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StoreError(f"cannot use {companion}: {e.strerror}") from None
        if not stat.S_ISREG(mode):
            raise StoreError(
                f"{companion} is not a regular file: SQLite cannot use it "
                "(move it away; it is not the store's)"
            )


def _syncFolder(path: str) -> None:
    """fsync the folder that holds C{path} (a rename in it is durable)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The size of a WAL's header: a WAL larger holds frames (records).
WAL_HEADER_BYTES = 32


def _refuseOrphanWal(path: str, existed: bool) -> None:
    """
    A store's file missing or empty beside a WAL that holds frames (the
    jobs committed since the last checkpoint, after a crash: all of them on
    a young store): SQLite takes the store for a new one and deletes the
    WAL at its first read, and the jobs were lost for good with a start
    that said "0 jobs" (fault round 33). Refused: nothing is touched.

    @raise StoreError: so.
    """
    wal = path + "-wal"
    try:
        walBytes = os.stat(wal).st_size
    except OSError:
        return
    if walBytes <= WAL_HEADER_BYTES or (existed and os.path.getsize(path) > 0):
        return
    state = "empty" if existed else "missing"
    raise StoreError(
        f"{path} is {state}, but {wal} holds {walBytes} bytes of its jobs: "
        f"restore {os.path.basename(path)} from a copy, or move "
        f"{os.path.basename(wal)} aside to start afresh (nothing was changed)"
    )


def _fileOf(path: str) -> tuple[int, int]:
    """The device and inode of the file at C{path}."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


#: SQLite's errors that mean the file's content is damaged.
DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class JobStore:
    """
    Job records in one SQLite file, WAL mode. Writes are small and happen on
    state changes only (a job's start and its end), never per output chunk.

    A crash of the server loses nothing committed: WAL pages are in the OS
    page cache before C{execute} returns (C{synchronous=NORMAL}: a power cut
    may lose the last transactions, never corrupt the file).
    """

    #: The error of the last write, if it failed and none has succeeded
    #: since (L{refusal}).
    _refusal: StoreError | None = None
    #: The file was written again (L{relink}) and is to be opened again.
    _reconnect = False
    #: SQLite last found the WAL read marks held by another program: the
    #: locks are looked at before each call until they are let go.
    _marksHeld = False

    def __init__(self, path: str, makeRoom: Callable[[], bool] | None = None) -> None:
        """
        @param makeRoom: called once if the store cannot be opened and its
            folder has no room for a new file (no inode left: SQLite makes
            its -wal and -shm as it opens): frees some (the disk reserve),
            True if it did; the store is then opened again.
        """
        self.path = path
        #: The process that opened it (see L{afterFork}).
        self._pid = os.getpid()
        _refuseStrangeCompanions(path)
        self._locks = self._exclusive(path)
        try:
            self._open(path)
        except StoreError:
            if (
                makeRoom is None
                or roomForAFile(os.path.dirname(os.path.abspath(path)))
                or not makeRoom()
            ):
                self._unlock()
                raise
            try:
                self._open(path)
            except StoreError:
                self._unlock()
                raise

    def _open(self, path: str) -> None:
        """Open (and check) the store, its locks held; close it on failure."""
        existed = os.path.exists(path)
        if existed and not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"{path} is not readable and writable")
        _refuseOrphanWal(path, existed)
        try:
            if not existed:
                # SQLite gives its -wal and -shm files the mode of this one.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            # No waiting for a lock another program holds (SQLite's default
            # is 5 s, on the reactor's thread, for every write): refused at
            # once, a 503 or a record kept in memory and written later.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=0)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open {path}: {e}") from None
        self._db.row_factory = sqlite3.Row
        #: The file opened (device, inode): L{relink} compares the path's.
        self._file = _fileOf(path)
        try:
            self._prepare()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{path} is not a usable jobworker store: {e}") from None
        self._walRelink(look=False)  # (notes the WAL: L{relink} compares)

    @staticmethod
    def _exclusive(path: str) -> list[int]:
        """
        Hold exclusive locks for as long as the store is open: two servers
        on one state dir would mark each other's jobs as crashed and kill
        them. One on C{<path>.lock} (what earlier versions lock), one on the
        folder that holds the store: a lock file unlinked by hand let a
        second server in, and a second server finds that folder as long as
        the store is in it.
        """
        held: list[int] = []
        for lockPath, flags in (
            (path + ".lock", os.O_RDWR | os.O_CREAT),
            (os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY),
        ):
            try:
                fd = os.open(lockPath, flags | os.O_CLOEXEC, 0o600)
            except OSError as e:
                for fd in held:
                    os.close(fd)
                raise StoreError(f"cannot open {lockPath}: {e.strerror}") from None
            held.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                for fd in held:
                    os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StoreError(f"cannot lock {lockPath}: {e.strerror}") from None
                raise StoreError(
                    f"{lockPath} is held: another jobworker uses this state dir"
                ) from None
        return held

    def _unlock(self) -> None:
        while self._locks:
            os.close(self._locks.pop())

    def _prepare(self) -> None:
        # Reading the schema first makes SQLite reject a non-database file
        # before anything is written to it.
        self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        # A damaged page would answer some requests with errors later on:
        # refuse it now, before anything is written.
        try:
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as e:
            # Some damage stops the check itself ("malformed"): the same. Not
            # a busy, locked or failing disk, which is not damage to recover.
            if getattr(e, "sqlite_errorname", None) not in DAMAGE:
                raise
            problems = [str(e)]
        if problems != ["ok"]:
            detail = " ".join(" ".join(problems).split())[:200]
            raise StoreError(
                f"{self.path} is damaged ({detail}): see the README's "
                '"Durability" section to recover it'
            )
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this "
                f"jobworker understands ({SCHEMA_VERSION})"
            )
        if (
            version == 0
            and self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
        ):
            raise StoreError(f"{self.path} holds tables that are not jobworker's")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._connected()
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                MIGRATIONS[target - 1](self._db)
                self._db.execute(f"PRAGMA user_version = {target}")
        if 0 < version < SCHEMA_VERSION:
            # (An upgrade changed the file for good: said, so that whoever
            # goes back knows why the older server refuses it: operator
            # round 40.)
            log.info(
                "{path}: the job store was migrated from schema version "
                "{old} to {new}; an older jobworker cannot open it now (a copy "
                "made before the upgrade can)",
                path=self.path,
                old=version,
                new=SCHEMA_VERSION,
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # A COMMIT refused (disk full) leaves the transaction open: every
            # later statement would join it, and none would be written.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @property
    @_mapped("read the schema version")
    def version(self) -> int:
        """The schema version of the open database."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def afterFork(self) -> None:
        """
        In a process forked after the store was opened (twistd becoming a
        daemon: the plugin opens the store before the fork), connect again.
        SQLite's POSIX locks stay with the parent, so the inherited
        connection held none: an outside reader (a backup, the sqlite3
        shell) took itself for the last connection, checkpointed and
        deleted the WAL, and every later commit went to a deleted file.
        The C{flock} on the lock file is the child's too. Nothing to do in
        the process that opened it.
        """
        if os.getpid() == self._pid:
            return
        # (The parent, twistd's first process, waits for the daemon to
        # start and never touches the store again: this close, the last
        # one of this process, may checkpoint the WAL; that is all.)
        self._db.close()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0)
            self._db.row_factory = sqlite3.Row
            self._connected()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.path} again: {e}") from None
        self._pid = os.getpid()
        # (Its WAL and -shm as they are now: noted afresh at the next look.)
        self._companions = None
        self._walWhole = False

    def relink(self) -> str | None:
        """
        Is the file the server opened still at the store's path? One
        removed while the server ran (by hand, a cleanup script) went
        unnoticed: every write went to the removed file, and the next start
        found no store, and no job (fault round 27). It is written there
        again from the open database (SQLite's backup: every job, as
        committed), and the store goes on in it. A path that holds another
        file now is left alone (someone put it there).

        @return: what was found and done, in a line for the log; None if
            the file is where it was (or the path cannot be looked at).
        @raise StoreError: the file could not be written again.
        """
        if self._reconnect:
            self._connectAgain()
            return f"{self.path} is open again"
        try:
            now = _fileOf(self.path)
        except FileNotFoundError:
            now = None
        except OSError:
            return None
        if now == self._file:
            return self._walRelink(look=True)
        if now is not None:
            return (
                f"{self.path} is not the file the server opened (it was replaced "
                "while the server ran): the server goes on with the one it "
                "opened, removed from the folder, and a restart will read the "
                "file that is there now"
            )
        try:
            aside = self._writeAgain()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(
                f"{self.path} was removed while the server ran, and cannot be "
                f"written again: {e}"
            ) from None
        moved = f" ({', '.join(aside)} moved aside: .removed-store)" if aside else ""
        return (
            f"{self.path} was removed while the server ran: written again from "
            f"the open store, every job in it{moved}"
        )

    def _writeAgain(self) -> list[str]:
        """
        Write the store anew at its path from the open database (SQLite's
        backup: every job, as committed), beside it first, then renamed
        over it: the file at the path is never half written. The store
        goes on in the new file.

        @return: the companions (C{-wal}, C{-shm}) left at the path that
            were moved aside (C{.removed-store}).
        @raise OSError, sqlite3.Error: it could not be written (nothing at
            the path changed).
        """
        restoring = self.path + ".restoring"
        leftovers = (restoring, restoring + "-journal")
        try:
            for leftover in leftovers:
                if os.path.lexists(leftover):
                    os.unlink(leftover)
            os.close(os.open(restoring, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            copy = sqlite3.connect(restoring, isolation_level=None)
            try:
                self._db.backup(copy)
            finally:
                copy.close()
            os.rename(restoring, self.path)
            _syncFolder(self.path)
        except (OSError, sqlite3.Error):
            # (The copy's own journal too: one was left, fault round 36.)
            for leftover in leftovers:
                if os.path.lexists(leftover):
                    os.unlink(leftover)
            raise
        # The last connection's close checkpoints the old file's WAL and
        # removes it (and the -shm) by name: the copy starts without one.
        # Left there (another program has the old file open, or put a file
        # there), they are the old file's: moved aside, never read as the
        # copy's.
        self._db.close()
        self._reconnect = True
        aside = []
        for companion in (self.path + "-wal", self.path + "-shm"):
            if os.path.lexists(companion):
                os.replace(companion, companion + ".removed-store")
                aside.append(os.path.basename(companion))
        self._connectAgain()
        return aside

    def _walRelink(self, look: bool) -> str | None:
        """
        Is the store's WAL still at its path? One removed while the server
        ran (a cleanup of C{*-wal} files) went unnoticed: every commit went
        on into the removed file, and a crash lost every job since the last
        checkpoint, on a young store every job (fault round 33). The WAL is
        checkpointed into the store's file (every job, as committed), a file
        put at its path is moved aside (C{.replaced}: never read as this
        store's), and the store is opened again, with a WAL of its own.

        So too for its C{-shm}, where the WAL's locks and index live: with
        it removed, another program (a backup tool's C{wal_checkpoint
        (TRUNCATE)}) saw no reader nor writer and cut the WAL under the
        server, which wrote on past the cut, behind no header: a crash lost
        every job since (fault round 38). The server's connection still
        reads them all, and writes the store anew from them.

        @param look: the look's (L{relink}): the WAL is checkpointed too
            (L{_walCutOrCheckpointed}); not as the store is opened.
        @return: what was found and done, in a line for the log; None if
            the WAL and its C{-shm} are where they were.
        @raise StoreError: it could not be checkpointed or opened again.
        """
        seen: dict[str, tuple[int, int] | None] = {}
        for companion in (self.path + "-wal", self.path + "-shm"):
            try:
                seen[companion] = _fileOf(companion)
            except FileNotFoundError:
                seen[companion] = None
            except OSError:
                return None
        noted = self._companions or {}
        changed = [c for c in seen if noted.get(c) not in (None, seen[c])]
        if not changed:
            self._companions = seen  # (one not there before is noted)
            self._walCutOrCheckpointed(checkpoint=look)
            return None
        gone = changed[0]
        try:
            # Never checkpointed into the store's file: one cut short (a
            # full disk) while the only whole copy is the removed WAL left,
            # after a crash, a store no server opens, every job lost (fault
            # round 36). The store is written anew beside it instead.
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
            moved = ""
            if seen[gone] is not None and gone.endswith("-wal"):
                os.replace(gone, gone + ".replaced")
                moved = (
                    f" (the file put there moved aside: "
                    f"{os.path.basename(gone)}.replaced)"
                )
            self._writeAgain()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(
                f"{gone} was removed while the server ran, and the jobs it held "
                f"cannot be written to {self.path}: {e}"
            ) from None
        return (
            f"{gone} was removed while the server ran: every job written to "
            f"{self.path} anew, and a new {gone.rsplit('-', 1)[1]} made{moved}"
        )

    #: The WAL and C{-shm} seen beside the store (device, inode, by path;
    #: None before they are).
    _companions: dict[str, tuple[int, int] | None] | None = None

    #: Whether the WAL began with a WAL's header at the last look.
    _walWhole = False

    #: Why the WAL cannot be trusted (cut short in place), once found.
    _walCut: str | None = None

    def _walCutOrCheckpointed(self, checkpoint: bool) -> None:
        """
        At each look (every 5 s), the WAL in place: checkpointed into the
        store's file, so that it holds every job but those of the last
        seconds; unless it was cut short in place (C{truncate -s 0}: the
        same inode, which the look compared alone), and written on past the
        cut, its header gone (SQLite begins a WAL emptied by a checkpoint
        again with one): it is checkpointed no more (its zeros would be), at
        the look nor at the close (L{close}), and the store is at risk until
        a restart. A crash lost every job the WAL
        held, a young store's every one; a clean stop left a store no
        server opened (fault round 38).

        A WAL with no header is never checkpointed: one cut before the
        first look (in the server's first 5 s) had its zeros checkpointed
        into the store, every job lost (verifier 38); one left headless by
        a crash is SQLite's to ignore, until a write begins it again.

        @param checkpoint: checkpoint it too (the look's, not the store's
            opening: L{_walRelink}).
        @raise WalCut: it was cut short (now or before).
        """
        if self._walCut is None:
            wal = self.path + "-wal"
            try:
                with open(wal, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    head = f.read(4)
            except OSError:
                return
            whole = size >= 32 and head in WAL_MAGIC
            if size < 32:
                # Emptied: by another program's TRUNCATE checkpoint through
                # the -shm (sound: a backup tool's; session review 38), or
                # cut short in place. The next write tells: a WAL begun
                # again has its header, one cut is written on past a hole,
                # headless. Nothing to checkpoint meanwhile.
                return
            if self._walWhole and not whole:  # (SQLite never does that)
                self._db.execute("PRAGMA wal_autocheckpoint = 0")
                self._walCut = (
                    f"{wal} was cut short while the server ran (another program "
                    "truncated or wrote over it): it is not checkpointed into "
                    f"{self.path} any more, which holds the jobs up to a few "
                    "seconds before; restart the server (the jobs since are "
                    "lost)"
                )
            else:
                self._walWhole = whole
                if whole and checkpoint:
                    try:
                        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:
                        pass  # (busy, or the disk: the next look tries again)
                return
        raise WalCut(self._walCut)

    def _connectAgain(self) -> None:
        """
        Open the store's file again (after L{relink}); until it opens,
        every use of the store fails (a 503), and the next L{relink} tries.

        @raise StoreError: it cannot be opened now.
        """
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=0)
            db.row_factory = sqlite3.Row
            self._db = db
            db.execute("PRAGMA journal_mode = WAL")
            self._connected()
            self._file = _fileOf(self.path)
            self._companions = None
            self._walWhole = False
            self._walRelink(look=False)  # (notes the new ones)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open {self.path} again: {e}") from None
        self._reconnect = False

    def _connected(self) -> None:
        """The settings of each connection (WAL mode is the file's own)."""
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")

    def close(self) -> None:
        """Close the database and let another server have the state dir."""
        if self._walCut is not None:
            self._closeWithoutCheckpoint()
        else:
            self._db.close()
        self._unlock()

    def _closeWithoutCheckpoint(self) -> None:
        """
        Close, keeping the store's file as it is: SQLite's close would
        checkpoint a WAL cut short (L{_walCutOrCheckpointed}) into it. A copy
        of it is put back over it once the connection is closed, and the
        WAL moved aside (C{.cut}).
        """
        kept = self.path + ".restoring"
        try:
            shutil.copy2(self.path, kept)  # (its mode too: 0600)
            os.replace(self.path + "-wal", self.path + "-wal.cut")
        except OSError as e:
            log.error("the store's file is not kept from a cut WAL: {e}", e=e)
            self._db.close()
            return
        self._db.close()
        try:
            os.replace(kept, self.path)
            _syncFolder(self.path)
        except OSError as e:
            log.error("the store's file is not kept from a cut WAL: {e}", e=e)

    def _refuseWhileMarksHeld(self, what: str, write: bool) -> None:
        """
        After SQLite found the WAL read marks held by another program (it
        waited 10 s for them on the server's thread, then said
        C{SQLITE_PROTOCOL}), each call looks at those locks first (one
        C{fcntl}) and is refused at once while they stay held (every call
        waited 10 s: fault round 32).

        @raise StoreError: they are still held.
        """
        if not self._marksHeld:
            return
        if readMarksHeld(self.path + "-shm"):
            held = StoreError(
                f"cannot {what}: another program holds the store's WAL read "
                "marks (an sqlite3 stopped in a recovery or a checkpoint?)",
                "SQLITE_PROTOCOL",
            )
            if write:
                self._refusal = held
            raise held
        self._marksHeld = False

    def _failed(self, message: str, error: sqlite3.Error) -> StoreError:
        """The L{StoreError} of C{error}, noting a read mark held
        (L{_refuseWhileMarksHeld})."""
        failure = StoreError.of(message, error)
        name = failure.errorName or ""
        if name == "SQLITE_PROTOCOL":
            self._marksHeld = True
        elif name.startswith("SQLITE_IOERR"):
            self._ioFailed = True
        elif name in DAMAGE and self._ioFailed:
            # SQLite reads the pages a failed write left behind as damage
            # ("malformed"): the disk failed, the store may be whole (fault
            # round 33: an operator was sent to rebuild a sound store).
            failure = StoreError(
                f"{message}: {error} (after an I/O error of the disk)",
                "SQLITE_IOERR",
            )
        return failure

    #: An I/O error was met, and no write has succeeded since (L{_failed}).
    _ioFailed = False

    def insert(self, record: JobRecord) -> None:
        """
        Add a new job; sets C{record.seq}.

        @raise StoreError: if it cannot be written (disk full, I/O error).
        """
        self._refuseWhileMarksHeld(f"record job {record.id}", True)
        try:
            if not record.labels:
                cursor = self._db.execute(INSERT, toRow(record))
            else:
                # The record and its labels' index rows, all or none.
                with self._transaction():
                    cursor = self._db.execute(INSERT, toRow(record))
                    self._db.executemany(
                        INSERT_LABEL,
                        [(k, v, cursor.lastrowid) for k, v in record.labels.items()],
                    )
        except sqlite3.Error as e:
            self._refusal = error = self._failed(f"cannot record job {record.id}", e)
            raise error from None
        self._refusal = None
        self._ioFailed = False
        record.seq = cursor.lastrowid

    def update(self, record: JobRecord) -> None:
        """
        Write a job's changed state.

        @raise StoreError: if it cannot be written (disk full, I/O error).
        """
        self._refuseWhileMarksHeld(f"record job {record.id}", True)
        try:
            self._db.execute(UPDATE, (*toRow(record)[1:], record.id))
        except sqlite3.Error as e:
            self._refusal = error = self._failed(f"cannot record job {record.id}", e)
            raise error from None
        self._refusal = None
        self._ioFailed = False

    @property
    def refusal(self) -> StoreError | None:
        """
        Why the store refuses writes: the error of its last write, if that
        failed and none has succeeded since (C{/healthz}); None if it takes
        them. Known from the writes made, at no cost: see L{probeWrite}.
        """
        return self._refusal

    @_mapped("write to the store", write=True)
    def probeWrite(self) -> None:
        """
        Write what changes nothing (the schema version, again: a page in the
        WAL all the same), to learn whether the store takes writes again
        while it refuses them and no other write is made (L{refusal}).
        """
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @_mapped("read a job")
    def get(self, jobId: str) -> JobRecord | None:
        """
        The job with this id, or None.

        @raise RecordDamaged: its record does not parse.
        """
        row = self._db.execute(SELECT + " WHERE id = ?", (jobId,)).fetchone()
        if row is None:
            return None
        record = fromRow(row)
        if isinstance(record, DamagedRecord):
            raise RecordDamaged(record)
        return record

    @_mapped("list jobs")
    def page(
        self,
        selection: JobFilter = ANY_JOB,
        limit: int = 100,
        before: int | None = None,
        maxBytes: int | None = None,
    ) -> tuple[list[JobRecord], int | None]:
        """
        Jobs newest first, at most C{limit}, older than sequence C{before},
        those C{selection} picks; with C{maxBytes}, no more once that much
        of their stored text is read (at least one), and the cursor goes on
        after the last (a page of 1,000 large records was read whole to send
        the 4 MiB an answer holds: attacker round 12).

        @return: the records and the sequence to pass as C{before} for the
            next page (None when this is the last page). Keyset paging: jobs
            created meanwhile never shift a page. With two filters or more
            a page searches L{SEARCH_SPAN} jobs at most: it may hold fewer
            than C{limit} records, even none, and a cursor all the same.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1 to {MAX_PAGE}")
        source, order, where, params = selection.query()
        if before is not None:
            where.append(f"{order} < ?")
            params.append(before)
        floor = None
        if selection.conditions > 1:
            top = before if before is not None else self._newestSeq() + 1
            if top > SEARCH_SPAN:
                floor = top - SEARCH_SPAN
                where.append(f"{order} >= ?")
                params.append(floor)
        query = SELECT_FROM + source
        if where:
            query += " WHERE " + " AND ".join(where)
        query += f" ORDER BY {order} DESC LIMIT ?"
        params.append(limit + 1)
        rows = self._db.execute(query, params)
        records: list[JobRecord] = []
        read = 0
        for row in rows:
            if len(records) == limit:
                return records, records[-1].seq  # (one more is there)
            if maxBytes is not None and records and read > maxBytes:
                return records, records[-1].seq
            records.append(fromRow(row))
            if maxBytes is not None:
                read += sum(len(v) for v in tuple(row) if isinstance(v, str))
        if floor is not None and self._oldestSeq() < floor:
            return records, floor  # (the span searched; older jobs remain)
        return records, None

    def _newestSeq(self) -> int:
        """The newest job's sequence number (0: none)."""
        return int(self._db.execute("SELECT max(seq) FROM jobs").fetchone()[0] or 0)

    def _oldestSeq(self) -> int:
        """The oldest job's sequence number (0: none)."""
        return int(self._db.execute("SELECT min(seq) FROM jobs").fetchone()[0] or 0)

    @_mapped("list ended jobs")
    def endedMatching(
        self, selection: JobFilter, limit: int, after: int | None = None
    ) -> tuple[list[str], int | None]:
        """
        Ids of (at most C{limit}) ended jobs C{selection} picks, oldest
        first, newer than sequence C{after}; and the sequence to pass as
        C{after} to go on (None: none is left). A search covers
        L{SEARCH_SPAN} sequence numbers at most (the filters but one are
        tested job by job, as a page's are): it may find fewer than
        C{limit}, even none, and give a sequence to go on from all the same.
        """
        if limit < 1:
            raise ValueError("limit must be 1 or more")
        source, order, where, params = selection.query()
        where.append("jobs.ended_at IS NOT NULL")
        floor = after if after is not None else self._oldestSeq() - 1
        where.append(f"{order} > ?")
        params.append(floor)
        ceiling = floor + SEARCH_SPAN
        bounded = self._newestSeq() > ceiling
        if bounded:
            where.append(f"{order} <= ?")
            params.append(ceiling)
        query = (
            f"SELECT {order} AS seq, jobs.id FROM {source} "
            f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
        )
        rows = self._db.execute(query, [*params, limit + 1]).fetchall()
        ids = [row["id"] for row in rows[:limit]]
        if len(rows) > limit:
            return ids, int(rows[limit - 1]["seq"])
        return ids, ceiling if bounded else None

    @_mapped("list running jobs")
    def running(self) -> list[JobRecord]:
        """
        Every job recorded as RUNNING or PENDING (not finished), but queued
        ones; a damaged one as its L{DamagedRecord}.
        """
        rows = self._db.execute(
            SELECT + " WHERE status IN (?, ?) AND queued = 0 ORDER BY seq",
            (JobStatus.RUNNING.value, JobStatus.PENDING.value),
        ).fetchall()
        return [fromRow(row) for row in rows]

    @_mapped("list queued jobs")
    def queued(self) -> list[QueuedEntry]:
        """
        The jobs waiting in jobworker's queue, in order: only what it needs.
        A damaged list of jobs to wait for is none: the job's whole record
        is read at its turn, and that fails it (its record is damaged).
        """
        rows = self._db.execute(
            "SELECT id, owner, priority, seq, run_as, after_ids, after_ok_ids "
            "FROM jobs WHERE queued = 1 ORDER BY seq"
        ).fetchall()
        return [
            QueuedEntry(
                row["id"],
                row["owner"],
                row["priority"],
                row["seq"],
                row["run_as"],
                _jobIds(row["after_ids"]),
                _jobIds(row["after_ok_ids"]),
            )
            for row in rows
        ]

    @_mapped("list ended jobs")
    def endedBefore(self, when: float, limit: int = 1000) -> list[str]:
        """Ids of (at most C{limit}) jobs that ended before C{when}."""
        rows = self._db.execute(
            "SELECT id FROM jobs WHERE ended_at IS NOT NULL AND ended_at < ? "
            "ORDER BY ended_at LIMIT ?",
            (when, limit),
        ).fetchall()
        return [row["id"] for row in rows]

    @_mapped("delete a job", write=True)
    def delete(self, jobId: str) -> None:
        """Remove a job's record (read or not: a damaged one too)."""
        self._db.execute("DELETE FROM jobs WHERE id = ?", (jobId,))

    @_mapped("delete jobs", write=True)
    def deleteMany(self, jobIds: list[str]) -> None:
        """Remove these jobs' records, all or none (one transaction)."""
        with self._transaction():
            self._db.executemany(
                "DELETE FROM jobs WHERE id = ?", [(jobId,) for jobId in jobIds]
            )

    @_mapped("look jobs up")
    def existing(self, jobIds: list[str]) -> set[str]:
        """Those of C{jobIds} (a few hundred at most) that have a record."""
        marks = ",".join("?" * len(jobIds))
        rows = self._db.execute(
            f"SELECT id FROM jobs WHERE id IN ({marks})", jobIds
        ).fetchall()
        return {row["id"] for row in rows}

    @_mapped("count jobs")
    def countByStatus(self) -> dict[str, int]:
        """How many jobs are stored in each status."""
        rows = self._db.execute(
            "SELECT status, count(*) AS n FROM jobs GROUP BY status"
        ).fetchall()
        return {row["status"]: row["n"] for row in rows}

    @_mapped("count jobs")
    def count(self) -> int:
        """How many jobs are stored."""
        return int(self._db.execute("SELECT count(*) FROM jobs").fetchone()[0])


def _jobIds(text: str | None) -> list[str]:
    """A stored list of job ids; none if there is none, or it is damaged."""
    if not text:
        return []
    try:
        ids = json.loads(text)
    except (ValueError, TypeError):
        return []
    if not isinstance(ids, list):
        return []
    return [jobId for jobId in ids if isinstance(jobId, str)]
