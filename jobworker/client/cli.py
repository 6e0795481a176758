"""
C{jw}: the command-line client. A thin shell over L{JobworkerClient}: the
verbs are in L{jobworker.client.verbs}, the options in
L{jobworker.client.parser}, how each failure is shown in
L{jobworker.client.failures}.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

from ..pemfiles import readPEM
from ..tlserrors import TLSConfigError
from .calls import trustedAtLogin
from .completion import COMPLETION
from .config import (
    TRUSTED_AT_LOGIN,
    ConfigError,
    Settings,
    caInUse,
    checkCredentialsText,
    checkServer,
    checkToken,
    configPath,
    forgetToken,
    loadToken,
    readConfig,
    resolve,
    savedUser,
    tokenExpiry,
    tokensPath,
    tokenUser,
)
from .errors import ClientError, ServerUnreachable
from .failures import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_TIMED_OUT,
    ArgumentsRefused,
    GivenTokenExpired,
    HelpShown,
    SavedLoginRefused,
    StartFailure,
    UsageFailure,
    clientNow,
    givenTokenRefused,
    interrupted,
    report,
)
from .interrupts import Interrupts
from .parser import buildParser
from .session import Connect, Session, givenPassword, trustOnFirstUse
from .show import age, moment
from .streams import OutputFailed, Streams
from .verbs import VERBS, InputNotSent, Verb, checkArguments

__all__ = [
    "COMPLETION",
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_TIMED_OUT",
    "Streams",
    "age",
    "main",
    "run",
]

#: Verbs that run on the standard library's HTTP client
#: (L{jobworker.client.quick}), no reactor: the short ones, and those that
#: follow output or wait (L{jobworker.client.quickexec}, threads).
QUICK_VERBS = frozenset(
    {"status", "list", "clean", "drain", "config", "logout", "completion"}
    | {"exec", "logs", "wait"}
)


async def run(
    reactor: Any,
    argv: list[str] | None,
    environ: dict[str, str],
    streams: Streams,
    connect: Connect | None = None,
    interrupts: Interrupts | None = None,
) -> int:
    """
    Carry out one C{jw} command line; return its exit status. Every byte of
    output goes to C{streams}, every failure is shown by L{report}.

    @param reactor: the reactor (or, in tests, a clock) the client waits on.
    @param argv: the arguments (None: C{sys.argv[1:]}).
    @param environ: the environment (settings, credentials, config folder).
    @param connect: builds the client (tests: one over C{StubTreq}).
    @param interrupts: Ctrl-C and friends (tests fire them by hand).
    """
    from twisted.internet.defer import CancelledError, ensureDeferred

    if connect is None:
        from .http import JobworkerClient
        from .quick import keepAliveSeconds

        try:
            # Keepalive and the TLS handshake's deadline, as the quick client's.
            keepalive = keepAliveSeconds(environ, configPath(environ))
        except ConfigError as e:
            return report(e, streams)
        connect = functools.partial(JobworkerClient.connect, keepalive=keepalive)
    interrupts = interrupts or Interrupts()
    command = ensureDeferred(
        _commandLine(reactor, argv, environ, streams, connect, interrupts)
    )
    interrupts.setDefault(lambda name: command.cancel())
    late = _completionDeadline(reactor, argv, command)
    try:
        return await command
    except KeyboardInterrupt as e:
        # Ctrl-C (or SIGTERM, ...: PromptInterrupted) before the reactor
        # runs and takes the signals over: at a prompt for the password
        # (Session.open), as a quick verb's.
        return interrupted(e, interrupts.status, streams)
    except Exception as e:
        if interrupts.count and isinstance(e, CancelledError):
            return interrupts.status  # stopped on request: nothing more to say
        if late is not None and not late.active():
            return 1  # completion gave up: nothing to say (its stderr is unread)
        return report(e, streams)
    finally:
        if late is not None and late.active():
            late.cancel()


#: Seconds C{jw _ids} (a TAB on a job id) waits in all, connection,
#: handshake and answer: the user's shell waits with it.
IDS_DEADLINE = 2.0


def _completionDeadline(reactor: Any, argv: list[str] | None, command: Any) -> Any:
    """
    For C{jw _ids}, the call that cancels C{command} after L{IDS_DEADLINE}
    seconds; else None. It waited up to 2 x JW_KEEPALIVE (a minute) for a
    server that took the connection but never answered, the shell frozen
    meanwhile, for a convenience that then offered nothing (new user round
    38).
    """
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "_ids":
        return None
    return reactor.callLater(IDS_DEADLINE, command.cancel)


async def _commandLine(
    reactor: Any,
    argv: list[str] | None,
    environ: dict[str, str],
    streams: Streams,
    connect: Connect,
    interrupts: Interrupts,
    verbs: dict[str, Verb] = VERBS,
    parsed: argparse.Namespace | None = None,
) -> int:
    """
    One command line (C{parsed}: its options, if they were parsed already),
    its verb found in C{verbs}.
    """
    argv = sys.argv[1:] if argv is None else argv
    if parsed is not None:
        verb, options = parsed.verb, parsed
    elif argv and argv[0] == "_ids":  # completion's helper, not a verb to show
        verb, options = "_ids", idsOptions(argv[1:])
        # The verb whose ids are completed, as the scripts say (in the
        # environment: the arguments are the line's options; new user
        # round 40).
        options.completed = environ.get(IDS_VERB) or None
    else:
        options = buildParser(streams).parse_args(argv)
        verb = options.verb
    # jw -q: its informational lines not said (new user round 41).
    streams.quiet = bool(getattr(options, "quiet", False))
    if verb == "completion":
        # No setting is used: a bad config file stopped it too, and
        # `source <(jw completion bash)` then broke every shell (new user
        # round 35).
        streams.show(COMPLETION[options.shell])
        return 0
    path = configPath(environ)
    refused = None
    if verb == "config":
        # A config file that is refused is shown on its line, the other
        # lines without it, then said (it showed nothing: new user round 35).
        try:
            readConfig(path)
        except ConfigError as e:
            refused = e
    settings = resolve(
        {key: getattr(options, key, None) for key in ("server", "ca", "cert", "key")},
        environ,
        path if refused is None else None,
    )
    tokens = tokensPath(environ)
    ca, origin = caInUse(settings, environ)
    trustedAtLogin(ca if origin == TRUSTED_AT_LOGIN else None)
    if verb == "config":
        return showConfig(settings, path, tokens, streams, environ, refused)
    if verb == "logout":
        try:
            forgotten = forgetToken(tokens, settings.server)
        except OSError as e:
            raise UsageFailure(f"cannot delete {tokens}: {e.strerror}") from None
        # The server keeps no list of its tokens: one copied elsewhere
        # works until it expires (said, new user round 32).
        streams.show(
            f"logged out of {settings.server}: its token deleted here (a copy of "
            "it stays valid until it expires; the server keeps no list)\n"
            if forgotten
            else f"not logged in to {settings.server}\n"
        )
        return 0
    # Nothing is sent (no login either) for a command line that is wrong
    # by itself, or a server that is not an https:// URL.
    checkArguments(verb, options)
    checkServer(settings.server)
    checkToken(environ)
    checkCredentialsText(settings, environ)
    try:
        if verb == "login":
            trustOnFirstUse(settings, environ, path)
        session = Session.open(
            reactor, verb, settings, environ, tokens, connect, follows(verb, options)
        )
    except (ServerUnreachable, GivenTokenExpired):
        raise  # a failed connection, an expired JW_TOKEN: as any request's (exit 1)
    except (UsageFailure, ClientError, ValueError) as e:
        raise StartFailure(str(e)) from None
    if verb in ("logs", "wait") or (verb == "drain" and options.wait):
        # Not under jw exec -f: its prompt, in a thread of its own, raced
        # the stdin it forwards (-i: the password went to the job), and a
        # Ctrl-C there left the terminal's echo off (jw security round 39).
        session.renewUnderFollows(streams)
    try:
        # A password typed at the prompt is asked again if refused (a typo
        # ended the command: new user round 39).
        await session.confirm(streams, verb == "login" or session.renew)
        if verb == "login":
            return 0
        return await verbs[verb](options, session.client, streams, interrupts)
    except ClientError as e:
        if e.status == 401 and session.token:
            forgetToken(tokens, settings.server)
            if isinstance(e, InputNotSent):
                # What became of the job's stdin, first: the job waits on
                # it (it went unsaid: new user round 36).
                streams.say(f"jw: {e}")
            raise SavedLoginRefused() from None
        if e.status == 401 and getattr(session.client, "givenToken", False):
            # JW_TOKEN is what to renew: no message named it (new user
            # round 41).
            renew = givenTokenRefused(
                session.client.bearer(), clientNow(session.client)
            )
            raise ClientError(f"{e}; {renew}", e.status, e.body) from None
        raise
    finally:
        await session.client.close()


def follows(verb: str, options: argparse.Namespace) -> bool:
    """
    Does the command follow a job to its end, or the drain to no job
    running (C{jw drain --wait}), and may outlive a token?
    """
    return (
        verb == "wait"
        or (verb in ("exec", "logs") and bool(getattr(options, "follow", False)))
        or (verb == "drain" and bool(getattr(options, "wait", False)))
    )


#: The variable in which the completion scripts tell C{jw _ids} the verb
#: whose ids are completed (L{jobworker.client.verbs.doIds}).
IDS_VERB = "JW_IDS_VERB"

#: The options of the line being completed that C{jw _ids} takes: the
#: connection's (the ids of JW_SERVER's server were offered for the line's
#: --server: new user round 34).
IDS_OPTIONS = ("server", "ca", "cert", "key")


def idsOptions(argv: list[str]) -> argparse.Namespace:
    """
    C{jw _ids}'s options: C{--server}, C{--ca}, C{--cert}, C{--key} (as
    C{--flag VALUE} or C{--flag=VALUE}) among C{argv}, the words of the
    line being completed; any other word is passed over, and nothing is
    said of it (completion is never an error).
    """
    given: dict[str, str | None] = dict.fromkeys(IDS_OPTIONS)
    words = iter(argv)
    for word in words:
        flag, equals, value = word.partition("=")
        if flag.startswith("--") and flag[2:] in IDS_OPTIONS:
            if not equals:
                value = next(words, "")
            given[flag[2:]] = value or None
    return argparse.Namespace(**given)


def quickRun(
    argv: list[str] | None, environ: dict[str, str], streams: Streams
) -> int | None:
    """
    Carry out a command of L{QUICK_VERBS} without Twisted; None: the
    command needs the reactor. Interrupts stop it at once (exit status
    L{EXIT_INTERRUPTED}), unless the command answers them itself.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] == "_ids":
            return None
        options = buildParser(streams).parse_args(args)
    except (HelpShown, ArgumentsRefused, BrokenPipeError, OutputFailed) as e:
        # (The help and the version are written as the arguments are read:
        # to a full disk or a reader gone they were a traceback: new user
        # round 29.)
        return report(e, streams)
    if options.verb not in QUICK_VERBS:
        return None
    from .quick import KEEPALIVE, QuickClient, QuickClock, drive, keepAliveSeconds
    from .quickexec import quickExec

    interrupts = Interrupts()
    try:
        interrupts.installWithoutReactor()
        # (jw config shows a bad one among the rest: it showed nothing;
        # jw completion uses none.)
        keepalive = (
            KEEPALIVE
            if options.verb in ("config", "completion")
            else keepAliveSeconds(environ, configPath(environ))
        )
        return drive(
            _commandLine(
                QuickClock(),
                args,
                environ,
                streams,
                functools.partial(QuickClient.connect, keepalive=keepalive),
                interrupts,
                {**VERBS, "exec": quickExec},
                options,
            )
        )
    except KeyboardInterrupt as e:
        return interrupted(e, interrupts.status, streams)
    except Exception as e:
        return report(e, streams)


