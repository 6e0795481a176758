"""
What each C{jw} verb does, given a client: one coroutine per verb, found
in L{VERBS}. Each returns the exit status; failures are raised (the table
in L{jobworker.client.failures} shows them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar

from ..units import parseSize
from .calls import (
    ASK_AGAIN,
    MAX_GRACE,
    MAX_OFFSET,
    MAX_TAIL,
    MAX_TIMEOUT,
    exitStatusOf,
    started,
)
from .errors import ClientError, NoAPIThere
from .failures import (
    EXIT_ALREADY_ENDED,
    AlreadyEnded,
    BadArguments,
    NotFollowed,
    UsageFailure,
    loginLapsed,
)
from .interrupts import Interrupts
from .parser import DURATION_EXAMPLES, DURATION_UNITS, SLURM_COUNTS, SLURM_TEXTS

if TYPE_CHECKING:
    from .http import JobworkerClient
    from .quick import QuickClient

    #: Either client: the helpers of C{exec} serve both.
    AnyClient = JobworkerClient | QuickClient
from .show import endLine, jobLines, jobTable, jsonLine, outcome
from .streams import GatedStreams, OutputFailed, Streams

Verb = Callable[[argparse.Namespace, Any, Streams, Interrupts], Awaitable[int]]

#: A whole job id, as the server makes them.
_UUID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

#: The shortest id prefix jw looks up.
MIN_PREFIX = 6

T = TypeVar("T")

#: Seconds a stop may take before jw says what it is waiting for.
STOP_PATIENCE = 1.0

#: Ids of one C{jw stop ID...} or C{jw rm ID...} in flight at once, each on
#: a connection of its own (a stop's until its job has ended): well under a
#: server's --max-connections-per-client (64 by default). All at once, the
#: ids past the cap failed (Slurm user round 33); TERM-deaf jobs now take a
#: grace per this many.
IDS_AT_ONCE = 16

#: Seconds C{jw exec -f}, told to stop following (a second interrupt), may
#: wait for the server to take the stop the first interrupt asked for.
STOP_DEADLINE = 10.0

#: The statuses of a job that has not ended.
_LIVE = ("PENDING", "RUNNING")


def pair(text: str, flag: str) -> tuple[str, str]:
    """C{"K=V"} -> C{("K", "V")}."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise BadArguments(f"{flag} needs NAME=VALUE, not {text!r}")
    return name, value


def pairs(items: list[str], flag: str) -> dict[str, str]:
    """C{["K=V", ...]} -> C{{"K": "V"}} (the last of a name kept)."""
    return dict(pair(each, flag) for each in items)


#: The oldest C{--older-than}, as the API takes it (C{older_than_seconds}:
#: 0 to 100 years; a test checks it against the server's).
MAX_AGE = 100 * 366 * 86400


