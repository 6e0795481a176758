"""How one run of C{jw} authenticates: which credentials, a prompt, a kept token."""

from __future__ import annotations

import getpass
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .config import (
    DEV_CA,
    DEV_CA_HOSTS,
    Settings,
    checkPrivate,
    lateInLife,
    loadToken,
    localServerCA,
    savedUser,
    saveToken,
    tokenExpiry,
    trustedCA,
    trustedPath,
)
from .errors import ClientError, ServerUnreachable
from .failures import GivenTokenExpired, NoPrompt, PromptInterrupted, UsageFailure
from .interrupts import SIGNALS
from .show import moment, when
from .streams import Streams

#: How many times in all a password typed at jw's prompt is asked for when
#: the server refuses it (401), as ssh and sudo ask (it was once: a typo
#: ended the command, new user round 39). A password given in
#: C{JW_PASSWORD} is never asked for.
PASSWORD_TRIES = 3

#: Builds the client for a server: L{JobworkerClient.connect}'s signature
#: (reactor, server, CA path, user, password, *, token, certPath, keyPath);
#: tests pass one over C{StubTreq}.
Connect = Callable[..., Any]


def givenPassword(environ: dict[str, str]) -> str | None:
    """
    C{JW_PASSWORD}, if set and not empty: empty counts as unset, as for every
    C{JW_*} variable (no password is empty, so it was never meant to be sent).
    """
    return environ.get("JW_PASSWORD") or None


def givenTokenExpired(token: str, now: float) -> str | None:
    """
    What jw says of a C{JW_TOKEN} whose claims say it has expired, instead
    of sending it; None if they do not. Sent, it was refused, and counted
    as a failed login at the server's throttle: a cron job's sixth run
    was its 429, "too many failed logins", the expiry no longer said, and
    the host's password logins held back (new user round 41).
    """
    expires = tokenExpiry(token)
    if expires is None or expires > now:
        return None
    return (
        f"authentication failed: JW_TOKEN expired at {moment(expires, now)}: "
        "set a new one (POST /tokens gives one); it was not sent"
    )


def credentials(
    environ: dict[str, str],
    user: str | None = None,
    beforePrompt: Callable[[], None] = lambda: None,
    skipped: str = "",
) -> tuple[str, str]:
    """
    C{JW_USER} (or the configured user)/C{JW_PASSWORD}, else a prompt on
    the terminal; the password is asked once C{beforePrompt()} (the check
    that the server can be reached and is trusted,
    L{probeServer<jobworker.client.quick.probeServer>}) passed.
    C{skipped}: why a login kept is not used (said with no terminal).
    """
    user = environ.get("JW_USER") or user
    password = givenPassword(environ)
    if user and password is not None:
        return user, password
    # Not open("/dev/tty", "r+"): a terminal is not seekable, and that
    # raises io.UnsupportedOperation (an OSError) on a working terminal.
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        # With the user known, the password alone is missing (it said "set
        # JW_USER and JW_PASSWORD", JW_USER set, another's login kept: new
        # user round 34).
        need = (
            f"set JW_PASSWORD for {user} (JW_USER and JW_PASSWORD for another "
            f"user), or jw login as {user}{skipped}"
            if user
            else "set JW_USER and JW_PASSWORD"
        )
        raise UsageFailure(f"no terminal to ask for credentials: {need}") from None
    try:
        with _interruptible(fd):
            if not user:
                os.write(fd, b"Username: ")
                user = _readLine(fd).strip()
                if not user:  # Ctrl-D or Enter: no password for no one
                    raise UsageFailure("no user name given")
            beforePrompt()
            # getpass opens the terminal itself and turns echo off.
            try:
                password = getpass.getpass(f"Password for {user}: ")
            except EOFError:  # Ctrl-D
                os.write(fd, b"\n")
                raise UsageFailure("no password given") from None
    finally:
        os.close(fd)
    return user, password


def _hasTerminal() -> bool:
    """Can jw ask for a password on a terminal?"""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


#: The signals that end a prompt as Ctrl-C does (SIGINT is a
#: C{KeyboardInterrupt} already); by default they would kill C{jw} in the
#: middle of C{getpass}, the terminal's echo left off.
PROMPT_SIGNALS = tuple(number for number in SIGNALS if number != signal.SIGINT)


