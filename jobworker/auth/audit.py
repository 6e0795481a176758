"""The audit log: one JSON line per security-relevant event; never a secret."""

from __future__ import annotations

import json
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..jobs.records import rfc3339
from ..jobs.spool import OutputTrouble
from ..peers import clientKey

#: How often L{AuditLog.recordSparsely} writes one event of one user, at most.
SPARSE_EVERY = 60.0
#: How many (event, user, client) it remembers: past them, the one written
#: longest ago is forgotten (its count written first, if it has one).
MAX_SPARSE = 10000


class AuditLog:
    """
    Append events to C{path} as JSON lines (mode 0600); without a file, to
    the server's log. Each line has C{time}, C{event}, C{user}, C{client},
    C{result} and event fields. Passwords and Authorization headers are
    never passed in, so they can never be written.
    """

    log = Logger()

    def __init__(self, path: str | None, clock: IReactorTime) -> None:
        self._clock = clock
        self._path = path
        self._fd: int | None = None
        #: The file ends in the middle of a line (a write the disk cut
        #: short): the next line starts with an end of line.
        self._cut = False
        #: L{recordSparsely}'s (event, user, client as counted, job): when
        #: last written, how many left out since, and the address and result
        #: last written; the one written longest ago first.
        self._sparse: OrderedDict[
            tuple[str, str | None, str, str | None], tuple[float, int, str, str]
        ] = OrderedDict()
        #: When an event last could not be written, and why (C{/healthz}
        #: says so for 30 s; it said C{ok} while every event went to the
        #: server's log alone: operator round 40).
        self.trouble = OutputTrouble(clock)
        #: Told each event that could not be written (the metric).
        self.failed: Callable[[], object] = lambda: None
        if path is not None:
            self._fd, self._cut = self._open(path)

    def _open(self, path: str) -> tuple[int, bool]:
        """
        The file at C{path}, for appending (made private if it was not),
        and whether it ends in the middle of a line.
        """
        # Never blocking (a FIFO, a log shipper's, that nobody reads: the
        # server hung in write(2) for good, its shutdown included): what
        # the file does not take goes to the server's log (L{_write}).
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, os.O_RDWR | flags, 0o600)
        except PermissionError:  # (root squashed on NFS, say): no look back
            fd = os.open(path, os.O_WRONLY | flags, 0o600)
        try:
            status = os.fstat(fd)
            try:
                last = os.pread(fd, 1, status.st_size - 1) if status.st_size else b"\n"
            except OSError:
                last = b"\n"
            cut = last != b"\n"
        except OSError:
            os.close(fd)
            raise
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o007:
            # Others never read it (a group may: logrotate's "create 0640
            # root adm" is an operator's choice).
            try:
                os.fchmod(fd, mode & ~0o007)
                done = f"made {mode & ~0o007:04o}"
            except OSError as e:
                done = f"left so: {e.strerror}"
            self.log.warn(
                "audit log {path} was mode {mode}: {done}",
                path=path,
                mode=f"{mode:04o}",
                done=done,
            )
        return fd, cut

    def reopen(self) -> str | None:
        """
        Open the file again by its name (SIGHUP, after logrotate moved it):
        the next lines go to a new file there. If that cannot be opened,
        the old file is kept.

        @return: why it could not be opened, or None.
        """
        if self._path is None or self._fd is None:
            return None
        try:
            new, cut = self._open(self._path)
        except OSError as e:
            self.log.error(
                "cannot reopen the audit log {path}: {error}; still writing to "
                "the file it was",
                path=self._path,
                error=e.strerror,
            )
            return f"cannot open {self._path}: {e.strerror}"
        old, self._fd, self._cut = self._fd, new, cut
        try:
            os.close(old)
        except OSError:
            pass  # (nothing is buffered: every line was written whole or not)
        return None

    def recordSparsely(
        self,
        event: str,
        user: str | None,
        client: str,
        result: str,
        perJob: bool = True,
        **fields: Any,
    ) -> None:
        """
        L{record}, at most once every L{SPARSE_EVERY} seconds for one
        C{event} of one C{user} from one client (as the throttles count
        clients, L{clientKey}: all of loopback is one, an IPv6 client its
        /64; 200 loopback addresses wrote 200 lines): the next line written
        says how many were left out in between (C{left_out}), or
        L{reportLeftOut}'s once they stopped. For events a request that
        changes nothing earns (a refusal, a stop of a job already being
        stopped): a loop of them wrote 2,000 lines a second. An event about
        a job (a C{job} field) is counted for that job alone, and the line
        that says how many were left out names it and the result written
        (an Admin's KILL of another job was merged with the first's, and
        summed up as "refused", the job unnamed: code review 35); not
        C{perJob}, the job is named but not counted apart (a refusal, whose
        job ids are the sender's words: one each would be a line each).
        """
        job = fields.get("job") if perJob else None
        key = (event, user, clientKey(client), job)
        now = self._clock.seconds()
        last, leftOut, _, _ = self._sparse.get(key, (None, 0, client, result))
        if last is not None and 0 <= now - last < SPARSE_EVERY:
            self._sparse[key] = (last, leftOut + 1, client, result)
            return
        self._sparse[key] = (now, 0, client, result)
        self._sparse.move_to_end(key)
        while len(self._sparse) > MAX_SPARSE:
            old, (_, oldLeftOut, oldClient, oldResult) = self._sparse.popitem(
                last=False
            )
            if oldLeftOut:
                self._recordLeftOut(old, oldClient, oldResult, oldLeftOut)
        if leftOut:
            fields["left_out"] = leftOut
        self.record(event, user, client, result, **fields)

    def reportLeftOut(self) -> None:
        """
        A line for each event, user and client that had lines left out
        (L{recordSparsely}) and none since for L{SPARSE_EVERY}: a burst that
        stopped is counted too (call once a minute).
        """
        now = self._clock.seconds()
        for key, (last, leftOut, client, result) in list(self._sparse.items()):
            if leftOut and not 0 <= now - last < SPARSE_EVERY:
                self._sparse[key] = (now, 0, client, result)
                self._sparse.move_to_end(key)
                self._recordLeftOut(key, client, result, leftOut)

    def _recordLeftOut(
        self,
        key: tuple[str, str | None, str, str | None],
        client: str,
        result: str,
        leftOut: int,
    ) -> None:
        """The line of the C{leftOut} lines of C{key} left out (the last of
        them from C{client}, with C{result})."""
        event, user, _, job = key
        fields: dict[str, Any] = {"left_out": leftOut}
        if job is not None:
            fields["job"] = job
        self.record(event, user, client, result, **fields)

    def record(
        self, event: str, user: str | None, client: str, result: str, **fields: Any
    ) -> None:
        """Write one event."""
        entry = {
            "time": rfc3339(self._clock.seconds()),
            "event": event,
            "user": user,
            "client": client,
            "result": result,
            **fields,
        }
        if self._fd is not None:
            self._write(entry)
            return
        self.log.info(
            "audit {event} {result} user={user} client={client}",
            event=event,
            result=result,
            user=user,
            client=client,
            audit=entry,
        )

    def _write(self, entry: dict[str, Any]) -> None:
        """
        One line, in one write(2) with nothing buffered. An event the file
        does not take whole (a full disk) is written whole to the server's
        log instead, and a line cut short is ended before the next one.
        """
        assert self._fd is not None
        line = (json.dumps(entry, ensure_ascii=True) + "\n").encode("ascii")
        data = b"\n" + line if self._cut else line
        try:
            written = os.write(self._fd, data)
        except OSError as e:
            written, error = 0, e.strerror
        else:
            if written == len(data):
                self._cut = False
                return
            error = "the disk took part of the line"
        if written:
            self._cut = True
        self.trouble.failed(error or "write failed")
        self.failed()
        self.log.error(
            "cannot write the audit log: {error}; the event: {audit}",
            error=error,
            audit=entry,
        )

    def troubled(self) -> str | None:
        """Why events could not be written within the last 30 s, if so."""
        return self.trouble.recent(prefix="audit events are not being written: ")

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