def parseAge(text: str) -> float:
    """
    C{90s}, C{30m}, C{12h}, C{7d}, C{2w} (or plain seconds) -> seconds.

    @raise BadArguments: not an age, or over L{MAX_AGE} (it was the
        server's 400, in the API's words, exit 1: new user round 34).
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise BadArguments(
            f"--older-than: {text!r} is not an age like {DURATION_EXAMPLES}"
        )
    seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if not seconds <= MAX_AGE:  # (inf too: 400 digits)
        raise BadArguments(
            f"--older-than must be at most 100 years ({MAX_AGE // 86400}d)"
        )
    return seconds


# The rules every server applies to a job's name, labels and cwd, and to a
# user name, checked by jw before anything is sent, naming the flag (they
# were the server's 400, in the API's words, exit 1: new user round 35).
# Copied from the server's (jobworker.jobs.selection, jobworker.auth.names,
# jobworker.jobs.validation): jw imports none of its modules. A test checks
# that the two agree.

#: A job name (C{selection.NAME}).
JOB_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}\Z")
#: A label key (C{selection.LABEL_KEY}).
LABEL_KEY = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,62}\Z")
#: The most labels a job may carry, and label filters a listing may have
#: (C{selection.MAX_LABELS}); the longest label value.
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
#: A label value: no control characters (C0, DEL, C1), at most 256
#: (C{selection.LABEL_VALUE}; a lone surrogate jw refuses before, as text
#: that is not UTF-8).
LABEL_VALUE = re.compile(r"\A[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{0,256}\Z")
#: A user name (C{auth.names.USER_NAME}).
USER_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
#: The most args and env variables a job may have, and bytes (UTF-8) its
#: command, args, env and cwd may hold together (C{validation.MAX_ARGS},
#: C{MAX_ENV}, C{MAX_JOB_DATA}).
MAX_ARGS = 4096
MAX_ENV = 1024
MAX_JOB_DATA = 32 * 1024


def checkName(name: str, flag: str = "--name") -> None:
    """@raise BadArguments: C{name} is not a job name."""
    if not JOB_NAME.match(name):
        raise BadArguments(
            f"{flag} must be 1 to 128 ASCII letters, digits or ._:@+- (starting "
            f"with a letter or digit), not {name!r}"
        )


def checkLabels(labels: list[tuple[str, str]], filters: bool = False) -> None:
    """
    C{labels}, a job's (at most L{MAX_LABELS} names) or a listing's
    filters (C{filters}: at most L{MAX_LABELS} of them).

    @raise BadArguments: too many, or a name or value that breaks its rule.
    """
    count = len(labels) if filters else len({key for key, _ in labels})
    if count > MAX_LABELS:
        what = "--label filters" if filters else "labels (--label)"
        raise BadArguments(f"at most {MAX_LABELS} {what}, not {count}")
    for key, value in labels:
        if not LABEL_KEY.match(key):
            raise BadArguments(
                f"--label name {key!r} must be 1 to 63 ASCII letters, digits or "
                "._/- (starting with a letter or digit)"
            )
        if not LABEL_VALUE.match(value):
            raise BadArguments(
                f"--label {key}: its value must be at most {MAX_LABEL_VALUE} "
                "characters, none a control character"
            )


def checkCwd(cwd: str) -> None:
    """@raise BadArguments: C{cwd} is not an absolute path."""
    if not cwd.startswith("/"):
        raise BadArguments(f"--cwd must be an absolute path on the server, not {cwd!r}")


def checkCommandLine(
    command: str, args: list[str], env: dict[str, str], cwd: str | None
) -> None:
    """
    A job's command line within what every server takes: L{MAX_ARGS} args,
    L{MAX_ENV} env variables, L{MAX_JOB_DATA} bytes in all (it was the
    server's 400, or past its 64 KiB body cap its bare 413, exit 1: new
    user round 37).

    @raise BadArguments: over one of them.
    """
    if len(args) > MAX_ARGS:
        raise BadArguments(f"at most {MAX_ARGS} args to the command, not {len(args)}")
    if len(env) > MAX_ENV:
        raise BadArguments(f"at most {MAX_ENV} --env variables, not {len(env)}")
    size = sum(
        len(text.encode("utf-8", "surrogatepass"))
        for text in (command, cwd or "", *args, *env, *env.values())
    )
    if size > MAX_JOB_DATA:
        raise BadArguments(
            f"the command, its args, --env and --cwd hold {size} bytes "
            f"together, over the {MAX_JOB_DATA} a job may have"
        )


def checkOwner(owner: str) -> None:
    """@raise BadArguments: C{owner} is not a user name."""
    if not USER_NAME.match(owner):
        raise BadArguments(
            "--owner must be a user name: 1 to 64 ASCII letters, digits or ._@- "
            f"(the first a letter or digit), not {owner!r}"
        )


def execRequest(options: argparse.Namespace) -> dict[str, Any]:
    """The request body of C{jw exec} beyond the command (the server checks it)."""
    fields: dict[str, Any] = {}
    limits: dict[str, int] = {}
    for flag, key in (
        ("memory", "memory_bytes"),
        ("io_read", "io_read_bps"),
        ("io_write", "io_write_bps"),
    ):
        value = getattr(options, flag)
        if value is not None:
            try:
                limits[key] = parseSize(value)
            except ValueError as e:
                raise BadArguments(f"--{flag.replace('_', '-')}: {e}") from None
            _checkCount(flag, limits[key])
    # The fixed ranges are checked here, naming the flag (the server's
    # answer named the API's field: new user rounds 32 and 33); the --max-*
    # a server sets, the server checks.
    for flag, key in (("cpu", "cpu_millicores"), ("pids", "pids")):
        value = getattr(options, flag)
        if value is not None:
            _checkCount(flag, value)
            limits[key] = value
    for name in SLURM_COUNTS:
        if getattr(options, name) is not None:
            _checkCount(name, getattr(options, name))
    if limits:
        fields["limits"] = limits
    if options.env:
        fields["env"] = pairs(options.env, "--env")
    if options.cwd is not None:
        checkCwd(options.cwd)
        fields["cwd"] = options.cwd
    if options.timeout is not None:
        if not 0 < options.timeout <= MAX_TIMEOUT:
            raise BadArguments(
                f"--timeout must be above 0 and at most {MAX_TIMEOUT // 86400}d"
            )
        fields["timeout_seconds"] = options.timeout
    if options.name is not None:
        checkName(options.name)
        fields["name"] = options.name
    if options.label:
        labels = [pair(each, "--label") for each in options.label]
        checkLabels(labels)
        fields["labels"] = dict(labels)
    checkCommandLine(
        options.command or "", options.args, fields.get("env", {}), options.cwd
    )
    if options.stdin:
        fields["stdin"] = True
    if options.priority is not None:
        fields["priority"] = options.priority
    slurm = {
        name: getattr(options, name)
        for name in (*SLURM_TEXTS, *SLURM_COUNTS)
        if getattr(options, name) is not None
    }
    if options.exclusive:
        slurm["exclusive"] = True
    if slurm:
        fields["slurm"] = slurm
    return fields


#: The most a limit or a count may be, on every server (its placement
#: rule: a positive integer up to 2**62).
MAX_COUNT = 1 << 62


def _checkCount(flag: str, value: int) -> None:
    """
    @raise BadArguments: C{value} is outside what every server takes for
        C{--flag}: 1 to L{MAX_COUNT}.
    """
    if value < 1:
        raise BadArguments(f"--{flag.replace('_', '-')} must be at least 1")
    if value > MAX_COUNT:
        raise BadArguments(f"--{flag.replace('_', '-')} must be at most 2**62")


def showJob(
    job: dict[str, Any],
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
) -> int:
    """A job as JSON (C{--json}) or as lines for a person; exit status 0."""
    now = client.reactor.seconds()
    streams.show(jsonLine(job) if options.json else jobLines(job, now))
    return 0


def checkId(text: str) -> None:
    """
    @raise BadArguments: C{text} is neither a job id nor a prefix of one
        that may be looked up.
    """
    text = text.lower()  # (a UUID in capitals is the same id)
    if _UUID.match(text):
        return
    # (The server's rule: a hex digit first; "-abcdef" was its 400.)
    if not MIN_PREFIX <= len(text) <= 36 or not re.fullmatch(
        r"[0-9a-f][0-9a-f-]*", text
    ):
        raise BadArguments(
            f"{text!r} is not a job id or a prefix of one "
            f"({MIN_PREFIX} or more of its characters, 36 at most)"
        )


def checkArguments(verb: str, options: argparse.Namespace) -> None:
    """
    What the command line alone shows to be wrong, found before anything
    is sent (no login, no request): each verb checks the same again where it
    uses the value.

    @raise BadArguments: a flag's value or a combination that cannot be
        carried out, a missing command, an id that cannot be one.
    """
    _checkText(options)
    for text in [getattr(options, "id", None), *getattr(options, "ids", [])]:
        if text is not None:
            checkId(text)
    if verb == "exec":
        if not options.command:
            raise BadArguments(_NO_COMMAND)
        execRequest(options)
        for text in [*options.after, *options.after_ok]:
            checkId(text)
    if verb in ("list", "clean"):
        _oneFilterEach(verb, options)
    if verb in ("list", "clean") and options.owner is not None:
        checkOwner(options.owner)
    if verb == "list":
        _checkLimit(options.limit)
        checkLabels([pair(each, "--label") for each in options.label], filters=True)
        if options.name is not None:
            checkName(options.name)
    elif verb == "clean" and options.older_than is not None:
        parseAge(options.older_than)
    elif verb == "logs":
        _checkLogsOptions(options)
    elif verb == "stop":
        _stopSignal(options)
    elif verb == "wait" and options.timeout is not None and options.timeout < 0:
        raise BadArguments("--timeout must not be negative")
    elif verb == "drain":
        from .drain import checkDrainOptions

        checkDrainOptions(options)


#: The filters of C{jw list} and C{jw clean}: each taken once.
_FILTERS = ("status", "owner", "name")


def _oneFilterEach(verb: str, options: argparse.Namespace) -> None:
    """
    Each filter given as its one value (the parser collects them): a
    second is refused, as the API refuses it, not silently kept in the
    first's place (new user round 33).

    @raise BadArguments: a filter given more than once.
    """
    for key in _FILTERS:
        given = getattr(options, key, None)
        if isinstance(given, list):
            if len(given) > 1:
                raise BadArguments(f"--{key} given twice: jw {verb} takes one")
            setattr(options, key, given[0])


#: Options that name files here, not text sent: any bytes do.
_LOCAL_PATHS = frozenset({"ca", "cert", "key"})


def _checkText(options: argparse.Namespace) -> None:
    """
    Every word jw would send is text, and is sent as the bytes jw was
    given: the server takes UTF-8 only, and a word that is not (Latin-1
    bytes typed, say) is refused here, naming the word, not the server
    later with an index the user has to work out.

    Python decodes the command line by the locale's charset: under one
    that is not UTF-8 (C{en_US.ISO-8859-1}, glibc's plain C{en_US}, cron's
    C{LANG=en_US} on older hosts) each byte was a character of its own,
    and each word was sent re-encoded: a UTF-8 word reached the job
    double-encoded, a Latin-1 byte was sent as UTF-8, not refused (new
    user round 41). So each word is taken back to its bytes
    (L{_givenText}) and replaced, in C{options}, by the text they are.

    @raise BadArguments: a word that is not valid UTF-8.
    """
    for key, value in list(vars(options).items()):
        if key in _LOCAL_PATHS:
            continue
        words = value if isinstance(value, list) else [value]
        texts = []
        for index, word in enumerate(words, 1):
            text = _givenText(word) if isinstance(word, str) else word
            if text is not None or word is None:
                texts.append(text)
                continue
            if key == "command":
                what = "the command"
            elif key == "args":
                what = f"argument {index} of the command"
            elif key in ("id", "ids"):
                what = "ID"
            else:
                what = "--" + key.replace("_", "-")
            raise BadArguments(
                f"{what} '{_shownBytes(word)}' is not valid UTF-8 (jw sends text only)"
            )
        if texts != words:
            setattr(options, key, texts if isinstance(value, list) else texts[0])


def _givenBytes(word: str) -> bytes:
    """
    The bytes C{word} was given as on the command line, whatever the
    locale's charset (C{os.fsencode} undoes Python's decoding of argv). A
    word that did not come from bytes (text handed to jw in the process,
    with characters the charset has not): its UTF-8, lone surrogates as
    the bytes they stand for.
    """
    try:
        return os.fsencode(word)
    except UnicodeEncodeError:
        return word.encode("utf-8", "surrogateescape")


def _givenText(word: str) -> str | None:
    """C{word}'s bytes as given (L{_givenBytes}) as text; None: not UTF-8."""
    try:
        return _givenBytes(word).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None


def _shownBytes(word: str) -> str:
    """C{word} as the bytes typed: those not UTF-8 as C{\\xe9}."""
    try:
        raw = _givenBytes(word)
    except UnicodeEncodeError:
        return word.encode("utf-8", "backslashreplace").decode("ascii", "replace")
    return raw.decode("utf-8", "backslashreplace")


_NO_COMMAND = "jw exec needs the command to run, after --: jw exec -- make test"


def _checkLimit(limit: int) -> None:
    if not 1 <= limit <= 1000:
        raise BadArguments("--limit must be from 1 to 1000")


def _checkLogsOptions(options: argparse.Namespace) -> None:
    if options.stdout and options.stderr:
        raise BadArguments("--stdout and --stderr: choose one (or neither: both)")
    if options.offset is not None and options.offset < 0:
        raise BadArguments("--offset must not be negative")
    if options.offset is not None and options.offset > MAX_OFFSET:
        # (It went to the server for its 400: new user round 38.)
        raise BadArguments(f"--offset must be at most {MAX_OFFSET}")
    if options.tail is not None and not 0 <= options.tail <= MAX_TAIL:
        raise BadArguments(f"--tail must be from 0 to {MAX_TAIL}")


def _stopSignal(options: argparse.Namespace) -> tuple[str | None, float | None]:
    """The stop's first signal and grace (C{--kill}: KILL at once)."""
    signal, grace = options.signal, options.grace
    if options.kill:
        if signal not in (None, "KILL", "SIGKILL", "9") or grace not in (None, 0):
            raise BadArguments("--kill sends KILL at once: no --signal or --grace")
        signal, grace = "KILL", 0.0
    if grace is not None and not 0 <= grace <= MAX_GRACE:
        raise BadArguments(f"--grace must be from 0 to {MAX_GRACE:g} seconds (1h)")
    return signal, grace


