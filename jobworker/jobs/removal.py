"""Deleted jobs' output folders, removed off the reactor's thread."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from .folders import removeTree

#: What a deleted job's output folder is renamed to, in the folder it was
#: in, until it is removed: C{.removing-<job id>}.
ASIDE = ".removing-"


class AsideRemoval:
    """
    Output folders of deleted jobs, renamed aside at once and removed by a
    daemon thread of their own, one after the other.

    A folder of 150,000 files held the reactor while it went, every
    request and every job's pipes with it (Slurm user round 38: a Slurm
    job's output folder is its account's to fill). The rename is one
    system call on the reactor's thread: from it on, the job's folder is
    gone for every request. The thread is never joined: a stop does not
    wait for it, and what it had not removed yet is found by L{sweep} at
    the next start.

    @ivar removed: called on the reactor's thread after each folder is
        removed (the disk reserve made again, if it was given up).
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.removed: Callable[[], None] = lambda: None

    def remove(self, path: str) -> None:
        """
        Remove the folder C{path} (already gone is fine): renamed aside now,
        removed by the thread. If it cannot be renamed aside, or the thread
        cannot be started, it is removed here and now, as before.

        @raise OSError: it could not be removed here and now.
        """
        aside = os.path.join(os.path.dirname(path), ASIDE + os.path.basename(path))
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        except OSError:
            removeTree(path)
            return
        if not self._handOver(aside):
            removeTree(aside)

    def sweep(self, folder: str) -> int:
        """
        Hand the thread what a stop left aside in C{folder}; how many.
        """
        try:
            names = [n for n in os.listdir(folder) if n.startswith(ASIDE)]
        except OSError:
            return 0
        for name in names:
            path = os.path.join(folder, name)
            if not self._handOver(path):
                try:
                    removeTree(path)
                except OSError as e:
                    self._failed(path, e)
        return len(names)

    def _handOver(self, path: str) -> bool:
        """Queue C{path} for the thread, started if it is not; whether it was."""
        if self._thread is None:
            thread = threading.Thread(
                target=self._work, name="jobworker-output-removal", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:
                return False  # (C{pids.max} reached: next time, perhaps)
            self._thread = thread
        self._queue.put(path)
        return True

    def _work(self) -> None:
        """The thread: remove each folder handed over, for good."""
        while True:
            path = self._queue.get()
            try:
                removeTree(path)
            except Exception as e:  # (any: the thread must go on: review 39)
                self._reactor.callFromThread(self._failed, path, e)
            else:
                self._reactor.callFromThread(self.removed)

    def _failed(self, path: str, e: Exception) -> None:
        """Say what could not be removed (the next start tries again)."""
        self.log.error(
            "cannot remove deleted output {path}: {error}",
            path=path,
            error=getattr(e, "strerror", None) or repr(e),
        )
