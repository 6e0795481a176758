"""Resource limits of one job: a pure type, whatever enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job; None means unlimited."""

    memory_bytes: int | None = None
    cpu_millicores: int | None = None
    pids: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None

    def toJSON(self) -> dict[str, int | None]:
        """The C{limits} object of the API."""
        return {name: getattr(self, name) for name in NAMES}

    def given(self) -> Iterator[tuple[str, int]]:
        """The limits that are set, by name."""
        for name in NAMES:
            value = getattr(self, name)
            if value is not None:
                yield name, value

    def over(self, other: Limits) -> Iterator[tuple[str, int, int]]:
        """The limits set here that exceed the same limit set in C{other}."""
        for name, value in self.given():
            maximum = getattr(other, name)
            if maximum is not None and value > maximum:
                yield name, value, maximum

    def withDefaults(self, defaults: Limits) -> Limits:
        """These limits, with C{defaults} filling what is unset."""
        return Limits(
            **{
                name: getattr(self, name)
                if getattr(self, name) is not None
                else getattr(defaults, name)
                for name in NAMES
            }
        )


#: The least of C{--min-io-bps}'s default: the lowest disk rate a job may
#: be limited to. A read throttled far below it holds the pages it reads
#: locked while it waits, for every process that touches them (one job at 1
#: byte/s held a page of /etc/passwd, and every user lookup on the machine
#: with it; its own pipe's lock, in a page fault, held the server: attacker
#: round 35).
MIN_IO_BPS = 1 << 20

#: How many of its device's read-ahead windows a throttled job must be let
#: read a second (L{ioRateFloor}): a window's pages are locked until the
#: whole window is read, a quarter of a second for one window then (a 1
#: MiB/s floor held them 5-8 s behind an 8 MiB read-ahead: attacker round
#: 35). What a job queues ahead of a page waits too, without bound: disk
#: rates are allowed only by the operator (C{--allow-io-bps}).
WINDOWS_PER_SECOND = 4


def ioRateFloor(readAhead: int | None) -> int:
    """
    The default lowest disk rate (bytes/s) for a device that reads
    C{readAhead} bytes ahead (None: not known): L{WINDOWS_PER_SECOND}
    windows a second, and at least L{MIN_IO_BPS}.
    """
    return max(MIN_IO_BPS, WINDOWS_PER_SECOND * (readAhead or 0))


#: The limits that are disk rates (L{MIN_IO_BPS}).
IO_RATES = ("io_read_bps", "io_write_bps")

#: The limits' names, in their order (the fields of L{Limits}: looked up
#: once, not per job).
NAMES: tuple[str, ...] = tuple(field.name for field in fields(Limits))
