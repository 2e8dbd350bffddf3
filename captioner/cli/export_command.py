"""`captioner export`: a model folder copied with new settings (optionally as float16), or
exported as ONNX graphs; the target is checked before any work."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import CaptionerError


def command_export(args: argparse.Namespace) -> int:
    if args.onnx:
        return export_onnx(args)
    output = Path(args.output)
    check_export_folder(output, Path(args.model), "--output")
    if output.exists() and any(output.iterdir()) and not args.force:
        raise CaptionerError(f"{output} already exists; pass --force to replace the model in it")
    import torch

    from ..atomic_files import atomic_write_bytes
    from ..model.checkpoint import CALIBRATION, copy_concepts, load_concept_detector, load_model, read_config, save_model
    from ..model.encoders import create_encoder

    decoder, vocabulary, config = load_model(args.model)
    decoding = {key: getattr(args, key) for key in ("length_penalty", "no_repeat_ngram_size") if getattr(args, key) is not None}
    config = replace(config, name=args.name or config.name, decoding=replace(config.decoding, **decoding))
    concepts_source = args.model
    if args.concepts_from:  # another run's detectors, person rule and guarded words for this decoder
        if config.concepts is not None:
            raise CaptionerError(f"{args.model} already has concepts; --concepts-from is for models without them")
        source = read_config(args.concepts_from)
        if source.concepts is None:
            raise CaptionerError(f"{args.concepts_from} has no concepts; pass a model trained with a concepts config")
        for key in ("encoder", "preprocess"):
            if getattr(source, key) != getattr(config, key):
                raise CaptionerError(f"{args.concepts_from} was trained with another {key} ({getattr(source, key)} vs {getattr(config, key)}); its concepts do not fit")
        load_concept_detector(args.concepts_from, source, create_encoder(source.encoder))  # refuse a broken file before writing
        config, concepts_source = replace(config, concepts=source.concepts), args.concepts_from
    thresholds = {key: getattr(args, key) for key in ("person_threshold", "tag_threshold", "animal_floor", "object_penalty") if getattr(args, key) is not None}
    for key, value in thresholds.items():
        most = 100.0 if key == "object_penalty" else 1.0
        if config.concepts is None or not 0 <= value <= most:
            raise CaptionerError(f"--{key.replace('_', '-')} needs a model with concepts and a value between 0 and {most:g}")
    if thresholds:
        config = replace(config, concepts=replace(config.concepts, **thresholds))
    calibration = _calibration_to_copy(args, output)
    save_model(output, decoder, vocabulary, config, dtype=torch.float16 if args.fp16 else None)
    copy_concepts(concepts_source, output, dtype=torch.float16 if args.fp16 else None)
    if calibration is not None:
        atomic_write_bytes(output / CALIBRATION, calibration)
    size = (output / "model.safetensors").stat().st_size / 2**20
    print(f"exported {args.model} to {output} ({size:.1f} MiB{', float16' if args.fp16 else ''})")
    return 0


def _calibration_to_copy(args: argparse.Namespace, output: Path) -> bytes | None:
    """The model's calibration.json, checked, where the copy's captions stay the same (None where it has
    none, or where a flag changes the captions: a new fit is needed then)."""
    from ..generation.confidence import load_calibration
    from ..model.checkpoint import CALIBRATION

    if load_calibration(args.model) is None:  # none (noted); a broken one is refused here, before any write
        return None
    changes = [flag for flag in ("length_penalty", "no_repeat_ngram_size", "person_threshold", "tag_threshold", "animal_floor", "object_penalty", "concepts_from") if getattr(args, flag) is not None]
    if changes:
        print(f"captioner: note: {CALIBRATION} not copied: --{changes[0].replace('_', '-')} changes the captions; fit a new one with scripts/fit_confidence.py --model {output}", file=sys.stderr)
        return None
    return (Path(args.model) / CALIBRATION).read_bytes()


def check_export_folder(output: Path, model: Path, flag: str) -> None:
    """An export's output is a folder (or nothing yet) that neither is nor holds nor sits inside the
    model being read, and that can be made and written in: checked before any export work."""
    if output.exists() and not output.is_dir():
        raise CaptionerError(f"{flag} {output} is a file; give a folder to export into")
    if model.exists():
        out, source = output.resolve(), model.resolve()
        if out == source or source in out.parents or out in source.parents:
            raise CaptionerError(f"{flag} {output} is, holds or sits inside the model folder {model}; choose a folder apart from it")
    check_can_write_folder(output, flag)


def check_can_write_folder(folder: Path, flag: str) -> None:
    """Refuse a folder that could not be made or written in. Tried, not guessed from permissions
    (root passes every permission check, yet cannot write under /proc or on a read-only mount):
    a file is made and removed in the folder, or in the nearest folder above it that exists."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CaptionerError(f"{flag} {folder}: {existing} is a file, not a folder; give a folder to write into")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".captioner-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise CaptionerError(f"{flag} {folder}: cannot write in {existing} ({error.strerror or error}); choose a folder you can write to") from None


def export_onnx(args: argparse.Namespace) -> int:
    """`export --onnx OUT`: the model's networks as ONNX files with its config, for `--backend onnxruntime`."""
    output, model = Path(args.onnx), Path(args.model)
    changes = [flag for flag, value in (("--fp16", args.fp16), ("--name", args.name), ("--length-penalty", args.length_penalty), ("--no-repeat-ngram-size", args.no_repeat_ngram_size),
               ("--person-threshold", args.person_threshold), ("--tag-threshold", args.tag_threshold), ("--animal-floor", args.animal_floor),
               ("--object-penalty", args.object_penalty), ("--concepts-from", args.concepts_from)) if value not in (None, False)]
    if changes:
        raise CaptionerError(f"--onnx exports a model as it is; {changes[0]} is for a model folder: export with --output first, then --onnx from that folder")
    check_export_folder(output, model, "--onnx")
    if output.exists() and any(output.iterdir()) and not args.force:
        raise CaptionerError(f"{output} already exists; pass --force to replace the export in it")
    from ..api import Captioner
    from ..runtimes.onnx_export import write_onnx_export

    captioner = Captioner.load(model, "cpu", backend="pytorch")
    manifest = write_onnx_export(captioner, output)
    size = sum(manifest["files"].values()) / 2**20
    print(f"exported {model} to {output} as ONNX ({len(manifest['files'])} files, {size:.1f} MiB); caption with: captioner caption --model {output} PHOTOS")
    return 0
