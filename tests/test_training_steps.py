"""The trainer's parts, each against numbers worked out by hand: the learning-rate schedule, length
bucketing, padding and its masks, self-critical training (its baseline, its guard, and that it
raises the CIDEr-D reward), each process's share of a batch and its weight under DDP, and what
`--resume` restores (random states, the schedule's length)."""
import itertools
import math

import numpy as np
import pytest
import torch

from captioner.evaluation.cider import CiderD
from captioner.model.decoders import Features, caption_loss
from captioner.generation.decoding import DecodingOptions, Hypothesis, greedy
from captioner.training.distributed import shard, share_weight
from captioner.training.loop import TrainingConfig, learning_rate_at
from captioner.training.batches import length_bucketed_batches, pad_batch
from captioner.training.losses import self_critical_loss
from captioner.training.state import load_training_state, planned_total_steps, random_state, read_training_state, save_training_state
from captioner.model.vocabulary import Vocabulary, tokenize
from helpers import KINDS, random_features, tiny_decoder

NO_AUTOCAST = torch.autocast("cpu", enabled=False)
REFERENCES = {
    "dog": ["a brown dog runs on the grass", "a dog runs on grass"],
    "man": ["a man rides a red bike", "a man on a bike"],
    "girl": ["a girl jumps into the water", "a girl swims in water"],
    "cat": ["a black cat sleeps on a bed", "a cat on a bed"],
}
VOCABULARY = Vocabulary.build([caption for captions in REFERENCES.values() for caption in captions], min_count=1)


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero():
    config = TrainingConfig(learning_rate=1e-3, warmup_steps=10)
    rate = [learning_rate_at(step, 110, config) for step in range(120)]
    assert rate[0] == pytest.approx(1e-4) and rate[4] == pytest.approx(5e-4) and rate[9] == pytest.approx(1e-3)
    assert rate[10] == pytest.approx(1e-3)  # the peak: decay starts where warm-up ends
    assert rate[35] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert rate[60] == pytest.approx(5e-4) and rate[110] == pytest.approx(0.0) and rate[119] == pytest.approx(0.0)
    assert all(a < b for a, b in itertools.pairwise(rate[:10])) and all(a > b for a, b in itertools.pairwise(rate[10:111]))
    assert learning_rate_at(0, 50, TrainingConfig(learning_rate=1e-3, warmup_steps=0)) == pytest.approx(1e-3)


def test_length_bucketed_batches_cover_every_caption_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(1, 21, size=1000)
    batches = length_bucketed_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(1 <= len(batch) <= 16 for batch in batches) and len(batches) == 50 + 13  # chunks of 800 and 200
    padding = sum(int((lengths[batch].max() - lengths[batch]).sum()) for batch in batches)
    shuffled = np.random.default_rng(1).permutation(1000)
    random_padding = sum(int((lengths[batch].max() - lengths[batch]).sum()) for batch in np.array_split(shuffled, 63))
    assert padding < 0.05 * random_padding
    again = length_bucketed_batches(lengths, 16, np.random.default_rng(1))
    other = length_bucketed_batches(lengths, 16, np.random.default_rng(2))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert [b.tolist() for b in batches] != [b.tolist() for b in other]  # each epoch's seed gives another order


def test_pad_batch_pads_with_the_pad_id_and_the_loss_ignores_padding():
    inputs, targets = pad_batch([[5, 6, 7], [8]], VOCABULARY)
    assert inputs.tolist() == [[1, 5, 6, 7], [1, 8, 0, 0]]
    assert targets.tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]
    logits = torch.randn(2, 4, len(VOCABULARY), generator=torch.Generator().manual_seed(0))
    real = targets != VOCABULARY.pad_id  # (B, T)
    expected = torch.nn.functional.cross_entropy(logits[real], targets[real])
    assert caption_loss(logits, targets) == pytest.approx(expected.item())


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_change_the_logits_of_real_words(kind):
    decoder = tiny_decoder(kind, vocab_size=len(VOCABULARY))
    features = random_features(2)
    inputs, _ = pad_batch([[5, 6, 7, 8, 9], [10, 11]], VOCABULARY)  # (2, 6)
    with torch.no_grad():
        padded = decoder(features, inputs)[1, :3]  # <bos> 10 11, then padding
        alone = decoder(features._replace(grid=features.grid[1:], pooled=features.pooled[1:]), inputs[1:, :3])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


