"""Peak memory of `captioner serve` for the costliest uploads it accepts.

Each case starts a fresh server in its own process (the shipped model, on the CPU), warms it with
one caption, sends the case's uploads, and prints the server's resident memory after warm-up and
its peak (VmHWM from /proc/PID/status), with the answers' status codes. The target: under 600 MiB.

    python benchmarks/server_memory.py                     # every case
    python benchmarks/server_memory.py --cases png-20mp    # one case

Cases:
  progressive-444  one 8000 x 8000 progressive 4:4:4 JPEG at quality 50 (its decoder holds the
                   coefficients of the whole image at full size: 366 MiB)
  jpegs-16x9mb     16 clients at once, each posting a ~9 MB baseline JPEG
  png-20mp         a server warm from beam-10 batches of 8 photos, then a 20-megapixel PNG
  mixed            all of the above at once
Only loopback is used; every request has a timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).parents[1] / "examples"


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def progressive_444() -> bytes:
    """8000 x 8000, smooth colour with a little noise: ~0.7 MB at quality 50."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 8000, dtype=np.float32)
    pixels = np.empty((8000, 8000, 3), np.uint8)
    for channel, (a, b) in enumerate(((1, 0), (0, 1), (0.5, 0.5))):
        pixels[..., channel] = (a * ramp[None, :] + b * ramp[:, None]).astype(np.uint8)
    pixels[::50] ^= rng.integers(0, 16, (pixels[::50].shape), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", quality=50, progressive=True, subsampling=0)


def noisy_jpeg_9mb() -> bytes:
    """A baseline JPEG of about 9 MB (4000 x 3000 of noise at quality 85)."""
    pixels = np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", quality=85)


def png_20mp() -> bytes:
    return encoded(Image.new("RGB", (5472, 3648), (90, 140, 200)), "PNG")


class Server:
    def __init__(self, threads: int):
        self.port = free_port()
        command = [sys.executable, "-m", "captioner", "--threads", str(threads), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"server exited with {self.process.returncode}: {self.process.stderr.read().strip()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).json().get("model_loaded"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.process.kill()
        sys.exit("server did not become healthy within 300 s")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def post_all(url: str, uploads: list[tuple[bytes, dict]], timeout: float = 300) -> Counter:
    limits = httpx.Limits(max_connections=len(uploads), max_keepalive_connections=len(uploads))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def one(data: bytes, options: dict):
            try:
                response = await client.post("/api/captions", files={"image": ("photo", data, "application/octet-stream")}, data=options)
                return response.status_code
            except httpx.HTTPError as error:
                return type(error).__name__
        return Counter(await asyncio.gather(*(one(data, options) for data, options in uploads)))


def warm_beam_10(url: str) -> Counter:
    photos = [(EXAMPLES / name).read_bytes() for name in ("astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg")] * 2
    return asyncio.run(post_all(url, [(photo, {"beam_size": "10", "num_captions": "3"}) for photo in photos]))


CASES = {
    "progressive-444": lambda: [(progressive_444(), {})],
    "jpegs-16x9mb": lambda: [(noisy_jpeg_9mb(), {})] * 16,
    "png-20mp": lambda: [(png_20mp(), {})],
}
CASES["mixed"] = lambda: [upload for name in ("progressive-444", "jpegs-16x9mb", "png-20mp") for upload in CASES[name]()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads of the server (serve's default: 1)")
    args = parser.parse_args()
    for name in args.cases.split(","):
        uploads = CASES[name]()
        sizes = sorted({len(data) for data, _ in uploads})
        server = Server(args.threads)
        try:
            asyncio.run(post_all(server.url, [((EXAMPLES / "astronaut.jpg").read_bytes(), {})]))
            warm = memory_mib(server.process.pid, "VmRSS")
            if name in ("png-20mp", "mixed"):
                warm_beam_10(server.url)
            before = memory_mib(server.process.pid, "VmHWM")
            started = time.monotonic()
            statuses = asyncio.run(post_all(server.url, uploads))
            seconds = time.monotonic() - started
            peak = memory_mib(server.process.pid, "VmHWM")
            print(f"{name}: {len(uploads)} upload(s) of {', '.join(f'{size / 1e6:.2f} MB' for size in sizes)}; "
                  f"resident after one caption {warm:.0f} MiB, peak before the case {before:.0f} MiB, peak {peak:.0f} MiB; "
                  f"answers {dict(statuses)} in {seconds:.1f} s", flush=True)
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