@contextmanager
def _interruptible(fd: int) -> Iterator[None]:
    """
    Ctrl-C (a C{KeyboardInterrupt}) at a prompt on the terminal C{fd}, or
    one of L{PROMPT_SIGNALS} (a L{PromptInterrupted}): end the prompt's
    line there, so that the shell's prompt starts its own; C{getpass} puts
    the terminal back as it unwinds. The interrupt goes on: C{jw} exits 130
    (128 + the signal's number), no traceback (L{jobworker.client.cli}).
    """
    previous = _raiseAtSignals()
    try:
        yield
    except KeyboardInterrupt:
        try:
            os.write(fd, b"\n")
        except OSError:
            pass
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _raiseAtSignals() -> dict[int, Any]:
    """
    Have L{PROMPT_SIGNALS} raise L{PromptInterrupted} (from the main thread
    only: the one that prompts); the handlers they had, to put back.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def onSignal(number: int, frame: Any) -> None:
        raise PromptInterrupted(signal.Signals(number).name)

    return {number: signal.signal(number, onSignal) for number in PROMPT_SIGNALS}


def _readLine(fd: int, limit: int = 1024) -> str:
    """
    A line typed on the terminal C{fd} (without its newline). Ended by
    Ctrl-D rather than Enter, the line is ended on the terminal, so that
    what comes next starts a line of its own.
    """
    data = b""
    while len(data) < limit:
        chunk = os.read(fd, 1)
        if not chunk:
            os.write(fd, b"\n")
            break
        if chunk == b"\n":
            break
        data += chunk
    return data.decode("utf-8", "replace")


def _isDevelopmentCA(pem: bytes) -> bool:
    """Is C{pem} jobworker's public development CA (L{DEV_CA})?"""
    from .trust import fingerprint

    try:
        with open(DEV_CA, "rb") as f:
            return fingerprint(f.read()) == fingerprint(pem)
    except (OSError, ValueError):
        return False


def trustOnFirstUse(
    settings: Settings, environ: dict[str, str], configFile: str
) -> None:
    """
    At C{jw login}, for a server whose CA jw does not know: fetch the CA it
    presents, show its SHA-256 fingerprint on the terminal and keep it for
    that server if the person says yes (as ssh asks about a host key).

    @raise UsageFailure: no terminal, the CA could not be fetched, or "no".
    """
    if settings.origins.get("ca", "default") != "default":
        return
    server = settings.server
    saved = trustedPath(os.path.dirname(configFile), server)
    if os.path.isfile(saved):
        return
    local = localServerCA(environ)
    notYours = ""
    if urlsplit(server).hostname in DEV_CA_HOSTS and local is not None:
        # This user's own server's CA vouches for a server on this machine,
        # but not for one started with another state dir (or by another
        # user): that one is asked about too (as is any, when this user
        # made none: the development CA vouches for nobody by default).
        from .quick import probeServer

        try:
            probeServer(server, local)
            return
        except ServerUnreachable as e:
            if not e.untrusted:
                raise
        notYours = (
            f"It is NOT the CA of your own server on this machine ({local}): "
            "another user's server, or any process that took the port.\n"
        )
    from .quick import handshakeSeconds, keepAliveSeconds
    from .trust import TrustError, fetchCA, fingerprint, remember

    try:
        pem = fetchCA(server, handshakeSeconds(keepAliveSeconds(environ, configFile)))
    except TrustError as e:
        raise UsageFailure(
            f"{e} (to trust the server's CA; or pass --ca FILE, JW_CA)"
        ) from None
    if _isDevelopmentCA(pem):
        # Its key is in the repository: trusted, anyone could pose as this
        # server (and take the password next), and nothing said so but a
        # fingerprint (jw security round 39).
        notYours += (
            "WARNING: this is jobworker's public development CA: its private "
            "key is published with jobworker, so anyone can pose as this "
            "server with it. Trust it only for a test server you started.\n"
        )
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise UsageFailure(
            f"no CA known for {server} and no terminal to confirm its "
            "fingerprint: pass --ca FILE (or JW_CA)"
        ) from None
    try:
        os.write(
            fd,
            (
                f"The CA of {server} has the SHA-256 fingerprint\n"
                f"  {fingerprint(pem)}\n"
                f"{notYours}"
                "Compare it with the one its operator gives you (the server "
                "logs it when it starts).\n"
                f"Trust this CA for {server}? [y/N] "
            ).encode(),
        )
        with _interruptible(fd):
            answer = _readLine(fd).strip().lower()
        if answer not in ("y", "yes"):
            raise UsageFailure(f"the CA of {server} was not trusted: nothing sent")
        try:
            remember(saved, pem)
        except TrustError as e:
            raise UsageFailure(str(e)) from None
        os.write(fd, f"Kept in {saved}.\n".encode())
    finally:
        os.close(fd)


