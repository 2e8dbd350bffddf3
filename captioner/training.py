"""Training a decoder on cached features: AdamW, warm-up + cosine decay, label smoothing,
gradient clipping, early stopping on dev CIDEr, atomic checkpoints and `--resume`; mixed
precision on a GPU, and data-parallel under `torchrun` (see `captioner.distributed`).

The trainer only needs a decoder with `forward(features, tokens)`; it never runs the CNN
(features come from the `FeatureCache`).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .caption_text import flickr30k_id, read_caption_text
from .checkpoint import atomic_save_tensors, atomic_write_json, load_model, save_model
from .cider import CiderD
from .config_checks import AT_LEAST_ONE, FRACTION_BELOW_ONE, NOT_NEGATIVE, POSITIVE, PROBABILITY, ConfigError, Limit, check_fields, check_value
from .concept_training import ConceptMatcher, ConceptSetup, TextExamples, fit_concepts
from .concepts import ConceptTable, concept_word_ids, imagenet_head, to_concepts
from .datasets import CaptionDataset, load_dataset
from .decoders import DecoderConfig, Features, caption_loss, create_decoder
from .cached_decoding import batch_features, decode_split
from .decoding import DecodingOptions, sample
from .devices import autocast as precision_context
from .devices import mixed_precision_dtype, resolve_device
from .distributed import ProcessGroup, join, share_weight
from .encoders import ENCODERS, create_encoder
from .errors import CaptionerError
from .extras import require
from .evaluation import require_scorer, score_captions
from .features import FeatureCache, feature_cache, records_with_features
from .json_files import read_json
from .run_folder import PendingRun, check_output_folder
from .vocabulary import Vocabulary, tokenize


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


def pad_batch(sequences: list[list[int]], vocabulary: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption ids -> (inputs `<bos> w1..wn`, targets `w1..wn <eos>`), both (B, T), padded with <pad>."""
    length = max(len(ids) for ids in sequences) + 1
    inputs = torch.full((len(sequences), length), vocabulary.pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), length), vocabulary.pad_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        inputs[row, : len(ids) + 1] = torch.tensor([vocabulary.bos_id] + ids)
        targets[row, : len(ids) + 1] = torch.tensor(ids + [vocabulary.eos_id])
    return inputs, targets


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of captions of similar length: far less padding, so far fewer wasted steps."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def learning_rate_at(step: int, total_steps: int, config: TrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(decoder: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, parameter in decoder.named_parameters():
        (decay if parameter.ndim >= 2 and "embedding" not in name and "position" not in name else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.98))


def self_critical_loss(decoder, features: Features, keys: list[str], reward: CiderD, vocabulary: Vocabulary, samples_per_image: int, max_length: int, autocast, model: torch.nn.Module | None = None) -> tuple[torch.Tensor, float]:
    """Self-critical sequence training (Rennie et al. 2017) with the mean of the other samples as
    baseline: raise the log-probability of sampled captions that beat their siblings' CIDEr-D.
    `model` runs the teacher-forced pass (under torchrun the DDP wrapper of `decoder`)."""
    if samples_per_image < 2:  # one sample has no siblings to be the baseline (0/0 would train on NaN)
        raise ValueError(f"self-critical training needs samples_per_image >= 2, got {samples_per_image}")
    options = DecodingOptions(max_length=max_length, no_repeat_ngram_size=0)
    groups = sample(decoder, features, num_captions=samples_per_image, temperature=1.0, top_p=1.0, options=options)
    sequences = [hypothesis.tokens for group in groups for hypothesis in group]
    rewards = torch.tensor([[reward.score(key, vocabulary.decode(h.tokens).split()) for h in group] for key, group in zip(keys, groups)])  # (B, K)
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (samples_per_image - 1)
    advantage = (rewards - baseline).flatten().to(features.pooled.device)  # (B*K,)
    inputs, targets = pad_batch(sequences, vocabulary)
    inputs, targets = inputs.to(features.pooled.device), targets.to(features.pooled.device)
    repeated = Features(features.grid.repeat_interleave(samples_per_image, dim=0), features.pooled.repeat_interleave(samples_per_image, dim=0))
    with autocast:
        logits = (model or decoder)(repeated, inputs)  # (B*K, T, V)
    token_log_probs = torch.log_softmax(logits.float(), dim=-1).gather(2, targets[..., None]).squeeze(2)  # (B*K, T)
    sequence_log_probs = (token_log_probs * (targets != vocabulary.pad_id)).sum(dim=1)
    return -(advantage * sequence_log_probs).mean(), rewards.mean().item()


