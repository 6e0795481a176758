"""Who a Slurm job runs as: its owner's mapped account, or a shared one."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from ...errors import Forbidden
from ...jobs.identity import Identity, IdentityError
from ...jobs.records import JobRecord


class SlurmAccounts:
    """
    The accounts Slurm jobs run as: a mapped user's own, or (when the
    operator allows it, C{--slurm-shared-account}) the service account.
    """

    log = Logger()

    def __init__(
        self,
        server: Identity,
        shared: bool,
        lookUp: Callable[[str], Identity] = Identity.ofAccount,
    ) -> None:
        """
        @param lookUp: an account's identity by its name, as it is now
            (L{Identity.ofAccount}; tests give accounts of their own).
        """
        self.server = server
        self._shared = shared
        self._lookUp = lookUp

    def announce(self) -> None:
        """Say, once at start-up, who Slurm jobs run as."""
        if not self._shared:
            self.log.info(
                "Slurm jobs run as their owner's mapped Unix account; users "
                "without one are refused (--slurm-shared-account would let them "
                "share the service account)"
            )
            return
        self.log.warn(
            "--slurm-shared-account: the Slurm jobs of users without a mapped "
            "Unix account run as {user}, ONE SHARED IDENTITY: they can read "
            "each other's output folders and environment files (secrets "
            "included) and cancel each other's Slurm jobs, and Slurm's "
            "accounting and fair share see a single user",
            user=self.server.label,
        )
        if self.server.uid == 0:
            self.log.warn(
                "--slurm-shared-account with a server running as root: those "
                "jobs RUN AS ROOT on the compute nodes"
            )

    def identityFor(self, owner: str, account: Identity | None) -> Identity:
        """
        A mapped user's own account; for a user without one, the service
        account if the operator allowed sharing it.

        @raise Forbidden: the user has no mapped account and sharing is off
            (dynamic identities do not exist on the compute nodes), or the
            account cannot be used now (removed since the users file was
            read: it is looked up again by name, as for a local job).
        """
        if account is not None:
            try:
                return self._lookUp(account.name)
            except IdentityError as e:
                raise Forbidden(f"user {owner}'s jobs cannot run now: {e}") from None
        if self._shared:
            return self.server
        raise Forbidden(
            f"user {owner} has no Unix account mapped in the users file "
            "(name:role:hash:unix-user): Slurm jobs run as their owner's "
            "account (the operator may map one, or allow a shared account "
            "with --slurm-shared-account)"
        )

    def ofRecord(self, record: JobRecord) -> Identity:
        """The identity a stored job runs as (its C{run_as}), looked up again."""
        account = record.run_as
        if account is None or account == self.server.label:
            return self.server
        try:
            return self._lookUp(account)
        except IdentityError as e:
            self.log.warn(
                "job {job} runs as {account}, which cannot be used now "
                "({error}): acting on it in Slurm as {server}",
                job=record.id,
                account=account,
                error=str(e),
                server=self.server.label,
            )
            return self.server

    def folderOwner(self, identity: Identity) -> tuple[int, int] | None:
        """Who a job's folder is given to: none when it is the server's."""
        if identity.uid == self.server.uid:
            return None
        return (identity.uid, identity.gid)
