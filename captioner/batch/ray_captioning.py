"""Captioning on a Ray cluster with Ray Data: `captioner caption PATH... --ray ADDRESS --output FOLDER`.

The pipeline, for the photos not yet in FOLDER:

    photo list   files, folders, URIs (s3://, gs://, file://...) or a .parquet/.csv manifest with a `path` column
    -> decode    parallel Ray tasks: `load_image` + `preprocess`, the reading path every other command uses
    -> caption   a pool of actors, each loading the model once (one GPU per actor where the cluster has GPUs)
    -> shards    captions-NNNNN.jsonl (or .parquet) in FOLDER, one record per photo, the fields of `caption --output`

Only captions come back to the command, never pixels, and the command writes the shards: it sees every
photo that could not be read (reported on stderr, as the plain command does, and not written), shows
one progress bar, and keeps the output where it runs, also when it joins a cluster with ray:// (Ray
Data's executor cannot run through Ray Client, so there the pipeline runs in a relay actor in the cluster).
JSON Lines shards are flushed after every batch and Parquet shards are renamed into place whole
(`caption_shards.py`), so a crash loses at most what was being captioned; a rerun skips every photo
already in the shards.

Ray is an optional extra (`pip install "captioner[ray]"`), imported only here.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import load_image
from ..devices import DEVICE_ENVIRONMENT_VARIABLE
from ..errors import CaptionerError, ImageError
from ..model.encoders import PreprocessConfig, preprocess
from .caption_shards import DEFAULT_SHARD_SIZE, ShardFolder
from .output_lock import OutputLock, check_output_place
from .ray_photo_list import is_uri, photo_keys, photo_list, resolve_uri

INSTALL_HINT = 'pip install "captioner[ray]"'
MAX_INPUT_BLOCKS = 10_000  # blocks of photo paths handed to the decoding tasks (each block: one task's work)
ACTOR_MEMORY = 1 << 30  # reserved per captioning actor: the model and its activations (0.5 GiB peak measured at batch 8 on a CPU)
CONNECT_SECONDS = 5


# The entry point


def caption_with_ray(args: argparse.Namespace) -> int:
    """Run `caption --ray`: check everything, caption what is not in the output folder yet, return the exit status."""
    ray = import_ray()
    output, shard_format, device = check_options(args)
    check_address(args.ray)
    preprocess_config, onnx_export = read_model(args.model)
    if onnx_export:
        device = cpu_for_onnx_export(device)
    shards = ShardFolder(output, shard_format)
    with OutputLock(output, what="folder"):  # one run at a time writes into a shard folder
        done = set(photo_keys(shards.done()))
        paths, problems = photo_list(args.paths)
        for problem in problems:
            print(f"captioner: {problem}", file=sys.stderr)
        if not paths:
            raise CaptionerError("no images to caption; pass image files, folders or a .parquet/.csv manifest with a 'path' column")
        todo = [path for path, key in zip(paths, photo_keys(paths)) if key not in done]
        failed = bool(problems)
        if todo:
            started_here = connect(ray, args.ray)
            try:
                failed |= _caption(ray, todo, shards, preprocess_config, args, device)
            finally:
                if started_here:
                    ray.shutdown()
    if not args.quiet:
        already = f" ({len(paths) - len(todo)} were already there)" if len(todo) < len(paths) else ""
        print(f"captioner: {len(todo)} photos captioned into {output}{already}", file=sys.stderr)
    return 1 if failed else 0


def read_model(model: str | None) -> tuple[PreprocessConfig, bool]:
    """The model's preprocessing, and whether it is an ONNX export folder (which the actors run with
    ONNX Runtime). The model is loaded once here, on the CPU, before Ray starts: every check plain
    `caption` makes (truncated weights, a tampered export) refuses it in one line, not in an actor."""
    from ..api import Captioner, pretrained_path
    from ..runtimes.onnx_backend import is_onnx_export

    folder = Path(model) if model else pretrained_path()
    captioner = Captioner.load(folder, "cpu")
    return captioner.config.preprocess, is_onnx_export(folder)


def cpu_for_onnx_export(device: str) -> str:
    if device == "cuda":
        raise CaptionerError("--device cuda: an ONNX export folder runs on CPUs (ONNX Runtime); pass --device cpu (or auto), or the PyTorch model folder for GPUs")
    return "cpu"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings pyarrow and pandas with it)
    except ImportError:
        raise CaptionerError(f"--ray needs Ray Data, which is not installed; {INSTALL_HINT}") from None
    return ray


def check_options(args: argparse.Namespace) -> tuple[Path, str, str]:
    """The output folder, the shard format and the device choice, or a one-line error."""
    if not args.output:
        raise CaptionerError("--ray needs --output FOLDER, the folder the caption shards are written to")
    if is_uri(args.output):
        raise CaptionerError(f"--output {args.output}: with --ray, pass a local folder (the captions are written where the command runs)")
    check_output_place(Path(args.output))
    device = (args.device or os.environ.get(DEVICE_ENVIRONMENT_VARIABLE) or "auto").strip().lower()
    if device.startswith("cuda:"):
        raise CaptionerError(f"--device {device} picks a GPU of this machine; with --ray each actor gets a GPU of the cluster: pass --device cuda (or auto)")
    return Path(args.output), args.shard_format or "jsonl", device


def to_arrow(path: str) -> bytes:
    """A path as Arrow carries it: bytes, since a file name need not be UTF-8 (Python reads its other bytes as lone surrogates)."""
    return path.encode("utf-8", "surrogateescape")


def from_arrow(value) -> str:
    return bytes(value).decode("utf-8", "surrogateescape")


def printable(message: str) -> str:
    """A message Arrow can carry (valid UTF-8): a lone surrogate of a file name written as \\udcXX, as stderr shows it."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


