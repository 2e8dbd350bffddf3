"""Synthetic photos and captions for the scale benchmarks, made here (nothing is downloaded), and a
timer of `captioner` commands with their peak memory (resident, and anonymous).

Each photo is a few coloured shapes on a textured background, saved as a JPEG, so decoding costs
what a real photo of that size costs; each gets five template captions naming its shapes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 40), "black": (20, 20, 20), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = ("a {c1} {s1} next to a {c2} {s2}", "a {c1} {s1} and a {c2} {s2} on a grey background", "two shapes : a {c1} {s1} and a {c2} {s2}",
             "there is a {c1} {s1} near a {c2} {s2}", "a picture of a {c1} {s1} beside a {c2} {s2}")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left, bottom), (right, bottom), ((left + right) // 2, top)], fill=colour)


def make_photo(index: int, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    """One photo (width, height) and its five captions, determined by `index`."""
    rng = np.random.default_rng(index)
    width, height = size
    noise = rng.integers(90, 170, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    names = list(COLOURS)
    picks = []
    for half in range(2):
        colour, shape = names[rng.integers(len(names))], SHAPES[rng.integers(len(SHAPES))]
        side = int(rng.integers(height // 4, height // 2))
        left = int(rng.integers(half * width // 2, (half + 1) * width // 2 - side // 2))
        top = int(rng.integers(0, height - side))
        _draw(draw, shape, (left, top, left + side, top + side), COLOURS[colour])
        picks.append((colour, shape))
    (c1, s1), (c2, s2) = picks
    return image, [template.format(c1=c1, s1=s1, c2=c2, s2=s2) for template in TEMPLATES]


def make_dataset(folder: Path, count: int, size: tuple[int, int] = (640, 480), quality: int = 90) -> Path:
    """`count` photos in `folder/images` and `folder/pairs.jsonl` (image, caption; splits by hash, 90/5/5).
    Photos already there are kept, so a larger dataset reuses a smaller one's photos."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = f"{index:07d}.jpg"
        image, captions = make_photo(index, size)
        if not (images / name).is_file():
            image.save(images / name, quality=quality)
        rows.extend(json.dumps({"image": name, "caption": caption}) for caption in captions)
    pairs = folder / "pairs.jsonl"
    pairs.write_text("\n".join(rows) + "\n")
    return pairs


class Measured(NamedTuple):
    seconds: float
    peak_mib: float  # peak resident memory, memory-mapped feature files included
    peak_anon_mib: float  # peak anonymous memory: the process's own, without file pages the kernel can drop


def _anonymous_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:  # gone, or not Linux
        pass
    return 0


def timed_captioner(arguments: list[str], threads: int) -> Measured:
    """Time and memory of one `captioner` command in its own process: peak RSS from the kernel's
    accounting at exit, peak anonymous memory sampled every 50 ms from /proc (Linux)."""
    command = [sys.executable, "-m", "captioner", "--threads", str(threads), *arguments]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        anonymous = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            anonymous = max(anonymous, _anonymous_kib(process.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, with its resource usage
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"captioner {' '.join(arguments)} failed: {errors.read().decode(errors='replace').strip()[-800:]}")
    return Measured(seconds, usage.ru_maxrss / 1024, anonymous / 1024)
