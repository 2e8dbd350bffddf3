"""Training on ~50 Flickr8k images: history, plot, checkpoints, refusal to overwrite; a resumed run
equal to an uninterrupted one; mirrored features in training; self-critical rewards from the right photos."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captioner.api import Captioner
from captioner.evaluation.cider import CiderD
from captioner.cli.commands import main
from captioner.data.datasets import load_dataset
from captioner.data.features import FeatureCache
from captioner.training.loop import TrainingConfig, learning_rate_at
from captioner.model.vocabulary import tokenize
from conftest import FLICKR8K, needs_flickr8k

TINY = ["--set", "decoder.embed_dim=64", "--set", "decoder.hidden_dim=64", "--set", "decoder.attention_dim=64",
        "--set", "decoder.num_layers=1", "--set", "decoder.num_heads=2", "--set", "min_count=2", "--set", "warmup_steps=10",
        "--set", "batch_size=32"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module: each photo is encoded once (and once mirrored)."""
    return tmp_path_factory.mktemp("cache")


def _train_arguments(output, cache, decoder: str = "transformer", limit: int = 50) -> list[str]:
    return ["--threads", "1", "train", "--dataset", str(FLICKR8K), "--limit", str(limit), "--cache", str(cache),
            "--output", str(output), "--decoder", decoder, "--quiet", "--seed", "1", *TINY]


def _interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Ctrl-C just after `epoch`'s checkpoint is written (where the history plot is drawn)."""
    import captioner.training.loop

    plot = captioner.training.loop.plot_history

    def plot_then_stop(history, path):
        plot(history, path)
        if history[-1]["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(captioner.training.loop, "plot_history", plot_then_stop)


def _feature_owners(cache) -> dict[bytes, tuple[str, bool]]:
    """Every cached pooled vector -> (its photo, whether it is the mirrored photo's)."""
    owners = {}
    for folder in cache.iterdir():
        features = FeatureCache(folder)
        for row in np.flatnonzero(features.done):
            owners[features.pooled[row].tobytes()] = (features.keys[row], folder.name.endswith("-flip"))
    return owners


def _without_timings(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in entry.items() if "seconds" not in key} for entry in history]


def _owners_of(pooled: torch.Tensor, owners: dict) -> list[tuple[str, bool]]:
    return [owners[row.tobytes()] for row in pooled.detach().half().numpy()]  # float16 -> float32 -> float16 is exact


