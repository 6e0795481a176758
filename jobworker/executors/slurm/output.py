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

    #: The largest size read from the file: a file removed while the job
    #: runs (the job's own account may) read as empty, its record's bytes
    #: 0 and a later read empty too, as if that were all (Slurm user round
    #: 33). What was seen stays; a read of it after the removal fails.
    _seen = 0

    @property
    def size(self) -> int:
        if self._final is not None:
            return self._final
        try:
            self._seen = max(self._seen, outputSize(self.path))
        except OSError:
            pass
        return self._seen

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