def main(argv: list[str] | None = None) -> None:
    """
    Entry point of the C{jw} console script: a short command on the
    standard library (L{quickRun}), else L{run} on the real reactor.
    """
    try:
        _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before jw's own handlers are in place (as it imports what
        # the verb needs): exit 130, quietly. It was a traceback (new user
        # round 36).
        raise SystemExit(EXIT_INTERRUPTED) from None


def _main(argv: list[str] | None) -> None:
    streams, closed = Streams.standard()
    if "stdout" in closed:
        # Nothing to show results on (and a file opened later would take
        # its place): refused before anything is done.
        try:
            streams.say("jw: stdout is closed: nothing was done (jw writes there)")
        except OSError:
            pass
        raise SystemExit(1)
    environ = dict(os.environ)
    code = quickRun(argv, environ, streams)
    if code is not None:
        try:
            _flushQuietly(streams)
        finally:
            _flushMessages(streams)
        raise SystemExit(code)
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    interrupts = Interrupts()

    def _start(reactor: Any) -> Any:
        reactor.callWhenRunning(interrupts.install, reactor)
        return ensureDeferred(
            run(reactor, argv, environ, streams, interrupts=interrupts)
        ).addCallbacks(_exit, _interruptedEarly)

    react(_start)


def _exit(code: int) -> None:
    raise SystemExit(code)


