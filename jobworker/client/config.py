"""Where C{jw} gets its settings: flags, environment, config file, defaults."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

DEFAULT_SERVER = "https://localhost:8443"
#: The development CA (certs/ca.pem), shipped with the package so that a
#: wheel install finds it too.
DEV_CA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "dev-ca.pem"
)
#: The loopback names: for them, with no CA configured, the CA of this
#: user's own server on this machine is trusted (L{localServerCA}). The
#: development CA (L{DEV_CA}) is trusted only when given (C{--ca}): its key
#: is public, so it vouches for whoever listens, even on loopback.
DEV_CA_HOSTS = ("localhost", "127.0.0.1", "::1")

#: Keys a config file may hold, and the environment variable of each.
KEYS = {
    "server": "JW_SERVER",
    "ca": "JW_CA",
    "user": "JW_USER",
    "cert": "JW_CERT",
    "key": "JW_KEY",
}
#: Keys holding file paths: relative to the config file that names them.
PATH_KEYS = ("ca", "cert", "key")
#: Keys a config file may hold beyond L{KEYS}, and the environment variable
#: of each: every setting C{jw config} shows is one (its C{keepalive = 30}
#: line, copied into the file, stopped every verb: new user round 35).
OTHER_KEYS = {"keepalive": "JW_KEEPALIVE"}


class ConfigError(Exception):
    """The config file cannot be used; the message says why."""


def configPath(environ: dict[str, str]) -> str:
    """C{$XDG_CONFIG_HOME/jobworker/config.toml}, else C{~/.config/...}."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "jobworker", "config.toml")


def readConfig(path: str | None) -> dict[str, str]:
    """
    The settings in a config file (none if it does not exist, or C{path}
    is None), each as text.

    @raise ConfigError: unreadable, not TOML, unknown keys, non-string
        values, or a C{keepalive} that is not whole seconds from 1 to 32767.
    """
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            import tomllib  # only when there is a file: jw starts faster

            values = tomllib.load(f)
    except (FileNotFoundError, NotADirectoryError):
        # No file there, or no folder (HOME=/dev/null, XDG_CONFIG_HOME=/dev/null:
        # CI's "no user config", a service account's home): none. Every
        # command stopped, exit 2, "Not a directory" (new user round 41).
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:  # TOMLDecodeError is one
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    known = {**KEYS, **OTHER_KEYS}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)} "
            f"(known: {', '.join(known)})"
        )
    if "keepalive" in values:
        values["keepalive"] = _keepAlive(values["keepalive"], path)
    for key, value in values.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key} must be a non-empty string")
    for key in PATH_KEYS:
        if key in values:
            values[key] = os.path.join(
                os.path.dirname(path), os.path.expanduser(values[key])
            )
    return values


