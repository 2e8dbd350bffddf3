"""`captioner caption`: photos, folders and URLs in; captions printed, appended to an `--output`
file (resumable, one run at a time) or drawn with their attention maps (`--explain`)."""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import CaptionerError
from ..model.config_checks import MAX_BEAM

FEW_PHOTOS = 5  # more than this, and a terminal gets a progress bar


def _tsv_field(text: str) -> str:
    r"""A path as one TSV field: a backslash, tab, newline or carriage return becomes \\, \t, \n or \r;
    a byte of the name that is not UTF-8 (read by Python as a lone surrogate U+DC80..U+DCFF) becomes \xNN."""
    escaped = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return re.sub("[\ud800-\udfff]", _escaped_surrogate, escaped)


def _escaped_surrogate(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _decoded_batches(paths: list[Path | str], batch_size: int, pool: ThreadPoolExecutor):
    """(photos read, error messages) per batch; the next batch decodes (or downloads) in `pool`
    while the caller captions this one, so the cores never wait on Pillow."""
    from ..data.image_sources import read_image
    from ..data.read_ahead import one_ahead

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
        from ..batch.ray_captioning import caption_with_ray  # Ray is imported there, never on this machine-only path

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
    from ..generation.attention_figure import check_explain_folder

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
    from ..data.image_sources import is_url
    from ..data.images import find_images

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
    from ..data.image_sources import is_url
    from ..data.images import resolved_paths

    return [photo if is_url(photo) else key for photo, key in zip(photos, resolved_paths(photos))]


def _caption_into(output: Path, args: argparse.Namespace) -> int:
    """`caption --output FILE`: the photos not in FILE yet, appended to it, with this run holding FILE's lock."""
    from ..batch.caption_log import CaptionLog, read_done
    from ..batch.output_lock import OutputLock

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


def _shows_progress(count: int, args: argparse.Namespace, log) -> bool:
    """A progress bar on stderr: always with --output, else where stderr is a terminal and there are more than a few photos."""
    return not args.quiet and (log is not None or (count > FEW_PHOTOS and sys.stderr.isatty()))


def _caption_photos(todo: list[Path | str], args: argparse.Namespace, log) -> int:
    """Caption `todo` in batches, printed or appended to `log`; 1 when some photo could not be read."""
    from tqdm import tqdm

    from ..api import Captioner
    from ..generation.attention_figure import draw_explanation, save_new_png
    from ..generation.caption_style import PLAIN, SENTENCE
    from ..generation.explain import check_explainable

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
    from ..batch.caption_log import caption_record, photo_tags

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
