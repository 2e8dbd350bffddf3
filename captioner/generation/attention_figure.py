"""Drawing an `Explanation` as in Show, Attend and Tell: the photo, then one small panel per word,
the photo with the word's attention map over it, each titled with its word. Pillow only."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import CaptionerError
from .explain import Explanation

PANEL_WIDTH = 224  # the encoder's input size: a panel shows the photo about as the model saw it
COLUMNS = 5
GAP, TITLE_HEIGHT, HEADER_HEIGHT = 8, 26, 40
BACKGROUND, TEXT = (255, 255, 255), (28, 27, 25)
MAP_OPACITY = 0.6
# A perceptually ordered dark-to-bright colour map (anchors sampled from matplotlib's "inferno").
INFERNO = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164)], dtype=np.float32)


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> RGB (H, W, 3) uint8 on the colour map."""
    positions = np.clip(values, 0.0, 1.0) * (len(INFERNO) - 1)
    anchors = np.arange(len(INFERNO))
    return np.stack([np.interp(positions, anchors, INFERNO[:, channel]) for channel in range(3)], axis=-1).astype(np.uint8)


def overlay(photo: Image.Image, grid_map: np.ndarray) -> Image.Image:
    """The photo with a grid map (H, W) upsampled smoothly to its size and blended on it; the map is
    scaled to its own peak, so every word's panel shows where it looked most."""
    smooth = np.asarray(Image.fromarray(grid_map.astype(np.float32), mode="F").resize(photo.size, Image.BICUBIC))
    peak = float(smooth.max())
    heat = Image.fromarray(colour(smooth / peak if peak > 0 else smooth))
    return Image.blend(photo.convert("RGB"), heat, MAP_OPACITY)


def panel_size(photo: Image.Image) -> tuple[int, int]:
    width, height = photo.size
    return PANEL_WIDTH, max(1, round(PANEL_WIDTH * height / width))


def figure_size(explanation: Explanation) -> tuple[int, int]:
    """The figure's (width, height): a header line, then rows of COLUMNS titled panels."""
    width, height = panel_size(explanation.image)
    panels = 1 + len(explanation.words)
    columns, rows = min(COLUMNS, panels), -(-panels // COLUMNS)
    return GAP + columns * (width + GAP), HEADER_HEIGHT + rows * (TITLE_HEIGHT + height + GAP)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fitted(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text + "\u2026"


def draw_explanation(explanation: Explanation) -> Image.Image:
    """The figure: the caption on top, then the photo and each word's map, left to right, row by row."""
    size = panel_size(explanation.image)
    photo = explanation.image.convert("RGB").resize(size, Image.BICUBIC)
    figure = Image.new("RGB", figure_size(explanation), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((GAP, HEADER_HEIGHT // 2), _fitted(draw, explanation.caption, _font(18), figure.width - 2 * GAP), fill=TEXT, font=_font(18), anchor="lm")
    panels = [("(photo)", photo)] + [(word, overlay(photo, grid_map)) for word, grid_map in zip(explanation.words, explanation.maps)]
    title_font = _font(15)
    for index, (title, picture) in enumerate(panels):
        row, column = divmod(index, COLUMNS)
        left, top = GAP + column * (size[0] + GAP), HEADER_HEIGHT + row * (TITLE_HEIGHT + size[1] + GAP)
        draw.text((left + size[0] // 2, top + TITLE_HEIGHT // 2), _fitted(draw, title, title_font, size[0]), fill=TEXT, font=title_font, anchor="mm")
        figure.paste(picture, (left, top + TITLE_HEIGHT))
    return figure


def check_explain_folder(folder: Path) -> None:
    """Refuse, before any work, a folder for the figures that is a file or cannot be made or written."""
    if folder.exists() and not folder.is_dir():
        raise CaptionerError(f"--explain {folder} is a file; give a folder for the attention figures")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CaptionerError(f"cannot create the folder --explain {folder}: {error.strerror}; choose another place") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CaptionerError(f"cannot write into --explain {folder}; choose a folder you can write to")


def save_new_png(image: Image.Image, folder: Path, stem: str) -> Path:
    """Write `image` as FOLDER/STEM.png, or STEM-2.png, -3, ... when that name is taken: never over an
    existing file. Written to a temporary name first and linked into place, so a crash leaves no half PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getvalue())
        os.chmod(temporary, 0o644)
        for number in range(1, 10_000):
            target = folder / (f"{stem}.png" if number == 1 else f"{stem}-{number}.png")
            try:
                os.link(temporary, target)  # fails where the name exists: an atomic "create, never replace"
                return target
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: create the name exclusively instead
                try:
                    with open(target, "xb") as file:
                        file.write(buffer.getvalue())
                    return target
                except FileExistsError:
                    continue
        raise CaptionerError(f"{folder} already holds {stem}.png to {stem}-9999.png; choose another --explain folder")
    finally:
        os.unlink(temporary)
