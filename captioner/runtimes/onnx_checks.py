"""The graphs of an ONNX captioner checked against the config they run with, before any is used.

Each graph's inputs and outputs are compared with what the config says by name, element type,
rank and every dimension the config fixes (the photo size, the feature width and grid, concept
slots, the vocabulary, the detector words), and the decoder's step with its prepare graph and the
manifest's per-image state. A graph swapped for another, or a config edited apart from its
graphs, is then one line naming the file, not an ONNX Runtime error in the middle of captioning.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..model.checkpoint import CONFIG
from ..model.concepts import MAX_CONCEPT_WORDS
from ..model.decoders import DecoderConfig
from ..model.encoders import PreprocessConfig
from .onnx_export import DECODER_PREPARE, DECODER_STEP, ENCODER, FEATURE_INPUTS, IMAGENET_HEAD, MANIFEST, NEXT, PER_IMAGE, WORD_DETECTORS

FLOAT, INT64 = "tensor(float)", "tensor(int64)"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Port:
    """An input or output a graph must have: its shape (a number where the config fixes that
    dimension, None where it may vary) and element type (None: any)."""

    dims: tuple[int | None, ...]
    kind: str | None = None


class GraphMismatch(CheckpointError):
    """A graph does not fit the config (or the other graphs) it would run with."""


def _describe(dims) -> str:
    return "(" + ", ".join("*" if dim is None or isinstance(dim, str) else str(dim) for dim in dims) + ")"


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _refuse(where: Path, name: str, detail: str):
    raise GraphMismatch(f"{where / name}: does not fit the export's {CONFIG} ({detail}); the export is damaged or mixed with another, export the model again")


def _check_port(node, port: Port, side: str, where: Path, graph: str) -> None:
    shape = list(node.shape or [])
    if port.kind is not None and node.type != port.kind:
        _refuse(where, graph, f"{side} {node.name} holds {node.type}, not {port.kind}")
    fits = len(shape) == len(port.dims) and all(want is None or not isinstance(have, int) or have == want for have, want in zip(shape, port.dims))
    if not fits:
        _refuse(where, graph, f"{side} {node.name} is {_describe(shape)}, the config needs {_describe(port.dims)}")


def check_ports(nodes, expected: dict[str, Port], side: str, where: Path, graph: str, required: set[str] | None = None) -> dict:
    """`nodes` (a graph's inputs or outputs) against `expected`: no other names, each of `required`
    (default: all) present, each fitting its Port. Returns the nodes by name."""
    found = {node.name: node for node in nodes}
    unknown = [name for name in found if name not in expected]
    missing = [name for name in (expected if required is None else required) if name not in found]
    if unknown or missing:
        problems = ([f"no {side} {_some(missing)}"] if missing else []) + ([f"{side}s it should not have: {_some(unknown)}"] if unknown else [])
        _refuse(where, graph, "; ".join(problems))
    for name, node in found.items():
        _check_port(node, expected[name], side, where, graph)
    return found


def check_graphs(sessions: dict, preprocess: PreprocessConfig, decoder: DecoderConfig, detector_words: int, per_image: list[str], where: Path) -> None:
    """Every graph of a captioner (name -> ONNX Runtime session) against its config; `where`
    names the folder in messages."""
    check_encoder_graph(sessions[ENCODER], preprocess, decoder.feature_dim, where)
    check_concept_graphs(sessions, decoder.feature_dim, decoder.grid_size, detector_words, where)
    check_decoder_graphs(sessions[DECODER_PREPARE], sessions[DECODER_STEP], decoder, per_image, where)


def check_concept_graphs(sessions: dict, feature_dim: int, grid_size: int, detector_words: int, where: Path) -> None:
    """The ImageNet head: pooled (B, C) -> logits (B, 1000); the word detectors (with W > 0 detector words): grid (B, G, C) -> (B, W)."""
    head = sessions[IMAGENET_HEAD]
    check_ports(head.get_inputs(), {"pooled": Port((None, feature_dim), FLOAT)}, "input", where, IMAGENET_HEAD)
    check_ports(head.get_outputs(), {"logits": Port((None, IMAGENET_CLASSES))}, "output", where, IMAGENET_HEAD)
    if detector_words:
        if WORD_DETECTORS not in sessions:
            raise GraphMismatch(f"{where}: missing {WORD_DETECTORS}; the ONNX export is incomplete, export the model again")
        words = sessions[WORD_DETECTORS]
        check_ports(words.get_inputs(), {"grid": Port((None, grid_size, feature_dim), FLOAT)}, "input", where, WORD_DETECTORS)
        check_ports(words.get_outputs(), {"log_absent": Port((None, detector_words))}, "output", where, WORD_DETECTORS)


def check_encoder_graph(session, preprocess: PreprocessConfig, feature_dim: int, where: Path) -> None:
    """images (B, 3, S, S) -> feature_map (B, C, H, W), S the config's input size."""
    size = preprocess.input_size
    check_ports(session.get_inputs(), {"images": Port((None, 3, size, size), FLOAT)}, "input", where, ENCODER)
    check_ports(session.get_outputs(), {"feature_map": Port((None, feature_dim, None, None))}, "output", where, ENCODER)


def check_decoder_graphs(prepare, step, config: DecoderConfig, per_image: list[str], where: Path) -> None:
    """prepare: features (and concept tokens) -> the state; step: last_tokens + state -> logits
    (R, V) + the state's updated entries, each state entry as prepare makes it, per image exactly
    where the manifest says so."""
    features = {FEATURE_INPUTS[0]: Port((None, config.grid_size, config.feature_dim), FLOAT), FEATURE_INPUTS[1]: Port((None, config.feature_dim), FLOAT)}
    concepts = {
        "concept_ids": Port((None, config.max_concepts, MAX_CONCEPT_WORDS), INT64),
        "concept_scores": Port((None, config.max_concepts), FLOAT),
        "concept_sources": Port((None, config.max_concepts), INT64),
    } if config.max_concepts else {}
    taken = check_ports(prepare.get_inputs(), {**features, **concepts}, "input", where, DECODER_PREPARE, required=set())
    if not set(taken) & set(features):  # the exporter drops inputs a graph never reads, but a decoder reads its features
        _refuse(where, DECODER_PREPARE, f"inputs {', '.join(taken) or 'none'}, where the config needs {' and/or '.join(features)}")
    state = {node.name: node for node in prepare.get_outputs()}
    strays = [name for name in per_image if name not in state]
    if strays:
        raise GraphMismatch(f"{where / MANIFEST}: decoder.per_image_state names {strays[0]!r}, which {DECODER_PREPARE} does not make; export the model again")

    inputs = step.get_inputs()
    expected = {"last_tokens": Port((None,), INT64)}
    expected.update({name: Port((None,) * len(node.shape or []), node.type) for name, node in state.items()})
    check_ports(inputs, expected, "input", where, DECODER_STEP, required={"last_tokens"})
    for node in inputs:
        rows = (node.shape or [None])[0]
        if node.name != "last_tokens" and isinstance(rows, str) and (rows == PER_IMAGE) != (node.name in per_image):
            raise GraphMismatch(f"{where / MANIFEST}: decoder.per_image_state does not say which state {DECODER_STEP} takes per image ({node.name}); export the model again")
    outputs = step.get_outputs()
    if not outputs or outputs[0].name != "logits":
        _refuse(where, DECODER_STEP, f"its first output is {outputs[0].name if outputs else 'missing'}, not logits")
    updated = {NEXT + name: port for name, port in expected.items() if name in state and name not in per_image}
    check_ports(outputs[1:], updated, "output", where, DECODER_STEP, required=set())
    _check_port(outputs[0], Port((None, config.vocab_size), FLOAT), "output", where, DECODER_STEP)
