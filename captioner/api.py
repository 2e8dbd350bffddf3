"""The Python API: `Captioner.from_pretrained(name_or_path)`, `captioner(images)` (or
`.caption(images)`), `.save_pretrained(path)`, and `list_models()`."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import torch
from PIL import Image

from .data.colour import saturation
from .data.image_sources import ImageSource, is_one_image, read_image
from .devices import one_cpu_thread, resolve_device
from .errors import CaptionerError, ImageError
from .generation.caption_style import PLAIN, SENTENCE, check_style, written
from .generation.confidence import Calibration, caption_features, load_calibration
from .generation.decoding import Constraints, DecodingOptions, Hypothesis, Phrases, beam_search, greedy, sample
from .generation.explain import Explanation, attention_over_grid, check_explainable, explanation, one_row, token_words
from .generation.rules import DecodingRules, Evidence
from .generation.subject import Subject, SubjectRule, render
from .generation.word_repeats import once_groups
from .model.checkpoint import CONFIG, load_concept_detector, load_model, read_metrics
from .model.concepts import ConceptDetector, ConceptTable, Tag, concept_inputs, concept_word_ids, imagenet_head, tags_from_probabilities
from .model.config import ConceptSettings, ModelConfig, SubjectSettings
from .model.config_checks import MAX_BEAM
from .model.decoders import Features
from .model.encoders import PreprocessConfig, create_encoder, preprocess
from .runtimes.onnx_backend import check_backend, is_onnx_export, load_onnx_captioner
from .runtimes.onnx_encoder import encoder_on

DEFAULT_MODEL = "flickr8k-default"
DEFAULT_BACKEND = "pytorch"  # for model folders; export folders run on onnxruntime
MAX_SAMPLES = 100


@dataclass
class Caption:
    text: str
    score: float  # length-normalised log-probability; higher is better
    tags: list[Tag] = field(default_factory=list)  # the photo's visual concepts, most probable first
    confidence: float | None = None  # P(acceptable alt text) in [0, 1] (`confidence.py`); None: the model has no calibration

TAG_TOP_K = 10


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


# What `caption` returns: one image's Caption (or n-best list), or one of those per image
CaptionResult = Union[Caption, list[Caption]]


def _pretrained_root() -> Path:
    return Path(str(resources.files("captioner") / "pretrained"))


def list_models() -> list[str]:
    """The names of the models shipped inside the package (`Captioner.from_pretrained(name)`)."""
    root = _pretrained_root()
    return sorted(entry.name for entry in root.iterdir() if (entry / CONFIG).is_file()) if root.is_dir() else []


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model shipped inside the package."""
    folder = _pretrained_root() / name
    if not (folder / CONFIG).is_file() or "/" in name or "\\" in name or name.startswith("."):
        shipped = list_models()
        if name == DEFAULT_MODEL and not shipped:
            raise CaptionerError(f"the shipped model {name!r} is missing; the package is incomplete, reinstall it")
        raise CaptionerError(f"{name!r} is neither a shipped model ({', '.join(shipped) or 'none installed'}) nor a model folder; pass one of those names or a folder's path")
    return folder


