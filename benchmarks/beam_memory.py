"""Beam search with the Transformer's image memory (cross-attention keys and values) kept once per
image, against the previous code's copy per beam, alternating in one run on the shipped model.

Photos: the bundled examples, repeated to fill a batch. The previous code is rebuilt here as
`CopiedPerBeam`: the same decoder with its per-image state moved into the per-row state, so every
reordering of the beams copies it (as before this change). Both must give the same captions; the
script counts them before timing.

    python benchmarks/beam_memory.py [--threads 2] [--repeats 15] [--batch 32 1]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from captioner import Captioner
from captioner.model.image_state import ImageState
from captioner.generation.decoding import beam_search

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # scikit-image's sample photos


class CopiedPerBeam(torch.nn.Module):
    """The shipped decoder with its image memory copied into every row (the previous behaviour)."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder, self.config = decoder, decoder.config

    def init_state(self, features):
        state = self.decoder.init_state(features)
        per_image = state.pop("per_image")
        return {**state, **{f"memory_{name}": tensor for name, tensor in per_image.tensors.items()}}

    def step(self, last_tokens, state):
        rows = last_tokens.shape[0]
        memory = {name[len("memory_"):]: tensor for name, tensor in state.items() if name.startswith("memory_")}
        inner = {name: value for name, value in state.items() if not name.startswith("memory_")}
        logits, stepped = self.decoder.step(last_tokens, {**inner, "per_image": ImageState(memory, torch.arange(rows))})
        stepped.pop("per_image")
        return logits, {**stepped, **{f"memory_{name}": tensor for name, tensor in memory.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--beam-size", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioner = Captioner.from_pretrained(device="cpu")
    decoders = {"kept once per image": captioner.decoder, "copied per beam (previous)": CopiedPerBeam(captioner.decoder)}
    options = captioner.decoding_options()
    photos = sorted(EXAMPLES.glob("*.jpg"))
    for batch in args.batch:
        with torch.inference_mode():
            features, banned, bias, *_ = captioner.conditioning(captioner.encode([photos[i % len(photos)] for i in range(batch)]))
        captions = {name: [h[0].tokens for h in beam_search(decoder, features, args.beam_size, 1, options, banned, bias)] for name, decoder in decoders.items()}
        same = sum(a == b for a, b in zip(*captions.values()))
        times = {name: [] for name in decoders}
        for _ in range(args.repeats):
            for name, decoder in decoders.items():
                started = time.perf_counter()
                beam_search(decoder, features, args.beam_size, 1, options, banned, bias)
                times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
        new, old = medians.values()
        print(f"batch {batch}, beam {args.beam_size}: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in medians.items())
              + f"; {old / new:.2f}x; same captions {same}/{batch}")


if __name__ == "__main__":
    main()
