"""Caption quality with the standard coco-caption scorer (pycocoevalcap), plus object hallucination.

PTB tokenisation, then BLEU-1..4, METEOR, ROUGE-L and CIDEr (SPICE is left out: it downloads
Stanford CoreNLP). The tokenizer and METEOR run on Java (`java` must be on PATH). `evaluate_model`
adds CHAIR-s and CHAIR-i (`captioner.evaluation.chair`): how often captions name COCO objects not in the photo.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from ..errors import CaptionerError
from ..extras import require

if TYPE_CHECKING:  # torch is imported where evaluation runs, not when the module loads
    import torch

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@contextlib.contextmanager
def _java_stderr_captured():
    """The PTB tokenizer's JVM prints progress on the inherited stderr; keep it unless something fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def require_java() -> None:
    """Refuse, saying what to install, where Java is missing: the PTB tokenizer and METEOR run on it.
    Training and evaluation call it before any work, so a run never fails after its first epoch."""
    if shutil.which("java") is None:
        raise CaptionerError("the coco-caption scorer needs Java, and 'java' is not on PATH; install a JRE (e.g. apt-get install default-jre-headless) and run again")


def require_scorer() -> None:
    """Refuse, saying what to install, where the coco-caption scorer (the [train] extra) or the Java it runs on is missing."""
    require("pycocoevalcap", "train", "the coco-caption scorer")
    require_java()


def score_captions(references: dict[str, list[str]], hypotheses: dict[str, str], metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    """Corpus-level scores of one hypothesis per image against its reference captions."""
    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must cover the same images")
    require_scorer()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    with _java_stderr_captured():
        gts = tokenizer.tokenize({key: [{"caption": c} for c in captions] for key, captions in references.items()})
        res = tokenizer.tokenize({key: [{"caption": hypotheses[key]}] for key in references})
    scores: dict[str, float] = {}
    if any(name.startswith("BLEU") for name in metrics):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"BLEU-{n + 1}": float(value) for n, value in enumerate(bleu)})
    if "METEOR" in metrics:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
        del meteor  # closes the Java process
    if "ROUGE-L" in metrics:
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in metrics:
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {name: scores[name] for name in METRICS if name in scores and name in metrics}


def photo_saturations(captioner, dataset, records, batch_size: int = 100) -> torch.Tensor:
    """(N,) each photo's colour saturation, from the same preprocessed pixels the encoder sees:
    the feature cache keeps features, not pixels, and the colour rule needs them."""
    import torch

    from ..data.colour import saturation
    from ..data.images import load_image
    from ..model.encoders import preprocess

    config = captioner.preprocess_config
    parts = []
    for start in range(0, len(records), batch_size):
        pixels = torch.stack([preprocess(load_image(dataset.image_path(record)), config) for record in records[start : start + batch_size]])  # (B, 3, S, S)
        parts.append(saturation(pixels, config.mean, config.std))
    return torch.cat(parts)


