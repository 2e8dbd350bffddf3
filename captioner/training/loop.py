"""Training a decoder on cached features: AdamW, warm-up + cosine decay, label smoothing,
gradient clipping, early stopping on dev CIDEr, atomic checkpoints and `--resume`; mixed
precision on a GPU, and data-parallel under `torchrun` (see `captioner.training.distributed`).

The trainer only needs a decoder with `forward(features, tokens)`; it never runs the CNN
(features come from the `FeatureCache`). Read it top down: `train` checks every setting and input
(`_check_and_train`), `_train` sets the run up (data, decoder, batch plan, loss, optimizer, the
progress so far) and `_run_epochs` is the training loop. The batches are planned in
`training_batches`, the losses in `training_losses`, what `--resume` reads in `training_state`.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..api import Captioner
from ..atomic_files import atomic_write_json
from ..data.caption_text import flickr30k_id, read_caption_text
from ..data.datasets import CaptionDataset, load_dataset
from ..data.features import FeatureCache, feature_cache, records_with_features
from ..devices import autocast as precision_context
from ..devices import mixed_precision_dtype, resolve_device
from ..errors import CaptionerError
from ..evaluation.cider import CiderD
from ..evaluation.scoring import caption_split, photo_saturations, require_scorer, score_captions
from ..extras import require
from ..model.checkpoint import load_model, save_model
from ..model.concepts import ConceptDetector, ConceptTable, imagenet_head
from ..model.config import ConceptSettings, ModelConfig
from ..model.decoders import DecoderConfig, create_decoder
from ..model.encoders import create_encoder
from ..model.vocabulary import Vocabulary, tokenize
from ..run_folder import PendingRun, check_output_folder
from .batches import Batch, BatchPlan, CaptionPlan, ConceptPlan, PhotoFeatures, SelfCriticalPlan
from .concepts import ConceptMatcher, ConceptSetup, TextExamples, fit_concepts
from .config import TrainingConfig
from .distributed import ProcessGroup, join, share_weight
from .losses import cross_entropy_loss, self_critical_loss
from .state import Progress, load_training_state, random_state, read_training_state, save_training_state


def learning_rate_at(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine decay to zero at `total_steps`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(decoder: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on biases, norms or embeddings)."""
    decay, no_decay = [], []
    for name, parameter in decoder.named_parameters():
        (decay if parameter.ndim >= 2 and "embedding" not in name and "position" not in name else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.98))


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
    if initial is not None and initial[2].encoder != config.encoder:
        raise CaptionerError(f"{start_from} was trained on {initial[2].encoder} features, not {config.encoder}; set encoder to match")
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


class Checkpoints(NamedTuple):
    """What rank 0 writes after each epoch besides the weights and the optimizer state."""

    output: Path
    vocabulary: Vocabulary
    model_config: ModelConfig  # config.json (`save_model` gives it the decoder's shape)
    concept_detector: ConceptDetector | None  # a concept model's word detectors, saved beside its weights
    pending: PendingRun  # the run this one replaces, kept until the first checkpoint is written


@dataclass
class Run:
    """Everything the training loop works with; `_train` sets it up."""

    config: TrainingConfig
    group: ProcessGroup
    device: torch.device
    decoder: torch.nn.Module  # the decoder being trained
    model: torch.nn.Module  # what a step runs: the decoder, or under torchrun its DDP wrapper, which averages the gradients
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # scales float16 losses so that their gradients do not underflow; off otherwise
    plan: BatchPlan
    loss: Callable[[Batch], tuple[torch.Tensor, float | None]]  # a batch -> its mean loss, and its mean reward (self-critical) or None
    dev_score: Callable[[], dict[str, float]] | None  # rank 0: the dev split's BLEU-4 and CIDEr, captioned as `captioner evaluate` does
    checkpoints: Checkpoints
    log: Callable
    show_progress: bool


