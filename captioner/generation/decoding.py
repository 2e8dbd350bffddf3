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

from ..model.decoders import Features, State
from ..model.vocabulary import Vocabulary

Constraints = list[list[tuple[int, ...]]]  # per image: constraints, each the word ids any one of which meets it
Phrases = list[list[tuple[int, ...]]]  # per image: word-id sequences a caption must never complete


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <bos> and <eos>
    score: float
    constraints_met: int = 0  # how many of its image's constraints the caption meets


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
    phrases: Phrases | None = None,
) -> torch.Tensor:
    """-inf for tokens never to emit (<pad>, <bos>, <unk>, and per row the `banned` ones (rows, V)),
    <eos> before min_length, the previous word again, once-only words already said (in any form),
    words that would repeat an n-gram already in the prefix, and the last word of each of the row's
    `phrases` that the prefix would complete ("black and" -> not "white"). `bias` (rows, V) is added
    first (a penalty on object words nothing in the photo supports)."""
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
    if phrases is not None:
        for row, (prefix, row_phrases) in enumerate(zip(prefixes, phrases)):
            ends = [phrase[-1] for phrase in row_phrases if len(phrase) <= len(prefix) + 1 and tuple(prefix[len(prefix) - len(phrase) + 1 :]) == phrase[:-1]]
            if ends:
                log_probs[row, ends] = float("-inf")
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
    banned_phrases: Phrases | None = None,
) -> list[Hypothesis]:
    """Extend `copies` captions per image one token at a time, each taking `choose(log_probs)`;
    returns batch * copies hypotheses, image-major."""
    batch = features.pooled.shape[0]
    banned, bias = _per_row(banned, copies), _per_row(bias, copies)
    state = _reorder(decoder.init_state(features), torch.arange(batch, device=features.pooled.device).repeat_interleave(copies))
    rows = batch * copies
    phrases = [banned_phrases[row // copies] for row in range(rows)] if banned_phrases else None
    last = torch.full((rows,), Vocabulary.bos_id, dtype=torch.long, device=features.pooled.device)
    prefixes: list[list[int]] = [[] for _ in range(rows)]
    sums = [0.0] * rows
    finished = [False] * rows
    for step in range(options.max_length + 1):
        logits, state = decoder.step(last, state)
        log_probs = _mask_logits(F.log_softmax(logits.float(), dim=-1), prefixes, step, options, banned, bias, phrases)  # (rows, V)
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
    banned_phrases: Phrases | None = None,
) -> list[list[Hypothesis]]:
    """The most likely word at every step; `banned` (B, V) marks words an image's caption must not
    use, `bias` (B, V) is added to the log-probabilities (see `_mask_logits`)."""
    options = _fit_to(decoder, options or DecodingOptions())
    return [[hypothesis] for hypothesis in _one_path_per_row(decoder, features, 1, options, lambda log_probs: log_probs.argmax(dim=-1), banned, bias, banned_phrases)]


def _word_bits(constraints: Constraints) -> list[dict[int, int]]:
    """Per image, {word id: bit set of the constraints it meets} for the few words that meet any."""
    word_bits: list[dict[int, int]] = [{} for _ in constraints]
    for image, image_constraints in enumerate(constraints):
        for c, tokens in enumerate(image_constraints):
            for token in tokens:
                word_bits[image][token] = word_bits[image].get(token, 0) | 1 << c
    return word_bits


def _bits_tensor(word_bits: list[dict[int, int]], vocab_size: int, device) -> torch.Tensor:
    """The same as a (B, V) long tensor, 0 for every other word."""
    bits = torch.zeros(len(word_bits), vocab_size, dtype=torch.long)
    for image, words in enumerate(word_bits):
        if words:
            bits[image, list(words)] = torch.tensor(list(words.values()))
    return bits.to(device)


@torch.inference_mode()
def beam_search(
    decoder, features: Features, beam_size: int = 3, num_captions: int = 1, options: DecodingOptions | None = None,
    banned: torch.Tensor | None = None, bias: torch.Tensor | None = None, constraints: Constraints | None = None,
    margin: float = 1.0, banned_phrases: Phrases | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the `num_captions` best finished captions per image.

    With `constraints` it is a constrained beam search (Anderson et al. 2017): each image has
    S = 2 ** C blocks of `beam_size` beams. Block 0 is the plain beam search; block t > 0 keeps
    the best beams whose words meet exactly the constraints of t (a bit set), fed by every block,
    since a word moves a beam to the set its constraints reach. Captions finish in every block and
    are ranked by score + `margin` x constraints met, so a constraint is dropped where meeting it
    costs more than `margin` in length-normalised log-probability; the plain search's best caption
    stays first where it already meets every constraint.
    """
    options = _fit_to(decoder, options or DecodingOptions())
    if not 1 <= num_captions <= beam_size:
        raise ValueError(f"num_captions must be between 1 and beam_size ({beam_size}), got {num_captions}")
    batch, device = features.pooled.shape[0], features.pooled.device
    constraints = constraints if constraints is not None else [[] for _ in range(batch)]
    num_constraints = max((len(c) for c in constraints), default=0)
    blocks, size = 1 << num_constraints, beam_size
    width = blocks * size  # rows per image: S blocks of K beams
    state = decoder.init_state(features)
    state = _reorder(state, torch.arange(batch, device=device).repeat_interleave(width))  # (B*S*K, ...)
    beam_log_probs = torch.full((batch, blocks, size), float("-inf"), device=device)  # running sums of log-probs
    beam_log_probs[:, 0, 0] = 0.0  # all beams start identical, in the plain block: expand one
    met = torch.zeros(batch, blocks, size, dtype=torch.long, device=device)  # constraints each beam meets (a bit set)
    prefixes: list[list[int]] = [[] for _ in range(batch * width)]
    last = torch.full((batch * width,), Vocabulary.bos_id, dtype=torch.long, device=device)
    finished: list[list[list[Hypothesis]]] = [[[] for _ in range(blocks)] for _ in range(batch)]
    reachable = [[target & ~((1 << len(c)) - 1) == 0 for target in range(blocks)] for c in constraints]  # (B, S)
    banned, bias = _per_row(banned, width), _per_row(bias, width)  # beams stay in their image's block of rows
    phrases = [banned_phrases[row // width] for row in range(batch * width)] if banned_phrases else None
    word_bits = _word_bits(constraints)  # per image {word: constraints it meets}
    bits = None  # the same as (B, V), once the vocabulary size is known
    block_of_row = torch.arange(blocks, device=device)[None, :, None, None]  # (1, S, 1, 1)
    active = list(range(batch))  # images still searching; rows are theirs only, S*K per image, in this order
    for step in range(options.max_length + 1):
        logits, state = decoder.step(last, state)
        log_probs = _mask_logits(F.log_softmax(logits.float(), dim=-1), prefixes, step, options, banned, bias, phrases)  # (A*S*K, V)
        vocab = log_probs.shape[-1]
        candidates = beam_log_probs[:, :, :, None] + log_probs.view(len(active), blocks, size, vocab)  # (A, S, K, V)
        if blocks == 1:
            per_block = [candidates.view(len(active), -1)]  # (A, K*V)
        else:
            bits = _bits_tensor(word_bits, vocab, device) if bits is None else bits  # (B, V)
            targets = met[:, :, :, None] | bits[active][:, None, None, :]  # (A, S, K, V) what each word leads each beam to
            per_block = [candidates.masked_fill(block_of_row != 0, float("-inf")).view(len(active), -1)]  # the plain search: block 0's beams only
            per_block += [candidates.masked_fill(targets != t, float("-inf")).view(len(active), -1) for t in range(1, blocks)]
            met_rows = met.view(len(active), -1).tolist()  # (A, S*K)
        tops = [[values.tolist() for values in scores.topk(2 * size, dim=-1)] for scores in per_block]  # S x ((A, 2K) scores, indices)
        beams: list[tuple[int, int, float, list[int], int]] = []  # (source row, token, log-prob sum, prefix, constraints met)
        still = []  # positions in `active` of the images that go on
        for position, image in enumerate(active):
            image_beams, open_blocks = [], 0
            for t in range(blocks):
                kept, done = [], finished[image][t]
                if reachable[image][t] and len(done) < size:
                    for score, index in zip(tops[t][0][position], tops[t][1][position]):
                        if len(kept) == size or len(done) >= size:
                            break
                        source, token = position * width + index // vocab, index % vocab
                        reached = met_rows[position][index // vocab] | word_bits[image].get(token, 0) if blocks > 1 else 0
                        if score == float("-inf"):
                            kept.append((source, Vocabulary.eos_id, float("-inf"), prefixes[source], 0))  # a dead beam
                        elif token == Vocabulary.eos_id:
                            prefix = prefixes[source]
                            done.append(Hypothesis(list(prefix), normalised_score(score, len(prefix) + 1, options.length_penalty), bin(reached).count("1")))
                        else:
                            kept.append((source, token, score, prefixes[source] + [token], reached))
                    open_blocks += len(done) < size
                kept += [(position * width, Vocabulary.eos_id, float("-inf"), [], 0)] * (size - len(kept))  # finished or unreachable
                image_beams.extend(kept)
            if open_blocks and step < options.max_length:
                beams.extend(image_beams)
                still.append(position)
        if not still:
            break
        if len(still) < len(active):  # finished images leave the batch: no more steps computed for them
            rows = torch.tensor([position * width + k for position in still for k in range(width)], device=device)
            banned = banned.index_select(0, rows) if banned is not None else None
            bias = bias.index_select(0, rows) if bias is not None else None
            phrases = [phrases[row] for row in rows.tolist()] if phrases is not None else None
            active = [active[position] for position in still]
        new_sources, new_tokens, new_scores, prefixes, new_met = (list(column) for column in zip(*beams))
        state = _reorder(state, torch.tensor(new_sources, device=device))
        last = torch.tensor(new_tokens, device=device)
        beam_log_probs = torch.tensor(new_scores, device=device).view(len(active), blocks, size)
        met = torch.tensor(new_met, device=device).view(len(active), blocks, size)
    return [_ranked(finished[b], len(constraints[b]), margin)[:num_captions] for b in range(batch)]


def _ranked(finished: list[list[Hypothesis]], num_constraints: int, margin: float) -> list[Hypothesis]:
    """One image's finished captions, each once, by score + margin x constraints met; the plain
    search's best (block 0) first where it meets every constraint."""
    unique = {tuple(h.tokens): h for done in finished for h in done}
    ranked = sorted(unique.values(), key=lambda h: h.score + margin * h.constraints_met, reverse=True)
    plain = max(finished[0], key=lambda h: h.score, default=None)
    if num_constraints and plain is not None and plain.constraints_met == num_constraints:
        ranked.remove(unique[tuple(plain.tokens)])
        ranked.insert(0, plain)
    return ranked


@torch.inference_mode()
def sample(
    decoder, features: Features, num_captions: int = 1, temperature: float = 1.0, top_p: float = 0.9,
    options: DecodingOptions | None = None, generator: torch.Generator | None = None, banned: torch.Tensor | None = None, bias: torch.Tensor | None = None,
    banned_phrases: Phrases | None = None,
) -> list[list[Hypothesis]]:
    """Nucleus sampling: `num_captions` independent samples per image, sorted by score."""
    options = _fit_to(decoder, options or DecodingOptions())

    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(log_probs / max(temperature, 1e-5), dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs[sorted_probs.cumsum(dim=-1) - sorted_probs > top_p] = 0.0  # keep the smallest set reaching top_p
        return order.gather(1, torch.multinomial(sorted_probs, 1, generator=generator)).squeeze(1)

    hypotheses = _one_path_per_row(decoder, features, num_captions, options, choose, banned, bias, banned_phrases)
    groups = [hypotheses[start : start + num_captions] for start in range(0, len(hypotheses), num_captions)]
    return [sorted(group, key=lambda h: h.score, reverse=True) for group in groups]
