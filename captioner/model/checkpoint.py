"""Saving and loading a captioning model: a folder of JSON and safetensors, no pickles.

    config.json          format version, model name, encoder, decoder config, decoding defaults
    vocabulary.json      the word list
    model.safetensors    decoder weights (float16 or float32)
    metrics.json         optional: test-split scores, shown by the CLI and the server

Every file is written to a temporary name and renamed into place (`atomic_files`), so a crash
never leaves a half-written checkpoint.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..atomic_files import atomic_save_tensors, atomic_write_json
from ..errors import CheckpointError
from ..json_files import read_json
from .config import FORMAT_VERSION, ModelConfig
from .config_checks import ConfigError
from .decoders import create_decoder
from .transformer_block import renamed_decoder_weights
from .vocabulary import Vocabulary

WEIGHTS, CONFIG, VOCABULARY, METRICS = "model.safetensors", "config.json", "vocabulary.json", "metrics.json"
CONCEPTS = "concepts.safetensors"  # word detectors, for models with concept tokens
CALIBRATION = "calibration.json"  # the confidence model (`generation/confidence.py`)
PERSON_BY_CLASS = "person_by_class"  # in CONCEPTS beside the detectors: P(person | ImageNet class)


def unique_state_dict(module: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (safetensors refuses shared storage)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in module.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous().clone()
    return tensors


def save_model(folder: str | Path, decoder: torch.nn.Module, vocabulary: Vocabulary, config: ModelConfig | dict, dtype: torch.dtype | None = None, concept_detector=None) -> None:
    """Write a loadable model folder; `config` holds name, encoder, preprocess and decoding (and
    `concepts` with the word detectors' settings when `concept_detector` is given): a ModelConfig,
    or config.json's sections less format_version and decoder, checked here. The decoder's shape
    is `decoder`'s own."""
    folder = Path(folder)
    if isinstance(config, dict):
        config = ModelConfig.from_dict({"format_version": FORMAT_VERSION, **config, "decoder": decoder.config.to_dict()}, folder / CONFIG)
    config = replace(config, decoder=decoder.config)
    if concept_detector is not None:
        tensors = unique_state_dict(concept_detector.detector, dtype)
        if concept_detector.person_by_class is not None:
            tensors[PERSON_BY_CLASS] = concept_detector.person_by_class.float().contiguous().clone()
        atomic_save_tensors(folder / CONCEPTS, tensors, metadata={"format_version": str(FORMAT_VERSION)})
    # The encoder whose features the decoder learnt from, recorded where editing config.json cannot change it
    atomic_save_tensors(folder / WEIGHTS, unique_state_dict(decoder, dtype), metadata={"format_version": str(FORMAT_VERSION), "encoder": config.encoder})
    atomic_write_json(folder / VOCABULARY, vocabulary.to_dict())
    atomic_write_json(folder / CONFIG, config.to_dict())


def read_config(folder: str | Path) -> ModelConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder; pass a folder written by 'captioner train'")
    for name in (CONFIG, VOCABULARY, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; this is not a complete model folder")
    return read_model_config(folder / CONFIG, "retrain the model")


def read_model_config(path: Path, redo: str) -> ModelConfig:
    """A model's config.json (of a model folder or an ONNX export folder), checked the same way for
    both (`ModelConfig.from_dict`). `redo` says how to make the folder again (retrain, export again)."""
    data = read_json(path, f"put back the model's own {CONFIG}, or {redo}", CheckpointError)
    try:
        return ModelConfig.from_dict(data, path, redo)
    except ConfigError as error:
        raise CheckpointError(str(error)) from None


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Vocabulary, ModelConfig]:
    """Rebuild the decoder from its config and load its weights; raise CheckpointError on mismatch."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        vocabulary = Vocabulary.load(folder / VOCABULARY)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{folder / VOCABULARY}: not a vocabulary file ({error}); re-export the model") from None
    decoder_config = config.decoder
    if decoder_config.vocab_size != len(vocabulary):
        raise CheckpointError(f"{folder}: decoder expects {decoder_config.vocab_size} words but vocabulary has {len(vocabulary)}")
    decoder = create_decoder(decoder_config)
    try:
        with safe_open(folder / WEIGHTS, "pt") as weights:
            trained_on = (weights.metadata() or {}).get("encoder")
            tensors = renamed_decoder_weights({name: weights.get_tensor(name) for name in weights.keys()})  # names from before the block too
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights ({error})") from None
    if trained_on is not None and trained_on != config.encoder:
        raise CheckpointError(f"{folder / CONFIG}: encoder is {config.encoder!r}, but the weights were trained on {trained_on!r} features; set it back to {trained_on!r}")
    expected = unique_state_dict(decoder)
    problems = sorted(set(expected) ^ set(tensors)) + [
        f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}" for name in expected if name in tensors and tensors[name].shape != expected[name].shape
    ]
    if problems:
        raise CheckpointError(f"{folder}: weights do not fit the config ({len(problems)} problems, e.g. {problems[0]}); the checkpoint is of another shape")
    decoder.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, strict=False)
    decoder.to(device).eval()
    return decoder, vocabulary, config


def load_concept_detector(folder: str | Path, config: ModelConfig, encoder):
    """The model's `ConceptDetector`: its word detectors from the folder, the ImageNet head from
    the encoder, the concept table from the package (its format is checked; its words may grow
    between versions, as concepts are words)."""
    from .concepts import ConceptDetector, ConceptTable, imagenet_head

    folder, settings = Path(folder), config.concepts
    if settings is None:
        raise CheckpointError(f"{folder / CONFIG}: 'concepts' must hold the detector words; the model folder is incomplete or from another version")
    detector = ConceptDetector(ConceptTable.load(), imagenet_head(encoder), list(settings.detector_words), encoder.feature_dim, settings.hidden_dim)
    try:
        tensors = load_file(folder / CONCEPTS)
        by_class = tensors.pop(PERSON_BY_CLASS, None)
        if by_class is not None and by_class.shape != (1000,):
            raise RuntimeError(f"{PERSON_BY_CLASS} has shape {tuple(by_class.shape)}, not (1000,)")
        detector.detector.load_state_dict({name: tensor.float() for name, tensor in tensors.items()})
        detector.person_by_class = by_class.float() if by_class is not None else None
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{folder / CONCEPTS}: unreadable or mismatched word detectors ({str(error).splitlines()[0]}); retrain or re-export the model") from None
    return detector.eval()


def copy_concepts(source: str | Path, target: str | Path, dtype: torch.dtype | None = None) -> None:
    """Copy a model folder's word detectors (if it has them), optionally as another float type."""
    path = Path(source) / CONCEPTS
    if path.is_file():
        tensors = {name: tensor.to(dtype) if dtype is not None and name != PERSON_BY_CLASS else tensor for name, tensor in load_file(path).items()}
        atomic_save_tensors(Path(target) / CONCEPTS, tensors, metadata={"format_version": str(FORMAT_VERSION)})


def read_metrics(folder: str | Path) -> dict:
    """The scores in a model folder's metrics.json, {} without one; CheckpointError if it is broken."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return {}
    return read_json(path, "delete it or rerun `captioner evaluate --save-metrics`", CheckpointError)
