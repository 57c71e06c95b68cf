#!/usr/bin/env python3
"""Load and soak test of ``edgel2 serve`` over real HTTP on loopback, against the same load
through the in-process ``Batcher`` (the baseline of the ratio).

    python scripts/bench/load_serve.py                       # 32 and 64 clients, 5,000 requests each
    python scripts/bench/load_serve.py --soak 20000          # plus the soak: 10 % of clients hang up early
    python scripts/bench/load_serve.py --clients 8 --requests 500 --soak 0   # a quick look

Each client is a thread with one keep-alive connection sending single-image raw-body
``POST /v1/classify`` requests (CIFAR-10-JPEG test images); the Batcher baseline is the same
number of threads calling ``batcher.submit(image).result()``. Prints a table: throughput,
p50/p90/p99 latency, errors, and the server's resident memory before and after. The clients
share the machine with the server, so on 2 cores the ratio is what to read.
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, engine: str, port: int, max_queue: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "edgel2", "serve", "--model", model,
                             "--engine", engine, "--port", str(port),
                             "--max-queue", str(max_queue)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"edgel2 serve did not start: {proc.stderr.read()}")


def run_clients(clients: int, requests: int, work) -> tuple[float, list[float], int]:
    """``clients`` threads share ``requests`` calls of ``work(client, i)`` (True when it went
    well); returns wall seconds, per-request latencies and the error count."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(index: int) -> None:
        state: dict = {}
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            start = time.perf_counter()
            ok = work(state, i)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors[0] += not ok
        if "conn" in state:
            state["conn"].close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, errors[0]


def http_work(port: int, images: list[bytes], hang_up_every: int = 0):
    def work(state: dict, i: int) -> bool:
        body = images[i % len(images)]
        if hang_up_every and i % hang_up_every == 0:  # send, then go away without reading
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
            return True
        try:
            if "conn" not in state:
                state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            state["conn"].request("POST", "/v1/classify?top_k=1", body=body)
            response = state["conn"].getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            state.pop("conn", None)
            return False
    return work


def quantiles(latencies: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return 1000 * cuts[49], 1000 * cuts[89], 1000 * cuts[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the shipped int8 ONNX")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--clients", default="32,64", help="client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=5000, help="requests per load row")
    parser.add_argument("--soak", type=int, default=0, help="soak requests (0: no soak)")
    parser.add_argument("--max-queue", type=int, default=4096)
    args = parser.parse_args()

    from edgel2.data import load_dataset
    from edgel2.runtime import Batcher, Classifier, shipped_model

    model = args.model or str(shipped_model())
    test_dir = Path(load_dataset().source) / "test"
    images = [p.read_bytes() for p in sorted(test_dir.glob("*/*.jpg"))[:1000]]
    counts = [int(c) for c in args.clients.split(",")]

    port = free_port()
    server = start_server(model, args.engine, port, args.max_queue)
    rows = []
    try:
        rss_start = rss_mib(server.pid)
        for clients in counts:
            classifier = Classifier(model, engine=args.engine)
            with Batcher(classifier, max_batch=32, max_delay_ms=2.0, max_queue=args.max_queue) as b:
                base = run_clients(clients, args.requests,
                                   lambda state, i: bool(b.submit(images[i % len(images)]).result()))
            rss_before = rss_mib(server.pid)
            served = run_clients(clients, args.requests, http_work(port, images))
            rows.append((clients, base, served, rss_before, rss_mib(server.pid)))
        soak = None
        if args.soak:
            rss_before = rss_mib(server.pid)
            result = run_clients(max(counts), args.soak, http_work(port, images, hang_up_every=10))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/v2/health/ready")
            soak = (result, rss_before, rss_mib(server.pid), conn.getresponse().status)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)

    print(f"model {Path(model).name}, engine {args.engine}, {os.cpu_count()} cores; "
          f"server RSS at start {rss_start:.0f} MiB; server exit code after SIGTERM {code}")
    print(f"{'clients':>7} {'path':<14} {'requests':>8} {'img/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'errors':>6} {'RSS MiB before/after':>21} {'HTTP/Batcher':>12}")
    for clients, base, served, before, after in rows:
        for label, (wall, lat, err), rss in (("Batcher", base, ""),
                                             ("HTTP serve", served, f"{before:.0f} / {after:.0f}")):
            p50, p90, p99 = quantiles(lat)
            ratio = f"{(len(served[1]) / served[0]) / (len(base[1]) / base[0]):.2f}x" \
                if label == "HTTP serve" else ""
            print(f"{clients:>7} {label:<14} {len(lat):>8} {len(lat) / wall:>8.1f} {p50:>7.2f} "
                  f"{p90:>7.2f} {p99:>7.2f} {err:>6} {rss:>21} {ratio:>12}")
    if soak:
        (wall, lat, err), before, after, ready = soak
        print(f"soak: {len(lat)} requests from {max(counts)} clients, every 10th hung up "
              f"before the answer; {len(lat) / wall:.1f} req/s, p99 {quantiles(lat)[2]:.2f} ms, "
              f"{err} errors, server RSS {before:.0f} -> {after:.0f} MiB, /v2/health/ready "
              f"{ready} afterwards")


if __name__ == "__main__":
    main()
