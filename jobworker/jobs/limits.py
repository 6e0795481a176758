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


#: Default of C{--min-io-bps}: the lowest disk rate a job may be limited to.
#: A read throttled far below it holds the pages it reads locked while it
#: waits, for every process that touches them (one job at 1 byte/s held a
#: page of /etc/passwd, and every user lookup on the machine with it; its
#: own pipe's lock, in a page fault, held the server: attacker round 35).
#: At 1 MiB/s a default 128 KiB read-ahead waits an eighth of a second.
MIN_IO_BPS = 1 << 20

#: The limits that are disk rates (L{MIN_IO_BPS}).
IO_RATES = ("io_read_bps", "io_write_bps")

#: The limits' names, in their order (the fields of L{Limits}: looked up
#: once, not per job).
NAMES: tuple[str, ...] = tuple(field.name for field in fields(Limits))