def _interruptedEarly(failure: Any) -> None:
    """
    Ctrl-C while L{run} imports what it needs, the reactor's handlers not
    in place yet: exit 130, quietly (it was Twisted's "main function
    encountered error" and a traceback, exit 1: new user round 36).
    """
    failure.trap(KeyboardInterrupt)
    raise SystemExit(EXIT_INTERRUPTED)


def _flushMessages(streams: Streams) -> None:
    """
    Flush jw's messages at exit. If their reader has gone too (C{jw exec -f
    ... 2>&1 | grep -m1 ready}: "stdout closed: stopping job" could not be
    written), what is left of them goes to /dev/null: Python's own flush
    at the exit failed, and made the exit status 120, not SIGPIPE's (new
    user round 40).
    """
    try:
        streams.messages.flush()
    except OSError:
        try:
            fd = streams.messages.fileno()
        except (AttributeError, OSError, ValueError):
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def _flushQuietly(streams: Streams) -> None:
    """Flush stdout at exit; a reader gone by then is the SIGPIPE status."""
    try:
        streams.out.flush()
    except BrokenPipeError:
        streams.abandonOut()
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    except OSError as e:  # a full disk: said, as a write that failed earlier
        streams.abandonOut()
        raise SystemExit(report(OutputFailed("to stdout", e), streams)) from None