def _fit_concepts(config: TrainingConfig, cache: FeatureCache, flip_cache, train_keys: list[str], dev_keys: list[str], train_captions: list[list[str]], head, decoder_config: DecoderConfig, log) -> ConceptSetup:
    """Word detectors and every photo's concepts, from the cached features."""
    train_rows, dev_rows = cache.rows(train_keys), cache.rows(dev_keys)
    grids = [torch.from_numpy(np.ascontiguousarray(cache.grid[train_rows]))]
    if flip_cache is not None:
        grids.append(torch.from_numpy(np.ascontiguousarray(flip_cache.grid[flip_cache.rows(train_keys)])))
    return fit_concepts(
        ConceptTable.load(), head, grids, torch.from_numpy(np.ascontiguousarray(cache.pooled[train_rows])),
        [[tokenize(c) for c in captions] for captions in train_captions],
        torch.from_numpy(np.ascontiguousarray(cache.grid[dev_rows])), torch.from_numpy(np.ascontiguousarray(cache.pooled[dev_rows])),
        decoder_config.feature_dim, decoder_config.max_concepts, config.concept_min_score, config.person_threshold,
        config.detector_words, config.detector_epochs, config.seed, log, store=cache.folder,
    )


def _concept_batch(indices: np.ndarray, samples: list, text: list, setup: ConceptSetup, train_row_index: dict[int, int], train_rows: np.ndarray):
    """Rows to read, caption ids, concept lists and has-image flags for a batch mixing photo
    examples (indices below len(samples)) and caption-text examples (the rest)."""
    rows, sequences, concepts, has_image = [], [], [], []
    for index in indices.tolist():
        if index < len(samples):
            row, ids = samples[index]
            rows.append(row), sequences.append(ids), concepts.append(setup.train_concepts[train_row_index[row]]), has_image.append(True)
        else:
            ids, drawn, shown = text[index - len(samples)]
            rows.append(int(train_rows[max(shown, 0)])), sequences.append(ids), concepts.append(drawn), has_image.append(shown >= 0)
    return np.array(rows), sequences, concepts, torch.tensor(has_image)


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [entry["epoch"] for entry in history]
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [entry["train_loss"] for entry in history], marker="o")
    loss_axis.set(title="train loss", xlabel="epoch")
    score_axis.plot(epochs, [entry["dev_bleu4"] for entry in history], marker="o", label="dev BLEU-4")
    score_axis.plot(epochs, [entry["dev_cider"] for entry in history], marker="o", label="dev CIDEr")
    score_axis.set(title="dev scores", xlabel="epoch")
    score_axis.legend()
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    temporary.replace(path)


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch random state: the CPU generator's, and the GPU's when it trains on one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _save_training_state(folder: Path, optimizer: torch.optim.Optimizer, progress: dict, random_states: list[dict[str, torch.Tensor]]) -> None:
    """Optimizer moments and every process's random state (`rng.torch`, `rng.cuda` for rank 0,
    `rng.torch.rank1`... for the others) in safetensors; progress and settings in JSON."""
    state = optimizer.state_dict()
    tensors = {f"optimizer.{index}.{name}": value for index, entries in state["state"].items() for name, value in entries.items() if torch.is_tensor(value)}
    for rank, states in enumerate(random_states):
        tensors.update({f"rng.{name}{f'.rank{rank}' if rank else ''}": value for name, value in states.items()})
    atomic_save_tensors(folder / "optimizer.safetensors", tensors)
    atomic_write_json(folder / STATE, {**progress, "param_groups": state["param_groups"]})


RESUME_REMEDY = "the run cannot be resumed from it: put back the run's own file, or start the run again with --force"
STATE = "training_state.json"