async def resolveId(client: AnyClient, text: str) -> str:
    """
    A whole job id for C{text}: itself, or the one job it is a prefix of;
    in capitals, the same (the server's ids are in small letters: a prefix
    in capitals was "not a job id": new user round 28).
    """
    text = text.lower()
    if _UUID.match(text):
        return text
    checkId(text)
    jobs, _ = await client.listJobs(idPrefix=text, limit=10)
    ids = [str(job["id"]) for job in jobs]
    if not ids:
        raise UsageFailure(f"no job id starts with {text}")
    if len(ids) > 1:
        raise UsageFailure(f"{text} is ambiguous: {', '.join(ids)}")
    return ids[0]


async def createExecJob(
    options: argparse.Namespace,
    client: AnyClient,
    streams: Streams,
    interrupts: Interrupts,
    sending: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any] | None:
    """
    The job C{jw exec} asks for, created; None if an interrupt came while
    it was being created (it was stopped at once: the exit status is
    L{EXIT_INTERRUPTED}). C{sending()} is awaited just before the request.
    """
    if not options.command:
        raise BadArguments(_NO_COMMAND)
    fields = execRequest(options)
    for flag in ("after", "after_ok"):
        if getattr(options, flag):
            fields[flag] = [await resolveId(client, i) for i in getattr(options, flag)]
    if not options.stdin and streams.strayInput():
        streams.say("jw: the job's stdin is closed: jw's stdin is not sent (use -i)")
    early: list[str] = []
    if options.follow and not options.detach_on_interrupt:
        # Ctrl-C while the job is being created: stop it once it exists.
        interrupts.handle(early.append)
    try:
        if sending is not None:
            await sending()
        created = await _createPaced(client, options, fields, streams, early)
    finally:
        interrupts.handle(None)
    if created is None:
        return None  # interrupted while waiting to ask again: nothing created
    job: dict[str, Any] = created
    if early:
        # With the signal jw got, as every later one (it was TERM: new user
        # round 36).
        signal = early[0].removeprefix("SIG")
        streams.say(f"jw: {early[0]}: stopping job {job['id']} with {signal}")
        await client.stop(job["id"], signal)
        return None
    return job


#: How often C{jw exec} asks again for a job the server's create rate
#: refused (nothing created), and for how many seconds at most in all.
CREATE_RETRIES = 5
CREATE_WAIT = 12.0


def _rateRefused(error: ClientError) -> bool:
    """Was the job refused by the server's create rate (nothing created)?"""
    return error.status == 429 and "creating jobs faster than" in str(error)


def _retryHint(error: ClientError) -> ClientError:
    """C{error}, saying when to retry if it came with a C{Retry-After}."""
    if error.retryAfter is None or "retry in" in str(error):
        return error
    return ClientError(
        f"{error}: retry in {error.retryAfter:g} s",
        error.status,
        error.body,
        error.retryAfter,
    )


async def _createPaced(
    client: AnyClient,
    options: argparse.Namespace,
    fields: dict[str, Any],
    streams: Streams,
    interrupted: list[str],
) -> dict[str, Any] | None:
    """
    The job created; a 429 of the server's create rate (nothing created)
    asked again after its C{Retry-After}, said on stderr, up to
    L{CREATE_RETRIES} times and L{CREATE_WAIT} seconds in all (it exited 1
    at once: a parallel submission lost jobs: new user round 39). None: an
    interrupt came while waiting (in C{interrupted}).
    """
    waited = 0.0
    for tries in range(CREATE_RETRIES + 1):
        try:
            job: dict[str, Any] = await client.createJob(
                options.command, options.args, fields=fields
            )
            return job
        except ClientError as e:
            wait = e.retryAfter or 1.0
            if (
                not _rateRefused(e)
                or tries == CREATE_RETRIES
                or waited + wait > CREATE_WAIT
            ):
                raise _retryHint(e) from None
            reason = str(e).removeprefix("server answered 429: ")
            streams.tell(
                f"jw: the server refused the job for now ({reason}): nothing was "
                f"created; asking again in {wait:g} s"
            )
        await client.pause(wait)
        waited += wait
        if interrupted:
            return None
    raise AssertionError("unreachable")  # the last try raised