def _train(config: TrainingConfig, inputs: CheckedInputs, resume: bool, show_progress: bool, log, pending: PendingRun, group: ProcessGroup, device: torch.device) -> Path:
    """Set the run up once every setting and input has been checked (data, vocabulary, decoder,
    batch plan, loss, optimizer, the progress so far), then train (`_run_epochs`). The order keeps
    every random draw of a run (and of a resumed one) where it was."""
    output = Path(config.output)
    if group.is_main:
        output.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    vocabulary, decoder_config = _vocabulary_and_shape(config, inputs)
    encoder = create_encoder(config.encoder)
    decoder_config.feature_dim, decoder_config.grid_size = encoder.feature_dim, encoder.grid_size**2
    cache, flip_cache, train_records, dev_records = _feature_caches(config, inputs, encoder, group, show_progress, device, log)
    train_keys = [record.image for record in train_records]
    train_rows = cache.rows(train_keys)
    train_captions, text_files = _training_captions(config, train_records, inputs.text_files, log)
    max_length = decoder_config.max_length
    samples = [(int(row), ids[:max_length]) for captions, row in zip(train_captions, train_rows) for ids in (vocabulary.encode(c) for c in captions) if ids]
    concept_setup = None
    if config.decoder.max_concepts > 0:
        with group.main_first():  # rank 0 fits the word detectors and stores them beside the cache; the others load them
            concept_setup = _fit_concepts(config, cache, flip_cache, train_keys, [r.image for r in dev_records], train_captions, imagenet_head(encoder), decoder_config, log)
        if group.is_main:
            atomic_write_json(output / "concepts_report.json", concept_setup.report)

    decoder = inputs.initial[0] if inputs.initial is not None else create_decoder(decoder_config).to(device)
    model = decoder
    if group.is_distributed:
        model = DistributedDataParallel(decoder, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(config.seed + group.rank)  # rank 0 draws as one process would; the others draw other dropout masks
    optimizer = make_optimizer(decoder, config)
    plan = _batch_plan(config, samples, PhotoFeatures(cache, flip_cache, train_keys, device), vocabulary, train_keys, train_rows, concept_setup, text_files, max_length)
    model_config = _model_config(config, inputs.dataset.name, encoder, len(train_records), len(samples), decoder_config, concept_setup)
    log(f"{len(train_records)} train images, {len(samples)} captions, {len(dev_records)} dev images; vocabulary {len(vocabulary)} words; max length {max_length}")
    precision = mixed_precision_dtype(device) if config.mixed_precision else None
    processes = f"; {group.world_size} processes, about {config.batch_size / group.world_size:g} examples each a step" if group.is_distributed else ""
    log(f"decoder {decoder_config.kind}: {sum(p.numel() for p in decoder.parameters()) / 1e6:.1f} M parameters; device {device}{f', {precision} mixed precision' if precision else ''}{processes}")

    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)  # float16 gradients underflow unscaled
    progress = Progress(plan.steps_per_epoch() * config.epochs, config.epochs)
    if resume:  # the decoder is the run's last checkpoint already
        progress = _resumed_progress(config, inputs.saved_state, optimizer, scaler, group, device, progress.total_steps, log)
    if group.is_main:  # written once the resumed state is known to fit: a refused --resume leaves the run as it was
        atomic_write_json(output / "training_config.json", config.to_dict())
    dev_score = None
    if group.is_main:  # rank 0 scores the dev split with the model as it would be loaded: its decoding rules included
        captioner = Captioner(encoder, decoder, vocabulary, model_config, device=device, concept_detector=concept_setup and concept_setup.detector)
        dev_score = _dev_scorer(captioner, inputs.dataset, cache, dev_records, config.dev_beam_size)
    loss = _loss_function(config, decoder, model, vocabulary, train_records, max_length, precision_context(device, precision))
    checkpoints = Checkpoints(output, vocabulary, model_config, concept_setup and concept_setup.detector, pending)
    _run_epochs(Run(config, group, device, decoder, model, optimizer, scaler, plan, loss, dev_score, checkpoints, log, show_progress), progress)
    return output / "best"