def read_training_state(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The progress and optimizer state `_save_training_state` wrote in `folder`, checked (on
    --resume, before any work): one line naming the file and the field where they are damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / STATE
    progress = read_json(path, RESUME_REMEDY)
    missing = [key for key in ("epoch", "step", "best_cider", "bad_epochs", "history", "param_groups") if key not in progress]
    if missing:
        raise CaptionerError(f"{path}: lacks {', '.join(missing)}; {RESUME_REMEDY}")
    try:
        for key, kind, limit in (("epoch", int, AT_LEAST_ONE), ("step", int, NOT_NEGATIVE), ("best_cider", float, None), ("bad_epochs", int, NOT_NEGATIVE), ("history", list, None), ("param_groups", list, None)):
            check_value(progress.get(key), kind, limit, f"{path}: {key}")
        for key in ("schedule", "grad_scaler"):
            check_value(progress.get(key), dict | None, None, f"{path}: {key}")
    except ConfigError as error:
        raise CaptionerError(f"{error}; {RESUME_REMEDY}") from None
    schedule = progress.get("schedule")
    if schedule is not None and not all(type(schedule.get(key)) is int and schedule[key] > 0 for key in ("total_steps", "epochs")):
        raise CaptionerError(f"{path}: schedule must hold total_steps and epochs, whole numbers >= 1, not {schedule!r}; {RESUME_REMEDY}")
    if not progress["param_groups"] or not all(isinstance(group, dict) and isinstance(group.get("params"), list) for group in progress["param_groups"]):
        raise CaptionerError(f"{path}: param_groups must be the optimizer's groups of parameters; {RESUME_REMEDY}")
    if not all(isinstance(entry, dict) for entry in progress["history"]):
        raise CaptionerError(f"{path}: history must be a list of the epochs' scores; {RESUME_REMEDY}")
    try:
        tensors = load_file(folder / "optimizer.safetensors")
    except (SafetensorError, OSError) as error:
        raise CaptionerError(f"{folder / 'optimizer.safetensors'}: unreadable ({str(error).splitlines()[0][:200]}); {RESUME_REMEDY}") from None
    return progress, tensors


def _load_training_state(folder: Path, saved: tuple[dict, dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer, device: torch.device, rank: int = 0, seed: int = 0) -> dict:
    """Restore the optimizer and this process's random state from `saved` (`read_training_state`);
    return the saved progress. A rank the run did not have before (more processes now) gets a fresh seed."""
    progress, tensors = dict(saved[0]), saved[1]
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value  # load_state_dict moves them to the parameters' device
    try:
        optimizer.load_state_dict({"state": state, "param_groups": progress.pop("param_groups")})
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CaptionerError(f"{folder / STATE}: the optimizer state does not fit the run's model ({str(error).splitlines()[0][:200]}); {RESUME_REMEDY}") from None
    suffix = f".rank{rank}" if rank else ""
    if f"rng.torch{suffix}" in tensors:
        torch.set_rng_state(tensors[f"rng.torch{suffix}"])
    else:
        torch.manual_seed(seed + rank)
    if device.type == "cuda" and f"rng.cuda{suffix}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"], device)
    return progress


def train(config: TrainingConfig, resume: bool = False, force: bool = False, progress: bool = True, log=print, device: str | torch.device | None = None) -> Path:
    """Train a decoder; returns the folder of the best model (by dev CIDEr).

    `device` is auto (a CUDA GPU when present), cpu, cuda or cuda:N. Under `torchrun` each process
    trains on its share of every batch; rank 0 alone writes files, logs and shows progress.
    """
    group, device = join(resolve_device(device))  # a device that is not here is refused before any write
    try:
        return _check_and_train(config, resume, force, progress and group.is_main, log if group.is_main else _silent, group, device)
    finally:
        group.cleanup()


def _silent(*args, **kwargs) -> None:
    """The log of processes other than rank 0."""


