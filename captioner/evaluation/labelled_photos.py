"""Does the caption say what the photo shows, and nothing false? Figures for a labelled photo folder.

A labelled folder holds `images/`, `labels.json` mapping each file name to
`{"words": [...], "animal": bool}` (the words and phrases that name the photo; the class is
optional) and, for the animal figure, `animal_words.json` (a list of animal words) beside it.
A caption *names* its photo when it contains one of the words or phrases, singular or plural;
the same test on the top three tags says whether the model *knows* what the photo shows. An animal
photo's caption *names another animal* when it contains an animal word that is not one of the
photo's own words. A *colour photo* (mean HSV saturation above `COLOUR_SATURATION`) whose caption
says "black and white" says something false.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.colour import COLOUR_SATURATION, mean_saturation
from ..errors import DatasetError
from ..generation.word_forms import contains_phrase, forms, names_any
from ..model.vocabulary import clean_caption, tokenize

LABELS_FILE, ANIMAL_WORDS_FILE, IMAGES_FOLDER = "labels.json", "animal_words.json", "images"


@dataclass
class LabelledPhoto:
    path: Path
    words: list[str]  # cleaned words and phrases that name the photo
    animal: bool


def is_labelled_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / LABELS_FILE).is_file() and (path / IMAGES_FOLDER).is_dir()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read it as JSON ({str(error).splitlines()[0]}); fix or remove it") from None


def read_labelled_folder(folder: str | Path) -> tuple[list[LabelledPhoto], frozenset[str]]:
    """The photos of a labelled folder, checked entry by entry, and its animal words (empty without the file)."""
    folder = Path(folder)
    labels_path = folder / LABELS_FILE
    labels = _read_json(labels_path)
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f'{labels_path}: expected an object mapping file names to {{"words": [...], "animal": true|false}}')
    photos = []
    for name, entry in sorted(labels.items()):
        where = f"{labels_path}: entry {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("words"), list) or not entry["words"] or not all(isinstance(w, str) and clean_caption(w) for w in entry["words"]):
            raise DatasetError(f'{where}: needs "words", a non-empty list of words or phrases')
        if not isinstance(entry.get("animal", False), bool):
            raise DatasetError(f'{where}: "animal" must be true or false')
        path = folder / IMAGES_FOLDER / name
        if Path(name).name != name or not path.is_file():
            raise DatasetError(f"{where}: no such photo in {folder / IMAGES_FOLDER}; fix the entry or add the photo")
        photos.append(LabelledPhoto(path, sorted({clean_caption(w) for w in entry["words"]}), bool(entry.get("animal", False))))
    animal_path = folder / ANIMAL_WORDS_FILE
    animals: frozenset[str] = frozenset()
    if animal_path.is_file():
        data = _read_json(animal_path)
        if not isinstance(data, list) or not all(isinstance(word, str) for word in data):
            raise DatasetError(f"{animal_path}: expected a list of words")
        animals = frozenset(clean_caption(word) for word in data if clean_caption(word))
    return photos, animals


def names_another_animal(caption: str, own_words: list[str], animal_words: frozenset[str]) -> bool:
    tokens = tokenize(caption)
    own = {form for word in own_words for form in forms(word)}
    return any(contains_phrase(tokens, form) for word in animal_words for form in forms(word) if form not in own)


def says_black_and_white(caption: str) -> bool:
    return contains_phrase(tokenize(caption), "black and white")


def photo_results(photo: LabelledPhoto, caption: str, tags: list[str], animal_words: frozenset[str], saturation: float) -> dict:
    """One photo's verdicts (None where a figure does not apply to it)."""
    tags_name = any(names_any(tokenize(tag), photo.words) for tag in tags[:3])
    colour = saturation > COLOUR_SATURATION
    return {
        "caption": caption, "tags": tags[:3], "names_subject": names_any(tokenize(caption), photo.words), "tags_name_subject": tags_name,
        "another_animal": names_another_animal(caption, photo.words, animal_words) if photo.animal and animal_words else None,
        "colour_photo": colour, "black_and_white_on_colour": says_black_and_white(caption) if colour else None,
    }


def _share(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarise(results: list[dict]) -> dict:
    """The folder's figures from per-photo results."""
    known = [r["names_subject"] for r in results if r["tags_name_subject"]]
    return {
        "photos": len(results),
        "caption_names_subject": _share([r["names_subject"] for r in results]),
        "top3_tags_name_subject": _share([r["tags_name_subject"] for r in results]),
        "caption_names_subject_where_tags_do": _share(known),
        "animal_photos": sum(r["another_animal"] is not None for r in results),
        "animal_photos_naming_another_animal": _share([r["another_animal"] for r in results if r["another_animal"] is not None]),
        "colour_photos": sum(r["colour_photo"] for r in results),
        "colour_photos_called_black_and_white": _share([r["black_and_white_on_colour"] for r in results if r["colour_photo"]]),
    }


def evaluate_labelled_folder(
    model: str | None, folder: str | Path, beam_size: int | None = None, output: str | None = None, force: bool = False,
    limit: int = 0, batch_size: int = 8, device: str | None = None, progress: bool = True,
) -> dict:
    """Caption every photo of a labelled folder and report the figures; writes report.json and
    photos.json (per-photo captions, tags and verdicts) to `output` (default runs/eval/MODEL-FOLDER)."""
    import sys

    from ..api import Captioner
    from ..atomic_files import atomic_write_json
    from ..data.images import load_image
    from ..run_folder import check_results_folder

    photos, animal_words = read_labelled_folder(folder)
    photos = photos[: limit or None]
    captioner = Captioner.load(model, device) if model else Captioner.from_pretrained(device=device)
    out = Path(output) if output else Path("runs") / "eval" / f"{captioner.name}-{Path(folder).resolve().name}"
    check_results_folder(out, force)
    results = {}
    for start in range(0, len(photos), batch_size):
        chunk = photos[start : start + batch_size]
        images = [load_image(photo.path) for photo in chunk]  # read once: captioned, and measured for colour
        captions = captioner.caption(images, beam_size=beam_size, batch_size=batch_size, style="plain")  # the words, as scored
        for photo, image, best in zip(chunk, images, captions):
            results[photo.path.name] = photo_results(photo, best.text, [tag.word for tag in best.tags], animal_words, mean_saturation(image))
        if progress:
            print(f"\r{min(start + batch_size, len(photos))}/{len(photos)} photos", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    report = {"model": captioner.name, "folder": str(folder), "beam_size": captioner.beam(beam_size), **summarise(list(results.values()))}
    atomic_write_json(out / "report.json", report)
    atomic_write_json(out / "photos.json", results)
    report["output"] = str(out)
    return report
