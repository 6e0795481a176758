"""Parse and check what clients send: pure functions raising L{BadRequest}."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import BadRequest, NotFound
from .limits import Limits
from .placement import SlurmRequest, parseSlurmOptions, positiveInteger
from .queue import MAX_PRIORITY, MIN_PRIORITY
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


def _uniqueKeys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    A JSON object whose keys are all different: another reader (a proxy, an
    audit tool) may keep the first of two where Python keeps the last.
    (About 3 us more per request body.)
    """
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return value


def parseJSONObject(body: bytes) -> dict[str, Any]:
    """
    Decode a request body that must be one JSON object, no key twice, in
    UTF-8 (JSON's one encoding: given bytes, Python guessed UTF-16 and -32
    too, and ran what a proxy or a log reading UTF-8 saw otherwise: code
    review 36), a byte order mark ignored, as RFC 8259 lets a parser do
    (as before).
    """
    try:
        value = json.loads(body.decode("utf-8-sig"), object_pairs_hook=_uniqueKeys)
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
        if not cwd.startswith("/"):
            raise BadRequest(
                f"cwd must be an absolute path on the server (got {cwd[:100]!r})"
            )
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
        # null is the default for every optional field (the OpenAPI
        # document types them nullable).
        stdin=_flag(_orDefault(obj.get("stdin"), False), "stdin"),
        priority=_priority(_orDefault(obj.get("priority"), 0)),
        after=_jobIds(obj.get("after"), "after"),
        after_ok=_jobIds(obj.get("after_ok"), "after_ok"),
        slurm=parseSlurmOptions(obj.get("slurm")),
    )


#: The most jobs one job may wait for.
MAX_DEPENDENCIES = 64


def _priority(value: object) -> int:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1 << 53:
        value = int(value)  # (-1.0 is the integer -1, as a limit's 64.0 is 64)
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


def _orDefault(value: object, default: object) -> object:
    return default if value is None else value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false")
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
            name: positiveInteger(limit, f"limits.{name}")
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


#: str(uuid.UUID(...)): lower-case hex, hyphenated 8-4-4-4-12 (checked on
#: every request that names a job: a match, not a parse and a print).
_CANONICAL_UUID = re.compile(
    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII
)


def parseJobId(text: str) -> str:
    """
    Canonicalise a job id; a malformed one is simply not found.

    @raise NotFound: unless C{text} is a UUID in canonical form.
    """
    if _CANONICAL_UUID.fullmatch(text) is None:
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
