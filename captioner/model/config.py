"""A model's config.json as one typed object, checked once: `ModelConfig.from_dict(data, where)`
and `to_dict()`. Every reader of a model (`Captioner`, the ONNX backend, export, evaluation,
Ray) reads this object, so each default lives here once.

    format_version, name, encoder    what the model is (name None: the folder's name)
    preprocess                       PreprocessConfig: how pixels are prepared for the encoder
    decoding                         DecodingSettings: the default beam, length penalty, repeat ban
    subject                          SubjectSettings: the concept a caption must name
    concepts                         ConceptSettings; None for a model without word detectors
    metadata                         every other section (training, dev, ...), kept as it is
    decoder                          DecoderConfig: the decoder's shape

A setting the file left out is written back only once it differs from its default, so a config
read and written again is the same JSON.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .config_checks import AT_LEAST_ONE, BEAM_SIZES, NOT_NEGATIVE, PROBABILITY, ConfigError, Limit, check_fields, check_value
from .decoders import DecoderConfig
from .encoders import ENCODERS, INPUT_SIZE, PreprocessConfig

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DecodingSettings:
    """The model's own decoding defaults, chosen on its dev set."""

    beam_size: int = 3  # the beam when the caller gives none
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3


@dataclass(frozen=True)
class ConceptSettings:
    """The word detectors and the decoding rules that read them (`generation/rules.py`)."""

    detector_words: list[str] = field(default_factory=list)  # the detectors' outputs, in order
    guarded_words: list[str] = field(default_factory=list)  # named only with ImageNet's evidence (`GuardRule`)
    hidden_dim: int = 256  # the detectors' hidden layer
    min_score: float = 0.1  # concepts below this probability are not given to the decoder
    person_threshold: float = 0.5  # person words only where a person is at least this likely
    tag_threshold: float = 0.3  # tags at or above this probability
    guard_floor: float = 0.02  # ImageNet evidence a guarded word needs
    animal_floor: float = 0.0  # animal words need this animal probability
    object_penalty: float = 0.0  # taken from object words ImageNet sees no trace of
    table_digest: str | None = None  # the concept table trained with (recorded, not checked)


@dataclass
class SubjectSettings:
    """The model config's `subject` block; chosen on the dev sets."""

    enabled: bool = True
    threshold: float = 0.4  # ImageNet probability a concept word needs to be required
    object_threshold: float = 0.8  # the same for COCO's everyday objects (a bun is not always a hot dog)
    with_people_threshold: float = 0.9  # the same where a person is likely: the people are the subject, not the lake or the scarf
    share: float = 0.5  # a more specific word must have this share of the most probable one's probability ("dog" 0.95 over "dingo" 0.5)
    lead: float = 1.5  # and this many times the probability of any word of other classes (a dog or a monkey: neither)
    max_rank: int = 4000  # words rarer than this (vocabulary rank) are written through a relative
    margin: float = 1.5  # how much length-normalised log-probability a caption may give up to name it

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "subject") -> "SubjectSettings":
        return cls(**check_fields(cls, data or {}, SUBJECT_LIMITS, where))

    def to_dict(self) -> dict:
        return asdict(self)


SUBJECT_LIMITS = {"share": PROBABILITY, "lead": Limit(1, 100), "threshold": PROBABILITY, "object_threshold": PROBABILITY, "with_people_threshold": Limit(0, 1.01), "max_rank": AT_LEAST_ONE, "margin": Limit(0, 100)}


PREPROCESS_LIMITS = {"mean": Limit(), "std": Limit(0, low_open=True)}
DECODING_LIMITS = {"beam_size": BEAM_SIZES, "no_repeat_ngram_size": NOT_NEGATIVE}
CONCEPT_LIMITS = {
    "min_score": PROBABILITY, "person_threshold": PROBABILITY, "tag_threshold": PROBABILITY, "guard_floor": PROBABILITY,
    "animal_floor": PROBABILITY, "object_penalty": Limit(0, 100), "hidden_dim": AT_LEAST_ONE,
}
SECTIONS = {"preprocess": PreprocessConfig, "decoding": DecodingSettings, "subject": SubjectSettings, "concepts": ConceptSettings}


