"""Bad settings and model folders: a one-line error before any work or any write, never a traceback.

The training runs here use a tiny dataset of the example photos (no shared data needed).
"""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from captioner.api import Captioner, pretrained_path
from captioner.cli.commands import main
from captioner.errors import CaptionerError
from conftest import EXAMPLES
from helpers import one_line_error

TINY = ["--set", "decoder.embed_dim=32", "--set", "decoder.hidden_dim=32", "--set", "decoder.num_layers=1",
        "--set", "decoder.num_heads=2", "--set", "min_count=1", "--set", "warmup_steps=2", "--set", "batch_size=8",
        "--set", "flip_augment=false", "--quiet"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """12 photos (the examples, recoloured) with two captions each, split train / dev."""
    folder = tmp_path_factory.mktemp("tiny")
    words = {"astronaut": "a woman in a white suit", "chelsea": "a cat lying on a rug", "coffee": "a cup of coffee on a table", "rocket": "a rocket on a launch pad"}
    rows = []
    for shade in range(3):
        for photo in sorted(EXAMPLES.glob("*.jpg")):
            name = f"{photo.stem}-{shade}.jpg"
            pixels = np.asarray(Image.open(photo).convert("RGB").resize((96, 96)), dtype=np.int16)
            Image.fromarray(np.clip(pixels + 20 * shade, 0, 255).astype(np.uint8)).save(folder / name)
            split = "dev" if shade == 2 else "train"
            rows += [{"image": name, "caption": words[photo.stem], "split": split}, {"image": name, "caption": f"there is {words[photo.stem]}", "split": split}]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "pairs.jsonl"


def train_arguments(dataset, output, cache, *more):
    return ["--threads", "1", "train", "--dataset", str(dataset), "--output", str(output), "--cache", str(cache), "--epochs", "1", *TINY, *more]


@pytest.mark.parametrize("setting, named", [
    ("epochs=ten", "epochs"), ("batch_size=0", "batch_size"), ("learning_rate=NaN", "learning_rate"),
    ("decoder.num_heads=5", "num_heads"), ("decoder.dropout=2", "dropout"), ("decoder=5", "decoder"),
    ("decoder.kind=gru", "kind"), ("encoder=resnet50", "encoder"), ("flip_augment=1", "flip_augment"),
    ("samples_per_image=1", "samples_per_image"), ("nonsense=1", "nonsense"), ("caption_text=[5]", "caption_text"),
])
def test_bad_setting_is_one_line_before_any_write(tmp_path, capsys, tiny_dataset, setting, named):
    output, cache = tmp_path / "run", tmp_path / "cache"
    err = one_line_error(capsys, train_arguments(tiny_dataset, output, cache, "--set", setting))
    assert named in err
    assert not output.exists() and not cache.exists()  # nothing written, so the corrected rerun is not refused


@pytest.mark.parametrize("flags", [["--batch-size", "0"], ["--epochs", "0"], ["--epochs", "-1"], ["--learning-rate", "nan"], ["--set", "novalue"]])
def test_bad_training_flags(tmp_path, capsys, tiny_dataset, flags):
    output = tmp_path / "run"
    one_line_error(capsys, train_arguments(tiny_dataset, output, tmp_path / "cache", *flags))
    assert not output.exists()


def test_dataset_file_holding_a_list(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[]")
    err = one_line_error(capsys, ["train", "--dataset", str(tmp_path / "list.json"), "--output", str(tmp_path / "run")])
    assert "dataset_*.json" in err and "captions_*.json" in err  # names the layouts it reads


def test_output_that_is_a_file(tmp_path, capsys, tiny_dataset):
    (tmp_path / "afile").write_text("mine")
    err = one_line_error(capsys, train_arguments(tiny_dataset, tmp_path / "afile", tmp_path / "cache"))
    assert "is a file" in err and (tmp_path / "afile").read_text() == "mine"


def test_evaluate_output_that_is_a_file(tmp_path, capsys, tiny_dataset):
    (tmp_path / "afile").write_text("mine")
    err = one_line_error(capsys, ["evaluate", "--dataset", str(tiny_dataset), "--split", "dev", "--output", str(tmp_path / "afile"), "--cache", str(tmp_path / "cache")])
    assert "is a file" in err and (tmp_path / "afile").read_text() == "mine"


def test_force_keeps_the_good_run_until_the_new_one_has_a_checkpoint(tmp_path, capsys, tiny_dataset):
    output, cache = tmp_path / "run", tmp_path / "cache"
    assert main(train_arguments(tiny_dataset, output, cache)) == 0
    (output / "notes.txt").write_text("my notes")  # a file the project did not write
    good = (output / "best" / "model.safetensors").read_bytes()

    # A bad setting with --force: refused before anything is touched
    one_line_error(capsys, train_arguments(tiny_dataset, output, cache, "--force", "--set", "decoder.num_heads=5"))
    one_line_error(capsys, train_arguments(tiny_dataset, output, cache, "--force", "--set", "decoder.kind=gru"))
    assert (output / "best" / "model.safetensors").read_bytes() == good and (output / "notes.txt").read_text() == "my notes"

    # A failure after the checks (here: the disk fills while features are cached): the old run is put back
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("captioner.training.loop.feature_cache", fail_to_cache)
        assert main(train_arguments(tiny_dataset, output, cache, "--force")) == 2
    assert (output / "best" / "model.safetensors").read_bytes() == good and (output / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in output.iterdir()) == sorted(["best", "last", "history.json", "history.png", "training_config.json", "notes.txt"])

    # A good --force run replaces the run and keeps the user's file
    assert main(train_arguments(tiny_dataset, output, cache, "--force", "--seed", "7")) == 0
    assert (output / "best" / "model.safetensors").read_bytes() != good
    assert (output / "notes.txt").read_text() == "my notes" and not (output / ".replaced-run").exists()


def fail_to_cache(*args, **kwargs):
    raise CaptionerError("no space left on device")


def test_failed_fresh_run_leaves_nothing_behind(tmp_path, monkeypatch, tiny_dataset):
    output = tmp_path / "run"
    monkeypatch.setattr("captioner.training.loop.feature_cache", fail_to_cache)
    assert main(train_arguments(tiny_dataset, output, tmp_path / "cache")) == 2
    assert not output.exists()  # so the rerun is not refused


def broken_copy(tmp_path, edit) -> str:
    """A copy of the shipped model folder with `edit(folder)` applied."""
    folder = tmp_path / "model"
    shutil.copytree(pretrained_path(), folder)
    edit(folder)
    return str(folder)


def edit_config(change):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(change(config)))
    return edit


@pytest.mark.parametrize("edit, named", [
    (edit_config(lambda c: [c]), "JSON object"),
    (edit_config(lambda c: {k: v for k, v in c.items() if k != "decoder"}), "decoder"),
    (edit_config(lambda c: {k: v for k, v in c.items() if k != "encoder"}), "encoder"),
    (edit_config(lambda c: {**c, "decoder": {**c["decoder"], "num_heads": 5}}), "num_heads"),
    (edit_config(lambda c: {**c, "preprocess": {**c["preprocess"], "input_size": "224"}}), "input_size"),
    (edit_config(lambda c: {**c, "decoding": {**c["decoding"], "length_penalty": "long"}}), "length_penalty"),
    (edit_config(lambda c: {**c, "encoder": "efficientnet-lite0"}), "trained on 'efficientnet-lite2'"),
    (lambda folder: (folder / "vocabulary.json").write_text("[]"), "vocabulary.json"),
    (lambda folder: (folder / "config.json").write_bytes((folder / "config.json").read_bytes().replace(b"flickr8k-default", b"flickr8k-d\xe9faut")), "not UTF-8"),
    (edit_config(lambda c: {**c, "decoder": {**c["decoder"], "max_length": 10**9}}), "max_length must be >= 1 and <= 256"),
    (edit_config(lambda c: {**c, "preprocess": {**c["preprocess"], "input_size": 1024}}), "input_size must be 224"),
    (edit_config(lambda c: {**c, "preprocess": {**c["preprocess"], "input_size": 256}}), "input_size must be 224"),
])
def test_broken_model_folder_is_one_line(tmp_path, capsys, edit, named):
    model = broken_copy(tmp_path, edit)
    err = one_line_error(capsys, ["caption", str(EXAMPLES / "chelsea.jpg"), "--model", model])
    assert named in err and ("config.json" in err or "vocabulary.json" in err), err


def test_encoder_is_recorded_in_exported_weights(tmp_path, capsys):
    assert main(["export", "--model", str(pretrained_path()), "--output", str(tmp_path / "copy")]) == 0
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    (tmp_path / "copy" / "config.json").write_text(json.dumps({**config, "encoder": "efficientnet-lite1"}))
    with pytest.raises(Exception, match="trained on 'efficientnet-lite2'"):
        Captioner.load(tmp_path / "copy")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_dataset):
    """A finished one-epoch run on the tiny dataset, to be copied and damaged."""
    folder = tmp_path_factory.mktemp("trained")
    assert main(train_arguments(tiny_dataset, folder / "run", folder / "cache")) == 0
    return folder / "run"


