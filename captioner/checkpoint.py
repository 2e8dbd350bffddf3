"""Saving and loading a captioning model: a folder of JSON and safetensors, no pickles.

    config.json          format version, model name, encoder, decoder config, decoding defaults
    vocabulary.json      the word list
    model.safetensors    decoder weights (float16 or float32)
    metrics.json         optional: test-split scores, shown by the CLI and the server

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config_checks import AT_LEAST_ONE, NOT_NEGATIVE, PROBABILITY, ConfigError, Limit, check_fields, check_value
from .decoders import DecoderConfig, create_decoder
from .encoders import ENCODERS, INPUT_SIZE, PreprocessConfig
from .errors import CheckpointError
from .json_files import read_json
from .transformer_block import renamed_decoder_weights
from .vocabulary import Vocabulary

FORMAT_VERSION = 1
WEIGHTS, CONFIG, VOCABULARY, METRICS = "model.safetensors", "config.json", "vocabulary.json", "metrics.json"
CONCEPTS = "concepts.safetensors"  # word detectors, for models with concept tokens
PERSON_BY_CLASS = "person_by_class"  # in CONCEPTS beside the detectors: P(person | ImageNet class)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(temporary: str, path: Path) -> None:
    """Give the temporary file normal permissions (mkstemp makes it private), then rename it into place."""
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _publish(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_json(path: Path, data: object) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        _publish(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


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


def save_model(folder: str | Path, decoder: torch.nn.Module, vocabulary: Vocabulary, config: dict, dtype: torch.dtype | None = None, concept_detector=None) -> None:
    """Write a loadable model folder; `config` holds name, encoder, preprocess and decoding (and
    `concepts` with the word detectors' settings when `concept_detector` is given)."""
    folder = Path(folder)
    full_config = {"format_version": FORMAT_VERSION, **config, "decoder": decoder.config.to_dict()}
    if concept_detector is not None:
        tensors = unique_state_dict(concept_detector.detector, dtype)
        if concept_detector.person_by_class is not None:
            tensors[PERSON_BY_CLASS] = concept_detector.person_by_class.float().contiguous().clone()
        atomic_save_tensors(folder / CONCEPTS, tensors, metadata={"format_version": str(FORMAT_VERSION)})
    # The encoder whose features the decoder learnt from, recorded where editing config.json cannot change it
    trained_on = {"encoder": config["encoder"]} if "encoder" in config else {}
    atomic_save_tensors(folder / WEIGHTS, unique_state_dict(decoder, dtype), metadata={"format_version": str(FORMAT_VERSION), **trained_on})
    atomic_write_json(folder / VOCABULARY, vocabulary.to_dict())
    atomic_write_json(folder / CONFIG, full_config)


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder; pass a folder written by 'captioner train'")
    for name in (CONFIG, VOCABULARY, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; this is not a complete model folder")
    return read_model_config(folder / CONFIG, "retrain the model")


def read_model_config(path: Path, redo: str) -> dict:
    """A model's config.json (of a model folder or an ONNX export folder), checked the same way for
    both: a JSON object, of this format version, every field `Captioner.load` reads. `redo` says
    how to make the folder again (retrain, export again)."""
    config = read_json(path, f"put back the model's own {CONFIG}, or {redo}", CheckpointError)
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: model format version {config.get('format_version')!r} is not {FORMAT_VERSION}; use the captioner version that wrote it, or {redo}")
    try:
        check_model_config(config, path)
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    return config


def check_model_config(config: dict, where: Path) -> None:
    """Every field `Captioner.load` reads, by type and range (the decoder's own fields are checked
    when it is built), so a hand-edited config fails with the file and field named."""
    for key in ("encoder", "decoder"):
        if key not in config:
            raise CheckpointError(f"{where}: missing {key!r}; the model folder is incomplete")
    if config["encoder"] not in ENCODERS:
        raise CheckpointError(f"{where}: encoder must be one of {', '.join(sorted(ENCODERS))}, not {config['encoder']!r}")
    check_value(config.get("name", ""), str, None, f"{where}: name")
    preprocess = check_fields(PreprocessConfig, config.get("preprocess", {}), PREPROCESS_LIMITS, f"{where}: preprocess")
    if preprocess.get("input_size", INPUT_SIZE) != INPUT_SIZE:  # the encoder's graph and the decoder's grid are fixed at it
        raise CheckpointError(f"{where}: preprocess.input_size must be {INPUT_SIZE}, the size {config['encoder']} takes, not {preprocess['input_size']!r}")
    decoding = config.get("decoding", {})
    if not isinstance(decoding, dict):
        raise CheckpointError(f"{where}: decoding must be an object, not {decoding!r}")
    for key, kind, limit in (("beam_size", int, Limit(1, 20)), ("length_penalty", float, Limit()), ("no_repeat_ngram_size", int, NOT_NEGATIVE)):
        if key in decoding:
            check_value(decoding[key], kind, limit, f"{where}: decoding.{key}")
    concepts = config.get("concepts", {})
    if not isinstance(concepts, dict):
        raise CheckpointError(f"{where}: concepts must be an object, not {concepts!r}")
    for key, limit in (("min_score", PROBABILITY), ("person_threshold", PROBABILITY), ("tag_threshold", PROBABILITY), ("guard_floor", PROBABILITY), ("animal_floor", PROBABILITY), ("object_penalty", Limit(0, 100)), ("hidden_dim", AT_LEAST_ONE)):
        if key in concepts:
            check_value(concepts[key], int if key == "hidden_dim" else float, limit, f"{where}: concepts.{key}")
    from .subject import SubjectSettings

    try:
        SubjectSettings.from_dict(config.get("subject"), f"{where}: subject")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None


PREPROCESS_LIMITS = {"mean": Limit(), "std": Limit(0, low_open=True)}


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Vocabulary, dict]:
    """Rebuild the decoder from its config and load its weights; raise CheckpointError on mismatch."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        vocabulary = Vocabulary.load(folder / VOCABULARY)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{folder / VOCABULARY}: not a vocabulary file ({error}); re-export the model") from None
    try:
        decoder_config = DecoderConfig.from_dict(config["decoder"], f"{folder / CONFIG}: decoder")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    if decoder_config.vocab_size != len(vocabulary):
        raise CheckpointError(f"{folder}: decoder expects {decoder_config.vocab_size} words but vocabulary has {len(vocabulary)}")
    decoder = create_decoder(decoder_config)
    try:
        with safe_open(folder / WEIGHTS, "pt") as weights:
            trained_on = (weights.metadata() or {}).get("encoder")
            tensors = renamed_decoder_weights({name: weights.get_tensor(name) for name in weights.keys()})  # names from before the block too
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights ({error})") from None
    if trained_on is not None and trained_on != config["encoder"]:
        raise CheckpointError(f"{folder / CONFIG}: encoder is {config['encoder']!r}, but the weights were trained on {trained_on!r} features; set it back to {trained_on!r}")
    expected = unique_state_dict(decoder)
    problems = sorted(set(expected) ^ set(tensors)) + [
        f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}" for name in expected if name in tensors and tensors[name].shape != expected[name].shape
    ]
    if problems:
        raise CheckpointError(f"{folder}: weights do not fit the config ({len(problems)} problems, e.g. {problems[0]}); the checkpoint is of another shape")
    decoder.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, strict=False)
    decoder.to(device).eval()
    return decoder, vocabulary, config


def load_concept_detector(folder: str | Path, config: dict, encoder):
    """The model's `ConceptDetector`: its word detectors from the folder, the ImageNet head from
    the encoder, the concept table from the package (checked against the one it was trained with)."""
    from .concepts import ConceptDetector, ConceptTable, imagenet_head

    folder, settings = Path(folder), config.get("concepts")
    if not isinstance(settings, dict) or not isinstance(settings.get("detector_words"), list):
        raise CheckpointError(f"{folder / CONFIG}: 'concepts' must hold the detector words; the model folder is incomplete or from another version")
    guarded = settings.get("guarded_words", [])
    if not isinstance(guarded, list) or not all(isinstance(word, str) for word in guarded):
        raise CheckpointError(f"{folder / CONFIG}: concepts.guarded_words must be a list of words; retrain or re-export the model")
    table = ConceptTable.load()  # its format is checked; its words may grow between versions (concepts are words)
    detector = ConceptDetector(table, imagenet_head(encoder), settings["detector_words"], encoder.feature_dim, int(settings.get("hidden_dim", 256)))
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
