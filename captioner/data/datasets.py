"""Readers for captioning datasets, all producing one `CaptionDataset`.

Supported layouts (`load_dataset` detects which from the path):
- Flickr8k original release: a folder with `Flickr8k.token.txt`, `Flickr_8k.{train,dev,test}Images.txt`
  and the photos in `images/` or `Flicker8k_Dataset/`;
- Kaggle `captions.txt` (CSV `image,caption`) for Flickr8k / Flickr30k, photos in `Images/`;
- Karpathy's `dataset_{flickr8k,flickr30k,coco}.json` (splits train / val / test / restval);
- COCO's official release: a folder with `captions_train2014.json` + `captions_val2014.json` (or 2017)
  gives train + dev, photos in `train2014/` and `val2014/` (named `train2014/NAME.jpg`), object labels
  from the `instances_*.json` beside them; one `captions_*.json` file gives one split;
- a COCO-format folder: `captions.json`, optional `instances.json` (object labels), photos in `images/`;
- a plain CSV or JSONL of `image,caption[,split]` for your own data.

Splits are called train, dev and test. Datasets without splits get a fixed split by a hash of the
image name (90 / 5 / 5), so it never changes between runs. Each JSON file is parsed once, and its
objects keep only the fields a reader uses as they are read (COCO's instance file is mostly
segmentation polygons, which are dropped at once rather than held in memory).
"""
from __future__ import annotations

import csv
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "dev", "valid": "dev", "validation": "dev", "dev": "dev", "test": "test"}
IMAGE_FOLDERS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images", "flickr30k-images")


@dataclass
class ImageRecord:
    """One image: its path relative to the dataset's image folder, its reference captions, its split,
    and the COCO category names of the objects labelled in it (empty when the dataset has no labels)."""

    image: str
    captions: list[str] = field(default_factory=list)
    split: str = "train"
    objects: list[str] = field(default_factory=list)


@dataclass
class CaptionDataset:
    """Images with reference captions; `image_root / record.image` is each photo's file."""

    name: str
    image_root: Path
    records: list[ImageRecord]

    def split(self, name: str) -> list[ImageRecord]:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return [record for record in self.records if record.split == name]

    def image_path(self, record: ImageRecord) -> Path:
        return self.image_root / record.image

    def limit(self, per_split: int | None) -> "CaptionDataset":
        """Keep at most `per_split` images of each split (for smoke tests and quick runs)."""
        if not per_split:
            return self
        kept: list[ImageRecord] = []
        for split in SPLITS:
            kept.extend(self.split(split)[:per_split])
        return CaptionDataset(self.name, self.image_root, kept)


