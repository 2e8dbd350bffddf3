"""How colourful a photo is: mean HSV saturation on a 0-255 scale.

A photo whose mean saturation is above `COLOUR_SATURATION` is a colour photo, and a caption that
calls it "a black and white photo" says something false. The decoding rules read it from the
preprocessed pixels (`saturation`), the labelled-folder figures from the photo (`mean_saturation`);
both compute HSV's S = (max - min) / max per pixel.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

COLOUR_SATURATION = 25.0


def mean_saturation(image: Image.Image) -> float:
    """Mean HSV saturation (0-255) of an RGB image, as PIL's HSV conversion computes it."""
    return float(np.asarray(image.convert("RGB").convert("HSV"))[..., 1].mean())


def saturation(pixels: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(B,) mean HSV saturation (0-255) of preprocessed pixels (B, 3, H, W) = (rgb - mean) / std."""
    rgb = (pixels.float() * std + mean).clamp(0.0, 255.0)  # (B, 3, H, W)
    high, low = rgb.amax(dim=1), rgb.amin(dim=1)  # (B, H, W)
    per_pixel = torch.where(high > 0, (high - low) / high.clamp(min=1e-6) * 255.0, torch.zeros_like(high))
    return per_pixel.mean(dim=(1, 2))
