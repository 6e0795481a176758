"""
The bare-Twisted references of the benchmark suite: what the same reactor
does with no server around it. Prints one JSON object.

    python benchmarks/bare.py spawn --duration 10 --inflight 8 [--wrap W]
        reactor.spawnProcess of `true`, N in flight, for D seconds: jobs/s;
        --wrap setsid / gate: through `setsid`, or `sh -c 'exec "$@"'` and
        `setsid` (the exec chain of a job, with and without cgroups);
        --wrap sandbox: the chain of a sandboxed job (setsid, unshare, a
        shell mounting a tmpfs, setpriv, env -i), as root only;
        --wrap launcher: the same set-up by the compiled job launcher
        (jobworker/data/launcher.c) in one process, as root only.
    python benchmarks/bare.py latency --samples 200
        spawnProcess of `true` one at a time: spawn -> processEnded seconds.
    python benchmarks/bare.py ingest --bytes N [--write FILE]
        `head -c N /dev/zero` read by a bare ProcessProtocol that discards
        the output (or, with --write, appends it to FILE like a spool).
    python benchmarks/bare.py send --bytes N
        a TLS 1.3 server (TLSMemoryBIOProtocol, the server's certificate) that
        answers one request with N bytes written in 1 MiB chunks by a push
        producer; prints {"port": P} when listening, then its JSON when done.

The child gets the same environment and file descriptors as a job
(PATH, LANG, HOME; stdin closed at once; stdout and stderr pipes).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import ProcessProtocol

ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": pwd.getpwuid(os.getuid()).pw_dir,
}


def which(name: str) -> str:
    path = shutil.which(name, path=ENV["PATH"])
    if path is None:
        raise SystemExit(f"bare.py: {name} not found")
    return path


class Done(ProcessProtocol):
    """Close stdin, discard output, call back when ended."""

    def __init__(self, ended: Any, sink: Any = None) -> None:
        self._ended = ended
        self.received = 0
        self._sink = sink

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self._sink is not None:
            self._sink(data)

    def processEnded(self, reason: Any) -> None:
        self._ended(self)


def spawn(args: argparse.Namespace) -> dict[str, Any]:
    argv = [which("true")]
    if args.wrap in ("setsid", "gate"):
        argv = [which("setsid"), *argv]
    if args.wrap == "gate":
        # The exec chain of a job with cgroups: sh (the gate) -> setsid -> cmd.
        argv = [which("sh"), "-c", 'exec "$@"', "jobworker-gate", *argv]
    if args.wrap == "sandbox":
        # The exec chain of a sandboxed job (dynamic uid), as sandbox.py
        # builds it: setsid, unshare, a shell that mounts a private /tmp
        # (mount -a of a one-line fstab) then execs setpriv, env -i, cmd.
        fstab = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bare-fstab")
        with open(fstab, "w", encoding="ascii") as f:
            f.write("tmpfs /tmp tmpfs rw,nosuid,nodev,size=1m 0 0\n")
        script = f'{which("mount")} -a -T "$0" || exit 125; exec "$@"'
        argv = [
            which("setsid"),
            which("unshare"),
            "--mount",
            "--ipc",
            "--",
            which("sh"),
            "-c",
            script,
            fstab,
            which("setpriv"),
            "--reuid=70000",
            "--regid=70000",
            "--clear-groups",
            "--",
            which("env"),
            "-i",
            "--",
            which("true"),
        ]
    if args.wrap == "launcher":
        # The same set-up (one private tmpfs on /tmp) by the job launcher,
        # compiled (or found in its cache) as the server does.
        from jobworker.executors.local import launcher

        path = launcher.build([launcher.CACHE_DIR], launcher.findCompiler())
        mount = ["tmpfs", "/tmp", "tmpfs", "sd", "size=1m"]
        argv = [path, "-", "/", "70000", "70000", "-", "", "1", *mount, "0", *argv]
    state = {"started": 0, "ended": 0, "end": 0.0}
    begin = time.monotonic()
    deadline = begin + args.duration

    def ended(_: Done) -> None:
        state["ended"] += 1
        now = time.monotonic()
        if now < deadline:
            launch()
        else:
            state["end"] = max(state["end"], now)
            if state["ended"] == state["started"]:
                reactor.stop()

    def launch() -> None:
        state["started"] += 1
        reactor.spawnProcess(Done(ended), argv[0], argv, env=ENV)

    for _ in range(args.inflight):
        reactor.callWhenRunning(launch)
    reactor.run()
    elapsed = state["end"] - begin
    return {
        "argv": argv,
        "inflight": args.inflight,
        "jobs": state["ended"],
        "elapsed": elapsed,
        "rate": state["ended"] / elapsed,
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    argv = [which("true")]
    samples: list[float] = []
    sent = [0.0]

    def ended(_: Done) -> None:
        samples.append(time.monotonic() - sent[0])
        if len(samples) < args.samples:
            launch()
        else:
            reactor.stop()

    def launch() -> None:
        sent[0] = time.monotonic()
        reactor.spawnProcess(Done(ended), argv[0], argv, env=ENV)

    reactor.callWhenRunning(launch)
    reactor.run()
    return {"argv": argv, "samples": samples}


def ingest(args: argparse.Namespace) -> dict[str, Any]:
    argv = [which("head"), "-c", str(args.bytes), "/dev/zero"]
    fd = None
    sink = None
    if args.write:
        fd = os.open(args.write, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

        def sink(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    result: dict[str, Any] = {}
    begin = time.monotonic()

    def ended(protocol: Done) -> None:
        result["elapsed"] = time.monotonic() - begin
        result["bytes"] = protocol.received
        reactor.stop()

    reactor.callWhenRunning(
        lambda: reactor.spawnProcess(Done(ended, sink), argv[0], argv, env=ENV)
    )
    reactor.run()
    if fd is not None:
        os.close(fd)
        result["written"] = os.path.getsize(args.write)
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                result["peak_rss_kib"] = int(line.split()[1])
    result["argv"] = argv
    result["rate_mb_s"] = result["bytes"] / 1e6 / result["elapsed"]
    return result


class Sender:
    """One response of N zero bytes: 1 MiB per write, paced as a push producer."""

    CHUNK = b"\0" * (1 << 20)

    def __init__(self, size: int, finished: Any) -> None:
        self.left = size
        self.paused = False
        self.finished = finished
        self.transport: Any = None

    def start(self, transport: Any) -> None:
        self.transport = transport
        transport.registerProducer(self, True)
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % self.left
        )
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            chunk = self.CHUNK[: min(self.left, len(self.CHUNK))]
            self.left -= len(chunk)
            self.transport.write(chunk)
        if self.left == 0 and self.transport is not None:
            transport, self.transport = self.transport, None
            transport.unregisterProducer()
            transport.loseConnection()
            self.finished()

    def stopProducing(self) -> None:
        self.left = 0


def send(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from twisted.internet.interfaces import IProtocolNegotiationFactory
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions, TLSVersion
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from zope.interface import implementer

    here = os.path.dirname(os.path.abspath(__file__))
    certs = os.path.join(os.path.dirname(here), "certs")
    with open(os.path.join(certs, "server.pem"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(certs, "server.key"), "rb") as f:
        key = load_pem_private_key(f.read(), None)
    options = CertificateOptions(
        privateKey=key, certificate=cert, raiseMinimumTo=TLSVersion.TLSv1_3
    )
    result: dict[str, Any] = {"bytes": args.bytes}

    class OneRequest(Protocol):
        def dataReceived(self, data: bytes) -> None:
            if b"\r\n\r\n" in data and "started" not in result:
                result["started"] = time.monotonic()
                Sender(args.bytes, done).start(self.transport)

    def done() -> None:
        result["elapsed"] = time.monotonic() - result["started"]
        reactor.callLater(0.5, reactor.stop)

    @implementer(IProtocolNegotiationFactory)
    class HTTP11(Factory):
        protocol = OneRequest

        def acceptableProtocols(self) -> list[bytes]:
            return [b"http/1.1"]  # as twisted.web's Site answers ALPN

    factory = TLSMemoryBIOFactory(options, False, HTTP11())
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("spawn")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--inflight", type=int, default=8)
    p.add_argument(
        "--wrap",
        choices=["none", "setsid", "gate", "sandbox", "launcher"],
        default="none",
        help="exec `true` directly, through setsid, or through sh + setsid",
    )
    p = modes.add_parser("latency")
    p.add_argument("--samples", type=int, default=200)
    p = modes.add_parser("ingest")
    p.add_argument("--bytes", type=int, default=1 << 30)
    p.add_argument("--write")
    p = modes.add_parser("send")
    p.add_argument("--bytes", type=int, default=1 << 30)
    args = parser.parse_args()
    result = {"spawn": spawn, "latency": latency, "ingest": ingest, "send": send}[
        args.mode
    ](args)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
