"""twistd jobworker options: what each means, its default, and its checks."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from twisted.python import usage

from ..errors import BadRequest
from ..executors.local.executor import machineLimits
from ..executors.local.pump import MAX_PUMPS
from ..executors.local.sandbox import ISOLATION
from ..jobs.identity import (
    DYNAMIC_UIDS,
    parseRange,
)
from ..jobs.limits import Limits
from ..jobs.manager import DEFAULT_MAX_LOG_BYTES
from ..jobs.placement import positiveInteger
from ..jobs.policy import (
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_QUEUED_PER_USER,
    DEFAULT_MAX_STDIN,
    DEFAULT_TMP_SIZE,
)
from ..jobs.validation import MAX_TIMEOUT
from ..keepalive import MOST as MOST_KEEPALIVE
from ..units import parseSize
from .descriptors import PER_JOB

#: Connections in all, by default (--max-connections).
MAX_CONNECTIONS = 1024


def defaultStateDir() -> str:
    """C{$XDG_STATE_HOME/jobworker}, else C{~/.local/state/jobworker}."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "jobworker")


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parseDuration(text: str) -> float:
    """
    C{"7d"}, C{"12h"}, C{"30m"}, C{"45s"} or plain seconds -> seconds: more
    than 0, at most what a request's C{timeout_seconds} may be (366 days).

    @raise ValueError: not such a duration (C{inf} and C{nan} are not: a
        job record carrying one would not be JSON).
    """
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _TIME_UNITS else "s"
    number = value[:-1] if value[-1:] in _TIME_UNITS else value
    try:
        seconds = float(number) * _TIME_UNITS[unit]
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 7d, 12h, 30m)") from None
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {text!r}")
    if not seconds > 0:
        raise ValueError(f"duration must be positive: {text!r}")
    if seconds > MAX_TIMEOUT:
        raise ValueError(
            f"duration must be at most {MAX_TIMEOUT // 86400}d "
            f"({MAX_TIMEOUT} seconds): {text!r}"
        )
    return seconds


_WHOLE_NUMBER = re.compile("[+-]?[0-9]+", re.ASCII)


