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
Transformer, "prepare" computes each image's cross-attention keys and values once (keys stored
transposed, (B, H, d, M), so no step transposes them) and the step extends a self-attention
key/value cache by one position. Cross-attention state is kept once per image, not per beam: the
step takes the rows grouped by image (G images x K rows each) and attends with K queries per image.
Other decoders are traced through their own `init_state` / `step`, every state entry per row.

Every file is written atomically and the manifest last, so a folder without a manifest is an
interrupted export.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic_files import atomic_write_bytes, atomic_write_json
from .checkpoint import CONCEPTS, CONFIG, METRICS, PERSON_BY_CLASS, VOCABULARY, read_metrics
from .confidence import CALIBRATION
from .concepts import MAX_CONCEPT_WORDS, Concepts, ConceptDetector, WordDetector
from .decoders import Features, TransformerDecoder
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
    """Features (+ concept tokens) -> the starting state: memory_bias (B, 1, 1, M) 0 or -inf,
    cross_keys{i} (B, H, d, M), cross_values{i} (B, H, M, d), position (B,) and empty self-attention
    caches self_keys{i} (B, H, d, 0), self_values{i} (B, H, 0, d)."""

    def __init__(self, decoder: TransformerDecoder, names: list[str]):
        super().__init__()
        self.decoder, self.names = decoder, names

    def forward(self, grid: torch.Tensor, pooled: torch.Tensor, *concepts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.decoder.init_state(Features(grid, pooled, Concepts(*concepts) if concepts else None))
        state.update(state.pop("per_image"))  # the graphs name each per-image tensor
        batch, heads, slots, head_dim = state["cross_keys0"].shape
        state["memory_bias"] = pooled.new_zeros(batch, 1, 1, slots)
        if "memory_mask" in state:  # (B, M) True = attend
            state["memory_bias"] = state["memory_bias"].masked_fill(~state["memory_mask"][:, None, None, :], float("-inf"))
        for index in range(len(self.decoder.layers.layers)):
            state[f"cross_keys{index}"] = state[f"cross_keys{index}"].transpose(2, 3)  # (B, H, d, M)
            state[f"self_keys{index}"] = pooled.new_zeros(batch, heads, head_dim, 0)
        return tuple(state[name] for name in self.names)


class _TransformerStep(nn.Module):
    """`TransformerDecoder.step` for rows grouped by image: rows (R = G * K,) of per-row state,
    G images of per-image state. The same arithmetic as the PyTorch step, without transposes."""

    def __init__(self, decoder: TransformerDecoder):
        super().__init__()
        self.decoder = decoder
        config = decoder.config
        self.width, self.heads = config.embed_dim, config.num_heads
        self.head_dim = self.width // self.heads

    def forward(self, last_tokens: torch.Tensor, position: torch.Tensor, memory_bias: torch.Tensor, *layer_state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoder, width, heads, head_dim = self.decoder, self.width, self.heads, self.head_dim
        scale = 1.0 / math.sqrt(head_dim)
        x = decoder.embedding(last_tokens) * math.sqrt(width) + decoder.position(position)  # (R, D)
        updated = []
        for index, layer in enumerate(decoder.layers.layers):
            cross_keys, cross_values, self_keys, self_values = layer_state[4 * index : 4 * index + 4]
            query, key, value = F.linear(layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, dim=-1)  # (R, D) each
            self_keys = torch.cat([self_keys, key.reshape(-1, heads, head_dim, 1)], dim=3)  # (R, H, d, t)
            self_values = torch.cat([self_values, value.reshape(-1, heads, 1, head_dim)], dim=2)  # (R, H, t, d)
            updated += [self_keys, self_values]
            weights = torch.softmax((query.reshape(-1, heads, 1, head_dim) * scale) @ self_keys, dim=-1)  # (R, H, 1, t)
            x = x + layer.self_attn.out_proj((weights @ self_values).reshape(-1, width))
            cross = layer.multihead_attn
            query = F.linear(layer.norm2(x), cross.in_proj_weight[:width], cross.in_proj_bias[:width]) * scale  # (R, D)
            images = cross_keys.shape[0]
            query = query.reshape(images, -1, heads, head_dim).transpose(1, 2)  # (G, H, K, d)
            weights = torch.softmax(query @ cross_keys + memory_bias, dim=-1)  # (G, H, K, M)
            attended = (weights @ cross_values).transpose(1, 2).reshape(-1, width)  # (G, H, K, d) -> (R, D)
            x = x + cross.out_proj(attended)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return (decoder.output(decoder.layers.norm(x)), position + 1, *updated)  # logits (R, V)


def _transformer_graphs(decoder: TransformerDecoder) -> DecoderGraphs:
    layers = range(len(decoder.layers.layers))
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
    for index in layers:
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
