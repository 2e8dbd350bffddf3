"""Training beyond one process and one session, on a small dataset of drawn shapes made here:
`torchrun --nproc_per_node=2` (two CPU processes, gloo) ends with the same weights in both
processes, each having trained on its own share of every batch, and matches one process at the
same global batch; `--resume` keeps the run's vocabulary and learning-rate schedule when the data
changed; a device that is not here is refused before anything is written.

Run as a script (by torchrun), this file is one training process: `python -m captioner` with a
record of what its decoder trained on and its final weights left for the test.
"""
import hashlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "grey": (128, 128, 128)}
SHAPES = ("square", "circle", "triangle")
TINY = ["--set", "decoder.embed_dim=32", "--set", "decoder.hidden_dim=32", "--set", "decoder.attention_dim=32",
        "--set", "decoder.num_layers=1", "--set", "decoder.num_heads=2", "--set", "min_count=2", "--set", "warmup_steps=3",
        "--set", "batch_size=7", "--set", "flip_augment=false",
        "--set", "mixed_precision=false"]  # float32, so one process and two shares can be compared to 1e-5 (bf16 rounds each share apart)


def _draw(shape: str, colour: str, background: str, path: Path) -> None:
    image = Image.new("RGB", (96, 96), BACKGROUNDS[background])
    draw, box = ImageDraw.Draw(image), (20, 20, 76, 76)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon([(48, 18), (78, 78), (18, 78)], fill=COLOURS[colour])
    image.save(path)


def make_shapes_dataset(folder: Path, extra_captions: bool = False) -> Path:
    """24 photos of a coloured shape (18 train, 6 dev) with two captions each, as captions.jsonl;
    `extra_captions` adds a third caption to every photo, with words the first version lacks."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    photos = [(shape, colour, background) for shape in SHAPES for colour in COLOURS for background in BACKGROUNDS][:24]
    for index, (shape, colour, background) in enumerate(photos):
        name = f"{index:02d}-{colour}-{shape}.png"
        if not (folder / name).is_file():
            _draw(shape, colour, background, folder / name)
        split = "dev" if index % 4 == 3 else "train"
        captions = [f"a {colour} {shape} on a {background} background", f"a {shape} that is {colour}"]
        if extra_captions:
            captions.append(f"one bright {colour} {shape} drawn in the middle of a plain picture")
        rows += [{"image": name, "caption": caption, "split": split} for caption in captions]
    (folder / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "captions.jsonl"


class Seen(list):
    """A fingerprint list per training step, and the decoder that took them."""

    decoder = None


def record_training_batches(create_decoder, seen: Seen):
    """`create_decoder` whose decoders note in `seen`, at every training step (only training calls
    forward), a fingerprint of each example's photo features."""
    def recording(config):
        decoder = create_decoder(config)
        forward = decoder.forward

        def forward_and_record(features, tokens):
            seen.append([hashlib.sha1(row.tobytes()).hexdigest()[:12] for row in features.pooled.detach().cpu().numpy()])
            return forward(features, tokens)

        decoder.forward = forward_and_record
        seen.decoder = decoder
        return decoder
    return recording


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """The dataset and a feature cache for it, shared by the module."""
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root / "data"), root / "cache"


def _arguments(dataset: Path, cache: Path, output: Path, epochs: int = 2) -> list[str]:
    return ["--threads", "1", "train", "--dataset", str(dataset), "--cache", str(cache), "--output", str(output),
            "--epochs", str(epochs), "--quiet", "--seed", "3", "--device", "cpu", "--decoder", "transformer", *TINY]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build has no torch.distributed")
def test_two_processes_train_on_shares_of_each_batch_and_end_as_one_process_would(tmp_path, shapes, monkeypatch):
    import captioner.training.loop
    from captioner.cli.commands import main

    dataset, cache = shapes
    # Without dropout both runs compute the same function; with the shares weighed by their tokens
    # the averaged gradient is the whole batch's, so only float rounding tells the runs apart.
    arguments = [*_arguments(dataset, cache, tmp_path / "two"), "--set", "decoder.dropout=0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(tmp_path)]
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))  # this checkout's captioner
    result = subprocess.run([*torchrun, *arguments], capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    rank0, rank1 = (load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1))
    saved = load_file(tmp_path / "two" / "last" / "model.safetensors")
    assert rank0.keys() == rank1.keys() == saved.keys()
    for name in rank0:  # DDP kept the two processes' weights identical, and rank 0 saved them
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.equal(rank0[name], saved[name]), name
    assert [result.stdout.count(line) for line in ("epoch 1:", "epoch 2:", "best model:")] == [1, 1, 1]  # rank 0 alone logs

    seen = Seen()
    monkeypatch.setattr(captioner.training.loop, "create_decoder", record_training_batches(captioner.training.loop.create_decoder, seen))
    arguments[arguments.index(str(tmp_path / "two"))] = str(tmp_path / "one")
    assert main(arguments) == 0
    one = load_file(tmp_path / "one" / "last" / "model.safetensors")
    for name in one:
        if name.endswith("in_projection.bias"):  # the key bias [E:2E] has no gradient (softmax ignores a shift): Adam makes rounding noise a step
            width = one[name].shape[0] // 3
            saved[name], one[name] = (torch.cat([bias[:width], bias[2 * width :]]) for bias in (saved[name], one[name]))
        torch.testing.assert_close(saved[name], one[name], rtol=0, atol=1e-5, msg=name)  # measured: at most 2.3e-6 apart

    # Each process trained on its own share: together, step by step, the one process's batches.
    shares = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(seen) > 2
    assert sorted({len(whole) for whole in seen}) == [1, 7]  # batch_size 7, and a last batch of one
    for step, (first, second, whole) in enumerate(zip(*shares, seen)):
        if len(whole) == 1:  # one example for two processes: the second runs it too, weighed 0, so both step
            assert first == second == whole, step
        else:
            assert sorted(first + second) == sorted(whole) and {len(first), len(second)} == {3, 4}, step
    histories = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("two", "one")]
    assert [entry["train_loss"] for entry in histories[0]] == pytest.approx([entry["train_loss"] for entry in histories[1]], rel=1e-5)
    assert [entry["learning_rate"] for entry in histories[0]] == [entry["learning_rate"] for entry in histories[1]]


