"""Training, evaluation and `captioner features` on data as it comes at scale: photos that cannot be
read are left out and counted, a missing Java is refused before any write, COCO's official layout
caches and trains. The runs use a tiny dataset of the example photos (no shared data needed)."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from captioner.cli.commands import main
from captioner.model.config import ModelConfig
from conftest import EXAMPLES
from helpers import one_line_error
from test_datasets import write_coco_official

TINY = ["--set", "decoder.embed_dim=32", "--set", "decoder.hidden_dim=32", "--set", "decoder.num_layers=1",
        "--set", "decoder.num_heads=2", "--set", "min_count=1", "--set", "warmup_steps=2", "--set", "batch_size=8", "--quiet"]
WORDS = {"astronaut": "a woman in a white suit", "chelsea": "a cat lying on a rug", "coffee": "a cup of coffee on a table", "rocket": "a rocket on a launch pad"}


@pytest.fixture(scope="module")
def dataset_with_broken_photos(tmp_path_factory):
    """12 small photos (the examples, recoloured; the last shade is dev) with two captions each,
    plus one train and one dev photo that are not images."""
    folder = tmp_path_factory.mktemp("broken")
    rows = []
    for shade in range(3):
        for photo in sorted(EXAMPLES.glob("*.jpg")):
            name, split = f"{photo.stem}-{shade}.jpg", "dev" if shade == 2 else "train"
            pixels = np.asarray(Image.open(photo).convert("RGB").resize((96, 96)), dtype=np.int16)
            Image.fromarray(np.clip(pixels + 20 * shade, 0, 255).astype(np.uint8)).save(folder / name)
            rows += [{"image": name, "caption": WORDS[photo.stem], "split": split}, {"image": name, "caption": f"there is {WORDS[photo.stem]}", "split": split}]
    for name, split in (("broken-train.jpg", "train"), ("broken-dev.jpg", "dev")):
        (folder / name).write_bytes(b"\xff\xd8\xff\xe0 cut off")
        rows.append({"image": name, "caption": "a broken photo", "split": split})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "pairs.jsonl"


def test_features_command_counts_and_lists_unreadable_photos(tmp_path, capsys, dataset_with_broken_photos):
    cache = tmp_path / "cache"
    assert main(["--threads", "1", "features", "--dataset", str(dataset_with_broken_photos), "--cache", str(cache), "--flip", "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith("features of 12 images in ") and "; unreadable photos skipped: 2 (listed in " in lines[0]
    assert lines[1].startswith("mirrored features of 8 images in ") and "unreadable photos skipped: 1 (" in lines[1]  # train photos only
    assert "broken-train.jpg" in err and "broken-dev.jpg" in err
    main_folder = next(folder for folder in cache.iterdir() if not folder.name.endswith("-flip"))
    assert sorted(line.split("\t")[0] for line in (main_folder / "unreadable.txt").read_text().splitlines()) == ["broken-dev.jpg", "broken-train.jpg"]


def test_training_leaves_unreadable_photos_out_and_says_so(tmp_path, capsys, dataset_with_broken_photos):
    output = tmp_path / "run"
    assert main(["--threads", "1", "train", "--dataset", str(dataset_with_broken_photos), "--output", str(output), "--cache", str(tmp_path / "cache"),
                 "--epochs", "1", *TINY, "--set", "flip_augment=true"]) == 0
    out = capsys.readouterr().out
    assert "unreadable photos left out: 1 train, 1 dev (listed in " in out
    model = json.loads((output / "best" / "config.json").read_text())
    assert model["training"]["images"] == 8  # the 8 readable train photos
    assert ModelConfig.from_dict(model).to_dict() == model  # a freshly trained config round-trips

    from captioner.evaluation.scoring import evaluate_model

    report = evaluate_model(str(output / "best"), str(dataset_with_broken_photos), split="dev", beam_sizes=[1], output=str(tmp_path / "eval"),
                            cache=str(tmp_path / "cache"), progress=False)
    assert report["images"] == 4 and report["unreadable_left_out"] == 1
    assert "broken-dev.jpg" not in json.loads((tmp_path / "eval" / "captions.json").read_text())


def test_missing_java_is_refused_before_any_write(tmp_path, capsys, monkeypatch, dataset_with_broken_photos):
    import shutil as shell_utilities

    which = shell_utilities.which
    monkeypatch.setattr(shell_utilities, "which", lambda name, *args, **kwargs: None if name == "java" else which(name, *args, **kwargs))
    output, cache = tmp_path / "run", tmp_path / "cache"
    err = one_line_error(capsys, ["train", "--dataset", str(dataset_with_broken_photos), "--output", str(output), "--cache", str(cache), "--epochs", "1", *TINY])
    assert "Java" in err and "apt-get install default-jre-headless" in err
    assert not output.exists() and not cache.exists()
    err = one_line_error(capsys, ["evaluate", "--dataset", str(dataset_with_broken_photos), "--output", str(tmp_path / "eval"), "--cache", str(cache)])
    assert "Java" in err and not (tmp_path / "eval").exists() and not cache.exists()


def test_coco_official_layout_caches_and_trains(tmp_path, capsys):
    folder = tmp_path / "coco"
    write_coco_official(folder)
    for photo in folder.glob("*2014/*.jpg"):  # real photos, so the encoder sees something
        shutil.copy(EXAMPLES / "chelsea.jpg", photo)
    output = tmp_path / "run"
    assert main(["--threads", "1", "train", "--dataset", str(folder), "--output", str(output), "--cache", str(tmp_path / "cache"),
                 "--epochs", "1", *TINY, "--set", "flip_augment=false"]) == 0
    assert "2 train images" in capsys.readouterr().out and (output / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("concepts", [[], ["--set", "decoder.max_concepts=4", "--set", "detector_words=20", "--set", "detector_epochs=1", "--set", "paired_image_dropout=0.3"]], ids=["plain", "concepts"])
def test_the_dev_score_of_training_is_the_one_evaluate_gives_the_best_model(tmp_path, monkeypatch, dataset_with_broken_photos, concepts):
    """Each epoch's dev photos are captioned through `Captioner.generate`, with the model's own
    decoding rules (and concepts), so the best checkpoint is chosen by the captions users get."""
    from captioner.api import Captioner
    from captioner.evaluation.scoring import evaluate_model

    captioned: list[int] = []
    generate = Captioner.generate
    monkeypatch.setattr(Captioner, "generate", lambda self, features, *args, **kwargs: captioned.append(len(features.pooled)) or generate(self, features, *args, **kwargs))
    output, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["--threads", "1", "train", "--dataset", str(dataset_with_broken_photos), "--output", str(output), "--cache", str(cache),
                 "--epochs", "2", *TINY, "--set", "flip_augment=false", *concepts]) == 0
    assert captioned == [4, 4]  # the 4 readable dev photos, each epoch
    history = json.loads((output / "history.json").read_text())
    model = json.loads((output / "best" / "config.json").read_text())
    assert ModelConfig.from_dict(model).to_dict() == model and ("concepts" in model) == bool(concepts)  # a freshly trained config round-trips
    best = model["dev"]
    report = evaluate_model(str(output / "best"), str(dataset_with_broken_photos), split="dev", beam_sizes=[1], output=str(tmp_path / "eval"), cache=str(cache), progress=False)
    assert report["results"]["greedy"]["CIDEr"] == pytest.approx(history[best["epoch"] - 1]["dev_cider"], abs=1e-4)  # the report rounds to 4 places
