"""A captioner's networks as ONNX graphs: `captioner export --onnx OUT` and the in-memory export
behind `Captioner.load(path, backend="onnxruntime")`.

An export folder holds:

    manifest.json          format version, captioner version, the files and their sizes, the decoder's state
    config.json            the model's config (decoding defaults, concept rules, decoder shape)
    vocabulary.json        the word list
    metrics.json           the model's test scores, where it has them
    calibration.json       the model's confidence calibration, where it has one
    encoder.onnx           images (B, 3, S, S) -> feature_map (B, C, H, W)
    imagenet_head.onnx     pooled (B, C) -> ImageNet logits (B, 1000)
    word_detectors.onnx    grid (B, G, C) -> log P(word in no cell) (B, W); models with concepts
    concepts.safetensors   P(person | ImageNet class) (1000,); models whose detectors use it
    decoder_prepare.onnx   grid, pooled (and concept tokens) -> the decoder's starting state
    decoder_step.onnx      last_tokens (R,) + state -> logits (R, V) + the state's updated entries

The decoder is exported as a step, so the search stays the one in `decoding.py`. For the
Transformer, both graphs trace the PyTorch decoder's own code (`TransformerDecoder.init_state`
and `cached_step`, through its `TransformerBlock`s): "prepare" computes each image's
cross-attention keys and values once (keys transposed, (B, H, d, M), so no step transposes them)
and the step extends a self-attention key/value cache by one position. Cross-attention state is
kept once per image, not per beam: the step takes the rows grouped by image (G images x K rows
each) and attends with K queries per image.
Other decoders are traced through their own `init_state` / `step`, every state entry per row.

Every file is written atomically and the manifest last, so a folder without a manifest is an
interrupted export.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..atomic_files import atomic_write_bytes, atomic_write_json
from ..model.checkpoint import CALIBRATION, CONCEPTS, CONFIG, METRICS, PERSON_BY_CLASS, VOCABULARY, read_metrics
from ..model.concepts import MAX_CONCEPT_WORDS, ConceptDetector, Concepts, WordDetector
from ..model.decoders import Features, TransformerDecoder
from .onnx_encoder import OPSET, encoder_graph, export_graph

ONNX_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER, IMAGENET_HEAD, WORD_DETECTORS = "encoder.onnx", "imagenet_head.onnx", "word_detectors.onnx"
DECODER_PREPARE, DECODER_STEP = "decoder_prepare.onnx", "decoder_step.onnx"
PER_IMAGE, PER_ROW = "images", "rows"  # the names of dim 0 of the step's inputs: per image or per row
NEXT = "next_"  # the step's output for state entry NAME is NEXT + NAME
FEATURE_INPUTS = ["feature_grid", "feature_pooled"]  # the prepare graph's inputs (a state entry may be called "grid")


def captioner_version() -> str:
    try:
        return metadata.version("captioner")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class DecoderGraphs:
    """The decoder's two graphs and which state entries are per image (the rest are per row)."""

    prepare: bytes
    step: bytes
    per_image: list[str]


# ---- the Transformer: prepare once per image, then one token per step ---------------------------

