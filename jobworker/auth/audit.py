"""The audit log: one JSON line per security-relevant event; never a secret."""

from __future__ import annotations

import json
import os
import stat
from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..jobs.records import rfc3339


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
        self._file: IO[str] | None = None
        if path is not None:
            self._file = self._open(path)

    def _open(self, path: str) -> IO[str]:
        """The file at C{path}, for appending, made private if it was not."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        except OSError:
            os.close(fd)
            raise
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
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        """
        Open the file again by its name (SIGHUP, after logrotate moved it):
        the next lines go to a new file there. If that cannot be opened,
        the old file is kept.
        """
        if self._path is None or self._file is None:
            return
        try:
            new = self._open(self._path)
        except OSError as e:
            self.log.error(
                "cannot reopen the audit log {path}: {error}; still writing to "
                "the file it was",
                path=self._path,
                error=e.strerror,
            )
            return
        old, self._file = self._file, new
        old.close()

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
        if self._file is not None:
            try:
                self._file.write(json.dumps(entry, ensure_ascii=True) + "\n")
            except OSError as e:
                self.log.error("cannot write the audit log: {error}", error=e.strerror)
            return
        self.log.info(
            "audit {event} {result} user={user} client={client}",
            event=event,
            result=result,
            user=user,
            client=client,
            audit=entry,
        )

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
