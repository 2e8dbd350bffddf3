"""Captioning on ONNX Runtime: `Captioner.load(path, backend="onnxruntime")`, `--backend onnxruntime`.

Every network runs in ONNX Runtime on the CPU: the encoder, the concept detector's ImageNet head
and word detectors, and the decoder as two graphs, "prepare" and "step" (see `onnx_export.py`).
Everything else is the PyTorch backend's own code: preprocessing, concept rules, and the searches
of `decoding.py`, which drive `OnnxDecoder` through the same `init_state` / `step` calls as any
decoder. `path` is an export folder (`captioner export --onnx`; loads in 0.12 s here) or a model
folder, which is then exported in memory at load (1.0 s, against 0.53 s on PyTorch).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from ..devices import DEVICE_ENVIRONMENT_VARIABLE, resolve_device
from ..errors import CaptionerError, CheckpointError
from ..json_files import read_json
from ..model.checkpoint import CONCEPTS, CONFIG, PERSON_BY_CLASS, VOCABULARY, read_model_config
from ..model.concepts import MAX_CONCEPT_WORDS, SOURCE_PAD, ConceptDetector, Concepts, ConceptTable
from ..model.config import ModelConfig
from ..model.decoders import DecoderConfig, Features, State
from ..model.image_state import ImageState
from ..model.vocabulary import Vocabulary
from . import BACKENDS
from .onnx_checks import check_graphs
from .onnx_encoder import OnnxRuntimeEncoder, onnx_session
from .onnx_export import DECODER_PREPARE, DECODER_STEP, ENCODER, FEATURE_INPUTS, IMAGENET_HEAD, MANIFEST, NEXT, ONNX_FORMAT_VERSION, WORD_DETECTORS, concept_files, decoder_graphs

REQUIRED_FILES = (CONFIG, VOCABULARY, ENCODER, IMAGENET_HEAD, DECODER_PREPARE, DECODER_STEP)
PER_IMAGE_STATE = "per_image"  # the state entry holding what is kept once per image


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise CaptionerError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return backend


def is_onnx_export(path: str | Path) -> bool:
    """Whether `path` is (or was meant to be) an export folder of `captioner export --onnx`."""
    path = Path(path)
    return (path / MANIFEST).is_file() or (path / DECODER_STEP).is_file() or (path / ENCODER).is_file()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


class OnnxNetwork(nn.Module):
    """A graph with one input and one output as a module: a CPU tensor in, a tensor out."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.input = session.get_inputs()[0].name

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: _numpy(inputs.float())})[0])


