"""Roles and what each may do: the one permission table."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import Forbidden
from ..jobs.identity import Identity


class Permission(enum.Enum):
    """An action on jobs."""

    CREATE = "jobs.create"
    GET = "jobs.get"
    STOP = "jobs.stop"
    LOGS = "jobs.logs"
    DELETE = "jobs.delete"
    STDIN = "jobs.stdin"
    PRIORITIZE = "jobs.prioritize"
    METRICS = "metrics.read"
    TOKENS = "tokens.create"
    DRAIN = "server.drain"


class Scope(enum.Enum):
    """Which jobs a granted permission covers."""

    OWN = "own"
    ALL = "all"


class Role(enum.Enum):
    """The roles a user may hold (users file, second field)."""

    READER = "Reader"
    DEVELOPER = "Developer"
    ADMIN = "Admin"
    #: Reads C{/metrics} and nothing else: a scraper's credentials were an
    #: Admin's, that could run commands and read every job's output
    #: (operator round 41).
    MONITOR = "Monitor"


#: The permission table. A permission absent from a role is denied.
PERMISSIONS: dict[Role, dict[Permission, Scope]] = {
    Role.READER: {
        Permission.GET: Scope.ALL,
        Permission.TOKENS: Scope.ALL,
    },
    Role.DEVELOPER: {
        Permission.GET: Scope.ALL,
        Permission.CREATE: Scope.ALL,
        Permission.STOP: Scope.OWN,
        Permission.LOGS: Scope.OWN,
        Permission.DELETE: Scope.OWN,
        Permission.STDIN: Scope.OWN,
        Permission.TOKENS: Scope.ALL,
    },
    Role.ADMIN: {permission: Scope.ALL for permission in Permission},
    Role.MONITOR: {Permission.METRICS: Scope.ALL},
}


@dataclass(frozen=True)
class User:
    """An authenticated user: the avatar of the cred realm."""

    name: str
    role: Role
    #: The Unix account this user's jobs run as (users file, fourth field).
    account: Identity | None = None


def authorize(user: User, permission: Permission, owner: str | None = None) -> None:
    """
    Check C{user} may do C{permission}, on a job owned by C{owner} if given.

    @raise Forbidden: if the table does not allow it.
    """
    scope = PERMISSIONS[user.role].get(permission)
    refused = None
    if scope is None:
        refused = Forbidden(
            f"role {user.role.value} lacks permission {permission.value}"
        )
    elif scope is Scope.OWN and owner is not None and owner != user.name:
        refused = Forbidden(f"permission {permission.value} covers only your own jobs")
    if refused is not None:
        # (The audit line named the route's permission: a refused priority
        # raise read as a refused jobs.create: contract round 39.)
        refused.permission = permission.value
        raise refused


def grants(user: User) -> dict[str, str]:
    """What C{user}'s role may do: permission name to scope (C{own}, C{all})."""
    return {p.value: scope.value for p, scope in PERMISSIONS[user.role].items()}


def onlyOwnJobs(user: User, permission: Permission) -> bool:
    """Whether C{permission} covers only C{user}'s own jobs (or none)."""
    return PERMISSIONS[user.role].get(permission) is not Scope.ALL


def mayStartQueued(user: User | None, owner: str, queuedAs: str | None) -> str | None:
    """
    Why a job that C{owner} queued, to run as the account C{queuedAs}
    (None: unmapped), may not start now that the users file says C{user}
    (None: no such user any more); None if it may. A user removed or
    demoted since, or mapped to another account, does not start jobs
    through the queue that they could not start now (attacker round 9).
    """
    if user is None:
        return f"its owner {owner} is no longer a user of this server"
    try:
        authorize(user, Permission.CREATE)
    except Forbidden:
        return f"its owner {owner} may no longer start jobs (now a {user.role.value})"
    now = user.account.label if user.account is not None else None
    if now != queuedAs:
        return (
            f"its owner {owner}'s Unix account changed since it was queued "
            f"({queuedAs or 'none'}, now {now or 'none'})"
        )
    return None
