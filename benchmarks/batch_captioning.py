"""Resumable batch captioning (`captioner caption FOLDER --output captions.jsonl`) at growing scale.

Prints, on synthetic photos made by the script (benchmarks/synthetic_photos.py):
- throughput with `--workers 1` and `--workers 2`, alternating, median of `--repeats` runs;
- the peak memory (max RSS) of a whole run over each of `--counts` photos: it must stay flat as the
  count grows, since photos are captioned and written batch by batch;
- that a rerun over a finished file adds nothing.

    python benchmarks/batch_captioning.py [--counts 2000 20000] [--size 320x240] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_photos import make_dataset, timed_captioner  # noqa: E402



def caption_run(folder: Path, output: Path, threads: int, workers: int, limit_to: list[Path] | None = None) -> tuple[float, float]:
    """Seconds and peak resident memory (MiB) of one `captioner caption ... --output` run in its own process."""
    paths = [str(p) for p in limit_to] if limit_to else [str(folder)]
    measured = timed_captioner(["caption", *paths, "--output", str(output), "--workers", str(workers), "--quiet"], threads)
    return measured.seconds, measured.peak_mib


def lines_in(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if json.loads(line).get("captions"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--size", default="320x240", help="photo size WIDTHxHEIGHT")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating throughput runs per worker count")
    parser.add_argument("--throughput-photos", type=int, default=400)
    parser.add_argument("--folder", help="keep the synthetic photos here (default: a temporary folder)")
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.folder or scratch)
        started = time.perf_counter()
        make_dataset(root / "data", max(args.counts), (width, height))
        photos = sorted((root / "data" / "images").glob("*.jpg"))
        print(f"{len(photos)} synthetic {width}x{height} photos made in {time.perf_counter() - started:.0f} s")

        rates: dict[int, list[float]] = {1: [], 2: []}
        sample = photos[: args.throughput_photos]
        for repeat in range(args.repeats):
            for workers in (1, 2):
                output = root / f"throughput-{workers}-{repeat}.jsonl"
                seconds, _ = caption_run(root, output, args.threads, workers, limit_to=sample)
                rates[workers].append(len(sample) / seconds)
                output.unlink()
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        print(f"throughput ({len(sample)} photos, whole process incl. model load, median of {args.repeats}): "
              f"--workers 1 {one:.1f} photos/s, --workers 2 {two:.1f} photos/s (ratio {two / one:.2f})")

        for count in sorted(args.counts):
            folder = root / f"run-{count}"
            folder.mkdir()
            for photo in photos[:count]:
                (folder / photo.name).symlink_to(photo)
            output = root / f"captions-{count}.jsonl"
            seconds, peak = caption_run(folder, output, args.threads, 2)
            written = lines_in(output)
            again, _ = caption_run(folder, output, args.threads, 2)
            print(f"{count} photos: {seconds:.0f} s ({count / seconds:.1f} photos/s), peak memory {peak:.0f} MiB, "
                  f"{written} lines written; a rerun took {again:.1f} s and left {lines_in(output)} lines")


if __name__ == "__main__":
    main()
