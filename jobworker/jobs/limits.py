"""Resource limits of one job: a pure type, whatever enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields


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
        return asdict(self)

    def given(self) -> Iterator[tuple[str, int]]:
        """The limits that are set, by name."""
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                yield field.name, value

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
                field.name: getattr(self, field.name)
                if getattr(self, field.name) is not None
                else getattr(defaults, field.name)
                for field in fields(self)
            }
        )
