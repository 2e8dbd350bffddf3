"""Fit a model's confidence (`captioner/generation/confidence.py`) on labelled dev photos and write its calibration.json.

Captions every photo of the dev folders with the model (beam 3, its 3 best captions), labels each
caption acceptable or not, fits the logistic confidence on the features `caption_features` computes
(the same function the captioner runs), and prints how well calibrated it is on photos it was NOT
fitted on: a reliability table and the expected calibration error (ECE) from k-fold
cross-validation over photos (a photo's captions always fall in one fold), then each folder
predicted by a fit on the other folders. Finally it fits on everything and writes calibration.json
into the model folder. Only dev data: never a test split.

Acceptable (subject named, nothing false):
- imagenet-sample-dev: the caption names the photo (its labelled words), names no other animal, and
  does not call a colour photo black and white (`captioner/evaluation/labelled_photos.py`);
- coco-mini-dev: the caption names at least one labelled object and no COCO object that is absent
  from the photo's labels and references (CHAIR's check, `captioner/evaluation/chair.py`), and no "black and white"
  on a colour photo;
- Flickr8k dev: the same, with the objects its five references name as the labels (the photos are
  of people and dogs, which COCO's "person" and "dog" cover).

    python scripts/fit_confidence.py                         # the shipped model, ../shared's dev folders
    python scripts/fit_confidence.py --model runs/x/best --dry-run
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.api import Captioner, pretrained_path  # noqa: E402
from captioner.evaluation.chair import ground_truth_objects  # noqa: E402
from captioner.data.lexicon import mentioned_objects, normalise_object  # noqa: E402
from captioner.data.colour import COLOUR_SATURATION, mean_saturation  # noqa: E402
from captioner.model.concepts import Tag  # noqa: E402
from captioner.generation.confidence import (  # noqa: E402
    CALIBRATION, DEFAULT_BANDS, FEATURES, Band, Calibration, caption_features, feature_matrix, fit_logistic, reliability, save_calibration,
)
from captioner.data.datasets import load_dataset  # noqa: E402
from captioner.data.images import load_image  # noqa: E402
from captioner.evaluation.labelled_photos import photo_results, read_labelled_folder, says_black_and_white  # noqa: E402

SHARED = ROOT.parent / "shared"


def caption_photos(captioner: Captioner, images: list, beam_size: int, num_captions: int) -> list[tuple[list, str | None]]:
    """Per image, its n-best captions and the subject the rule chose (None where it chose none)."""
    features = captioner.encode(images)
    subjects = captioner.conditioning(features).subjects
    captions = captioner.generate(features, beam_size, num_captions)
    return [(found, subject.word if subject else None) for found, subject in zip(captions, subjects)]


def observation(folder: str, photo: str, rank: int, caption, subject: str | None, acceptable: bool) -> dict:
    return {"folder": folder, "photo": photo, "rank": rank, "text": caption.text, "score": caption.score,
            "tags": [[tag.word, tag.score] for tag in caption.tags], "subject": subject, "acceptable": acceptable}


def in_batches(items: list, size: int = 8):
    for start in range(0, len(items), size):
        yield items[start : start + size]
        print(f"\r  {min(start + size, len(items))}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def labelled_folder(captioner: Captioner, folder: Path, args) -> list[dict]:
    photos, animal_words = read_labelled_folder(folder)
    rows = []
    for chunk in in_batches(photos):
        images = [load_image(photo.path) for photo in chunk]
        for photo, image, (captions, subject) in zip(chunk, images, caption_photos(captioner, images, args.beam_size, args.num_captions)):
            saturation = mean_saturation(image)
            for rank, caption in enumerate(captions, 1):
                verdict = photo_results(photo, caption.text, [tag.word for tag in caption.tags], animal_words, saturation)
                acceptable = verdict["names_subject"] and not verdict["another_animal"] and not verdict["black_and_white_on_colour"]
                rows.append(observation(folder.name, photo.path.name, rank, caption, subject, acceptable))
    return rows


def object_acceptable(text: str, labelled: set[str], truth: set[str], colour: bool) -> bool:
    """Names a labelled object, no object outside the truth, no black and white on a colour photo."""
    named = set(mentioned_objects(text))
    return bool(named & labelled) and named <= truth and not (colour and says_black_and_white(text))


def object_dataset(captioner: Captioner, path: Path, split: str, limit: int, args, labels_from_references: bool) -> list[dict]:
    dataset = load_dataset(path)
    records = dataset.split(split)[: limit or None]
    rows = []
    for chunk in in_batches(records):
        images = [load_image(dataset.image_path(record)) for record in chunk]
        for record, image, (captions, subject) in zip(chunk, images, caption_photos(captioner, images, args.beam_size, args.num_captions)):
            truth = ground_truth_objects(record.objects, record.captions)
            labelled = truth if labels_from_references else {normalise_object(name) for name in record.objects}
            colour = mean_saturation(image) > COLOUR_SATURATION
            for rank, caption in enumerate(captions, 1):
                rows.append(observation(path.name, record.image, rank, caption, subject, object_acceptable(caption.text, labelled, truth, colour)))
    return rows


def features_of(rows: list[dict]) -> np.ndarray:
    return feature_matrix([caption_features(row["text"], row["score"], [Tag(w, s) for w, s in row["tags"]], row["subject"]) for row in rows])  # (N, F)


def predict(calibration: Calibration, x: np.ndarray) -> np.ndarray:
    return np.array([calibration.confidence(dict(zip(FEATURES, row))) for row in x])


def fit(x: np.ndarray, y: np.ndarray) -> Calibration:
    weights, intercept = fit_logistic(x, y)
    return Calibration(weights, intercept)


def cross_validated(x: np.ndarray, y: np.ndarray, photos: list[str], folds: int, seed: int) -> np.ndarray:
    """Each caption's confidence from a fit on the other folds' photos."""
    unique = sorted(set(photos))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[index]: position % folds for position, index in enumerate(order)}
    which = np.array([fold_of[photo] for photo in photos])
    predicted = np.zeros(len(y))
    for fold in range(folds):
        held = which == fold
        predicted[held] = predict(fit(x[~held], y[~held]), x[held])
    return predicted


def print_table(title: str, predicted: np.ndarray, labels: np.ndarray) -> float:
    rows, ece = reliability(predicted, labels)
    print(f"\n{title}: {len(labels)} captions, {labels.mean():.1%} acceptable, ECE {ece:.3f}")
    print("| confidence | captions | mean predicted | fraction acceptable |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row.low:.1f}-{row.high:.1f} | {row.count} | {row.mean_predicted:.3f} | {row.fraction_acceptable:.3f} |")
    return ece


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--imagenet", type=Path, default=SHARED / "imagenet-sample-dev")
    parser.add_argument("--coco", type=Path, default=SHARED / "coco-mini-dev")
    parser.add_argument("--flickr8k", type=Path, default=SHARED / "flickr8k", help="its dev split only")
    parser.add_argument("--flickr8k-limit", type=int, default=1000, help="first N photos of the dev split (0: all)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--num-captions", type=int, default=3, help="n-best captions per photo, each labelled")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observations", type=Path, default=ROOT / "runs" / "confidence" / "observations.json", help="captions and labels, kept for --reuse")
    parser.add_argument("--reuse", action="store_true", help="read --observations instead of captioning again")
    parser.add_argument("--dry-run", action="store_true", help=f"print the tables, write no {CALIBRATION}")
    args = parser.parse_args()

    model = args.model or pretrained_path()
    if args.reuse:
        rows = json.loads(args.observations.read_text())
    else:
        captioner = Captioner.load(model, "cpu")
        rows = []
        for name, build in (
            ("imagenet-sample-dev", lambda: labelled_folder(captioner, args.imagenet, args)),
            ("coco-mini-dev", lambda: object_dataset(captioner, args.coco, "dev", 0, args, labels_from_references=False)),
            ("flickr8k dev", lambda: object_dataset(captioner, args.flickr8k, "dev", args.flickr8k_limit, args, labels_from_references=True)),
        ):
            print(f"captioning {name}", file=sys.stderr)
            rows += build()
        args.observations.parent.mkdir(parents=True, exist_ok=True)
        args.observations.write_text(json.dumps(rows))

    x, y = features_of(rows), np.array([float(row["acceptable"]) for row in rows])
    photos = [f"{row['folder']}/{row['photo']}" for row in rows]
    folders = sorted({row["folder"] for row in rows})
    print(f"model {model}; beam {args.beam_size}, {args.num_captions} best captions per photo; " + ", ".join(
        f"{folder}: {len({p for p, r in zip(photos, rows) if r['folder'] == folder})} photos, {np.mean([r['acceptable'] for r in rows if r['folder'] == folder]):.1%} acceptable" for folder in folders))

    predicted = cross_validated(x, y, photos, args.folds, args.seed)
    ece = print_table(f"{args.folds}-fold cross-validation over photos, all captions", predicted, y)
    best = np.array([row["rank"] == 1 for row in rows])
    best_ece = print_table(f"{args.folds}-fold cross-validation over photos, best captions only", predicted[best], y[best])
    per_folder = {}
    for folder in folders:
        held = np.array([row["folder"] == folder for row in rows])
        _, per_folder[folder] = reliability(predicted[held], y[held])
    print("\nECE per folder (cross-validated): " + ", ".join(f"{folder} {value:.3f}" for folder, value in per_folder.items()))
    transfer = {}
    for folder in folders:
        held = np.array([row["folder"] == folder for row in rows])
        _, transfer[folder] = reliability(predict(fit(x[~held], y[~held]), x[held]), y[held])
    print("ECE of each folder from a fit on the others: " + ", ".join(f"{folder} {value:.3f}" for folder, value in transfer.items()))

    calibration = fit(x, y)
    calibration.bands = [Band(level, minimum) for level, minimum in DEFAULT_BANDS]
    calibration.fitted_on = {
        "script": "scripts/fit_confidence.py", "beam_size": args.beam_size, "captions_per_photo": args.num_captions,
        "folders": {folder: len({p for p, r in zip(photos, rows) if r["folder"] == folder}) for folder in folders},
        "captions": len(rows), "acceptable": round(float(y.mean()), 4),
        "labels": "acceptable = names the photo's subject (labelled words, or a labelled / referenced COCO object) and nothing false (no other animal, no absent COCO object, no black and white on a colour photo)",
        "cross_validated_ece": round(ece, 4), "cross_validated_ece_best_captions": round(best_ece, 4), "folds": args.folds,
        "ece_per_folder": {folder: round(value, 4) for folder, value in per_folder.items()},
        "ece_each_folder_from_the_others": {folder: round(value, 4) for folder, value in transfer.items()},
    }
    print("\nweights: " + ", ".join(f"{name} {value:+.4f}" for name, value in calibration.weights.items()) + f", intercept {calibration.intercept:+.4f}")
    if args.dry_run:
        print(f"--dry-run: {CALIBRATION} not written")
    else:
        print(f"wrote {save_calibration(model, calibration)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
