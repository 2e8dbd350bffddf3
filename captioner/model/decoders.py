"""Caption decoders: the classic merge LSTM, a soft-attention LSTM and a Transformer decoder.

Every decoder is built from a `DecoderConfig` and offers the same three calls:
    forward(features, tokens)      -> logits (B, T, V) for teacher-forced training
    init_state(features)           -> a dict of tensors, batch first, for step-by-step decoding
    step(last_tokens, state)       -> logits (B, V) for the next word, and the new state
so greedy, beam search and sampling (`decoding.py`) work with any of them. State tensors all
have the rows (images, then beams or samples) on dim 0, which lets the searches reorder them with
one `index_select` each; what a decoder keeps once per image goes in an `ImageState`
(`image_state.py`), whose reorderings only re-map rows to images.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .concepts import SOURCE_PAD, Concepts
from .config_checks import AT_LEAST_ONE, FRACTION_BELOW_ONE, NOT_NEGATIVE, ConfigError, Limit, check_fields
from .image_state import ImageState
from .transformer_block import Cache, Memory, TransformerBlock

State = dict[str, "torch.Tensor | ImageState"]
SCORE_BUCKETS = 10  # concept confidences are embedded by tenths


class Features(NamedTuple):
    """Encoder output for a batch: the spatial grid (B, G, C) and the pooled vector (B, C), plus,
    for decoders with a concept path, the image's concept tokens and which rows have an image
    at all (training on caption text alone leaves it False)."""

    grid: torch.Tensor
    pooled: torch.Tensor
    concepts: Concepts | None = None
    has_image: torch.Tensor | None = None  # (B,) bool; None = every row has one
    saturation: torch.Tensor | None = None  # (B,) mean HSV saturation 0-255 of the photo (`colour.saturation`); None = unknown


@dataclass
class DecoderConfig:
    """The shape of a decoder; saved as JSON beside its weights and enough to rebuild it."""

    kind: str = "transformer"  # merge | attention | transformer
    vocab_size: int = 0
    feature_dim: int = 1280
    grid_size: int = 49
    embed_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 3  # Transformer layers
    num_heads: int = 8  # Transformer heads
    attention_dim: int = 512  # soft-attention LSTM
    dropout: float = 0.3
    max_length: int = 22  # words, not counting <eos>
    max_concepts: int = 0  # Transformer: concept tokens it attends to beside the grid (0 = none)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "decoder") -> "DecoderConfig":
        """A checked config: types, ranges, a known kind and heads that divide the width."""
        config = cls(**check_fields(cls, data, DECODER_LIMITS, where))
        if config.kind not in DECODERS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(DECODERS)}, not {config.kind!r}")
        if config.kind == "transformer" and config.embed_dim % config.num_heads:
            raise ConfigError(f"{where}: num_heads ({config.num_heads}) must divide embed_dim ({config.embed_dim})")
        return config


MAX_LENGTH = 256  # words a caption may have at most: generous for sentences, and its buffers stay small
DECODER_LIMITS = {
    "vocab_size": NOT_NEGATIVE, "feature_dim": AT_LEAST_ONE, "grid_size": AT_LEAST_ONE, "embed_dim": AT_LEAST_ONE,
    "hidden_dim": AT_LEAST_ONE, "num_layers": AT_LEAST_ONE, "num_heads": AT_LEAST_ONE, "attention_dim": AT_LEAST_ONE,
    "dropout": FRACTION_BELOW_ONE, "max_length": Limit(1, MAX_LENGTH), "max_concepts": NOT_NEGATIVE,
}


class FeatureProjection(nn.Module):
    """Frozen-CNN features (…, C) -> the decoder's width (…, D), normalised, with dropout."""

    def __init__(self, feature_dim: int, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.linear = nn.Linear(feature_dim, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.gelu(self.linear(self.norm(features))))


class MergeDecoder(nn.Module):
    """The classic merge model (Tanti et al. 2018): the LSTM reads only words, the pooled image
    vector is added to its output, and a small MLP predicts the next word."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.image = FeatureProjection(config.feature_dim, config.hidden_dim, config.dropout)
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.hidden = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.output = nn.Linear(config.hidden_dim, config.vocab_size)

    def _predict(self, image: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        merged = self.dropout(image + words)  # (B, [T,] H)
        return self.output(self.dropout(F.relu(self.hidden(merged))))

    def forward(self, features: Features, tokens: torch.Tensor) -> torch.Tensor:
        image = self.image(features.pooled)  # (B, H)
        words, _ = self.lstm(self.dropout(self.embedding(tokens)))  # (B, T, H)
        return self._predict(image[:, None, :], words)  # (B, T, V)

    def init_state(self, features: Features) -> State:
        batch = features.pooled.shape[0]
        zeros = features.pooled.new_zeros(batch, self.config.hidden_dim)
        return {"image": self.image(features.pooled), "h": zeros, "c": zeros}

    def step(self, last_tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        embedded = self.embedding(last_tokens)[:, None, :]  # (B, 1, E)
        words, (h, c) = self.lstm(embedded, (state["h"][None], state["c"][None]))  # (B, 1, H)
        logits = self._predict(state["image"], words[:, 0])  # (B, V)
        return logits, {"image": state["image"], "h": h[0], "c": c[0]}


class AttentionDecoder(nn.Module):
    """Show, Attend and Tell: an LSTM whose every step attends over the feature grid, with a
    gate on the attended context; the state starts from the pooled vector."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.grid = FeatureProjection(config.feature_dim, config.attention_dim, config.dropout)
        self.init_h = nn.Linear(config.feature_dim, hidden)
        self.init_c = nn.Linear(config.feature_dim, hidden)
        self.attend_grid = nn.Linear(config.attention_dim, config.attention_dim)
        self.attend_hidden = nn.Linear(hidden, config.attention_dim)
        self.attend_score = nn.Linear(config.attention_dim, 1)
        self.gate = nn.Linear(hidden, config.attention_dim)
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.cell = nn.LSTMCell(config.embed_dim + config.attention_dim, hidden)
        self.dropout = nn.Dropout(config.dropout)
        # Deep output: the next word depends on the state, the context and the current word.
        self.out_hidden = nn.Linear(hidden, config.embed_dim)
        self.out_context = nn.Linear(config.attention_dim, config.embed_dim)
        self.output = nn.Linear(config.embed_dim, config.vocab_size)

    def init_state(self, features: Features) -> State:
        grid = self.grid(features.grid)  # (B, G, A)
        pooled = features.pooled
        return {"grid": grid, "grid_keys": self.attend_grid(grid), "h": torch.tanh(self.init_h(pooled)), "c": torch.tanh(self.init_c(pooled))}

    def _attend(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        energy = torch.tanh(state["grid_keys"] + self.attend_hidden(state["h"])[:, None, :])  # (B, G, A)
        alpha = torch.softmax(self.attend_score(energy).squeeze(-1), dim=-1)  # (B, G)
        context = (alpha[:, :, None] * state["grid"]).sum(dim=1)  # (B, A)
        return torch.sigmoid(self.gate(state["h"])) * context, alpha

    def _step(self, embedded: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        context, alpha = self._attend(state)
        h, c = self.cell(torch.cat([embedded, context], dim=-1), (state["h"], state["c"]))  # (B, H)
        hidden = self.dropout(h)
        logits = self.output(self.dropout(torch.tanh(embedded + self.out_hidden(hidden) + self.out_context(context))))  # (B, V)
        return logits, {**state, "h": h, "c": c}, alpha

    def forward(self, features: Features, tokens: torch.Tensor, return_attention: bool = False):
        state = self.init_state(features)
        embedded = self.dropout(self.embedding(tokens))  # (B, T, E)
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            step_logits, state, alpha = self._step(embedded[:, t], state)
            logits.append(step_logits)
            alphas.append(alpha)
        logits = torch.stack(logits, dim=1)  # (B, T, V)
        return (logits, torch.stack(alphas, dim=1)) if return_attention else logits

    def step(self, last_tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logits, state, _ = self._step(self.embedding(last_tokens), state)
        return logits, state


class TransformerDecoder(nn.Module):
    """A pre-norm Transformer decoder with cross-attention over the grid (plus the pooled vector
    as one more memory slot); output weights tied to the word embedding. Its layers are
    `TransformerBlock`s, which training, step-by-step decoding, the ONNX export and the attention
    maps all run."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        width = config.embed_dim
        self.memory = FeatureProjection(config.feature_dim, width, config.dropout)
        self.memory_position = nn.Parameter(torch.zeros(1, config.grid_size + 1, width))
        self.embedding = nn.Embedding(config.vocab_size, width, padding_idx=0)
        self.position = nn.Embedding(config.max_length + 2, width)
        block = TransformerBlock(width, config.num_heads, config.dropout)
        self.blocks = nn.ModuleList(copy.deepcopy(block) for _ in range(config.num_layers))  # equal at first, as nn.TransformerDecoder's layers were
        self.final_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(width, config.vocab_size, bias=False)
        self.output.weight = self.embedding.weight
        nn.init.normal_(self.memory_position, std=0.02)
        nn.init.normal_(self.embedding.weight, std=width**-0.5)
        if config.max_concepts:
            # A concept token = the mean embedding of its words + its confidence + its source;
            # one learned slot is always there, so a row with neither image nor concepts still attends.
            self.concept_score = nn.Embedding(SCORE_BUCKETS + 1, width)
            self.concept_source = nn.Embedding(3, width)
            self.concept_norm = nn.LayerNorm(width)
            self.null_slot = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.normal_(self.null_slot, std=0.02)

    def _concept_slots(self, concepts: Concepts) -> torch.Tensor:
        words = self.embedding(concepts.ids)  # (B, K, L, D)
        word_mask = (concepts.ids != 0).unsqueeze(-1).float()  # (B, K, L, 1)
        mean = (words * word_mask).sum(dim=2) / word_mask.sum(dim=2).clamp(min=1.0)  # (B, K, D)
        buckets = (concepts.scores.clamp(0, 1) * SCORE_BUCKETS).long()  # (B, K)
        slots = mean * math.sqrt(self.config.embed_dim) + self.concept_score(buckets) + self.concept_source(concepts.sources)
        return self.dropout(self.concept_norm(slots))  # (B, K, D)

    def _memory(self, features: Features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Memory slots (B, M, D) and, with concepts, which slots to attend to (B, M) bool."""
        slots = torch.cat([features.pooled[:, None, :], features.grid], dim=1)  # (B, G+1, C)
        image = self.memory(slots) + self.memory_position  # (B, G+1, D)
        if not self.config.max_concepts:
            return image, None
        batch = image.shape[0]
        concepts = features.concepts
        if concepts is None:
            concepts = Concepts(image.new_zeros(batch, 0, 1, dtype=torch.long), image.new_zeros(batch, 0), image.new_zeros(batch, 0, dtype=torch.long))
        has_image = features.has_image if features.has_image is not None else image.new_ones(batch, dtype=torch.bool)
        memory = torch.cat([self.null_slot.expand(batch, -1, -1), image, self._concept_slots(concepts)], dim=1)  # (B, 1+G+1+K, D)
        attend = torch.cat([
            has_image.new_ones(batch, 1), has_image[:, None].expand(-1, image.shape[1]), concepts.sources != SOURCE_PAD,
        ], dim=1)  # (B, M)
        return memory, attend

    def memory_state(self, features: Features) -> dict[str, torch.Tensor]:
        """What every block reads of each image, computed once: memory_bias (B, 1, 1, M), 0 or
        -inf for the slots not to attend to, and per block cross_keys{i} and cross_values{i} (B, H, M, d)
        (keys (B, H, d, M) in ONNX graphs, `transformer_block.keys_transposed`)."""
        memory, attend = self._memory(features)  # (B, M, D), (B, M) or None
        bias = memory.new_zeros(memory.shape[0], 1, 1, memory.shape[1])  # (B, 1, 1, M)
        state = {"memory_bias": bias if attend is None else bias.masked_fill(~attend[:, None, None, :], float("-inf"))}
        for index, block in enumerate(self.blocks):
            state[f"cross_keys{index}"], state[f"cross_values{index}"] = block.cross_attention.memory_keys_values(memory)
        return state

    def _block_memory(self, state: dict[str, torch.Tensor], index: int) -> Memory:
        return state[f"cross_keys{index}"], state[f"cross_values{index}"], state["memory_bias"]

    def decode(self, features: Features, tokens: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher forcing: `tokens` (B, T) -> the last block's output (B, T, D) and, with
        `need_weights`, each block's cross-attention weights, heads averaged (B, T, M)."""
        memory = self.memory_state(features)
        batch, length = tokens.shape
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.embedding(tokens) * math.sqrt(self.config.embed_dim) + self.position(positions))  # (B, T, D)
        x = x.reshape(batch * length, -1)  # (B*T, D)
        causal = torch.triu(torch.full((length, length), float("-inf"), device=tokens.device), diagonal=1)  # (T, T)
        weights = []
        for index, block in enumerate(self.blocks):
            x, _, block_weights = block(x, length, self._block_memory(memory, index), causal=causal, need_weights=need_weights)
            weights.append(block_weights)
        return x.reshape(batch, length, -1), weights if need_weights else []

    def forward(self, features: Features, tokens: torch.Tensor) -> torch.Tensor:
        x, _ = self.decode(features, tokens)
        return self.output(self.final_norm(x))  # (B, T, V)

    def init_state(self, features: Features) -> State:
        """Cross-attention keys and values are computed once per image and kept once per image
        (`per_image`, an `ImageState`); the self-attention ones grow by one position per step (a
        key/value cache, self_keys{i} and self_values{i} (B, H, t, d)), so each step costs one token, not the prefix."""
        memory = self.memory_state(features)
        bias = memory["memory_bias"]
        batch, device = bias.shape[0], bias.device
        state: State = {"position": torch.zeros(batch, dtype=torch.long, device=device), "per_image": ImageState(memory, torch.arange(batch, device=device))}
        for index, block in enumerate(self.blocks):
            state[f"self_keys{index}"], state[f"self_values{index}"] = block.self_attention.empty_cache(batch, bias)
        return state

    def cached_step(self, last_tokens: torch.Tensor, position: torch.Tensor, memory: dict[str, torch.Tensor], caches: list[Cache]) -> tuple[torch.Tensor, list[Cache]]:
        """One word for each of R rows grouped by image: last_tokens and position (R,), the G images'
        `memory_state` (G, ...) and each block's cache -> logits (R, V) and the caches one position longer."""
        x = self.embedding(last_tokens) * math.sqrt(self.config.embed_dim) + self.position(position)  # (R, D)
        extended = []
        for index, block in enumerate(self.blocks):
            x, cache, _ = block(x, 1, self._block_memory(memory, index), past=caches[index])
            extended.append(cache)
        return self.output(self.final_norm(x)), extended  # (R, V)

    def step(self, last_tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        caches = [(state[f"self_keys{index}"], state[f"self_values{index}"]) for index in range(len(self.blocks))]
        logits, caches = self.cached_step(last_tokens, state["position"], state["per_image"].grouped(), caches)
        new_state = {"position": state["position"] + 1, "per_image": state["per_image"]}
        for index, (keys, values) in enumerate(caches):
            new_state[f"self_keys{index}"], new_state[f"self_values{index}"] = keys, values
        return logits, new_state


DECODERS = {"merge": MergeDecoder, "attention": AttentionDecoder, "transformer": TransformerDecoder}


def create_decoder(config: DecoderConfig) -> nn.Module:
    if config.kind not in DECODERS:
        raise CheckpointError(f"unknown decoder kind {config.kind!r}; choose one of: {', '.join(DECODERS)}")
    return DECODERS[config.kind](config)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0, pad_id: int = 0) -> torch.Tensor:
    """Cross-entropy over (B, T, V) logits, ignoring padded target positions."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id, label_smoothing=label_smoothing)
