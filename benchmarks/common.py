"""
Shared pieces of the benchmark suite: the real server as a subprocess, a small
keep-alive HTTPS client (stdlib http.client + ssl), load-generator processes,
/proc readings, statistics and cleanup.

Nothing here imports jobworker: the server is measured from the outside.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CERTS = os.path.join(ROOT, "certs")
CA = os.path.join(CERTS, "ca.pem")
CERT = os.path.join(CERTS, "server.pem")
KEY = os.path.join(CERTS, "server.key")
PYTHON = sys.executable
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
#: A dynamic uid range no account of the test machines uses.
FREE_UIDS = "70000-71999"
JW = os.path.join(BIN, "jw")
LOADGEN = os.path.join(HERE, "loadgen.py")
BARE = os.path.join(HERE, "bare.py")
BARE_SPAWNER = os.path.join(HERE, "bare_spawner.py")
PROFILED_TWISTD = os.path.join(HERE, "profiled_twistd.py")

#: Development users (see README).
PASSWORDS = {"alice": "alice-pass", "ada": "ada-pass"}

#: The open-files limit the server is started with (raised in a preexec_fn):
#: 1,000 running jobs hold ~4,000 descriptors (two pipes, two spool files).
SERVER_NOFILE = 65536

LISTENING = re.compile(rb"jobworker listening on https://([^:/\s]+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1_000_000
MiB = 1 << 20


class BenchError(Exception):
    """Something broke (not a missed goal): the run exits non-zero."""


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics --------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    if not values:
        raise BenchError("no samples")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of a list of seconds."""
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


# -- /proc -------------------------------------------------------------------