class Captioner:
    """A frozen image encoder plus a trained decoder and its vocabulary."""

    def __init__(self, encoder, decoder, vocabulary, config: ModelConfig, path: Path | None = None, device: torch.device | str = "cpu", concept_detector: ConceptDetector | None = None):
        self.encoder = encoder.to(device)
        self.decoder = decoder.to(device).eval()
        self.vocabulary = vocabulary
        self.config = config  # config.json, typed (`model/config.py`); change it with `with_config`
        self.path = path
        self.device = torch.device(device)
        self._set_concepts(config.concept_settings, concept_detector)
        # A caption says each word but function words once, in any form (see word_repeats)
        self.once_groups = once_groups(self.vocabulary)
        self.calibration: Calibration | None = load_calibration(path)

    def with_config(self, config: ModelConfig) -> "Captioner":
        """This model with other settings (decoding, concepts, subject), sharing its networks;
        e.g. `captioner.with_config(captioner.config.with_decoding(length_penalty=0.8))`."""
        return type(self)(self.encoder, self.decoder, self.vocabulary, config, self.path, self.device, self.concept_detector)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.config.preprocess

    @property
    def length_penalty(self) -> float:
        return self.config.decoding.length_penalty

    @property
    def no_repeat_ngram_size(self) -> int:
        return self.config.decoding.no_repeat_ngram_size

    @property
    def default_beam_size(self) -> int:
        """The beam when the caller gives none: the model's `decoding.beam_size`."""
        return self.config.decoding.beam_size

    @property
    def subject_settings(self) -> SubjectSettings:
        return self.config.subject

    def beam(self, beam_size: int | None) -> int:
        """`beam_size`, or where it is None the model's own (`default_beam_size`)."""
        return self.default_beam_size if beam_size is None else beam_size

    def _set_concepts(self, settings: ConceptSettings, detector: ConceptDetector | None = None) -> None:
        """Concept detection for tags, concept tokens and the person rule. A model trained without
        concepts still gets tags from the ImageNet head alone."""
        if detector is None:
            detector = ConceptDetector(ConceptTable.load(), imagenet_head(self.encoder), [], self.encoder.feature_dim)
        if not detector.detector_words:  # no person detector: no person rule either
            settings = replace(settings, person_threshold=0.0)
        self.concept_detector = detector.to(self.device).eval()
        self.concept_min_score = settings.min_score
        self.person_threshold = settings.person_threshold
        self.tag_threshold = settings.tag_threshold
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
        encoder = encoder_on(create_encoder(config.encoder), device)
        detector = load_concept_detector(path, config, encoder) if config.concepts is not None else None
        return cls(encoder, decoder, vocabulary, config, Path(path), device, concept_detector=detector)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULT_MODEL, device: torch.device | str | None = None, backend: str | None = None) -> "Captioner":
        """A shipped model by name (`list_models()`; works offline), or a model folder or ONNX export
        folder by path (`save_pretrained`, `captioner train`, `captioner export`). An existing folder
        wins over a shipped name, as elsewhere in the field."""
        if Path(name_or_path).is_dir():
            return cls.load(name_or_path, device, backend)
        return cls.load(pretrained_path(str(name_or_path)), device, backend)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write this model as a folder that `from_pretrained(path)` loads back to the same captions.
        `dtype`: float type of the weights; None keeps the loaded folder's (float16 stays float16)."""
        from .model.folders import save_captioner

        return save_captioner(self, Path(path), dtype)

    def __repr__(self) -> str:
        return f"Captioner(model={self.name!r}, backend={self.backend!r}, device={str(self.device)!r})"

    @property
    def name(self) -> str:
        if self.config.name is not None:
            return self.config.name
        return self.path.name if self.path else "captioner"

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

    def encode(self, images: Sequence[ImageSource]) -> Features:
        """Images -> encoder features (grid (B, G, C), pooled (B, C)) and each photo's colour saturation."""
        pixels = torch.stack([preprocess(read_image(image), self.preprocess_config) for image in images])  # (B, 3, S, S)
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

    def tags(self, images: ImageSource | Iterable[ImageSource], threshold: float | None = None, top_k: int = TAG_TOP_K, batch_size: int = 8) -> list[Tag] | list[list[Tag]]:
        """The visual concepts of one image (a list of `Tag`) or of each image of a list, most probable first."""
        single = is_one_image(images)
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
        self, features: Features, beam_size: int | None = None, num_captions: int = 1, sampling: bool = False,
        temperature: float = 1.0, top_p: float = 0.9, seed: int | None = None, style: str = PLAIN, neutral: bool = False,
    ) -> list[list[Caption]]:
        """Features -> an n-best list of captions per image, best first, each with the image's tags.
        `beam_size` None: the model's own (3 for the shipped model); a `num_captions` above it
        widens the beam to it. Captions are written in `style`
        (plain here, as metrics score them; `caption` defaults to sentences), gender-neutral if `neutral`."""
        beam_size = decoding_beam(self.beam(beam_size), num_captions, sampling)
        check_style(style)
        with one_cpu_thread(self.device):
            results = self._generate(features, beam_size, num_captions, sampling, temperature, top_p, seed)
        return written_captions(results, style, neutral)

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

    def caption(
        self, images: ImageSource | Iterable[ImageSource], beam_size: int | None = None, num_captions: int = 1, batch_size: int = 8,
        style: str = SENTENCE, neutral: bool = False, **generate_options,
    ) -> CaptionResult | list[CaptionResult] | Iterator[CaptionResult]:
        """Caption one image, or each image of a list or any other iterable.

        One image in, one result out: a `Caption`, or with `num_captions` > 1 its n-best list, best
        first (`beam_size` None is the model's own beam, its config's `decoding.beam_size`; a
        `num_captions` above `beam_size` widens the beam). A list or tuple in, a list of
        results out, in order; any other iterable (a generator) in, an iterator of results out,
        read and captioned `batch_size` images at a time as it is consumed. An image is a path, an
        http(s) URL, bytes, a binary file object, a PIL image or a NumPy array. `style`: "sentence"
        ("A cat sitting on a bed.") or "plain" ("a cat sitting on a bed"); `neutral`: person words
        without gender ("a person", "a child", "people").
        """
        decoding_beam(self.beam(beam_size), num_captions, generate_options.get("sampling", False))  # bad options fail before any image is read
        check_style(style)
        options = dict(beam_size=beam_size, num_captions=num_captions, style=style, neutral=neutral, **generate_options)
        if is_one_image(images):
            return next(self._results([images], batch_size, options))
        if isinstance(images, (list, tuple)):
            return list(self._results(images, batch_size, options))
        if isinstance(images, Iterable):
            return self._results(images, batch_size, options)
        raise ImageError(f"cannot read an image from {type(images).__name__}; pass a path, URL, bytes, file object, PIL image or array, or a list of them")

    __call__ = caption

    def _results(self, images: Iterable[ImageSource], batch_size: int, options: dict) -> Iterator[CaptionResult]:
        """Each image's result, in order, captioning `batch_size` images at a time as they are asked for."""
        one_each = options["num_captions"] == 1
        iterator = iter(images)
        while batch := list(itertools.islice(iterator, batch_size)):
            for captions in self.generate(self.encode(batch), **options):
                yield captions[0] if one_each else captions


    def explain(self, image: ImageSource, beam_size: int | None = None, style: str = SENTENCE, neutral: bool = False) -> Explanation:
        """The best caption of one image and, per word, where the decoder looked when it wrote it
        (`Explanation.maps`, (words, rows, columns) over the encoder grid; see `explain.py`).
        Needs an attention or transformer decoder on the pytorch backend."""
        check_explainable(self.decoder)  # before any work
        check_style(style)
        return self.explain_batch([read_image(image)], beam_size, 1, style, neutral)[1][0]

    def explain_batch(
        self, images: Sequence[Image.Image], beam_size: int | None = None, num_captions: int = 1, style: str = PLAIN, neutral: bool = False,
    ) -> tuple[list[list[Caption]], list[Explanation]]:
        """Upright RGB photos -> their n-best captions, as `generate` gives them (in `style`,
        gender-neutral if `neutral`), and the explanation of each photo's best caption, from one search."""
        check_explainable(self.decoder)
        beam_size = self.beam(beam_size)
        if not 1 <= num_captions <= beam_size <= MAX_BEAM:
            raise CaptionerError(f"explain needs 1 <= number of captions <= beam size <= {MAX_BEAM}, got {num_captions} and {beam_size}")
        features = self.encode_pixels(torch.stack([preprocess(image, self.preprocess_config) for image in images]))
        with one_cpu_thread(self.device):
            given, results = self._search(features, beam_size, num_captions)
            captions = written_captions(self._captions(given, results), style, neutral)
            explanations = []
            for row, (image, hypotheses, subject) in enumerate(zip(images, results, given.subjects)):
                tokens = hypotheses[0].tokens
                on_grid, share = attention_over_grid(self.decoder, one_row(given.features, row), tokens)
                words = token_words(self.vocabulary, tokens, subject.writing.renames if subject else None)
                explanations.append(explanation(captions[row][0].text, words, on_grid, share, self.decoder.config.grid_size, image))
        return captions, explanations


def decoding_beam(beam_size: int, num_captions: int, sampling: bool = False) -> int:
    """The beam that gives `num_captions` captions: `beam_size`, widened to `num_captions` (beam
    search returns one caption per beam); CaptionerError for numbers out of range."""
    if not 1 <= beam_size <= MAX_BEAM:
        raise CaptionerError(f"beam size must be between 1 and {MAX_BEAM}, got {beam_size}")
    most = MAX_SAMPLES if sampling else MAX_BEAM
    if not 1 <= num_captions <= most:
        raise CaptionerError(f"number of captions must be between 1 and {most}{'' if sampling else ' (the widest beam)'}, got {num_captions}")
    return beam_size if sampling else max(beam_size, num_captions)


def replace_text(caption: Caption, text: str) -> Caption:
    """`caption` with other words, everything else (score, tags, confidence) kept."""
    return replace(caption, text=text)


def written_captions(results: list[list[Caption]], style: str, neutral: bool) -> list[list[Caption]]:
    """n-best lists of plain captions written in `style`, gender-neutral if `neutral`."""
    if style == PLAIN and not neutral:
        return results
    return [[replace_text(caption, written(caption.text, style, neutral)) for caption in captions] for captions in results]