# Ray


def check_address(address: str) -> None:
    """Ray's address forms only; a HOST:PORT or ray://HOST:PORT that nothing answers at is refused at
    once, before any work (Ray itself retries for 30 s with ray://, and for minutes with HOST:PORT)."""
    host_port = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address)
    if address not in ("local", "auto") and not host_port:
        raise CaptionerError(f"--ray must be local (start Ray here), auto (the cluster this machine belongs to), ray://HOST:PORT or HOST:PORT, not {address!r}")
    if host_port:
        try:
            socket.create_connection((host_port.group(1), int(host_port.group(2))), CONNECT_SECONDS).close()
        except OSError as error:
            raise CaptionerError(f"--ray {address}: no Ray cluster answers there ({error.strerror or error}); start one with 'ray start --head' or pass --ray local") from None


def connect(ray, address: str) -> bool:
    """Join the cluster at `address` (local: start one here); True when this call started Ray, so it stops it too.
    A process already connected (the Python API, the tests) keeps its connection."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, **({"include_dashboard": False} if address == "local" else {}))
    except (ConnectionError, ValueError) as error:  # no cluster found (auto), refused credentials, ray:// without ray[client]
        raise CaptionerError(f"--ray {address}: cannot connect ({str(error).splitlines()[0]}); is the cluster up ('ray status' on its head)? "
                             "With Ray's token authentication, set RAY_AUTH_MODE=token; --ray local starts Ray here") from None
    return True


def _caption(ray, todo: list[str], shards: ShardFolder, preprocess_config: PreprocessConfig, args: argparse.Namespace, device: str) -> bool:
    """Run the pipeline over `todo`, writing shards as captions arrive; True when some photo could not be read."""
    from tqdm import tqdm

    actors, actor_cpus, gpus = actor_pool_size(ray.cluster_resources(), args.actors, args.actor_cpus or 1, device)
    settings = PipelineSettings(
        preprocess=preprocess_config.to_dict(), batch_size=args.batch_size, folder=os.getcwd(),
        model=args.model and str(Path(args.model).resolve()), actors=actors, actor_cpus=actor_cpus, gpus=gpus,
        options=dict(beam_size=args.beam_size, num_captions=args.num_captions, sampling=args.sample, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                     style="plain" if args.plain else "sentence", neutral=args.neutral),
    )
    writer = shards.writer(args.shard_size or DEFAULT_SHARD_SIZE)
    bar = tqdm(total=len(todo), unit="photo", file=sys.stderr, disable=args.quiet, dynamic_ncols=True)
    failed = False
    try:
        for batch in record_batches(ray, todo, settings):
            for record, error in zip(batch["record"], batch["error"]):
                if not error:
                    record = json.loads(record)
                    error = shards.refusal(record)
                if error:
                    bar.write(f"captioner: {error}", file=sys.stderr)
                    failed = True
                else:
                    writer.write(record)
            writer.end_batch()
            bar.update(len(batch["record"]))
    finally:
        bar.close()
        writer.close()
    return failed


def actor_pool_size(resources: dict, actors: int | None, actor_cpus: int, device: str) -> tuple[int, int, int]:
    """(actors, CPUs per actor, GPUs per actor) for the cluster's `resources`: one actor per GPU where
    there are GPUs (and the device allows them), else three quarters of the CPUs, the rest decoding."""
    cluster_gpus, cluster_cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if device == "cuda" and not cluster_gpus:
        raise CaptionerError("--device cuda: the Ray cluster has no GPUs; pass --device cpu (or auto)")
    gpus = 1 if cluster_gpus and device != "cpu" else 0
    if not gpus and cluster_cpus < actor_cpus + 1:
        raise CaptionerError(f"the Ray cluster has {cluster_cpus} CPUs; captioning needs {actor_cpus} per actor (--actor-cpus) plus one to decode photos")
    count = actors or (cluster_gpus if gpus else max(1, (cluster_cpus * 3 // 4) // actor_cpus))
    if count * actor_cpus + 1 > cluster_cpus or count * gpus > cluster_gpus:  # fine on a cluster that grows, a wait forever on one that does not
        print(f"captioner: warning: {count} actors of {actor_cpus} CPUs and {gpus} GPUs, plus a CPU decoding photos, need more than the cluster has now "
              f"({cluster_cpus} CPUs, {cluster_gpus} GPUs); Ray waits until it grows", file=sys.stderr)
    return count, actor_cpus, gpus


@dataclass(frozen=True)
class PipelineSettings:
    """What the pipeline's stages need, resolved where the command runs (paths relative to its `folder`)."""

    preprocess: dict  # the model's PreprocessConfig
    batch_size: int
    folder: str
    model: str | None  # None: the shipped model
    actors: int
    actor_cpus: int
    gpus: int  # per actor: 0 or 1
    options: dict  # Captioner.generate's


