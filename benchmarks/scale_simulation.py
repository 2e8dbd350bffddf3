"""A scale simulation: measure feature caching and one training epoch on synthetic datasets of N photos
made by the script, then project COCO (Karpathy split) on this CPU and on GPUs.

Measured here, per N (default 2,000 and 20,000 photos at 640 x 480, COCO's usual size):
- `captioner features` (train + dev splits) and the mirrored train features: photos/s and peak memory;
- the cache's size on disk per photo;
- one `captioner train` epoch (the default Transformer decoder, batch 64): captions/s and peak memory;
- one core decoding and preprocessing photos (what feeds a GPU in a DataLoader worker).

Projected (the arithmetic is printed): COCO's 123,287 photos (113,287 train) and 566,747 training
captions. GPU figures rest on the assumptions given as flags (no GPU was measured unless one is
named): the encoder on a GPU is far faster than photo decoding, so caching runs at
`--gpu-decode-workers` x the measured per-core decode rate; a training step on a GPU runs
`--gpu-train-speedup` times faster than here; DDP over G GPUs scales by `--ddp-efficiency` x G.

    python benchmarks/scale_simulation.py [--counts 2000 20000] [--threads 2]
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

COCO_PHOTOS, COCO_TRAIN_PHOTOS, COCO_TRAIN_CAPTIONS = 123_287, 113_287, 566_747


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file())


def decode_rate(photos: list[Path]) -> float:
    """Photos/s one core reads, decodes and preprocesses for the encoder (the DataLoader worker's job)."""
    import torch

    from captioner.model.encoders import PreprocessConfig, preprocess
    from captioner.data.images import load_image

    torch.set_num_threads(1)
    config = PreprocessConfig()
    times = []
    for photo in photos:
        started = time.perf_counter()
        preprocess(load_image(photo), config)
        times.append(time.perf_counter() - started)
    return 1 / statistics.median(times)


def simulate(root: Path, count: int, threads: int, train_limit: int = 0) -> dict:
    data = root / f"data-{count}"
    started = time.perf_counter()
    pairs = make_dataset(data, count)
    made = time.perf_counter() - started
    cache, run = root / f"cache-{count}", root / f"run-{count}"
    common = ["--dataset", str(pairs), "--cache", str(cache)]
    caching = timed_captioner(["features", *common, "--splits", "train", "dev"], threads)
    cached_rows = sum(1 for line in pairs.read_text().splitlines()) // 5
    mirroring = timed_captioner(["features", *common, "--splits", "train", "--flip"], threads)
    disk = folder_bytes(cache)
    limit = ["--limit", str(train_limit)] if train_limit else []  # the epoch's rate does not depend on N; its length does
    training = timed_captioner(["train", *common, *limit, "--output", str(run), "--epochs", "1", "--quiet", "--set", "min_count=1", "--set", "patience=1"], threads)
    history = json.loads((run / "history.json").read_text())[0]
    config = json.loads((run / "best" / "config.json").read_text())
    captions = config["training"]["captions"]
    photos = sorted((data / "images").glob("*.jpg"))
    return {
        "photos": count, "made_seconds": made, "cache_photos_per_s": cached_rows / caching.seconds, "cache_peak_mib": caching.peak_mib, "cache_anon_mib": caching.peak_anon_mib,
        "flip_photos_per_s": config["training"]["images"] / mirroring.seconds, "flip_peak_mib": mirroring.peak_mib,
        "disk_bytes": disk, "disk_rows": cached_rows + config["training"]["images"],
        "train_captions": captions, "epoch_train_seconds": history["train_seconds"], "train_command_seconds": training.seconds,
        "captions_per_s": captions / history["train_seconds"], "train_peak_mib": training.peak_mib, "train_anon_mib": training.peak_anon_mib,
        "decode_per_core": decode_rate(photos[:200]),
    }


def hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"


def project(result: dict, args: argparse.Namespace) -> list[str]:
    """COCO on this CPU, one GPU and `--gpus` GPUs, from the largest simulation's rates."""
    rows = COCO_PHOTOS + COCO_TRAIN_PHOTOS  # every photo once, the train photos once more mirrored
    bytes_per_row = result["disk_bytes"] / result["disk_rows"]
    cpu_cache = COCO_PHOTOS / result["cache_photos_per_s"] + COCO_TRAIN_PHOTOS / result["flip_photos_per_s"]
    gpu_cache_rate = args.gpu_decode_workers * result["decode_per_core"]
    gpu_cache = rows / gpu_cache_rate
    cpu_epoch = COCO_TRAIN_CAPTIONS / result["captions_per_s"]
    gpu_epoch = cpu_epoch / args.gpu_train_speedup
    many_epoch = gpu_epoch / (args.gpus * args.ddp_efficiency)
    lines = [
        f"COCO (Karpathy): {COCO_PHOTOS:,} photos, {COCO_TRAIN_PHOTOS:,} mirrored for training = {rows:,} cache rows",
        f"  disk: {rows:,} x {bytes_per_row / 1024:.0f} KiB = {rows * bytes_per_row / 2**30:.1f} GiB of features "
        f"(all-splits mirroring would add {(COCO_PHOTOS - COCO_TRAIN_PHOTOS) * bytes_per_row / 2**30:.1f} GiB)",
        f"  caching on this CPU: {COCO_PHOTOS:,} / {result['cache_photos_per_s']:.1f} + {COCO_TRAIN_PHOTOS:,} / {result['flip_photos_per_s']:.1f} photos/s = {hours(cpu_cache)}",
        f"  caching on 1 GPU (assumed {args.gpu_decode_workers} decoding workers x measured {result['decode_per_core']:.0f} photos/s a core "
        f"= {gpu_cache_rate:.0f} photos/s): {rows:,} / {gpu_cache_rate:.0f} = {hours(gpu_cache)}; on {args.gpus} GPUs (each with its workers, one shard each): {hours(gpu_cache / args.gpus)}",
        f"  one epoch on this CPU: {COCO_TRAIN_CAPTIONS:,} captions / {result['captions_per_s']:.0f} a second = {hours(cpu_epoch)}",
        f"  one epoch on 1 GPU (assumed {args.gpu_train_speedup:g}x this CPU): {hours(gpu_epoch)}; "
        f"on {args.gpus} GPUs with DDP (assumed {args.ddp_efficiency:.0%} scaling): {hours(many_epoch)}",
        f"  memory at {result['photos']:,} photos: caching peaks at {result['cache_peak_mib']:.0f} MiB resident, {result['cache_anon_mib']:.0f} MiB of it the process's own; "
        f"training at {result['train_peak_mib']:.0f} MiB resident, {result['train_anon_mib']:.0f} MiB its own (the rest: pages of the memory-mapped feature files, "
        "which the kernel drops under pressure)",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", help="work here and keep the files (default: a temporary folder)")
    parser.add_argument("--train-limit", type=int, default=0, help="train the epoch on at most this many photos a split (0: all)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-decode-workers", type=int, default=8, help="assumed DataLoader workers a GPU (one core each)")
    parser.add_argument("--gpu-train-speedup", type=float, default=20.0, help="assumed: a GPU training step against this 2-core CPU")
    parser.add_argument("--ddp-efficiency", type=float, default=0.9, help="assumed DDP scaling efficiency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.folder or scratch)
        root.mkdir(parents=True, exist_ok=True)
        results = []
        limit_note = f" (at most {args.train_limit:,} photos a split)" if args.train_limit else ""
        for count in sorted(args.counts):
            result = simulate(root, count, args.threads, args.train_limit)
            results.append(result)
            print(f"{count:,} photos (made in {result['made_seconds']:.0f} s): caching {result['cache_photos_per_s']:.1f} photos/s "
                  f"(peak {result['cache_peak_mib']:.0f} MiB, anonymous {result['cache_anon_mib']:.0f} MiB), mirrored {result['flip_photos_per_s']:.1f} photos/s; "
                  f"cache {result['disk_bytes'] / 2**20:.0f} MiB ({result['disk_bytes'] / result['disk_rows'] / 1024:.0f} KiB a row); "
                  f"epoch{limit_note}: {result['train_captions']:,} captions in {result['epoch_train_seconds']:.0f} s "
                  f"({result['captions_per_s']:.0f}/s, command {result['train_command_seconds']:.0f} s, peak {result['train_peak_mib']:.0f} MiB, anonymous {result['train_anon_mib']:.0f} MiB); "
                  f"one core decodes {result['decode_per_core']:.0f} photos/s", flush=True)
        print("\n".join(project(results[-1], args)))


if __name__ == "__main__":
    main()