def test_resume_keeps_the_runs_vocabulary_and_schedule_when_the_data_changed(tmp_path, shapes, monkeypatch):
    import captioner.training.loop
    from captioner.cli.commands import main
    from captioner.training.loop import TrainingConfig, learning_rate_at

    dataset = make_shapes_dataset(tmp_path / "data")
    cache = shapes[1]
    output = tmp_path / "run"
    plot = captioner.training.loop.plot_history

    def plot_then_stop(history, path):
        plot(history, path)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(captioner.training.loop, "plot_history", plot_then_stop)
        assert main(_arguments(dataset, cache, output, epochs=3)) == 130
    vocabulary = json.loads((output / "last" / "vocabulary.json").read_text())
    first = json.loads((output / "last" / "training_state.json").read_text())

    make_shapes_dataset(tmp_path / "data", extra_captions=True)  # more captions, new words, the same photos
    assert main(["--threads", "1", "train", "--output", str(output), "--resume", "--quiet"]) == 0
    assert json.loads((output / "last" / "vocabulary.json").read_text()) == vocabulary
    state = json.loads((output / "last" / "training_state.json").read_text())
    assert state["schedule"] == first["schedule"] == {"total_steps": 3 * first["step"], "epochs": 3}
    steps_before, steps_now = first["step"], (state["step"] - first["step"]) // 2
    assert state["step"] == steps_before + 2 * steps_now and steps_now > steps_before  # longer epochs now
    config = TrainingConfig.from_dict(json.loads((output / "training_config.json").read_text()))
    ends = [steps_before, steps_before + steps_now, steps_before + 2 * steps_now]  # of epochs 1, 2 and 3
    planned = [learning_rate_at(end - 1, 3 * steps_before, config) for end in ends]
    assert [entry["learning_rate"] for entry in state["history"]] == pytest.approx(planned)


def test_a_device_that_is_not_here_is_refused_before_anything_is_written(tmp_path, capsys, shapes):
    from captioner.errors import CaptionerError
    from captioner.training.loop import TrainingConfig, train
    from helpers import one_line_error

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    dataset, _ = shapes
    with pytest.raises(CaptionerError, match="device 'cuda:1' asked for"):
        train(TrainingConfig(dataset=str(dataset), output=str(tmp_path / "run"), cache=str(tmp_path / "cache")), device="cuda:1")
    arguments = ["train", "--dataset", str(dataset), "--output", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--device", "cuda"]
    assert "--device cpu" in one_line_error(capsys, arguments)
    assert sorted(tmp_path.iterdir()) == []


def test_a_batch_smaller_than_the_number_of_processes_is_refused_before_anything_is_written(tmp_path, shapes):
    from captioner.training.distributed import ProcessGroup
    from captioner.errors import CaptionerError
    from captioner.training.loop import TrainingConfig, _check_and_train

    config = TrainingConfig(dataset=str(shapes[0]), output=str(tmp_path / "run"), cache=str(tmp_path / "cache"), batch_size=3)
    with pytest.raises(CaptionerError, match="batch_size 3 gives 3 examples a step for 4 processes"):
        _check_and_train(config, False, False, False, print, ProcessGroup(rank=0, world_size=4), torch.device("cpu"))
    assert sorted(tmp_path.iterdir()) == []


if __name__ == "__main__":  # one process of the torchrun test
    import captioner.training.loop

    folder, rank = Path(sys.argv.pop(1)), os.environ["RANK"]
    seen = Seen()
    captioner.training.loop.create_decoder = record_training_batches(captioner.training.loop.create_decoder, seen)
    try:
        runpy.run_module("captioner", run_name="__main__", alter_sys=True)
    finally:
        from captioner.model.checkpoint import unique_state_dict

        save_file(unique_state_dict(seen.decoder), folder / f"rank{rank}.safetensors")
        (folder / f"rank{rank}.json").write_text(json.dumps(list(seen)))