@dataclass(frozen=True)
class ModelConfig:
    """A model's config.json; change it with `dataclasses.replace`."""

    encoder: str
    decoder: DecoderConfig
    name: str | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    subject: SubjectSettings = field(default_factory=SubjectSettings)
    concepts: ConceptSettings | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # other sections: training, dev, ...
    left_out: frozenset[str] = field(default=frozenset(), compare=False, repr=False)  # "section" or "section.key" the file did not give

    @classmethod
    def from_dict(cls, data: Any, where: object = "model config", redo: str = "retrain the model") -> "ModelConfig":
        """`data` (config.json's JSON) checked field by field; ConfigError names `where` and the field."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a JSON object of settings, not {type(data).__name__}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{where}: model format version {data.get('format_version')!r} is not {FORMAT_VERSION}; use the captioner version that wrote it, or {redo}")
        for key in ("encoder", "decoder"):
            if key not in data:
                raise ConfigError(f"{where}: missing {key!r}; the model folder is incomplete")
        if data["encoder"] not in ENCODERS:
            raise ConfigError(f"{where}: encoder must be one of {', '.join(sorted(ENCODERS))}, not {data['encoder']!r}")
        preprocess = PreprocessConfig(**check_fields(PreprocessConfig, data.get("preprocess", {}), PREPROCESS_LIMITS, f"{where}: preprocess"))
        if preprocess.input_size != INPUT_SIZE:  # the encoder's graph and the decoder's grid are fixed at it
            raise ConfigError(f"{where}: preprocess.input_size must be {INPUT_SIZE}, the size {data['encoder']} takes, not {preprocess.input_size!r}")
        known = {"format_version", "name", "encoder", "decoder", *SECTIONS}
        return cls(
            encoder=data["encoder"], name=check_value(data["name"], str, None, f"{where}: name") if "name" in data else None, preprocess=preprocess,
            decoding=DecodingSettings(**check_fields(DecodingSettings, data.get("decoding", {}), DECODING_LIMITS, str(where), section="decoding")),
            subject=SubjectSettings.from_dict(data.get("subject"), f"{where}: subject"),
            concepts=_concepts(data["concepts"], where) if "concepts" in data else None,
            metadata={key: value for key, value in data.items() if key not in known},
            decoder=DecoderConfig.from_dict(data["decoder"], f"{where}: decoder"),
            left_out=_left_out(data),
        )

    def to_dict(self) -> dict:
        """config.json's JSON: what `from_dict` reads back to an equal config."""
        data: dict[str, Any] = {"format_version": FORMAT_VERSION, "name": self.name, "encoder": self.encoder}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is not None and not (name in self.left_out and section == type(section)()):
                default = type(section)()
                data[name] = {key: value for key, value in asdict(section).items() if f"{name}.{key}" not in self.left_out or value != getattr(default, key)}
        data.update(self.metadata)
        data["decoder"] = self.decoder.to_dict()
        return {key: value for key, value in data.items() if not (key == "name" and value is None)}

    @property
    def concept_settings(self) -> ConceptSettings:
        """The concept settings, their defaults for a model without word detectors."""
        return self.concepts or ConceptSettings()

    def with_decoding(self, **changes) -> "ModelConfig":
        """This config with decoding settings changed, e.g. `with_decoding(length_penalty=0.8)`."""
        return replace(self, decoding=replace(self.decoding, **changes))


def _concepts(data: Any, where: object) -> ConceptSettings:
    settings = ConceptSettings(**check_fields(ConceptSettings, data, CONCEPT_LIMITS, str(where), section="concepts"))
    if "detector_words" not in data:
        raise ConfigError(f"{where}: 'concepts' must hold the detector words; the model folder is incomplete or from another version")
    for key in ("detector_words", "guarded_words"):
        if not all(isinstance(word, str) for word in getattr(settings, key)):
            raise ConfigError(f"{where}: concepts.{key} must be a list of words; retrain or re-export the model")
    return settings


def _left_out(data: dict) -> frozenset[str]:
    """The sections and settings `data` does not give (`to_dict` leaves them out while at their defaults)."""
    missing = set()
    for name, kind in SECTIONS.items():
        section = data.get(name)
        if not isinstance(section, dict):
            missing.add(name)
        missing.update(f"{name}.{item.name}" for item in fields(kind) if not isinstance(section, dict) or item.name not in section)
    return frozenset(missing)
