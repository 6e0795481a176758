"""
What can stop a C{jw} command, and the one table from each failure to its
exit status and its one line on stderr (never a traceback).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from ..tlserrors import TLSConfigError
from .config import ConfigError, tokenExpiry
from .errors import ClientError
from .show import moment
from .streams import OutputFailed, Streams

#: Exit status when our own stdout was closed under us (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141

#: Exit status of C{jw wait} when its timeout passes first (as timeout(1)).
EXIT_TIMED_OUT = 124

#: Exit status of C{jw stop} when the job had already ended: nothing was
#: stopped, but nothing failed either (a script may take it as done).
EXIT_ALREADY_ENDED = 3

#: Exit status after an interrupt (Ctrl-C, SIGTERM, SIGHUP), as a shell's.
EXIT_INTERRUPTED = 130

#: Exit status of C{jw exec -f} that created its job but could not follow
#: it (the server's log streams all taken): jw's own failure, the job runs
#: on. 125, as C{timeout(1)} and C{docker run} exit when they themselves
#: fail (126 and 127 stay the command's: it cannot run, it is not found).
EXIT_NOT_FOLLOWED = 125


class PromptInterrupted(KeyboardInterrupt):
    """
    A signal other than Ctrl-C's (SIGTERM, SIGHUP, SIGQUIT) at a prompt on
    the terminal: C{jw} ends as Ctrl-C ends it there, with one line and the
    status a shell gives a command that signal ended (L{status}).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    @property
    def status(self) -> int:
        """128 + the signal's number (143 for SIGTERM)."""
        return 128 + signal.Signals[self.name].value

    def line(self) -> str:
        """What jw says of it."""
        return f"jw: {self.name} at the prompt: nothing was sent"


def interrupted(error: KeyboardInterrupt, status: int, streams: Streams) -> int:
    """
    The exit status of a command a C{KeyboardInterrupt} ended (C{status}:
    the interrupts' own), and the line a L{PromptInterrupted} is said with.
    """
    if not isinstance(error, PromptInterrupted):
        return status
    try:
        streams.say(error.line())
    except OSError:
        pass  # the terminal went away (SIGHUP): the status says it
    return error.status


class UsageFailure(Exception):
    """The command cannot be carried out as given; the message is one line."""


class GivenTokenExpired(UsageFailure):
    """
    C{JW_TOKEN}'s claims say it has expired: it is not sent (sent, it
    counted as a failed login at the server's throttle: new user round
    41). Exit 1, as the server's refusal of it was: a login refused at the
    first request.
    """


class BadArguments(UsageFailure):
    """
    The command line itself is wrong (a flag's value, a missing command):
    found before anything is sent, exit status 2 as the parser's refusals.
    """


class StartFailure(Exception):
    """
    The command could not begin (a bad setting, file or server URL, no
    terminal to ask for a password): nothing was sent; the message is one line.
    """


class AlreadyEnded(Exception):
    """
    C{jw stop} of a job that had already ended (the server's 409): its
    status, and its C{record}, if the answer or a status request gave them.
    """

    def __init__(
        self,
        jobId: str,
        status: str | None,
        record: dict[str, Any] | None = None,
        leftovers: bool = False,
        reason: str | None = None,
    ) -> None:
        """
        @param leftovers: the stop reached what the job left, still being
            ended (the server says so): it ended them sooner.
        @param reason: the server's own words, said instead of the status
            when the record is not final (a Slurm job ended before its stop,
            its end not read yet: "had already ended (RUNNING)" said the
            opposite of itself: Slurm user round 33).
        """
        how = f" ({status})" if status else ""
        what = (
            "the processes it left are ended sooner by this stop"
            if leftovers
            else "nothing to stop"
        )
        if reason:
            super().__init__(f"job {jobId}: {reason}")
        else:
            super().__init__(f"job {jobId} had already ended{how}: {what}")
        self.status = status
        self.record = record


class NotFollowed(Exception):
    """
    C{jw exec -f} created its job, but the server would not send its output
    (its log streams all taken, 429, after jw asked again as long as a
    follow resumes): the job runs on without jw. C{status}: the job's, if
    known.
    """

    def __init__(
        self,
        jobId: str,
        why: str,
        status: str | None,
        relogin: bool = False,
        refused: bool = False,
        renew: str | None = None,
    ) -> None:
        """
        @param relogin: the login was refused under the follow (its token
            expired): a new one comes first.
        @param refused: the user name and password were refused under the
            follow (the user removed, or the password changed, on the
            server): a login cannot help (it said "jw login", to one who
            gives JW_USER/JW_PASSWORD: new user round 39).
        @param renew: what to renew first, said as it is: the C{JW_TOKEN}
            refused under the follow (L{givenTokenRefused}); a login cannot
            help while it is set (it said "jw login": new user round 41).
        """
        follow = f"jw logs -f {jobId} to follow it, jw stop {jobId} to stop it"
        if renew is not None:
            follow = f"{renew}, then {follow}"
        elif relogin:
            follow = f"jw login, then {follow}"
        elif refused:
            follow = (
                "the server no longer takes your user name or password (the "
                "user removed, or the password changed, there): with ones it "
                f"takes, {follow}"
            )
        if status in ("PENDING", "RUNNING"):
            now = f"it is still running: {follow}"
        elif status is None:
            now = f"it may still be running: {follow}"
        else:
            now = f"it has ended ({status}): jw logs -f {jobId} for its output"
        super().__init__(f"cannot follow job {jobId} ({why}); {now}")


