"""Feature caching on the CPU: one decoding thread (the default) against DataLoader worker processes.

Caches the same photos with `workers` = 0 (one thread decodes the next batch while ONNX Runtime
encodes this one), 1 and 2 (DataLoader processes), alternating within one run so that the other
load on the machine falls on each alike; prints the median photos/s of each and its ratio to the
default. Two photo sizes: Flickr8k's 224 x 224 (cheap to decode) and COCO's 640 x 480 (made here
by enlarging the same photos, so decoding costs what a COCO JPEG costs).

    python benchmarks/feature_caching.py [--photos 200] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT.parent / "shared" / "flickr8k"


def photos_of_size(count: int, size: tuple[int, int] | None, folder: Path) -> list[Path]:
    """Flickr8k photos (else the bundled examples, repeated), enlarged to `size` when given."""
    source = sorted((FLICKR8K / "images").glob("*.jpg"))[:count] if (FLICKR8K / "images").is_dir() else []
    if not source:
        examples = sorted((ROOT / "examples").glob("*.jpg"))
        source = [examples[i % len(examples)] for i in range(count)]
    if size is None:
        return source
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index, path in enumerate(source):
        target = folder / f"{index:05d}.jpg"
        Image.open(path).convert("RGB").resize(size, Image.BICUBIC).save(target, quality=90)
        made.append(target)
    return made


def photos_per_second(encoder, photos: list[Path], workers: int, folder: Path) -> float:
    from captioner.data.features import FeatureCache

    started = time.perf_counter()
    FeatureCache.build(folder, encoder, [str(i) for i in range(len(photos))], photos, workers=workers, progress=False)
    return len(photos) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from captioner.model.encoders import create_encoder

    encoder = create_encoder("efficientnet-lite2")  # ONNX Runtime on the CPU, as `captioner features` uses it
    print(f"feature caching, {args.photos} photos, {args.threads} threads, medians of {args.repeats} alternating runs (photos/s):")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for label, size in (("224 x 224 (Flickr8k)", None), ("640 x 480 (COCO)", (640, 480))):
            photos = photos_of_size(args.photos, size, scratch / f"photos-{label[:3]}")
            photos_per_second(encoder, photos[:8], 0, scratch / f"warm-{label[:3]}")
            rates: dict[int, list[float]] = {workers: [] for workers in args.workers}
            for repeat in range(args.repeats):
                for workers in args.workers:
                    rates[workers].append(photos_per_second(encoder, photos, workers, scratch / f"cache-{label[:3]}-{repeat}-{workers}"))
            baseline = statistics.median(rates[args.workers[0]])
            summary = ", ".join(f"workers {w}: {statistics.median(r):.1f} (x{statistics.median(r) / baseline:.2f})" for w, r in rates.items())
            print(f"  {label}: {summary}")


if __name__ == "__main__":
    main()
