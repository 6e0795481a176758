"""
Where in a Slurm cluster a job asks to run (C{"slurm"} of C{POST /jobs}),
and what the server allows: pure, raising L{BadRequest}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import BadRequest


def positiveInteger(value: object, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 64.0 is the integer 64
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{what} must be a positive integer")
    if value > 1 << 62:
        raise BadRequest(f"{what} is too large")
    return value


#: A Slurm name or specification (partition, account, QOS, GRES, constraint):
#: what Slurm's own syntax uses, no whitespace or control characters.
_SLURM_TEXT = re.compile(r"[A-Za-z0-9_.:,=+\-/&|!*()\[\]@%]{1,256}")
_SLURM_TEXTS = ("partition", "account", "qos", "gres", "constraint")
_SLURM_COUNTS = ("nodes", "ntasks")


@dataclass(frozen=True)
class SlurmRequest:
    """
    Where in the Slurm cluster a job asks to run (C{"slurm"} of C{POST
    /jobs}); each given field goes to sbatch as is, once the server allows
    it (L{SlurmAllowances}).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    constraint: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    exclusive: bool = False

    def given(self) -> dict[str, str | int | bool]:
        """The fields the request set (for the audit log)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) not in (None, False)
        }

    @classmethod
    def fromGiven(cls, given: Mapping[str, str | int | bool]) -> SlurmRequest:
        """The request whose L{given} fields are C{given} (a stored record's)."""

        def text(name: str) -> str | None:
            value = given.get(name)
            return value if isinstance(value, str) else None

        def count(name: str) -> int | None:
            value = given.get(name)
            return value if type(value) is int else None

        return cls(
            partition=text("partition"),
            account=text("account"),
            qos=text("qos"),
            gres=text("gres"),
            constraint=text("constraint"),
            nodes=count("nodes"),
            ntasks=count("ntasks"),
            exclusive=given.get("exclusive") is True,
        )


@dataclass(frozen=True)
class SlurmAllowances:
    """
    What the server lets jobs ask of Slurm (C{--slurm-allow-*},
    C{--slurm-max-*}): exact values for the names, maxima for the counts.
    Nothing is allowed unless the operator says so.
    """

    partition: frozenset[str] = frozenset()
    account: frozenset[str] = frozenset()
    qos: frozenset[str] = frozenset()
    gres: frozenset[str] = frozenset()
    constraint: frozenset[str] = frozenset()
    nodes: int = 1
    ntasks: int = 1
    exclusive: bool = False

    def check(self, request: SlurmRequest) -> None:
        """
        @raise BadRequest: C{request} asks for something not allowed here.
        """
        for name in _SLURM_TEXTS:
            value = getattr(request, name)
            allowed: frozenset[str] = getattr(self, name)
            if value is not None and value not in allowed:
                choices = ", ".join(sorted(allowed)) or "none"
                raise BadRequest(
                    f"slurm.{name} {value!r} is not allowed by this server "
                    f"(allowed: {choices})"
                )
        for name in _SLURM_COUNTS:
            value = getattr(request, name)
            maximum: int = getattr(self, name)
            if value is not None and value > maximum:
                raise BadRequest(
                    f"slurm.{name} {value} is over this server's maximum {maximum}"
                )
        if request.exclusive and not self.exclusive:
            raise BadRequest("slurm.exclusive is not allowed by this server")


def parseSlurmOptions(value: object) -> SlurmRequest | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("slurm must be an object")
    known = {*_SLURM_TEXTS, *_SLURM_COUNTS, "exclusive"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise BadRequest(f"unknown slurm field(s): {', '.join(map(str, unknown))}")
    given: dict[str, Any] = {}
    for name in _SLURM_TEXTS:
        text = value.get(name)
        if text is None:
            continue
        if not isinstance(text, str) or not _SLURM_TEXT.fullmatch(text):
            raise BadRequest(
                f"slurm.{name} must be 1 to 256 characters of letters, digits "
                "and _.:,=+-/&|!*()[]@% (no spaces)"
            )
        given[name] = text
    for name in _SLURM_COUNTS:
        if value.get(name) is not None:
            given[name] = positiveInteger(value[name], f"slurm.{name}")
    exclusive = value.get("exclusive", False)
    if not isinstance(exclusive, bool):
        raise BadRequest("slurm.exclusive must be true or false")
    return SlurmRequest(**given, exclusive=exclusive)
