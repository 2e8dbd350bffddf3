"""One pre-norm Transformer decoder block (as nanoGPT's `Block`), for every way the decoder runs.

    TransformerBlock(x, length, memory, past, causal, need_weights) -> x, (keys, values), cross weights

x holds R rows of T (`length`) new positions, flattened to (R*T, D) so every projection is one
matrix product (and a Gemm in ONNX). Training passes whole captions (T words, a causal bias, no
`past`); step-by-step decoding one word a row (T = 1) and the rows' key/value cache `past`, which
the block returns extended by T positions. `memory` is the block's cross-attention keys, values
and bias for G images (`Attention.memory_keys_values`, computed once per image); the R rows come
in G equal consecutive blocks, one per image (K = R / G rows each: its beams or samples, or in
training the one caption), so the K * T queries of an image attend to its memory together. PyTorch
runs its fused attention; the ONNX graphs (`onnx_export.py`), traced from this same code, keep keys
transposed (`keys_transposed`), so no step transposes them, and are as lean as the ones once
written for them by hand. The attention itself is `Attention.attend`, and nowhere else.

The parameter names are new (`blocks.0.self_attention.in_projection.weight`, ...);
`renamed_decoder_weights` reads weights saved under nn.TransformerDecoder's names.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

Memory = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # keys (G, H, M, d), values (G, H, M, d), bias (G, 1, 1, M)
Cache = tuple[torch.Tensor, torch.Tensor]  # self-attention keys (R, H, t, d), values (R, H, t, d)


def keys_transposed() -> bool:
    """Whether keys are kept transposed, (…, H, d, S): in the ONNX graphs, so that no step
    transposes them in ONNX Runtime; PyTorch keeps them (…, H, S, d), as its fused attention takes them."""
    return torch.onnx.is_in_onnx_export()


def _dropout(x: torch.Tensor, probability: float, training: bool) -> torch.Tensor:
    """Dropout in training; nothing at all otherwise (a decoding step calls it a dozen times)."""
    return F.dropout(x, probability) if training else x


class Attention(nn.Module):
    """Multi-head attention with one (3D, D) projection to queries, keys and values (self-attention
    uses all three; cross-attention projects queries from the words, keys and values from the memory)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.width, self.heads, self.head_dim, self.dropout = width, heads, width // heads, dropout
        # nn.MultiheadAttention's initialisation, in its order of random draws: a seed gives the weights it gave before the block.
        out_projection = nn.Linear(width, width)
        self.in_projection = nn.utils.skip_init(nn.Linear, width, 3 * width)  # queries, keys, values
        self.out_projection = out_projection
        nn.init.xavier_uniform_(self.in_projection.weight)
        nn.init.zeros_(self.in_projection.bias)
        nn.init.zeros_(self.out_projection.bias)

    def _split(self, x: torch.Tensor, length: int, keys: bool = False) -> torch.Tensor:
        """(R*T, D) -> (R, H, T, d), or keys in their layout (`keys_transposed`). One position a
        row (a decoding step) needs no transpose, so the traced ONNX step has none."""
        transposed = keys and keys_transposed()
        if length == 1:
            return x.reshape(-1, self.heads, self.head_dim, 1) if transposed else x.reshape(-1, self.heads, 1, self.head_dim)
        x = x.reshape(-1, length, self.heads, self.head_dim)  # (R, T, H, d)
        return x.permute(0, 2, 3, 1) if transposed else x.transpose(1, 2)

    def _merge(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """(R, H, T, d) -> (R*T, D)."""
        return (x if length == 1 else x.transpose(1, 2)).reshape(-1, self.width)

    def empty_cache(self, rows: int, like: torch.Tensor) -> Cache:
        """The self-attention cache before the first word: keys and values of no positions."""
        keys = like.new_zeros(rows, self.heads, self.head_dim, 0) if keys_transposed() else like.new_zeros(rows, self.heads, 0, self.head_dim)
        return keys, like.new_zeros(rows, self.heads, 0, self.head_dim)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries (B, H, Q, d), keys (B, H, S, d) (or transposed, `keys_transposed`), values (B, H, S, d),
        an additive bias broadcast to (B, H, Q, S) (-inf = do not attend) -> the attended values
        (B, H, Q, d) and, with `need_weights` (and in ONNX graphs), the weights (B, H, Q, S)."""
        transposed = keys_transposed()
        if not (transposed or need_weights):  # PyTorch's fused kernel
            return F.scaled_dot_product_attention(queries, keys, values, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0), None
        scores = (queries * (1.0 / math.sqrt(self.head_dim))) @ (keys if transposed else keys.transpose(-1, -2))  # (B, H, Q, S)
        weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        return _dropout(weights, self.dropout, self.training) @ values, weights

    def self_attend(self, x: torch.Tensor, length: int, past: Cache | None, causal: torch.Tensor | None) -> tuple[torch.Tensor, Cache]:
        """x (R*T, D) -> its attention over the cached positions and itself (R*T, D), and the cache extended by T."""
        query, key, value = self.in_projection(x).chunk(3, dim=-1)  # (R*T, D) each
        keys, values = self._split(key, length, keys=True), self._split(value, length)  # (R, H, T, d) each
        if past is not None:
            keys = torch.cat([past[0], keys], dim=3 if keys_transposed() else 2)  # (R, H, t+T, d)
            values = torch.cat([past[1], values], dim=2)  # (R, H, t+T, d)
        attended, _ = self.attend(self._split(query, length), keys, values, causal)  # (R, H, T, d)
        return self.out_projection(self._merge(attended, length)), (keys, values)

    def memory_keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory slots (B, M, D) -> cross-attention keys (B, H, M, d) (in their layout) and values (B, H, M, d)."""
        key, value = F.linear(memory, self.in_projection.weight[self.width :], self.in_projection.bias[self.width :]).chunk(2, dim=-1)  # (B, M, D) each
        slots = memory.shape[1]
        return self._split(key.reshape(-1, self.width), slots, keys=True), self._split(value.reshape(-1, self.width), slots)

    def cross_attend(self, x: torch.Tensor, memory: Memory, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (R*T, D), its rows in G blocks (one per image of `memory`) -> attended (R*T, D) and,
        with `need_weights`, the weights (G, H, K*T, M)."""
        keys, values, bias = memory
        query = F.linear(x, self.in_projection.weight[: self.width], self.in_projection.bias[: self.width])  # (R*T, D)
        query = query.reshape(keys.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)  # (G, H, K*T, d)
        attended, weights = self.attend(query, keys, values, bias, need_weights)  # (G, H, K*T, d)
        return self.out_projection(attended.transpose(1, 2).reshape(-1, self.width)), weights


class MLP(nn.Module):
    """The feed-forward part: widen four times, GELU, narrow back."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.expand = nn.Linear(width, 4 * width)
        self.contract = nn.Linear(4 * width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contract(_dropout(F.gelu(self.expand(x)), self.dropout, self.training))


class TransformerBlock(nn.Module):
    """Pre-norm: self-attention (causal, with a key/value cache), cross-attention over the memory, MLP."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        # Made and registered in nn.TransformerDecoderLayer's order: a seed draws the weights it drew
        # before the block, and an optimizer state saved before it keeps fitting (`--resume`).
        self.self_attention = Attention(width, heads, dropout)
        self.cross_attention = Attention(width, heads, dropout)
        self.mlp = MLP(width, dropout)
        self.self_attention_norm = nn.LayerNorm(width)
        self.cross_attention_norm = nn.LayerNorm(width)
        self.mlp_norm = nn.LayerNorm(width)
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, length: int, memory: Memory, past: Cache | None = None, causal: torch.Tensor | None = None, need_weights: bool = False,
    ) -> tuple[torch.Tensor, Cache, torch.Tensor | None]:
        """x (R*T, D), R rows of `length` (T) positions -> x (R*T, D), the self-attention cache
        extended by T, and with `need_weights` the cross-attention weights averaged over heads
        (G, K*T, M) (see the module docstring)."""
        attended, cache = self.self_attention.self_attend(self.self_attention_norm(x), length, past, causal)
        x = x + _dropout(attended, self.dropout, self.training)
        attended, weights = self.cross_attention.cross_attend(self.cross_attention_norm(x), memory, need_weights)
        x = x + _dropout(attended, self.dropout, self.training)
        x = x + _dropout(self.mlp(self.mlp_norm(x)), self.dropout, self.training)
        return x, cache, weights.mean(dim=1) if need_weights else None


# nn.TransformerDecoder's parameter names (the shipped model's, and any saved before the block) -> the block's.
OLD_DECODER_NAMES = [
    (r"^layers\.layers\.(\d+)\.", r"blocks.\1."),
    (r"^layers\.norm\.", "final_norm."),
    (r"\.self_attn\.in_proj_(weight|bias)$", r".self_attention.in_projection.\1"),
    (r"\.multihead_attn\.in_proj_(weight|bias)$", r".cross_attention.in_projection.\1"),
    (r"\.self_attn\.out_proj\.", ".self_attention.out_projection."),
    (r"\.multihead_attn\.out_proj\.", ".cross_attention.out_projection."),
    (r"\.linear1\.", ".mlp.expand."),
    (r"\.linear2\.", ".mlp.contract."),
    (r"\.norm1\.", ".self_attention_norm."),
    (r"\.norm2\.", ".cross_attention_norm."),
    (r"\.norm3\.", ".mlp_norm."),
]


def renamed_decoder_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decoder weights with nn.TransformerDecoder's names given the block's; other names as they are."""
    def rename(name: str) -> str:
        if name.startswith("layers."):
            for old, new in OLD_DECODER_NAMES:
                name = re.sub(old, new, name)
        return name
    return {rename(name): tensor for name, tensor in tensors.items()}
