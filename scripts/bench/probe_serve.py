#!/usr/bin/env python3
"""A hostile probe of ``edgel2 serve`` on loopback: one misbehaving client at a time, with a
normal client beside it, and the life-cycle cases of the command line.

    python scripts/bench/probe_serve.py                        # this checkout
    python scripts/bench/probe_serve.py --checkout ../old      # another checkout, same interpreter
    python scripts/bench/probe_serve.py --quick                # smaller attacks, for a first look

Each attack runs for a bounded time while a normal client sends one 32x32 PNG to
``/v1/classify`` every 20 ms (a fresh connection each, 60 s timeout). The table gives, per
attack: what the attacker got, the normal client's requests, errors (anything but 200) and
p50/p99 latency, and the server's resident memory (peak during the attack; after, once the
attack is over). The attacks:

- chunked bomb: a multipart upload of one file part, sent with Transfer-Encoding: chunked
  (no Content-Length), of --bomb-mib MiB;
- ICO bombs: 25 ICO files in one multipart, each a 13000x13000 PNG inside (15 MiB);
- large PNGs: 64 PNGs of 7000x7000 in one multipart (each under the 64 Mpx per-image limit);
- 32 MB header: one request whose header is 32 MB;
- queue hog: 4 clients sending v2 requests of 2,600 images each, for 10 s;
- JSON flood: 4 clients sending 16 MiB bodies that are not valid JSON, for 10 s;
- disconnect storm: 8 clients sending v2 requests of 500 images and hanging up at once, 10 s;
- idle connections: 200 connections that send half a header and wait.

The server and the clients share the machine: read the normal client's figures against the
"quiet" row, measured in the same run.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def png(size: tuple[int, int], value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, "PNG")
    return buffer.getvalue()


def ico_around(payload: bytes) -> bytes:
    """An ICO file whose one entry claims 256x256 and holds ``payload`` (a PNG of any size)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(payload), 6 + 16)
    return header + entry + payload


def multipart(files: list[tuple[str, bytes]], boundary: str = "edgel2probe") -> tuple[bytes, str]:
    parts = []
    for name, data in files:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                     f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                     .encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def v2_body(images: int, size: int = 32) -> bytes:
    data = ",".join(["0"] * (images * size * size * 3))
    return (f'{{"inputs": [{{"name": "images", "datatype": "UINT8", "shape": [{images}, {size}, '
            f'{size}, 3], "data": [{data}]}}]}}').encode()


class Server:
    def __init__(self, checkout: Path, model: str | None, extra: list[str]):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        args = [sys.executable, "-m", "edgel2", "serve", "--port", str(self.port), *extra]
        if model:
            args += ["--model", model]
        self.proc = subprocess.Popen(args, cwd=checkout, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.proc.kill()
        raise SystemExit(f"the server did not start: {self.proc.stderr.read()[-2000:]}")

    def model_name(self) -> str:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        conn.request("GET", "/")
        page = conn.getresponse().read().decode()
        return page.split("/v2/models/")[1].split("/")[0] if "/v2/models/" in page else "resnet18-int8"

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


class Watch:
    """The normal client and the memory sampler, for the length of one attack."""

    def __init__(self, server: Server, image: bytes):
        self.server, self.image = server, image
        self.latencies, self.statuses, self.peak = [], [], 0.0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True),
                        threading.Thread(target=self._memory, daemon=True)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(90)

    def _client(self):
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(HOST, self.server.port, timeout=60)
                conn.request("POST", "/v1/classify", self.image,
                             {"Content-Type": "application/octet-stream"})
                response = conn.getresponse()
                response.read()
                self.statuses.append(response.status)
                conn.close()
            except OSError as e:
                self.statuses.append(type(e).__name__)
            self.latencies.append(time.perf_counter() - start)
            self.stop.wait(0.02)

    def _memory(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.server.proc.pid))
            self.stop.wait(0.05)

    def row(self, attack: str, outcome: str) -> dict:
        lat = sorted(self.latencies) or [float("nan")]
        return {"attack": attack, "attacker got": outcome, "requests": len(self.statuses),
                "errors": sum(s != 200 for s in self.statuses),
                "p50 ms": 1000 * statistics.median(lat),
                "p99 ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "peak MiB": self.peak, "after MiB": rss_mib(self.server.proc.pid)}


def post(port: int, path: str, body: bytes, content_type: str, timeout: float = 120) -> str:
    start = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        conn.request("POST", path, body, {"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return f"{response.status} in {time.perf_counter() - start:.1f} s"
    except OSError as e:
        return f"{type(e).__name__} after {time.perf_counter() - start:.1f} s"


def chunked_bomb(port: int, mib: int) -> str:
    boundary = "edgel2probe"
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=120) as s:
        s.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode())

        def chunk(data: bytes):
            s.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        try:
            chunk(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                  f"filename=\"big.png\"\r\n\r\n".encode())
            block = b"\0" * (1 << 20)
            for _ in range(mib):
                chunk(block)
            chunk(f"\r\n--{boundary}--\r\n".encode())
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close the connection once it has said 413
        try:
            status = s.recv(200).split(b"\r\n")[0].decode(errors="replace")
        except OSError as e:
            status = type(e).__name__
    return f"{status or 'closed'} in {time.perf_counter() - start:.1f} s"


def big_header(port: int, megabytes: int = 32) -> str:
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=120) as s:
        try:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            block = b"a" * (1 << 20)
            for _ in range(megabytes):
                s.sendall(block)
            s.sendall(b"\r\n\r\n")
        except OSError:
            pass
        try:
            status = s.recv(200).split(b"\r\n")[0].decode(errors="replace")
        except OSError as e:
            status = type(e).__name__
    return f"{status or 'closed'} in {time.perf_counter() - start:.1f} s"