class TableReward:
    """A stand-in for CiderD: fixed rewards per (image, caption)."""

    def __init__(self, table: dict[tuple[str, str], float]):
        self.table = table

    def score(self, key: str, words: list[str]) -> float:
        return self.table[key, " ".join(words)]


def _sequence_log_prob(decoder, features, row: int, tokens: list[int]) -> float:
    """log p(tokens <eos> | image) by stepping the decoder, independently of the trainer's teacher forcing."""
    state = decoder.init_state(features._replace(grid=features.grid[row : row + 1], pooled=features.pooled[row : row + 1]))
    last, total = torch.tensor([VOCABULARY.bos_id]), 0.0
    for token in tokens + [VOCABULARY.eos_id]:
        logits, state = decoder.step(last, state)
        total += torch.log_softmax(logits, dim=-1)[0, token].item()
        last = torch.tensor([token])
    return total


@pytest.mark.parametrize("rewards", [[3.0, 1.0, 0.5], [2.0, 2.0, 2.0]])
def test_self_critical_baseline_is_the_mean_of_the_other_samples(monkeypatch, rewards):
    decoder = tiny_decoder("transformer", vocab_size=len(VOCABULARY), dropout=0.0)
    features = random_features(2)
    captions = {"dog": ["a dog runs", "a brown dog", "grass"], "cat": ["a cat", "a black cat sleeps", "bed"]}
    groups = [[Hypothesis(VOCABULARY.encode(c), 0.0) for c in captions[key]] for key in captions]
    monkeypatch.setattr("captioner.training.losses.sample", lambda *args, **kwargs: groups)
    reward = TableReward({(key, c): value for key in captions for c, value in zip(captions[key], rewards[::-1] if key == "cat" else rewards)})
    loss, mean_reward = self_critical_loss(decoder, features, list(captions), reward, VOCABULARY, 3, 8, NO_AUTOCAST)
    expected = 0.0
    for row, key in enumerate(captions):
        values = rewards[::-1] if key == "cat" else rewards
        for index, caption in enumerate(captions[key]):
            baseline = (sum(values) - values[index]) / 2
            expected -= (values[index] - baseline) * _sequence_log_prob(decoder, features, row, VOCABULARY.encode(caption))
    assert loss.item() == pytest.approx(expected / 6, abs=1e-4)
    assert mean_reward == pytest.approx(sum(rewards) / 3)
    if len(set(rewards)) == 1:  # no sample beats its siblings: nothing to learn
        assert loss.item() == 0.0


def test_self_critical_needs_two_samples_per_image():
    decoder = tiny_decoder("transformer", vocab_size=len(VOCABULARY))
    reward = CiderD({key: [tokenize(c) for c in captions] for key, captions in REFERENCES.items()})
    with pytest.raises(ValueError, match="samples_per_image"):
        self_critical_loss(decoder, random_features(4), list(REFERENCES), reward, VOCABULARY, 1, 8, NO_AUTOCAST)


def _greedy_reward(decoder, features, reward: CiderD) -> float:
    best = greedy(decoder, features, DecodingOptions(max_length=8, no_repeat_ngram_size=0))
    return sum(reward.score(key, VOCABULARY.decode(h[0].tokens).split()) for key, h in zip(REFERENCES, best)) / len(REFERENCES)


def test_self_critical_training_raises_the_cider_reward():
    decoder = tiny_decoder("transformer", seed=0, vocab_size=len(VOCABULARY), dropout=0.0)
    features = random_features(len(REFERENCES), seed=0)
    reward = CiderD({key: [tokenize(c) for c in captions] for key, captions in REFERENCES.items()})
    before = _greedy_reward(decoder, features, reward)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    rewards = []
    for _ in range(100):
        loss, mean_reward = self_critical_loss(decoder, features, list(REFERENCES), reward, VOCABULARY, 5, 8, NO_AUTOCAST)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(mean_reward)
    # Measured: greedy 0.44 -> 2.8 (with the sign of the loss flipped it falls to 0.04).
    assert _greedy_reward(decoder, features, reward) > before + 1.0
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 1.0