def showConfig(
    settings: Settings,
    path: str,
    tokensFile: str,
    streams: Streams,
    environ: dict[str, str],
    refused: ConfigError | None = None,
) -> int:
    """
    Print the settings in force and their origins (no network, no secrets).
    A config file that is C{refused} is said on its line (the others shown
    without it), then in one line, exit 2, as every other verb refuses it.
    """
    if refused is not None:
        why = str(refused).removeprefix(f"{path}: ")
        lines = [f"config file: {path} (refused: {why})"]
    else:
        lines = [f"config file: {path}" + ("" if os.path.exists(path) else " (absent)")]
    token = None
    try:
        token, saved = loadToken(tokensFile, settings.server, time.time())
        login = "valid" if token else ("expired" if saved else "none")
        owner = savedUser(tokensFile, settings.server) if saved else None
        if owner is not None:
            # Whose: another user's is not used (new user round 34).
            login += f" ({owner}'s" + (
                f": not used for {settings.user})"
                if settings.user and settings.user != owner
                else ")"
            )
        # The one a command would send: the configured user's, if one is.
        token, _ = loadToken(tokensFile, settings.server, time.time(), settings.user)
    except ConfigError as e:  # the file others may read: say why it is unused
        login = f"refused: {e}"
    sent = _credentialsSent(settings, environ, token)
    for key in ("server", "ca", "user", "cert", "key"):
        value = getattr(settings, key) or ("(prompted)" if key == "user" else "(none)")
        origin = settings.origins[key]
        if key == "ca":
            value, origin = caInUse(settings, environ)
        elif key == "user" and (not settings.user or not sent.startswith("JW_USER")):
            # (A token or a certificate goes before JW_USER: its user is
            # the one, not JW_USER's, which was shown: new user round 30.)
            value, origin = _userSent(settings, environ, tokensFile, sent, value)
        if key in ("ca", "cert", "key") and value != "(none)":
            unreadable = _unreadable(value, key)
            if unreadable is not None:
                # Every command would fail on it: said here, where it is set.
                origin += f" (cannot read it: {unreadable})"
        lines.append(f"{key} = {value}    # {origin}")
    keepalive, badKeepAlive = _keepAliveShown(
        environ, path if refused is None else None
    )
    lines.append(keepalive)
    lines.append(f"login token = {login}    # {tokensFile}")
    lines.append(f"sent = {sent}")
    streams.show("".join(line + "\n" for line in lines))
    # Every other command refuses them before anything: so does this, once
    # everything is shown.
    status = 0
    for error in (refused, badKeepAlive):
        if error is not None:
            status = report(error, streams)
    return status