class _TransformerPrepare(nn.Module):
    """`TransformerDecoder.init_state` with every tensor named: features (+ concept tokens) ->
    the per-image `memory_state` and the per-row position (B,) and empty caches."""

    def __init__(self, decoder: TransformerDecoder, names: list[str]):
        super().__init__()
        self.decoder, self.names = decoder, names

    def forward(self, grid: torch.Tensor, pooled: torch.Tensor, *concepts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.decoder.init_state(Features(grid, pooled, Concepts(*concepts) if concepts else None))
        state.update(state.pop("per_image").tensors)  # the graphs name each per-image tensor
        return tuple(state[name] for name in self.names)


class _TransformerStep(nn.Module):
    """`TransformerDecoder.cached_step` with every tensor named: rows (R = G * K,) of per-row state,
    G images of per-image state."""

    def __init__(self, decoder: TransformerDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, last_tokens: torch.Tensor, position: torch.Tensor, memory_bias: torch.Tensor, *layer_state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, caches = {"memory_bias": memory_bias}, []
        for index in range(len(self.decoder.blocks)):
            memory[f"cross_keys{index}"], memory[f"cross_values{index}"], self_keys, self_values = layer_state[4 * index : 4 * index + 4]
            caches.append((self_keys, self_values))
        logits, caches = self.decoder.cached_step(last_tokens, position, memory, caches)
        return (logits, position + 1, *(tensor for cache in caches for tensor in cache))  # logits (R, V)


def _transformer_graphs(decoder: TransformerDecoder) -> DecoderGraphs:
    layers = range(len(decoder.blocks))
    per_image = ["memory_bias", *[f"{kind}{i}" for i in layers for kind in ("cross_keys", "cross_values")]]
    per_row = ["position", *[f"{kind}{i}" for i in layers for kind in ("self_keys", "self_values")]]
    step_state = ["position", "memory_bias", *[f"{kind}{i}" for i in layers for kind in ("cross_keys", "cross_values", "self_keys", "self_values")]]
    config = decoder.config
    grid = torch.randn(2, config.grid_size, config.feature_dim)
    concepts = ()
    concept_names: list[str] = []
    if config.max_concepts:
        concepts = (torch.ones(2, config.max_concepts, MAX_CONCEPT_WORDS, dtype=torch.long), torch.full((2, config.max_concepts), 0.5), torch.ones(2, config.max_concepts, dtype=torch.long))
        concept_names = ["concept_ids", "concept_scores", "concept_sources"]
    inputs = [*FEATURE_INPUTS, *concept_names]
    prepare = export_graph(
        _TransformerPrepare(decoder, per_image + per_row), (grid, grid.mean(dim=1), *concepts), inputs, per_image + per_row,
        {name: {0: "batch"} for name in inputs + per_image + per_row},
    )
    with torch.no_grad():  # example state for tracing the step: 2 images x 2 rows, one position already cached
        state = dict(zip(per_image + per_row, _TransformerPrepare(decoder, per_image + per_row)(grid, grid.mean(dim=1), *concepts)))
    rows = torch.tensor([0, 0, 1, 1])
    example = {name: state[name] if name in per_image else state[name].index_select(0, rows) for name in step_state}
    for index in layers:  # keys in the graphs' layout, (…, H, d, S) (`transformer_block.keys_transposed`)
        example[f"cross_keys{index}"] = example[f"cross_keys{index}"].transpose(2, 3)
        example[f"self_keys{index}"] = torch.randn(4, config.num_heads, config.embed_dim // config.num_heads, 1)
        example[f"self_values{index}"] = torch.randn(4, config.num_heads, 1, config.embed_dim // config.num_heads)
    outputs = ["logits", NEXT + "position", *[NEXT + f"{kind}{i}" for i in layers for kind in ("self_keys", "self_values")]]
    axes: dict[str, dict[int, str]] = {"last_tokens": {0: PER_ROW}, "logits": {0: PER_ROW}}
    for name in step_state:
        axes[name] = {0: PER_IMAGE if name in per_image else PER_ROW}
    for index in layers:
        axes[f"self_keys{index}"][3] = axes[f"self_values{index}"][2] = "past"
        axes[NEXT + f"self_keys{index}"] = {0: PER_ROW, 3: "length"}
        axes[NEXT + f"self_values{index}"] = {0: PER_ROW, 2: "length"}
    axes[NEXT + "position"] = {0: PER_ROW}
    step = export_graph(_TransformerStep(decoder), (torch.full((4,), 5), *example.values()), ["last_tokens", *step_state], outputs, axes)
    return DecoderGraphs(prepare, step, per_image)


# ---- any other decoder: its own init_state and step, traced -------------------------------------

class _GenericPrepare(nn.Module):
    def __init__(self, decoder: nn.Module, names: list[str]):
        super().__init__()
        self.decoder, self.names = decoder, names

    def forward(self, grid: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.decoder.init_state(Features(grid, pooled))
        return tuple(state[name] for name in self.names)


class _GenericStep(nn.Module):
    def __init__(self, decoder: nn.Module, names: list[str], changed: list[str]):
        super().__init__()
        self.decoder, self.names, self.changed = decoder, names, changed

    def forward(self, last_tokens: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, state = self.decoder.step(last_tokens, dict(zip(self.names, values)))
        return (logits, *(state[name] for name in self.changed))


def _generic_graphs(decoder: nn.Module) -> DecoderGraphs:
    config = decoder.config
    grid = torch.randn(2, config.grid_size, config.feature_dim)
    with torch.no_grad():
        state = decoder.init_state(Features(grid, grid.mean(dim=1)))
        names = list(state)
        last = torch.full((2,), 5)
        _, stepped = decoder.step(last, state)
    changed = [name for name in names if stepped[name] is not state[name]]  # entries passed through unchanged are not outputs
    prepare = export_graph(_GenericPrepare(decoder, names), (grid, grid.mean(dim=1)), FEATURE_INPUTS, names, {name: {0: "batch"} for name in [*FEATURE_INPUTS, *names]})
    axes = {name: {0: PER_ROW} for name in ["last_tokens", "logits", *names, *(NEXT + name for name in changed)]}
    step = export_graph(_GenericStep(decoder, names, changed), (last, *state.values()), ["last_tokens", *names], ["logits", *(NEXT + name for name in changed)], axes)
    return DecoderGraphs(prepare, step, [])


def decoder_graphs(decoder: nn.Module) -> DecoderGraphs:
    """The decoder's prepare and step graphs (the Transformer's with per-image cross-attention state)."""
    decoder.eval()
    return _transformer_graphs(decoder) if isinstance(decoder, TransformerDecoder) else _generic_graphs(decoder)


# ---- concepts ------------------------------------------------------------------------------------

class _LogAbsent(nn.Module):
    """The word detectors up to log P(word in no cell); `-expm1` (not an ONNX operator) is left to the caller."""

    def __init__(self, detector: WordDetector):
        super().__init__()
        self.detector = detector

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.detector.log_absent(grid)


def concept_files(detector: ConceptDetector, feature_dim: int, grid_cells: int) -> dict[str, bytes]:
    """The concept detector's networks as ONNX (the ImageNet head; the word detectors where the
    model has them) and P(person | class) as safetensors where it has that."""
    pooled = torch.randn(2, feature_dim)
    files = {IMAGENET_HEAD: export_graph(detector.imagenet_head, (pooled,), ["pooled"], ["logits"], {"pooled": {0: "batch"}, "logits": {0: "batch"}})}
    if detector.detector is not None:
        grid = torch.randn(2, grid_cells, feature_dim)
        files[WORD_DETECTORS] = export_graph(_LogAbsent(detector.detector), (grid,), ["grid"], ["log_absent"], {"grid": {0: "batch"}, "log_absent": {0: "batch"}})
    if detector.person_by_class is not None:
        files[CONCEPTS] = safetensors_bytes({PERSON_BY_CLASS: detector.person_by_class.float().contiguous()})
    return files


# ---- the export folder ---------------------------------------------------------------------------

def export_files(captioner) -> tuple[dict[str, bytes], dict]:
    """Every file of an export folder of a PyTorch `Captioner` (name -> bytes), the manifest aside, and the manifest."""
    encoder = captioner.encoder
    graphs = decoder_graphs(captioner.decoder)
    files = {ENCODER: encoder_graph(encoder), DECODER_PREPARE: graphs.prepare, DECODER_STEP: graphs.step}
    files.update(concept_files(captioner.concept_detector, encoder.feature_dim, encoder.grid_size**2))
    files[CONFIG] = (json.dumps(captioner.config.to_dict(), indent=2) + "\n").encode("utf-8")
    files[VOCABULARY] = (json.dumps(captioner.vocabulary.to_dict(), indent=2) + "\n").encode("utf-8")
    metrics = read_metrics(captioner.path) if captioner.path else {}
    if metrics:
        files[METRICS] = (json.dumps(metrics, indent=2) + "\n").encode("utf-8")
    if captioner.calibration is not None:  # the same captions, so the same confidence
        files[CALIBRATION] = (json.dumps(captioner.calibration.to_dict(), indent=2) + "\n").encode("utf-8")
    manifest = {
        "format": "captioner-onnx", "format_version": ONNX_FORMAT_VERSION, "captioner_version": captioner_version(),
        "opset": OPSET, "model": captioner.name, "decoder": {"kind": captioner.decoder.config.kind, "per_image_state": graphs.per_image},
        "files": {name: len(data) for name, data in sorted(files.items())},
    }
    return files, manifest


def write_onnx_export(captioner, folder: str | Path) -> dict:
    """Write `captioner`'s export folder (see the module docstring); returns the manifest."""
    folder = Path(folder)
    files, manifest = export_files(captioner)
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    atomic_write_json(folder / MANIFEST, manifest)  # last: its presence says the folder is complete
    return manifest
