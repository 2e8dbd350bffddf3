"""Training smoke test on ~50 Flickr8k images: history, plot, checkpoints, resume, refusal to overwrite."""
import json

import pytest

from captioner.api import Captioner
from captioner.cli import main
from conftest import FLICKR8K, needs_flickr8k

TINY = ["--set", "decoder.embed_dim=64", "--set", "decoder.hidden_dim=64", "--set", "decoder.attention_dim=64",
        "--set", "decoder.num_layers=1", "--set", "decoder.num_heads=2", "--set", "min_count=2", "--set", "warmup_steps=10",
        "--set", "batch_size=32"]


@needs_flickr8k
@pytest.mark.parametrize("decoder", ["merge", "attention", "transformer"])
def test_train_resume_and_load(tmp_path, capsys, decoder, example_photos):
    output, cache = tmp_path / "run", tmp_path / "cache"
    arguments = ["--threads", "1", "train", "--dataset", str(FLICKR8K), "--limit", "50", "--cache", str(cache),
                 "--output", str(output), "--decoder", decoder, "--quiet", "--seed", "1", *TINY]
    assert main([*arguments, "--epochs", "2"]) == 0
    history = json.loads((output / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert {"dev_bleu4", "dev_cider"} <= set(history[0])
    assert (output / "history.png").stat().st_size > 1000
    assert (output / "best" / "model.safetensors").is_file()

    capsys.readouterr()
    assert main([*arguments, "--epochs", "2"]) == 2  # never overwrite a run silently
    assert "--resume" in capsys.readouterr().err

    assert main(["--threads", "1", "train", "--output", str(output), "--epochs", "3", "--resume", "--quiet"]) == 0
    assert [entry["epoch"] for entry in json.loads((output / "history.json").read_text())] == [1, 2, 3]

    captioner = Captioner.load(output / "best")
    captions = captioner.caption(example_photos[:1], beam_size=2, num_captions=2)[0]
    assert len(captions) == 2 and captions[0].score >= captions[1].score


@needs_flickr8k
def test_self_critical_fine_tuning_from_a_model(tmp_path):
    cache = tmp_path / "cache"
    common = ["--threads", "1", "train", "--dataset", str(FLICKR8K), "--limit", "40", "--cache", str(cache), "--quiet", *TINY]
    assert main([*common, "--output", str(tmp_path / "xe"), "--decoder", "transformer", "--epochs", "1"]) == 0
    assert main([*common, "--output", str(tmp_path / "scst"), "--epochs", "1", "--set", f"init_from={tmp_path / 'xe' / 'best'}",
                 "--set", "self_critical=true", "--set", "learning_rate=0.00001", "--set", "batch_size=20"]) == 0
    history = json.loads((tmp_path / "scst" / "history.json").read_text())
    assert history[0]["train_reward"] >= 0.0
    tuned = Captioner.load(tmp_path / "scst" / "best")
    assert tuned.vocabulary == Captioner.load(tmp_path / "xe" / "best").vocabulary