def _run_epochs(run: Run, progress: Progress) -> None:
    """The training loop: each epoch's steps, then its dev score and (rank 0) its checkpoints;
    it stops early after `patience` epochs without a better dev CIDEr."""
    config, group, optimizer, scaler = run.config, run.group, run.optimizer, run.scaler
    steps_per_epoch = run.plan.steps_per_epoch()
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        if progress.bad_epochs >= config.patience:
            break
        started = time.time()
        run.model.train(not config.self_critical)  # self-critical samples and scores without dropout
        batches = run.plan.batches(epoch)
        total_loss, total_reward, count = 0.0, 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not run.show_progress, leave=False)
        for batch_number in bar:
            batch = batches[batch_number]  # the global batch, the same in every process
            share = group.share(np.arange(len(batch)))  # this process's share of it (all of it in one process)
            weight = share_weight(run.plan.units[batch], group.rank, group.world_size)
            if len(share) == 0:  # fewer examples than processes: one that counts for nothing, so every process steps
                share = np.arange(1)
            examples = run.plan.batch(batch, share)
            for parameters in optimizer.param_groups:
                parameters["lr"] = learning_rate_at(progress.step, progress.total_steps, config)
            loss, reward = run.loss(examples)
            if group.is_distributed:  # DDP averages the processes' gradients: weigh each share by what it holds of the batch
                loss = loss * weight
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(run.decoder.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            progress.step += 1
            total_loss, count = total_loss + loss.item(), count + 1
            if reward is not None:
                total_reward += reward * weight if group.is_distributed else reward
            bar.set_postfix(loss=f"{total_loss / count:.3f}", **({"reward": f"{total_reward / count:.3f}"} if reward is not None else {}))
        bar.close()
        train_seconds = time.time() - started
        if group.is_distributed:  # the batches' means: the processes' weighted shares, summed, over the number of processes
            total_loss, total_reward = (total / group.world_size for total in group.sum([total_loss, total_reward]))
        entry = None
        if group.is_main:  # rank 0 scores the dev split; every process follows its decision
            scores = run.dev_score()
            entry = {"epoch": epoch, "train_loss": total_loss / count, "dev_bleu4": scores["BLEU-4"], "dev_cider": scores["CIDEr"], "learning_rate": optimizer.param_groups[0]["lr"],
                     "train_seconds": round(train_seconds, 1), "seconds": round(time.time() - started, 1), **({"train_reward": total_reward / count} if config.self_critical else {})}
        entry = group.broadcast(entry)
        random_states = group.gather(random_state(run.device))
        improved = progress.record(entry)
        if group.is_main:
            _save_epoch(run, progress, improved, random_states)


def _save_epoch(run: Run, progress: Progress, improved: bool, random_states: list[dict[str, torch.Tensor]]) -> None:
    """Rank 0's files after an epoch: `best/` when the dev CIDEr improved; `last/` with the optimizer
    and every process's random state, for --resume; the history and its plot."""
    saved, config, entry = run.checkpoints, run.config, progress.history[-1]
    if improved:
        dev = {"epoch": entry["epoch"], "BLEU-4": entry["dev_bleu4"], "CIDEr": entry["dev_cider"], "beam_size": config.dev_beam_size}
        best_config = replace(saved.model_config, metadata={**saved.model_config.metadata, "dev": dev})
        save_model(saved.output / "best", run.decoder, saved.vocabulary, best_config, concept_detector=saved.concept_detector)
    save_model(saved.output / "last", run.decoder, saved.vocabulary, saved.model_config, concept_detector=saved.concept_detector)
    grad_scaler = {"grad_scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {}
    save_training_state(saved.output / "last", run.optimizer, {**progress.to_dict(), **grad_scaler}, random_states)
    saved.pending.commit()  # the new run has a checkpoint now; the run it replaces can go
    atomic_write_json(saved.output / "history.json", progress.history)
    plot_history(progress.history, saved.output / "history.png")
    run.log(f"epoch {entry['epoch']}: loss {entry['train_loss']:.3f}  dev BLEU-4 {entry['dev_bleu4']:.3f}  CIDEr {entry['dev_cider']:.3f}  ({entry['seconds']:.0f} s){'  *best*' if improved else ''}")


def _dev_scorer(captioner: Captioner, dataset: CaptionDataset, cache: FeatureCache, records: list, beam_size: int) -> Callable[[], dict[str, float]]:
    """The dev split's BLEU-4 and CIDEr, its photos captioned as `captioner evaluate` captions them:
    `Captioner.generate` with the model's own decoding rules (banned words, biases, the subject
    and colour rules, its length penalty), so the best checkpoint is the best one users get."""
    saturations = photo_saturations(captioner, dataset, records)  # the colour rule needs pixels, which the cache does not keep: read once
    references = {record.image: record.captions for record in records}

    def score() -> dict[str, float]:
        captioner.decoder.eval()  # no dropout: the loop puts the decoder back in training mode each epoch
        captions, _ = caption_split(captioner, cache, records, saturations, beam_size, progress=False)
        return score_captions(references, captions, metrics=("BLEU-4", "CIDEr"))
    return score


def _loss_function(config: TrainingConfig, decoder: torch.nn.Module, model: torch.nn.Module, vocabulary: Vocabulary, train_records: list, max_length: int, autocast) -> Callable[[Batch], tuple[torch.Tensor, float | None]]:
    """A batch -> its loss, and its mean reward or None: cross-entropy, or self-critical training."""
    if not config.self_critical:
        return lambda batch: (cross_entropy_loss(model, batch, config.label_smoothing, autocast), None)
    reward = CiderD({record.image: [tokenize(c) for c in record.captions] for record in train_records})
    return lambda batch: self_critical_loss(decoder, batch.features, batch.keys, reward, vocabulary, config.samples_per_image, max_length, autocast, model)


def _batch_plan(config: TrainingConfig, samples: list, photos: PhotoFeatures, vocabulary: Vocabulary, train_keys: list[str], train_rows: np.ndarray, concept_setup: ConceptSetup | None, text_files: list, max_length: int) -> BatchPlan:
    """The batches of the run's training mode: photos (self-critical), captions, or captions with concepts and caption text."""
    if config.self_critical:
        return SelfCriticalPlan(train_keys, train_rows, photos, max(1, config.batch_size // config.samples_per_image), config.seed)
    if concept_setup is None:
        return CaptionPlan(samples, photos, vocabulary, config.batch_size, config.seed)
    text = TextExamples(text_files, vocabulary, ConceptMatcher(concept_setup.detector.words), max_length)
    return ConceptPlan(
        samples, photos, vocabulary, config.batch_size, config.seed, concept_setup, text, sum(per_epoch for _, per_epoch in text_files), train_rows,
        config.decoder.max_concepts, config.text_image_prob, config.paired_image_dropout,
    )


def _vocabulary_and_shape(config: TrainingConfig, inputs: CheckedInputs) -> tuple[Vocabulary, DecoderConfig]:
    """The starting model's vocabulary and decoder shape (a resumed run keeps its own, whatever the
    data says now), or new ones: the words of the training captions (and caption text) seen
    `min_count` times; captions cut at the 99th percentile of their lengths."""
    if inputs.initial is not None:
        decoder, vocabulary, _ = inputs.initial
        return vocabulary, decoder.config
    text_captions = (c for photos, _ in inputs.text_files for photo in photos for c in photo.captions)
    vocabulary = Vocabulary.build([c for r in inputs.train_records for c in r.captions] + list(text_captions), config.min_count)
    lengths = sorted(len(tokenize(c)) for r in inputs.train_records for c in r.captions)
    max_length = max(1, lengths[int(0.99 * (len(lengths) - 1))])
    return vocabulary, DecoderConfig(**{**config.decoder.to_dict(), "vocab_size": len(vocabulary), "max_length": max_length})


def _feature_caches(config: TrainingConfig, inputs: CheckedInputs, encoder, group: ProcessGroup, progress: bool, device: torch.device, log) -> tuple[FeatureCache, FeatureCache | None, list, list]:
    """The feature caches (rank 0 builds what is missing; the others then open them), the mirrored
    one with `flip_augment`, and the train and dev records whose photos could be read."""
    train_keys = [record.image for record in inputs.train_records]
    with group.main_first():
        cache = feature_cache(inputs.dataset, config.encoder, config.cache, train_keys + [r.image for r in inputs.dev_records], encoder=encoder, progress=progress, device=device, log=log)
        flip_cache = feature_cache(inputs.dataset, config.encoder, config.cache, train_keys, flip=True, encoder=encoder, progress=progress, device=device, log=log) if config.flip_augment else None
    train_records, unreadable_train = records_with_features(inputs.train_records, cache, *([flip_cache] if flip_cache is not None else []))
    dev_records, unreadable_dev = records_with_features(inputs.dev_records, cache)
    if unreadable_train or unreadable_dev:
        log(f"unreadable photos left out: {len(unreadable_train)} train, {len(unreadable_dev)} dev (listed in {cache.folder / 'unreadable.txt'})")
        if not train_records or not dev_records:
            raise CaptionerError(f"{config.dataset}: no readable photos left in the {'train' if not train_records else 'dev'} split; see {cache.folder / 'unreadable.txt'}")
    return cache, flip_cache, train_records, dev_records


def _training_captions(config: TrainingConfig, train_records: list, text_files: list, log) -> tuple[list[list[str]], list]:
    """Each training photo's captions and the caption-text files; for a concept model with
    `paired_caption_text`, the caption text of a training photo (the same Flickr id) joins its
    captions and leaves the caption text."""
    train_captions = [list(record.captions) for record in train_records]
    if config.decoder.max_concepts > 0 and config.paired_caption_text:
        train_ids = {flickr30k_id(record.image): index for index, record in enumerate(train_records)}
        paired = [(train_ids[flickr30k_id(photo.image)], photo) for photos, _ in text_files for photo in photos if flickr30k_id(photo.image) in train_ids]
        for index, photo in paired:
            train_captions[index] += photo.captions
        paired_names = {id(photo) for _, photo in paired}
        text_files = [([photo for photo in photos if id(photo) not in paired_names], per_epoch) for photos, per_epoch in text_files]
        log(f"caption text: {sum(len(p.captions) for _, p in paired)} captions of {len(paired)} training photos added as their captions")
    return train_captions, text_files


def _model_config(config: TrainingConfig, dataset_name: str, encoder, images: int, captions: int, decoder_config: DecoderConfig, concept_setup: ConceptSetup | None) -> ModelConfig:
    """The saved model's config.json; decoding, subject and tag settings at their defaults."""
    concepts = None
    if concept_setup is not None:
        concepts = ConceptSettings(
            table_digest=concept_setup.detector.table.digest, detector_words=list(concept_setup.detector.detector_words),
            hidden_dim=concept_setup.detector.detector.hidden.out_features,
            min_score=config.concept_min_score, person_threshold=config.person_threshold,
            guarded_words=list(concept_setup.report["guarded_words"]), guard_floor=concept_setup.report["guard_floor"],
            animal_floor=concept_setup.report["animal_floor"], object_penalty=config.object_penalty,
        )
    return ModelConfig(
        name=config.name or f"{dataset_name}-{decoder_config.kind}-{config.encoder}", encoder=config.encoder, decoder=decoder_config,
        preprocess=encoder.preprocess_config, concepts=concepts, metadata={"training": {"dataset": dataset_name, "images": images, "captions": captions}},
    )


def _resumed_progress(config: TrainingConfig, saved_state: tuple, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, group: ProcessGroup, device: torch.device, total_steps: int, log) -> Progress:
    """The run's progress, optimizer, gradient scaler and this process's random state, restored from `last/`."""
    state = load_training_state(Path(config.output) / "last", saved_state, optimizer, device, group.rank, config.seed)
    progress = Progress.resumed(state, total_steps, config.epochs, log)
    if scaler.is_enabled() and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    log(f"resuming after epoch {progress.epoch} (best dev CIDEr {progress.best_cider:.3f})")
    return progress


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