@dataclass
class Session:
    """
    How this run of C{jw} authenticates: a client certificate, else
    C{JW_PASSWORD}, else the token C{jw login} kept, else a prompt (and an
    expired login is renewed with the password given).
    """

    client: Any  # a JobworkerClient or a QuickClient
    server: str
    tokensFile: str
    token: str | None = None
    renew: bool = False
    #: Given a call made before the password is asked for on the terminal,
    #: a client with the user's password (asked for, or C{JW_PASSWORD}):
    #: the login kept renewed (L{Renewal}). None: not renewed so.
    relogin: Callable[[Callable[[], None]], Any] | None = None
    #: With a password typed at the prompt: asks for it again, a client
    #: with the new one (L{confirm}). None: not asked again.
    reask: Callable[[], Any] | None = None

    @classmethod
    def open(
        cls,
        reactor: Any,
        verb: str,
        settings: Settings,
        environ: dict[str, str],
        tokensFile: str,
        connect: Connect,
        follows: bool = False,
    ) -> Session:
        """
        Choose the credentials and build the client (may prompt). A
        command that C{follows} a job renews, on a terminal, a login kept
        with less than a quarter of its life left (L{lateInLife}): one
        that expired under a follow cut it (new user round 39).
        """
        server, ca = settings.server, trustedCA(settings, environ)
        if settings.cert or settings.key:
            client = connect(
                reactor, server, ca, certPath=settings.cert, keyPath=settings.key
            )
            return cls(client, server, tokensFile)
        if environ.get("JW_TOKEN") and verb != "login":
            # A token given outright (CI): used as is, never saved or forgotten.
            given = environ["JW_TOKEN"]
            expired = givenTokenExpired(given, reactor.seconds())
            if expired is not None:
                raise GivenTokenExpired(expired)
            client = connect(reactor, server, ca, token=given)
            client.givenToken = True
            return cls(client, server, tokensFile)
        token, saved = None, False
        if verb == "login":
            checkPrivate(tokensFile)  # before the password is sent, not after
        else:
            token, saved = loadToken(tokensFile, server, time.time(), settings.user)
        password = givenPassword(environ)
        if (
            token is not None
            and password is None
            and follows
            and lateInLife(token, time.time())
            and _hasTerminal()
        ):
            token = None  # renewed now, as an expired one
        if token is not None and password is None:
            client = connect(reactor, server, ca, token=token)

            def relogin(beforePrompt: Callable[[], None]) -> Any:
                user, password = credentials(
                    environ,
                    settings.user or savedUser(tokensFile, server),
                    beforePrompt,
                )
                return connect(reactor, server, ca, user, password)

            return cls(client, server, tokensFile, token=token, relogin=relogin)
        if verb == "_ids" and password is None:
            raise NoPrompt()
        # An expired login is renewed for the user it was of.
        known = settings.user or (savedUser(tokensFile, server) if saved else None)

        def reachable() -> None:
            # No password asked for a server jw cannot reach or trust.
            from .quick import probeServer

            probeServer(server, ca)

        owner = None
        if verb != "login" and not saved:
            # (Read already, by loadToken: jw login reads it when it saves.)
            owner = savedUser(tokensFile, server)
        skipped = (
            f" (the login kept for {server} is {owner}'s, not {known}'s)"
            if owner is not None and known is not None and owner != known
            else ""
        )
        user, password = credentials(environ, known, reachable, skipped)
        client = connect(reactor, server, ca, user, password)
        # An expired login is renewed with the password now typed; not
        # with JW_PASSWORD's, which is what is sent (a plain verb said
        # "logged in" and kept a token no one asked for: new user round 39).
        renew = saved and token is None and givenPassword(environ) is None
        reask = None
        if givenPassword(environ) is None:  # typed at the prompt

            def reask() -> Any:
                _, again = credentials(environ, user)
                return connect(reactor, server, ca, user, again)

        return cls(client, server, tokensFile, renew=renew, reask=reask)

    async def confirm(self, streams: Streams, login: bool) -> None:
        """
        Log in (C{login}: C{jw login}, or an expired login renewed), or,
        with a password typed at the prompt, check it; a password the
        server refuses (401) is asked for again, up to L{PASSWORD_TRIES}
        times in all. Any other refusal (the login throttle's 429) ends it.
        """
        tries = 1
        while True:
            try:
                if login:
                    await self.login(streams)
                elif self.reask is not None:
                    await self.client.whoami()
                return
            except ClientError as e:
                if e.status == 404 and not login:
                    return  # (a server with no /whoami: the verb tells)
                if e.status != 401 or self.reask is None or tries >= PASSWORD_TRIES:
                    raise
                streams.say(f"jw: {e}: try again")
            await self.client.close()
            self.client = self.reask()
            tries += 1

    async def login(self, streams: Streams) -> None:
        """Get a token with the credentials in use and keep it."""
        self.keep(await self.client.createToken(), streams)

    def keep(self, result: dict[str, Any], streams: Streams) -> str:
        """
        Save the token of C{result} (C{POST /tokens}'s answer) and say so:
        the token.
        """
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
        # Local, as every other time jw shows (it was the API's UTC
        # text: new user round 35).
        now = self.client.reactor.seconds()
        until = when(str(result["expires_at"]), now) or result["expires_at"]
        streams.tell(f"logged in to {self.server} as {result['user']} until {until}")
        return str(result["token"])

    def renewUnderFollows(self, streams: Streams) -> None:
        """
        Let a follow renew the login kept, if this run uses one, when the
        server refuses its token (L{Renewal}).
        """
        if self.token is not None and self.relogin is not None:
            self.client.renewal = Renewal(self, streams)


