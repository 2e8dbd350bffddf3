"""Speed and memory of the captioner on this machine's CPU.

Prints: the onnxruntime backend (every network in ONNX Runtime), the pytorch backend (the default:
ONNX Runtime encoder, PyTorch decoder) and the pytorch backend with PyTorch's encoder, alternating
in one run, for one caption, a folder at batch 32 and feature caching, each beside issue 8's
target, and the load time of each backend; encoder images/s while caching features; seconds per training epoch for each decoder
(timed steps on Flickr8k-sized batches, extrapolated to one epoch); captioning latency for one
image from file to caption (median and p95, beam 3); throughput at batch 32; model load time;
peak memory of `captioner caption` on a folder; and, if `transformers` is installed, a peer
(ViT-GPT2, the public checkpoint's architecture with random weights) timed in the same run.

    python benchmarks/captioning_speed.py [--threads 2] [--repeats 30]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT.parent / "shared" / "flickr8k"


def median_p95(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), float(np.percentile(values, 95))


def sample_photos(count: int) -> list[Path]:
    """Flickr8k photos when present (224 x 224), else the bundled examples repeated."""
    if (FLICKR8K / "images").is_dir():
        return sorted((FLICKR8K / "images").glob("*.jpg"))[:count]
    examples = sorted((ROOT / "examples").glob("*.jpg"))
    return [examples[i % len(examples)] for i in range(count)]


def bench_encoder(count: int) -> float:
    from captioner.model.encoders import create_encoder
    from captioner.data.features import FeatureCache

    encoder = create_encoder("efficientnet-lite2")
    photos = sample_photos(count)
    with tempfile.TemporaryDirectory() as folder:
        FeatureCache.build(Path(folder) / "warm", encoder, [p.name for p in photos[:8]], photos[:8], progress=False)
        started = time.perf_counter()
        FeatureCache.build(Path(folder) / "c", encoder, [f"{i}" for i in range(len(photos))], photos, batch_size=4, progress=False)
        return len(photos) / (time.perf_counter() - started)


def bench_epochs(steps: int) -> dict[str, float]:
    from captioner.model.decoders import DecoderConfig, Features, caption_loss, create_decoder
    from captioner.training.loop import TrainingConfig, make_optimizer
    from captioner.training.batches import length_bucketed_batches

    results = {}
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.normal(11.8, 3.8, 30000).round().astype(int), 1, 22)  # Flickr8k train caption lengths
    for kind in ("merge", "attention", "transformer"):
        settings = json.loads((ROOT / "configs" / f"flickr8k-{kind}.json").read_text())
        training = TrainingConfig.from_dict({**settings, "decoder": {**settings["decoder"], "vocab_size": 2538}})
        decoder = create_decoder(DecoderConfig(**{**training.decoder.to_dict(), "vocab_size": 2538})).train()
        optimizer = make_optimizer(decoder, training)
        batches = length_bucketed_batches(lengths, training.batch_size, rng)
        times = []
        for batch in batches[: steps + 2]:
            tokens = torch.randint(4, 2538, (len(batch), int(lengths[batch].max()) + 1))
            features = Features(torch.randn(len(batch), 49, 1280), torch.randn(len(batch), 1280))
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=training.bf16):
                logits = decoder(features, tokens)
            loss = caption_loss(logits.float(), tokens, training.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        results[kind] = statistics.median(times[2:]) * len(batches)
    return results


def bench_captioning(repeats: int) -> dict[str, float]:
    from captioner.api import Captioner

    started = time.perf_counter()
    Captioner.from_pretrained()
    load_times = [time.perf_counter() - started]
    for _ in range(2):
        started = time.perf_counter()
        captioner = Captioner.from_pretrained()
        load_times.append(time.perf_counter() - started)
    photo = ROOT / "examples" / "chelsea.jpg"
    captioner.caption(photo)  # warm-up
    latencies = []
    for _ in range(repeats):
        started = time.perf_counter()
        captioner.caption(photo, beam_size=3)
        latencies.append((time.perf_counter() - started) * 1000)
    photos = sample_photos(64)
    captioner.caption(photos[:32], beam_size=3, batch_size=32)
    started = time.perf_counter()
    captioner.caption(photos, beam_size=3, batch_size=32)
    throughput = len(photos) / (time.perf_counter() - started)
    median, p95 = median_p95(latencies)
    return {"load_s": statistics.median(load_times), "latency_median_ms": median, "latency_p95_ms": p95, "throughput_batch32": throughput}


def bench_concepts(repeats: int, baseline: str | None) -> dict[str, float]:
    """The cost of concepts in one caption: concept detection alone (ImageNet head + word
    detectors on features that exist anyway), and, with `baseline`, another model's one-caption
    median timed alternately in the same run (e.g. the previous default, which had no concepts)."""
    from captioner.api import Captioner

    captioner = Captioner.from_pretrained()
    photo = ROOT / "examples" / "chelsea.jpg"
    features = captioner.encode([photo])
    captioner.detect(features)
    detect_ms = []
    for _ in range(repeats):
        started = time.perf_counter()
        captioner.detect(features)
        detect_ms.append((time.perf_counter() - started) * 1000)
    results = {"detect_ms": statistics.median(detect_ms)}
    if baseline:
        other = Captioner.load(baseline)
        other.caption(photo)
        ours, theirs = [], []
        for _ in range(repeats):
            for model, times in ((captioner, ours), (other, theirs)):
                started = time.perf_counter()
                model.caption(photo, beam_size=3)
                times.append((time.perf_counter() - started) * 1000)
        results.update(ours_ms=statistics.median(ours), baseline_ms=statistics.median(theirs))
    return results


TARGETS = {"one caption (ms)": 40, "folder, batch 32 (photos/s)": 60, "feature caching (photos/s)": 90}
ONNX, PYTORCH, PYTORCH_ENCODER = "onnxruntime backend", "pytorch backend", "pytorch backend with the PyTorch encoder"
ENCODER_NAMES = {PYTORCH: "ONNX Runtime encoder (both backends)", PYTORCH_ENCODER: "PyTorch encoder"}  # feature caching runs the encoder alone


def bench_engines(repeats: int, folder_photos: int, cache_photos: int) -> tuple[dict[str, dict[str, float]], int]:
    """The shipped model three ways, alternating in one run: the onnxruntime backend (every
    network in ONNX Runtime), the pytorch backend (the default: ONNX Runtime encoder, PyTorch
    decoder) and the pytorch backend with PyTorch's CPU encoder. One caption file to text (median
    ms), a folder at batch 32 (photos/s, median of 3) and feature caching (the encoder alone, so
    the two encoders only). Returns {figure: {engine: value}} and how many of the folder's
    captions the onnxruntime backend wrote word for word as the pytorch backend."""
    from captioner.api import Captioner
    from captioner.model.encoders import create_encoder
    from captioner.data.features import FeatureCache

    engines = {ONNX: Captioner.from_pretrained(backend="onnxruntime"), PYTORCH: Captioner.from_pretrained(backend="pytorch"), PYTORCH_ENCODER: Captioner.from_pretrained(backend="pytorch")}
    engines[PYTORCH_ENCODER].encoder = create_encoder("efficientnet-lite2")
    photo, folder, cached = ROOT / "examples" / "chelsea.jpg", sample_photos(folder_photos), sample_photos(cache_photos)
    times: dict[str, dict[str, list[float]]] = {name: {} for name in TARGETS}
    for captioner in engines.values():
        captioner.caption(folder[:32], batch_size=32)  # warm-up
    for _ in range(repeats):
        for engine, captioner in engines.items():
            started = time.perf_counter()
            captioner.caption(photo, beam_size=3)
            times["one caption (ms)"].setdefault(engine, []).append((time.perf_counter() - started) * 1000)
    captions = {}
    for _ in range(3):
        for engine, captioner in engines.items():
            started = time.perf_counter()
            captions[engine] = captioner.caption(folder, beam_size=3, batch_size=32)
            times["folder, batch 32 (photos/s)"].setdefault(engine, []).append(len(folder) / (time.perf_counter() - started))
            if engine == ONNX:
                continue  # the same encoder as the pytorch backend's
            with tempfile.TemporaryDirectory() as cache:
                started = time.perf_counter()
                FeatureCache.build(Path(cache), captioner.encoder, [f"{i}" for i in range(len(cached))], cached, progress=False)
                times["feature caching (photos/s)"].setdefault(ENCODER_NAMES[engine], []).append(len(cached) / (time.perf_counter() - started))
    same = sum(a.text == b.text for a, b in zip(captions[ONNX], captions[PYTORCH]))
    return {name: {engine: statistics.median(values) for engine, values in runs.items()} for name, runs in times.items()}, same


def bench_load(repeats: int = 3) -> dict[str, float]:
    """Seconds to load the shipped model (median): pytorch backend, onnxruntime backend from the
    model folder (exported in memory) and from an export folder (`captioner export --onnx`)."""
    from captioner.api import Captioner
    from captioner.runtimes.onnx_export import write_onnx_export

    with tempfile.TemporaryDirectory() as folder:
        write_onnx_export(Captioner.from_pretrained(backend="pytorch"), Path(folder) / "onnx")
        loads = {
            "pytorch backend": lambda: Captioner.from_pretrained(backend="pytorch"),
            "onnxruntime backend, model folder exported in memory": lambda: Captioner.from_pretrained(backend="onnxruntime"),
            "onnxruntime backend, export folder": lambda: Captioner.load(Path(folder) / "onnx"),
        }
        times: dict[str, list[float]] = {name: [] for name in loads}
        for _ in range(repeats):
            for name, load in loads.items():
                started = time.perf_counter()
                load()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def print_engines(figures: dict[str, dict[str, float]], same: int, photos: int) -> None:
    print("engines, alternating in one run (ratios against the pytorch backend, the default; targets from issue 8):")
    for name, values in figures.items():
        reference = values[PYTORCH] if PYTORCH in values else values[ENCODER_NAMES[PYTORCH]]
        parts = [f"{engine} {value:.1f}" + ("" if value is reference else f" (x{value / reference:.2f})") for engine, value in values.items()]
        meets = [engine + (" meets" if (value <= TARGETS[name] if "ms" in name else value >= TARGETS[name]) else " misses") for engine, value in values.items() if engine in (ONNX, PYTORCH, ENCODER_NAMES[PYTORCH])]
        print(f"  {name}: {', '.join(parts)}; target {TARGETS[name]}: {', '.join(meets)}")
    print(f"  folder captions of the onnxruntime backend word for word those of the pytorch backend: {same} of {photos}")


PEAK_OF_CAPTION_COMMAND = """
import sys
from captioner.cli.commands import main
main(["caption", sys.argv[1]])
# VmHWM is this process's own peak; rusage of a child would count the pages the fork shared with us.
print([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1], file=sys.stderr)
"""


def bench_folder_memory(count: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        for i, photo in enumerate(sample_photos(count)):
            shutil.copy(photo, Path(folder) / f"{i:04d}{photo.suffix}")
        result = subprocess.run([sys.executable, "-c", PEAK_OF_CAPTION_COMMAND, folder], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return int(result.stderr.strip().splitlines()[-1]) / 1024  # MiB


def bench_peer(repeats: int, max_length: int) -> float | None:
    """ViT-GPT2's architecture (random weights, no download) at our beam size (3) and maximum caption
    length, one image; with random weights it rarely ends early, so it runs about that length."""
    try:
        from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    except ImportError:
        return None
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), GPT2Config(add_cross_attention=True))
    config.decoder_start_token_id = config.pad_token_id = 50256
    model = VisionEncoderDecoderModel(config=config).eval()
    pixels = torch.randn(1, 3, 224, 224)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            model.generate(pixels, num_beams=3, max_new_tokens=max_length)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--encoder-images", type=int, default=400)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--baseline-model", help="a model folder to time one caption against in the same run (e.g. the previous default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"encoder (efficientnet-lite2, batch 4, caching features): {bench_encoder(args.encoder_images):.1f} images/s")
    if not args.skip_training:
        for kind, seconds in bench_epochs(args.train_steps).items():
            print(f"training epoch, {kind} decoder (30,000 Flickr8k captions): {seconds:.0f} s")
    figures, same = bench_engines(args.repeats, 256, args.encoder_images)
    print_engines(figures, same, 256)
    print("load the shipped model (median of 3): " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in bench_load().items()))
    captioning = bench_captioning(args.repeats)
    print(f"load default model: {captioning['load_s']:.2f} s")
    print(f"caption one image, file to caption, beam 3: median {captioning['latency_median_ms']:.0f} ms, p95 {captioning['latency_p95_ms']:.0f} ms")
    print(f"throughput, batch 32, beam 3: {captioning['throughput_batch32']:.1f} images/s")
    concepts = bench_concepts(args.repeats, args.baseline_model)
    print(f"concept detection alone (ImageNet head + word detectors, one image): median {concepts['detect_ms']:.2f} ms")
    if args.baseline_model:
        print(f"one caption, beam 3, alternating: default {concepts['ours_ms']:.0f} ms, {args.baseline_model} {concepts['baseline_ms']:.0f} ms "
              f"-> ratio {concepts['ours_ms'] / concepts['baseline_ms']:.2f}")
    print(f"peak memory of 'captioner caption' on a folder of 200 photos: {bench_folder_memory(200):.0f} MiB")
    peer_length = json.loads((ROOT / "captioner" / "pretrained" / "flickr8k-default" / "config.json").read_text())["decoder"]["max_length"]
    peer = bench_peer(min(args.repeats, 5), peer_length)
    if peer is not None:
        ratio = peer / captioning["latency_median_ms"]
        print(f"peer ViT-GPT2 (random weights), beam 3, up to {peer_length} tokens as ours, one image: median {peer:.0f} ms -> ours is {ratio:.1f}x faster")
    else:
        print("peer ViT-GPT2: skipped (pip install transformers to measure it in the same run)")


if __name__ == "__main__":
    main()