def caption_split(captioner, cache_store, records, saturations, beam_size: int, batch_size: int = 100, progress: bool = True) -> tuple[dict[str, str], dict[str, list]]:
    """Best caption and tags per image of a split, from cached features and the photos'
    `saturations` (N,), through the same `Captioner.generate` that captions photos (concepts,
    rules, the subject constraint)."""
    from ..generation.cached_decoding import batch_features

    rows = cache_store.rows([record.image for record in records])
    captions, tags = {}, {}
    for start in range(0, len(rows), batch_size):
        chunk = records[start : start + batch_size]
        features = batch_features(cache_store, rows[start : start + batch_size], captioner.device)
        features = features._replace(saturation=saturations[start : start + batch_size].to(captioner.device))
        for record, (best, *_) in zip(chunk, captioner.generate(features, beam_size)):
            captions[record.image], tags[record.image] = best.text, [[tag.word, tag.score] for tag in best.tags]
        if progress:
            print(f"\r{min(start + batch_size, len(rows))}/{len(rows)} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return captions, tags


def tag_precision_recall(tags: dict[str, list[str]], references: dict[str, list[str]], vocabulary: list[str]) -> dict[str, float]:
    """Tags against the words of the reference captions (singular forms, phrases as a whole).

    precision: share of tags that some reference of the photo uses; recall: share of the concepts
    the tagger can name (`vocabulary`) that at least two references of the photo use and that it tagged.
    """
    from ..model.vocabulary import tokenize
    from ..training.concepts import ConceptMatcher

    matcher = ConceptMatcher(vocabulary)
    correct = predicted = found = wanted = 0
    for key, words in tags.items():
        counts: dict[int, int] = {}
        for caption in references[key]:
            for concept in set(matcher(tokenize(caption))):
                counts[concept] = counts.get(concept, 0) + 1
        tagged = {index for word in words for index in matcher(tokenize(word))}
        predicted += len(tagged)
        correct += len(tagged & set(counts))
        consensus = {concept for concept, count in counts.items() if count >= 2}
        wanted += len(consensus)
        found += len(consensus & tagged)
    return {"precision": round(correct / max(1, predicted), 4), "recall": round(found / max(1, wanted), 4), "tags_per_image": round(predicted / max(1, len(tags)), 2)}


def evaluate_model(
    model: str | None, dataset_path: str, images: str | None = None, split: str | None = None, beam_sizes: list[int] | None = None,
    output: str | None = None, cache: str = "cache", force: bool = False, limit: int = 0, save_metrics: bool = False, progress: bool = True,
    length_penalty: float | None = None, no_repeat_ngram_size: int | None = None, device: str | None = None,
) -> dict:
    """Caption a dataset split from cached features and score it; writes report.json and captions.json.

    `split` defaults to test, or dev when the dataset has no test images (a COCO dev folder);
    `beam_sizes` to the model's own beam; `length_penalty` and `no_repeat_ngram_size` to the model's.
    """
    from pathlib import Path

    from ..api import Captioner
    from ..atomic_files import atomic_write_json
    from ..data.datasets import load_dataset
    from ..data.features import feature_cache, records_with_features
    from ..model.checkpoint import METRICS as METRICS_FILE
    from ..run_folder import check_results_folder
    from .chair import chair, ground_truth

    require_scorer()  # before any work: scoring is the last step
    captioner = Captioner.load(model, device) if model else Captioner.from_pretrained(device=device)
    decoding = {key: value for key, value in (("length_penalty", length_penalty), ("no_repeat_ngram_size", no_repeat_ngram_size)) if value is not None}
    if decoding:
        captioner = captioner.with_config(captioner.config.with_decoding(**decoding))
    dataset = load_dataset(dataset_path, images)
    split_chosen_by = "request"
    if split is None:
        split, split_chosen_by = ("test", "default") if dataset.split("test") else ("dev", "default: the dataset has no test images")
        if progress:
            print(f"evaluating the {split} split ({split_chosen_by}; choose another with --split)", file=sys.stderr)
    records = dataset.split(split)[: limit or None]
    if not records:
        raise CaptionerError(f"{dataset_path}: the {split} split holds no images")
    out = Path(output) if output else Path("runs") / "eval" / f"{captioner.name}-{dataset.name}-{split}"
    check_results_folder(out, force)
    cache_store = feature_cache(dataset, captioner.config.encoder, cache, [record.image for record in records], encoder=captioner.encoder, progress=progress, device=captioner.device)
    records, unreadable = records_with_features(records, cache_store)
    if unreadable:
        print(f"captioner: unreadable photos left out: {len(unreadable)} (listed in {cache_store.folder / 'unreadable.txt'})", file=sys.stderr)
        if not records:
            raise CaptionerError(f"{dataset_path}: no photo of the {split} split could be read; see {cache_store.folder / 'unreadable.txt'}")
    keys = [record.image for record in records]
    references = {record.image: record.captions for record in records}
    true_objects = ground_truth(records)  # labelled objects + those the references name, for CHAIR
    results, captions = {}, {key: {"references": references[key]} for key in keys}
    saturations = photo_saturations(captioner, dataset, records)  # read once, for every beam size
    for beam_size in beam_sizes or [captioner.default_beam_size]:
        started = time.time()
        hypotheses, tags = caption_split(captioner, cache_store, records, saturations, beam_size, progress=progress)
        label = "greedy" if beam_size == 1 else f"beam {beam_size}"
        results[label] = {name: round(value, 4) for name, value in score_captions(references, hypotheses).items()}
        hallucination = chair(hypotheses, true_objects)
        results[label].update({"CHAIR-s": round(hallucination.sentence, 4), "CHAIR-i": round(hallucination.instance, 4)})
        if progress:
            print(f"{label}: decoded {len(keys)} images in {time.time() - started:.0f} s", file=sys.stderr)
        for key in keys:
            captions[key][label] = hypotheses[key]
            captions[key]["tags"] = tags[key]
            captions[key].setdefault("hallucinated", {})[label] = hallucination.per_image[key].hallucinated
    report = {
        "model": captioner.name, "dataset": dataset.name, "split": split, "split_chosen_by": split_chosen_by, "images": len(keys), "unreadable_left_out": len(unreadable),
        "chair_ground_truth": "object labels + reference captions" if any(record.objects for record in records) else "reference captions only",
        "decoding": {"length_penalty": captioner.length_penalty, "no_repeat_ngram_size": captioner.no_repeat_ngram_size, "subject": captioner.subject_settings.to_dict()},
        "results": results, "tags": {"threshold": captioner.tag_threshold, **tag_precision_recall({key: [word for word, _ in tags[key]] for key in keys}, references, captioner.concept_detector.words)}, "distinct_words": {label: len({w for key in keys for w in captions[key][label].split()}) for label in results},
        "command": "captioner " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("captioner") else None,
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_json(out / "captions.json", captions)
    if save_metrics and captioner.path is not None:
        atomic_write_json(captioner.path / METRICS_FILE, report)
    report["output"] = str(out)
    return report
