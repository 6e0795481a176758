"""How a job is stopped (C{POST /jobs/ID/stop}'s optional body): pure."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from ..errors import BadRequest

#: The signals a stop may begin with (by name, with or without C{SIG}).
STOP_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "ALRM", "KILL")
#: The longest grace a stop may ask for before KILL (an hour).
MAX_GRACE = 3600.0


@dataclass(frozen=True)
class StopRequest:
    """
    How a job is stopped: the signal sent first to all its processes, and
    the seconds after which KILL follows (None: the server's grace).
    """

    signal: int = signal.SIGTERM
    grace: float | None = None


#: A stop as the server does it when not told otherwise.
DEFAULT_STOP = StopRequest()


def parseStopRequest(body: dict[str, object]) -> StopRequest:
    """
    C{{"signal": "INT", "grace_seconds": 5}}, both optional.

    @raise BadRequest: an unknown field, signal or a grace out of range.
    """
    unknown = sorted(set(body) - {"signal", "grace_seconds"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    number = signal.SIGTERM
    name = body.get("signal")
    if name is not None:
        short = name.upper().removeprefix("SIG") if isinstance(name, str) else ""
        if short not in STOP_SIGNALS:
            raise BadRequest(f"signal must be one of {', '.join(STOP_SIGNALS)}")
        number = signal.Signals["SIG" + short]
    grace = body.get("grace_seconds")
    if grace is not None:
        if (
            isinstance(grace, bool)
            or not isinstance(grace, int | float)
            or not 0 <= grace <= MAX_GRACE
        ):
            raise BadRequest(f"grace_seconds must be a number from 0 to {MAX_GRACE:g}")
        grace = float(grace)
    return StopRequest(number, grace)
