"""Caption text without photos (a language prior): `image<TAB>caption` files such as
Flickr30k's and COCO's captions. The image name only groups the captions of one photo."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError


@dataclass
class TextPhoto:
    """The captions of one photo we do not have."""

    image: str
    captions: list[str]


def read_caption_text(path: str | Path) -> list[TextPhoto]:
    """Read a TSV with header `image<TAB>caption`; a malformed line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such caption-text file; expected a TSV with header 'image<TAB>caption'")
    photos: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if header != ["image", "caption"]:
            raise DatasetError(f"{path}:1: expected the header 'image<TAB>caption', got {'<TAB>'.join(header)!r}")
        for line_number, line in enumerate(handle, 2):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise DatasetError(f"{path}:{line_number}: expected 'image<TAB>caption' with both fields non-empty")
            photos.setdefault(fields[0].strip(), []).append(fields[1].strip())
    if not photos:
        raise DatasetError(f"{path}: holds no captions")
    return [TextPhoto(image, captions) for image, captions in photos.items()]


def flickr30k_id(image: str) -> str:
    """The Flickr id a Flickr8k or Flickr30k file name starts with: '1000268201_693b08cb0e.jpg' -> '1000268201'."""
    return Path(image).stem.split("_")[0]
