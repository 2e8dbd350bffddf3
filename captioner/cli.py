"""The `captioner` command: caption, train, evaluate, features, serve.

Device and thread count are resolved here, once. Errors a user can fix are printed as one
line (`captioner: error: ...`) with a non-zero exit status, never as a traceback.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config_checks import AT_LEAST_ONE, NOT_NEGATIVE, POSITIVE, Limit
from .errors import CaptionerError


def _threads(count: int | None) -> None:
    import torch

    torch.set_num_threads(count or max(1, min(os.cpu_count() or 1, 8)))


def _number(kind, limit: Limit, what: str):
    """An argparse type: a number of `kind` within `limit`, else a one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if kind is float and not math.isfinite(value) or not limit.allows(value):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value
    return parse


COUNT = _number(int, AT_LEAST_ONE, "a whole number >= 1")
MAX_THREADS = 256  # more than any machine here has cores; --threads 100000 crashed PyTorch's thread pool (exit 139)
THREADS = _number(int, Limit(1, MAX_THREADS), f"a whole number from 1 to {MAX_THREADS}")
ZERO_OR_MORE = _number(int, NOT_NEGATIVE, "a whole number >= 0")
POSITIVE_NUMBER = _number(float, POSITIVE, "a number > 0")
FINITE_NUMBER = _number(float, Limit(), "a finite number")
TOP_P = _number(float, Limit(0, 1, low_open=True), "a number > 0 and <= 1")
MAX_BEAM = 20  # as captioner.api.MAX_BEAM, without importing torch to parse arguments
BEAM = _number(int, Limit(1, MAX_BEAM), f"a whole number from 1 to {MAX_BEAM}")
PORT = _number(int, Limit(1, 65535), "a port number from 1 to 65535")
DEVICE_HELP = "auto (a CUDA GPU when present; the default), cpu, cuda or cuda:N; also set by CAPTIONER_DEVICE"
BACKENDS = ("pytorch", "onnxruntime")  # as captioner.onnx_backend.BACKENDS, without importing torch to parse arguments
BACKEND_HELP = "pytorch or onnxruntime (the CPU; a model folder is exported in memory at load); default: onnxruntime for an ONNX export folder, else pytorch"


def DEVICE(text: str) -> str:
    """An argparse type: the spelling of a device choice (whether it exists is checked when it is used)."""
    choice = text.strip().lower()
    if choice not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", choice):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, not {text!r}")
    return choice


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (`captioner caption: error: ...`) pointing at --help, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _tsv_field(text: str) -> str:
    r"""A path as one TSV field: a backslash, tab, newline or carriage return becomes \\, \t, \n or \r;
    a byte of the name that is not UTF-8 (read by Python as a lone surrogate U+DC80..U+DCFF) becomes \xNN."""
    escaped = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return re.sub("[\ud800-\udfff]", _escaped_surrogate, escaped)


