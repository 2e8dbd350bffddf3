"""Greedy, beam search and sampling: equality at beam 1, sorted n-best lists, stopping at <eos>,
beam search beating greedy and the length penalty on decoders whose every probability is known."""
import math

import pytest
import torch

from captioner.model.decoders import Features
from captioner.generation.decoding import DecodingOptions, beam_search, greedy, sample
from captioner.model.vocabulary import Vocabulary
from helpers import KINDS, random_features, tiny_decoder


class ScriptedDecoder:
    """Emits a fixed word sequence (then <eos>) with high probability; for exact checks."""

    def __init__(self, script: list[int], vocab_size: int = 12):
        self.script, self.vocab_size = script, vocab_size

    def init_state(self, features: Features):
        return {"t": torch.zeros(features.pooled.shape[0], dtype=torch.long)}

    def step(self, last_tokens, state):
        t = state["t"]
        logits = torch.zeros(len(t), self.vocab_size)
        for row, position in enumerate(t.tolist()):
            word = self.script[position] if position < len(self.script) else Vocabulary.eos_id
            logits[row, word] = 10.0
        return logits, {"t": t + 1}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("no_repeat", [0, 2])
def test_beam_size_one_equals_greedy(kind, no_repeat):
    options = DecodingOptions(max_length=8, no_repeat_ngram_size=no_repeat)
    for seed in range(3):
        decoder = tiny_decoder(kind, seed=seed)
        features = random_features(4, seed=seed)
        greedy_tokens = [h[0].tokens for h in greedy(decoder, features, options)]
        beam_tokens = [h[0].tokens for h in beam_search(decoder, features, beam_size=1, options=options)]
        assert beam_tokens == greedy_tokens


@pytest.mark.parametrize("kind", KINDS)
def test_nbest_scores_sorted_and_distinct(kind):
    decoder = tiny_decoder(kind, seed=3)
    results = beam_search(decoder, random_features(3), beam_size=5, num_captions=5, options=DecodingOptions(max_length=8))
    for hypotheses in results:
        assert len(hypotheses) == 5
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hypotheses}) == 5


def test_decoding_stops_at_eos():
    decoder = ScriptedDecoder([5, 6, 7])
    features = random_features(2)
    options = DecodingOptions(max_length=10, no_repeat_ngram_size=0)
    assert [h[0].tokens for h in greedy(decoder, features, options)] == [[5, 6, 7]] * 2
    assert [h[0].tokens for h in beam_search(decoder, features, beam_size=3, options=options)] == [[5, 6, 7]] * 2
    assert [h[0].tokens for h in sample(decoder, features, options=options, generator=torch.Generator().manual_seed(0))] == [[5, 6, 7]] * 2


def test_max_length_is_respected():
    decoder = ScriptedDecoder([5, 6, 7, 8, 9, 10, 11] * 3)
    options = DecodingOptions(max_length=4, no_repeat_ngram_size=0)
    assert greedy(decoder, random_features(1), options)[0][0].tokens == [5, 6, 7, 8]
    assert beam_search(decoder, random_features(1), beam_size=3, options=options)[0][0].tokens == [5, 6, 7, 8]


def test_no_repeat_ngram_blocks_repeats():
    decoder = ScriptedDecoder([5, 6, 5, 6, 5, 6])
    tokens = greedy(decoder, random_features(1), DecodingOptions(max_length=10, no_repeat_ngram_size=2))[0][0].tokens
    bigrams = list(zip(tokens, tokens[1:]))
    assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_never_emitted(kind):
    decoder = tiny_decoder(kind, seed=5)
    for hypotheses in beam_search(decoder, random_features(3), beam_size=3, num_captions=3, options=DecodingOptions(max_length=8)):
        for hypothesis in hypotheses:
            assert not {Vocabulary.pad_id, Vocabulary.bos_id, Vocabulary.eos_id, Vocabulary.unk_id} & set(hypothesis.tokens)


def test_sampling_is_repeatable_with_a_seed():
    decoder = tiny_decoder("transformer", seed=1)
    features = random_features(2)
    first = sample(decoder, features, num_captions=3, temperature=1.5, generator=torch.Generator().manual_seed(7))
    second = sample(decoder, features, num_captions=3, temperature=1.5, generator=torch.Generator().manual_seed(7))
    assert [[h.tokens for h in group] for group in first] == [[h.tokens for h in group] for group in second]
    for group in first:
        assert [h.score for h in group] == sorted((h.score for h in group), reverse=True)



def test_bias_is_added_and_immediate_repeats_and_once_words_are_banned():
    from captioner.generation.decoding import DecodingOptions, _mask_logits

    bias = torch.zeros(2, 10)
    bias[:, 5] = -2.0  # an unsupported object word
    options = DecodingOptions(no_repeat_ngram_size=0, once={8: (8,)})
    log_probs = _mask_logits(torch.zeros(2, 10), [[4], [8, 6]], step=2, options=options, bias=bias)
    assert log_probs[0, 5] == -2.0 and log_probs[0, 6] == 0.0
    assert log_probs[0, 4] == float("-inf")  # the previous word again
    assert log_probs[1, 6] == float("-inf") and log_probs[1, 8] == float("-inf") and log_probs[1, 4] == 0.0


