"""Ray Data's overhead: the same folder captioned by the plain command and by `--ray local`.

Each run is a whole `captioner caption FOLDER` process, as a user runs it: the plain command with
`--output captions.jsonl` at each of `--threads` (default 1, the thread of Ray's one actor here; add
2, its default on 2 cores, to see it too), and with `--ray local --output FOLDER`, which also starts
a local Ray instance (all this machine's CPUs) and its captioning actor. Runs alternate, each setting `--repeats` times; medians, photos/s and the
ratio to Ray are printed for two folder sizes, and the difference between the sizes gives the rate
once running (start-up costs cancel out).

Photos: the first N of Flickr8k's images if ../shared/flickr8k is there, else synthetic ones made
by benchmarks/synthetic_photos.py (nothing is downloaded).

    python benchmarks/ray_overhead.py [--counts 32 1024] [--repeats 3] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K_IMAGES = ROOT.parent / "shared" / "flickr8k" / "images"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_photos import make_photo  # noqa: E402


def photo_folder(folder: Path, count: int) -> str:
    """`count` photos in `folder` (links to Flickr8k's, else synthetic JPEGs); says which."""
    folder.mkdir(parents=True)
    flickr = sorted(FLICKR8K_IMAGES.glob("*.jpg"))[:count] if FLICKR8K_IMAGES.is_dir() else []
    if len(flickr) == count:
        for photo in flickr:
            (folder / photo.name).symlink_to(photo)
        return "Flickr8k"
    for index in range(count):
        make_photo(index, (500, 375))[0].save(folder / f"{index:05d}.jpg", quality=90)
    return "synthetic 500x375"


def run(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()[-800:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs=2, default=[32, 1024], help="a small and a large folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="PyTorch threads of the plain command (2: its default on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    settings = {f"plain --threads {threads}": ["--threads", str(threads)] for threads in args.threads} | {"--ray local": []}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        seconds: dict[tuple[str, int], list[float]] = {}
        for count in args.counts:
            source = photo_folder(scratch / f"photos-{count}", count)
            for repeat in range(args.repeats):
                for number, (setting, threads) in enumerate(settings.items()):
                    output = scratch / f"output-{number}-{count}-{repeat}"
                    extra = ["--ray", "local", "--output", str(output)] if setting == "--ray local" else ["--output", str(output) + ".jsonl"]
                    command = [sys.executable, "-m", "captioner", *threads, "caption", str(scratch / f"photos-{count}"), "--quiet", "--batch-size", str(args.batch_size), *extra]
                    seconds.setdefault((setting, count), []).append(run(command))
                    shutil.rmtree(output, ignore_errors=True)
        print(f"{source} photos, {os.cpu_count()} CPUs (a shared machine: other jobs ran beside it), batch {args.batch_size}, "
              f"whole processes, median of {args.repeats}")
        medians = {key: statistics.median(values) for key, values in seconds.items()}
        small, large = args.counts
        rate = {setting: (large - small) / (medians[(setting, large)] - medians[(setting, small)]) for setting in settings}
        start_up = {setting: medians[(setting, small)] - small / rate[setting] for setting in settings}
        print(f"{'':18s}" + "".join(f"{f'{count} photos':>22s}" for count in args.counts) + f"{'once running':>16s}{'start-up':>10s}")
        for setting in settings:
            times = "".join(f"{medians[(setting, count)]:9.1f} s {count / medians[(setting, count)]:6.2f}/s" for count in args.counts)
            print(f"{setting:18s}{times}{rate[setting]:14.2f}/s{start_up[setting]:8.1f} s")
        ray = "--ray local"
        for setting in settings:
            if setting != ray:
                times = ", ".join(f"x{medians[(ray, count)] / medians[(setting, count)]:.2f} at {count} photos" for count in args.counts)
                print(f"Ray's time / {setting}'s: {times}; its rate once running x{rate[ray] / rate[setting]:.2f}")

if __name__ == "__main__":
    main()