def loginLapsed(
    jobId: str, error: ClientError, status: str | None, client: Any
) -> Exception:
    """
    What a follow (C{jw exec -f}, C{jw logs -f}, C{jw wait}) ends with when
    C{error} came in its middle (C{status}: the job's, as the last answer
    told; None: no answer came yet). A 401 then is a login that lapsed
    under it (a token's hour, or 12, ran out): the job runs on without jw,
    said with the way back to it (it exited 1 with "run jw login" alone,
    as a job's own exit 1 reads: new user round 33). Else C{error} itself.
    C{client}'s credentials say which way back (L{sentToken}): a token a
    new login replaces; C{JW_TOKEN}, to set anew (L{givenTokenRefused});
    else a user name and password, or a certificate, that a login cannot
    mend.
    """
    if error.status != 401 or status is None:
        return error
    if getattr(client, "givenToken", False):
        renew = givenTokenRefused(client.bearer(), clientNow(client))
        return NotFollowed(jobId, str(error), status, renew=renew)
    byToken = sentToken(client)
    return NotFollowed(jobId, str(error), status, relogin=byToken, refused=not byToken)


def sentToken(client: Any) -> bool:
    """
    Does C{client} send a token (a login that a new one may replace), not
    a user name and password or a certificate? (L{loginLapsed}'s way
    back.)
    """
    bearer = getattr(client, "bearer", None)
    return bearer is None or bearer() is not None


def clientNow(client: Any) -> float:
    """The time on C{client}'s clock (its reactor's), else this host's."""
    clock = getattr(client, "reactor", None)
    return float(clock.seconds()) if clock is not None else time.time()


def givenTokenRefused(token: str | None, now: float) -> str:
    """
    What jw says of the C{JW_TOKEN} the server refused: it is what to
    renew (a login jw keeps is not used while it is set), and, if its
    claims say so, when it expired.
    """
    expires = None if token is None else tokenExpiry(token)
    if expires is not None and expires <= now:
        when = moment(expires, now)
        return f"JW_TOKEN was refused (it expired at {when}): set a new one"
    return "JW_TOKEN was refused: set a new one"


class SavedLoginRefused(Exception):
    """The server refused the token C{jw login} kept (now forgotten)."""


class HelpShown(Exception):
    """C{--help} or C{--version} printed what was asked: the command is done."""


class ArgumentsRefused(Exception):
    """The argument parser refused the command line (its usage is printed)."""


class NoPrompt(Exception):
    """Completion asked for ids but there is no way to log in without asking."""


#: How each failure is shown, first match wins: its exit status, and the
#: one line on stderr (None: nothing more). Never a traceback.
FAILURES: tuple[
    tuple[type[BaseException], int, Callable[[BaseException], str | None]], ...
] = (
    (HelpShown, 0, lambda e: None),
    (ArgumentsRefused, 2, str),  # "jw VERB: ... (see jw VERB --help)"
    (BadArguments, 2, lambda e: f"jw: {e}"),
    (StartFailure, 2, lambda e: f"jw: {e}"),
    (ConfigError, 2, lambda e: f"jw: {e}"),
    (TLSConfigError, 2, lambda e: f"jw: {e}"),
    (NoPrompt, 1, lambda e: None),  # completion never prompts
    (AlreadyEnded, EXIT_ALREADY_ENDED, lambda e: f"jw: {e}"),
    (NotFollowed, EXIT_NOT_FOLLOWED, lambda e: f"jw: {e}"),
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
    # Our stdout or stderr failed otherwise (a full disk): said, not a bug.
    (OutputFailed, 1, lambda e: None if e.said else e.line()),  # type: ignore[attr-defined]
    (Exception, 1, lambda e: f"jw: unexpected error: {e!r}"),  # a bug
)


def report(error: Exception, streams: Streams) -> int:
    """Show C{error} as L{FAILURES} says; return its exit status."""
    if isinstance(error, BrokenPipeError | OutputFailed):
        streams.abandonOut()  # no flush at the exit fails again
    for kind, status, message in FAILURES:
        if isinstance(error, kind):
            line = message(error)
            if line is not None:
                try:
                    streams.say(line)
                except OSError:
                    pass  # stderr gone or full too: the status says it
            return status
    raise error  # unreachable: the last row matches every Exception