class Renewal:
    """
    Renews the login kept when the server refuses its token in the middle
    of a follow (it expired: the server ends a follow's stream then): the
    password is asked for on the terminal (or is C{JW_PASSWORD}), the new
    login kept, and the follow resumes where it was. A follow was cut
    there, exit 125, even on a terminal (new user round 39). Renewed once
    for all the follow's connections (their threads, L{another}); once it
    could not be (no terminal, the password refused), never asked again.
    """

    def __init__(self, session: Session, streams: Streams) -> None:
        self._session = session
        self._streams = streams
        self._lock = threading.Lock()
        self._busy = False
        self._failed = False
        #: The token every connection is to send.
        self.token = session.token

    async def renew(self, client: Any, sentWith: str | None) -> bool:
        """
        C{client}'s request sent with the token C{sentWith} was refused
        (401): may it be sent again (with a login renewed, by this call or
        another)?
        """
        while True:
            with self._lock:
                if not self._busy:
                    if self.token is not None and self.token != sentWith:
                        client.useToken(self.token)  # renewed meanwhile
                        return True
                    if self._failed:
                        return False
                    self._busy = True
                    break
            await client.pause(0.1)  # another connection is renewing it
        token = None
        try:
            token = await self._login()
        finally:
            with self._lock:
                self._busy = False
                self._failed = token is None
                if token is not None:
                    self.token = token
        if token is None:
            return False
        client.useToken(token)
        return True

    async def _login(self) -> str | None:
        """A new login, kept; None if it could not be had."""
        session, streams = self._session, self._streams
        assert session.relogin is not None

        def why() -> None:
            streams.say(
                f"jw: your login to {session.server} expired during the follow: "
                "give the password to renew it (it resumes where it was)"
            )

        for tries in range(1, PASSWORD_TRIES + 1):
            try:
                login = session.relogin(why if tries == 1 else lambda: None)
            except UsageFailure:
                return None  # no terminal, no password given
            try:
                result = await login.createToken()
            except ClientError as e:
                if e.status == 401 and tries < PASSWORD_TRIES:
                    # A typo: asked again, as at a command's start.
                    streams.say(f"jw: {e}: try again")
                    continue
                streams.say(f"jw: {e}")  # the password refused, say
                return None
            finally:
                await login.close()
            return session.keep(result, streams)
        return None
