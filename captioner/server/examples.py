"""The example photos the page offers to click: examples/*.jpg, installed inside the package as
`captioner/example_photos` (pyproject's package-dir), or read from the source checkout."""
from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parents[1] / "example_photos"  # a wheel install
CHECKOUT = Path(__file__).resolve().parents[2] / "examples"  # a clone, or an editable install of one


def example_folder() -> Path | None:
    """Where the example photos are, or None where this install has none."""
    return next((folder for folder in (PACKAGED, CHECKOUT) if folder.is_dir()), None)


def example_photos(folder: Path | None = None) -> dict[str, Path]:
    """Name -> path of each example JPEG, by name; only these names are ever served."""
    folder = folder if folder is not None else example_folder()
    return {path.name: path for path in sorted(folder.glob("*.jpg"))} if folder else {}
