"""Typed domain errors; the API maps each one to an HTTP status in one place."""

from __future__ import annotations

from typing import Any


class JobworkerError(Exception):
    """
    An error that a client caused or may see.

    @cvar code: the HTTP status this error maps to.
    @ivar message: one human-readable line.
    @ivar extra: additional JSON members for the error body.
    """

    code = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON object sent to the client."""
        return {"error": self.message, **self.extra}


class BadRequest(JobworkerError):
    """The request is malformed: bad JSON, wrong types, bad parameters."""

    code = 400


class Unauthorized(JobworkerError):
    """No credentials, or credentials that do not match a user."""

    code = 401


class Forbidden(JobworkerError):
    """The user is known but lacks the permission for this action."""

    code = 403
    #: The permission refused, if one was (the audit log names it).
    permission: str | None = None


class NotFound(JobworkerError):
    """No such job (or a malformed job id)."""

    code = 404


class Conflict(JobworkerError):
    """The action does not fit the job's state (e.g. stopping an ended job)."""

    code = 409


class LeftoversStopped(Conflict):
    """
    A stop of a job that had ended (409, as any), which reached the
    processes it left: a harder stop (KILL, a shorter grace) holds for
    them. The API audits it as the stop it is.
    """


class TooManyRequests(JobworkerError):
    """A limit on concurrent work was reached; retry later (C{Retry-After})."""

    code = 429

    def __init__(self, message: str, retryAfter: int = 1, **extra: object) -> None:
        super().__init__(message, **extra)
        self.retryAfter = retryAfter


class ServiceUnavailable(JobworkerError):
    """
    The server cannot do it now (its store cannot be written, it has no
    room for more work): retry after C{retryAfter} seconds.
    """

    code = 503

    def __init__(self, message: str, retryAfter: int = 5, **extra: object) -> None:
        super().__init__(message, **extra)
        self.retryAfter = retryAfter


class CannotStartNow(ServiceUnavailable):
    """
    The server itself cannot start a process now (no descriptor left, no
    process slot, no memory, its spawner silent): nothing was started, and
    the job is not failed by it (a new one is a 503, a queued one waits).
    """


class UnsupportedMediaType(JobworkerError):
    """A state change without C{Content-Type: application/json}."""

    code = 415


class PayloadTooLarge(JobworkerError):
    """The request body is over the limit."""

    code = 413


class NoThread(ServiceUnavailable):
    """
    The server cannot start a thread for the work (its cgroup's C{pids.max},
    the kernel's thread limit): nothing was done; try again shortly.
    """
