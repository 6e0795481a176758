"""One output file of a Slurm job, written on a node and read as it grows."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

from ...jobs.order import OrderLog
from ...jobs.spool import Waiters, outputSize


class SlurmOutput:
    """
    One output file of a Slurm job, written by the node; read as it grows.
    Its size is read from the file; readers waiting for more are woken by
    the executor's file tick.
    """

    order: OrderLog | None = None

    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False
        self._final: int | None = None
        self._waiters = Waiters()

    @property
    def size(self) -> int:
        if self._final is not None:
            return self._final
        try:
            return outputSize(self.path)
        except OSError:
            return 0

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    def whenGrown(self) -> Deferred[None]:
        if self.closed:
            return succeed(None)
        return self._waiters.wait()

    def checkGrowth(self) -> None:
        """Wake the readers (they read up to the current size)."""
        self._waiters.wake()

    def close(self) -> None:
        """The job has ended: the file will not grow."""
        self._final = self.size
        self.closed = True
        self.checkGrowth()