def _check_and_train(config: TrainingConfig, resume: bool, force: bool, progress: bool, log, group: ProcessGroup, device: torch.device) -> Path:
    """`train` on every process: check every setting and input, then (rank 0) set the run folder up."""
    output = Path(config.output)
    check_output_folder(output, resume, force)
    saved_state = read_training_state(output / "last") if resume else None
    require_scorer()  # the dev score of every epoch needs it: refuse now, not after the first epoch
    require("matplotlib", "train", "the training curves (history.png)")
    dataset = load_dataset(config.dataset, config.images).limit(config.limit)  # validate before writing anything
    train_records, dev_records = dataset.split("train"), dataset.split("dev")
    if not train_records or not dev_records:
        raise CaptionerError(f"{config.dataset}: needs images in both the train and the dev split (found {len(train_records)} and {len(dev_records)})")
    uses_concepts = config.decoder.max_concepts > 0
    if config.caption_text and not uses_concepts:
        raise CaptionerError("caption_text needs a decoder with concept tokens; set decoder.max_concepts (e.g. 16)")
    if uses_concepts and (config.decoder.kind != "transformer" or config.self_critical):
        raise CaptionerError("concept tokens work with the transformer decoder and cross-entropy training only")
    examples_per_step = max(1, config.batch_size // config.samples_per_image) if config.self_critical else config.batch_size
    if examples_per_step < group.world_size:
        raise CaptionerError(f"batch_size {config.batch_size} gives {examples_per_step} examples a step for {group.world_size} processes; raise batch_size (it is the global batch, shared out) or start fewer processes")
    text_files = [(read_caption_text(item["path"]), int(item.get("per_epoch", 0))) for item in config.caption_text]
    # A resumed run keeps its own vocabulary and decoder shape, whatever the data says now.
    start_from = output / "last" if resume else config.init_from
    initial = load_model(start_from, device) if start_from else None
    if initial is not None and initial[2]["encoder"] != config.encoder:
        raise CaptionerError(f"{start_from} was trained on {initial[2]['encoder']} features, not {config.encoder}; set encoder to match")
    group.barrier()  # every process has checked everything before rank 0 writes
    pending = PendingRun(output)
    if not resume and group.is_main:
        pending.start(replace=force)  # an earlier run is moved aside, not deleted, until this one has a checkpoint
    try:
        return _train(config, CheckedInputs(dataset, train_records, dev_records, text_files, initial, saved_state), resume, progress, log, pending, group, device)
    except BaseException:
        if not resume and group.is_main:
            pending.abandon()
        raise


class CheckedInputs(NamedTuple):
    """What `train` read and checked before writing anything."""

    dataset: CaptionDataset
    train_records: list
    dev_records: list
    text_files: list  # [(photos with captions, examples per epoch)]
    initial: tuple | None  # (decoder, vocabulary, config) of the run's last checkpoint on --resume, else of `init_from`
    saved_state: tuple | None  # on --resume, the run's progress and optimizer state (`read_training_state`)


def _train(config: TrainingConfig, inputs: CheckedInputs, resume: bool, progress: bool, log, pending: PendingRun, group: ProcessGroup, device: torch.device) -> Path:
    """The training loop of `train`, once every setting and input has been checked."""
    dataset, train_records, dev_records, text_files, initial, saved_state = inputs
    output = Path(config.output)
    uses_concepts = config.decoder.max_concepts > 0
    if group.is_main:
        output.mkdir(parents=True, exist_ok=True)

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if initial is not None:
        initial, vocabulary, _ = initial
        decoder_config, max_length = initial.config, initial.config.max_length
    else:
        text_captions = (c for photos, _ in text_files for photo in photos for c in photo.captions)
        vocabulary = Vocabulary.build([c for r in train_records for c in r.captions] + list(text_captions), config.min_count)
        lengths = sorted(len(tokenize(c)) for r in train_records for c in r.captions)
        max_length = max(1, lengths[int(0.99 * (len(lengths) - 1))])
        decoder_config = DecoderConfig(**{**config.decoder.to_dict(), "vocab_size": len(vocabulary), "max_length": max_length})

    encoder = create_encoder(config.encoder)
    decoder_config.feature_dim, decoder_config.grid_size = encoder.feature_dim, encoder.grid_size**2
    train_keys = [record.image for record in train_records]
    with group.main_first():  # rank 0 builds the caches; the others then open them
        cache = feature_cache(dataset, config.encoder, config.cache, train_keys + [r.image for r in dev_records], encoder=encoder, progress=progress, device=device, log=log)
        flip_cache = feature_cache(dataset, config.encoder, config.cache, train_keys, flip=True, encoder=encoder, progress=progress, device=device, log=log) if config.flip_augment else None
    train_records, unreadable_train = records_with_features(train_records, cache, *([flip_cache] if flip_cache is not None else []))
    dev_records, unreadable_dev = records_with_features(dev_records, cache)
    if unreadable_train or unreadable_dev:
        log(f"unreadable photos left out: {len(unreadable_train)} train, {len(unreadable_dev)} dev (listed in {cache.folder / 'unreadable.txt'})")
        if not train_records or not dev_records:
            raise CaptionerError(f"{config.dataset}: no readable photos left in the {'train' if not train_records else 'dev'} split; see {cache.folder / 'unreadable.txt'}")
    train_keys = [record.image for record in train_records]
    flip_row_of = np.full(len(cache.keys), -1, dtype=np.int64)  # a cache row -> the row of its mirrored photo in flip_cache
    if flip_cache is not None:
        flip_row_of[cache.rows(train_keys)] = flip_cache.rows(train_keys)
    preprocess = encoder.preprocess_config.to_dict()
    head = imagenet_head(encoder) if uses_concepts else None
    del encoder

    train_captions = [list(record.captions) for record in train_records]
    if uses_concepts and config.paired_caption_text:
        train_ids = {flickr30k_id(record.image): index for index, record in enumerate(train_records)}
        paired = [(train_ids[flickr30k_id(photo.image)], photo) for photos, _ in text_files for photo in photos if flickr30k_id(photo.image) in train_ids]
        for index, photo in paired:
            train_captions[index] += photo.captions
        paired_names = {id(photo) for _, photo in paired}
        text_files = [([photo for photo in photos if id(photo) not in paired_names], per_epoch) for photos, per_epoch in text_files]
        log(f"caption text: {sum(len(p.captions) for _, p in paired)} captions of {len(paired)} training photos added as their captions")
    samples = [(int(row), ids[:max_length]) for captions, row in zip(train_captions, cache.rows([r.image for r in train_records])) for ids in (vocabulary.encode(c) for c in captions) if ids]
    lengths_of_samples = np.array([len(ids) for _, ids in samples])
    dev_keys = [record.image for record in dev_records]
    dev_references = {record.image: record.captions for record in dev_records}

    concept_setup, dev_concepts, text_examples = None, None, None
    if uses_concepts:
        with group.main_first():  # rank 0 fits the word detectors and stores them beside the cache; the others load them
            concept_setup = _fit_concepts(config, cache, flip_cache, train_keys, dev_keys, train_captions, head, decoder_config, log)
        word_ids, concept_sources = concept_word_ids(concept_setup.detector.words, vocabulary), concept_setup.detector.sources
        dev_concepts = to_concepts(concept_setup.dev_concepts, word_ids, concept_sources, decoder_config.max_concepts)
        text_examples = TextExamples(text_files, vocabulary, ConceptMatcher(concept_setup.detector.words), max_length)
        if group.is_main:
            atomic_write_json(output / "concepts_report.json", concept_setup.report)

    decoder = initial if initial is not None else create_decoder(decoder_config).to(device)
    model = decoder  # what the training step runs: under torchrun the DDP wrapper that averages gradients
    if group.is_distributed:
        model = DistributedDataParallel(decoder, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(config.seed + group.rank)  # rank 0 draws as one process would; the others draw other dropout masks
    optimizer = make_optimizer(decoder, config)
    if config.self_critical:
        reward = CiderD({record.image: [tokenize(c) for c in record.captions] for record in train_records})
        train_rows = cache.rows(train_keys)
        images_per_batch = max(1, config.batch_size // config.samples_per_image)

        def plan(rng: np.random.Generator) -> list[np.ndarray]:
            order = rng.permutation(len(train_records))
            return [order[i : i + images_per_batch] for i in range(0, len(order), images_per_batch)]
    elif uses_concepts:
        text_per_epoch = sum(per_epoch for _, per_epoch in text_files)
        epoch_lengths = np.concatenate([lengths_of_samples, np.full(text_per_epoch, int(np.median(lengths_of_samples)))])

        def plan(rng: np.random.Generator) -> list[np.ndarray]:
            return length_bucketed_batches(epoch_lengths, config.batch_size, rng)
    else:
        def plan(rng: np.random.Generator) -> list[np.ndarray]:
            return length_bucketed_batches(lengths_of_samples, config.batch_size, rng)
    steps_per_epoch = len(plan(np.random.default_rng(0)))
    total_steps = steps_per_epoch * config.epochs
    model_config = {
        "name": config.name or f"{dataset.name}-{decoder_config.kind}-{config.encoder}",
        "encoder": config.encoder,
        "preprocess": preprocess,
        "decoding": {"beam_size": 3, "length_penalty": 1.0, "no_repeat_ngram_size": 3},
        "training": {"dataset": dataset.name, "images": len(train_records), "captions": len(samples)},
    }
    log(f"{len(train_records)} train images, {len(samples)} captions, {len(dev_records)} dev images; vocabulary {len(vocabulary)} words; max length {max_length}")
    precision = mixed_precision_dtype(device) if config.mixed_precision else None
    processes = f"; {group.world_size} processes, about {config.batch_size / group.world_size:g} examples each a step" if group.is_distributed else ""
    log(f"decoder {decoder_config.kind}: {sum(p.numel() for p in decoder.parameters()) / 1e6:.1f} M parameters; device {device}{f', {precision} mixed precision' if precision else ''}{processes}")

    if uses_concepts:
        train_row_index = {int(row): index for index, row in enumerate(cache.rows(train_keys))}
        model_config["concepts"] = {
            "table_digest": concept_setup.detector.table.digest, "detector_words": concept_setup.detector.detector_words,
            "hidden_dim": concept_setup.detector.detector.hidden.out_features,
            "min_score": config.concept_min_score, "person_threshold": config.person_threshold,
            "guarded_words": concept_setup.report["guarded_words"], "guard_floor": concept_setup.report["guard_floor"],
            "animal_floor": concept_setup.report["animal_floor"], "object_penalty": config.object_penalty,
        }
    history: list[dict] = []
    start_epoch, step, best_cider, bad_epochs = 1, 0, -1.0, 0
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)  # float16 gradients underflow unscaled
    if resume:  # the decoder is the run's last checkpoint already
        state = _load_training_state(output / "last", saved_state, optimizer, device, group.rank, config.seed)
        start_epoch, step, best_cider, bad_epochs, history = state["epoch"] + 1, state["step"], state["best_cider"], state["bad_epochs"], state["history"]
        total_steps = _planned_total_steps(state.get("schedule"), total_steps, config.epochs, log)
        if scaler.is_enabled() and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        log(f"resuming after epoch {state['epoch']} (best dev CIDEr {best_cider:.3f})")
    if group.is_main:  # written once the resumed state is known to fit: a refused --resume leaves the run as it was
        atomic_write_json(output / "training_config.json", config.to_dict())

    options = DecodingOptions(max_length=max_length)
    autocast = precision_context(device, precision)
    for epoch in range(start_epoch, config.epochs + 1):
        if bad_epochs >= config.patience:
            break
        started = time.time()
        model.train(not config.self_critical)  # self-critical samples and scores without dropout
        batches = plan(np.random.default_rng(config.seed + epoch))
        flips = np.random.default_rng(config.seed + 1000 + epoch).random(len(epoch_lengths) if uses_concepts else len(samples)) < 0.5
        if uses_concepts:
            epoch_text = text_examples.draw(np.random.default_rng(config.seed + 2000 + epoch), concept_setup, decoder_config.max_concepts, len(train_keys), config.text_image_prob)
            epoch_lengths = np.concatenate([lengths_of_samples, [len(ids) for ids, _, _ in epoch_text]]).astype(int)
            batches = plan(np.random.default_rng(config.seed + epoch))
        units_of_items = np.ones(len(train_records)) if config.self_critical else (epoch_lengths if uses_concepts else lengths_of_samples) + 1  # photos, or target tokens with <eos>
        total_loss, total_reward, count = 0.0, 0.0, 0
        hide_rng = np.random.default_rng(config.seed + 3000 + epoch)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress, leave=False)
        for batch_number in bar:
            batch = batches[batch_number]  # the global batch, the same in every process
            positions = group.share(np.arange(len(batch)))  # this process's share of it (all of it in one process)
            weight = share_weight(units_of_items[batch], group.rank, group.world_size)
            if len(positions) == 0:  # fewer examples than processes: one that counts for nothing, so every process steps
                positions = np.arange(1)
            indices = batch[positions]
            if uses_concepts:
                rows, sequences, concepts, has_image = _concept_batch(indices, samples, epoch_text, concept_setup, train_row_index, cache.rows(train_keys))
                if config.paired_image_dropout > 0:  # photo examples captioned from their concepts alone
                    has_image &= ~torch.from_numpy((hide_rng.random(len(batch))[positions] < config.paired_image_dropout) & (indices < len(samples)))
            else:
                rows = train_rows[indices] if config.self_critical else np.array([samples[i][0] for i in indices])
                sequences = None if config.self_critical else [samples[i][1] for i in indices]
            features = batch_features(cache, rows, device, flip_cache, np.where(flips[indices], flip_row_of[rows], -1))  # each row from the copy it uses
            if uses_concepts:
                features = features._replace(concepts=to_concepts(concepts, word_ids, concept_sources, decoder_config.max_concepts).to(device), has_image=has_image.to(device))
            for parameters in optimizer.param_groups:
                parameters["lr"] = learning_rate_at(step, total_steps, config)
            if config.self_critical:
                keys = [train_keys[i] for i in indices]
                loss, mean_reward = self_critical_loss(decoder, features, keys, reward, vocabulary, config.samples_per_image, max_length, autocast, model)
                total_reward += mean_reward * weight if group.is_distributed else mean_reward
            else:
                inputs, targets = pad_batch(sequences, vocabulary)
                with autocast:
                    logits = model(features, inputs.to(device))  # (B, T, V)
                loss = caption_loss(logits.float(), targets.to(device), config.label_smoothing)
            if group.is_distributed:  # DDP averages the processes' gradients: weigh each share by what it holds of the batch
                loss = loss * weight
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            total_loss, count = total_loss + loss.item(), count + 1
            bar.set_postfix(loss=f"{total_loss / count:.3f}", **({"reward": f"{total_reward / count:.3f}"} if config.self_critical else {}))
        bar.close()
        train_seconds = time.time() - started
        if group.is_distributed:  # the batches' means: the processes' weighted shares, summed, over the number of processes
            total_loss, total_reward = (total / group.world_size for total in group.sum([total_loss, total_reward]))
        entry = None
        if group.is_main:  # rank 0 scores the dev split; every process follows its decision
            hypotheses = decode_split(decoder, cache, dev_keys, device, config.dev_beam_size, options, concepts=dev_concepts)
            scores = score_captions(dev_references, {key: vocabulary.decode(tokens) for key, tokens in zip(dev_keys, hypotheses)}, metrics=("BLEU-4", "CIDEr"))
            entry = {"epoch": epoch, "train_loss": total_loss / count, "dev_bleu4": scores["BLEU-4"], "dev_cider": scores["CIDEr"], "learning_rate": optimizer.param_groups[0]["lr"], "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - started, 1)}
            if config.self_critical:
                entry["train_reward"] = total_reward / count
        entry = group.broadcast(entry)
        random_states = group.gather(random_state(device))
        history.append(entry)
        improved = entry["dev_cider"] > best_cider
        if improved:
            best_cider, bad_epochs = entry["dev_cider"], 0
        else:
            bad_epochs += 1
        if not group.is_main:
            continue
        if improved:
            save_model(output / "best", decoder, vocabulary, {**model_config, "dev": {"epoch": epoch, "BLEU-4": entry["dev_bleu4"], "CIDEr": entry["dev_cider"], "beam_size": config.dev_beam_size}}, concept_detector=concept_setup and concept_setup.detector)
        save_model(output / "last", decoder, vocabulary, model_config, concept_detector=concept_setup and concept_setup.detector)
        progress_state = {"epoch": epoch, "step": step, "best_cider": best_cider, "bad_epochs": bad_epochs, "history": history, "schedule": {"total_steps": total_steps, "epochs": config.epochs}}
        _save_training_state(output / "last", optimizer, {**progress_state, **({"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {})}, random_states)
        pending.commit()  # the new run has a checkpoint now; the run it replaces can go
        atomic_write_json(output / "history.json", history)
        plot_history(history, output / "history.png")
        log(f"epoch {epoch}: loss {entry['train_loss']:.3f}  dev BLEU-4 {entry['dev_bleu4']:.3f}  CIDEr {entry['dev_cider']:.3f}  ({entry['seconds']:.0f} s){'  *best*' if improved else ''}")
    return output / "best"


def _planned_total_steps(schedule: dict | None, steps_now: int, epochs: int, log) -> int:
    """The learning-rate schedule's length on --resume: as first planned, even if the data changed;
    stretched in proportion when the run is resumed with another number of epochs."""
    if schedule is None:  # a run saved before the schedule was recorded
        return steps_now
    if schedule["epochs"] == epochs:
        return schedule["total_steps"]
    total_steps = round(schedule["total_steps"] * epochs / schedule["epochs"])
    log(f"learning-rate schedule: {schedule['epochs']} -> {epochs} epochs, {schedule['total_steps']} -> {total_steps} steps")
    return total_steps

