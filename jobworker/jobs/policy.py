"""Server-wide rules for jobs, whatever runs them: a pure type."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorProcess, IReactorTime

from ..errors import BadRequest
from ..units import sizeText
from .identity import Identities
from .limits import IO_RATES, MIN_IO_BPS, Limits

#: Default size of each private tmpfs of a sandboxed job (--tmp-size).
DEFAULT_TMP_SIZE = 1 << 30


class JobReactor(IReactorProcess, IReactorTime):
    """What the manager needs of a reactor: processes and time."""


#: Defaults of C{--max-queued} and C{--max-queued-per-user}.
DEFAULT_MAX_QUEUED = 100_000
DEFAULT_MAX_QUEUED_PER_USER = 10_000

#: Default of C{--max-stdin-bytes}: 1 GiB.
DEFAULT_MAX_STDIN = 1 << 30


@dataclass(frozen=True)
class JobPolicy:
    """
    Server-wide rules for jobs: default and maximum limits, timeouts,
    isolation, who jobs run as, and how many may run at once.
    """

    defaults: Limits = field(default_factory=Limits)
    maxima: Limits = field(default_factory=Limits)
    #: The lowest disk rate (C{io_read_bps}, C{io_write_bps}) a job may ask
    #: for (C{--min-io-bps}).
    minIoBps: int = MIN_IO_BPS
    #: Whether jobs may ask for disk rates (C{--allow-io-bps}): a throttled
    #: read holds the pages it reads, and every read queued behind it, for
    #: every process on the machine; a throttled write holds every C{sync}
    #: of its filesystem; both without bound.
    allowIo: bool = False
    defaultTimeout: float | None = None
    isolate: frozenset[str] = frozenset()
    maxRunning: int | None = None
    #: At most this many running (or queued) jobs per user.
    maxRunningPerUser: int | None = None
    #: Past these, a job that would wait in the queue is refused (429).
    maxQueued: int = DEFAULT_MAX_QUEUED
    maxQueuedPerUser: int = DEFAULT_MAX_QUEUED_PER_USER
    #: Jobs a user may create per second, on average (a burst of twice
    #: as many at once); None: no limit.
    createRate: float | None = None
    identities: Identities = field(default_factory=Identities)
    tmpSize: int = DEFAULT_TMP_SIZE
    #: The most bytes one job's stdin may take (C{"stdin": true} jobs).
    maxStdinBytes: int = DEFAULT_MAX_STDIN

    @property
    def capsRunning(self) -> bool:
        """
        Whether a running cap is set (C{--max-running}, C{--max-running-per-user}):
        only then does the queue decide when a job may be handed to an
        executor that can hold jobs itself (Slurm).
        """
        return self.maxRunning is not None or self.maxRunningPerUser is not None

    def checkMaxima(self, requested: Limits) -> None:
        """@raise BadRequest: a requested limit over the server's maximum."""
        for name, value, maximum in requested.over(self.maxima):
            said = ""
            if name == "memory_bytes" or name.endswith("_bps"):
                # (In bytes alone, a 1G asked read 1073741824: new user
                # round 40.)
                said = f" ({sizeText(value)} over {sizeText(maximum)})"
            raise BadRequest(
                f"limits.{name} {value} is over this server's maximum {maximum}{said}"
            )

    def checkFloor(self, requested: Limits) -> None:
        """
        @raise BadRequest: a requested disk rate under the server's minimum
            (C{--min-io-bps}), or any where none is allowed (checked once
            the rates are known to be available here, so that the refusal
            names the real reason).
        """
        for name in IO_RATES:
            value = getattr(requested, name)
            if value is None:
                continue
            if not self.allowIo:
                # A job that had the kernel read ahead a lot, then a page of
                # a file everyone reads, held the page behind all of it (3 s
                # at 32 MiB/s for 96 MiB queued); one writing 192 MiB at the
                # floor held root's sync 4.5 s; no floor bounds either (late
                # reviews 35).
                raise BadRequest(
                    f"limits.{name} is not allowed on this server: a throttled "
                    "read holds the pages it reads, and those of every read "
                    "queued behind it, for every process on the machine, and a "
                    "throttled write every sync of its filesystem (an operator "
                    "may allow disk rates: --allow-io-bps)"
                )
            if value < self.minIoBps:
                raise BadRequest(
                    f"limits.{name} {value} is under this server's minimum "
                    f"{self.minIoBps} (--min-io-bps): a read throttled slower "
                    "holds the pages it reads locked for every process on the "
                    "machine"
                )