def procStatus(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, VmSize of C{pid} in KiB (missing keys omitted)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize", "VmPeak"):
                values[key] = int(rest.split()[0])
    return values


def resetPeakRSS(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def cpuSeconds(pid: int) -> float:
    """user + system CPU seconds used by C{pid} so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machineBusySeconds() -> float:
    """CPU seconds every CPU of the machine has been busy so far (/proc/stat:
    all but idle and iowait)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def _cpuByProcess() -> dict[int, tuple[str, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.find(b"(") + 1 : data.rfind(b")")].decode("ascii", "replace")
        fields = data.rsplit(b")", 1)[1].split()
        found[int(entry)] = (name, int(fields[11]) + int(fields[12]))
    return found


def busyFraction(seconds: float = 0.5) -> tuple[float, list[str]]:
    """
    How busy all CPUs were (0..1) over C{seconds}, from /proc/stat, and the
    processes that used the most CPU meanwhile ("name pid: 45%").
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    before = _cpuByProcess()
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    after = _cpuByProcess()
    if total1 == total0:
        return 0.0, []
    used = sorted(
        (
            (ticks - before[pid][1], name, pid)
            for pid, (name, ticks) in after.items()
            if pid in before and ticks > before[pid][1]
        ),
        reverse=True,
    )
    top = [
        f"{name} {pid}: {ticks / CLK_TCK / seconds:.0%}"
        for ticks, name, pid in used[:3]
    ]
    return 1 - (idle1 - idle0) / (total1 - total0), top


def _stat(entry: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{entry}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(b")", 1)[1].split()


def processes() -> list[tuple[int, str, int, int]]:
    """Every live (non-zombie) process: (pid, state, ppid, session id)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(entry)
        if fields is None or fields[0] == b"Z":
            continue
        found.append((int(entry), fields[0].decode(), int(fields[1]), int(fields[3])))
    return found


def inSessions(sessions: set[int]) -> list[int]:
    """Live pids whose session is one of C{sessions} (job sessions: sid = pid)."""
    return [pid for pid, _, _, sid in processes() if sid in sessions]


def childSessions(ppid: int) -> set[int]:
    """
    Session ids of the server C{ppid}'s jobs: its children and its
    spawner's (launcher.c --spawner) that lead a session of their own. The
    spawner (its own session too) and the server's session are not jobs.
    """
    found = processes()
    spawners = {
        pid for pid, _, parent, _ in found if parent == ppid and _isSpawner(pid)
    }
    return {
        sid
        for pid, _, parent, sid in found
        if (parent == ppid or parent in spawners) and sid == pid and pid not in spawners
    }


def _isSpawner(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[1:2] == [b"--spawner"]
    except OSError:
        return False


def killSessions(sessions: set[int]) -> int:
    """SIGKILL whatever is left in C{sessions}; return how many were killed."""
    killed = 0
    for pid in inSessions(sessions):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def nofileLimit(pid: int) -> str:
    """The 'Max open files' soft/hard limits of C{pid}, as text."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "?"


def raiseNofile() -> None:
    """preexec_fn of the server: raise RLIMIT_NOFILE to SERVER_NOFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SERVER_NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, SERVER_NOFILE))
            return
        except (ValueError, OSError):
            target = hard
    else:
        target = SERVER_NOFILE
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def freePort() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- cleanup -----------------------------------------------------------------


class Cleanup:
    """Everything this run made: processes, job sessions, temp dirs and files."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []
        self._sessions: set[int] = set()
        self._paths: list[str] = []
        self._callbacks: list[Any] = []

    def process(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self._procs.append(proc)
        return proc

    def sessions(self, sids: set[int]) -> None:
        self._sessions |= sids

    def tempdir(self, prefix: str = "jwbench-") -> str:
        path = tempfile.mkdtemp(prefix=prefix)
        self._paths.append(path)
        return path

    def callback(self, f: Any) -> None:
        self._callbacks.append(f)

    def run(self) -> list[str]:
        """Undo everything (idempotent); return what had to be forced."""
        forced: list[str] = []
        for f in reversed(self._callbacks):
            try:
                f()
            except Exception as e:
                forced.append(f"cleanup callback failed: {e!r}")
        self._callbacks = []
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                forced.append(f"pid {proc.pid} ({proc.args[0]!r}) was still running")
        self._procs = []
        if self._sessions:
            killed = killSessions(self._sessions)
            if killed:
                forced.append(f"{killed} leftover job process(es) killed")
            self._sessions = set()
        for path in reversed(self._paths):
            shutil.rmtree(path, ignore_errors=True)
        self._paths = []
        return forced


# -- the server --------------------------------------------------------------


class Server:
    """
    C{twistd -n --pidfile= jobworker --tls --port=0 ...} as a subprocess, its
    log in a file, its open-files limit raised to L{SERVER_NOFILE}.

    With C{profile}, it runs under cProfile (profiled_twistd.py), which
    writes PROFILE when the server exits.
    """

    def __init__(
        self,
        cleanup: Cleanup,
        workdir: str,
        name: str,
        stateDir: str | None = None,
        profile: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.cleanup = cleanup
        self.name = name
        self.stateDir = stateDir or os.path.join(workdir, f"state-{name}")
        self.logPath = os.path.join(workdir, f"server-{name}.log")
        self.profile = profile
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.startup = 0.0
        self.jobSessions: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        prefix = [TWISTD]
        if self.profile is not None:
            prefix = [PYTHON, PROFILED_TWISTD, self.profile]
        return [
            *prefix,
            "-n",
            "--pidfile=",
            "jobworker",
            "--tls",
            "--port=0",
            f"--cert={CERT}",
            f"--key={KEY}",
            f"--state-dir={self.stateDir}",
            *self.identityOptions(),
            *self.extra,
        ]

    def identityOptions(self) -> list[str]:
        """
        As root, jobs run as dynamic uids: from a range that no account of
        this machine uses (Debian's slurm package takes 64030, inside the
        default range), unless a scenario chose otherwise.
        """
        if os.getuid() != 0 or any(
            option.startswith(("--dynamic-uids", "--run-as", "--allow-root-jobs"))
            for option in self.extra
        ):
            return []
        return [f"--dynamic-uids={FREE_UIDS}"]

    def start(self, timeout: float = 60.0) -> Server:
        """Start and wait for the listening line; C{startup} is that wait."""
        logFile = open(self.logPath, "wb")
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=logFile,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                preexec_fn=raiseNofile,
            )
        finally:
            logFile.close()
        self.cleanup.process(self.proc)
        deadline = started + timeout
        with open(self.logPath, "rb") as f:
            seen = b""
            while True:
                chunk = f.read()
                if chunk:
                    seen += chunk
                    match = LISTENING.search(seen)
                    if match:
                        self.startup = time.monotonic() - started
                        self.port = int(match.group(2))
                        return self
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"server exited with {self.proc.returncode} at start-up: "
                        + seen.decode("utf-8", "replace")[-2000:]
                    )
                if time.monotonic() > deadline:
                    raise BenchError(f"server not listening after {timeout}s")
                time.sleep(0.002)

    def rss(self) -> dict[str, int]:
        return procStatus(self.pid)

    def cpu(self) -> float:
        return cpuSeconds(self.pid)

    def client(self, user: str | None = "alice") -> Client:
        return Client(self.port, user)

    def noteJobs(self) -> None:
        """Remember the sessions of the server's current jobs (for cleanup)."""
        sids = childSessions(self.pid)
        self.jobSessions |= sids
        self.cleanup.sessions(sids)

    def logErrors(self) -> list[str]:
        """Log lines at error/critical level, or tracebacks."""
        with open(self.logPath, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return [
            line
            for line in text.splitlines()
            if "#error]" in line
            or "#critical]" in line
            or line.startswith("Traceback")
            or "Unhandled Error" in line
        ]

    def stop(self, timeout: float = 120.0) -> float:
        """SIGTERM (the server stops its jobs first); return the seconds it took."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        self.noteJobs()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BenchError(f"server did not exit {timeout}s after SIGTERM") from None
        finally:
            killSessions(self.jobSessions)
        return time.monotonic() - started


# -- a keep-alive HTTPS client -----------------------------------------------


def sslContext() -> ssl.SSLContext:
    """Verify the server against the development CA, TLS 1.3 only."""
    ctx = ssl.create_default_context(cafile=CA)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def authHeader(user: str) -> str:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode("ascii")
    return f"Basic {token}"


#: twisted.web drops a connection idle for 60 s: reconnect before that.
IDLE_RECONNECT = 45.0


class Client:
    """One keep-alive HTTPS connection (http.client), optionally authenticated."""

    def __init__(
        self, port: int, user: str | None = "alice", host: str = "127.0.0.1"
    ) -> None:
        self.conn = http.client.HTTPSConnection(
            host, port, context=sslContext(), timeout=300
        )
        self._used = time.monotonic()
        self.headers: dict[str, str] = {}
        if user is not None:
            self.headers["Authorization"] = authHeader(user)

    def request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        if body is not None or method in ("POST", "DELETE"):
            headers["Content-Type"] = "application/json"
        if time.monotonic() - self._used > IDLE_RECONNECT:
            self.conn.close()  # the server drops idle connections after 60 s
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        content = response.read()
        self._used = time.monotonic()
        return response.status, response, content

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, _, content = self.request(method, path, body)
        return status, json.loads(content)

    def expect(self, code: int, method: str, path: str, body: Any = None) -> Any:
        status, value = self.json(method, path, body)
        if status != code:
            raise BenchError(f"{method} {path}: expected {code}, got {status} {value}")
        return value

    def create(self, command: str, *args: str) -> dict[str, Any]:
        job: dict[str, Any] = self.expect(
            201, "POST", "/jobs", {"command": command, "args": list(args)}
        )
        return job

    def waitEnded(self, jobId: str, timeout: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.expect(200, "GET", f"/jobs/{jobId}")
            if job["status"] != "RUNNING":
                return job
            if time.monotonic() > deadline:
                raise BenchError(f"job {jobId} still RUNNING after {timeout}s")
            time.sleep(0.01)

    def close(self) -> None:
        self.conn.close()


class RawClient:
    """
    A lean keep-alive HTTPS client for load generation: pre-built request
    bytes, no header objects, only the framing parsed (Content-Length or
    chunked). It costs the client a fraction of http.client's CPU, so eight
    of them on a two-core machine leave the server its core.
    """

    def __init__(self, port: int, user: str | None = "alice") -> None:
        self.port = port
        self.auth = authHeader(user) if user is not None else None
        sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sslContext().wrap_socket(sock, server_hostname="127.0.0.1")
        self.buffer = bytearray()
        self._view = memoryview(bytearray(1 << 20))

    def build(self, method: str, path: str, body: Any = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        if self.auth is not None:
            lines.append(f"Authorization: {self.auth}")
        data = b""
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        if body is not None or method in ("POST", "DELETE"):
            lines.append("Content-Type: application/json")
        if data or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(data)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + data

    def _fill(self) -> None:
        n = self.sock.recv_into(self._view)
        if not n:
            raise BenchError("server closed the connection")
        self.buffer += self._view[:n]

    def head(self, request: bytes) -> tuple[int, bytes]:
        """Send C{request}; return the status and the raw header block."""
        self.sock.sendall(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return int(head[9:12]), head.lower()

    def body(self, head: bytes, sink: Any = None) -> int:
        """Read the body; hand each piece's length to C{sink}; return its size."""
        if b"transfer-encoding: chunked" not in head:
            match = re.search(rb"content-length: *(\d+)", head)
            size = int(match.group(1)) if match else 0
            while len(self.buffer) < size:
                self._fill()
            self.last = bytes(self.buffer[:size])
            del self.buffer[:size]
            if sink is not None and size:
                sink(size)
            return size
        total = 0
        pos = 0
        buffer = self.buffer
        pieces = []
        while True:
            while (eol := buffer.find(b"\r\n", pos)) < 0:
                self._fill()
            size = int(bytes(buffer[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            while len(buffer) - pos < size + 2:
                self._fill()
            if size == 0:
                del buffer[: pos + 2]
                self.last = b"".join(pieces)
                return total
            if sink is None:
                pieces.append(bytes(buffer[pos : pos + size]))
            else:
                sink(size)
            total += size
            pos += size + 2
            if pos > 1 << 20:
                del buffer[:pos]
                pos = 0

    def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        status, head = self.head(request)
        self.body(head)
        return status, self.last

    def close(self) -> None:
        self.sock.close()


# -- load generator processes ------------------------------------------------


def _readLine(proc: subprocess.Popen[bytes], buffer: bytearray, deadline: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"load generator {proc.pid} timed out")
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise BenchError(
                    f"load generator {proc.pid} exited ({proc.wait()}) "
                    f"without answering"
                )
            buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode("utf-8")


class Workers:
    """
    C{n} load-generator processes (benchmarks/loadgen.py), each with its own
    keep-alive connection(s), so they share no GIL with each other or with
    this process. They connect and warm up first (C{ready}), then all start
    on C{go}.
    """

    def __init__(
        self, cleanup: Cleanup, n: int, config: dict[str, Any], timeout: float = 300
    ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self._buffers: list[bytearray] = []
        for i in range(n):
            proc = subprocess.Popen(
                [PYTHON, LOADGEN, json.dumps({**config, "index": i})],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            cleanup.process(proc)
            self.procs.append(proc)
            self._buffers.append(bytearray())
        deadline = time.monotonic() + timeout
        for proc, buffer in zip(self.procs, self._buffers, strict=True):
            line = _readLine(proc, buffer, deadline)
            if line != "ready":
                raise BenchError(f"load generator said {line!r}, not ready")

    def go(self, payloads: list[Any] | None = None) -> None:
        for i, proc in enumerate(self.procs):
            assert proc.stdin is not None
            payload = None if payloads is None else payloads[i]
            proc.stdin.write(json.dumps(payload).encode("utf-8") + b"\n")
            proc.stdin.flush()

    def results(self, timeout: float = 900) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out = []
        for proc, buffer in zip(self.procs, self._buffers, strict=True):
            result = json.loads(_readLine(proc, buffer, deadline))
            if "error" in result:
                raise BenchError(f"load generator failed: {result['error']}")
            out.append(result)
        for proc in self.procs:
            proc.wait(30)
        return out


def runBare(*args: str, timeout: float = 900, script: str = BARE) -> dict[str, Any]:
    """Run benchmarks/bare.py (a bare Twisted script) and return its JSON."""
    done = subprocess.run(
        [PYTHON, script, *args], capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BenchError(
            f"bare.py {' '.join(args)} failed: "
            + done.stderr.decode("utf-8", "replace")[-2000:]
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def jwEnvironment(port: int, user: str = "alice") -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "JW_SERVER": f"https://localhost:{port}",
        "JW_CA": CA,
        "JW_USER": user,
        "JW_PASSWORD": PASSWORDS[user],
        # The jobworker measured: the working tree or a snapshot (run.py).
        **(
            {"PYTHONPATH": os.environ["PYTHONPATH"]}
            if "PYTHONPATH" in os.environ
            else {}
        ),
    }


def jwCommand() -> list[str]:
    if os.path.exists(JW):
        return [JW]
    return [PYTHON, "-c", "from jobworker.client.cli import main; main()"]


def timed(
    argv: list[str], env: dict[str, str] | None = None, shared: bool = False
) -> float:
    """
    Wall time of a command whose stdout goes to /dev/null; it must exit 0.
    Its stderr is read (a pipe), or with C{shared} goes where its stdout
    goes (2>&1).
    """
    started = time.monotonic()
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT if shared else subprocess.PIPE,
        env=env,
        timeout=900,
        check=False,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(argv[:6])}... exited {done.returncode}: "
            + (done.stderr or b"(its stderr went to /dev/null)").decode(
                "utf-8", "replace"
            )[-1000:]
        )
    return elapsed