def test_a_large_negative_bias_keeps_a_word_out_of_the_caption():
    decoder = tiny_decoder("transformer")
    features = random_features(2)
    plain = beam_search(decoder, features, beam_size=3)
    word = plain[0][0].tokens[0]
    bias = torch.zeros(2, decoder.config.vocab_size)
    bias[0, word] = -50.0
    results = beam_search(decoder, features, beam_size=3, bias=bias)
    assert word not in results[0][0].tokens and results[1][0].tokens == plain[1][0].tokens


class TreeDecoder:
    """Next-word probabilities looked up by the caption so far (`{prefix: {word: p}}`), so a test
    can work out every caption's score by hand. Prefixes off the tree babble on (words 10 and 11)
    instead of ending: a caption off the tree never finishes before `max_length`."""

    def __init__(self, tree: dict[tuple[int, ...], dict[int, float]], vocab_size: int = 12):
        self.tree, self.vocab_size = tree, vocab_size

    def init_state(self, features: Features):
        return {"prefix": torch.zeros(features.pooled.shape[0], 0, dtype=torch.long)}

    def step(self, last_tokens, state):
        prefix = state["prefix"]
        if prefix.shape[1] or (last_tokens != Vocabulary.bos_id).any():
            prefix = torch.cat([prefix, last_tokens[:, None]], dim=1)  # (B, t): the words so far, without <bos>
        logits = torch.full((len(prefix), self.vocab_size), -50.0)
        for row, words in enumerate(prefix.tolist()):
            for word, probability in self.tree.get(tuple(words), {10: 0.5, 11: 0.5}).items():
                logits[row, word] = math.log(probability)
        return logits, {"prefix": prefix}


EOS = Vocabulary.eos_id


def test_beam_search_finds_a_better_caption_than_greedy():
    # Greedy takes word 4 (p 0.6) and then has only poor words (p 0.25 at best); 5 (p 0.4) leads on surely.
    tree = {(): {4: 0.6, 5: 0.4}, (4,): {7: 0.25, 8: 0.25, 9: 0.25, 6: 0.25}, (5,): {6: 1.0}}
    tree |= {(4, word): {EOS: 1.0} for word in (6, 7, 8, 9)} | {(5, 6): {EOS: 1.0}}
    decoder, features = TreeDecoder(tree), random_features(2)
    options = DecodingOptions(max_length=5, no_repeat_ngram_size=0, length_penalty=0.0)
    greedy_best = greedy(decoder, features, options)[0][0]
    beam_best = beam_search(decoder, features, beam_size=2, options=options)[0][0]
    assert greedy_best.tokens[0] == 4 and beam_best.tokens == [5, 6]
    assert greedy_best.score == pytest.approx(math.log(0.6 * 0.25), abs=1e-4)
    assert beam_best.score == pytest.approx(math.log(0.4), abs=1e-4)


@pytest.mark.parametrize("length_penalty, ranking", [(0.0, [[4], [5, 6, 7]]), (1.0, [[5, 6, 7], [4]])])
def test_length_penalty_decides_between_a_short_and_a_long_caption(length_penalty, ranking):
    # "4 <eos>": log-prob sum -0.51, mean over 2 tokens -0.26; "5 6 7 <eos>": sum -0.92, mean over 4 -0.23.
    tree = {(): {4: 0.6, 5: 0.4}, (4,): {EOS: 1.0}, (5,): {6: 1.0}, (5, 6): {7: 1.0}, (5, 6, 7): {EOS: 1.0}}
    options = DecodingOptions(max_length=8, no_repeat_ngram_size=0, length_penalty=length_penalty)
    results = beam_search(TreeDecoder(tree), random_features(1), beam_size=2, num_captions=2, options=options)[0]
    assert [h.tokens for h in results] == ranking
    for hypothesis in results:
        probability = 0.6 if hypothesis.tokens == [4] else 0.4
        assert hypothesis.score == pytest.approx(math.log(probability) / (len(hypothesis.tokens) + 1) ** length_penalty, abs=1e-4)


def test_words_but_function_words_are_said_once_in_any_form():
    from captioner.generation.decoding import DecodingOptions, _mask_logits
    from captioner.model.vocabulary import Vocabulary
    from captioner.generation.word_repeats import once_groups

    vocabulary = Vocabulary(["a", "and", "in", "chair", "chairs", "black", "shirt", "plate", "men", "man"])
    ids = vocabulary.stoi
    groups = once_groups(vocabulary)
    assert set(groups[ids["chair"]]) == set(groups[ids["chairs"]]) == {ids["chair"], ids["chairs"]}
    assert set(groups[ids["men"]]) == {ids["man"], ids["men"]}
    assert ids["a"] not in groups and ids["and"] not in groups and ids["in"] not in groups
    options = DecodingOptions(no_repeat_ngram_size=0, once=groups)
    prefixes = [[ids["a"], ids["chair"], ids["and"], ids["a"]], [ids["a"], ids["black"], ids["shirt"], ids["and"]]]
    log_probs = _mask_logits(torch.zeros(2, len(vocabulary)), prefixes, step=4, options=options)
    assert log_probs[0, ids["chairs"]] == float("-inf") and log_probs[0, ids["chair"]] == float("-inf")  # "a chair and a chairs"
    assert log_probs[0, ids["plate"]] == 0.0 and log_probs[0, ids["man"]] == 0.0
    assert log_probs[1, ids["black"]] == float("-inf") and log_probs[1, ids["shirt"]] == float("-inf")  # "a black shirt and black shirt"
    assert log_probs[1, ids["a"]] == 0.0 and log_probs[1, ids["in"]] == 0.0  # function words come again
