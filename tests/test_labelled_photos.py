"""`captioner evaluate` on a labelled photo folder (images/ + labels.json + animal_words.json): the
reader, the figures on a hand-made three-photo folder, and one-line errors for broken labels."""
import json

import numpy as np
import pytest
from PIL import Image

from captioner.cli.commands import main
from captioner.evaluation.labelled_photos import photo_results, read_labelled_folder, summarise
from helpers import one_line_error


def make_folder(root, labels=None, animal_words=("cat", "squirrel", "dog", "bird")):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / "squirrel.jpg")
    Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(root / "images" / "grey_cup.png")
    Image.fromarray(np.stack([np.full((64, 64), 200), np.full((64, 64), 40), np.full((64, 64), 40)], axis=-1).astype(np.uint8)).save(root / "images" / "red_bus.jpg")
    labels = labels if labels is not None else {
        "squirrel.jpg": {"class": "fox_squirrel.n.01", "words": ["squirrel", "fox squirrel", "rodent"], "animal": True},
        "grey_cup.png": {"words": ["cup", "mug"], "animal": False},
        "red_bus.jpg": {"words": ["bus", "school bus"], "animal": False},
    }
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "animal_words.json").write_text(json.dumps(list(animal_words)))
    return root


def test_figures_on_a_three_photo_folder(tmp_path):
    photos, animals = read_labelled_folder(make_folder(tmp_path))
    by_name = {photo.path.name: photo for photo in photos}
    results = [
        photo_results(by_name["squirrel.jpg"], "a cat sitting on a tree branch", ["squirrel", "brown"], animals, saturation=80.0),
        photo_results(by_name["grey_cup.png"], "a black and white photo of two mugs", ["cup"], animals, saturation=0.0),
        photo_results(by_name["red_bus.jpg"], "a black and white photo of a street", ["school bus"], animals, saturation=120.0),
    ]
    assert [r["names_subject"] for r in results] == [False, True, False]  # "mugs": a plural names it
    assert [r["tags_name_subject"] for r in results] == [True, True, True]
    assert results[0]["another_animal"] is True and results[1]["another_animal"] is None
    figures = summarise(results)
    assert figures["caption_names_subject"] == pytest.approx(1 / 3, abs=1e-3)
    assert figures["caption_names_subject_where_tags_do"] == pytest.approx(1 / 3, abs=1e-3)
    assert figures["animal_photos_naming_another_animal"] == 1.0
    assert figures["colour_photos"] == 2 and figures["colour_photos_called_black_and_white"] == 0.5  # the grey photo may be


def test_evaluate_on_a_labelled_folder_writes_figures_and_per_photo_results(tmp_path, capsys):
    folder = make_folder(tmp_path / "photos")
    assert main(["evaluate", "--dataset", str(folder), "--output", str(tmp_path / "report"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "3 photos, beam 3" in printed and "caption names subject" in printed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    per_photo = json.loads((tmp_path / "report" / "photos.json").read_text())
    assert report["photos"] == 3 and set(per_photo) == {"squirrel.jpg", "grey_cup.png", "red_bus.jpg"}
    assert per_photo["grey_cup.png"]["colour_photo"] is False and per_photo["red_bus.jpg"]["colour_photo"] is True
    assert all(isinstance(result["caption"], str) and result["caption"] for result in per_photo.values())


@pytest.mark.parametrize("labels, expected", [
    ("not json", "labels.json: cannot read it as JSON"),
    ({"squirrel.jpg": {"words": []}}, "entry 'squirrel.jpg': needs \"words\""),
    ({"missing.jpg": {"words": ["cat"]}}, "entry 'missing.jpg': no such photo"),
    ({"squirrel.jpg": {"words": ["squirrel"], "animal": "yes"}}, '"animal" must be true or false'),
])
def test_broken_labels_are_refused_in_one_line(tmp_path, capsys, labels, expected):
    folder = make_folder(tmp_path / "photos", labels={})
    (folder / "labels.json").write_text(labels if isinstance(labels, str) else json.dumps(labels))
    error = one_line_error(capsys, ["evaluate", "--dataset", str(folder), "--output", str(tmp_path / "report")])
    assert expected in error
    assert not (tmp_path / "report").exists()
