"""Parse and check what clients send: pure functions raising L{BadRequest}."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from ..auth.names import USER_NAME
from ..errors import BadRequest, NotFound
from .limits import Limits
from .queue import MAX_PRIORITY, MIN_PRIORITY
from .records import JobStatus
from .selection import parseLabels, parseName

#: Offsets and cursors are 64-bit signed integers (SQLite, file offsets).
MAX_INT64 = (1 << 63) - 1

#: Limits on a job request; the 64 KiB body cap bounds the total anyway.
MAX_ARGS = 4096
MAX_ENV = 1024
#: The most bytes (UTF-8) a job's command, args, env and cwd may hold
#: together: what each job costs the store, every list and every record.
MAX_JOB_DATA = 32 * 1024

_CREATE_FIELDS = frozenset(
    {
        "command",
        "args",
        "env",
        "cwd",
        "limits",
        "timeout_seconds",
        "name",
        "labels",
        "slurm",
        "stdin",
        "priority",
        "after",
        "after_ok",
    }
)
_LIMIT_FIELDS = tuple(f.name for f in fields(Limits))
#: The longest timeout a request may ask for (a year).
MAX_TIMEOUT = 366 * 86400


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


def _slurm(value: object) -> SlurmRequest | None:
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
            given[name] = _positive(value[name], f"slurm.{name}")
    exclusive = value.get("exclusive", False)
    if not isinstance(exclusive, bool):
        raise BadRequest("slurm.exclusive must be true or false")
    return SlurmRequest(**given, exclusive=exclusive)


@dataclass(frozen=True)
class JobRequest:
    """A validated C{POST /jobs} body."""

    command: str
    args: list[str]
    env: dict[str, str]
    cwd: str | None
    limits: Limits = field(default_factory=Limits)
    timeout: float | None = None
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: Feed the job's stdin through C{POST /jobs/ID/stdin} (else it is closed).
    stdin: bool = False
    #: The queue: priority, and jobs to start after (any end / COMPLETED).
    priority: int = 0
    after: tuple[str, ...] = ()
    after_ok: tuple[str, ...] = ()
    #: Where in the Slurm cluster to run (C{--executor slurm} only).
    slurm: SlurmRequest | None = None


def _text(value: object, what: str, *, allowEmpty: bool = True) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    if not allowEmpty and not value:
        raise BadRequest(f"{what} must not be empty")
    if "\x00" in value:
        raise BadRequest(f"{what} must not contain NUL bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} must be valid Unicode (no lone surrogates)") from None
    return value


def parseJSONObject(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def parseJobRequest(body: bytes) -> JobRequest:
    """
    Validate a C{POST /jobs} body.

    @raise BadRequest: on bad JSON, unknown fields, wrong types, empty command
        or NUL bytes.
    """
    obj = parseJSONObject(body)
    unknown = sorted(set(obj) - _CREATE_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    if "command" not in obj:
        raise BadRequest("command is required")
    command = _text(obj["command"], "command", allowEmpty=False)

    rawArgs = obj.get("args", [])
    if not isinstance(rawArgs, list):
        raise BadRequest("args must be a list of strings")
    if len(rawArgs) > MAX_ARGS:
        raise BadRequest(f"at most {MAX_ARGS} args")
    args = [_text(a, f"args[{i}]") for i, a in enumerate(rawArgs)]

    rawEnv = obj.get("env", {})
    if not isinstance(rawEnv, dict):
        raise BadRequest("env must be an object of strings")
    if len(rawEnv) > MAX_ENV:
        raise BadRequest(f"at most {MAX_ENV} env variables")
    env: dict[str, str] = {}
    for key, value in rawEnv.items():
        _text(key, "env name", allowEmpty=False)
        if "=" in key:
            raise BadRequest(f"env name {key!r} must not contain '='")
        env[key] = _text(value, f"env[{key!r}]")

    cwd = obj.get("cwd")
    if cwd is not None:
        cwd = _text(cwd, "cwd", allowEmpty=False)
    size = sum(
        len(text.encode("utf-8", "surrogatepass"))
        for text in (command, cwd or "", *args, *env, *env.values())
    )
    if size > MAX_JOB_DATA:
        raise BadRequest(
            f"command, args, env and cwd hold {size} bytes together, over the "
            f"{MAX_JOB_DATA} allowed"
        )
    return JobRequest(
        command=command,
        args=args,
        env=env,
        cwd=cwd,
        limits=_limits(obj.get("limits", {})),
        timeout=_timeout(obj.get("timeout_seconds")),
        name=parseName(obj.get("name")),
        labels=parseLabels(obj.get("labels")),
        stdin=_flag(obj.get("stdin", False), "stdin"),
        priority=_priority(obj.get("priority", 0)),
        after=_jobIds(obj.get("after"), "after"),
        after_ok=_jobIds(obj.get("after_ok"), "after_ok"),
        slurm=_slurm(obj.get("slurm")),
    )


#: The most jobs one job may wait for.
MAX_DEPENDENCIES = 64


def _priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("priority must be an integer")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise BadRequest(f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}")
    return value


def _jobIds(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_DEPENDENCIES:
        raise BadRequest(f"{what} must be a list of at most {MAX_DEPENDENCIES} job ids")
    ids: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise BadRequest(f"{what} must hold job ids")
        try:
            jobId = parseJobId(item)
        except NotFound:
            raise BadRequest(f"{what}: {item!r} is not a job id") from None
        if jobId not in ids:
            ids.append(jobId)
    return tuple(ids)


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false")
    return value


def _positive(value: object, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 64.0 is the integer 64
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{what} must be a positive integer")
    if value > 1 << 62:
        raise BadRequest(f"{what} is too large")
    return value


def _limits(value: object) -> Limits:
    if value is None:
        return Limits()
    if not isinstance(value, dict):
        raise BadRequest("limits must be an object")
    unknown = sorted(set(value) - set(_LIMIT_FIELDS))
    if unknown:
        raise BadRequest(f"unknown limit(s): {', '.join(map(str, unknown))}")
    return Limits(
        **{
            name: _positive(limit, f"limits.{name}")
            for name, limit in value.items()
            if limit is not None
        }
    )


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("timeout_seconds must be a number")
    if not 0 < value <= MAX_TIMEOUT:
        raise BadRequest(f"timeout_seconds must be above 0 and at most {MAX_TIMEOUT}")
    return float(value)


def parseJobId(text: str) -> str:
    """
    Canonicalise a job id; a malformed one is simply not found.

    @raise NotFound: unless C{text} is a UUID in canonical form.
    """
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise NotFound("no such job") from None
    if str(parsed) != text:
        raise NotFound("no such job")
    return text


def boundedInteger(text: str, low: int, high: int) -> int | None:
    """
    The decimal integer C{text} if it is only ASCII digits and within
    C{low..high}, else None: the one check every number a client sends in a
    query passes (no sign, no spaces, no other digits, no huge strings).
    """
    if (
        not text.isascii()
        or not text.isdigit()
        or len(text) > len(str(high))
        or not low <= int(text) <= high
    ):
        return None
    return int(text)


def parseOffset(text: str | None) -> int:
    """A non-negative byte offset; absent means 0."""
    if text is None:
        return 0
    if boundedInteger(text, 0, MAX_INT64) is None:
        raise BadRequest("offset must be a non-negative integer")
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


def parseWait(text: str | None) -> float:
    """Seconds to wait for a job to end: 0 to C{MAX_WAIT}; absent means 0."""
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(
            f"wait must be a number of seconds (0 to {MAX_WAIT:g})"
        ) from None
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
