"""
Run schemathesis against a live jobworker server, authenticated as each role.

    python contract/run.py [--examples N]

Starts ``twistd jobworker`` on a free loopback port (TLS, development users,
jobs isolated and run as dynamic uids with a short default timeout, so fuzzed
commands can do no harm), runs ``schemathesis run`` with every check for
alice and bob (Developers), rita (Reader) and ada (Admin) with their passwords,
then with valid data for alice's bearer token and for bob's client
certificate, stops the server, and exits non-zero if schemathesis found
anything (a 5xx, a response that violates the document, a schema-valid
request refused or an invalid one accepted). The document's links (from a
created job to its other operations) let the stateful phase reach a real
job's stop, stdin, logs and deletion.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CERTS = os.path.join(ROOT, "certs")
USERS = (
    ("alice", "alice-pass"),
    ("bob", "bob-pass"),
    ("rita", "rita-pass"),
    ("ada", "ada-pass"),
)
#: Valid data through every phase; invalid data through the deterministic
#: coverage phase only. (Random negative fuzzing "removes" the Authorization
#: header that --auth then adds back, and flags the accepted request.)
RUNS = (
    ("positive", "examples,coverage,fuzzing,stateful"),
    ("negative", "coverage,fuzzing"),
)


def startServer(stateDir: str, log: str) -> tuple[subprocess.Popen[bytes], int]:
    bin = os.path.dirname(sys.executable)
    options = [
        os.path.join(bin, "twistd"),
        "-n",
        "--pidfile=",
        "jobworker",
        "--tls",
        "--port=0",
        f"--cert={CERTS}/server.pem",
        f"--key={CERTS}/server.key",
        f"--state-dir={stateDir}",
        f"--client-ca={CERTS}/ca.pem",
        "--stop-grace=1",
        "--default-timeout=5",
        "--max-running=50",
        # schemathesis sends wrong credentials on purpose; throttling them
        # would turn the rest of its run into 429s.
        "--login-failures=1000000",
        # Nor its bursts of POST /jobs (one user each).
        "--create-rate=1000000",
    ]
    if os.getuid() == 0:
        # The default identities (a dynamic uid per job), from a range no
        # account of the test machine uses, in their own PID and network
        # namespaces.
        options += ["--dynamic-uids=70000-71999", "--isolate=pid,net"]
    with open(log, "wb") as out:
        server = subprocess.Popen(options, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            found = re.search(rb"listening on https://[^:]+:(\d+)", f.read())
        if found:
            return server, int(found.group(1))
        if server.poll() is not None:
            break
        time.sleep(0.05)
    server.kill()
    with open(log, "rb") as f:
        sys.stderr.write(f.read().decode("utf-8", "replace"))
    raise SystemExit("contract: the server did not start")


def bearerToken(port: int, user: str, password: str) -> str:
    """A token of C{user}'s, from C{POST /tokens}."""
    context = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"https://localhost:{port}/tokens",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:  # noqa: S310 (https, ours)
        return str(json.load(answer)["token"])


def endDrain(port: int) -> None:
    """End any drain a run started (C{DELETE /drain} as ada)."""
    context = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    credentials = base64.b64encode(b"ada:ada-pass").decode()
    request = urllib.request.Request(
        f"https://localhost:{port}/drain",
        method="DELETE",
        headers={
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:  # noqa: S310 (https, ours)
        answer.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20261129)
    options = parser.parse_args()
    schemathesis = shutil.which("schemathesis") or os.path.join(
        os.path.dirname(sys.executable), "schemathesis"
    )
    work = tempfile.mkdtemp(prefix="jobworker-contract-")
    log = os.path.join(work, "server.log")
    server, port = startServer(os.path.join(work, "state"), log)
    failures = 0
    try:
        runs: list[tuple[str, str, str, list[str]]] = [
            (user, mode, phases, ["--auth", f"{user}:{password}"])
            for (user, password), (mode, phases) in itertools.product(USERS, RUNS)
        ]
        # Valid data only: negative fuzzing removes the credentials' header
        # and flags the request accepted all the same.
        positive = RUNS[0]
        token = bearerToken(port, "alice", "alice-pass")
        runs.append(
            ("alice's token", *positive, ["-H", f"Authorization: Bearer {token}"])
        )
        runs.append(
            (
                "bob's certificate",
                *positive,
                [
                    "--request-cert",
                    os.path.join(CERTS, "clients", "bob.pem"),
                    "--request-cert-key",
                    os.path.join(CERTS, "clients", "bob.key"),
                    # (A request without its Authorization header is bob's
                    # all the same: the certificate is the connection's.)
                    "--exclude-checks",
                    "ignored_auth",
                ],
            )
        )
        for user, mode, phases, credentials in runs:
            print(f"== schemathesis as {user}: {mode} data, {phases}", flush=True)
            result = subprocess.run(
                [
                    schemathesis,
                    "--config-file",
                    os.path.join(HERE, "schemathesis.toml"),
                    "run",
                    os.path.join(ROOT, "jobworker", "data", "openapi.json"),
                    "--url",
                    f"https://localhost:{port}",
                    "--tls-verify",
                    os.path.join(CERTS, "ca.pem"),
                    *credentials,
                    "--checks",
                    "all",
                    "--max-examples",
                    str(options.examples),
                    "--seed",
                    str(options.seed),
                    "--mode",
                    mode,
                    "--phases",
                    phases,
                    "--no-color",
                ],
                check=False,
            )
            failures += result.returncode != 0
            # (ada's runs may leave the server draining, POST /drain: every
            # later run's POST /jobs would be a 503.)
            endDrain(port)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"contract: {len(runs) - failures} of {len(runs)} runs passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
