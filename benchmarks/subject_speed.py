"""One caption at beam 3, file to text, this code against another checkout, alternating in one run.

Two worker processes load the shipped model, one from this checkout and one from `--baseline`
(a checkout of the previous code, e.g. `git worktree add /tmp/previous HEAD~1`; default: this
checkout with the subject constraint switched off). The photos, as users have them: the bundled
examples (512-640 px JPEGs) and a 12 MP phone-sized JPEG (4000 x 3000, made from a bundled photo).
Requests alternate between the workers photo by photo; each worker times its own
`Captioner.caption(path, beam_size=3)`, so process start and pipes are not counted.

    python benchmarks/subject_speed.py [--baseline /tmp/previous] [--repeats 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
from captioner.api import Captioner
captioner = Captioner.from_pretrained(device="cpu")
if sys.argv[3] == "off":
    captioner.subject_settings.enabled = False
for line in sys.stdin:
    path = line.strip()
    started = time.perf_counter()
    caption = captioner.caption(path, beam_size=3).text
    print(json.dumps({"ms": (time.perf_counter() - started) * 1000, "caption": caption}), flush=True)
"""


def start(source: Path, threads: int, subject: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(source), str(threads), subject], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=source)


def ask(worker: subprocess.Popen, photo: Path) -> dict:
    worker.stdin.write(f"{photo}\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with (default: this one, subject constraint off)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    examples = sorted((ROOT / "examples").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as folder:
        phone = Path(folder) / "phone-12mp.jpg"
        Image.open(examples[0]).convert("RGB").resize((4000, 3000)).save(phone, quality=90)
        kinds = {"bundled examples": examples, "12 MP phone photo": [phone]}
        workers = {"this code": start(ROOT, args.threads, "on"), "baseline": start(args.baseline or ROOT, args.threads, "on" if args.baseline else "off")}
        times: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in workers} for kind in kinds}
        captions: dict[str, dict[str, str]] = {name: {} for name in workers}
        for name, worker in workers.items():  # warm up: first calls build ONNX sessions and caches
            for photo in examples + [phone]:
                captions[name][photo.name] = ask(worker, photo)["caption"]
        for _ in range(args.repeats):
            for kind, photos in kinds.items():
                for photo in photos:
                    for name, worker in workers.items():
                        times[kind][name].append(ask(worker, photo)["ms"])
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()
    print(f"one caption, beam 3, file to text, {args.threads} threads, median ms over {args.repeats} rounds (alternating):")
    for kind in kinds:
        ours, theirs = (statistics.median(times[kind][name]) for name in workers)
        print(f"  {kind:18s} this code {ours:7.1f}   baseline {theirs:7.1f}   ratio {ours / theirs:.2f}x")
    for photo in examples:
        print(f"  {photo.name}: {captions['this code'][photo.name]!r}  (baseline: {captions['baseline'][photo.name]!r})")


if __name__ == "__main__":
    main()