def record_batches(ray, todo: list[str], settings: PipelineSettings):
    """The pipeline's batches ({"record": (B,), "error": (B,)}) as they come. Through Ray Client
    (ray://), where Ray Data's executor cannot run, the pipeline runs in an actor inside the
    cluster, which hands the batches over one at a time."""
    if not through_ray_client():
        yield from pipeline(ray, todo, settings).iter_batches(batch_size=None, batch_format="numpy")
        return
    relay = ray.remote(num_cpus=0)(PipelineRelay).remote(todo, settings)
    try:
        while (batch := ray.get(relay.next_batch.remote())) is not None:
            yield batch
    finally:
        ray.kill(relay)


def through_ray_client() -> bool:
    from ray.util.client import ray as ray_client

    return ray_client.is_connected()


class PipelineRelay:
    """A Ray actor running the pipeline inside the cluster for a command connected through Ray Client."""

    def __init__(self, todo: list[str], settings: PipelineSettings):
        import ray

        self.batches = iter(pipeline(ray, todo, settings).iter_batches(batch_size=None, batch_format="numpy"))

    def next_batch(self) -> dict | None:
        return next(self.batches, None)


def pipeline(ray, todo: list[str], settings: PipelineSettings):
    """The Ray Data dataset: paths -> (decoding tasks) pixels -> (captioning actors) records."""
    import pyarrow as pa

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the command shows its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": on purpose
    blocks = max(1, min(math.ceil(len(todo) / settings.batch_size), MAX_INPUT_BLOCKS))
    dataset = ray.data.from_arrow(pa.table({"path": pa.array(map(to_arrow, todo), pa.binary())}), override_num_blocks=blocks)
    dataset = dataset.map_batches(decode_photos, batch_size=settings.batch_size, batch_format="numpy", fn_kwargs={"preprocess_config": settings.preprocess, "folder": settings.folder})
    return dataset.map_batches(
        CaptioningActor, batch_size=settings.batch_size, batch_format="numpy",
        fn_constructor_kwargs={"model": settings.model, "device": "cuda" if settings.gpus else "cpu", "threads": settings.actor_cpus, "options": settings.options},
        compute=ray.data.ActorPoolStrategy(size=settings.actors), num_cpus=settings.actor_cpus, num_gpus=settings.gpus,
        # The memory reservation also keeps Ray Data from fusing the decoding tasks into the actors
        # (it fuses stages that ask for the same resources), so photos decode while others are captioned.
        memory=ACTOR_MEMORY,
    )


