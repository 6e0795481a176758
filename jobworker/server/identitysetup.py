"""
Who jobs run as, decided at start (see the README's threat model): the
server's own user, a shared account, root, or dynamic uids (their range
checked, a dead server's leftovers reclaimed); how sandboxed jobs start
(the compiled launcher or the exec chain); and the sandbox probe.
"""

from __future__ import annotations

import os
import time

from twisted.logger import Logger

from ..executors.local import launcher as launchers
from ..executors.local.executor import LocalExecutor
from ..executors.local.sandbox import SandboxError
from ..jobs.identity import (
    DynamicUids,
    Identities,
    Identity,
    IdentityError,
    PoolExhausted,
    UidLocksFailing,
    rangeClashes,
)
from ..jobs.recovery import hasLiveParent, killAll, processesByUid, processesOf
from .options import Options
from .startup import fatal

log = Logger(namespace="jobworker.server.tap")


def identities(config: Options, slurm: bool) -> Identities:
    """Who jobs run as (see the README's threat model), said in the log."""
    server = Identity.ofServer()
    if server.uid != 0:
        if config["run-as"] is not None:
            fatal("--run-as needs the server to run as root")
        log.warn(
            "the server runs as {user}, not root: every user's jobs run as "
            "{user} and share that identity (each can read the others' "
            "environment and signal them) with the server itself: a job can "
            "read the token key and the users file, and so act as any user, "
            "Admin included; run it so only for users trusted as {user}",
            user=server.label,
        )
        return Identities(server=server)
    if slurm:
        return Identities(server=server)
    if config["run-as"] is not None:
        try:
            shared = Identity.ofAccount(config["run-as"])
        except IdentityError as e:
            fatal(f"--run-as: {e}")
        log.warn(
            "--run-as {user}: the jobs of every user without a mapped account "
            "share the account {user}: they can read each other's files; each "
            "job gets a PID namespace of its own through the launcher (without "
            "it and --isolate pid they can change each other's limits, "
            "RLIMIT_CPU: a kill, priority and CPU affinity, and read each "
            "other's environment and signal each other)",
            user=shared.label,
        )
        return Identities(shared=shared, server=server)
    if config["allow-root-jobs"]:
        log.warn(
            "--allow-root-jobs: the jobs of users without a mapped account RUN "
            "AS ROOT: any Developer can read the token key and every secret "
            "of this machine"
        )
        return Identities(server=server)
    first, last = config["dynamic-uids"]
    clashes = rangeClashes(first, last)
    if clashes:
        fatal(
            f"--dynamic-uids {first}-{last} is used by {', '.join(clashes[:5])}: "
            "choose a free range"
        )
    try:
        pool = DynamicUids(first, last)
    except OSError as e:
        fatal(f"cannot make the dynamic uid lock folder: {e.strerror}")
    _reclaim(pool)
    log.info(
        "jobs of users without a mapped account run as a dynamic uid of their "
        "own ({first}-{last}; one a user or group of the user database has "
        "is skipped)",
        first=first,
        last=last,
    )
    return Identities(pool=pool, server=server)


def _reclaim(pool: DynamicUids) -> None:
    """Kill what a dead server's dynamic jobs left, then free their uids."""
    found = pool.reclaim(processesByUid(pool.uids), killAll, hasLiveParent)
    for uid in pool.keptAside:
        log.warn(
            "dynamic uid {uid} is free of any lock, but its processes belong to "
            "a live parent (another server's job, its lock file removed?): "
            "left alone, and not used",
            uid=uid,
        )
    for uid in found:
        for _ in range(100):
            if not processesOf(uid):
                pool.release(uid)
                break
            time.sleep(0.01)
        else:
            log.warn("dynamic uid {uid} still has processes: not used", uid=uid)
    if found:
        log.warn("killed the leftovers of {count} dynamic uid(s)", count=len(found))


