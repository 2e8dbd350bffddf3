"""Caption decoders: the classic merge LSTM, a soft-attention LSTM and a Transformer decoder.

Every decoder is built from a `DecoderConfig` and offers the same three calls:
    forward(features, tokens)      -> logits (B, T, V) for teacher-forced training
    init_state(features)           -> a dict of tensors, batch first, for step-by-step decoding
    step(last_tokens, state)       -> logits (B, V) for the next word, and the new state
so greedy, beam search and sampling (`decoding.py`) work with any of them. State tensors all
have the rows (images, then beams or samples) on dim 0, which lets the searches reorder them with
one `index_select` each; what a decoder keeps once per image goes in an `ImageState`, which the
reorderings leave alone.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .concepts import SOURCE_PAD, Concepts
from .config_checks import AT_LEAST_ONE, FRACTION_BELOW_ONE, NOT_NEGATIVE, ConfigError, Limit, check_fields
from .errors import CheckpointError

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


class ImageState(dict):
    """State kept once per image (name -> (N, ...)) while its rows (beams, samples) are reordered:
    `index_select` leaves it as it is, and each row finds its image through the per-row `image`
    entry of the state, so nothing is copied per beam."""

    def index_select(self, dim: int, indices: torch.Tensor) -> "ImageState":
        return self


def image_blocks(image_of_row: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the image of each block of rows (G,), rows a block): rows in equal consecutive blocks, one
    per image, as the searches keep them, are one block per image; any other order, a block per row.
    The PyTorch step and the ONNX Runtime one (`onnx_backend.PerImage`) group rows with it."""
    images, counts = torch.unique_consecutive(image_of_row, return_counts=True)  # (G,), (G,)
    if bool((counts == counts[0]).all()) and len(images.unique()) == len(images):
        return images, int(counts[0])
    return image_of_row, 1


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
    as one more memory slot); output weights tied to the word embedding."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        width = config.embed_dim
        self.memory = FeatureProjection(config.feature_dim, width, config.dropout)
        self.memory_position = nn.Parameter(torch.zeros(1, config.grid_size + 1, width))
        self.embedding = nn.Embedding(config.vocab_size, width, padding_idx=0)
        self.position = nn.Embedding(config.max_length + 2, width)
        layer = nn.TransformerDecoderLayer(
            width, config.num_heads, dim_feedforward=4 * width, dropout=config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerDecoder(layer, config.num_layers, norm=nn.LayerNorm(width))
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

    def _decode(self, memory: torch.Tensor, attend: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        x = self.dropout(self.embedding(tokens) * math.sqrt(self.config.embed_dim) + self.position(positions))  # (B, T, D)
        causal = torch.triu(torch.full((length, length), float("-inf"), device=tokens.device), diagonal=1)
        padding = None if attend is None else ~attend  # True = ignore this memory slot
        x = self.layers(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=padding)  # (B, T, D)
        return self.output(x)  # (B, T, V)

    def forward(self, features: Features, tokens: torch.Tensor) -> torch.Tensor:
        return self._decode(*self._memory(features), tokens)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.config.num_heads, width // self.config.num_heads).transpose(1, 2)  # (B, H, L, d)

    def init_state(self, features: Features) -> State:
        """Cross-attention keys and values are computed once per image and kept once per image
        (`per_image`, an `ImageState`); self-attention ones grow by one position per step (a
        key/value cache), so each step costs one token, not the prefix."""
        memory, attend = self._memory(features)  # (B, M, D), (B, M) or None
        batch, width = memory.shape[0], self.config.embed_dim
        per_image = ImageState()
        if attend is not None:
            per_image["memory_mask"] = attend
        state = {"position": torch.zeros(batch, dtype=torch.long, device=memory.device), "image": torch.arange(batch, device=memory.device), "per_image": per_image}
        for index, layer in enumerate(self.layers.layers):
            attention = layer.multihead_attn
            keys = F.linear(memory, attention.in_proj_weight[width : 2 * width], attention.in_proj_bias[width : 2 * width])
            values = F.linear(memory, attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :])
            per_image[f"cross_keys{index}"], per_image[f"cross_values{index}"] = self._heads(keys), self._heads(values)  # (B, H, M, d)
            empty = memory.new_zeros(batch, self.config.num_heads, 0, width // self.config.num_heads)
            state[f"self_keys{index}"], state[f"self_values{index}"] = empty, empty
        return state

    def step(self, last_tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        width, heads = self.config.embed_dim, self.config.num_heads
        rows = last_tokens.shape[0]
        x = self.embedding(last_tokens)[:, None, :] * math.sqrt(width) + self.position(state["position"])[:, None, :]  # (R, 1, D)
        new_state = {"position": state["position"] + 1, "image": state["image"], "per_image": state["per_image"]}
        images, per_block = image_blocks(state["image"])  # (G,): each block of rows attends to its image's memory
        every_image = len(images) == len(state["per_image"]["cross_keys0"]) and bool((images == torch.arange(len(images), device=images.device)).all())
        memory = {name: tensor if every_image else tensor.index_select(0, images) for name, tensor in state["per_image"].items()}  # (G, ...)
        memory_mask = memory.get("memory_mask")
        if memory_mask is not None:
            memory_mask = memory_mask[:, None, None, :]  # (G, 1, 1, M) True = attend
        for index, layer in enumerate(self.layers.layers):
            query, key, value = F.linear(layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, dim=-1)
            keys = torch.cat([state[f"self_keys{index}"], self._heads(key)], dim=2)  # (B, H, t, d)
            values = torch.cat([state[f"self_values{index}"], self._heads(value)], dim=2)
            new_state[f"self_keys{index}"], new_state[f"self_values{index}"] = keys, values
            attended = F.scaled_dot_product_attention(self._heads(query), keys, values)  # (B, H, 1, d)
            x = x + layer.self_attn.out_proj(attended.transpose(1, 2).reshape(x.shape))
            cross = layer.multihead_attn
            query = F.linear(layer.norm2(x), cross.in_proj_weight[:width], cross.in_proj_bias[:width])  # (R, 1, D)
            query = query.view(len(images), per_block, heads, width // heads).transpose(1, 2)  # (G, H, rows a block, d)
            attended = F.scaled_dot_product_attention(query, memory[f"cross_keys{index}"], memory[f"cross_values{index}"], attn_mask=memory_mask)  # (G, H, rows a block, d)
            x = x + cross.out_proj(attended.transpose(1, 2).reshape(rows, 1, width))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.output(self.layers.norm(x))[:, 0], new_state  # (B, V)


DECODERS = {"merge": MergeDecoder, "attention": AttentionDecoder, "transformer": TransformerDecoder}


def create_decoder(config: DecoderConfig) -> nn.Module:
    if config.kind not in DECODERS:
        raise CheckpointError(f"unknown decoder kind {config.kind!r}; choose one of: {', '.join(DECODERS)}")
    return DECODERS[config.kind](config)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0, pad_id: int = 0) -> torch.Tensor:
    """Cross-entropy over (B, T, V) logits, ignoring padded target positions."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_id, label_smoothing=label_smoothing)