def test_shares_of_a_batch_cover_it_once_in_near_equal_parts():
    batch = np.arange(10, 17)  # 7 examples
    for world_size in (1, 2, 3, 8):
        shares = [shard(batch, rank, world_size) for rank in range(world_size)]
        assert sorted(np.concatenate(shares).tolist()) == batch.tolist()
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shard(batch, 1, 3).tolist() == [11, 14]  # dealt like DistributedSampler: every third from rank 1


def _gradients(decoder, features, sequences: list[list[int]], rows: np.ndarray, weight: float) -> list[torch.Tensor]:
    decoder.zero_grad()
    inputs, targets = pad_batch([sequences[row] for row in rows], VOCABULARY)
    loss = caption_loss(decoder(Features(features.grid[rows], features.pooled[rows]), inputs), targets) * weight
    loss.backward()
    return [parameter.grad.clone() for parameter in decoder.parameters()]


@pytest.mark.parametrize("world_size", [2, 3])
def test_weighed_shares_average_to_the_gradient_of_the_whole_batch(world_size):
    """What DDP averages over the processes equals one process's gradient of the same global batch,
    although the shares hold captions of different lengths (so different numbers of tokens)."""
    decoder = tiny_decoder("transformer", vocab_size=len(VOCABULARY), dropout=0.0).train()
    sequences = [VOCABULARY.encode(caption) for captions in REFERENCES.values() for caption in captions]  # 8 captions of 4 to 7 words
    features, batch = random_features(len(sequences)), np.arange(len(sequences))
    whole = _gradients(decoder, features, sequences, batch, 1.0)
    tokens = np.array([len(ids) + 1 for ids in sequences])  # each caption's targets, <eos> included
    weighed = [_gradients(decoder, features, sequences, shard(batch, rank, world_size), share_weight(tokens, rank, world_size)) for rank in range(world_size)]
    for parameter_gradients, expected in zip(zip(*weighed), whole):
        torch.testing.assert_close(sum(parameter_gradients) / world_size, expected, atol=1e-6, rtol=1e-5)
    plain = [_gradients(decoder, features, sequences, shard(batch, rank, world_size), 1.0) for rank in range(world_size)]  # each share's own mean
    assert not all(torch.allclose(sum(grads) / world_size, expected, atol=1e-6, rtol=1e-5) for grads, expected in zip(zip(*plain), whole))


def test_old_configs_with_bf16_load_as_mixed_precision():
    assert TrainingConfig.from_dict({"bf16": False}).mixed_precision is False
    assert TrainingConfig.from_dict({"bf16": True}).mixed_precision is True
    assert TrainingConfig.from_dict({}).mixed_precision is True
    assert "bf16" not in TrainingConfig().to_dict()


def test_every_process_resumes_with_its_own_random_state(tmp_path):
    decoder = tiny_decoder("merge")
    optimizer = torch.optim.AdamW(decoder.parameters())
    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        states.append(random_state(torch.device("cpu")))
    progress = {"epoch": 1, "step": 4, "best_cider": 0.5, "bad_epochs": 0, "history": [{"epoch": 1}]}
    save_training_state(tmp_path, optimizer, progress, states)
    saved = read_training_state(tmp_path)
    for rank in range(2):
        torch.manual_seed(100 + rank)
        expected = torch.rand(3)
        torch.manual_seed(7)
        assert load_training_state(tmp_path, saved, torch.optim.AdamW(decoder.parameters()), torch.device("cpu"), rank) == progress
        assert torch.equal(torch.rand(3), expected)
    load_training_state(tmp_path, saved, optimizer, torch.device("cpu"), rank=2, seed=5)  # a process the run did not have: seed + rank
    drawn = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.rand(3))


def test_a_resumed_schedule_keeps_its_planned_length_unless_the_epochs_change():
    logged = []
    assert planned_total_steps({"total_steps": 120, "epochs": 4}, 150, 4, logged.append) == 120  # the data grew: same schedule
    assert planned_total_steps({"total_steps": 120, "epochs": 4}, 150, 6, logged.append) == 180  # two more epochs of the planned length
    assert planned_total_steps(None, 150, 6, logged.append) == 150  # a run saved before schedules were recorded
    assert logged == ["learning-rate schedule: 4 -> 6 epochs, 120 -> 180 steps"]
