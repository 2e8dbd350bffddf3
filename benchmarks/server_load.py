"""Load benchmark for `captioner serve`: latency, throughput, errors and peak memory on loopback.

Starts a server in another process (or uses one already running on 127.0.0.1), then for each
concurrency level runs that many clients posting a photo back to back for a fixed time and
prints median and p95 latency of the answered requests, requests per second, errors by status,
and the server's peak memory (VmHWM from /proc/PID/status).

    python benchmarks/server_load.py                          # shipped model, 60 s at c=1, 8, 32
    python benchmarks/server_load.py --seconds 15             # shorter runs
    python benchmarks/server_load.py --url http://127.0.0.1:5000 --pid 12345
    python benchmarks/server_load.py --honor-retry-after     # clients back off after a 503

Every loop is bounded by time and by count, and only loopback addresses are accepted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
EXAMPLE = Path(__file__).parents[1] / "examples" / "astronaut.jpg"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on loopback (default: start one)")
    parser.add_argument("--pid", type=int, help="its process id, to read its peak memory")
    parser.add_argument("--model", help="model folder for the started server (default: the shipped model)")
    parser.add_argument("--threads", type=int, help="PyTorch threads of the started server (default: its own choice)")
    parser.add_argument("--image", type=Path, default=EXAMPLE, help="photo to post (default: examples/astronaut.jpg)")
    parser.add_argument("--levels", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each level")
    parser.add_argument("--max-requests", type=int, default=50_000, help="cap on requests per level")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before one request counts as failed")
    parser.add_argument("--honor-retry-after", action="store_true", help="after a 503, wait as its Retry-After says (default: retry at once)")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "captioner"] + (["--threads", str(args.threads)] if args.threads else [])
    command += ["serve", "--host", "127.0.0.1", "--port", str(port)] + (["--model", args.model] if args.model else [])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}: {process.stderr.read().strip()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("model_loaded"):
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    sys.exit("server did not become healthy within 300 s")


def memory_kib(pid: int | None, field: str) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def run_level(url: str, photo: bytes, concurrency: int, seconds: float, max_requests: int, beam_size: int, timeout: float, honor_retry_after: bool) -> dict:
    """`concurrency` clients posting back to back until the time or the request budget runs out."""
    results: list[tuple[int | str, float]] = []  # (status or error name, seconds)
    budget = [max_requests]
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def one_client() -> None:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                started = time.perf_counter()
                try:
                    response = await client.post("/api/captions", files={"image": ("photo.jpg", photo, "image/jpeg")}, data={"beam_size": str(beam_size)})
                    outcome: int | str = response.status_code
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                    response = None
                results.append((outcome, time.perf_counter() - started))
                if honor_retry_after and outcome == 503:
                    wait = float(response.headers.get("retry-after", "1"))
                    await asyncio.sleep(max(0.0, min(wait, deadline - time.monotonic())))

        started = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.monotonic() - started

    answered = [seconds * 1000 for outcome, seconds in results if outcome == 200]
    refused = [seconds * 1000 for outcome, seconds in results if outcome == 503]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(answered),
        "ok_per_second": len(answered) / elapsed,
        "median_ms": statistics.median(answered) if answered else float("nan"),
        "p95_ms": statistics.quantiles(answered, n=20)[-1] if len(answered) >= 2 else float("nan"),
        "median_503_ms": statistics.median(refused) if refused else None,
        "errors": Counter(outcome for outcome, _ in results if outcome != 200),
        "seconds": elapsed,
    }


def main() -> int:
    args = parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    if not all(1 <= level <= 256 for level in levels):
        sys.exit("--levels must be between 1 and 256")
    photo = args.image.read_bytes()
    process = None
    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            sys.exit(f"--url must point at this machine (127.0.0.1), got {args.url}")
        url, pid = args.url.rstrip("/"), args.pid
    else:
        process, url = start_server(args)
        pid = process.pid
    try:
        model = httpx.get(f"{url}/api/model", timeout=10).json()["name"]
        print(f"server {url} (pid {pid or '?'}), model {model}, photo {args.image.name} ({len(photo) // 1024} KB), "
              f"beam {args.beam_size}, {args.seconds:g} s per level, {os.cpu_count()} CPUs, "
              f"{'clients wait out Retry-After' if args.honor_retry_after else 'clients retry a 503 at once'}")
        print(f"{'conc':>5} {'requests':>9} {'ok/s':>7} {'median ms':>10} {'p95 ms':>8} {'503 median ms':>14}  errors")
        for concurrency in levels:
            level = asyncio.run(run_level(url, photo, concurrency, args.seconds, args.max_requests, args.beam_size, args.timeout, args.honor_retry_after))
            errors = ", ".join(f"{status}: {count}" for status, count in sorted(level["errors"].items(), key=str)) or "none"
            refused = f"{level['median_503_ms']:.1f}" if level["median_503_ms"] is not None else "-"
            print(f"{concurrency:>5} {level['requests']:>9} {level['ok_per_second']:>7.2f} {level['median_ms']:>10.1f} {level['p95_ms']:>8.1f} {refused:>14}  {errors}", flush=True)
        peak = memory_kib(pid, "VmHWM")
        print(f"server peak memory (VmHWM): {peak / 1024:.0f} MiB" if peak else "server peak memory: unknown (pass --pid)")
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