@needs_flickr8k
@pytest.mark.parametrize("decoder", ["merge", "attention", "transformer"])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, capsys, monkeypatch, cache, decoder, example_photos):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    with monkeypatch.context() as patch:
        _interrupt_after_epoch(patch, 2)
        assert main([*_train_arguments(resumed, cache, decoder), "--epochs", "3"]) == 130
    history = json.loads((resumed / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert {"dev_bleu4", "dev_cider"} <= set(history[0])
    assert (resumed / "history.png").stat().st_size > 1000
    assert (resumed / "best" / "model.safetensors").is_file()

    capsys.readouterr()
    assert main([*_train_arguments(resumed, cache, decoder), "--epochs", "3"]) == 2  # never overwrite a run silently
    assert "--resume" in capsys.readouterr().err
    assert main(["--threads", "1", "train", "--output", str(resumed), "--resume", "--quiet"]) == 0
    assert main([*_train_arguments(straight, cache, decoder), "--epochs", "3"]) == 0

    # Weights, optimiser moments, step count, learning rate and random state all carried over:
    # the resumed run ends exactly where the uninterrupted one does.
    for name in ("model.safetensors", "optimizer.safetensors"):
        expected, actual = load_file(straight / "last" / name), load_file(resumed / "last" / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{name}: {key}")
    state, expected_state = (json.loads((run / "last" / "training_state.json").read_text()) for run in (resumed, straight))
    assert state["step"] == expected_state["step"] and state["param_groups"] == expected_state["param_groups"]
    assert _without_timings(state["history"]) == _without_timings(expected_state["history"])

    config = TrainingConfig.from_dict(json.loads((straight / "training_config.json").read_text()))
    steps_per_epoch = state["step"] // 3
    assert state["step"] == 3 * steps_per_epoch > 0
    schedule = [learning_rate_at(steps_per_epoch * epoch - 1, state["step"], config) for epoch in (1, 2, 3)]
    assert [entry["learning_rate"] for entry in state["history"]] == pytest.approx(schedule)

    captioner = Captioner.load(resumed / "best")
    captions = captioner.caption(example_photos[0], beam_size=2, num_captions=2)
    assert len(captions) == 2 and captions[0].score >= captions[1].score


@needs_flickr8k
@pytest.mark.parametrize("flip", [True, False])
def test_mirrored_features_are_used_in_training_when_flip_is_on(tmp_path, monkeypatch, cache, flip):
    import captioner.training.loop

    seen: list[torch.Tensor] = []
    build = captioner.training.loop.create_decoder

    def recording_decoder(config):
        decoder = build(config)
        forward = decoder.forward
        decoder.forward = lambda features, tokens: seen.append(features.pooled) or forward(features, tokens)  # only training calls forward
        return decoder

    monkeypatch.setattr(captioner.training.loop, "create_decoder", recording_decoder)
    arguments = [*_train_arguments(tmp_path / "run", cache), "--epochs", "1", "--set", f"flip_augment={str(flip).lower()}"]
    assert main(arguments) == 0
    owners = _owners_of(torch.cat(seen), _feature_owners(cache))
    mirrored = sum(flipped for _, flipped in owners) / len(owners)
    assert 0.35 < mirrored < 0.65 if flip else mirrored == 0.0
    train_photos = {record.image for record in load_dataset(FLICKR8K).limit(50).split("train")}
    assert {photo for photo, _ in owners} == train_photos


@needs_flickr8k
def test_self_critical_rewards_are_cider_of_samples_of_the_right_photos(tmp_path, monkeypatch, cache):
    import captioner.training.losses

    assert main([*_train_arguments(tmp_path / "xe", cache, limit=40), "--epochs", "1"]) == 0
    steps: list[tuple[torch.Tensor, list]] = []
    draw = captioner.training.losses.sample

    def recording_sample(decoder, features, **options):
        groups = draw(decoder, features, **options)
        steps.append((features.pooled, groups))
        return groups

    monkeypatch.setattr(captioner.training.losses, "sample", recording_sample)
    assert main([*_train_arguments(tmp_path / "scst", cache, limit=40), "--epochs", "1", "--set", f"init_from={tmp_path / 'xe' / 'best'}",
                 "--set", "self_critical=true", "--set", "learning_rate=0.00001", "--set", "batch_size=20"]) == 0

    # Recompute every step's reward from what was sampled, naming each photo by its features.
    train_records = load_dataset(FLICKR8K).limit(40).split("train")
    cider = CiderD({record.image: [tokenize(c) for c in record.captions] for record in train_records})
    owners, vocabulary = _feature_owners(cache), Captioner.load(tmp_path / "xe" / "best").vocabulary
    step_rewards = []
    for pooled, groups in steps:
        photos = [photo for photo, _ in _owners_of(pooled, owners)]
        step_rewards.append(np.mean([cider.score(photo, vocabulary.decode(h.tokens).split()) for photo, group in zip(photos, groups) for h in group]))
    history = json.loads((tmp_path / "scst" / "history.json").read_text())
    assert len(steps) == 10 and all(len(group) == 5 for _, groups in steps for group in groups)  # 40 photos, 4 a step, 5 samples each
    assert history[0]["train_reward"] == pytest.approx(np.mean(step_rewards), rel=1e-6) and history[0]["train_reward"] > 0
    assert Captioner.load(tmp_path / "scst" / "best").vocabulary == vocabulary