def read_photo(path: str, folder: str = "."):
    """A photo from a local path (relative to `folder`, the command's own) or any URI pyarrow reads, as an upright RGB image (`load_image`)."""
    if not is_uri(path):
        return load_image(os.path.join(folder, path), name=path)
    try:
        filesystem, inner = resolve_uri(path)
        with filesystem.open_input_file(inner) as file:
            data = file.read()
    except (OSError, CaptionerError) as error:
        raise ImageError(f"{path}: cannot read it ({error})") from None
    return load_image(data, name=path)


def decode_photos(batch: dict[str, np.ndarray], preprocess_config: dict, folder: str) -> dict[str, np.ndarray]:
    """Ray Data task: paths (B,) -> pixels (B, 3, S, S) as the encoder reads them, and an error message per photo ("" when read)."""
    config = PreprocessConfig(**preprocess_config)
    paths = batch["path"]
    pixels = np.zeros((len(paths), 3, config.input_size, config.input_size), dtype=np.float32)  # (B, 3, S, S)
    errors = np.full(len(paths), "", dtype=object)
    for row, path in enumerate(paths):
        try:
            pixels[row] = preprocess(read_photo(from_arrow(path), folder), config).numpy()  # (3, S, S)
        except CaptionerError as error:
            errors[row] = printable(str(error))
    return {"path": paths, "pixels": pixels, "error": errors}


class CaptioningActor:
    """Ray Data actor: loads the model once, then turns batches of pixels into `caption --output` records (JSON text)."""

    def __init__(self, model: str | None, device: str, threads: int, options: dict):
        import torch

        from ..api import Captioner

        torch.set_num_threads(threads)
        self.captioner = Captioner.load(model, device) if model else Captioner.from_pretrained(device=device)
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from .caption_log import caption_record, record_line

        records = np.full(len(batch["path"]), "", dtype=object)
        readable = [row for row, error in enumerate(batch["error"]) if not error]
        if readable:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][readable])).to(self.captioner.device)  # (R, 3, S, S)
            features = self.captioner.encode_pixels(pixels)  # grid (R, G, C), pooled (R, C), saturation (R,)
            for row, captions in zip(readable, self.captioner.generate(features, **self.options)):
                records[row] = record_line(caption_record(from_arrow(batch["path"][row]), captions))
        return {"record": records, "error": batch["error"]}