#: The exec chain, as the log names it.
CHAIN = (
    "the exec chain (setsid, unshare, sh, setpriv, env; its jobs keep the "
    "server's session keyring, a dynamic uid's jobs share its user "
    "keyrings, jobs of one uid may signal each other and share abstract "
    "unix sockets, and jobs may make user namespaces: only the launcher "
    "keeps kernel keyrings, signals and abstract sockets apart and refuses "
    "a dynamic uid's job a user namespace)"
)


def chooseLauncher(config: Options, identities: Identities) -> str | None:
    """
    The compiled launcher sandboxed jobs start through, or None (the exec
    chain): one log line says which, and why.
    """
    if not identities.switching:
        return None
    if config["launcher"] == "off":
        log.info("sandboxed jobs start through {chain}: --launcher off", chain=CHAIN)
        return None
    try:
        compiler = launchers.findCompiler()
        path = launchers.build(
            [
                launchers.CACHE_DIR,
                os.path.join(config["state-dir"], "launcher"),
            ],
            compiler,
        )
    except launchers.LauncherUnavailable as e:
        log.warn(
            "sandboxed jobs start through {chain}: {why}",
            chain=CHAIN,
            why=f"no launcher: {e}",
        )
        return None
    abi = launchers.landlockABI()
    log.info(
        "sandboxed jobs start through the launcher {path} (compiled "
        "with {compiler}: one process{fork}, then the command; {how}); "
        "abstract unix sockets: {sockets}; signals: {signals}",
        path=path,
        compiler=compiler,
        sockets="each job's own (--isolate net)"
        if "net" in config["isolate"]
        else f"each job's own (Landlock ABI {abi})"
        if abi >= launchers.LANDLOCK_SCOPES
        else f"shared between jobs (Landlock ABI {abi}, "
        f"{launchers.LANDLOCK_SCOPES} needed: Linux 6.12, with landlock in "
        "lsm=); --isolate net keeps them apart",
        signals=f"within each job (Landlock ABI {abi})"
        if abi >= launchers.LANDLOCK_SCOPES
        else "jobs of one uid may signal each other (Landlock ABI "
        f"{abi}); --isolate pid keeps them apart",
        fork=", which forks the init of the job's namespace (PID 1; the job is 2)"
        if "pid" in config["isolate"]
        else "",
        how="spawned by the server for each job: --launcher exec"
        if config["launcher"] == "exec"
        # (With cgroups or without: the line said jobs without were spawned
        # by the server, the spawner forks them too: review 39.)
        else "forked ahead of each job by a long-lived copy, the spawner",
    )
    return path


def probeSandbox(executor: LocalExecutor, identities: Identities) -> None:
    """
    Refuse to start if the job sandbox does not work on this machine; a
    launcher that fails the probe gives way to the exec chain.
    """
    sandbox = executor.sandbox
    if sandbox is None:
        return
    if identities.shared is not None:
        probe = identities.shared
    elif identities.pool is not None:
        try:
            probe = Identity.ofDynamicUid(identities.pool.acquire())
        except PoolExhausted as e:
            fatal(f"--dynamic-uids: {e}: choose a free range")
        except UidLocksFailing as e:
            fatal(f"--dynamic-uids: {e.strerror} (in {identities.pool.lockDir})")
    else:
        return
    try:
        if sandbox.usesLauncher:
            try:
                sandbox.probe(probe)
            except SandboxError as e:
                log.warn(
                    "sandboxed jobs start through {chain}: the launcher failed "
                    "its probe ({why})",
                    chain=CHAIN,
                    why=str(e),
                )
                sandbox.launcher = None
            else:
                return
        sandbox.probe(probe)
    except SandboxError as e:
        fatal(
            f"cannot sandbox jobs on this machine ({e}): jobs that do not run "
            "as root need mount namespaces and per-mount /proc options "
            "(Linux 5.8+)"
        )
    finally:
        identities.release(probe)
