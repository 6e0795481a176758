"""
What clients put in query strings: pure parsers raising L{BadRequest}, the
one bounded-integer check every number passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..auth.names import USER_NAME
from ..errors import BadRequest
from .records import JobStatus
from .validation import MAX_INT64, boundedInteger


def parseOffset(text: str | None) -> int:
    """A non-negative byte offset; absent means 0."""
    if text is None:
        return 0
    if boundedInteger(text, 0, MAX_INT64) is None:
        raise BadRequest(f"offset must be a non-negative integer, at most {MAX_INT64}")
    return int(text)


def parseBool(text: str | None, name: str, default: bool = False) -> bool:
    """C{true}/C{false} (also 1/0); absent means C{default}."""
    if text is None:
        return default
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false")


def parseLimit(text: str | None, default: int = 100, maximum: int = 1000) -> int:
    """A page size from 1 to C{maximum}; absent means C{default}."""
    if text is None:
        return default
    if boundedInteger(text, 1, maximum) is None:
        raise BadRequest(f"limit must be an integer from 1 to {maximum}")
    return int(text)


def parseCursor(text: str | None) -> int | None:
    """A list cursor (an opaque token from C{next_cursor}); absent means None."""
    if text is None:
        return None
    if boundedInteger(text, 0, MAX_INT64) is None:
        raise BadRequest("cursor is not one this server issued")
    return int(text)


def parseStatus(text: str | None) -> JobStatus | None:
    """A job status filter; absent means None."""
    if text is None:
        return None
    try:
        return JobStatus(text.upper())
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise BadRequest(f"status must be one of {names}") from None


def parseOwner(text: str | None) -> str | None:
    """An owner filter: a user name; absent means None."""
    if text is None:
        return None
    if not USER_NAME.fullmatch(text):
        raise BadRequest("owner is not a valid user name")
    return text


#: The most lines C{?tail=} may ask for.
MAX_TAIL = 1_000_000

#: The longest a status request may wait for a job to end (long poll).
MAX_WAIT = 300.0
#: Seconds as a JSON number (the OpenAPI type): C{30}, C{2.5}, C{1e-05}.
_DECIMAL = re.compile(r"\A-?[0-9]{1,32}(\.[0-9]{1,32})?([eE][-+]?[0-9]{1,3})?\Z")


def parseWait(text: str | None) -> float:
    """Seconds to wait for a job to end: 0 to C{MAX_WAIT}; absent means 0."""
    if text is None:
        return 0.0
    # A JSON number only: float() would also take "1_0" (ten), spaces,
    # "nan", "inf" and other scripts' digits.
    if not _DECIMAL.match(text):
        raise BadRequest(f"wait must be a number of seconds (0 to {MAX_WAIT:g})")
    value = float(text)
    if not 0 <= value <= MAX_WAIT:
        raise BadRequest(f"wait must be a number of seconds (0 to {MAX_WAIT:g})")
    return value


def parseAge(text: str | None) -> float | None:
    """C{older_than_seconds}: whole seconds, 0 to 100 years (None if absent)."""
    if text is None:
        return None
    value = boundedInteger(text, 0, 100 * 366 * 86400)
    if value is None:
        raise BadRequest("older_than_seconds must be whole seconds (0 to 100 years)")
    return float(value)


def parseTail(text: str | None) -> int | None:
    """A number of last lines, 0 to 1,000,000; absent means None."""
    if text is None:
        return None
    if boundedInteger(text, 0, MAX_TAIL) is None:
        raise BadRequest(f"tail must be a number of lines (0 to {MAX_TAIL})")
    return int(text)


def onlyParameters(given: Iterable[bytes], allowed: frozenset[str]) -> None:
    """
    Refuse query parameters a route does not know: a typo is an error, not
    a silently ignored option.
    """
    unknown = sorted({name.decode("utf-8", "replace") for name in given} - allowed)
    if unknown:
        names = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise BadRequest(f"unknown query parameter(s): {names}")


def parseStream(text: str | None) -> str:
    """C{stdout} (the default), C{stderr} or C{combined} (both, in order)."""
    if text is None:
        return "stdout"
    if text not in ("stdout", "stderr", "combined"):
        raise BadRequest("stream must be stdout, stderr or combined")
    return text