def for_a_while(clients: int, seconds: float, send) -> str:
    """``clients`` threads calling ``send()`` until ``seconds`` are over; a count of outcomes."""
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop():
        while time.monotonic() < deadline:
            try:
                outcome = send().split(" ")[0]
            except OSError as e:
                outcome = type(e).__name__
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))


def hang_up(port: int, path: str, body: bytes) -> str:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return "closed"


def idle_connections(port: int, count: int, seconds: float) -> str:
    sockets = []
    for _ in range(count):
        s = socket.create_connection((HOST, port), timeout=5)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never finished
        sockets.append(s)
    time.sleep(seconds)
    closed = 0
    for s in sockets:
        s.setblocking(False)
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    return f"{closed} of {count} closed by the server after {seconds:g} s"


def cli_case(checkout: Path, args: list[str], timeout: float = 60) -> str:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "edgel2", *args], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        lines = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"still running after {timeout:g} s ({len(lines)} lines on stderr)"
    lines = proc.stderr.strip().splitlines()
    tracebacks = proc.stderr.count("Traceback")
    last = lines[-1][:110] if lines else ""
    return (f"exit {proc.returncode} in {time.perf_counter() - start:.1f} s, "
            f"{tracebacks} tracebacks: {last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--model", default=None, help="default: the shipped int8 ONNX")
    parser.add_argument("--bomb-mib", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the floods")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.bomb_mib, args.seconds = 64, 3.0
    checkout = args.checkout.resolve()
    image = png((32, 32), 128)

    work = Path(tempfile.mkdtemp(prefix="edgel2-probe-"))
    ico = ico_around(png((13000, 13000)))
    ico_body, ico_type = multipart([(f"bomb{i}.ico", ico) for i in range(25)])
    large = png((7000, 7000))
    large_body, large_type = multipart([(f"large{i}.png", large) for i in range(64)])
    hog, storm = v2_body(2600), v2_body(500)
    not_json = b"[" * (16 * 2**20 - 16)

    server = Server(checkout, args.model, [])
    name = server.model_name()
    infer = f"/v2/models/{name}/infer"
    rows = []
    attacks = [
        ("quiet", lambda p: "-", 3.0),
        (f"chunked bomb ({args.bomb_mib} MiB)", lambda p: chunked_bomb(p, args.bomb_mib), 0),
        ("ICO bombs (25 x 13000^2)", lambda p: post(p, "/v1/classify", ico_body, ico_type), 0),
        ("large PNGs (64 x 7000^2)", lambda p: post(p, "/v1/classify", large_body, large_type), 0),
        ("32 MB header", lambda p: big_header(p, 32), 0),
        ("queue hog (4 x 2,600 images)", lambda p: for_a_while(
            4, args.seconds, lambda: post(p, infer, hog, "application/json")), 0),
        ("JSON flood (4 x 16 MiB)", lambda p: for_a_while(
            4, args.seconds, lambda: post(p, infer, not_json, "application/json")), 0),
        ("disconnect storm (8 x 500 images)", lambda p: for_a_while(
            8, args.seconds, lambda: hang_up(p, infer, storm)), 0),
        ("idle connections (200)", lambda p: idle_connections(p, 200, 15.0), 0),
    ]
    for attack, run, quiet_s in attacks:
        with Watch(server, image) as watch:
            outcome = run(server.port)
            time.sleep(quiet_s or 1.0)  # the normal client's last requests after the attack
        rows.append(watch.row(attack, outcome))
        print(_format(rows[-1]), flush=True)
    log = server.stop()

    cases = [
        ("--max-delay-ms 1e13", ["serve", "--port", str(free_port()), "--max-delay-ms", "1e13"]),
        ("--max-body-mb inf", ["serve", "--port", str(free_port()), "--max-body-mb", "inf"]),
        ("--workers 2, empty model", ["serve", "--port", str(free_port()), "--workers", "2",
                                      "--model", str(_empty(work))]),
    ]
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        cases.append(("port in use", ["serve", "--port", str(taken.getsockname()[1])]))
        lifecycle = [(case, cli_case(checkout, cli_args, 20)) for case, cli_args in cases]
    for case, outcome in lifecycle:
        print(f"{case:<28} {outcome}", flush=True)
    print(f"server log: {log.count('Traceback')} tracebacks, {len(log.splitlines())} lines")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "lifecycle": lifecycle}, indent=1))


def _empty(work: Path) -> Path:
    path = work / "empty.onnx"
    path.write_bytes(b"")
    return path


def _format(row: dict) -> str:
    return (f"{row['attack']:<36} {row['attacker got'][:48]:<48} {row['requests']:>5} "
            f"{row['errors']:>5} {row['p50 ms']:>8.1f} {row['p99 ms']:>9.1f} "
            f"{row['peak MiB']:>8.0f} {row['after MiB']:>8.0f}")


if __name__ == "__main__":
    print(f"{'attack':<36} {'attacker got':<48} {'reqs':>5} {'errs':>5} {'p50 ms':>8} "
          f"{'p99 ms':>9} {'peak MiB':>8} {'aft MiB':>8}")
    main()