def edit_state(change):
    def edit(run):
        path = run / "last" / "training_state.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return edit


def _files(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("damage, named", [
    (lambda run: (run / "training_config.json").write_text("{"), "training_config.json: not valid JSON"),
    (lambda run: (run / "training_config.json").write_bytes(b'{"name": "caf\xe9"}'), "training_config.json: not UTF-8"),
    (lambda run: (run / "training_config.json").write_text("[]"), "training_config.json: must be a JSON object, not a list"),
    (edit_state(lambda state: {key: value for key, value in state.items() if key != "param_groups"}), "training_state.json: lacks param_groups"),
    (lambda run: (run / "last" / "training_state.json").write_text("{"), "training_state.json: not valid JSON"),
    (edit_state(lambda state: {**state, "epoch": "1"}), "training_state.json: epoch must be a whole number, not '1'"),
    (edit_state(lambda state: {**state, "param_groups": [{"lr": 1}]}), "training_state.json: param_groups must be the optimizer's groups"),
    (lambda run: (run / "last" / "optimizer.safetensors").write_bytes(b"garbage"), "optimizer.safetensors: unreadable"),
])
def test_a_damaged_run_is_refused_on_resume_in_one_line_before_any_work(tmp_path, capsys, monkeypatch, trained_run, damage, named):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    damage(run)
    before = _files(run)
    monkeypatch.setattr("captioner.training.loop.load_dataset", lambda *args, **kwargs: pytest.fail("went on to load the dataset"))
    err = one_line_error(capsys, ["--threads", "1", "train", "--output", str(run), "--resume", "--epochs", "2", "--quiet"])
    assert named in err and ("start the run again with --force" in err), err
    assert _files(run) == before  # nothing written or lost


def test_an_optimizer_state_that_does_not_fit_the_model_is_one_line(tmp_path, capsys, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    edit_state(lambda state: {**state, "param_groups": [{**state["param_groups"][0], "params": [0]}, *state["param_groups"][1:]]})(run)
    before = _files(run)
    err = one_line_error(capsys, ["--threads", "1", "train", "--output", str(run), "--resume", "--epochs", "2", "--quiet"])
    assert "training_state.json: the optimizer state does not fit the run's model" in err, err
    assert _files(run) == before