def hash_split(image: str) -> str:
    """A fixed 90/5/5 train/dev/test assignment from the image name."""
    bucket = int(hashlib.sha1(image.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "test" if bucket < 5 else "dev" if bucket < 10 else "train"


def _group(pairs: list[tuple[str, str]], splits: dict[str, str] | None) -> list[ImageRecord]:
    grouped: "OrderedDict[str, list[str]]" = OrderedDict()
    for image, caption in pairs:
        caption = caption.strip()
        if caption:
            grouped.setdefault(image.strip(), []).append(caption)
    records = []
    for image, captions in grouped.items():
        split = splits.get(image) if splits is not None else hash_split(image)
        if split is not None:
            records.append(ImageRecord(image, captions, split))
    return records


def _find_image_root(base: Path, images: Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise DatasetError(f"image folder {images} does not exist; pass the folder holding the photos with --images")
        return Path(images)
    for name in IMAGE_FOLDERS:
        if (base / name).is_dir():
            return base / name
    return base


def read_flickr8k(folder: Path, images: Path | None = None) -> CaptionDataset:
    """The original Flickr8k release: token file plus one file of image names per split."""
    token_file = folder / "Flickr8k.token.txt"
    pairs = []
    for line_number, line in enumerate(token_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line or "#" not in line.split("\t", 1)[0]:
            raise DatasetError(f"{token_file}:{line_number}: expected 'NAME.jpg#K<TAB>caption'")
        key, caption = line.split("\t", 1)
        pairs.append((key.rsplit("#", 1)[0], caption))
    splits: dict[str, str] = {}
    for split, file_name in (("train", "Flickr_8k.trainImages.txt"), ("dev", "Flickr_8k.devImages.txt"), ("test", "Flickr_8k.testImages.txt")):
        split_file = folder / file_name
        if not split_file.is_file():
            raise DatasetError(f"{folder}: missing {file_name}; a Flickr8k folder needs the token file and the three split files")
        for name in split_file.read_text(encoding="utf-8").split():
            splits[name] = split
    return CaptionDataset("flickr8k", _find_image_root(folder, images), _group(pairs, splits))


def read_kaggle_captions(file: Path, images: Path | None = None) -> CaptionDataset:
    """Kaggle's `captions.txt`: CSV with header `image,caption`, photos in `Images/` beside it."""
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise DatasetError(f"{file}: expected a CSV header 'image,caption'")
        pairs = [(row["image"], row["caption"] or "") for row in reader]
    return CaptionDataset(file.parent.name or "captions", _find_image_root(file.parent, images), _group(pairs, None))


def read_karpathy(file: Path, images: Path | None = None, data: dict | None = None) -> CaptionDataset:
    """Karpathy's split file `dataset_*.json`: restval joins train, val becomes dev (`data`: the file, parsed)."""
    data = _read_json(file, CAPTION_FIELDS) if data is None else data
    records = []
    for entry in data["images"]:
        name = f"{entry['filepath']}/{entry['filename']}" if entry.get("filepath") else entry["filename"]
        captions = [sentence.get("raw") or " ".join(sentence["tokens"]) for sentence in entry["sentences"]]
        records.append(ImageRecord(name, captions, SPLIT_ALIASES.get(entry.get("split", "train"), "train")))
    return CaptionDataset(data.get("dataset", file.stem), _find_image_root(file.parent, images), records)


# The fields the JSON readers use; every other key is dropped from each object as soon as it is read.
CAPTION_FIELDS = frozenset({"dataset", "images", "annotations", "filepath", "filename", "split", "sentences", "raw", "tokens", "id", "file_name", "image_id", "caption"})
INSTANCE_FIELDS = frozenset({"categories", "annotations", "id", "name", "image_id", "category_id"})


def _read_json(file: Path, fields: frozenset[str]) -> dict:
    """Parse a JSON dataset file once, keeping only `fields` of every object."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"), object_hook=lambda item: {key: value for key, value in item.items() if key in fields})
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{file}: holds a JSON {type(data).__name__}, not a dataset; JSON datasets are Karpathy's dataset_*.json "
            "({\"images\": [...]}) or COCO's captions_*.json ({\"images\", \"annotations\"}); a Flickr8k folder, captions.txt, .csv and .jsonl also work"
        )
    return data


def _coco_captions(file: Path, data: dict | None = None) -> tuple[dict[int, str], list[tuple[str, str]]]:
    """A COCO caption file (`data`: the file, parsed): image id -> file name, and (file name, caption) pairs."""
    data = _read_json(file, CAPTION_FIELDS) if data is None else data
    try:
        names = {image["id"]: image["file_name"] for image in data["images"]}
        pairs = [(names[annotation["image_id"]], annotation["caption"]) for annotation in data["annotations"] if annotation["image_id"] in names]
    except (KeyError, TypeError) as error:
        raise DatasetError(f"{file}: not a COCO caption file; expected 'images' with 'id' and 'file_name', "
                           f"'annotations' with 'image_id' and 'caption' (missing or wrong: {error})") from None
    if not all(isinstance(name, str) and isinstance(caption, str) for name, caption in pairs):
        raise DatasetError(f"{file}: every 'file_name' and 'caption' must be a string")
    return names, pairs


def _coco_objects(file: Path) -> dict[int, list[str]]:
    """A COCO instance file: image id -> the sorted, distinct category names of its labelled objects."""
    data = _read_json(file, INSTANCE_FIELDS)
    try:
        categories = {category["id"]: category["name"] for category in data["categories"]}
        objects: dict[int, set[str]] = {}
        for annotation in data["annotations"]:
            category = annotation["category_id"]
            if category not in categories:
                raise DatasetError(f"{file}: an annotation names category_id {category!r}, which 'categories' does not list")
            objects.setdefault(annotation["image_id"], set()).add(categories[category])
    except (KeyError, TypeError) as error:
        raise DatasetError(f"{file}: not a COCO instance file; expected 'categories' with 'id' and 'name', "
                           f"'annotations' with 'image_id' and 'category_id' (missing or wrong: {error})") from None
    return {image: sorted(names) for image, names in objects.items()}


def _coco_records(captions_file: Path, instances_file: Path | None, split: str, prefix: str = "", data: dict | None = None) -> list[ImageRecord]:
    """The images of a COCO caption file, named `prefix + file_name`, with their labelled objects."""
    names, pairs = _coco_captions(captions_file, data)
    records = _group([(prefix + name.strip(), caption) for name, caption in pairs], {prefix + name.strip(): split for name in names.values()})
    if instances_file is not None:
        objects = _coco_objects(instances_file)
        by_name = {prefix + name.strip(): objects.get(image, []) for image, name in names.items()}
        for record in records:
            record.objects = by_name[record.image]
    return records


def _instances_beside(captions_file: Path) -> Path | None:
    """`instances_val2014.json` beside `captions_val2014.json`, when it is there."""
    if not captions_file.name.startswith("captions"):
        return None
    instances = captions_file.with_name("instances" + captions_file.name[len("captions"):])
    return instances if instances.is_file() else None


def _photo_folder_name(captions_file: Path) -> str:
    """The folder COCO keeps a caption file's photos in: captions_val2014.json -> val2014."""
    return captions_file.stem[len("captions_"):]


def read_coco(file: Path, images: Path | None = None, data: dict | None = None) -> CaptionDataset:
    """One COCO `captions_*.json` (`data`: the file, parsed): the split comes from the file name
    (train2014 -> train, val2014 -> dev); object labels come from `instances_*.json` of the same
    suffix beside it, when present; photos in `val2014/` (say) beside it, else `images/` or the folder."""
    split = "train" if "train" in file.stem else "test" if "test" in file.stem else "dev"
    records = _coco_records(file, _instances_beside(file), split, data=data)
    photos = file.parent / _photo_folder_name(file)
    if images is None and file.name.startswith("captions_") and photos.is_dir() and not (file.parent / "images").is_dir():
        return CaptionDataset("coco", photos, records)
    return CaptionDataset("coco", _find_image_root(file.parent, images), records)


def coco_train_and_val(folder: Path) -> tuple[Path, Path] | None:
    """COCO's official caption files in `folder`: `captions_train2014.json` and `captions_val2014.json`
    (or 2017; the earliest year when several are there), or None."""
    for train_file in sorted(folder.glob("captions_train*.json")):
        val_file = train_file.with_name(train_file.name.replace("captions_train", "captions_val", 1))
        if val_file.is_file():
            return train_file, val_file
    return None


def read_coco_official(folder: Path, images: Path | None = None) -> CaptionDataset:
    """COCO's official release: `captions_train2014.json` gives the train split and
    `captions_val2014.json` the dev split (or 2017), with object labels from `instances_*.json`
    beside them. Images are named relative to the folder holding `train2014/` and `val2014/`
    (`train2014/COCO_train2014_000000000009.jpg`): this folder, or its parent when the captions
    are in COCO's `annotations/` folder, or `images`."""
    train_file, val_file = coco_train_and_val(folder)
    records = []
    for file, split in ((train_file, "train"), (val_file, "dev")):
        records += _coco_records(file, _instances_beside(file), split, prefix=_photo_folder_name(file) + "/")
    photo_folders = [_photo_folder_name(train_file), _photo_folder_name(val_file)]
    if images is not None:
        root = _find_image_root(folder, images)
    else:
        root = next((base for base in (folder, folder.parent) if all((base / name).is_dir() for name in photo_folders)), folder)
    return CaptionDataset("coco", root, records)


def read_coco_folder(folder: Path, images: Path | None = None) -> CaptionDataset:
    """A COCO-format folder: `captions.json`, optional `instances.json` (object labels), photos in `images/`.

    It holds no split, so the folder's name gives one to every image: dev when it contains "dev" or
    "val", train when it contains "train", else test.
    """
    name = folder.resolve().name.lower()
    split = "dev" if "dev" in name or "val" in name else "train" if "train" in name else "test"
    instances = folder / "instances.json"
    records = _coco_records(folder / "captions.json", instances if instances.is_file() else None, split)
    return CaptionDataset(folder.resolve().name, _find_image_root(folder, images), records)


def read_pairs(file: Path, images: Path | None = None) -> CaptionDataset:
    """Your own data: CSV (header `image,caption[,split]`) or JSONL (`{"image", "caption"[, "split"]}`)."""
    rows: list[dict] = []
    if file.suffix.lower() == ".jsonl":
        for line_number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DatasetError(f"{file}:{line_number}: not a JSON object; each line needs {{\"image\": ..., \"caption\": ...}}") from None
    else:
        with open(file, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    if not rows or not all(isinstance(row, dict) and "image" in row and "caption" in row for row in rows):
        raise DatasetError(f"{file}: every row needs 'image' and 'caption' (CSV header or JSONL keys)")
    has_splits = all(row.get("split") for row in rows)
    splits = {row["image"].strip(): SPLIT_ALIASES.get(row["split"].strip().lower(), "train") for row in rows} if has_splits else None
    pairs = [(row["image"], row["caption"] or "") for row in rows]
    return CaptionDataset(file.stem, _find_image_root(file.parent, images), _group(pairs, splits))


def load_dataset(path: str | Path, images: str | Path | None = None) -> CaptionDataset:
    """Read a dataset folder or annotation file, detecting its layout; `images` overrides the photo folder."""
    path = Path(path)
    images = Path(images) if images is not None else None
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file or folder")
    try:
        if path.is_dir():
            if (path / "Flickr8k.token.txt").is_file():
                dataset = read_flickr8k(path, images)
            elif (path / "captions.txt").is_file():
                dataset = read_kaggle_captions(path / "captions.txt", images)
            elif (path / "captions.json").is_file():
                dataset = read_coco_folder(path, images)
            elif not any(path.glob("dataset_*.json")) and coco_train_and_val(path) is not None:
                dataset = read_coco_official(path, images)
            else:
                candidates = sorted(path.glob("dataset_*.json")) + sorted(path.glob("captions_*.json"))
                if not candidates:
                    raise DatasetError(
                        f"{path}: not a dataset folder I know; expected Flickr8k.token.txt, captions.txt, captions.json (COCO), "
                        "dataset_*.json (Karpathy) or captions_*.json (COCO); or pass the annotation file itself"
                    )
                return load_dataset(candidates[0], images)
        elif path.name.startswith("captions") and path.suffix == ".txt":
            dataset = read_kaggle_captions(path, images)
        elif path.name == "captions.json":
            dataset = read_coco_folder(path.parent, images)
        elif path.suffix.lower() == ".json":
            data = _read_json(path, CAPTION_FIELDS)  # parsed once, then read by the reader its keys call for
            dataset = read_karpathy(path, images, data) if "annotations" not in data else read_coco(path, images, data)
        elif path.suffix.lower() in (".csv", ".jsonl"):
            dataset = read_pairs(path, images)
        elif path.name == "Flickr8k.token.txt":
            dataset = read_flickr8k(path.parent, images)
        else:
            raise DatasetError(f"{path}: unknown annotation format; use a folder, .json, .csv, .jsonl or captions.txt")
    except DatasetError:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not the layout its name suggests ({type(error).__name__}: {error})") from None
    if not dataset.records:
        raise DatasetError(f"{path}: no captions found")
    return dataset
