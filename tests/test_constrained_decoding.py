"""Constrained beam search: the best caption that says a required word, checked against brute-force
enumeration on a tiny vocabulary; disjunctive constraints; the margin that drops a constraint no
fluent caption meets; batches equal to one image at a time; phrases never completed."""
import itertools
import math

import pytest
import torch

from captioner.model.decoders import Features
from captioner.generation.decoding import DecodingOptions, beam_search, greedy, normalised_score
from captioner.model.vocabulary import Vocabulary
from helpers import random_features, tiny_decoder

WORDS = (4, 5, 6, 7)  # the tiny vocabulary's words (0-3 are <pad> <bos> <eos> <unk>)
EOS = Vocabulary.eos_id


class BigramDecoder:
    """Next-word logits that depend on the previous word only (a fixed random table per image), so
    every caption's probability can be computed by hand."""

    def __init__(self, seed: int, vocab_size: int = 8):
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab_size, vocab_size, generator=generator) * 2.0  # (previous, next)
        self.table[:, EOS] += 0.5

    def init_state(self, features: Features):
        return {"rows": torch.zeros(features.pooled.shape[0], dtype=torch.long)}

    def step(self, last_tokens, state):
        return self.table[last_tokens].clone(), state


def brute_force(decoder: BigramDecoder, max_length: int, length_penalty: float, must=None) -> tuple[list[int], float]:
    """The best caption by enumeration (no word twice in a row, as the searches rule), optionally one that says a word of `must`."""
    log_probs = torch.log_softmax(decoder.table, dim=-1)
    best, best_score = None, -math.inf
    for length in range(1, max_length + 1):
        for words in itertools.product(WORDS, repeat=length):
            if any(a == b for a, b in zip(words, words[1:])) or (must and not set(words) & set(must)):
                continue
            tokens = (Vocabulary.bos_id, *words, EOS)
            total = sum(log_probs[a, b].item() for a, b in zip(tokens, tokens[1:]))
            score = normalised_score(total, length + 1, length_penalty)
            if score > best_score:
                best, best_score = list(words), score
    return best, best_score


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_constrained_search_returns_the_best_caption_that_says_the_word(seed, length_penalty):
    decoder = BigramDecoder(seed)
    options = DecodingOptions(max_length=3, no_repeat_ngram_size=0, length_penalty=length_penalty)
    free, _ = brute_force(decoder, 3, length_penalty)
    word = next(w for w in WORDS if w not in free)  # a word the unconstrained best caption omits
    expected, expected_score = brute_force(decoder, 3, length_penalty, must=(word,))
    # beams wide enough to keep every prefix: the search is exact, so it must match the enumeration
    result = beam_search(decoder, random_features(1), beam_size=60, options=options, constraints=[[(word,)]], margin=100.0)[0][0]
    assert result.tokens == expected and word in result.tokens and result.constraints_met == 1
    assert result.score == pytest.approx(expected_score, abs=1e-4)
    unconstrained = beam_search(decoder, random_features(1), beam_size=60, options=options)[0][0]
    assert unconstrained.tokens == free


def test_a_disjunctive_constraint_is_met_by_either_word():
    decoder = BigramDecoder(3)
    options = DecodingOptions(max_length=3, no_repeat_ngram_size=0)
    free, _ = brute_force(decoder, 3, 1.0)
    missing = [w for w in WORDS if w not in free]
    expected, _ = brute_force(decoder, 3, 1.0, must=tuple(missing))
    result = beam_search(decoder, random_features(1), beam_size=60, options=options, constraints=[[tuple(missing)]], margin=100.0)[0][0]
    assert result.tokens == expected and set(result.tokens) & set(missing)


def test_an_unsatisfiable_constraint_is_dropped_by_the_margin():
    decoder = BigramDecoder(1)
    decoder.table[:, 7] = -60.0  # word 7: no fluent caption says it
    options = DecodingOptions(max_length=4, no_repeat_ngram_size=0)
    features = random_features(1)
    free = beam_search(decoder, features, beam_size=3, options=options)[0][0]
    kept = beam_search(decoder, features, beam_size=3, options=options, constraints=[[(7,)]], margin=1.0)[0][0]
    assert kept.tokens == free.tokens and kept.constraints_met == 0
    forced = beam_search(decoder, features, beam_size=3, options=options, constraints=[[(7,)]], margin=1000.0)[0][0]
    assert 7 in forced.tokens and forced.constraints_met == 1


def test_two_constraints_are_both_met():
    decoder = tiny_decoder("transformer", seed=2)
    features = random_features(1)
    options = DecodingOptions(max_length=8)
    free = beam_search(decoder, features, beam_size=3, options=options)[0][0].tokens
    words = [w for w in range(4, 20) if w not in free][:2]
    result = beam_search(decoder, features, beam_size=3, options=options, constraints=[[(words[0],), (words[1],)]], margin=100.0)[0][0]
    assert set(words) <= set(result.tokens) and result.constraints_met == 2


@pytest.mark.parametrize("kind", ["merge", "attention", "transformer"])
def test_constrained_batches_equal_one_image_at_a_time(kind):
    decoder = tiny_decoder(kind, seed=5)
    features = random_features(4, seed=1)
    constraints = [[(9,)], [], [(11, 12)], [(13,), (5,)]]
    options = DecodingOptions(max_length=8)
    together = beam_search(decoder, features, beam_size=3, num_captions=2, options=options, constraints=constraints, margin=2.0)
    for image in range(4):
        one = Features(features.grid[image : image + 1], features.pooled[image : image + 1])
        alone = beam_search(decoder, one, beam_size=3, num_captions=2, options=options, constraints=[constraints[image]], margin=2.0)[0]
        assert [(h.tokens, h.constraints_met) for h in alone] == [(h.tokens, h.constraints_met) for h in together[image]]
        for h in together[image]:
            assert pytest.approx(h.score, abs=1e-4) == next(a.score for a in alone if a.tokens == h.tokens)


def test_without_constraints_the_search_is_the_plain_beam_search_and_greedy_at_beam_one():
    decoder = tiny_decoder("transformer", seed=4)
    features = random_features(3)
    options = DecodingOptions(max_length=8)
    empty = beam_search(decoder, features, beam_size=1, options=options, constraints=[[], [], []])
    assert [h[0].tokens for h in empty] == [h[0].tokens for h in greedy(decoder, features, options)]


def test_a_banned_phrase_is_never_completed():
    decoder = BigramDecoder(0)
    options = DecodingOptions(max_length=4, no_repeat_ngram_size=0, min_length=2)
    features = random_features(1)
    free = beam_search(decoder, features, beam_size=3, options=options)[0][0].tokens
    assert len(free) >= 2
    phrase = tuple(free[:2])
    result = beam_search(decoder, features, beam_size=3, options=options, banned_phrases=[[phrase]])[0][0].tokens
    assert all(tuple(result[i : i + 2]) != phrase for i in range(len(result) - 1))
    assert greedy(decoder, features, options, banned_phrases=[[phrase]])[0][0].tokens[:2] != list(phrase)
