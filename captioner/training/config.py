"""The settings of a training run (`TrainingConfig`), checked in one place: a JSON config file
and the command line's `--set key=value` fill it; `from_dict` refuses a wrong type or range with one
line before any work or any write."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..model.config_checks import AT_LEAST_ONE, FRACTION_BELOW_ONE, NOT_NEGATIVE, POSITIVE, PROBABILITY, ConfigError, Limit, check_fields, check_value
from ..model.decoders import DecoderConfig
from ..model.encoders import ENCODERS


@dataclass
class TrainingConfig:
    """Everything a training run needs; a JSON config file and command-line flags fill it."""

    dataset: str = ""
    images: str | None = None
    output: str = "runs/model"
    cache: str = "cache"
    name: str = ""
    encoder: str = "efficientnet-lite2"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    min_count: int = 5
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 500
    label_smoothing: float = 0.1
    grad_clip: float = 2.0
    patience: int = 4
    flip_augment: bool = True
    limit: int = 0  # images per split; 0 = all
    seed: int = 0
    mixed_precision: bool = True  # bfloat16 autocast (CPU, and GPUs that have it), else float16 with a gradient scaler
    dev_beam_size: int = 1  # beam for the per-epoch dev score (1 = greedy, fastest)
    init_from: str = ""  # a model folder to start from (its vocabulary and decoder shape are kept)
    self_critical: bool = False  # train on CIDEr-D rewards of sampled captions instead of cross-entropy
    samples_per_image: int = 5  # self-critical: captions sampled per image (the others' mean is the baseline)
    # Concepts (used when decoder.max_concepts > 0) and caption text without photos:
    caption_text: list = field(default_factory=list)  # [{"path": TSV, "per_epoch": N}]: N text-only examples a epoch
    paired_caption_text: bool = True  # caption-text captions of a training photo (same Flickr id) become its captions
    text_image_prob: float = 0.5  # share of text-only examples shown a random training photo, which they must not describe
    paired_image_dropout: float = 0.0  # share of photo examples trained on their concepts alone (image hidden)
    concept_min_score: float = 0.1  # concepts below this probability are not given to the decoder
    person_threshold: float = 0.5  # person words only where the person probability reaches this
    object_penalty: float = 2.0  # log-probability taken from object words ImageNet sees no trace of (decoding)
    detector_words: int = 400
    detector_epochs: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingConfig":
        """A checked config: every setting's type and range, before any work or any write."""
        if isinstance(data, dict) and "bf16" in data:  # the name before mixed precision meant more than bfloat16
            data = {**{key: value for key, value in data.items() if key != "bf16"}, "mixed_precision": data.get("mixed_precision", data["bf16"])}
        data = check_fields(cls, data, TRAINING_LIMITS, "training config", nested=("decoder",))
        decoder = data.get("decoder", {})
        if not isinstance(decoder, dict):
            raise ConfigError(f"training config: decoder must be an object of decoder settings (e.g. {{\"kind\": \"transformer\"}}), not {decoder!r}")
        data["decoder"] = DecoderConfig.from_dict(decoder, "training config: decoder")
        if data.get("encoder", cls.encoder) not in ENCODERS:
            raise ConfigError(f"training config: encoder must be one of {', '.join(sorted(ENCODERS))}, not {data['encoder']!r}")
        if not data.get("output", cls.output):
            raise ConfigError("training config: output must name a run folder")
        for index, item in enumerate(data.get("caption_text", [])):
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or set(item) - {"path", "per_epoch"}:
                raise ConfigError(f"training config: caption_text[{index}] must be {{\"path\": FILE, \"per_epoch\": N}}, not {item!r}")
            check_value(item.get("per_epoch", 0), int, NOT_NEGATIVE, f"training config: caption_text[{index}].per_epoch")
        return cls(**data)


TRAINING_LIMITS = {
    "min_count": AT_LEAST_ONE, "epochs": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "learning_rate": POSITIVE,
    "weight_decay": NOT_NEGATIVE, "warmup_steps": NOT_NEGATIVE, "label_smoothing": FRACTION_BELOW_ONE, "grad_clip": POSITIVE,
    "patience": AT_LEAST_ONE, "limit": NOT_NEGATIVE, "seed": NOT_NEGATIVE, "dev_beam_size": Limit(1, 20),
    "samples_per_image": Limit(2), "text_image_prob": PROBABILITY, "paired_image_dropout": FRACTION_BELOW_ONE,
    "concept_min_score": PROBABILITY, "person_threshold": PROBABILITY, "object_penalty": Limit(0, 100),
    "detector_words": AT_LEAST_ONE, "detector_epochs": AT_LEAST_ONE,
}
