"""The Python API: `Captioner.from_pretrained()`, `Captioner.load(path)`, `.caption(images)`."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch

from .checkpoint import load_model, read_metrics
from .decoders import Features
from .decoding import DecodingOptions, Hypothesis, beam_search, greedy, sample
from .encoders import PreprocessConfig, create_encoder, preprocess
from .errors import CaptionerError
from .images import ImageInput, load_image

DEFAULT_MODEL = "flickr8k-default"


@dataclass
class Caption:
    text: str
    score: float  # length-normalised log-probability; higher is better


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model shipped inside the package."""
    folder = Path(str(resources.files("captioner") / "pretrained" / name))
    if not folder.is_dir():
        raise CaptionerError(f"no shipped model named {name!r}; the package may be incomplete, reinstall it")
    return folder


class Captioner:
    """A frozen image encoder plus a trained decoder and its vocabulary."""

    def __init__(self, encoder, decoder, vocabulary, config: dict, path: Path | None = None, device: torch.device | str = "cpu"):
        self.encoder = encoder.to(device)
        self.decoder = decoder.to(device).eval()
        self.vocabulary = vocabulary
        self.config = config
        self.path = path
        self.device = torch.device(device)
        self.preprocess_config = PreprocessConfig(**config.get("preprocess", {}))
        decoding = config.get("decoding", {})
        self.length_penalty = float(decoding.get("length_penalty", 1.0))
        self.no_repeat_ngram_size = int(decoding.get("no_repeat_ngram_size", 3))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Captioner":
        """Load a model folder written by `captioner train` (or shipped in the package)."""
        decoder, vocabulary, config = load_model(path, device)
        encoder = create_encoder(config["encoder"])
        return cls(encoder, decoder, vocabulary, config, Path(path), device)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_MODEL, device: torch.device | str = "cpu") -> "Captioner":
        """The default model that ships with the package; works offline."""
        return cls.load(pretrained_path(name), device)

    @property
    def name(self) -> str:
        return self.config.get("name", self.path.name if self.path else "captioner")

    @property
    def metrics(self) -> dict:
        return read_metrics(self.path) if self.path else {}

    def decoding_options(self, max_length: int | None = None) -> DecodingOptions:
        return DecodingOptions(
            max_length=max_length or self.decoder.config.max_length,
            length_penalty=self.length_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
        )

    def encode(self, images: Sequence[ImageInput]) -> Features:
        """Images -> encoder features (grid (B, G, C), pooled (B, C))."""
        pixels = torch.stack([preprocess(load_image(image), self.preprocess_config) for image in images]).to(self.device)  # (B, 3, S, S)
        return Features(*self.encoder(pixels))

    def generate(
        self, features: Features, beam_size: int = 3, num_captions: int = 1, sampling: bool = False,
        temperature: float = 1.0, top_p: float = 0.9, seed: int | None = None,
    ) -> list[list[Caption]]:
        """Features -> an n-best list of captions per image, best first."""
        if not 1 <= beam_size <= 20:
            raise CaptionerError(f"beam size must be between 1 and 20, got {beam_size}")
        most = 100 if sampling else beam_size  # beam search returns at most one caption per beam
        if not 1 <= num_captions <= most:
            raise CaptionerError(f"number of captions must be between 1 and {most}, got {num_captions}")
        options = self.decoding_options()
        if sampling:
            generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
            results = sample(self.decoder, features, num_captions, temperature, top_p, options, generator)
        elif beam_size == 1:
            results = greedy(self.decoder, features, options)
        else:
            results = beam_search(self.decoder, features, beam_size, num_captions, options)
        return [[self._caption(hypothesis) for hypothesis in hypotheses] for hypotheses in results]

    def _caption(self, hypothesis: Hypothesis) -> Caption:
        return Caption(self.vocabulary.decode(hypothesis.tokens), round(hypothesis.score, 4))

    def caption(self, images: ImageInput | Sequence[ImageInput], beam_size: int = 3, num_captions: int = 1, batch_size: int = 8, **generate_options) -> list[Caption] | list[list[Caption]]:
        """Caption one image (returns its n-best list) or a list of images (a list of n-best lists).

        Images may be paths, bytes, PIL images or NumPy arrays.
        """
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        results: list[list[Caption]] = []
        for start in range(0, len(batch), batch_size):
            features = self.encode(batch[start : start + batch_size])
            results.extend(self.generate(features, beam_size, num_captions, **generate_options))
        return results[0] if single else results