def _keepAliveShown(
    environ: dict[str, str], path: str | None
) -> tuple[str, ConfigError | None]:
    """
    C{jw config}'s C{keepalive} line (C{JW_KEEPALIVE}, else the config
    file's at C{path}, else the default), and why the setting is refused,
    if it is.
    """
    from ..keepalive import MOST
    from .quick import keepAliveSetting

    text = environ.get("JW_KEEPALIVE")
    try:
        seconds, origin = keepAliveSetting(environ, path)
    except ConfigError as e:
        shown = text if text and text.isprintable() else repr(text)
        why = f"refused: must be whole seconds from 1 to {MOST}"
        return f"keepalive = {shown}    # JW_KEEPALIVE ({why})", e
    return f"keepalive = {seconds}    # {origin}", None


def _unreadable(path: str, key: str) -> str | None:
    """
    Why the file at C{path} cannot be read (None: it can), as every command
    reads it (L{readPEM}: a FIFO was waited on here, for good).
    """
    try:
        readPEM(path, key)
    except TLSConfigError as e:
        # (The reason alone: the line names the file already.)
        return str(e).removeprefix(f"cannot read {key} {path}: ")
    return None


def _userSent(
    settings: Settings,
    environ: dict[str, str],
    tokensFile: str,
    sent: str,
    prompted: str,
) -> tuple[str, str]:
    """
    The user (and whence) of the credentials L{_credentialsSent} names,
    when none is configured: a token's, as it says, not a prompt's.
    """
    if sent.startswith("JW_TOKEN"):
        user = tokenUser(environ["JW_TOKEN"])
        return (user or "(the token's)"), "JW_TOKEN (as the token says)"
    if sent.startswith("the login token"):
        user = savedUser(tokensFile, settings.server)
        return (user or "(the token's)"), "the login token (jw login)"
    if sent.startswith("the client certificate"):
        return "(the client certificate's)", "cert"
    return prompted, settings.origins["user"]


def _credentialsSent(
    settings: Settings, environ: dict[str, str], token: str | None
) -> str:
    """
    Which credentials a command sends, in the order L{Session.open} picks
    them (never their values).
    """
    if settings.cert or settings.key:
        return "the client certificate (cert, key)"
    if environ.get("JW_TOKEN"):
        # One that has expired is not sent (new user round 41).
        now = time.time()
        expires = tokenExpiry(environ["JW_TOKEN"])
        if expires is not None and expires <= now:
            return (
                f"JW_TOKEN (a bearer token; expired at {moment(expires, now)}: "
                "not sent, set a new one)"
            )
        return "JW_TOKEN (a bearer token)"
    password = givenPassword(environ)
    if token is not None and password is None:
        return "the login token (jw login)"
    if password is not None and settings.user:
        return f"JW_USER/JW_PASSWORD ({settings.user})"
    return "what a prompt asks for (user name and password)"
