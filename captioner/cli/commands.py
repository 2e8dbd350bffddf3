"""The `captioner` command: caption, train, evaluate, features, serve.

Device and thread count are resolved here, once. Errors a user can fix are printed as one
line (`captioner: error: ...`) with a non-zero exit status, never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..errors import CaptionerError
from ..model.config_checks import Limit
from ..runtimes import BACKENDS
from .arguments import BACKEND_HELP, BEAM, COUNT, DEVICE, DEVICE_HELP, FINITE_NUMBER, PORT, POSITIVE_NUMBER, THREADS, TOP_P, ZERO_OR_MORE, OneLineParser, bounded_number
from .caption_command import command_caption
from .export_command import command_export


def _threads(count: int | None) -> None:
    import torch

    torch.set_num_threads(count or max(1, min(os.cpu_count() or 1, 8)))


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text




def command_train(args: argparse.Namespace) -> int:
    from ..json_files import read_json
    from ..training.distributed import is_main_process
    from ..training.loop import TrainingConfig, train

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
    from ..evaluation.labelled_photos import is_labelled_folder
    from ..evaluation.scoring import evaluate_model

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
    from ..evaluation.labelled_photos import evaluate_labelled_folder

    if args.beam_size is not None and len(args.beam_size) != 1:
        raise CaptionerError("a labelled photo folder is captioned with one beam size; pass one --beam-size")
    report = evaluate_labelled_folder(args.model, args.dataset, args.beam_size and args.beam_size[0], args.output, args.force, args.limit, device=args.device, progress=not args.quiet)
    print(f"{report['photos']} photos, beam {report['beam_size']}:")
    for key, value in report.items():
        if key not in ("model", "folder", "beam_size", "photos", "output"):
            print(f"  {key.replace('_', ' ')}: {value}")
    print(f"per-photo results: {Path(report['output']) / 'photos.json'}")
    return 0


def command_features(args: argparse.Namespace) -> int:
    from ..data.datasets import SPLITS, load_dataset
    from ..data.features import UNREADABLE_LIST, feature_cache, records_with_features
    from ..devices import resolve_device
    from ..model.encoders import create_encoder
    from ..runtimes.onnx_encoder import encoder_on

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


def command_serve(args: argparse.Namespace) -> int:
    from ..extras import install_hint, require

    for module in ("fastapi", "uvicorn", "python_multipart", "swagger_ui_bundle"):
        require(module, "serve", "captioner serve")
    try:
        from ..server import serve
    except ImportError as error:
        raise CaptionerError(f"the web app cannot start ({error}); reinstall its packages with: {install_hint('serve')}") from None
    serve(host=args.host, port=args.port, model=args.model, max_upload_mb=args.max_upload_mb, device=args.device, backend=args.backend)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="captioner", description="Caption photos; train and evaluate captioning models.")
    parser.add_argument("--threads", type=THREADS, default=None, help="CPU threads for PyTorch (default: all cores, at most 8; 1 for serve)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _caption_arguments(commands)
    _train_arguments(commands)
    _evaluate_arguments(commands)
    _features_arguments(commands)
    _export_arguments(commands)
    _serve_arguments(commands)
    return parser


def _caption_arguments(commands) -> None:
    caption = commands.add_parser("caption", help="caption image files and folders")
    caption.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or http(s) URLs")
    caption.add_argument("--model", help="model folder (default: the shipped model)")
    caption.add_argument("--beam-size", type=BEAM, help="default: the model's own (decoding.beam_size in its config.json; 3 for the shipped model); 1 = greedy")
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
    caption.add_argument("--workers", type=bounded_number(int, Limit(1, 64), "a whole number from 1 to 64"), default=1, help="threads decoding photos ahead of the model (default 1)")
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


def _train_arguments(commands) -> None:
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


def _evaluate_arguments(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="score a model with the coco-caption metrics")
    evaluate.add_argument("--model", help="model folder (default: the shipped model)")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--images")
    evaluate.add_argument("--split", default=None, choices=["train", "dev", "test"], help="default: test, or dev when the dataset has no test images")
    evaluate.add_argument("--beam-size", type=BEAM, nargs="+", help="one or more beam sizes (1 = greedy; default: the model's own)")
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


def _features_arguments(commands) -> None:
    features = commands.add_parser("features", help="build the feature cache of a dataset")
    features.add_argument("--dataset", required=True)
    features.add_argument("--images")
    features.add_argument("--encoder", default="efficientnet-lite2")
    features.add_argument("--cache", default="cache")
    features.add_argument("--splits", nargs="+", choices=["train", "dev", "test"])
    features.add_argument("--flip", action="store_true", help="also the features of the train split's photos mirrored (training augmentation)")
    features.add_argument("--workers", type=bounded_number(int, Limit(0, 64), "a whole number from 0 to 64"), default=None,
                          help="processes decoding photos (default: on the CPU 0, one decoding thread beside the encoder; on a GPU one for each core but one, at most 8)")
    features.add_argument("--retry-unreadable", action="store_true", help="try again the photos an earlier run could not read (listed in the cache's unreadable.txt)")
    features.add_argument("--device", type=DEVICE, default=None, help=DEVICE_HELP)
    features.set_defaults(handler=command_features)


def _export_arguments(commands) -> None:
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


def _serve_arguments(commands) -> None:
    serve = commands.add_parser("serve", help="start the web app and JSON API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=PORT, default=5000)
    serve.add_argument("--model", help="model folder (default: the shipped model)")
    serve.add_argument("--max-upload-mb", type=POSITIVE_NUMBER, default=10.0)
    serve.add_argument("--device", type=DEVICE, default=None, help=DEVICE_HELP)
    serve.add_argument("--backend", choices=BACKENDS, default=None, help=BACKEND_HELP)
    serve.set_defaults(handler=command_serve)


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
