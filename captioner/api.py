"""The Python API: `Captioner.from_pretrained()`, `Captioner.load(path)`, `.caption(images)`."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from PIL import Image

from .checkpoint import load_concept_detector, load_model, read_metrics
from .colour import saturation
from .confidence import Calibration, caption_features, load_calibration
from .concepts import ConceptDetector, ConceptTable, Tag, concept_inputs, concept_word_ids, imagenet_head, tags_from_probabilities
from .decoders import Features
from .decoding import Constraints, DecodingOptions, Hypothesis, Phrases, beam_search, greedy, sample
from .decoding_rules import DecodingRules, Evidence
from .devices import one_cpu_thread, resolve_device
from .encoders import PreprocessConfig, create_encoder, preprocess
from .onnx_encoder import encoder_on
from .errors import CaptionerError
from .explain import Explanation, attention_over_grid, check_explainable, explanation, one_row, token_words
from .images import ImageInput, load_image
from .onnx_backend import check_backend, is_onnx_export, load_onnx_captioner
from .subject import Subject, SubjectRule, SubjectSettings, render
from .word_repeats import once_groups

DEFAULT_MODEL = "flickr8k-default"
DEFAULT_BACKEND = "pytorch"  # for model folders; export folders run on onnxruntime


@dataclass
class Caption:
    text: str
    score: float  # length-normalised log-probability; higher is better
    tags: list[Tag] = field(default_factory=list)  # the photo's visual concepts, most probable first
    confidence: float | None = None  # P(acceptable alt text) in [0, 1] (`confidence.py`); None: the model has no calibration

TAG_THRESHOLD, TAG_TOP_K = 0.3, 10  # defaults for models that do not set their own


class Conditioning(NamedTuple):
    """What decoding a batch needs besides the image (see `Captioner.conditioning`)."""

    features: Features  # with concept tokens for models that read them
    banned: torch.Tensor  # (B, V) bool: words each caption must not use
    bias: torch.Tensor | None  # (B, V) added to the log-probabilities; None without an object penalty
    tags: list[list[Tag]]
    subjects: list[Subject | None]  # per image, the concept its caption must name
    banned_phrases: Phrases  # per image, word sequences never to complete ("black and white" on a colour photo)

    @property
    def constraints(self) -> Constraints:
        return [[subject.writing.tokens] if subject else [] for subject in self.subjects]


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model shipped inside the package."""
    folder = Path(str(resources.files("captioner") / "pretrained" / name))
    if not folder.is_dir():
        raise CaptionerError(f"no shipped model named {name!r}; the package may be incomplete, reinstall it")
    return folder


