"""C{jw}: the command-line client. A thin shell over L{JobworkerClient}."""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, NoReturn, Protocol, TextIO

from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.task import deferLater, react

from ..tls import TLSConfigError
from ..units import parseSize
from .config import (
    DEFAULT_SERVER,
    DEV_CA_HOSTS,
    ConfigError,
    Settings,
    configPath,
    forgetToken,
    loadToken,
    resolve,
    saveToken,
    tokensPath,
    trustedCA,
)
from .http import ClientError, JobworkerClient, exitStatusOf

EXAMPLES = """\
examples:
  jw exec -- sleep 30                      start a job, print its id
  ID=$(jw exec -- make test)               keep the id for later
  jw exec --follow -- sh -c 'echo hi'      run, stream output, exit with its code
  jw list                                  the newest 100 jobs
  jw list --status RUNNING --owner alice   filter
  jw rm $ID                                delete an ended job and its output
  jw status $ID ; jw stop $ID
  jw logs --follow $ID                     stdout (and stderr to stderr) until
                                           the job ends; exits with its status
  jw logs --stderr --offset 100 $ID        stderr from byte 100
  jw logs --tail 20 --follow $ID           the last 20 lines, then new output
  jw wait --timeout 60 $ID                 wait for the end, exit with its status

  jw login                                 ask the password once, keep a token
                                           (0600) that later commands use
  jw logout                                forget it
  jw --cert me.pem --key me.key list       authenticate with a client certificate
  jw config                                the settings in force, and whence
  source <(jw completion bash)             tab completion (bash; zsh too)

settings (flags override the environment, which overrides the config file):
  --server / JW_SERVER / server      default https://localhost:8443
  --ca / JW_CA / ca                  default: the development CA, for
                                     localhost, 127.0.0.1 and ::1 only
  --cert, --key / JW_CERT, JW_KEY / cert, key
                                     a client certificate (no password asked)
  JW_USER / user, JW_PASSWORD        credentials (else a token saved by
                                     jw login, else prompted on the terminal)
  JW_TOKEN                           a bearer token to use (CI: from POST
                                     /tokens); no password, nothing saved
  config file: $XDG_CONFIG_HOME/jobworker/config.toml (~/.config/...), e.g.
    server = "https://jobs.example.com:8443"
    ca = "ca.pem"      # relative to the config file
    user = "alice"
    cert = "alice.pem" # optional, with key = "alice.key"
"""

#: How often a follower reconnects after its stream broke off.
FOLLOW_RETRIES = 5


class UsageFailure(Exception):
    """Bad command-line input; the message is one line."""


class StartFailure(Exception):
    """
    The command could not begin (a bad setting, file or server URL, no
    terminal to ask for a password): nothing was sent; the message is one line.
    """


class SavedLoginRefused(Exception):
    """The server refused the token C{jw login} kept (now forgotten)."""


class HelpShown(Exception):
    """C{--help} printed the help: the command is done."""


class ArgumentsRefused(Exception):
    """The argument parser refused the command line (its usage is printed)."""


class _NoPrompt(Exception):
    """Completion asked for ids but there is no way to log in without asking."""


def _stdoutToDevNull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@dataclass
class Streams:
    """
    Where the CLI writes: the process's stdout and stderr by default,
    in-memory buffers in tests.

    @ivar out: the job's stdout and every result.
    @ivar err: the job's stderr (C{exec --follow}, C{logs --follow}).
    @ivar messages: C{jw}'s own one-line messages.
    @ivar abandonOut: called once C{out}'s reader has gone (a broken pipe),
        so that no later flush of C{out} fails.
    """

    out: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    err: BinaryIO = field(default_factory=lambda: sys.stderr.buffer)
    messages: TextIO = field(default_factory=lambda: sys.stderr)
    abandonOut: Callable[[], None] = _stdoutToDevNull

    def say(self, line: str) -> None:
        """One line on C{messages}, whatever a server or job put in it."""
        self.messages.write(printable(line) + "\n")

    def show(self, text: str) -> None:
        """Text (lines, each ending in a newline) on C{out}."""
        self.out.write(text.encode("utf-8"))