class StatusHeard:
    """
    The status of a job being followed as jw last heard it: its record's,
    then each answer's (told as C{onStatus}), each passed on to L{then}.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.status: str = job["status"]
        self.then: Callable[[str], None] = lambda status: None

    def __call__(self, status: str) -> None:
        self.status = status
        self.then(status)


def execInterrupted(
    options: argparse.Namespace,
    jobId: str,
    streams: Streams,
    interrupts: Interrupts,
    leave: Callable[[str], None],
    stop: Callable[[str], None],
    heard: StatusHeard,
) -> Callable[[str], None]:
    """
    What an interrupt does while C{jw exec} follows its job: the first
    L{stop}s the job with the same signal (Ctrl-C: SIGINT, as a local
    command gets it; then KILL after the server's grace), and jw waits for
    its end; a second L{leave}s (stops following; the stop asked for is not
    taken back, and the caller makes sure the server has it, then says so:
    L{stopTaken}); the first with C{--detach-on-interrupt} L{leave}s the job
    running, saying how to come back (or queued, as C{heard} last said: a
    queued job was said "running": new user round 33). C{leave} is given
    the interrupt's name.
    """

    def interrupted(name: str) -> None:
        if options.detach_on_interrupt:
            left = "queued" if heard.status == "PENDING" else "running"
            streams.say(
                f"jw: {name}: left job {jobId} {left} (follow it again: jw "
                f"logs -f {jobId}; stop it: jw stop {jobId})"
            )
            leave(name)
            return
        if interrupts.count > 1:
            leave(name)
            return
        signal = name.removeprefix("SIG")  # every interrupt is a stop's signal
        streams.say(
            f"jw: {name}: stopping job {jobId} with {signal} (again to stop following)"
        )
        stop(signal)

    return interrupted


async def stopTaken(
    client: AnyClient,
    jobId: str,
    deadline: float,
    failed: Callable[[], bool],
) -> bool:
    """
    Whether the server has taken a stop of the job (its record names who
    stopped it, or it has ended), asked until C{deadline} (on the client's
    clock), with a growing pause between the questions. C{failed()}: the
    stop request failed, so once the server says the job is not being
    stopped that is the answer. A stop's own answer comes only once the
    job has ended, after the grace: this is how jw knows sooner that it
    may leave.
    """
    pauses = _doubling(0.05, 0.5)
    while True:
        try:
            job = await client.job(jobId)
        except ClientError as e:
            if e.status == 404:
                return True  # deleted: it had ended
        else:
            if job.get("stopped_by") is not None or job["status"] not in _LIVE:
                return True
            if failed():
                return False
        left = deadline - client.reactor.seconds()
        if left <= 0:
            return False
        await client.pause(min(next(pauses), left))


async def closeInput(
    client: AnyClient,
    jobId: str,
    name: str,
    streams: Streams,
    detached: bool = False,
    taken: int = 0,
) -> None:
    """
    C{jw exec -i} interrupted (C{name}) while it sends jw's stdin, and the
    job left to run on: without C{-f} (jw exec leaves it, as without
    C{-i}), or with C{-f --detach-on-interrupt} (C{detached}: the line
    saying so is out already). Its stdin is closed, so that it does not
    wait for the rest for ever (it did, and jw said nothing: new user
    rounds 28 and 35), and jw says so; a job still queued has it closed
    at its start, and jw says that it is left queued, and that the
    C{taken} bytes it read of its stdin were not sent (it said the job
    "runs on", and nothing of them: new user round 37). A write of the
    feed the job has not taken yet holds the close back (429) a moment.
    """
    said, accepted = await _closedInput(client, jobId)
    if detached:
        streams.say(f"jw: {name}: job {jobId}'s stdin {said}")
    elif accepted and await _queued(client, jobId):
        unsent = ""
        if taken:
            count = "1 byte" if taken == 1 else f"{taken} bytes"
            unsent = (
                f"; the {count} jw read of its stdin "
                f"{'was' if taken == 1 else 'were'} not sent"
            )
        streams.say(
            f"jw: {name}: job {jobId} is left queued, its stdin to be closed as "
            f"it starts{unsent} (jw stop {jobId} takes it off the queue)"
        )
    else:
        streams.say(f"jw: {name}: job {jobId} runs on, its stdin {said}")


async def _queued(client: AnyClient, jobId: str) -> bool:
    """Is the job still queued (PENDING)? Not if jw cannot tell."""
    try:
        job = await client.job(jobId)
    except ClientError:
        return False
    return bool(job["status"] == "PENDING")


async def _closedInput(client: AnyClient, jobId: str) -> tuple[str, bool]:
    """
    Close job C{jobId}'s stdin; what became of it, in words, and whether
    the server took the close (a queued job's stdin is closed as it starts).
    """
    for _ in range(CLOSE_TRIES):
        try:
            await client.sendStdin(jobId, b"", eof=True)
        except ClientError as e:
            if e.status == 429:
                await client.pause(CLOSE_PAUSE)
                continue
            if e.status == 409 and _notStartedYet(e):
                # A server older than round 35's takes no close of a
                # queued job's stdin (jw said "closed": new user round 35).
                return (
                    "left open: the job is queued, and this server cannot "
                    "close its stdin before it starts; once started, it "
                    f"waits on it: jw stop {jobId} ends it"
                ), False
            if e.status == 409:  # closed (or ended) already
                return f"closed (jw stop {jobId} ends it)", False
            return f"left open ({e}): jw stop {jobId} ends it", False
        return f"closed (jw stop {jobId} ends it)", True
    return f"left open (the job does not read it): jw stop {jobId} ends it", False


#: How often, and how far apart (seconds), L{closeInput} asks again while a
#: write the job has not taken holds the close back.
CLOSE_TRIES = 10
CLOSE_PAUSE = 0.3


def sayLeft(name: str, jobId: str, streams: Streams, taken: bool) -> None:
    """
    C{jw exec -f} stops following after a second interrupt: the stop the
    first asked for was C{taken} by the server, or may not have been.
    """
    if taken:
        streams.say(
            f"jw: {name}: no longer following job {jobId}; a stop was asked "
            f"for (KILL after the server's grace): jw status {jobId}"
        )
    else:
        streams.say(
            f"jw: {name}: no longer following job {jobId}; the stop may not "
            f"have reached the server, so the job may still be running: "
            f"jw stop {jobId}"
        )


def neverStarted(job: dict[str, Any]) -> bool:
    """Has the job ended without its process ever starting?"""
    return job["status"] not in _LIVE and not started(job)


def execCreated(
    job: dict[str, Any], options: argparse.Namespace, streams: Streams
) -> int | None:
    """
    C{jw exec} without C{-f}: show the job created (its id, or C{--json});
    if it already ended without starting (a command not found), say why as
    C{-f} does and return the status C{-f} exits with (127). None: it is
    under way.
    """
    streams.show(jsonLine(job) if options.json else job["id"] + "\n")
    if not neverStarted(job):
        return None
    if job["error"] and job["status"] == "FAILED" and job["exit_code"] is None:
        streams.say(f"jw: job {job['id']}: {job['error']}")
    else:
        streams.say(f"jw: job {job['id']}: {outcome(job)}")
    return exitStatusOf(job)


def sayNeverFed(job: dict[str, Any], streams: Streams) -> int:
    """
    C{jw exec -i} waited for its job to start, to send it jw's stdin, but
    it ended first: say so; the status C{-f} exits with for it (127).
    """
    streams.say(f"jw: job {job['id']} {outcome(job)}: its stdin was not sent")
    return exitStatusOf(job)


def sayInputLeft(job: dict[str, Any], streams: Streams) -> int:
    """
    C{jw exec -i} without C{-f}: its job ended (as C{job}) while jw's stdin
    had not: jw stops feeding it and says so; the status jw exits with (0
    as C{jw exec} without C{-f}; 127, L{sayNeverFed}, if it never ran).
    """
    if neverStarted(job):
        return sayNeverFed(job, streams)
    how = "closed its stdin" if job["status"] in _LIVE else outcome(job)
    streams.say(
        f"jw: job {job['id']} {how} before jw's stdin ended: "
        "the rest of it was not sent"
    )
    return 0


class InputFeed:
    """
    jw's stdin as L{feedStdin} reads it (C{read}), and whether it has read
    it to its end: once the job has ended, a feed that has not is waiting on
    jw's stdin (a terminal nobody types into, a pipe that stays open), and
    C{jw exec -i} stops it (L{sayInputLeft}); one that has is only sending
    the end of file, answered at once. C{taken}: the bytes read (none of
    them sent to a job still queued).
    """

    def __init__(self, read: Callable[[int], Awaitable[bytes]]) -> None:
        self._read = read
        self.atEnd = False
        self.taken = 0

    async def read(self, size: int) -> bytes:
        data = await self._read(size)
        self.taken += len(data)
        if not data:
            self.atEnd = True
        return data


async def unfollowed(
    client: AnyClient, jobId: str, refusal: ClientError
) -> NotFollowed:
    """
    The failure of C{jw exec -f} whose job the server would not let it
    follow (C{refusal}: a 429 or 503 that outlasted jw's asking again), with the
    job's status if a request gets it.
    """
    try:
        status: str | None = (await client.job(jobId))["status"]
    except ClientError:
        status = None
    return NotFollowed(jobId, str(refusal), status)


async def followFailed(
    client: AnyClient,
    jobId: str,
    streams: Streams,
    error: BrokenPipeError | OutputFailed | ClientError,
) -> NoReturn:
    """
    The follow of C{jw exec -f} failed with C{error}: raise what jw exits
    with. Our stdout closed, or not writable: the job is stopped first
    (L{stopUnread}); the log stream refused for good (429, 503): L{unfollowed};
    the login refused (401): L{loginLapsed}.
    """
    if isinstance(error, BrokenPipeError):
        await stopUnread(client, jobId, streams)
    elif isinstance(error, OutputFailed):
        await stopUnread(client, jobId, streams, error)
    elif error.status in ASK_AGAIN or error.status is None:
        # Refused for good, or no connection to follow it on (a network
        # down for longer than a follow resumes, a server at its connection
        # caps: it exited 1 without a word of the job, fault round 27).
        raise await unfollowed(client, jobId, error) from None
    elif error.status == 401:
        # The login lapsed under the follow (the job was live when its
        # stream broke: a job that ends ends its stream instead).
        raise loginLapsed(jobId, error, "RUNNING", client) from None
    raise error


async def followedEnd(
    client: AnyClient, jobId: str, end: dict[str, Any] | None
) -> dict[str, Any]:
    """
    The final record of a followed job: C{end}, the one its follow ended
    with, else read now. A 401 then is a login that lapsed as the follow
    was cut (the server ends a follow as its token expires; the job was
    live at its last answer): L{loginLapsed}.
    """
    from .follow import renewing

    if end is not None:
        return end
    try:
        job: dict[str, Any] = await renewing(client, lambda: client.job(jobId))
        return job
    except ClientError as e:
        raise loginLapsed(jobId, e, "RUNNING", client) from None


async def stopUnread(
    client: AnyClient,
    jobId: str,
    streams: Streams,
    failed: OutputFailed | None = None,
) -> None:
    """
    Our stdout was closed under C{jw exec -f} (C{| head}), or could not be
    written (C{failed}: a full disk): stop the job, as a remote command
    over ssh dies of SIGPIPE at its next write, rather than leave it
    running unread. jw then exits with the SIGPIPE status (or 1, the write
    error said in this one line). A job that has ended already is not
    stopped, and a closed stdout is then quiet, as over ssh (jw said
    "stopping job" of a job that had completed, at every C{| head}: new
    user round 37).
    """
    why = "stdout closed" if failed is None else failed.line().removeprefix("jw: ")
    if not await _stillLive(client, jobId):
        return  # (a failed write is said as jw exits)
    try:
        streams.say(f"jw: {why}: stopping job {jobId}")
        if failed is not None:
            failed.said = True
    except OSError:
        pass
    try:
        await client.stop(jobId)
    except ClientError as e:
        if e.status != 409:  # 409: it ended meanwhile
            streams.say(f"jw: could not stop job {jobId}: {e}")


async def _stillLive(client: AnyClient, jobId: str) -> bool:
    """
    Has the job not ended (or cannot jw tell: then it is taken for live,
    and stopped)?
    """
    try:
        job = await client.job(jobId)
    except ClientError:
        return True
    return job["status"] in _LIVE


def sayStopped(final: dict[str, Any], streams: Streams) -> None:
    """A followed job that someone else stopped (another client, the
    server's shutdown), or that ended with no exit status: one line saying
    so, not a bare exit status (L{endLine})."""
    line = endLine(final)
    if line is not None:
        streams.say(line)


def sayStarting(job: dict[str, Any], streams: Streams) -> Callable[[str], None]:
    """
    C{jw exec -f} names its job before anything else: that it started, or
    that it waits in the queue (PENDING). For a queued job, the function
    returned (told the job's status as the follow's answer comes: once it
    starts) says when it starts; for one that runs already, it does nothing.
    """
    jobId = job["id"]
    if job["status"] != "PENDING":
        # FAILED at once, never started (cannot start, a failed after_ok):
        # its end says why, and nothing said it started.
        if job["status"] in ("RUNNING", "COMPLETED") or job.get("started_at"):
            streams.tell(f"jw: job {jobId} started")
        return lambda status: None
    streams.tell(
        f"jw: job {jobId} is queued (PENDING): its output follows once it starts"
    )
    waiting = [True]

    def told(status: str) -> None:
        # RUNNING, or COMPLETED by the time the answer came: it started.
        # FAILED or STOPPED: it may never have run; its end says how.
        if waiting and status != "PENDING":
            waiting.clear()
            if status in ("RUNNING", "COMPLETED"):
                streams.tell(f"jw: job {jobId} started")

    return told


def execOutput(options: argparse.Namespace, streams: Streams) -> GatedStreams:
    """Where the followed job's output goes: with --json, all to stderr
    (stdout holds one JSON document); counted, and shut if the backlog
    after an interrupt is too long (L{backlogCut})."""
    if options.json:
        toErr = Streams(streams.err, streams.err, streams.messages, inp=None)
        toErr.lastShown = streams.lastShown
        toErr.quiet = streams.quiet
        return GatedStreams(toErr)
    return GatedStreams(streams)


#: Bytes of a job's output that C{jw exec -f} still prints once the job
#: that an interrupt stopped has ended: a quiet job's last words (what it
#: said as it stopped) are shown; a loud job's backlog (up to the server's
#: cap, a GiB, minutes on a terminal) is not.
BACKLOG_SHOWN = 64 * 1024


def backlogCut(ended: dict[str, Any], output: GatedStreams) -> int | None:
    """
    The job that the first interrupt stopped has ended as C{ended} (the
    stop's answer): if more than L{BACKLOG_SHOWN} bytes of its output are
    still to print, shut C{output} (nothing more is printed) and return
    how many were not shown; else None (the rest is printed as it comes).
    """
    total = int(ended.get("stdout_bytes") or 0) + int(ended.get("stderr_bytes") or 0)
    unshown = total - output.shown
    if unshown <= BACKLOG_SHOWN:
        return None
    output.shut()
    return unshown


def sayBacklog(unshown: int, jobId: str, streams: Streams) -> None:
    """The one line for the backlog L{backlogCut} did not print."""
    streams.say(
        f"jw: {unshown} bytes of the job's output were not shown (it had "
        f"ended; jw stops printing once a job it stopped has): jw logs {jobId}"
    )


def execEnded(
    final: dict[str, Any],
    options: argparse.Namespace,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    """The followed job has ended as C{final}: say how; the exit status."""
    if final["error"] and final["status"] == "FAILED" and final["exit_code"] is None:
        streams.say(f"jw: job {final['id']}: {final['error']}")
    elif not interrupts.count:
        sayStopped(final, streams)
    if options.json:
        streams.show(jsonLine(final))
    if interrupts.count:
        return interrupts.status
    return exitStatusOf(final)


async def doExec(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    from twisted.internet.defer import CancelledError, ensureDeferred

    from .follow import followOutput

    job = await createExecJob(options, client, streams, interrupts)
    if job is None:
        return interrupts.status
    jobId = job["id"]

    def read(size: int) -> Awaitable[bytes]:
        return streams.readInput(client.reactor, size)

    if not options.follow:
        status = execCreated(job, options, streams)
        if status is None and options.stdin:
            status = await _feedWhileRunning(client, jobId, streams, read)
        return status or 0
    started = StatusHeard(job)
    started.then = sayStarting(job, streams)
    refused: list[InputNotSent] = []

    def inputRefused(failure: Any) -> None:
        failure.trap(InputNotSent)
        refused.append(failure.value)
        streams.say(f"jw: {failure.value}")

    feeding = (
        # Whether the job waits in the queue was said just now.
        ensureDeferred(
            feedStdin(client, jobId, streams, read, sayWaiting=False)
        ).addErrback(inputRefused)
        if options.stdin
        else None
    )
    output = execOutput(options, streams)
    following = ensureDeferred(followOutput(client, jobId, output, onStatus=started))
    left: list[str] = []
    stops: list[bool] = []  # each stop's answer: True, False if it failed
    cut: list[tuple[dict[str, Any], int]] = []  # the end, the bytes not shown

    def leave(name: str) -> None:
        left.append(name)
        following.cancel()

    def stop(signal: str) -> None:
        def failed(f: Any) -> None:
            stops.append(False)
            streams.say(f"jw: could not stop: {f.value}")

        def ended(record: dict[str, Any]) -> None:
            stops.append(True)
            unshown = None if following.called else backlogCut(record, output)
            if unshown is not None:
                cut.append((record, unshown))
                following.cancel()

        stopping = ensureDeferred(client.stop(jobId, signal))
        stopping.addCallbacks(ended, failed)

    interrupts.handle(
        execInterrupted(options, jobId, streams, interrupts, leave, stop, started)
    )
    try:
        end = await following
    except CancelledError:
        if cut and not left:
            sayBacklog(cut[0][1], jobId, streams)
            return execEnded(cut[0][0], options, streams, interrupts)
        if not left:
            raise
        interrupts.handle(lambda name: None)  # the waits below are bounded
        if not options.detach_on_interrupt:
            taken = await _stopTakenTwisted(client, jobId, streams, stops)
            sayLeft(left[0], jobId, streams, taken)
        elif feeding is not None:
            # Left running: its stdin closed (new user round 35).
            if not feeding.called:
                feeding.cancel()
                feeding.addErrback(lambda f: f.trap(CancelledError))
            await closeInput(client, jobId, left[0], streams, detached=True)
        if options.json:
            # The one document --json promises: the job as it is now.
            with contextlib.suppress(ClientError):
                streams.show(jsonLine(await client.job(jobId)))
        return interrupts.status
    except (BrokenPipeError, OutputFailed, ClientError) as e:
        await followFailed(client, jobId, streams, e)
    finally:
        interrupts.handle(None)
        if feeding is not None and not feeding.called:
            feeding.cancel()  # the job ended (or we left): no more input
            feeding.addErrback(lambda f: f.trap(CancelledError))
    final = await followedEnd(client, jobId, end)
    return inputStatus(execEnded(final, options, streams, interrupts), bool(refused))


async def _feedWhileRunning(
    client: JobworkerClient,
    jobId: str,
    streams: Streams,
    read: Callable[[int], Awaitable[bytes]],
) -> int | None:
    """
    C{jw exec -i} without C{-f}, on the reactor: L{feedStdin} until it is
    done, or until the job has ended while jw's stdin has not
    (L{InputFeed}, L{sayInputLeft}); the exit status if not 0.
    """
    from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

    from .follow import pollEnd

    feed = InputFeed(read)
    decided: Deferred[None] = Deferred()

    def settle(result: Any) -> Any:
        if not decided.called:
            decided.callback(None)
        return result

    def ended(job: dict[str, Any] | None) -> dict[str, Any] | None:
        if not feed.atEnd:
            settle(None)
        return job

    feeding = ensureDeferred(feedStdin(client, jobId, streams, feed.read))
    feeding.addBoth(settle)
    ending = ensureDeferred(pollEnd(client, jobId))
    ending.addCallback(ended)
    ending.addErrback(lambda f: f.trap(ClientError))  # the feed decides
    await decided
    if feeding.called:
        ending.cancel()
        ending.addErrback(lambda f: f.trap(CancelledError))
        unsent = await feeding
        return None if unsent is None else sayInputLeft(unsent, streams)
    feeding.cancel()  # its read of jw's stdin waits on nothing now
    feeding.addErrback(lambda f: f.trap(CancelledError))
    record = await ending
    assert record is not None  # pollEnd without a deadline ends with one
    return sayInputLeft(record, streams)


async def _stopTakenTwisted(
    client: JobworkerClient, jobId: str, streams: Streams, stops: list[bool]
) -> bool:
    """
    L{stopTaken} on the reactor: whether the stop the first interrupt
    asked for was answered, or the server shows it taken, within
    L{STOP_DEADLINE}; after L{STOP_PATIENCE}, jw says what it waits for.
    """
    from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

    if any(stops):
        return True
    clock = client.reactor
    decided: Deferred[bool] = Deferred()

    def settle(taken: bool) -> None:
        if not decided.called:
            decided.callback(taken)

    checking = ensureDeferred(
        stopTaken(
            client, jobId, clock.seconds() + STOP_DEADLINE, lambda: False in stops
        )
    )
    checking.addCallbacks(settle, lambda f: settle(False))
    timers = [
        clock.callLater(STOP_PATIENCE, streams.say, stopWaitLine(jobId)),
        clock.callLater(STOP_DEADLINE, settle, False),
    ]
    try:
        return await decided
    finally:
        for timer in timers:
            if timer.active():
                timer.cancel()
        if not checking.called:
            checking.cancel()
            checking.addErrback(lambda f: f.trap(CancelledError))


def stopWaitLine(jobId: str) -> str:
    """What jw says while it makes sure the server has a stop."""
    return (
        f"jw: making sure the server has the stop of job {jobId} "
        f"(at most {STOP_DEADLINE:g} s)"
    )


#: Bytes per C{POST /jobs/ID/stdin} (under the server's smallest body cap).
STDIN_CHUNK = 32 * 1024


async def feedStdin(
    client: AnyClient,
    jobId: str,
    streams: Streams,
    read: Callable[[int], Awaitable[bytes]],
    sayWaiting: bool = True,
) -> dict[str, Any] | None:
    """
    Send jw's stdin (C{read(size)}: its next bytes, b"" at its end) to the
    job, one chunk per request (each answered once the job's pipe can take
    more), then end of file. Each names its offset in the job's stdin, so
    one whose answer was lost (its connection broke, or it was not answered
    in the stall bound: the job does not read) is sent again, as a follow
    resumes, and each byte reaches the job once (a server that does not
    know offsets is fed as before). A job still in the queue is waited for
    (the server takes its stdin once it runs; jw says so once, if
    C{sayWaiting}: C{-f} said it already). A job that ended or closed its
    stdin first just stops the feed, as a closed pipe would.

    @return: the job if it ended without ever starting (nothing was sent)
        or before it took input jw had read for it (L{sayInputLeft}), else
        None.
    """
    from .follow import RESUME_FOR, resuming

    said = not sayWaiting
    offset: int | None = 0
    #: Attempts that failed after holding RESUME_FOR seconds or more (a
    #: write the job left waiting for an hour, its link reset twice): each
    #: failure after one is a new break for L{resuming}, not the same one.
    held = 0

    async def attempt(data: bytes, at: int) -> None:
        nonlocal held
        began = time.monotonic()
        try:
            await client.sendStdin(jobId, data, eof=not data, offset=at)
        except ClientError:
            if time.monotonic() - began >= RESUME_FOR:
                held += 1
            raise

    async def look(**options: Any) -> dict[str, Any]:
        """The job's record, asked again through a broken connection as a
        write is (a server restarting answered none for a second: the feed
        ended, and the job waited for its stdin for ever: fault round 29)."""
        found: dict[str, Any] = {}

        async def once() -> None:
            found.update(await client.job(jobId, **options))

        await resuming(client, once)
        return found

    async def send(data: bytes) -> None:
        nonlocal offset
        if offset is None:
            await client.sendStdin(jobId, data, eof=not data)
            return
        try:
            await resuming(
                client, functools.partial(attempt, data, offset), lambda: held
            )
        except ClientError as e:
            if e.status != 400 or "'offset'" not in str(e):
                raise
            # A server older than offsets: each write as before, once (not
            # sent again: it could then be taken twice).
            offset = None
            await client.sendStdin(jobId, data, eof=not data)
        else:
            offset += len(data)

    try:
        while True:
            try:
                data = await read(STDIN_CHUNK)
            except OSError as e:
                # jw's own stdin cannot be read (closed: 0>&-, EBADF; a
                # device's EIO): the feed ends as a refused one does (jw
                # said "stdin: ..." and the job waited for the rest for
                # ever: new user round 30).
                why = ClientError(f"jw's stdin cannot be read ({e.strerror or e})")
                raise await _inputRefused(client, jobId, offset, why) from None
            while True:
                try:
                    await send(data)
                    break
                except ClientError as e:
                    if e.status != 409:
                        raise
                    # 409: the job has ended, or closed its stdin, or has
                    # not started yet (PENDING: its stdin is taken once it
                    # runs).
                    job = await look()
                    if job["status"] == "PENDING" or _notStartedYet(e):
                        if not said and job["status"] == "PENDING":
                            said = True
                            streams.tell(
                                f"jw: job {jobId} is waiting to start: its "
                                "stdin will be sent once it starts"
                            )
                        job = await _untilStarted(client, job)
                        if job["status"] == "RUNNING":
                            continue  # send it again, now
                    if data and job["status"] == "RUNNING":
                        # It closed its stdin, or exited and its end is
                        # not recorded yet: a moment for that end, to say
                        # how it ended (jw said nothing, the record still
                        # RUNNING: new user round 28).
                        job = await look(wait=CLOSED_END_WAIT)
                    return job if neverStarted(job) or data else None
            if not data:
                return None
    except InputNotSent:
        raise
    except ClientError as e:
        raise await _inputRefused(client, jobId, offset, e) from None


class InputNotSent(ClientError):
    """
    C{jw exec -i} could not send all of jw's stdin (the server refused it:
    past C{--max-stdin-bytes}, or unreachable for longer than a follow
    resumes): one line says so, and jw exits non-zero.
    """


async def _inputRefused(
    client: AnyClient, jobId: str, offset: int | None, error: ClientError
) -> InputNotSent:
    """
    The feed of the job's stdin failed with C{error} after C{offset} bytes
    (None: not counted, an older server): its stdin is closed, so that the
    job does not wait for the rest for ever (it did: jw exited 0, or
    followed it for ever: new user round 28), if the server takes that.
    """
    try:
        await client.sendStdin(jobId, b"", eof=True, offset=offset)
    except ClientError:
        left = f"the job's stdin is left open: jw stop {jobId} ends the job"
    else:
        after = "" if offset is None else f" after {offset} bytes"
        left = f"the job's stdin was closed{after}"
    return InputNotSent(f"stdin: {error}: {left}", error.status, error.body)


def inputStatus(status: int, refused: bool) -> int:
    """
    The exit status of C{jw exec -i}: the job's (C{status}), but not 0 if
    jw's stdin could not be sent whole (C{refused}).
    """
    return 1 if refused and status == 0 else status


#: Seconds C{jw exec -i} waits for the end of a job that refused its input
#: (its stdin closed) while its record still said RUNNING.
CLOSED_END_WAIT = 1.0


def _notStartedYet(error: ClientError) -> bool:
    """Is this 409 the server's "has not started yet (PENDING)"?"""
    body = error.body if isinstance(error.body, dict) else {}
    return "(PENDING)" in str(body.get("error", ""))


#: The longest pause, in seconds, between two questions of C{jw exec -i}
#: whether its queued job has started: a job may wait in the queue for
#: hours, and each question is a request to the server.
QUEUED_POLL_MOST = 10.0


async def _untilStarted(client: AnyClient, job: dict[str, Any]) -> dict[str, Any]:
    """
    C{job} (as last seen) once it is no longer PENDING (it runs, or it
    ended without running): asked after pauses that double up to
    L{QUEUED_POLL_MOST}, so that its input is sent at most as long after its
    start as it had waited (or that long), at a bounded cost.
    """
    pauses = _doubling(0.1, QUEUED_POLL_MOST)
    while job["status"] == "PENDING":
        await client.pause(next(pauses))
        try:
            job = await client.job(job["id"])
        except ClientError as e:
            if e.status is not None and e.status not in ASK_AGAIN:
                raise
            # No answer (the server restarting), or asked to wait: a queued
            # job is waited for through an outage of any length, as a
            # follow waits for it (fault round 29).
    return job


def _doubling(first: float, most: float) -> Iterator[float]:
    """Pauses between polls: C{first}, doubling up to C{most}."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, most)


async def doList(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    _checkLimit(options.limit)
    filters: dict[str, Any] = {
        "status": options.status,
        "owner": options.owner,
        "name": options.name,
        # (Each as given: a name given twice is two filters, as the API
        # has them, not the last value: new user round 30.)
        "labels": [pair(each, "--label") for each in options.label],
        "limit": options.limit,
    }
    jobs, cursor = await client.listJobs(**filters, cursor=options.cursor)
    # A page of two filters or more searches so many jobs at most, and may
    # come short (even empty) with a cursor: the page is filled from the
    # next ones. Never the same page twice (a server, or a cache before
    # it, that answers each with the same cursor).
    asked: set[object] = set()
    while cursor is not None and (options.all or len(jobs) < options.limit):
        if cursor in asked:
            break  # (said: more exist, by the server's word)
        asked.add(cursor)
        if not options.all:
            filters["limit"] = options.limit - len(jobs)
        more, cursor = await client.listJobs(**filters, cursor=cursor)
        jobs.extend(more)
    if options.json:
        # As the API's page: next_cursor (null: no more) continues it with
        # --cursor (a script could not tell a page cut short: new user
        # round 29).
        streams.show(jsonLine({"jobs": jobs, "next_cursor": cursor}))
    else:
        streams.show(jobTable(jobs, client.reactor.seconds(), options.wide))
    if cursor is not None:  # after the table (shown and flushed): 2>&1 reads so
        streams.tell(f"jw: {len(jobs)} shown, more exist (--all: every one)")
    return 0


async def doStatus(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    if len(options.ids) == 1:
        job = await _record(client, options.ids[0])
        return showJob(job, options, client, streams)

    # One after the other: this verb runs on the quick client, whose
    # requests block (each is one short GET); none after a refused login
    # (each refusal counts against this address at the login throttle).
    answers: list[_Answer] = []
    for text in options.ids:
        answers.append(await _answer(text, _record(client, text)))
        refused = answers[-1].refused
        if refused is not None and (refused.status == 401 or len(answers) == 1):
            raise refused
    return _showSeveral(answers, options, client, streams)


async def doStop(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    signal, grace = _stopSignal(options)
    if len(options.ids) == 1:
        jobId = await resolveId(client, options.ids[0])
        try:
            job = await _stopJob(client, jobId, signal, grace, streams)
        except AlreadyEnded as e:
            if e.record is not None and options.json:
                streams.show(jsonLine(e.record))
            raise
        return showJob(job, options, client, streams)

    async def stop(text: str) -> dict[str, Any]:
        jobId = await resolveId(client, text)
        return await _stopJob(client, jobId, signal, grace, streams)

    # A refused login (a saved token expired) is found by one short request
    # first, not by one stop per id, each a refusal at the login throttle.
    first = await _answer(options.ids[0], _record(client, options.ids[0]))
    _loginRefused([first.refused])
    # Several at once (one grace for them, not one after another), shown
    # in the order of the arguments, not of the answers.
    answers = await _eachId(
        lambda text: _answer(text, stop(text)),
        options.ids,
        lambda text: streams.say(
            f"jw: {text}: not stopped (interrupted before its turn)"
        ),
        lambda text, answer: streams.say(_interruptedAnswer(text, answer)),
    )
    return _showSeveral(answers, options, client, streams)


async def _eachId(
    work: Callable[[str], Coroutine[Any, Any, T]],
    texts: list[str],
    notAsked: Callable[[str], None],
    answered: Callable[[str, T], None],
) -> list[T]:
    """
    C{work} of each id, L{IDS_AT_ONCE} at a time: the results in the order
    of C{texts}. C{work} catches its own failures (each id's is said).
    Interrupted (cancelled), in the order of C{texts}, the ids answered
    already are told to C{answered} with their results, and those whose
    turn had not come to C{notAsked} (they were left unsaid, and their
    jobs running: session review 33; the answered ones too: late review
    33); those under way say so themselves. Then the interrupt goes on,
    one C{CancelledError} (it was a C{FirstError} reported as unexpected,
    a traceback for each id).
    """
    from twisted.internet.defer import (
        CancelledError,
        Deferred,
        DeferredSemaphore,
        FirstError,
        ensureDeferred,
        gatherResults,
    )

    from ..relay import relay

    slots = DeferredSemaphore(IDS_AT_ONCE)
    begun: set[int] = set()
    finished: dict[int, T] = {}
    interrupted: list[bool] = []

    def begin(index: int) -> Any:
        if interrupted:
            # (A slot freed by a cancelled turn: no new one begins, its
            # request would be cut before it is sent.)
            raise CancelledError()
        begun.add(index)

        def keep(result: T) -> T:
            finished[index] = result
            return result

        return ensureDeferred(work(texts[index])).addCallback(keep)

    turns = [slots.run(begin, index) for index in range(len(texts))]
    gathered = gatherResults(turns, consumeErrors=True)

    def cancel(_: Deferred[list[T]]) -> None:
        interrupted.append(True)
        gathered.cancel()

    watched: Deferred[list[T]] = Deferred(cancel)
    relay(gathered, watched)
    try:
        return await watched
    except FirstError as e:
        if not e.subFailure.check(CancelledError):
            e.subFailure.raiseException()
    except CancelledError:
        pass
    for turn in turns:
        turn.addErrback(lambda f: None)
        turn.cancel()
    for index, text in enumerate(texts):
        if index in finished:
            answered(text, finished[index])
        elif index not in begun:
            notAsked(text)
    raise CancelledError()


def _interruptedAnswer(text: str, answer: _Answer) -> str:
    """What C{jw stop ID...}, interrupted, says of an id answered already."""
    if answer.failure is not None:
        return answer.failure
    status = (answer.record or {}).get("status", "?")
    return f"jw: {text}: stopped, ended {status}"


async def _record(client: JobworkerClient, text: str) -> dict[str, Any]:
    """The record of the job the id (or prefix) C{text} names."""
    return await client.job(await resolveId(client, text))


async def _stopJob(
    client: JobworkerClient,
    jobId: str,
    signal: str | None,
    grace: float | None,
    streams: Streams,
) -> dict[str, Any]:
    """
    Stop the job; its record once it has ended. After L{STOP_PATIENCE},
    jw says it waits for it.

    @raise AlreadyEnded: the job had already ended (its record, if known).
    """
    from twisted.internet.defer import CancelledError

    later = client.reactor.callLater(
        STOP_PATIENCE,
        streams.tell,
        f"jw: waiting for job {jobId} to end (KILL follows after the grace)",
    )
    try:
        return await client.stop(jobId, signal, grace)
    except ClientError as e:
        if e.status != 409:
            raise
        refusal = e  # 409: the job had already ended
    except (CancelledError, KeyboardInterrupt):
        # An interrupt ends the wait, not the stop (it exited 130 in
        # silence, as if called off: new user round 32), in its first
        # second too (the session's review).
        streams.say(
            f"jw: no longer waiting; the stop of job {jobId} goes on "
            f"(KILL after the grace): jw status {jobId}"
        )
        raise
    finally:
        if later.active():
            later.cancel()
    ended = await _endedRecord(client, jobId, refusal)
    body = refusal.body if isinstance(refusal.body, dict) else {}
    error = str(body.get("error", ""))
    status = None if ended is None else ended["status"]
    # A record not final (its end not known yet): the server's words say
    # what it is, its status would not.
    reason = error if status in ("PENDING", "RUNNING") and error else None
    raise AlreadyEnded(jobId, status, ended, "processes it left" in error, reason)


class _Answer(NamedTuple):
    """
    What one id of C{jw status ID...} or C{jw stop ID...} came to: the
    job's C{record} (None if not known), the line that says why it failed
    (None if it did not) and the exit status C{jw VERB ID} alone would have.
    """

    record: dict[str, Any] | None
    failure: str | None
    status: int
    #: The server refused the login itself (a 401), or gave no answer: not
    #: this id's failure (L{_notThisIds}).
    refused: ClientError | None = None


async def _answer(text: str, record: Awaitable[dict[str, Any]]) -> _Answer:
    """
    The L{_Answer} of the id given as C{text}, whose C{record} is being
    asked for: a failure is named by the id as given, as C{jw rm}'s.
    """
    try:
        return _Answer(await record, None, 0)
    except AlreadyEnded as e:
        return _Answer(e.record, f"jw: {text}: {e}", EXIT_ALREADY_ENDED)
    except (ClientError, UsageFailure) as e:
        refused = e if isinstance(e, ClientError) and _notThisIds(e) else None
        return _Answer(None, f"jw: {text}: {e}", 1, refused)


def _notThisIds(error: ClientError) -> bool:
    """
    Is C{error} the command's failure rather than one id's: the login
    refused (a 401), or no answer at all (the server unreachable, its CA
    wrong)? Said once, as for one id (it was said again for each id: new
    user round 28). Or the URL's path has no jobworker API (said once,
    not as each id's "not found": new user round 38).
    """
    return error.status in (401, None) or isinstance(error, NoAPIThere)


def _showSeveral(
    answers: list[_Answer],
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
) -> int:
    """
    Several ids' answers, in the order of the ids, each as the verb on it
    alone shows it: the records on stdout, a blank line between two (with
    C{--json}: one list, which holds the records of jobs a stop found ended
    too), then one line on stderr per id that failed.

    @return: the exit status: 1 if an id failed (as C{jw rm}), else
        L{EXIT_ALREADY_ENDED} if a stop found a job ended, else 0.
    @raise ClientError: the login was refused (a 401), said once as for
        one id (a saved token is forgotten), not as each id's failure.
    """
    refusals = [answer.refused for answer in answers if answer.refused is not None]
    _loginRefused([e for e in refusals if e.status == 401])
    if refusals and len(refusals) == len(answers):
        raise refusals[0]  # (no answer for any: once)
    if options.json:
        streams.show(jsonLine([a.record for a in answers if a.record is not None]))
    else:
        now = client.reactor.seconds()
        shown = [a.record for a in answers if a.failure is None]
        streams.show("\n".join(jobLines(job, now) for job in shown if job))
    for answer in answers:
        if answer.failure is not None:
            streams.say(answer.failure)
    statuses = {answer.status for answer in answers}
    return 1 if 1 in statuses else max(statuses)


def _loginRefused(refusals: list[ClientError | None]) -> None:
    """
    Raise the first of C{refusals} (the server refused the login: a
    401), if any: the command's failure, as for one id, not each id's.
    """
    for refusal in refusals:
        if refusal is not None:
            raise refusal


async def _endedRecord(
    client: JobworkerClient, jobId: str, refusal: ClientError
) -> dict[str, Any] | None:
    """
    The record of a job whose stop was refused as already ended (a 409):
    the one the answer carries, else the one a status request gets; None
    if neither says.
    """
    body = refusal.body if isinstance(refusal.body, dict) else {}
    job = body.get("job")
    if isinstance(job, dict) and isinstance(job.get("status"), str):
        return job
    try:
        asked = await client.job(jobId)
    except ClientError:
        return None
    return asked if isinstance(asked.get("status"), str) else None


async def doRemove(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:

    from twisted.internet.defer import CancelledError

    #: Interrupted: the first id's line, said before any other (it was
    #: never said: late review 33).
    firstLine: list[str] = []

    def say(line: str) -> None:
        while firstLine:
            streams.say(firstLine.pop())
        streams.say(line)

    async def remove(text: str) -> _Answer:
        """Delete one job; why it could not be, if it could not."""
        try:
            return await _answer(text, _removed(client, text))
        except CancelledError:
            say(f"jw: {text}: interrupted (it may be deleted: jw status {text})")
            raise

    # The first alone (a refused login is one refusal, not one per id at
    # the login throttle), then the rest a few at a time, each failure said
    # in the order of the arguments, not of the answers: an id without an
    # answer too (it was one line for all, naming none: Slurm user round 33).
    first = await remove(options.ids[0])
    if first.refused is not None:
        raise first.refused
    firstLine.append(first.failure or f"jw: {options.ids[0]}: deleted")
    try:
        rest = await _eachId(
            remove,
            options.ids[1:],
            lambda text: say(f"jw: {text}: not deleted (interrupted before its turn)"),
            lambda text, answer: say(answer.failure or f"jw: {text}: deleted"),
        )
    except CancelledError:
        while firstLine:
            streams.say(firstLine.pop())
        raise
    firstLine.clear()
    answers = [first, *rest]
    refusals = [a.refused for a in answers if a.refused is not None]
    _loginRefused([e for e in refusals if e.status == 401])
    failures = [a.failure for a in answers if a.failure is not None]
    for line in failures:
        streams.say(line)
    return 1 if failures else 0


async def _removed(client: JobworkerClient, text: str) -> dict[str, Any]:
    """Delete the job the id (or prefix) C{text} names."""
    await client.deleteJob(await resolveId(client, text))
    return {}


async def doClean(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    olderThan = None if options.older_than is None else parseAge(options.older_than)
    deleted, cursor = 0, None
    while True:  # the server deletes (and searches) a bounded batch a request
        result = await client.clean(options.status, options.owner, olderThan, cursor)
        deleted += result["deleted"]
        following = result.get("next_cursor")
        if following is None:
            if not (result.get("more") and result["deleted"]):
                break  # (an older server gives no cursor: on while it deletes)
        elif cursor is not None and not int(following) > int(cursor):
            break  # (never the same search twice)
        cursor = following
    if options.json:
        streams.show(jsonLine({"deleted": deleted}))
    else:
        streams.show(f"deleted {deleted} ended job{'s' if deleted != 1 else ''}\n")
    return 0


async def doLogs(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    from .follow import followOutput, readStream

    jobId = await resolveId(client, options.id)
    _checkLogsOptions(options)
    told: list[str] = []  # the job's status, as each answer tells it
    try:
        if options.stdout or options.stderr or options.offset is not None:
            # One stream, raw, to stdout (jw logs --stderr ID > errors.txt).
            stream = "stderr" if options.stderr else "stdout"
            final = await readStream(
                client,
                jobId,
                stream,
                streams,
                options.offset or 0,
                options.tail,
                options.follow,
                told.append,
            )
            if not options.follow:
                return 0
            sayStopped(final, streams)
            return exitStatusOf(final)
        end = await followOutput(
            client, jobId, streams, options.follow, options.tail, told.append
        )
    except ClientError as e:
        if not options.follow:
            raise
        raise loginLapsed(jobId, e, told[-1] if told else None, client) from None
    if not options.follow:
        return 0
    final = await followedEnd(client, jobId, end)
    sayStopped(final, streams)
    return exitStatusOf(final)


async def doWait(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    from .follow import waitFor

    options.id = await resolveId(client, options.id)
    return await waitFor(client, options, streams)


async def doDrain(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    from .drain import doDrain as drain

    return await drain(options, client, streams, interrupts)


async def doIds(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    """
    The hidden C{jw _ids} of the completion scripts: recent job ids, only
    those in a job id's form. bash's C{compgen -W} expands the words it is
    given: an "id" of C{$(id)} from a server ran as the user at a TAB
    (jw security round 39). Those the verb completed (C{options.completed},
    from C{JW_IDS_VERB}) can use, if the scripts said which
    (L{_completable}).
    """
    jobs = await _completable(client, getattr(options, "completed", None))
    ids = [job.get("id") for job in jobs if isinstance(job, dict)]
    streams.show(
        "".join(
            f"{jobId}\n"
            for jobId in ids
            if isinstance(jobId, str) and _JOB_ID.fullmatch(jobId)
        )
    )
    return 0


#: How many job ids completion offers (per status asked for).
IDS_LIMIT = 200

#: The permission (C{GET /whoami}'s name) a verb's job ids are used with;
#: the others only look (C{jobs.get}).
IDS_PERMISSIONS = {"stop": "jobs.stop", "rm": "jobs.delete", "logs": "jobs.logs"}


async def _completable(client: JobworkerClient, verb: str | None) -> list[Any]:
    """
    The jobs whose ids completion offers for C{verb} (None: not said, by
    an older script or C{exec --after}: the newest L{IDS_LIMIT} of all,
    as before). Every user's newest were offered for any verb, ended jobs
    to C{stop}, running ones to C{rm}, another Developer's to both, and
    one's own fell out of them on a busy server (new user round 40). So,
    for C{stop}, only the jobs not ended (a request per status); for
    C{rm}, only the ended ones; for the others, any; and only the user's
    own (L{_idsOwner}). All of it within completion's 2 s
    (C{cli.IDS_DEADLINE}).
    """
    if verb is None:
        jobs, _ = await client.listJobs(limit=IDS_LIMIT)
        return jobs
    mayUse, owner = await _idsOwner(client, verb)
    if not mayUse:
        return []
    if verb == "stop":
        found: list[Any] = []
        for status in _LIVE:
            jobs, _ = await client.listJobs(status, owner, IDS_LIMIT)
            found.extend(jobs)
        return found
    jobs, _ = await client.listJobs(owner=owner, limit=IDS_LIMIT)
    if verb == "rm":
        return [job for job in jobs if _ended(job)]
    return jobs


async def _idsOwner(client: JobworkerClient, verb: str) -> tuple[bool, str | None]:
    """
    Whether completion offers any job for C{verb} (the role has its
    permission, L{IDS_PERMISSIONS}), and whose (None: every user's), as
    C{GET /whoami} says: the user's own, if their role is limited to
    their own jobs in anything (a Developer); every user's if it is not
    (an Admin's, or a Reader's, who has none). A server with no
    C{/whoami} (404): every user's, as before.
    """
    try:
        me = await client.whoami()
    except ClientError as e:
        if e.status == 404:
            return True, None
        raise
    user = me.get("user")
    permissions = me.get("permissions")
    if not isinstance(permissions, dict):
        return True, user if isinstance(user, str) else None
    if IDS_PERMISSIONS.get(verb, "jobs.get") not in permissions:
        return False, None
    own = "own" in permissions.values() and isinstance(user, str)
    return True, user if own else None


def _ended(job: Any) -> bool:
    """Whether C{job} (a listed record) has ended."""
    return isinstance(job, dict) and job.get("status") not in (*_LIVE, None)


#: A job id's form (a UUID's, lower case), as the server makes them.
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


#: The verbs that talk to the server, by name.
VERBS: dict[str, Verb] = {
    "exec": doExec,
    "list": doList,
    "status": doStatus,
    "stop": doStop,
    "rm": doRemove,
    "clean": doClean,
    "logs": doLogs,
    "wait": doWait,
    "drain": doDrain,
    "_ids": doIds,
}