def _escaped_surrogate(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _decoded_batches(paths: list[Path | str], batch_size: int, pool: ThreadPoolExecutor):
    """(photos read, error messages) per batch; the next batch decodes (or downloads) in `pool`
    while the caller captions this one, so the cores never wait on Pillow."""
    from .image_sources import read_image
    from .read_ahead import one_ahead

    def start(batch: list[Path | str]) -> list:
        return [(path, pool.submit(read_image, path)) for path in batch]

    def finish(pending: list) -> tuple[list, list[str]]:
        loaded, errors = [], []
        for path, future in pending:
            try:
                loaded.append((path, future.result()))
            except CaptionerError as error:
                errors.append(str(error))
        return loaded, errors

    batches = [paths[first : first + batch_size] for first in range(0, len(paths), batch_size)]
    return one_ahead(batches, start, finish)


def command_caption(args: argparse.Namespace) -> int:
    if args.num_captions > MAX_BEAM and not args.sample:  # more than --beam-size widens the beam, up to its widest
        raise CaptionerError(f"--num-captions is at most {MAX_BEAM} with beam search (one caption per beam); pass --sample for more")
    if args.output is not None and not args.output.strip():
        raise CaptionerError("--output is empty; pass a file name (or leave --output out to print the captions)")
    if args.explain is not None:
        _check_explain(args)
    if args.ray:
        if args.backend:
            raise CaptionerError("--backend does not work with --ray yet; Ray actors load an ONNX export folder (--model) on onnxruntime by themselves")
        from .ray_captioning import caption_with_ray  # Ray is imported there, never on this machine-only path

        return caption_with_ray(args)
    for flag, value in (("--actors", args.actors), ("--actor-cpus", args.actor_cpus), ("--format", args.shard_format), ("--shard-size", args.shard_size)):
        if value is not None:
            raise CaptionerError(f"{flag} works only with --ray ADDRESS (captioning on a Ray cluster)")
    if args.output is None:
        paths, problems = _photos(args.paths)
        return _caption_photos(paths, args, None) or int(bool(problems))
    return _caption_into(Path(args.output), args)


def _check_explain(args: argparse.Namespace) -> None:
    """--explain DIR: refused, before any work, with what it cannot show, or where it cannot write."""
    from .attention_figure import check_explain_folder

    if args.ray:
        raise CaptionerError("--explain does not work with --ray; draw the attention maps on this machine, without --ray")
    if args.sample:
        raise CaptionerError("--explain draws the beam search's best caption; leave out --sample")
    if not args.explain.strip():
        raise CaptionerError("--explain is empty; pass a folder for the attention figures")
    check_explain_folder(Path(args.explain))


def _photos(inputs: list[str]) -> tuple[list[Path | str], list[str]]:
    """The photos to caption, in input order, each once: files found in the paths given, and
    http(s) URLs as they are (downloaded as they are captioned). Problems are printed as they are
    found; no photo at all is refused."""
    from .image_sources import is_url
    from .images import find_images

    paths: list[Path | str] = []
    problems: list[str] = []
    for is_address, group in itertools.groupby(inputs, key=is_url):
        if is_address:
            paths.extend(group)
            continue
        found, trouble = find_images(list(group))
        paths.extend(found)
        problems.extend(trouble)
    paths = list(dict(zip(_photo_keys(paths), paths)).values()) if len(paths) > 1 else paths  # each photo once, across groups too
    for problem in problems:
        print(f"captioner: {problem}", file=sys.stderr)
    if not paths:
        raise CaptionerError("no images to caption; pass image files or folders holding JPEG, PNG, WebP, GIF, BMP or TIFF")
    return paths, problems


def _photo_keys(photos: list[Path | str]) -> list[str]:
    """What tells two inputs are one photo: a URL itself, a file's resolved path (`resolved_paths`)."""
    from .image_sources import is_url
    from .images import resolved_paths

    return [photo if is_url(photo) else key for photo, key in zip(photos, resolved_paths(photos))]


def _caption_into(output: Path, args: argparse.Namespace) -> int:
    """`caption --output FILE`: the photos not in FILE yet, appended to it, with this run holding FILE's lock."""
    from .caption_log import CaptionLog, read_done
    from .output_lock import OutputLock

    with OutputLock(output):  # checks where the output goes, before any work
        done = set(_photo_keys(read_done(output)))  # matched by resolved path: `p/x.jpg` and `/abs/p/x.jpg` are one photo
        paths, problems = _photos(args.paths)
        todo = [path for path, key in zip(paths, _photo_keys(paths)) if key not in done]
        log = CaptionLog(output)  # opened before the model loads: an output that cannot be written is refused first
        try:
            failed = _caption_photos(todo, args, log)
        finally:
            log.close()
    if not args.quiet:
        print(f"captioner: {len(todo)} photos captioned into {output}" + (f" ({len(paths) - len(todo)} were already there)" if len(todo) < len(paths) else ""), file=sys.stderr)
    return 1 if failed or problems else 0


FEW_PHOTOS = 5  # more than this, and a terminal gets a progress bar


def _shows_progress(count: int, args: argparse.Namespace, log) -> bool:
    """A progress bar on stderr: always with --output, else where stderr is a terminal and there are more than a few photos."""
    return not args.quiet and (log is not None or (count > FEW_PHOTOS and sys.stderr.isatty()))


def _caption_photos(todo: list[Path | str], args: argparse.Namespace, log) -> int:
    """Caption `todo` in batches, printed or appended to `log`; 1 when some photo could not be read."""
    from tqdm import tqdm

    from .api import Captioner
    from .attention_figure import draw_explanation, save_new_png
    from .caption_style import PLAIN, SENTENCE
    from .explain import check_explainable

    captioner = Captioner.load(args.model, args.device, args.backend) if args.model else Captioner.from_pretrained(device=args.device, backend=args.backend)
    if args.explain is not None:
        check_explainable(captioner.decoder)  # a model without attention maps is refused before any photo is captioned
    failed = False
    bar = tqdm(total=len(todo), unit="photo", file=sys.stderr, disable=not _shows_progress(len(todo), args, log), dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(args.workers) as pool:
            for loaded, errors in _decoded_batches(todo, args.batch_size, pool):
                for error in errors:
                    bar.write(f"captioner: {error}", file=sys.stderr)
                failed |= bool(errors)
                if loaded and args.explain is not None:
                    results, explanations = captioner.explain_batch(
                        [image for _, image in loaded], args.beam_size, args.num_captions, style=PLAIN if args.plain else SENTENCE, neutral=args.neutral,
                    )
                    for (path, _), captions, explanation in zip(loaded, results, explanations):
                        save_new_png(draw_explanation(explanation), Path(args.explain), Path(str(path)).stem)
                        _print_or_log(path, captions, args, log, bar)
                elif loaded:
                    features = captioner.encode([image for _, image in loaded])
                    results = captioner.generate(
                        features, args.beam_size, args.num_captions, sampling=args.sample,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed, style=PLAIN if args.plain else SENTENCE, neutral=args.neutral,
                    )
                    for (path, _), captions in zip(loaded, results):
                        _print_or_log(path, captions, args, log, bar)
                if log is not None:
                    log.flush()
                sys.stdout.flush()
                bar.update(len(loaded) + len(errors))
    finally:
        bar.close()
    return 1 if failed else 0


def _ranked(rank: int, caption) -> str:
    """`RANK. TEXT<TAB>SCORE<TAB>CONFIDENCE` (no confidence column for a model without a calibration)."""
    confidence = f"\t{caption.confidence:.2f}" if caption.confidence is not None else ""
    return f"{rank}. {caption.text}\t{caption.score:.4f}{confidence}"


def _print_or_log(path: Path | str, captions, args: argparse.Namespace, log, bar) -> None:
    """One photo's captions: a line of the --output file, a JSON line or TSV lines on stdout
    (with --num-captions N > 1, each caption's rank, score and confidence: `PATH<TAB>1. TEXT<TAB>SCORE<TAB>CONFIDENCE`)."""
    from .caption_log import caption_record, photo_tags

    if log is not None:
        log.write(caption_record(path, captions))
        return
    if args.json:
        lines = [json.dumps(caption_record(path, captions))]  # ASCII, a name's non-UTF-8 bytes as \udcXX escapes
    else:
        tag_column = "\t" + ",".join(f"{t.word}:{t.score:.2f}" for t in photo_tags(captions)) if args.tags else ""
        ranked = args.num_captions > 1
        lines = [f"{_tsv_field(str(path))}\t" + (_ranked(rank, caption) if ranked else caption.text) + tag_column for rank, caption in enumerate(captions, 1)]
    for line in lines:
        if bar.disable:
            print(line)
        else:
            bar.write(line, file=sys.stdout)  # the bar is cleared and drawn again below the line


def command_train(args: argparse.Namespace) -> int:
    from .distributed import is_main_process
    from .training import TrainingConfig, train

    from .json_files import read_json

    data: dict = {}
    if args.config:
        data = read_json(args.config, "pass --config a JSON object of training settings")
    if args.resume:
        # Resume from the run's saved settings; flags given now (say a larger --epochs) apply on top.
        saved = Path(args.output or data.get("output", "runs/model")) / "training_config.json"
        if not saved.is_file():
            raise CaptionerError(f"nothing to resume: {saved} not found; start a new run without --resume")
        data = read_json(saved, "the run cannot be resumed with it: put back the run's own settings, or start the run again with --force")
    for flag, key in (("dataset", "dataset"), ("images", "images"), ("output", "output"), ("cache", "cache"), ("encoder", "encoder"), ("epochs", "epochs"), ("batch_size", "batch_size"), ("learning_rate", "learning_rate"), ("seed", "seed"), ("limit", "limit"), ("name", "name")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    if args.decoder:
        data.setdefault("decoder", {})["kind"] = args.decoder
    for assignment in args.set or []:
        if "=" not in assignment:
            raise CaptionerError(f"--set takes KEY=VALUE (e.g. decoder.dropout=0.5), got {assignment!r}")
        key, value = assignment.split("=", 1)
        target = data
        *parents, leaf = key.split(".")
        for depth, parent in enumerate(parents):
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise CaptionerError(f"--set {assignment}: {'.'.join(parents[: depth + 1])} is not a group of settings")
        target[leaf] = _parse_value(value)
    config = TrainingConfig.from_dict(data)
    if not config.dataset and not args.resume:
        raise CaptionerError("no dataset given; pass --dataset PATH (a Flickr8k folder, captions.txt, dataset_*.json, captions_*.json, .csv or .jsonl)")
    best = train(config, resume=args.resume, force=args.force, progress=not args.quiet, device=args.device)
    if is_main_process():  # under torchrun, once
        print(f"best model: {best}")
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_model
    from .labelled_photos import is_labelled_folder

    if is_labelled_folder(args.dataset):
        return evaluate_labelled(args)

    report = evaluate_model(
        args.model, args.dataset, args.images, args.split, args.beam_size, args.output, args.cache,
        force=args.force, limit=args.limit, save_metrics=args.save_metrics, progress=not args.quiet,
        length_penalty=args.length_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size, device=args.device,
    )
    for beam, scores in report["results"].items():
        print(f"{report['split']} ({report['images']} images), {beam}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


def evaluate_labelled(args: argparse.Namespace) -> int:
    """`evaluate` on a labelled photo folder (images/ + labels.json): does the caption name the photo?"""
    from .labelled_photos import evaluate_labelled_folder

    if len(args.beam_size) != 1:
        raise CaptionerError("a labelled photo folder is captioned with one beam size; pass one --beam-size")
    report = evaluate_labelled_folder(args.model, args.dataset, args.beam_size[0], args.output, args.force, args.limit, device=args.device, progress=not args.quiet)
    print(f"{report['photos']} photos, beam {report['beam_size']}:")
    for key, value in report.items():
        if key not in ("model", "folder", "beam_size", "photos", "output"):
            print(f"  {key.replace('_', ' ')}: {value}")
    print(f"per-photo results: {Path(report['output']) / 'photos.json'}")
    return 0


def command_features(args: argparse.Namespace) -> int:
    from .datasets import SPLITS, load_dataset
    from .devices import resolve_device
    from .encoders import create_encoder
    from .features import UNREADABLE_LIST, feature_cache, records_with_features
    from .onnx_encoder import encoder_on

    device = resolve_device(args.device)  # a device that is not here is refused before any work
    dataset = load_dataset(args.dataset, args.images)
    encoder = encoder_on(create_encoder(args.encoder), device)
    splits = set(args.splits or SPLITS)
    chosen = [record for record in dataset.records if record.split in splits]
    jobs = [("", chosen)] + ([("mirrored ", [record for record in chosen if record.split == "train"])] if args.flip else [])
    for kind, records in jobs:
        if not records:
            print(f"no {kind}features to build: mirrored features are for the train split only")
            continue
        started = time.time()
        cache = feature_cache(dataset, args.encoder, args.cache, [record.image for record in records], flip=bool(kind), encoder=encoder,
                              device=device, workers=args.workers, retry_unreadable=args.retry_unreadable)
        unreadable = len(records_with_features(records, cache)[1])
        skipped = f"; unreadable photos skipped: {unreadable} (listed in {cache.folder / UNREADABLE_LIST})" if unreadable else ""
        print(f"{kind}features of {len(records) - unreadable} images in {cache.folder} ({time.time() - started:.0f} s){skipped}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    if args.onnx:
        return export_onnx(args)
    output = Path(args.output)
    check_export_folder(output, Path(args.model), "--output")
    if output.exists() and any(output.iterdir()) and not args.force:
        raise CaptionerError(f"{output} already exists; pass --force to replace the model in it")
    import torch

    from .checkpoint import atomic_write_bytes, copy_concepts, load_concept_detector, load_model, read_config, save_model
    from .confidence import CALIBRATION
    from .encoders import create_encoder

    decoder, vocabulary, config = load_model(args.model)
    config = {key: value for key, value in config.items() if key not in ("format_version", "decoder")}
    if args.name:
        config["name"] = args.name
    if args.length_penalty is not None:
        config.setdefault("decoding", {})["length_penalty"] = args.length_penalty
    if args.no_repeat_ngram_size is not None:
        config.setdefault("decoding", {})["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    concepts_source = args.model
    if args.concepts_from:  # another run's detectors, person rule and guarded words for this decoder
        if "concepts" in config:
            raise CaptionerError(f"{args.model} already has concepts; --concepts-from is for models without them")
        source = read_config(args.concepts_from)
        if "concepts" not in source:
            raise CaptionerError(f"{args.concepts_from} has no concepts; pass a model trained with a concepts config")
        for key in ("encoder", "preprocess"):
            if source.get(key) != config.get(key):
                raise CaptionerError(f"{args.concepts_from} was trained with another {key} ({source.get(key)} vs {config.get(key)}); its concepts do not fit")
        load_concept_detector(args.concepts_from, source, create_encoder(source["encoder"]))  # refuse a broken file before writing
        config["concepts"], concepts_source = source["concepts"], args.concepts_from
    for key, most in (("person_threshold", 1.0), ("tag_threshold", 1.0), ("animal_floor", 1.0), ("object_penalty", 100.0)):
        value = getattr(args, key)
        if value is not None:
            if "concepts" not in config or not 0 <= value <= most:
                raise CaptionerError(f"--{key.replace('_', '-')} needs a model with concepts and a value between 0 and {most:g}")
            config["concepts"][key] = value
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
    from .confidence import CALIBRATION, load_calibration

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
    from .api import Captioner
    from .onnx_export import write_onnx_export

    captioner = Captioner.load(model, "cpu", backend="pytorch")
    manifest = write_onnx_export(captioner, output)
    size = sum(manifest["files"].values()) / 2**20
    print(f"exported {model} to {output} as ONNX ({len(manifest['files'])} files, {size:.1f} MiB); caption with: captioner caption --model {output} PHOTOS")
    return 0


def command_serve(args: argparse.Namespace) -> int:
    from .extras import install_hint, require

    for module in ("fastapi", "uvicorn", "python_multipart", "swagger_ui_bundle"):
        require(module, "serve", "captioner serve")
    try:
        from .server import serve
    except ImportError as error:
        raise CaptionerError(f"the web app cannot start ({error}); reinstall its packages with: {install_hint('serve')}") from None
    serve(host=args.host, port=args.port, model=args.model, max_upload_mb=args.max_upload_mb, device=args.device, backend=args.backend)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="captioner", description="Caption photos; train and evaluate captioning models.")
    parser.add_argument("--threads", type=THREADS, default=None, help="CPU threads for PyTorch (default: all cores, at most 8; 1 for serve)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    caption = commands.add_parser("caption", help="caption image files and folders")
    caption.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or http(s) URLs")
    caption.add_argument("--model", help="model folder (default: the shipped model)")
    caption.add_argument("--beam-size", type=BEAM, default=3)
    caption.add_argument("--num-captions", type=COUNT, default=1, help="captions per image (n-best list, each with its rank and score); more than --beam-size widens the beam")
    caption.add_argument("--json", action="store_true", help="one JSON object per line with scores and tags")
    caption.add_argument("--plain", action="store_true", help="captions as the model writes them ('a cat on a bed'), not as sentences ('A cat on a bed.')")
    caption.add_argument("--neutral", action="store_true", help="person words without gender ('a person', 'a child', 'people')")
    caption.add_argument("--tags", action="store_true", help="add a third column of visual concepts, word:score pairs joined by commas")
    caption.add_argument("--batch-size", type=COUNT, default=8)
    caption.add_argument("--sample", action="store_true", help="sample captions instead of beam search")
    caption.add_argument("--temperature", type=POSITIVE_NUMBER, default=1.0)
    caption.add_argument("--top-p", type=TOP_P, default=0.9)
    caption.add_argument("--seed", type=ZERO_OR_MORE, default=None)
    caption.add_argument("--output", help="append one JSON line per photo to this file as it goes; a rerun skips photos already in it")
    caption.add_argument("--workers", type=_number(int, Limit(1, 64), "a whole number from 1 to 64"), default=1, help="threads decoding photos ahead of the model (default 1)")
    caption.add_argument("--quiet", action="store_true", help="no progress bar, nor the summary of --output")
    caption.add_argument("--explain", metavar="DIR", help="also write DIR/PHOTO.png per photo: the photo and, per word of its best caption, where the model looked (attention and transformer decoders; never replaces a file: a taken name gets -2, -3, ...)")
    caption.add_argument("--device", type=DEVICE, default=None, help=DEVICE_HELP)
    caption.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    caption.add_argument("--ray", metavar="ADDRESS", help="caption with Ray Data: local (start Ray here), auto (this machine's cluster), HOST:PORT (its head) or ray://HOST:PORT (Ray Client); PATH may also be a URI (s3://...) or a .parquet/.csv manifest with a 'path' column, and --output is a folder of shards (pip install 'captioner[ray]')")
    caption.add_argument("--actors", type=COUNT, help="with --ray: captioning actors, each loading the model once (default: one per GPU, else three quarters of the CPUs)")
    caption.add_argument("--actor-cpus", type=COUNT, help="with --ray: CPUs (threads) per captioning actor (default 1)")
    caption.add_argument("--format", dest="shard_format", choices=("jsonl", "parquet"), help="with --ray: shard format (default jsonl)")
    caption.add_argument("--shard-size", type=COUNT, help="with --ray: photos per shard file (default 10000)")
    caption.set_defaults(handler=command_caption)

    train = commands.add_parser("train", help="train a decoder on cached features")
    train.add_argument("--config", help="JSON file of training settings (flags override it)")
    train.add_argument("--dataset", help="dataset folder or annotation file")
    train.add_argument("--images", help="folder holding the photos, if not beside the annotations")
    train.add_argument("--output", help="run folder (default runs/model)")
    train.add_argument("--cache", help="feature cache root (default cache/)")
    train.add_argument("--encoder", help="efficientnet-lite0, -lite1 or -lite2 (default)")
    train.add_argument("--decoder", choices=["merge", "attention", "transformer"])
    train.add_argument("--epochs", type=COUNT)
    train.add_argument("--batch-size", type=COUNT)
    train.add_argument("--learning-rate", type=POSITIVE_NUMBER)
    train.add_argument("--limit", type=ZERO_OR_MORE, help="at most this many images per split (quick runs)")
    train.add_argument("--name", help="model name stored in its config")
    train.add_argument("--seed", type=ZERO_OR_MORE)
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any setting, e.g. decoder.dropout=0.5")
    train.add_argument("--resume", action="store_true", help="continue the run in --output")
    train.add_argument("--force", action="store_true", help="replace the run in --output (kept until the new run has its first checkpoint, put back if it fails)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--device", type=DEVICE, default=None, help=DEVICE_HELP)
    train.set_defaults(handler=command_train)

    evaluate = commands.add_parser("evaluate", help="score a model with the coco-caption metrics")
    evaluate.add_argument("--model", help="model folder (default: the shipped model)")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--images")
    evaluate.add_argument("--split", default=None, choices=["train", "dev", "test"], help="default: test, or dev when the dataset has no test images")
    evaluate.add_argument("--beam-size", type=BEAM, nargs="+", default=[3], help="one or more beam sizes (1 = greedy)")
    evaluate.add_argument("--output", help="report folder (default runs/eval/MODEL-SPLIT)")
    evaluate.add_argument("--cache", default="cache")
    evaluate.add_argument("--limit", type=ZERO_OR_MORE, default=0, help="first N images of the split only")
    evaluate.add_argument("--save-metrics", action="store_true", help="also write the scores to the model's metrics.json")
    evaluate.add_argument("--force", action="store_true", help="overwrite an existing report folder")
    evaluate.add_argument("--length-penalty", type=FINITE_NUMBER, help="override the model's length penalty (0 = sum of log-probs, 1 = mean)")
    evaluate.add_argument("--no-repeat-ngram-size", type=ZERO_OR_MORE, help="override the model's repeated n-gram ban (0 = off)")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.add_argument("--device", type=DEVICE, default=None, help=DEVICE_HELP)
    evaluate.set_defaults(handler=command_evaluate)

    features = commands.add_parser("features", help="build the feature cache of a dataset")
    features.add_argument("--dataset", required=True)
    features.add_argument("--images")
    features.add_argument("--encoder", default="efficientnet-lite2")
    features.add_argument("--cache", default="cache")
    features.add_argument("--splits", nargs="+", choices=["train", "dev", "test"])
    features.add_argument("--flip", action="store_true", help="also the features of the train split's photos mirrored (training augmentation)")
    features.add_argument("--workers", type=_number(int, Limit(0, 64), "a whole number from 0 to 64"), default=None,
                          help="processes decoding photos (default: on the CPU 0, one decoding thread beside the encoder; on a GPU one for each core but one, at most 8)")
    features.add_argument("--retry-unreadable", action="store_true", help="try again the photos an earlier run could not read (listed in the cache's unreadable.txt)")
    features.add_argument("--device", type=DEVICE, default=None, help=DEVICE_HELP)
    features.set_defaults(handler=command_features)

    export = commands.add_parser("export", help="copy a trained model folder, optionally as float16, or export it as ONNX")
    export.add_argument("--model", required=True, help="model folder, e.g. runs/NAME/best")
    destination = export.add_mutually_exclusive_group(required=True)
    destination.add_argument("--output", help="folder for the copy")
    destination.add_argument("--onnx", metavar="OUT", help="folder for the encoder, concept detector and decoder step as ONNX files with the config; caption with --model OUT (it runs on onnxruntime)")
    export.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    export.add_argument("--name", help="rename the model")
    export.add_argument("--length-penalty", type=FINITE_NUMBER, help="default length penalty stored with the model")
    export.add_argument("--no-repeat-ngram-size", type=ZERO_OR_MORE, help="default repeated n-gram ban stored with the model")
    export.add_argument("--person-threshold", type=FINITE_NUMBER, help="person probability (0-1) under which captions name no person")
    export.add_argument("--tag-threshold", type=FINITE_NUMBER, help="probability (0-1) a tag needs to be shown")
    export.add_argument("--animal-floor", type=FINITE_NUMBER, help="ImageNet animal probability (0-1) under which captions name no animal")
    export.add_argument("--object-penalty", type=FINITE_NUMBER, help="log-probability taken from COCO object words ImageNet sees no trace of (0 = off)")
    export.add_argument("--concepts-from", help="give a model trained without concepts the word detectors, person rule and guarded words of this model folder (same encoder)")
    export.add_argument("--force", action="store_true")
    export.set_defaults(handler=command_export)

    serve = commands.add_parser("serve", help="start the web app and JSON API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=PORT, default=5000)
    serve.add_argument("--model", help="model folder (default: the shipped model)")
    serve.add_argument("--max-upload-mb", type=POSITIVE_NUMBER, default=10.0)
    serve.add_argument("--device", type=DEVICE, default=None, help=DEVICE_HELP)
    serve.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    serve.set_defaults(handler=command_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # The server runs inference on its own worker thread next to the event loop: one PyTorch
        # thread there was measured faster (125 vs 240 ms a caption) than two competing with it.
        _threads(args.threads or (1 if args.command == "serve" else None))
        return args.handler(args)
    except CaptionerError as error:
        print(f"captioner: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
