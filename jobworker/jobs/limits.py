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


#: The limits' names, in their order (the fields of L{Limits}: looked up
#: once, not per job).
NAMES: tuple[str, ...] = tuple(field.name for field in fields(Limits))
