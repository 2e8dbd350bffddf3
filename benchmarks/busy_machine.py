"""One caption at beam 3 on a quiet and on a busy machine, this code against another checkout.

Shared servers, laptops and CI runners are rarely quiet. This benchmark makes the load itself and
times one caption of the bundled example photos (512-640 px JPEGs), file to text, beam 3, in two
worker processes (this checkout and `--baseline`, e.g. `git worktree add /tmp/previous ac7a972`),
alternating photo by photo, under three loads:

- quiet: nothing else running;
- two busy processes: two single-threaded spinners (as `yes > /dev/null` twice);
- load ~4x the cores: jobs with thread pools of their own (PyTorch matrix products on every core).

Each worker uses its code's own default thread settings (nothing set by the benchmark), as a user
of `Captioner.from_pretrained()` gets them. It prints the median of each, the ratio of busy to quiet
and of this code to the baseline.

    python benchmarks/busy_machine.py --baseline /tmp/previous [--repeats 10]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from captioner.api import Captioner
captioner = Captioner.from_pretrained(device="cpu")
for line in sys.stdin:
    path = line.strip()
    started = time.perf_counter()
    result = captioner.caption(path, beam_size=3)
    caption = (result[0] if isinstance(result, list) else result).text  # older code gives the n-best list
    print(json.dumps({"ms": (time.perf_counter() - started) * 1000, "caption": caption}), flush=True)
"""

SPINNER = "while True: pass"
THREADED_JOB = r"""
import torch
torch.set_num_threads(int(__import__('sys').argv[1]))
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def start_worker(source: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(source)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=source)


def ask(worker: subprocess.Popen, photo: Path) -> dict:
    worker.stdin.write(f"{photo}\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def start_load(kind: str) -> list[subprocess.Popen]:
    """The processes that make a load: none, two spinners, or threaded jobs ~4x the cores."""
    cores = os.cpu_count() or 1
    if kind == "quiet":
        return []
    if kind == "two busy processes":
        return [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(2)]
    return [subprocess.Popen([sys.executable, "-c", THREADED_JOB, str(cores)]) for _ in range(4)]


def stop_load(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--repeats", type=int, default=10, help="rounds over the example photos per load")
    args = parser.parse_args()
    examples = sorted((ROOT / "examples").glob("*.jpg"))
    workers = {"this code": start_worker(ROOT), "baseline": start_worker(args.baseline)}
    for worker in workers.values():  # warm up: the first calls build sessions and caches
        for photo in examples:
            ask(worker, photo)
    loads = ("quiet", "two busy processes", "load ~4x cores")
    times = {load: {name: [] for name in workers} for load in loads}
    for load in loads:
        processes = start_load(load)
        time.sleep(2 if processes else 0)  # let the load settle
        try:
            for _ in range(args.repeats):
                for photo in examples:
                    for name, worker in workers.items():
                        times[load][name].append(ask(worker, photo)["ms"])
        finally:
            stop_load(processes)
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()
    print(f"one caption, beam 3, bundled example photos, file to text, {os.cpu_count()} cores, median ms over {args.repeats} rounds of {len(examples)} photos (alternating):")
    quiet = {name: statistics.median(times["quiet"][name]) for name in workers}
    for load in loads:
        ours, theirs = (statistics.median(times[load][name]) for name in workers)
        print(f"  {load:20s} this code {ours:8.1f} ({ours / quiet['this code']:4.1f}x quiet)   "
              f"baseline {theirs:8.1f} ({theirs / quiet['baseline']:4.1f}x quiet)   this/baseline {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