class OnnxWordDetector(OnnxNetwork):
    """The word detectors: the graph gives log P(word in no cell) (B, W); this, as `WordDetector`, P(word in some cell)."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(super().forward(grid))


class OnnxDecoder(nn.Module):
    """A decoder whose `init_state` and `step` run the exported prepare and step graphs; the
    searches of `decoding.py` use it like any decoder. State: per-row tensors by name, plus
    an `ImageState` under PER_IMAGE_STATE, as the PyTorch decoder keeps it."""

    backend = "onnxruntime"  # what `Captioner.backend` reports

    def __init__(self, config: DecoderConfig, prepare, step, per_image: list[str]):
        super().__init__()
        self.config = config
        self.prepare_session, self.step_session = prepare, step
        self.prepare_inputs = [node.name for node in prepare.get_inputs()]  # the exporter drops inputs a graph never reads
        self.state_names = [node.name for node in prepare.get_outputs()]
        self.step_inputs = {node.name for node in step.get_inputs()}
        self.updated = [node.name[len(NEXT):] for node in step.get_outputs()[1:]]
        self.per_image = set(per_image)

    def init_state(self, features: Features) -> State:
        grid, pooled = features.grid.float(), features.pooled.float()  # (B, G, C), (B, C)
        feed = {name: _numpy(value) for name, value in zip(FEATURE_INPUTS, (grid, pooled)) if name in self.prepare_inputs}
        if "concept_ids" in self.prepare_inputs:
            concepts = features.concepts
            if concepts is None:  # no concept tokens: empty slots, masked out like absent ones
                slots, batch = self.config.max_concepts, len(pooled)
                concepts = Concepts(torch.zeros(batch, slots, MAX_CONCEPT_WORDS, dtype=torch.long), torch.zeros(batch, slots), torch.full((batch, slots), SOURCE_PAD, dtype=torch.long))
            feed.update(concept_ids=_numpy(concepts.ids), concept_scores=_numpy(concepts.scores.float()), concept_sources=_numpy(concepts.sources))
        outputs = dict(zip(self.state_names, self.prepare_session.run(None, feed)))
        state: State = {name: torch.from_numpy(value) for name, value in outputs.items() if name not in self.per_image}
        if self.per_image:
            state[PER_IMAGE_STATE] = ImageState({name: torch.from_numpy(outputs[name]) for name in self.per_image}, torch.arange(len(pooled)))
        return state

    @torch.inference_mode()
    def step(self, last_tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        feed = {"last_tokens": _numpy(last_tokens)}
        for name, value in state.items():
            if name == PER_IMAGE_STATE:
                feed.update({name: _numpy(tensor) for name, tensor in value.grouped().items()})  # (G, ...) per image
            elif name in self.step_inputs:
                feed[name] = _numpy(value)
        logits, *updated = self.step_session.run(None, feed)
        new_state = dict(state)
        new_state.update({name: torch.from_numpy(value) for name, value in zip(self.updated, updated)})
        return torch.from_numpy(logits), new_state  # (R, V)


def onnx_device(device: torch.device | str | None) -> torch.device:
    """The CPU, where this backend runs: `auto` (or nothing) means it; any other device is refused."""
    choice = device if device is not None else os.environ.get(DEVICE_ENVIRONMENT_VARIABLE) or "auto"
    if isinstance(choice, str) and choice.strip().lower() == "auto":
        return torch.device("cpu")
    resolved = resolve_device(choice)
    if resolved.type != "cpu":
        raise CaptionerError(f"the onnxruntime backend runs on the CPU, not {resolved}; pass --device cpu, or --backend pytorch with a model folder to use {resolved}")
    return resolved


def _session(model: bytes | Path, where: Path | str):
    try:
        return onnx_session(model)
    except Exception as error:  # ONNX Runtime raises its own exception types for damaged graphs
        raise CheckpointError(f"{where}: not a readable ONNX graph ({str(error).splitlines()[0][:200]}); export the model again") from None


def _concept_detector(sessions: dict, files: dict[str, bytes | Path], config: ModelConfig, feature_dim: int, where: Path) -> ConceptDetector:
    """A `ConceptDetector` whose ImageNet head and word detectors run the exported graphs."""
    settings = config.concept_settings
    detector = ConceptDetector(ConceptTable.load(), OnnxNetwork(sessions[IMAGENET_HEAD]), list(settings.detector_words), feature_dim, settings.hidden_dim)
    if detector.detector is not None:
        detector.detector = OnnxWordDetector(sessions[WORD_DETECTORS])
    if CONCEPTS in files:
        data = files[CONCEPTS]
        try:
            by_class = load_safetensors(data if isinstance(data, bytes) else data.read_bytes())[PERSON_BY_CLASS]
        except (SafetensorError, KeyError, OSError) as error:
            raise CheckpointError(f"{where / CONCEPTS}: unreadable ({error}); export the model again") from None
        if by_class.shape != (1000,):
            raise CheckpointError(f"{where / CONCEPTS}: {PERSON_BY_CLASS} has shape {tuple(by_class.shape)}, not (1000,); export the model again")
        detector.person_by_class = by_class.float()
    return detector.eval()


def _captioner(captioner_class, files: dict[str, bytes | Path], per_image: list[str], encoder, vocabulary: Vocabulary, decoder_config: DecoderConfig, config: ModelConfig, path: Path | None):
    """A `Captioner` whose decoder and concept detector run `files` (name -> bytes or a file) in
    ONNX Runtime, every graph checked against the config first."""
    where = path or Path("in-memory export")
    sessions = {name: _session(data, where / name) for name, data in files.items() if name.endswith(".onnx") and name != ENCODER}
    sessions[ENCODER] = encoder.session
    check_graphs(sessions, config.preprocess, decoder_config, len(config.concept_settings.detector_words), per_image, where)
    decoder = OnnxDecoder(decoder_config, sessions[DECODER_PREPARE], sessions[DECODER_STEP], per_image)
    detector = _concept_detector(sessions, files, config, decoder_config.feature_dim, where)
    return captioner_class(encoder, decoder, vocabulary, config, path, torch.device("cpu"), concept_detector=detector)


EXPORT_AGAIN = "export the model again with captioner export --onnx"


def read_export(folder: Path) -> tuple[dict, dict[str, Path]]:
    """The manifest and the files of an export folder, checked: complete, of this format version,
    every entry of the right type, none truncated."""
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(f"{folder}: missing {MANIFEST}; the ONNX export is incomplete (interrupted?), {EXPORT_AGAIN}")
    manifest = read_json(folder / MANIFEST, EXPORT_AGAIN, CheckpointError)
    if manifest.get("format") != "captioner-onnx":
        raise CheckpointError(f"{folder / MANIFEST}: not a captioner ONNX manifest; {EXPORT_AGAIN}")
    if manifest.get("format_version") != ONNX_FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: ONNX export format version {manifest.get('format_version')!r} (written by captioner {manifest.get('captioner_version', '?')}) "
            f"is not {ONNX_FORMAT_VERSION}; export the model again with this captioner, or use the captioner version that wrote it"
        )
    sizes, decoder = manifest.get("files"), manifest.get("decoder")
    if not isinstance(sizes, dict):
        raise CheckpointError(f"{folder / MANIFEST}: files must map each file of the export to its size, not {str(sizes)[:80]}; {EXPORT_AGAIN}")
    for name, size in sizes.items():
        if name != Path(name).name or name.startswith("."):  # a file of this folder, nothing outside it
            raise CheckpointError(f"{folder / MANIFEST}: files lists {name!r}, not a file name of the export; {EXPORT_AGAIN}")
        if type(size) is not int or size < 0:
            raise CheckpointError(f"{folder / MANIFEST}: the size of {name} must be a whole number of bytes, not {size!r}; {EXPORT_AGAIN}")
    per_image = decoder.get("per_image_state") if isinstance(decoder, dict) else None
    if not isinstance(per_image, list) or not all(isinstance(name, str) for name in per_image):
        raise CheckpointError(f"{folder / MANIFEST}: decoder.per_image_state must be a list of state names, not {str(per_image)[:80]}; {EXPORT_AGAIN}")
    for name in sorted(set(REQUIRED_FILES) | set(sizes)):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; the ONNX export is incomplete, {EXPORT_AGAIN}")
        if name not in sizes:
            raise CheckpointError(f"{folder / MANIFEST}: does not list {name}; the manifest is damaged or from another export, {EXPORT_AGAIN}")
        if (folder / name).stat().st_size != sizes[name]:
            raise CheckpointError(f"{folder / name}: {(folder / name).stat().st_size} bytes, the manifest says {sizes[name]}; the file is damaged or from another export, {EXPORT_AGAIN}")
    return manifest, {name: folder / name for name in sizes}


def load_export_folder(captioner_class, folder: Path):
    """A captioner from an export folder; needs neither the PyTorch weights nor the encoder package."""
    manifest, files = read_export(folder)
    config = read_model_config(folder / CONFIG, "export the model again with this captioner (captioner export --onnx)")
    decoder_config = config.decoder
    try:
        vocabulary = Vocabulary.load(folder / VOCABULARY)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{folder / VOCABULARY}: not a vocabulary file ({error}); {EXPORT_AGAIN}") from None
    if decoder_config.vocab_size != len(vocabulary):
        raise CheckpointError(f"{folder}: decoder expects {decoder_config.vocab_size} words but vocabulary has {len(vocabulary)}; {EXPORT_AGAIN}")
    side = math.isqrt(decoder_config.grid_size)
    encoder = OnnxRuntimeEncoder(config.encoder, None, decoder_config.feature_dim, side, config.preprocess, _session(files[ENCODER], folder / ENCODER))
    return _captioner(captioner_class, files, manifest["decoder"]["per_image_state"], encoder, vocabulary, decoder_config, config, folder)


def from_pytorch(captioner):
    """The same model with its decoder and concept detector exported in memory (the encoder is
    already ONNX Runtime's on the CPU)."""
    encoder = captioner.encoder
    if not isinstance(encoder, OnnxRuntimeEncoder):
        encoder = OnnxRuntimeEncoder.from_encoder(encoder)
    graphs = decoder_graphs(captioner.decoder)
    files: dict[str, bytes | Path] = {DECODER_PREPARE: graphs.prepare, DECODER_STEP: graphs.step}
    files.update(concept_files(captioner.concept_detector, encoder.feature_dim, encoder.grid_size**2))
    return _captioner(type(captioner), files, graphs.per_image, encoder, captioner.vocabulary, captioner.decoder.config, captioner.config, captioner.path)


def load_onnx_captioner(captioner_class, path: str | Path, device: torch.device | str | None = None):
    """`Captioner.load(path, backend="onnxruntime")`: an export folder, or a model folder exported in memory."""
    onnx_device(device)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CaptionerError("the onnxruntime backend needs ONNX Runtime: pip install onnxruntime (or use --backend pytorch)") from None
    path = Path(path)
    if is_onnx_export(path):
        return load_export_folder(captioner_class, path)
    return from_pytorch(captioner_class.load(path, "cpu", backend="pytorch"))