class Connect(Protocol):
    """Builds the client for a server (L{JobworkerClient.connect}, or a fake)."""

    def __call__(
        self,
        reactor: Any,
        server: str,
        caPath: str,
        user: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        certPath: str | None = None,
        keyPath: str | None = None,
    ) -> JobworkerClient:
        """A client of C{server} with these credentials."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that writes to L{Streams} and raises, never exits."""

    def __init__(self, *args: Any, streams: Streams, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams = streams

    def print_help(self, file: Any = None) -> None:
        self._streams.show(self.format_help())

    def print_usage(self, file: Any = None) -> None:
        # Only a refused command line prints the usage (before its error).
        self._streams.messages.write(self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status == 0:
            raise HelpShown()
        raise ArgumentsRefused((message or "").rstrip("\n"))


def buildParser(streams: Streams) -> argparse.ArgumentParser:
    """The C{jw} argument parser, with its subcommands; it writes to C{streams}."""
    parser = _Parser(
        streams=streams,
        prog="jw",
        description="Run and watch jobs on a jobworker server.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--server", help=f"server URL (env JW_SERVER, default {DEFAULT_SERVER})"
    )
    parser.add_argument(
        "--ca",
        help="CA certificate that signs the server's (env JW_CA, default: "
        "the development CA, for localhost, 127.0.0.1 and ::1 only)",
    )
    parser.add_argument(
        "--cert", help="client certificate (PEM) to authenticate with (env JW_CERT)"
    )
    parser.add_argument("--key", help="its private key (PEM) (env JW_KEY)")
    common = _Parser(add_help=False, streams=streams)
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    command = functools.partial(commands.add_parser, streams=streams)

    execute = command(
        "exec",
        parents=[common],
        help="start a job",
        description="Start COMMAND with ARGs on the server (no shell) and print "
        "the job id. With --follow, stream its output and exit with its exit "
        "status (128+N if killed by signal N, 127 if it could not start).",
        epilog="example: jw exec --env LEVEL=debug --cwd /tmp -- ls -la",
    )
    execute.add_argument("--follow", "-f", action="store_true", help="stream output")
    execute.add_argument(
        "--env", "-e", action="append", default=[], metavar="K=V", help="set a variable"
    )
    execute.add_argument("--cwd", help="working directory of the job")
    execute.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop it after this long"
    )
    execute.add_argument("--memory", metavar="SIZE", help="memory limit (512M, 2G)")
    execute.add_argument("--cpu", type=int, metavar="MILLICORES", help="CPU limit")
    execute.add_argument("--pids", type=int, metavar="N", help="process-count limit")
    execute.add_argument("command", metavar="COMMAND")
    execute.add_argument("args", nargs=argparse.REMAINDER, metavar="ARG")

    listing = command(
        "list",
        parents=[common],
        help="list jobs, newest first",
        epilog="example: jw list --status FAILED --owner alice --all",
    )
    listing.add_argument(
        "--status",
        type=str.upper,
        choices=["PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED"],
    )
    listing.add_argument("--owner", help="only this user's jobs")
    listing.add_argument(
        "--limit", type=int, default=100, help="jobs per page (1-1000, default 100)"
    )
    listing.add_argument("--all", action="store_true", help="every page, not just one")
    for verb, text in (
        ("status", "show a job"),
        ("stop", "stop a job"),
        ("rm", "delete an ended job and its output"),
    ):
        sub = command(
            verb, parents=[common], help=text, epilog=f"example: jw {verb} $ID"
        )
        sub.add_argument("id", metavar="ID")

    logs = command(
        "logs",
        help="print a job's output (raw bytes)",
        epilog="example: jw logs --follow --stderr $ID",
    )
    logs.add_argument("--follow", "-f", action="store_true", help="wait for more")
    logs.add_argument("--stderr", action="store_true", help="stderr, not stdout")
    logs.add_argument("--offset", type=int, default=0, help="start at this byte")
    logs.add_argument("--tail", type=int, help="start at the last N lines")
    logs.add_argument("id", metavar="ID")

    wait = command(
        "wait",
        parents=[common],
        help="wait until a job ends; exit with its exit status",
        description="Wait for the job to end and exit with its exit status "
        "(128+N if killed by signal N, 127 if it could not start); exit 124 "
        "if --timeout passes first.",
        epilog="example: jw wait --timeout 600 $ID && echo passed",
    )
    wait.add_argument("--timeout", type=float, help="give up after S seconds")
    wait.add_argument("id", metavar="ID")

    command(
        "login",
        help="ask the password once and keep a token for later commands",
        description="Get a bearer token from the server (POST /tokens) with "
        "your password or client certificate, and keep it in "
        "$XDG_CONFIG_HOME/jobworker/tokens.json (mode 0600). Later commands "
        "use it until it expires, then ask for the password again.",
        epilog="example: jw login && jw list",
    )
    command(
        "logout",
        help="delete the token jw login kept for this server",
        epilog="example: jw logout",
    )
    command(
        "config",
        help="show the settings in force and where each comes from",
        epilog="example: jw --server https://other:8443 config",
    )
    completion = command(
        "completion",
        help="print a shell completion script",
        epilog="example: source <(jw completion bash)",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    command("_ids", help=argparse.SUPPRESS)
    return parser


def parseEnv(pairs: list[str]) -> dict[str, str]:
    """C{["K=V", ...]} -> C{{"K": "V"}}."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageFailure(f"--env needs NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def execLimits(options: argparse.Namespace) -> dict[str, int]:
    """The C{limits} of C{jw exec --memory/--cpu/--pids} (the server checks)."""
    limits: dict[str, int] = {}
    if options.memory is not None:
        try:
            limits["memory_bytes"] = parseSize(options.memory)
        except ValueError as e:
            raise UsageFailure(f"--memory: {e}") from None
    if options.cpu is not None:
        limits["cpu_millicores"] = options.cpu
    if options.pids is not None:
        limits["pids"] = options.pids
    return limits


def credentials(environ: dict[str, str], user: str | None = None) -> tuple[str, str]:
    """C{JW_USER} (or the configured user)/C{JW_PASSWORD}, else a prompt."""
    user = environ.get("JW_USER") or user
    password = environ.get("JW_PASSWORD")
    if user and password is not None:
        return user, password
    # Not open("/dev/tty", "r+"): a terminal is not seekable, and that
    # raises io.UnsupportedOperation (an OSError) on a working terminal.
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise UsageFailure(
            "no terminal to ask for credentials: set JW_USER and JW_PASSWORD"
        ) from None
    try:
        if not user:
            os.write(fd, b"Username: ")
            user = _readLine(fd).strip()
        # getpass opens the terminal itself and turns echo off.
        password = getpass.getpass(f"Password for {user}: ")
    finally:
        os.close(fd)
    if not user:
        raise UsageFailure("no user name given")
    return user, password


def _readLine(fd: int, limit: int = 1024) -> str:
    """A line typed on the terminal C{fd} (without its newline)."""
    data = b""
    while len(data) < limit:
        chunk = os.read(fd, 1)
        if not chunk or chunk == b"\n":
            break
        data += chunk
    return data.decode("utf-8", "replace")


def printable(text: str) -> str:
    """
    C{text} as it may reach a terminal: every character that is not
    printable (controls such as ESC and newline, format characters such as a
    right-to-left override, lone surrogates) shown as its Python escape, so
    job data cannot move the cursor, retitle the window or fake a line.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _printJob(job: dict[str, Any], out: BinaryIO) -> None:
    lines = [
        printable(f"{key}: {'' if value is None else value}")
        for key, value in job.items()
    ]
    out.write(("\n".join(lines) + "\n").encode("utf-8"))


def age(stamp: str, now: float) -> str:
    """How long ago an RFC 3339 time was, shortly: C{42s}, C{5m}, C{3h}, C{2d}."""
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "?"
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _printTable(jobs: list[dict[str, Any]], out: BinaryIO) -> None:
    now = time.time()
    rows = [("ID", "OWNER", "STATUS", "EXIT", "AGE", "COMMAND")]
    for job in jobs:
        exitText = (
            str(job["exit_code"])
            if job["exit_code"] is not None
            else (job["signal"] or "")
        )
        command = printable(" ".join([job["command"], *job["args"]]))
        rows.append(
            (
                printable(job["id"]),
                printable(job["owner"]),
                printable(job["status"]),
                printable(exitText),
                age(job["created_at"], now),
                command if len(command) <= 60 else command[:57] + "...",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    text = "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5]))
        + "  "
        + row[5]
        for row in rows
    )
    out.write((text + "\n").encode("utf-8"))


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


async def carryOut(
    options: argparse.Namespace,
    client: JobworkerClient,
    streams: Streams,
) -> int:
    """Carry out one parsed command with C{client}; return the exit status."""
    verb = options.verb
    if verb == "exec":
        job = await client.createJob(
            options.command,
            options.args,
            parseEnv(options.env),
            options.cwd,
            timeout=options.timeout,
            limits=execLimits(options),
        )
        if options.json and not options.follow:
            streams.out.write(json.dumps(job).encode("utf-8") + b"\n")
        elif not options.follow:
            streams.out.write(printable(job["id"]).encode("utf-8") + b"\n")
        if not options.follow:
            return 0
        await followAll(
            followStream(client, job["id"], "stdout", streams.out),
            followStream(client, job["id"], "stderr", streams.err),
        )
        final = await client.job(job["id"])
        if (
            final["error"]
            and final["status"] == "FAILED"
            and final["exit_code"] is None
        ):
            streams.messages.write(
                printable(f"jw: job {final['id']}: {final['error']}") + "\n"
            )
        if options.json:
            streams.out.write(json.dumps(final).encode("utf-8") + b"\n")
        return exitStatusOf(final)
    if verb == "list":
        if not 1 <= options.limit <= 1000:
            raise UsageFailure("--limit must be from 1 to 1000")
        jobs, cursor = await client.listJobs(
            options.status, options.owner, options.limit
        )
        while options.all and cursor is not None:
            more, cursor = await client.listJobs(
                options.status, options.owner, options.limit, cursor
            )
            jobs.extend(more)
        if cursor is not None:
            streams.messages.write("jw: more jobs exist: use --all or --limit\n")
        if options.json:
            streams.out.write(json.dumps({"jobs": jobs}).encode("utf-8") + b"\n")
        else:
            _printTable(jobs, streams.out)
        return 0
    if verb in ("status", "stop"):
        job = await (
            client.job(options.id) if verb == "status" else client.stop(options.id)
        )
        if options.json:
            streams.out.write(json.dumps(job).encode("utf-8") + b"\n")
        else:
            _printJob(job, streams.out)
        return 0
    if verb == "_ids":
        jobs, _ = await client.listJobs(limit=200)
        ids = "".join(f"{printable(job['id'])}\n" for job in jobs)
        streams.out.write(ids.encode("utf-8"))
        return 0
    if verb == "wait":
        return await waitFor(client, options, streams)
    if verb == "rm":
        await client.deleteJob(options.id)
        return 0
    if verb == "logs":
        stream = "stderr" if options.stderr else "stdout"
        if options.offset < 0:
            raise UsageFailure("--offset must not be negative")
        if options.tail is not None and options.tail < 0:
            raise UsageFailure("--tail must not be negative")
        if options.follow:
            # Until the job ends; without --stderr its stderr goes along to
            # our stderr, like jw exec --follow. Then exit with its status.
            follows = [
                followStream(
                    client,
                    options.id,
                    stream,
                    streams.out,
                    options.offset,
                    options.tail,
                )
            ]
            if not options.stderr:
                follows.append(followStream(client, options.id, "stderr", streams.err))
            await followAll(*follows)
            return exitStatusOf(await client.job(options.id))
        else:
            await client.logs(
                options.id,
                _writer(streams.out),
                stream,
                options.offset,
                tail=options.tail,
            )
        return 0
    raise UsageFailure(f"unknown command {verb!r}")


async def followAll(*follows: Coroutine[Any, Any, None]) -> None:
    """Run followers side by side; the first failure is raised as itself."""
    try:
        await gatherResults([ensureDeferred(f) for f in follows], consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()


#: Exit status when our own stdout was closed under us (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141

#: Exit status of C{jw wait} when its timeout passes first (as timeout(1)).
EXIT_TIMED_OUT = 124


async def waitFor(
    client: JobworkerClient, options: argparse.Namespace, streams: Streams
) -> int:
    """Long-poll the job until it ends (or the timeout passes)."""
    deadline = (
        None if options.timeout is None else client.reactor.seconds() + options.timeout
    )
    clock = client.reactor
    while True:
        remaining = 60.0 if deadline is None else deadline - clock.seconds()
        wait = max(0.0, min(60.0, remaining))
        asked = clock.seconds()
        job = await client.job(options.id, wait=wait)
        if job["status"] not in ("RUNNING", "PENDING"):
            if options.json:
                streams.out.write(json.dumps(job).encode("utf-8") + b"\n")
            return exitStatusOf(job)
        if deadline is not None and clock.seconds() >= deadline:
            streams.messages.write(
                printable(f"jw: job {options.id} still running") + "\n"
            )
            return EXIT_TIMED_OUT
        # A server that answers "still running" before the wait is over
        # (an old one, or a record it cannot wait on) must not make this a
        # busy loop.
        early = min(wait, 1.0) - (clock.seconds() - asked)
        if early > 0:
            await deferLater(clock, early)


async def followStream(
    client: JobworkerClient,
    jobId: str,
    stream: str,
    out: BinaryIO,
    offset: int = 0,
    tail: int | None = None,
) -> None:
    """
    Copy one stream to C{out} until the job ends; if the connection breaks,
    reconnect from the byte after the last one received (no gap, no repeat).
    """
    position = offset

    def sink(data: bytes) -> None:
        nonlocal position
        out.write(data)
        out.flush()
        position += len(data)

    def started(start: int) -> None:
        # Where the server began (it picks the start of a tail): from then on
        # a reconnection resumes by absolute offset.
        nonlocal position, tail
        position = start
        tail = None

    failures = 0
    while True:
        try:
            await client.logs(
                jobId, sink, stream, position, follow=True, tail=tail, onStart=started
            )
            return
        except ClientError as e:
            if e.status is not None or failures >= FOLLOW_RETRIES:
                raise
        failures += 1
        await deferLater(client.reactor, 0.2 * failures)


#: How each failure is shown, first match wins: its exit status, and the
#: one line on stderr (None: nothing more). Never a traceback.
FAILURES: tuple[tuple[type[Exception], int, Callable[[Exception], str | None]], ...] = (
    (HelpShown, 0, lambda e: None),
    (ArgumentsRefused, 2, str),  # after the usage; "jw VERB: error: ..."
    (StartFailure, 2, lambda e: f"jw: {e}"),
    (ConfigError, 2, lambda e: f"jw: {e}"),
    (TLSConfigError, 2, lambda e: f"jw: {e}"),
    (_NoPrompt, 1, lambda e: None),  # completion never prompts
    (
        SavedLoginRefused,
        1,
        lambda e: (
            "jw: the saved login was refused (expired, the server's key "
            "changed, or your user changed): run jw login"
        ),
    ),
    (UsageFailure, 1, lambda e: f"jw: {e}"),
    (ClientError, 1, lambda e: f"jw: {e}"),
    # Our reader went away (jw logs -f | head): stop quietly, as a
    # pipeline's writer does, with the SIGPIPE status.
    (BrokenPipeError, EXIT_BROKEN_PIPE, lambda e: None),
    (Exception, 1, lambda e: f"jw: unexpected error: {e!r}"),  # a bug
)


def report(error: Exception, streams: Streams) -> int:
    """Show C{error} as L{FAILURES} says; return its exit status."""
    if isinstance(error, BrokenPipeError):
        streams.abandonOut()
    for kind, status, message in FAILURES:
        if isinstance(error, kind):
            line = message(error)
            if line is not None:
                streams.say(line)
            return status
    raise error  # unreachable: the last row matches every Exception


async def run(
    reactor: Any,
    argv: list[str] | None,
    environ: dict[str, str],
    streams: Streams,
    connect: Connect = JobworkerClient.connect,
) -> int:
    """
    Carry out one C{jw} command line; return its exit status. Every byte of
    output goes to C{streams}, every failure is shown by L{report}.

    @param reactor: the reactor (or, in tests, a clock) the client waits on.
    @param argv: the arguments (None: C{sys.argv[1:]}).
    @param environ: the environment (settings, credentials, config folder).
    @param connect: builds the client (tests: one over C{StubTreq}).
    """
    try:
        return await _commandLine(reactor, argv, environ, streams, connect)
    except Exception as e:
        return report(e, streams)


async def _commandLine(
    reactor: Any,
    argv: list[str] | None,
    environ: dict[str, str],
    streams: Streams,
    connect: Connect,
) -> int:
    options = buildParser(streams).parse_args(argv)
    path = configPath(environ)
    settings = resolve(
        {
            "server": options.server,
            "ca": options.ca,
            "cert": options.cert,
            "key": options.key,
        },
        environ,
        path,
    )
    tokens = tokensPath(environ)
    if options.verb == "config":
        return showConfig(settings, path, tokens, streams)
    if options.verb == "logout":
        try:
            forgotten = forgetToken(tokens, settings.server)
        except OSError as e:
            raise UsageFailure(f"cannot delete {tokens}: {e.strerror}") from None
        streams.show(
            f"logged out of {settings.server}\n"
            if forgotten
            else f"not logged in to {settings.server}\n"
        )
        return 0
    if options.verb == "completion":
        streams.show(COMPLETION[options.shell])
        return 0
    try:
        session = Session.open(
            reactor, options.verb, settings, environ, tokens, connect
        )
    except (UsageFailure, ClientError, ValueError) as e:
        raise StartFailure(str(e)) from None
    try:
        if options.verb == "login" or session.renew:
            await session.login(streams)
        if options.verb == "login":
            return 0
        return await carryOut(options, session.client, streams)
    except ClientError as e:
        if e.status == 401 and session.token:
            forgetToken(tokens, settings.server)
            raise SavedLoginRefused() from None
        raise
    finally:
        await session.client.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the C{jw} console script: L{run} on the real reactor."""
    streams = Streams()
    environ = dict(os.environ)

    def _start(reactor: Any) -> Deferred[None]:
        return ensureDeferred(run(reactor, argv, environ, streams)).addCallback(_exit)

    react(_start)


def _exit(code: int) -> None:
    raise SystemExit(code)


@dataclass
class Session:
    """
    How this run of C{jw} authenticates: a client certificate, else
    C{JW_PASSWORD}, else the token C{jw login} kept, else a prompt (and an
    expired login is renewed with the password given).
    """

    client: JobworkerClient
    server: str
    tokensFile: str
    token: str | None = None
    renew: bool = False

    @classmethod
    def open(
        cls,
        reactor: Any,
        verb: str,
        settings: Settings,
        environ: dict[str, str],
        tokensFile: str,
        connect: Connect = JobworkerClient.connect,
    ) -> Session:
        """Choose the credentials and build the client (may prompt)."""
        server, ca = settings.server, trustedCA(settings)
        if settings.cert or settings.key:
            client = connect(
                reactor, server, ca, certPath=settings.cert, keyPath=settings.key
            )
            return cls(client, server, tokensFile)
        if environ.get("JW_TOKEN") and verb != "login":
            # A token given outright (CI): used as is, never saved or forgotten.
            client = connect(reactor, server, ca, token=environ["JW_TOKEN"])
            return cls(client, server, tokensFile)
        token, saved = None, False
        if verb != "login":
            token, saved = loadToken(tokensFile, server, time.time(), settings.user)
        if token is not None and "JW_PASSWORD" not in environ:
            client = connect(reactor, server, ca, token=token)
            return cls(client, server, tokensFile, token=token)
        if verb == "_ids" and "JW_PASSWORD" not in environ:
            raise _NoPrompt()
        user, password = credentials(environ, settings.user)
        client = connect(reactor, server, ca, user, password)
        # An expired login is renewed with the password now given.
        return cls(client, server, tokensFile, renew=saved and token is None)

    async def login(self, streams: Streams) -> None:
        """Get a token with the credentials in use and keep it."""
        result = await self.client.createToken()
        expires = datetime.fromisoformat(
            str(result["expires_at"]).replace("Z", "+00:00")
        ).timestamp()
        try:
            saveToken(
                self.tokensFile, self.server, result["token"], expires, result["user"]
            )
        except OSError as e:
            raise UsageFailure(
                f"cannot save the token in {self.tokensFile}: {e.strerror}"
            ) from None
        streams.say(
            f"logged in to {self.server} as {result['user']} until "
            f"{result['expires_at']}"
        )


def showConfig(settings: Settings, path: str, tokensFile: str, streams: Streams) -> int:
    """Print the settings in force and their origins (no network, no secrets)."""
    lines = [f"config file: {path}" + ("" if os.path.exists(path) else " (absent)")]
    for key in ("server", "ca", "user", "cert", "key"):
        value = getattr(settings, key) or ("(prompted)" if key == "user" else "(none)")
        origin = settings.origins[key]
        if key == "ca" and origin == "default":
            origin += f" (the development CA: for {', '.join(DEV_CA_HOSTS)} only)"
        lines.append(f"{key} = {value}    # {origin}")
    token, saved = loadToken(tokensFile, settings.server, time.time())
    login = "valid" if token else ("expired" if saved else "none")
    lines.append(f"login token = {login}    # {tokensFile}")
    streams.show("".join(line + "\n" for line in lines))
    return 0


_VERBS = "exec list status stop logs wait rm login logout config completion"

COMPLETION = {
    "bash": f"""# jw completion for bash: source <(jw completion bash)
_jw() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}}
    local verb=${{COMP_WORDS[1]}}
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{_VERBS} --server --ca --cert --key --help" \\
            -- "$cur"))
        return
    fi
    case "$verb" in
        status|stop|logs|wait|rm)
            if [[ "$cur" == -* ]]; then
                COMPREPLY=($(compgen -W "--json --follow --stderr --offset --tail \
                    --timeout --help" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$(jw _ids 2>/dev/null)" -- "$cur"))
            fi ;;
        exec) COMPREPLY=($(compgen -W "--follow --env --cwd --json --" -- "$cur")) ;;
        list) COMPREPLY=($(compgen -W "--status --owner --limit --all --json" \\
            -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
    esac
}}
complete -F _jw jw
""",
    "zsh": f"""#compdef jw
# jw completion for zsh: source <(jw completion zsh)
_jw() {{
    if (( CURRENT == 2 )); then
        compadd -- {_VERBS}
        return
    fi
    case "$words[2]" in
        status|stop|logs|wait|rm) compadd -- $(jw _ids 2>/dev/null) ;;
        exec) compadd -- --follow --env --cwd --json -- ;;
        list) compadd -- --status --owner --limit --all --json ;;
        completion) compadd -- bash zsh ;;
    esac
}}
compdef _jw jw
""",
}