class Captioner:
    """A frozen image encoder plus a trained decoder and its vocabulary."""

    def __init__(self, encoder, decoder, vocabulary, config: dict, path: Path | None = None, device: torch.device | str = "cpu", concept_detector: ConceptDetector | None = None):
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
        self.subject_settings = SubjectSettings.from_dict(config.get("subject"))
        self._set_concepts(config.get("concepts") or {}, concept_detector)
        # A caption says each word but function words once, in any form (see word_repeats)
        self.once_groups = once_groups(self.vocabulary)
        self.calibration: Calibration | None = load_calibration(path)

    def _set_concepts(self, settings: dict, detector: ConceptDetector | None = None) -> None:
        """Concept detection for tags, concept tokens and the person rule. A model trained without
        concepts still gets tags from the ImageNet head alone."""
        if detector is None:
            detector = ConceptDetector(ConceptTable.load(), imagenet_head(self.encoder), [], self.encoder.feature_dim)
        if not detector.detector_words:  # no person detector: no person rule either
            settings = {**settings, "person_threshold": 0.0}
        self.concept_detector = detector.to(self.device).eval()
        self.concept_min_score = float(settings.get("min_score", 0.1))
        self.person_threshold = float(settings.get("person_threshold", 0.5))
        self.tag_threshold = float(settings.get("tag_threshold", TAG_THRESHOLD))
        self.concept_word_ids = concept_word_ids(detector.words, self.vocabulary).to(self.device)  # (W, L)
        self.concept_sources = torch.tensor(detector.sources, device=self.device)  # (W,)
        self.rules = DecodingRules(self.vocabulary, self.concept_detector, settings, self.subject_settings, self.person_threshold, self.device)

    @property
    def subject_rule(self) -> SubjectRule:
        return self.rules.subject.rule

    @property
    def guard_tokens(self) -> torch.Tensor:
        """(P,) the vocabulary ids named only with ImageNet's evidence (`GuardRule`)."""
        return self.rules.guard.tokens

    @property
    def backend(self) -> str:
        """pytorch, or onnxruntime where the decoder runs exported graphs."""
        return getattr(self.decoder, "backend", "pytorch")

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None, backend: str | None = None) -> "Captioner":
        """Load a model folder written by `captioner train` (or shipped in the package), or an ONNX
        export folder (`captioner export --onnx`). `device`: auto (None: CAPTIONER_DEVICE, else a
        CUDA GPU when present, else the CPU), cpu, cuda or cuda:N. `backend`: pytorch or onnxruntime
        (CPU only; a model folder is exported in memory); None: onnxruntime for an export folder,
        else DEFAULT_BACKEND."""
        backend = check_backend(backend or ("onnxruntime" if is_onnx_export(path) else DEFAULT_BACKEND))
        if backend == "onnxruntime":
            return load_onnx_captioner(cls, path, device)
        if is_onnx_export(path):
            raise CaptionerError(f"{path} is an ONNX export folder; load it with backend 'onnxruntime' (--backend onnxruntime)")
        device = resolve_device(device)
        decoder, vocabulary, config = load_model(path, device)
        encoder = encoder_on(create_encoder(config["encoder"]), device)
        detector = load_concept_detector(path, config, encoder) if "concepts" in config else None
        return cls(encoder, decoder, vocabulary, config, Path(path), device, concept_detector=detector)

    @classmethod
    def from_pretrained(cls, name: str = DEFAULT_MODEL, device: torch.device | str | None = None, backend: str | None = None) -> "Captioner":
        """The default model that ships with the package; works offline."""
        return cls.load(pretrained_path(name), device, backend)

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
            once=self.once_groups,
        )

    def encode(self, images: Sequence[ImageInput]) -> Features:
        """Images -> encoder features (grid (B, G, C), pooled (B, C)) and each photo's colour saturation."""
        pixels = torch.stack([preprocess(load_image(image), self.preprocess_config) for image in images])  # (B, 3, S, S)
        return self.encode_pixels(pixels)

    def encode_pixels(self, pixels: torch.Tensor) -> Features:
        """Preprocessed pixels (B, 3, S, S) -> encoder features and each photo's colour saturation."""
        pixels = pixels.to(self.device)
        grid, pooled = self.encoder(pixels)
        return Features(grid, pooled, saturation=saturation(pixels, self.preprocess_config.mean, self.preprocess_config.std))

    def detect(self, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """Concept probabilities (B, W) over `concept_detector.words`, and which of them may be
        used (B, W) bool: person words only where a person is likely (`person_threshold`)."""
        probabilities, person = self.concept_detector(features.grid, features.pooled)
        return probabilities, self.concept_detector.allowed(person, self.person_threshold)

    def tags_from_features(self, features: Features, threshold: float | None = None, top_k: int = TAG_TOP_K) -> list[list[Tag]]:
        probabilities, allowed = self.detect(features)
        return tags_from_probabilities(probabilities * allowed, self.concept_detector.words, self.tag_threshold if threshold is None else threshold, top_k)

    def tags(self, images: ImageInput | Sequence[ImageInput], threshold: float | None = None, top_k: int = TAG_TOP_K, batch_size: int = 8) -> list[Tag] | list[list[Tag]]:
        """The visual concepts of one image (a list of `Tag`) or of each image of a list, most probable first."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        results = [tags for start in range(0, len(batch), batch_size) for tags in self.tags_from_features(self.encode(batch[start : start + batch_size]), threshold, top_k)]
        return results[0] if single else results

    def conditioning(self, features: Features) -> Conditioning:
        """What decoding needs besides the image: the features with concept tokens (for models
        with a concept path), the tags, and what the decoding rules decided (`decoding_rules`):
        the words each caption must not use, the penalty on unsupported object words, the phrases
        it must not say and the subject it must name."""
        probabilities, allowed = self.detect(features)
        tags = tags_from_probabilities(probabilities * allowed, self.concept_detector.words, self.tag_threshold, TAG_TOP_K)
        decided = self.rules(Evidence(features, probabilities, allowed, self.concept_detector.animal_probability(features.pooled)))
        if getattr(self.decoder.config, "max_concepts", 0):
            concepts = concept_inputs(probabilities, self.concept_word_ids, self.concept_sources, allowed, self.decoder.config.max_concepts, self.concept_min_score)
            features = features._replace(concepts=concepts)
        return Conditioning(features, decided.banned, decided.bias, tags, decided.subjects, decided.banned_phrases)

    def generate(
        self, features: Features, beam_size: int = 3, num_captions: int = 1, sampling: bool = False,
        temperature: float = 1.0, top_p: float = 0.9, seed: int | None = None,
    ) -> list[list[Caption]]:
        """Features -> an n-best list of captions per image, best first, each with the image's tags."""
        if not 1 <= beam_size <= 20:
            raise CaptionerError(f"beam size must be between 1 and 20, got {beam_size}")
        most = 100 if sampling else beam_size  # beam search returns at most one caption per beam
        if not 1 <= num_captions <= most:
            raise CaptionerError(f"number of captions must be between 1 and {most}, got {num_captions}")
        with one_cpu_thread(self.device):
            return self._generate(features, beam_size, num_captions, sampling, temperature, top_p, seed)

    def _generate(self, features: Features, beam_size: int, num_captions: int, sampling: bool, temperature: float, top_p: float, seed: int | None) -> list[list[Caption]]:
        return self._captions(*self._search(features, beam_size, num_captions, sampling, temperature, top_p, seed))

    def _captions(self, given: Conditioning, results: list[list[Hypothesis]]) -> list[list[Caption]]:
        return [[self._caption(hypothesis, image_tags, subject) for hypothesis in hypotheses] for hypotheses, image_tags, subject in zip(results, given.tags, given.subjects)]

    def _search(
        self, features: Features, beam_size: int, num_captions: int, sampling: bool = False, temperature: float = 1.0, top_p: float = 0.9, seed: int | None = None,
    ) -> tuple[Conditioning, list[list[Hypothesis]]]:
        """The conditioning of a batch and, per image, its n-best hypotheses."""
        options = self.decoding_options()
        given = self.conditioning(features)
        features, banned, bias, phrases = given.features, given.banned, given.bias, given.banned_phrases
        if sampling:  # samples are free: no subject to name
            generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
            results = sample(self.decoder, features, num_captions, temperature, top_p, options, generator, banned, bias, phrases)
        elif beam_size == 1 and not any(given.subjects):
            results = greedy(self.decoder, features, options, banned, bias, phrases)
        else:
            results = beam_search(self.decoder, features, beam_size, num_captions, options, banned, bias, given.constraints, self.subject_settings.margin, phrases)
        return given, results

    def _caption(self, hypothesis: Hypothesis, tags: list[Tag], subject: Subject | None = None) -> Caption:
        renames = subject.writing.renames if subject else None
        text, score = render(self.vocabulary, hypothesis.tokens, renames, self.subject_rule.compounds), round(hypothesis.score, 4)
        confidence = self.calibration.confidence(caption_features(text, score, tags, subject.word if subject else None)) if self.calibration else None
        return Caption(text, score, tags, confidence)

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

    def explain(self, image: ImageInput, beam_size: int = 3) -> Explanation:
        """The best caption of one image and, per word, where the decoder looked when it wrote it
        (`Explanation.maps`, (words, rows, columns) over the encoder grid; see `explain.py`).
        Needs an attention or transformer decoder on the pytorch backend."""
        check_explainable(self.decoder)  # before any work
        return self.explain_batch([load_image(image)], beam_size)[1][0]

    def explain_batch(self, images: Sequence[Image.Image], beam_size: int = 3, num_captions: int = 1) -> tuple[list[list[Caption]], list[Explanation]]:
        """Upright RGB photos -> their n-best captions, as `generate` gives them, and the
        explanation of each photo's best caption, from one search."""
        check_explainable(self.decoder)
        if not 1 <= num_captions <= beam_size <= 20:
            raise CaptionerError(f"explain needs 1 <= number of captions <= beam size <= 20, got {num_captions} and {beam_size}")
        features = self.encode_pixels(torch.stack([preprocess(image, self.preprocess_config) for image in images]))
        with one_cpu_thread(self.device):
            given, results = self._search(features, beam_size, num_captions)
            captions = self._captions(given, results)
            explanations = []
            for row, (image, hypotheses, subject) in enumerate(zip(images, results, given.subjects)):
                tokens = hypotheses[0].tokens
                on_grid, share = attention_over_grid(self.decoder, one_row(given.features, row), tokens)
                words = token_words(self.vocabulary, tokens, subject.writing.renames if subject else None)
                explanations.append(explanation(captions[row][0].text, words, on_grid, share, self.decoder.config.grid_size, image))
        return captions, explanations