def _keepAlive(value: object, path: str) -> str:
    """
    A config file's C{keepalive}: whole seconds, as a number (as C{jw
    config} shows it) or as text.

    @raise ConfigError: anything else, or out of range.
    """
    from ..keepalive import MOST, parseSeconds

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        # Shown as given (30.0, [30], true): it was shown as '' (new user
        # round 36).
        given = str(value).lower() if isinstance(value, bool) else repr(value)
        raise ConfigError(
            f"{path}: keepalive must be whole seconds from 1 to {MOST}: {given}"
        )
    text = str(value)
    try:
        return str(parseSeconds(text, f"{path}: keepalive"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


@dataclass
class Settings:
    """The settings in force, and where each one came from."""

    server: str = DEFAULT_SERVER
    #: Only one given (flag, environment, file) is used (L{trustedCA}): no
    #: default, the development CA least of all.
    ca: str = ""
    user: str | None = None
    cert: str | None = None
    key: str | None = None
    origins: dict[str, str] = field(default_factory=dict)


def resolve(
    flags: dict[str, str | None], environ: dict[str, str], path: str | None
) -> Settings:
    """
    Flags override the environment, which overrides the file (none if
    C{path} is None) and defaults.
    """
    fileValues = readConfig(path)
    settings = Settings(
        origins={
            "server": "default",
            "ca": "default",
            "user": "prompt",
            "cert": "none",
            "key": "none",
        }
    )
    for key, variable in KEYS.items():
        for value, origin in (
            (flags.get(key), f"--{key}"),
            (environ.get(variable), variable),
            (fileValues.get(key), path or ""),
        ):
            if value:
                setattr(settings, key, value)
                settings.origins[key] = origin
                break
    if "@" in settings.server.partition("://")[2]:
        # Not used (the credentials are JW_USER's), and said back in every
        # message and by jw config, the password with it (new user round
        # 29): refused, and not quoted.
        raise ConfigError(
            f"server ({settings.origins['server']}) must not hold credentials "
            "(user:password@): give JW_USER and JW_PASSWORD, or jw login"
        )
    return settings


def stateDir(environ: dict[str, str]) -> str:
    """A server's default state dir for this user (as C{twistd jobworker})."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "jobworker")


def localServerCA(environ: dict[str, str]) -> str | None:
    """The CA a server of this user on this machine made, if there is one."""
    path = os.path.join(stateDir(environ), "tls", "ca.pem")
    return path if os.path.isfile(path) else None


def trustedPath(configFolder: str, server: str) -> str:
    """Where the CA trusted for C{server} at C{jw login} is kept."""
    parts = urlsplit(server)
    host = (parts.hostname or "").replace(":", "_")
    return os.path.join(configFolder, "trusted", f"{host}_{parts.port or 443}.pem")


def checkServer(server: str) -> str:
    """
    The host of C{server}, an C{https://} URL with one.

    @raise ConfigError: another scheme, none, or no host.
    """
    try:
        parts = urlsplit(server)
        if "@" in server.partition("://")[2]:
            # (Anywhere: a password with "#", "?" or "/" in it ends the host
            # part early, and the "@" was in the fragment: the URL was then
            # quoted whole, the password with it: review round 29.)
            raise ConfigError(
                "server must not hold credentials (user:password@): give them apart"
            )
        host, usable = parts.hostname, parts.scheme == "https"
        parts.port  # noqa: B018 (it checks the port: ValueError)
        if parts.netloc.endswith(":"):
            # An empty port: urlsplit reads no port (443), Twisted's client
            # refused it (new user round 33): refused alike, here.
            usable = False
    except ValueError:
        host, usable = None, False
    if not usable or not host:
        raise ConfigError(
            f"server must be an https:// URL with a host (and a port number, "
            f"if any), not {server!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"server must be an https:// URL with no query or fragment, not {server!r}"
        )
    _notTheDashboard(server, parts.path)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            named = bool(host.encode("idna")) and (
                not host.isascii() or re.fullmatch(r"[a-z0-9._-]+", host) is not None
            )
        except UnicodeError:
            named = False
        if named and _isNumber(host):
            # Digits only (2130706433, an old way to write 127.0.0.1): no
            # name, and Twisted's TLS host check took it for an address,
            # its check of names then raised on the reactor: jw stop, rm
            # and login printed tracebacks and hung (new user round 34).
            named = False
        if not named:
            # (It failed later, as "unexpected error": code review round 32;
            # a space or a % in it too: the session's review.)
            raise ConfigError(
                f"server's host {host!r} is not a host name (nor an address)"
            ) from None
    return host


def _notTheDashboard(server: str, path: str) -> None:
    """
    Refuse the web dashboard's URL (a path ending in C{/ui}), the one a
    browser user has: every verb failed on it with another error, C{jw
    list} with one about a query parameter jw sent (new user round 38).

    @raise ConfigError: it is.
    """
    trimmed = path.rstrip("/")
    if trimmed.endswith("/ui"):
        api = server.rstrip("/")[: -len("/ui")]
        raise ConfigError(
            f"{server} is the web dashboard's URL, not the API's: the API is at {api}"
        )


def _isNumber(host: str) -> bool:
    """Does C{int()} read C{host} (as the TLS host check tells an address)?"""
    try:
        int(host)
    except ValueError:
        return False
    return True


def checkToken(environ: dict[str, str]) -> None:
    """
    @raise ConfigError: C{JW_TOKEN} holds a character no token has (a
        newline pasted with it: it was "unexpected error", code review
        round 32).
    """
    token = environ.get("JW_TOKEN")
    if token and not re.fullmatch(r"[!-~]+", token):
        raise ConfigError(
            "JW_TOKEN holds a space, a control character or a non-ASCII one: "
            "no token does (a newline pasted with it?)"
        )


def checkCredentialsText(settings: Settings, environ: dict[str, str]) -> None:
    """
    @raise ConfigError: the user name or C{JW_PASSWORD} holds bytes that
        are not UTF-8 (a Latin-1 terminal): jw sends text only (it was
        Python's codec message: new user round 36).
    """
    origin = settings.origins.get("user", "")
    for name, value in (
        ("JW_USER" if origin == "JW_USER" else f"{origin}: user", settings.user),
        ("JW_PASSWORD", environ.get("JW_PASSWORD")),
    ):
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"{name} is not valid UTF-8 (jw sends text only)"
            ) from None


def trustedCA(settings: Settings, environ: dict[str, str] | None = None) -> str:
    """
    The CA to verify C{settings.server} with: the one configured (flag,
    environment or file); else the one trusted for it at C{jw login}; else,
    for the loopback names in L{DEV_CA_HOSTS}, the CA of this user's server
    on this machine if it made one. Never the development CA by default:
    its key is public, and a job listening on the server's port on the
    other loopback (::1 beside 127.0.0.1), or on the port while the server
    was down, showed a certificate it vouched for and was sent passwords
    (attacker round 11).

    @raise ConfigError: no CA configured for another host (the message says
        what to pass), or a server URL with no usable host.
    """
    return _chosenCA(settings, os.environ.copy() if environ is None else environ)[0]


#: L{caInUse}'s origin of the CA trusted for the server at C{jw login}.
TRUSTED_AT_LOGIN = "default, trusted at jw login"


def caInUse(settings: Settings, environ: dict[str, str]) -> tuple[str, str]:
    """
    The CA C{jw} verifies C{settings.server} with (L{trustedCA}), and whence
    (for C{jw config}): C{("(none)", why)} when there is none.
    """
    try:
        return _chosenCA(settings, environ)
    except ConfigError as e:
        return "(none)", f"default: none: {e}"


def _chosenCA(settings: Settings, environ: dict[str, str]) -> tuple[str, str]:
    """L{trustedCA}'s choice, and why it was made (the rule is here only)."""
    # Before any CA: "localhost:8443" is not a host without a CA.
    host = checkServer(settings.server)
    origin = settings.origins.get("ca", "default")
    if origin != "default":
        return settings.ca, origin
    saved = trustedPath(os.path.dirname(configPath(environ)), settings.server)
    if os.path.isfile(saved):
        return saved, TRUSTED_AT_LOGIN
    if host in DEV_CA_HOSTS:
        local = localServerCA(environ)
        if local is not None:
            return local, "default, made by this user's server on this machine"
    raise ConfigError(
        f"no CA known for {settings.server}: run jw login --server "
        f"{settings.server} to see its CA's fingerprint and trust it, or pass "
        '--ca FILE (JW_CA, or ca = "FILE" in the config file): a server '
        "started with --tls made its own, tls/ca.pem in its state dir (by "
        "default $XDG_STATE_HOME/jobworker, else ~/.local/state/jobworker, of "
        "the user running it); certs/ca.pem "
        "only for a server given the development certificates (--cert "
        "certs/server.pem)"
    )


def tokensPath(environ: dict[str, str]) -> str:
    """Where C{jw login} keeps tokens: beside the config file."""
    return os.path.join(os.path.dirname(configPath(environ)), "tokens.json")


def checkPrivate(path: str) -> None:
    """
    Refuse the tokens file at C{path} if others may use it (L{_refuseShared});
    an absent file is fine.

    @raise ConfigError: its group or others have any permission on it.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent, or unreadable: reading it says so
    _refuseShared(path, mode)


def _refuseShared(path: str, mode: int) -> None:
    """
    A token is a login: a tokens file its group or others may read (or
    write) is not used, as ssh refuses such a private key.

    @raise ConfigError: C{mode} gives its group or others any permission.
    """
    if mode & 0o077:
        raise ConfigError(
            f"{path}: permissions {stat.S_IMODE(mode):04o} are too open, others "
            f"could use the logins in it: run chmod 600 {path}"
        )


def _readTokens(path: str) -> dict[str, dict[str, object]]:
    """
    The tokens kept in C{path} (none if it is absent or unreadable).

    @raise ConfigError: others may use the file (L{_refuseShared}).
    """
    try:
        with open(path, encoding="utf-8") as f:
            _refuseShared(path, os.fstat(f.fileno()).st_mode)
            data = json.load(f)
    except OSError:
        return {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        # (Read as empty, it was said of nothing: jw logout said "not logged
        # in", a login went unread: new user round 32.)
        raise ConfigError(
            f"{path} is not a jw tokens file (not a JSON object): move it "
            "away, then jw login"
        )
    return data


def serverKey(server: str) -> str:
    """
    What a server's login is kept by: its URL, the case of its scheme and
    host, its default port and a trailing C{/} not counted (a login made
    with C{https://h:1/} was not found by C{https://h:1}, and C{jw logout}
    said "not logged in": new user round 30).
    """
    try:
        parts = urlsplit(server.strip())
        port = parts.port
    except ValueError:
        return server
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if ":" in host:
        host = f"[{host}]"
    port = port or (443 if scheme == "https" else 80)
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _entry(tokens: dict[str, dict[str, object]], server: str) -> object:
    """The login kept for C{server} (by L{serverKey}; or as typed, by an
    older jw)."""
    entry = tokens.get(serverKey(server))
    return entry if entry is not None else tokens.get(server)


def loadToken(
    path: str, server: str, now: float, user: str | None = None
) -> tuple[str | None, bool]:
    """
    The saved token for C{server} (and for C{user}, if given), if one is
    saved and unexpired, and whether one was saved at all (an expired login
    is renewed, not dropped).
    """
    entry = _entry(_readTokens(path), server)
    if not isinstance(entry, dict):
        return None, False
    if user is not None and entry.get("user") != user:
        return None, False  # another user's login: not for this command
    token, expires = entry.get("token"), entry.get("expires")
    if not isinstance(token, str) or not isinstance(expires, int | float):
        return None, True
    # A token about to expire is renewed now.
    return (token if expires - renewalMargin(token) > now else None), True


#: Seconds before its expiry a saved token is renewed, at most.
RENEWAL_MARGIN = 60.0


def renewalMargin(token: str) -> float:
    """
    How long before its expiry a saved token is renewed: L{RENEWAL_MARGIN},
    or a quarter of its life if that is less (the minute always was: a
    login to a server whose tokens live a minute or less, C{--token-ttl},
    was never used: new user round 37).
    """
    claims = _tokenClaims(token)
    issued, expires = claims.get("i"), claims.get("e")
    if not _isTime(issued) or not _isTime(expires):
        return RENEWAL_MARGIN
    return max(0.0, min(RENEWAL_MARGIN, (float(expires) - float(issued)) / 4))


def lateInLife(token: str, now: float) -> bool:
    """
    Has the token less than a quarter of its life left (its claims say;
    False if jw cannot read them)? A follow renews it first, if it can.
    """
    claims = _tokenClaims(token)
    issued, expires = claims.get("i"), claims.get("e")
    if not _isTime(issued) or not _isTime(expires):
        return False
    return float(expires) - now < (float(expires) - float(issued)) / 4


def _isTime(value: object) -> TypeGuard[int | float]:
    """Is C{value} a time a token's claims hold (seconds)?"""
    return isinstance(value, int | float) and not isinstance(value, bool)


def savedUser(path: str, server: str) -> str | None:
    """The user of the login kept for C{server}, if any."""
    entry = _entry(_readTokens(path), server)
    user = entry.get("user") if isinstance(entry, dict) else None
    return user if isinstance(user, str) else None


def tokenUser(token: str) -> str | None:
    """
    The user a jobworker token says it was issued for, unverified (only
    the server can verify it): to show, never to decide. None: not a
    token jw can read.
    """
    user = _tokenClaims(token).get("u")
    return user if isinstance(user, str) and user.isprintable() else None


def tokenExpiry(token: str) -> float | None:
    """
    When a jobworker token says it expires (seconds since the epoch),
    unverified (only the server can verify it): to show, and to keep jw
    from sending one that has visibly expired. None: not a token jw can
    read.
    """
    expires = _tokenClaims(token).get("e")
    return float(expires) if _isTime(expires) else None


def _tokenClaims(token: str) -> dict[str, Any]:
    """What a jobworker token says, unverified; {} if jw cannot read it."""
    import base64

    try:
        payload = token.split(".")[1]
        claims = json.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        )
    except (IndexError, ValueError, TypeError):
        return {}  # binascii.Error and JSON errors are ValueErrors
    return claims if isinstance(claims, dict) else {}


def saveToken(path: str, server: str, token: str, expires: float, user: str) -> None:
    """Keep a token for C{server} (file mode 0600, folder 0700)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        tokens = _readTokens(path)
    except ConfigError:
        # Not JSON (or shared: refused before the password went, checkPrivate):
        # written anew, the token just got kept (it was lost: late review 32).
        tokens = {}
    tokens.pop(server, None)  # (as an older jw kept it)
    tokens[serverKey(server)] = {"token": token, "expires": expires, "user": user}
    _writeTokens(path, tokens)


def forgetToken(path: str, server: str) -> bool:
    """Delete the token for C{server}; whether there was one."""
    tokens = _readTokens(path)
    found = [tokens.pop(key, None) for key in {serverKey(server), server}]
    if all(entry is None for entry in found):
        return False
    if tokens:
        _writeTokens(path, tokens)
    else:
        os.unlink(path)
    return True


def _writeTokens(path: str, tokens: dict[str, dict[str, object]]) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a leftover (or planted link) is never reused
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(tokens, f)
    os.replace(temporary, path)
