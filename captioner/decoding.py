"""Turning a decoder's next-word logits into captions: greedy, batched beam search, sampling.

All three work on any decoder with `init_state(features)` and `step(last_tokens, state)`
(see `decoders.py`), mask the same tokens the same way (`_mask_logits`), and return, per image,
an n-best list of `Hypothesis` sorted best first. A hypothesis' score is its length-normalised
log-probability: sum of log p(word) over the words and `<eos>`, divided by length ** length_penalty
(with the `bias` the caller added, e.g. the penalty of unsupported object words).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .decoders import Features, State
from .vocabulary import Vocabulary


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <bos> and <eos>
    score: float


@dataclass
class DecodingOptions:
    max_length: int = 22  # words, not counting <eos>
    length_penalty: float = 1.0  # 0: raw sum of log-probs; 1: mean log-prob per token
    no_repeat_ngram_size: int = 3  # 0 disables
    min_length: int = 1
    once: dict[int, tuple[int, ...]] = field(default_factory=dict)  # a word said -> its forms, never said again ("a sink and sinks")


def normalised_score(log_prob: float, length: int, length_penalty: float) -> float:
    return log_prob / (max(length, 1) ** length_penalty)


def _mask_logits(
    log_probs: torch.Tensor, prefixes: list[list[int]], step: int, options: DecodingOptions, banned: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """-inf for tokens never to emit (<pad>, <bos>, <unk>, and per row the `banned` ones (rows, V)),
    <eos> before min_length, the previous word again, once-only words already said (in any form),
    and words that would repeat an n-gram already in the prefix. `bias` (rows, V) is added first (a penalty on
    object words nothing in the photo supports)."""
    log_probs[:, [Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.unk_id]] = float("-inf")
    if bias is not None:
        log_probs += bias
    if banned is not None:
        log_probs.masked_fill_(banned, float("-inf"))
    if step < options.min_length:
        log_probs[:, Vocabulary.eos_id] = float("-inf")
    if step >= options.max_length:
        keep = log_probs[:, Vocabulary.eos_id].clone()
        log_probs.fill_(float("-inf"))
        log_probs[:, Vocabulary.eos_id] = keep
    for row, prefix in enumerate(prefixes):
        if prefix:  # never the same word twice in a row, nor a once-only word again
            log_probs[row, [prefix[-1], *(form for token in prefix for form in options.once.get(token, ()))]] = float("-inf")
    n = options.no_repeat_ngram_size
    if n > 0 and step >= n - 1:
        for row, prefix in enumerate(prefixes):
            head = tuple(prefix[len(prefix) - (n - 1):]) if n > 1 else ()
            banned = [prefix[i + n - 1] for i in range(len(prefix) - n + 1) if tuple(prefix[i : i + n - 1]) == head]
            if banned:
                log_probs[row, banned] = float("-inf")
    return log_probs


def _fit_to(decoder, options: DecodingOptions) -> DecodingOptions:
    """Never decode past the length a decoder was built for (its position table ends there)."""
    limit = getattr(getattr(decoder, "config", None), "max_length", options.max_length)
    return options if options.max_length <= limit else DecodingOptions(**{**options.__dict__, "max_length": limit})


def _reorder(state: State, indices: torch.Tensor) -> State:
    return {key: value.index_select(0, indices) for key, value in state.items()}


def _per_row(per_image: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    """Per-image banned tokens or biases (B, V) -> per-row (B * copies, V), image-major."""
    return per_image.repeat_interleave(copies, dim=0) if per_image is not None else None


def _one_path_per_row(
    decoder, features: Features, copies: int, options: DecodingOptions, choose, banned: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> list[Hypothesis]:
    """Extend `copies` captions per image one token at a time, each taking `choose(log_probs)`;
    returns batch * copies hypotheses, image-major."""
    batch = features.pooled.shape[0]
    banned, bias = _per_row(banned, copies), _per_row(bias, copies)
    state = _reorder(decoder.init_state(features), torch.arange(batch, device=features.pooled.device).repeat_interleave(copies))
    rows = batch * copies
    last = torch.full((rows,), Vocabulary.bos_id, dtype=torch.long, device=features.pooled.device)
    prefixes: list[list[int]] = [[] for _ in range(rows)]
    sums = [0.0] * rows
    finished = [False] * rows
    for step in range(options.max_length + 1):
        logits, state = decoder.step(last, state)
        log_probs = _mask_logits(F.log_softmax(logits.float(), dim=-1), prefixes, step, options, banned, bias)  # (rows, V)
        choice = choose(log_probs)  # (rows,)
        chosen_log_probs = log_probs.gather(1, choice[:, None]).squeeze(1).tolist()
        for row, token in enumerate(choice.tolist()):
            if finished[row]:
                continue
            sums[row] += chosen_log_probs[row]
            if token == Vocabulary.eos_id:
                finished[row] = True
            else:
                prefixes[row].append(token)
        if all(finished):
            break
        last = choice
    return [Hypothesis(prefix, normalised_score(total, len(prefix) + 1, options.length_penalty)) for prefix, total in zip(prefixes, sums)]


@torch.inference_mode()
def greedy(
    decoder, features: Features, options: DecodingOptions | None = None, banned: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """The most likely word at every step; `banned` (B, V) marks words an image's caption must not
    use, `bias` (B, V) is added to the log-probabilities (see `_mask_logits`)."""
    options = _fit_to(decoder, options or DecodingOptions())
    return [[hypothesis] for hypothesis in _one_path_per_row(decoder, features, 1, options, lambda log_probs: log_probs.argmax(dim=-1), banned, bias)]


@torch.inference_mode()
def beam_search(
    decoder, features: Features, beam_size: int = 3, num_captions: int = 1, options: DecodingOptions | None = None,
    banned: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the `num_captions` best finished captions per image."""
    options = _fit_to(decoder, options or DecodingOptions())
    if not 1 <= num_captions <= beam_size:
        raise ValueError(f"num_captions must be between 1 and beam_size ({beam_size}), got {num_captions}")
    batch, device = features.pooled.shape[0], features.pooled.device
    state = decoder.init_state(features)
    state = _reorder(state, torch.arange(batch, device=device).repeat_interleave(beam_size))  # (B*K, ...)
    beam_log_probs = torch.zeros(batch, beam_size, device=device)  # running sums of log-probs
    beam_log_probs[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    prefixes: list[list[int]] = [[] for _ in range(batch * beam_size)]
    last = torch.full((batch * beam_size,), Vocabulary.bos_id, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    banned, bias = _per_row(banned, beam_size), _per_row(bias, beam_size)  # beams stay in their image's block of rows
    active = list(range(batch))  # images still searching; rows are theirs only, K per image, in this order
    for step in range(options.max_length + 1):
        logits, state = decoder.step(last, state)
        log_probs = _mask_logits(F.log_softmax(logits.float(), dim=-1), prefixes, step, options, banned, bias)  # (A*K, V)
        vocab = log_probs.shape[-1]
        candidates = (beam_log_probs[:, :, None] + log_probs.view(len(active), beam_size, vocab)).view(len(active), -1)  # (A, K*V)
        top_scores, top_indices = candidates.topk(2 * beam_size, dim=-1)  # (A, 2K)
        top_scores, top_indices = top_scores.tolist(), top_indices.tolist()
        beams: list[tuple[int, int, float, list[int]]] = []  # (source row, token, log-prob sum, prefix)
        still = []  # positions in `active` of the images that go on
        for position, image in enumerate(active):
            kept = []
            for score, index in zip(top_scores[position], top_indices[position]):
                if len(kept) == beam_size or len(finished[image]) >= beam_size:
                    break
                source, token = position * beam_size + index // vocab, index % vocab
                if score == float("-inf"):
                    kept.append((source, Vocabulary.eos_id, float("-inf"), prefixes[source]))  # a dead beam
                elif token == Vocabulary.eos_id:
                    prefix = prefixes[source]
                    finished[image].append(Hypothesis(list(prefix), normalised_score(score, len(prefix) + 1, options.length_penalty)))
                else:
                    kept.append((source, token, score, prefixes[source] + [token]))
            if len(finished[image]) < beam_size and step < options.max_length:
                kept += [(position * beam_size, Vocabulary.eos_id, float("-inf"), [])] * (beam_size - len(kept))  # every candidate finished
                beams.extend(kept)
                still.append(position)
        if not still:
            break
        if len(still) < len(active):  # finished images leave the batch: no more steps computed for them
            rows = torch.tensor([position * beam_size + k for position in still for k in range(beam_size)], device=device)
            banned = banned.index_select(0, rows) if banned is not None else None
            bias = bias.index_select(0, rows) if bias is not None else None
            active = [active[position] for position in still]
        new_sources, new_tokens, new_scores, prefixes = (list(column) for column in zip(*beams))
        state = _reorder(state, torch.tensor(new_sources, device=device))
        last = torch.tensor(new_tokens, device=device)
        beam_log_probs = torch.tensor(new_scores, device=device).view(len(active), beam_size)
    results = []
    for b in range(batch):
        hypotheses = sorted(finished[b], key=lambda h: h.score, reverse=True)
        results.append(hypotheses[:num_captions])
    return results


@torch.inference_mode()
def sample(
    decoder, features: Features, num_captions: int = 1, temperature: float = 1.0, top_p: float = 0.9,
    options: DecodingOptions | None = None, generator: torch.Generator | None = None, banned: torch.Tensor | None = None, bias: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Nucleus sampling: `num_captions` independent samples per image, sorted by score."""
    options = _fit_to(decoder, options or DecodingOptions())

    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(log_probs / max(temperature, 1e-5), dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs[sorted_probs.cumsum(dim=-1) - sorted_probs > top_p] = 0.0  # keep the smallest set reaching top_p
        return order.gather(1, torch.multinomial(sorted_probs, 1, generator=generator)).squeeze(1)

    hypotheses = _one_path_per_row(decoder, features, num_captions, options, choose, banned, bias)
    groups = [hypotheses[start : start + num_captions] for start in range(0, len(hypotheses), num_captions)]
    return [sorted(group, key=lambda h: h.score, reverse=True) for group in groups]
