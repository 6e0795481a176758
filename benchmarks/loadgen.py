"""
One load-generator process of the benchmark suite (started by common.Workers).

argv[1] is a JSON config. The process opens its keep-alive HTTPS
connection(s), warms up (paying bcrypt once on the server), prints "ready",
waits for one JSON line on stdin (the payload), runs, and prints one JSON
line of results. Modes:

- repeat:   the same request over and over for C{duration} seconds
            (common.RawClient: lean, so the client is not the bottleneck).
- ops:      a list of requests (the payload), shared by C{threads} connections.
- follow:   one GET (the payload's path), reading the body as it streams
            (RawClient, counting the chunked body's bytes).
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Client, RawClient


def warm(client: Client | RawClient) -> None:
    """One request first: with credentials it pays bcrypt once on the server."""
    if isinstance(client, RawClient):
        authenticated = client.auth is not None
        path = "/jobs?limit=1" if authenticated else "/no-such-route"
        status, _ = client.roundtrip(client.build("GET", path))
    else:
        authenticated = bool(client.headers)
        path = "/jobs?limit=1" if authenticated else "/no-such-route"
        status, _, _ = client.request("GET", path)
    if status != (200 if authenticated else 404):
        raise RuntimeError(f"warm-up GET {path} answered {status}")


def repeat(config: dict[str, Any], _payload: Any) -> dict[str, Any]:
    client = CLIENTS[0]
    assert isinstance(client, RawClient)
    request = client.build(config["method"], config["path"], config.get("body"))
    roundtrip = client.roundtrip
    expect = config["expect"]
    latencies: list[float] = []
    errors: list[str] = []
    clock = time.monotonic
    cpu0 = time.process_time()
    start = clock()
    deadline = start + config["duration"]
    now = start
    while now < deadline:
        status, content = roundtrip(request)
        after = clock()
        latencies.append(after - now)
        now = after
        if status != expect and len(errors) < 5:
            errors.append(f"{status} {content[:200]!r}")
    return {
        "count": len(latencies),
        "start": start,
        "end": now,
        "latencies": latencies,
        "errors": errors,
        "cpu": time.process_time() - cpu0,
    }


def ops(config: dict[str, Any], payload: list[list[Any]]) -> dict[str, Any]:
    work: queue.Queue[tuple[int, list[Any]]] = queue.Queue()
    for i, op in enumerate(payload):
        work.put((i, op))
    results: list[Any] = [None] * len(payload)
    failures: list[str] = []
    keep = config.get("keep", ["id", "status", "pid"])

    def run(client: Client) -> None:
        try:
            while True:
                try:
                    i, (method, path, body) = work.get_nowait()
                except queue.Empty:
                    return
                sent = time.monotonic()
                status, _, content = client.request(method, path, body)
                took = time.monotonic() - sent
                try:
                    value = json.loads(content)
                    fields = {k: value.get(k) for k in keep} if keep else {}
                except ValueError:
                    fields = {}
                results[i] = [status, took, fields]
        except Exception as e:
            failures.append(repr(e))

    cpu0 = time.process_time()
    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in CLIENTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic()
    if failures:
        raise RuntimeError(failures[0])
    return {
        "start": start,
        "end": end,
        "results": results,
        "cpu": time.process_time() - cpu0,
    }


def follow(config: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    client = CLIENTS[0]
    assert isinstance(client, RawClient)
    request = client.build("GET", payload["path"])
    cpu0 = time.process_time()
    sent = time.monotonic()
    status, head = client.head(request)
    if status != 200:
        client.body(head)
        raise RuntimeError(f"follow answered {status} {client.last!r}")
    first: list[float] = []
    clock = time.monotonic

    def sink(size: int) -> None:
        if not first:
            first.append(clock())

    received = client.body(head, sink)
    end = time.monotonic()
    match = re.search(rb"x-job-status: *(\w+)", head)
    return {
        "sent": sent,
        "first": first[0] if first else end,
        "end": end,
        "bytes": received,
        "status": match.group(1).decode() if match else None,
        "cpu": time.process_time() - cpu0,
    }


MODES = {"repeat": repeat, "ops": ops, "follow": follow}
CLIENTS: list[Client | RawClient] = []


def main() -> None:
    config = json.loads(sys.argv[1])
    mode = MODES[config["mode"]]
    try:
        lean = config["mode"] in ("repeat", "follow")
        for _ in range(config.get("threads", 1)):
            user = config.get("user", "alice")
            client = (
                RawClient(config["port"], user)
                if lean
                else Client(config["port"], user)
            )
            warm(client)
            CLIENTS.append(client)
        print("ready", flush=True)
        payload = json.loads(sys.stdin.readline())
        result = mode(config, payload)
    except Exception as e:
        print(json.dumps({"error": f"{config['mode']}: {e!r}"}), flush=True)
        return
    finally:
        for client in CLIENTS:
            client.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
