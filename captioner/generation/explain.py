"""Where each word of a caption looked: per-word attention maps over the encoder's feature grid.

The maps come from one teacher-forced pass of the decoder over the chosen caption's words, with
the conditioning the search used (`Captioner.conditioning`), rather than from the search itself:
the beam search stays as fast as it is, and any decoder that can attend gives its maps the same
way. The soft-attention LSTM gives its attention weights (Show, Attend and Tell); the Transformer
its cross-attention averaged over heads and layers (the shipped model's last layer gives the grid
only 1-7 % of its attention, mostly looking at concept tokens; its first layer looks at the grid
far more), over the grid's slots only: its memory also holds the pooled vector and, with concepts,
concept tokens and a null slot, so `grid_share` says how much of each word's attention went to
the grid at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import CaptionerError
from ..model.decoders import AttentionDecoder, Features, TransformerDecoder
from ..model.vocabulary import Vocabulary
from .word_forms import fix_articles


@dataclass
class Explanation:
    """A caption and, per word, where the decoder looked when it wrote it."""

    caption: str  # the caption as `Captioner.caption` gives it
    words: list[str]  # the decoder's words, one per map (a word the caption renames shows its new name)
    maps: np.ndarray  # (T, H, W) float32: per word, its attention over the encoder grid, summing to 1
    grid_share: np.ndarray  # (T,) the share of each word's attention that went to the grid, 0-1
    image: Image.Image  # the photo the caption describes, upright RGB


def check_explainable(decoder) -> None:
    """A one-line CaptionerError unless `decoder` is a PyTorch decoder that attends over the grid."""
    if getattr(decoder, "backend", "pytorch") != "pytorch":
        raise CaptionerError("attention maps need the pytorch backend; load the model with backend='pytorch' (--backend pytorch)")
    if not isinstance(decoder, (AttentionDecoder, TransformerDecoder)):
        kind = getattr(getattr(decoder, "config", None), "kind", type(decoder).__name__)
        raise CaptionerError(f"the {kind} decoder does not attend to parts of the photo, so it has no attention maps; use a model with an attention or transformer decoder")


def grid_shape(grid_size: int) -> tuple[int, int]:
    """The encoder grid's (rows, columns): square, as the encoders make it from square inputs."""
    side = math.isqrt(grid_size)
    if side * side != grid_size:
        raise CaptionerError(f"a feature grid of {grid_size} slots is not square; attention maps cannot be drawn for it")
    return side, side


@torch.inference_mode()
def attention_over_grid(decoder, features: Features, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's (`features` of batch 1) caption `tokens` (no <bos>/<eos>) -> per word, its
    attention over the grid (T, G) renormalised to sum to 1, and the share that went to the grid (T,)."""
    check_explainable(decoder)
    inputs = torch.tensor([[Vocabulary.bos_id, *tokens]], device=features.grid.device)[:, : len(tokens)]  # word t is written after reading <bos> and the words before it
    if isinstance(decoder, AttentionDecoder):
        _, weights = decoder(features, inputs, return_attention=True)  # (1, T, G)
        on_grid = weights[0]
    else:
        on_grid = _transformer_grid_attention(decoder, features, inputs)
    share = on_grid.sum(dim=-1)  # (T,)
    return on_grid / share.clamp(min=1e-12)[:, None], share


def _transformer_grid_attention(decoder: TransformerDecoder, features: Features, inputs: torch.Tensor) -> torch.Tensor:
    """The cross-attention of every layer, averaged over layers and heads, on the grid's memory slots (T, G)."""
    _, weights = transformer_cross_attention(decoder, features, inputs)  # (L, T, M)
    first = 2 if decoder.config.max_concepts else 1  # the null slot (with concepts) and the pooled vector come first
    return weights.mean(dim=0)[:, first : first + decoder.config.grid_size]


def transformer_cross_attention(decoder: TransformerDecoder, features: Features, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Transformer's teacher-forced pass over `inputs` (1, T), as its `forward` runs it, with
    each block's cross-attention weights, heads averaged: the last block's output (1, T, D) and
    the weights (L, T, M) over the memory slots (`_memory`)."""
    x, weights = decoder.decode(features, inputs, need_weights=True)  # (1, T, D), L x (1, T, M)
    return x, torch.cat(weights)


def one_row(features: Features, row: int) -> Features:
    """The features of one image of a batch, as a batch of one."""
    def take(part):
        if isinstance(part, torch.Tensor):
            return part[row : row + 1]
        return type(part)(*(take(inner) for inner in part)) if isinstance(part, tuple) else part
    return take(features)


def token_words(vocabulary: Vocabulary, tokens: list[int], renames: dict[int, str] | None = None) -> list[str]:
    """One word (or renamed phrase) per token, as the caption prints it, articles agreeing."""
    renames = renames or {}
    return fix_articles([renames.get(token, vocabulary.itos[token]) for token in tokens])


def explanation(caption: str, words: list[str], on_grid: torch.Tensor, share: torch.Tensor, grid_size: int, image: Image.Image) -> Explanation:
    rows, columns = grid_shape(grid_size)
    maps = on_grid.float().cpu().numpy().reshape(len(words), rows, columns)  # the grid is row-major (encoders.grid_and_pooled)
    return Explanation(caption, words, maps.astype(np.float32), share.float().cpu().numpy(), image)