def wholeNumber(text: str) -> int:
    """
    C{"8443"} -> 8443: ASCII digits, with an optional sign.

    @raise ValueError: not a whole number.
    """
    if _WHOLE_NUMBER.fullmatch(text.strip()) is None:
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def finiteNumber(text: str) -> float:
    """
    C{"2.5"} -> 2.5; not C{inf} nor C{nan}.

    @raise ValueError: not a finite number.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _naming(parameter: list[Any]) -> list[Any]:
    """
    An C{optParameters} entry whose coercion's C{ValueError} becomes a
    L{usage.UsageError} naming the option (C{--port: not a whole number:
    'abc'}): C{usage.CoerceParameter} would say only "Parameter type
    enforcement failed", and passes a C{UsageError} on as it is.
    """
    if len(parameter) < 5:
        return parameter
    name, short, default, doc, coerce = parameter

    def coerceNaming(text: str) -> Any:
        try:
            return coerce(text)
        except ValueError as e:
            raise usage.UsageError(f"--{name}: {e}") from None

    return [name, short, default, doc, coerceNaming]


#: The limits a job has a --default-X and a --max-X of: L{Limits} field ->
#: option suffix.
_LIMIT_OPTIONS = {"memory_bytes": "memory", "cpu_millicores": "cpu", "pids": "pids"}


#: The options that name a file or folder: made absolute as they are parsed.
PATH_OPTIONS = (
    "state-dir",
    "users",
    "cert",
    "key",
    "client-ca",
    "audit-log",
    "token-key",
    "slurm-output-dir",
)


class Options(usage.Options):
    """C{twistd jobworker} options."""

    synopsis = "[--tls] [options]"
    longdesc = (
        "Serve the jobworker REST API over HTTPS (TLS 1.3 only). "
        "Example: twistd -n jobworker --tls --port 8443 --users users.txt"
    )
    optFlags = [
        [
            "tls",
            None,
            "Serve HTTPS with TLS 1.3 (required: there is no plaintext mode).",
        ],
        [
            "drain",
            None,
            "Start draining: take no new job and start no queued one until an "
            "Admin's DELETE /drain (jw drain --end). For a restored backup or a "
            "moved state dir tried out beside the live server: its queued jobs "
            "would run a second time.",
        ],
        [
            "require-client-cert",
            None,
            "Refuse, in the TLS handshake, clients without a certificate "
            "signed by --client-ca.",
        ],
        [
            "allow-root-jobs",
            None,
            "Run the jobs of users without a mapped account as root (the "
            "server's user). Dangerous: any Developer then owns the machine.",
        ],
        [
            "allow-io-bps",
            None,
            "Let jobs ask for disk rates (limits.io_read_bps, io_write_bps). "
            "Dangerous where job owners do not trust each other: a throttled "
            "read holds the pages it reads, and those of every read it queued, "
            "for every process on the machine; a throttled write holds every "
            "sync of its filesystem; each for as long as its queue lasts.",
        ],
        [
            "slurm-shared-account",
            None,
            "With --executor slurm: run the jobs of users without a mapped Unix "
            "account as the service account (this server's user), one identity "
            "they all share (default: such users' jobs are refused, 403).",
        ],
        [
            "slurm-no-probe",
            None,
            "With --executor slurm: skip the start-up probe job that checks "
            "that the nodes write where this server reads (--slurm-output-dir).",
        ],
        [
            "slurm-allow-exclusive",
            None,
            'With --executor slurm: jobs may ask for whole nodes ("slurm": '
            '{"exclusive": true}, sbatch --exclusive).',
        ],
    ]
    optParameters: list[list[Any]] = [
        ["port", "p", 8443, "TCP port to listen on (0 picks a free one).", wholeNumber],
        ["interface", None, "127.0.0.1", "Address to listen on."],
        [
            "cert",
            None,
            None,
            "PEM certificate (chain) of the server (default: its own, made in "
            "<state-dir>/tls on first start).",
        ],
        ["key", None, None, "PEM private key of the server (with --cert)."],
        [
            "users",
            None,
            None,
            "Users file (name:role:bcrypt-hash[:unix-account] per line).",
        ],
        [
            "state-dir",
            None,
            None,
            "Where job output is kept (default $XDG_STATE_HOME/jobworker).",
        ],
        [
            "stop-grace",
            None,
            10.0,
            "Seconds between SIGTERM and SIGKILL on stop.",
            finiteNumber,
        ],
        [
            "max-log-bytes",
            None,
            DEFAULT_MAX_LOG_BYTES,
            "Cap on each output stream of each job (e.g. 1G, 256M); the rest "
            "is discarded and the job record says so.",
            parseSize,
        ],
        [
            "retain",
            None,
            None,
            "Remove ended jobs (record and output) this long after they end "
            "(e.g. 7d, 12h). Default: keep forever.",
            parseDuration,
        ],
        [
            "cgroups",
            None,
            "auto",
            "Per-job cgroups: auto (use v2 or v1 when usable) or off.",
        ],
        ["default-memory", None, None, "Memory limit of a job (e.g. 512M).", parseSize],
        [
            "max-memory",
            None,
            None,
            "Largest memory limit a job may ask for.",
            parseSize,
        ],
        ["default-cpu", None, None, "CPU limit of a job in millicores.", wholeNumber],
        [
            "max-cpu",
            None,
            None,
            "Largest CPU limit (millicores) a job may ask for.",
            wholeNumber,
        ],
        ["default-pids", None, None, "Process-count limit of a job.", wholeNumber],
        [
            "max-pids",
            None,
            None,
            "Largest process-count limit a job may ask for.",
            wholeNumber,
        ],
        [
            "max-io-bps",
            None,
            None,
            "Largest disk read/write limit (bytes/s).",
            parseSize,
        ],
        [
            "min-io-bps",
            None,
            None,
            "Smallest disk read/write limit (bytes/s) a job may ask for: a "
            "read throttled slower holds the pages it reads locked for every "
            "process on the machine [default: 4 read-ahead windows of the "
            "disk a second, 1M at least].",
            parseSize,
        ],
        [
            "default-timeout",
            None,
            None,
            "Stop a job (FAILED, timed out) after this long (e.g. 1h).",
            parseDuration,
        ],
        [
            "isolate",
            None,
            "",
            "Namespaces for every job, comma-separated: pid, net, mount.",
        ],
        [
            "run-as",
            None,
            None,
            "Run the jobs of users without a mapped account as this one "
            "(non-root) user: they then share it (default: a dynamic uid each).",
        ],
        [
            "dynamic-uids",
            None,
            f"{DYNAMIC_UIDS[0]}-{DYNAMIC_UIDS[1]}",
            "The uid range of per-job dynamic identities (no passwd or group "
            "entry may use it).",
            parseRange,
        ],
        [
            "launcher",
            None,
            "auto",
            "How a root server starts sandboxed jobs: auto (a small C launcher "
            "compiled at start-up with cc, one process, forked for each job "
            "by a long-lived copy of it, the spawner; the exec chain if it "
            "cannot be built), exec (the same launcher, spawned by the server "
            "for each job) or off (the exec chain: setsid, unshare, sh, "
            "setpriv, env).",
        ],
        [
            "tmp-size",
            None,
            DEFAULT_TMP_SIZE,
            "Size of each private tmpfs (/tmp, /var/tmp, /dev/shm, the "
            "working directory) of a job that does not run as root.",
            parseSize,
        ],
        [
            "job-oom-score-adj",
            None,
            None,
            "The oom_score_adj every local job starts with, 0 to 1000 (higher: "
            "the OOM killer's first choice). Default: the server's own, or 0 "
            "if the server's is below 0 (systemd's OOMScoreAdjust=-1000 would "
            "make every job immune to the OOM killer, its cgroup's limit "
            "included).",
            wholeNumber,
        ],
        [
            "max-stdin-bytes",
            None,
            DEFAULT_MAX_STDIN,
            'Most bytes one "stdin": true job may be sent (413 past it).',
            parseSize,
        ],
        [
            "max-running",
            None,
            None,
            "At most this many jobs run at once; more wait in the queue. Local "
            "jobs: never more than half the descriptor limit holds, "
            f"{PER_JOB} each.",
            wholeNumber,
        ],
        [
            "max-queued",
            None,
            DEFAULT_MAX_QUEUED,
            "At most this many jobs wait in the queue (429 past it).",
            wholeNumber,
        ],
        [
            "max-queued-per-user",
            None,
            DEFAULT_MAX_QUEUED_PER_USER,
            "At most this many of one user's jobs wait in the queue (429 past it).",
            wholeNumber,
        ],
        [
            "max-running-per-user",
            None,
            None,
            "At most this many jobs of one user run at once; more wait in the queue.",
            wholeNumber,
        ],
        [
            "create-rate",
            None,
            50.0,
            "Jobs one user may create per second on average, bursts of twice "
            "that (429 with Retry-After past it).",
            finiteNumber,
        ],
        [
            "max-log-streams-per-user",
            None,
            None,
            "Log streams one user may hold open (default: a quarter of "
            "--max-log-streams).",
            wholeNumber,
        ],
        [
            "access-log",
            None,
            "off",
            "Log every HTTP request to the server log: on or off (the audit "
            "log and metrics record the important ones anyway).",
        ],
        [
            "audit-log",
            None,
            None,
            "Audit log file, JSON lines (default <state-dir>/audit.log).",
        ],
        [
            "login-failures",
            None,
            5,
            "Failed logins from one client before it is throttled (429); all "
            "of loopback is one client, an IPv6 client its /64.",
            wholeNumber,
        ],
        [
            "max-connections-per-client",
            None,
            64,
            "Concurrent connections one client may hold (all of loopback is "
            "one client, an IPv6 client its /64).",
            wholeNumber,
        ],
        [
            "max-connections",
            None,
            MAX_CONNECTIONS,
            "Concurrent connections in all, whoever holds them; more are closed "
            "before the TLS handshake. At most half the server's descriptor "
            "limit (RLIMIT_NOFILE) less 64: the other half is the running "
            "jobs' pipes and files.",
            wholeNumber,
        ],
        [
            "max-connections-per-user",
            None,
            None,
            "Concurrent connections one user's requests may hold (default: a "
            "quarter of --max-connections, and no fewer than "
            "--max-connections-per-client); past it a request on another "
            "connection is refused (429), and that connection gives way at "
            "--max-connections.",
            wholeNumber,
        ],
        [
            "max-password-checks",
            None,
            32,
            "Password (bcrypt) checks in flight at once, whoever asks; more "
            "are 503 with Retry-After (tokens and certificates need none).",
            wholeNumber,
        ],
        [
            "output-threads",
            None,
            MAX_PUMPS,
            "Threads that read heavy output streams (a job printing at full "
            "speed), one stream each, so its followers never slow it; other "
            "streams are read by the server's main thread. 0: all are.",
            wholeNumber,
        ],
        [
            "max-log-streams",
            None,
            1000,
            "Concurrent log responses (followers included) the server serves.",
            wholeNumber,
        ],
        [
            "keepalive",
            None,
            60,
            "Seconds a connection may be silent before the client is probed "
            "(TCP keepalive, 3 probes): a client that vanished is let go in "
            "about twice this, with its log-stream slot.",
            wholeNumber,
        ],
        [
            "idle-timeout",
            None,
            60.0,
            "Close a connection idle (between requests) this many seconds.",
            finiteNumber,
        ],
        [
            "header-timeout",
            None,
            10.0,
            "A request's headers must arrive within this many seconds of its "
            "first byte (408, then the connection is closed).",
            finiteNumber,
        ],
        [
            "body-timeout",
            None,
            30.0,
            "A request's body must arrive within this many seconds of its headers.",
            finiteNumber,
        ],
        [
            "max-header-bytes",
            None,
            16384,
            "Largest request line plus headers, in bytes (431 past it, "
            "a line or all together).",
            parseSize,
        ],
        [
            "max-body-bytes",
            None,
            65536,
            "Largest request body, in bytes (413 past it; the rest is not kept).",
            parseSize,
        ],
        [
            "client-ca",
            None,
            None,
            "Accept client certificates signed by this CA (PEM); the user is "
            "the certificate's common name, looked up in the users file.",
        ],
        [
            "executor",
            None,
            "local",
            "Where jobs run: local (processes of this machine) or slurm "
            "(batch jobs of a Slurm cluster, through sbatch/squeue/scancel).",
        ],
        [
            "slurm-output-dir",
            None,
            None,
            "With --executor slurm: a folder every cluster node sees at the same "
            "path; job output and argv/env files go in <dir>/<job id>/.",
        ],
        ["slurm-partition", None, None, "With --executor slurm: sbatch --partition."],
        *(
            [
                f"slurm-allow-{plural}",
                None,
                "",
                f"With --executor slurm: the {what} a job may ask for "
                f'("slurm": {{"{field}": ...}}), separated by spaces; none '
                "unless given.",
            ]
            for plural, field, what in (
                ("partitions", "partition", "partitions"),
                ("accounts", "account", "accounts"),
                ("qos", "qos", "QOS names"),
                ("gres", "gres", "--gres values (e.g. gpu:1 gpu:2)"),
                ("constraints", "constraint", "--constraint values"),
            )
        ),
        [
            "slurm-max-nodes",
            None,
            1,
            'With --executor slurm: the most nodes a job may ask for ("slurm": '
            '{"nodes": N}, sbatch --nodes).',
            wholeNumber,
        ],
        [
            "slurm-max-ntasks",
            None,
            1,
            'With --executor slurm: the most tasks a job may ask for ("slurm": '
            '{"ntasks": N}, sbatch --ntasks).',
            wholeNumber,
        ],
        ["slurm-account", None, None, "With --executor slurm: sbatch --account."],
        [
            "slurm-poll",
            None,
            1.0,
            "With --executor slurm: seconds between state refreshes (one "
            "squeue call for all jobs).",
            finiteNumber,
        ],
        [
            "token-ttl",
            None,
            "12h",
            "Lifetime of a bearer token from POST /tokens (e.g. 12h, 30m).",
            parseDuration,
        ],
        [
            "token-key",
            None,
            None,
            "File holding the token signing key, made if absent (default "
            "<state-dir>/token.key); replacing it invalidates every token.",
        ],
    ]
    optParameters = [_naming(parameter) for parameter in optParameters]

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options} (C{sys.argv}'s by default), then check them.

        @raise usage.UsageError: a bad option, called directly.
        @raise SystemExit: a bad option, as twistd's subcommand (a parent):
            one line on stderr naming it, exit status 2. twistd would print
            its whole usage first, to stdout, and exit 1.
        """
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            if self.parent is None:
                raise
            print(f"jobworker: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    def parseArgs(self, *args: str) -> None:
        """Every option has a name: a bare word is a mistake, named."""
        if args:
            raise usage.UsageError(
                f"unexpected argument(s): {' '.join(args)} (options are --name=value)"
            )

    def postOptions(self) -> None:
        # Rules between options are option errors too (exit status 2).
        if not self["tls"]:
            raise usage.UsageError(
                "--tls is required: jobworker only serves HTTPS (TLS 1.3), there "
                "is no plaintext mode (twistd -n jobworker --tls)"
            )
        if (self["cert"] is None) != (self["key"] is None):
            raise usage.UsageError(
                "--cert and --key go together: give both, or neither"
            )
        if isinstance(self["token-ttl"], str):  # the default, shown as "12h"
            self["token-ttl"] = parseDuration(self["token-ttl"])
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be between 0 and 65535")
        if not 0 <= self["stop-grace"] <= 3600:
            raise usage.UsageError("--stop-grace must be between 0 and 3600 seconds")
        if self["access-log"] not in ("on", "off"):
            raise usage.UsageError("--access-log must be on or off")
        if self["cgroups"] not in ("auto", "off"):
            raise usage.UsageError("--cgroups must be auto or off")
        if self["launcher"] not in ("auto", "exec", "off"):
            raise usage.UsageError("--launcher must be auto, exec or off")
        isolate = {name for name in self["isolate"].split(",") if name}
        unknown = isolate - set(ISOLATION)
        if unknown:
            raise usage.UsageError(
                f"--isolate: unknown namespace(s) {', '.join(sorted(unknown))} "
                "(pid, net, mount)"
            )
        self["isolate"] = frozenset(isolate)
        self._checkLimits()
        for name in (
            "max-running",
            "max-running-per-user",
            "max-log-streams-per-user",
            "login-failures",
            "max-connections-per-client",
            "max-connections",
            "max-connections-per-user",
            "max-password-checks",
            "max-log-streams",
        ):
            if self[name] is not None and self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if not 1 <= self["keepalive"] <= MOST_KEEPALIVE:
            raise usage.UsageError(
                f"--keepalive must be whole seconds from 1 to {MOST_KEEPALIVE}"
            )
        for name in ("idle-timeout", "header-timeout", "body-timeout", "token-ttl"):
            # (1e-9 was taken: a server that closed every connection before
            # its handshake, tokens expired at their first use: operator
            # round 38.)
            if not 1 <= self[name] <= MAX_TIMEOUT:
                raise usage.UsageError(
                    f"--{name} must be from 1 to {MAX_TIMEOUT} seconds"
                )
        if self["executor"] not in ("local", "slurm"):
            raise usage.UsageError("--executor must be local or slurm")
        if self["executor"] == "slurm":
            if self["slurm-output-dir"] is None:
                raise usage.UsageError("--executor slurm needs --slurm-output-dir")
            if self["run-as"] is not None or self["isolate"]:
                raise usage.UsageError(
                    "--run-as and --isolate are for the local executor: Slurm "
                    "runs each job as its owner's mapped account, isolated by "
                    "its own config"
                )
            if (
                self["slurm-shared-account"]
                and os.getuid() == 0
                and not self["allow-root-jobs"]
            ):
                raise usage.UsageError(
                    "--slurm-shared-account on a server running as root would "
                    "run unmapped users' jobs as root: add --allow-root-jobs to "
                    "mean it, or run the server as a service account"
                )
            if not 0.1 <= self["slurm-poll"] <= 60:
                raise usage.UsageError("--slurm-poll must be 0.1..60 seconds")
            for name in ("slurm-max-nodes", "slurm-max-ntasks"):
                if not 1 <= self[name] <= 1 << 20:
                    raise usage.UsageError(f"--{name} must be from 1 to {1 << 20}")
        else:
            # (Taken without a word, a forgotten --executor slurm ran every
            # job on this host: operator round 37.)
            for name, value in sorted(self.items()):
                if name.startswith("slurm-") and value != self.defaults.get(name):
                    raise usage.UsageError(f"--{name} needs --executor slurm")
        if self["require-client-cert"] and self["client-ca"] is None:
            raise usage.UsageError("--require-client-cert needs --client-ca")
        if not 1024 <= self["max-header-bytes"] <= 1 << 20:
            raise usage.UsageError("--max-header-bytes must be 1K..1M")
        if not 1024 <= self["max-body-bytes"] <= 64 << 20:
            raise usage.UsageError("--max-body-bytes must be 1K..64M")
        if isinstance(self["dynamic-uids"], str):
            try:
                self["dynamic-uids"] = parseRange(self["dynamic-uids"])
            except ValueError as e:
                raise usage.UsageError(f"--dynamic-uids: {e}") from None
        if not 0 < self["create-rate"] <= 1e6:
            raise usage.UsageError("--create-rate must be positive (at most 1e6)")
        if self["run-as"] is not None and self["allow-root-jobs"]:
            raise usage.UsageError("--run-as and --allow-root-jobs exclude each other")
        for name in ("max-queued", "max-queued-per-user"):
            if not 0 <= self[name] <= 10_000_000:
                raise usage.UsageError(f"--{name} must be from 0 to 10000000")
        score = self["job-oom-score-adj"]
        if score is not None and not 0 <= score <= 1000:
            raise usage.UsageError("--job-oom-score-adj must be from 0 to 1000")
        if self["max-stdin-bytes"] < 1:
            raise usage.UsageError("--max-stdin-bytes must be at least 1")
        if self["tmp-size"] < 1 << 20:
            raise usage.UsageError("--tmp-size must be at least 1M")
        memory = machineLimits().memory_bytes
        if memory is not None and self["tmp-size"] > memory:
            # (A tmpfs takes the machine's memory: 178 PiB was taken as
            # given, for every job: operator round 37.)
            raise usage.UsageError(
                f"--tmp-size {self['tmp-size']} is over this machine's memory "
                f"({memory} bytes)"
            )
        if not 0 <= self["output-threads"] <= 256:
            raise usage.UsageError("--output-threads must be from 0 to 256")
        if self["max-log-bytes"] < 0:
            raise usage.UsageError("--max-log-bytes must not be negative")
        if self["state-dir"] is None:
            self["state-dir"] = defaultStateDir()
        for name in PATH_OPTIONS:
            # (twistd's own --rundir changes the working folder once the
            # service is built: a relative path named another file then,
            # the store "written again" there, the users file unread at a
            # SIGHUP: operator round 38.)
            if self[name]:  # (an empty one means the default: kept so)
                self[name] = os.path.abspath(self[name])

    def _checkLimits(self) -> None:
        """
        Each --default-X and --max-X passes what a request's C{limits.X}
        passes, and each --default-X is at most its --max-X; with the local
        executor, at most what this machine has, as a request's must be.
        """
        names = [
            f"{kind}-{suffix}"
            for suffix in _LIMIT_OPTIONS.values()
            for kind in ("default", "max")
        ]
        for name in (*names, "max-io-bps", "min-io-bps"):
            if self[name] is not None:
                try:
                    positiveInteger(self[name], f"--{name}")
                except BadRequest as e:
                    raise usage.UsageError(str(e)) from None
        most, least = self["max-io-bps"], self["min-io-bps"]
        if most is not None and least is not None and least > most:
            raise usage.UsageError(
                f"--min-io-bps {self['min-io-bps']} is over --max-io-bps {most}"
            )
        defaults, maxima = (
            Limits(
                **{
                    field: self[f"{kind}-{suffix}"]
                    for field, suffix in _LIMIT_OPTIONS.items()
                }
            )
            for kind in ("default", "max")
        )
        for field, value, most in defaults.over(maxima):
            suffix = _LIMIT_OPTIONS[field]
            raise usage.UsageError(
                f"--default-{suffix} {value} is over --max-{suffix} {most}"
            )
        if self["executor"] == "local":
            for field, value, most in defaults.over(machineLimits()):
                raise usage.UsageError(
                    f"--default-{_LIMIT_OPTIONS[field]} {value} is more than this "
                    f"machine has ({most}): a request's limits.{field} would be refused"
                )
