"""Confidence: a calibrated probability of acceptable alt text, fitted with numpy, stored with the
model as calibration.json, loaded back, monotone in its inputs, and in every output."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from captioner.generation.alt_text import tags_alt_text
from captioner.api import Captioner, pretrained_path
from captioner.model.concepts import ConceptTable, Tag
from captioner.generation.confidence import (
    CALIBRATION, FEATURES, Calibration, caption_features, feature_matrix, fit_logistic, load_calibration, reliability, save_calibration,
)
from captioner.errors import CheckpointError
from helpers import one_line_error

from conftest import EXAMPLES


def synthetic_set(count: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of made-up captions, acceptable more often the higher their score and tag agreement."""
    rng = np.random.default_rng(seed)
    rows = [{"score": rng.uniform(-2.5, -0.5), "top_tag": rng.uniform(0.3, 1), "named_tag": rng.uniform(0, 1) * rng.integers(0, 2),
             "subject_named": float(rng.integers(0, 2)), "unsupported": float(rng.integers(0, 3)), "words": float(rng.integers(5, 15))} for _ in range(count)]
    x = feature_matrix(rows)  # (N, F)
    logit = 3.0 * (x[:, 0] + 1.5) + 2.0 * x[:, 2] - 1.0 * x[:, 4]
    return x, (rng.uniform(size=count) < 1 / (1 + np.exp(-logit))).astype(float)


def test_calibration_fitted_on_a_synthetic_set_is_stored_and_loads_back_the_same(tmp_path):
    x, y = synthetic_set()
    weights, intercept = fit_logistic(x, y)
    assert weights["score"] > 1 and weights["named_tag"] > 0.5 and weights["unsupported"] < 0  # it learnt the set's rule
    calibration = Calibration(weights, intercept, fitted_on={"folders": {"synthetic": len(y)}})
    path = save_calibration(tmp_path, calibration)
    stored = json.loads(path.read_text())
    assert stored["format_version"] == 1 and stored["features"] == list(FEATURES) and len(stored["weights"]) == len(FEATURES)
    assert stored["fitted_on"] == {"folders": {"synthetic": 400}} and [band["level"] for band in stored["bands"]][-1] == "guess"
    loaded = load_calibration(tmp_path)
    rows = [dict(zip(FEATURES, row)) for row in x[:50]]
    assert [loaded.confidence(row) for row in rows] == [calibration.confidence(row) for row in rows]
    assert all(0.0 <= calibration.confidence(row) <= 1.0 for row in rows)


def test_fitted_confidence_is_calibrated_on_its_own_kind_of_data():
    x, y = synthetic_set(2000, seed=1)
    calibration = Calibration(*fit_logistic(x, y))
    test_x, test_y = synthetic_set(2000, seed=2)
    _, error = reliability([calibration.confidence(dict(zip(FEATURES, row))) for row in test_x], test_y)
    assert error < 0.05


def test_raising_the_score_or_the_tag_agreement_never_lowers_confidence():
    x, y = synthetic_set()
    y = 1.0 - y  # a set where a higher score goes with worse captions: the fit must still not reward a lower score
    calibration = Calibration(*fit_logistic(x, y))
    assert all(calibration.weights[name] >= 0 for name in ("score", "top_tag", "named_tag", "subject_named"))
    assert calibration.weights["unsupported"] <= 0
    tags = [Tag("cat", 0.9), Tag("bed", 0.4)]
    for subject in (None, "cat"):
        for text in ("a dog on a bed", "a cat on a bed", "a cat and a pizza"):
            confidences = [calibration.confidence(caption_features(text, score, tags, subject)) for score in np.linspace(-3, 0, 13)]
            assert confidences == sorted(confidences)
            stronger = [calibration.confidence(caption_features(text, -1.0, [Tag("cat", p), Tag("bed", 0.4)], subject)) for p in (0.5, 0.7, 0.9)]
            assert stronger == sorted(stronger)


def test_caption_features_read_the_caption_against_its_tags():
    tags = [Tag("cat", 0.9), Tag("dining table", 0.5)]
    features = caption_features("a cat sitting next to a dog", -1.2, tags, "cat")
    assert features == {"score": -1.2, "top_tag": 0.9, "named_tag": 0.9, "subject_named": 1.0, "unsupported": 1.0, "words": 7.0}
    assert caption_features("two cats at a table", -1.0, tags, None)["named_tag"] == 0.9  # plurals name the tag; "table" is a tag
    assert caption_features("two cats at a table", -1.0, tags, None)["unsupported"] == 0.0
    assert caption_features("a man on a bed", -1.0, [], "cat") == {"score": -1.0, "top_tag": 0.0, "named_tag": 0.0, "subject_named": 0.0, "unsupported": 1.0, "words": 5.0}


def test_reliability_table_and_expected_calibration_error():
    rows, error = reliability([0.05, 0.15, 0.95, 0.95, 1.0], [0, 1, 1, 1, 0])
    assert [(row.low, row.count) for row in rows] == [(0.0, 1), (0.1, 1), (0.9, 3)]
    assert rows[2].mean_predicted == pytest.approx(0.9667, abs=1e-4) and rows[2].fraction_acceptable == pytest.approx(2 / 3)
    assert error == pytest.approx((0.05 + 0.85 + 3 * (0.9667 - 2 / 3)) / 5, abs=1e-4)


@pytest.mark.parametrize("edit, words", [
    (lambda data: {**data, "format_version": 9}, "format 1"),
    (lambda data: {**data, "features": ["score", "moon_phase", *data["features"][2:]]}, "'moon_phase' is unknown"),
    (lambda data: {**data, "weights": data["weights"][:-1]}, "as many finite weights"),
    (lambda data: {**data, "bands": [{"level": "guess", "minimum": 0.5}]}, "the last with minimum 0"),
])
def test_a_broken_calibration_is_refused_saying_to_refit(tmp_path, edit, words):
    save_calibration(tmp_path, Calibration(dict.fromkeys(FEATURES, 0.0), 0.0))
    path = tmp_path / CALIBRATION
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(CheckpointError, match="scripts/fit_confidence.py") as error:
        load_calibration(tmp_path)
    assert words in str(error.value)


@pytest.fixture(scope="module")
def uncalibrated_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "uncalibrated"
    shutil.copytree(pretrained_path(), folder, ignore=shutil.ignore_patterns(CALIBRATION))
    return folder


def test_a_model_folder_without_calibration_gives_no_confidence_and_says_so_once(uncalibrated_model, caplog):
    with caplog.at_level(logging.WARNING, logger="captioner"):
        captioner = Captioner.load(uncalibrated_model, "cpu")
        Captioner.load(uncalibrated_model, "cpu")
    notes = [record.getMessage() for record in caplog.records if CALIBRATION in record.getMessage()]
    assert len(notes) == 1 and "without a confidence" in notes[0] and "fit_confidence.py" in notes[0]
    assert captioner.calibration is None
    captions = captioner.caption(EXAMPLES / "chelsea.jpg", beam_size=2, num_captions=2)
    assert [caption.confidence for caption in captions] == [None, None]


def test_the_shipped_model_gives_each_caption_a_confidence(shipped_captioner):
    assert (pretrained_path() / CALIBRATION).is_file()
    calibration = shipped_captioner.calibration
    assert set(calibration.fitted_on["folders"]) <= {"imagenet-sample-dev", "coco-mini-dev", "flickr8k"}  # dev folders (Flickr8k: its dev split)
    captions = shipped_captioner.caption(EXAMPLES / "chelsea.jpg", beam_size=3, num_captions=3)
    assert all(0.0 <= caption.confidence <= 1.0 for caption in captions)
    features = caption_features(captions[0].text, captions[0].score, captions[0].tags, "cat")  # the subject the rule chose for the cat
    assert captions[0].confidence == calibration.confidence(features)


def test_cli_json_and_output_records_carry_each_captions_confidence(tmp_path, capsys):
    from captioner.cli.commands import main

    photo = str(EXAMPLES / "chelsea.jpg")
    assert main(["--threads", "1", "caption", "--json", "--num-captions", "2", photo]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["captions"]) == 2 and all(0.0 <= caption["confidence"] <= 1.0 for caption in record["captions"])
    output = tmp_path / "captions.jsonl"
    assert main(["--threads", "1", "caption", "--quiet", "--output", str(output), photo]) == 0
    written = json.loads(output.read_text())
    assert written["captions"][0]["confidence"] == record["captions"][0]["confidence"]


def test_cli_without_calibration_writes_null_confidence_with_a_note(uncalibrated_model, capsys, monkeypatch):
    from captioner.generation import confidence
    from captioner.cli.commands import main

    monkeypatch.setattr(confidence, "_noted", set())
    assert main(["--threads", "1", "caption", "--json", "--model", str(uncalibrated_model), str(EXAMPLES / "chelsea.jpg")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["captions"][0]["confidence"] is None


def test_parquet_shards_hold_the_confidence(tmp_path):
    pyarrow = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the ray extra")
    from captioner.batch.caption_shards import ShardFolder

    writer = ShardFolder(tmp_path / "shards", "parquet").writer(shard_size=10)
    writer.write({"path": "a.jpg", "captions": [{"text": "a cat", "score": -1.0, "confidence": 0.8}], "tags": []})
    writer.write({"path": "b.jpg", "captions": [{"text": "a dog", "score": -2.0, "confidence": None}], "tags": []})
    writer.close()
    rows = pyarrow.read_table(tmp_path / "shards" / "captions-00000.parquet").to_pylist()
    assert [row["captions"][0]["confidence"] for row in rows] == [0.8, None]


def test_export_copies_the_calibration_unless_the_captions_change(tmp_path, capsys):
    from captioner.cli.commands import main

    assert main(["export", "--model", str(pretrained_path()), "--output", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / CALIBRATION).read_bytes() == (pretrained_path() / CALIBRATION).read_bytes()
    assert main(["export", "--model", str(pretrained_path()), "--output", str(tmp_path / "changed"), "--length-penalty", "0.5"]) == 0
    assert not (tmp_path / "changed" / CALIBRATION).exists()
    assert "not copied" in capsys.readouterr().err


def test_export_refuses_a_broken_calibration_before_writing(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(pretrained_path(), model)
    (model / CALIBRATION).write_text("{not json")
    error = one_line_error(capsys, ["export", "--model", str(model), "--output", str(tmp_path / "copy")])
    assert CALIBRATION in error
    assert not (tmp_path / "copy").exists()


def test_tags_become_alt_text_where_they_name_things():
    things = ConceptTable.load().words
    assert tags_alt_text([Tag("cup", 0.99), Tag("coffee", 0.99), Tag("wood", 0.4)], things) == "Photo of a cup and coffee."
    assert tags_alt_text([Tag("oil rig", 0.65), Tag("standing", 0.55)], things) == "Photo of an oil rig."
    assert tags_alt_text([Tag("dogs", 0.9), Tag("man", 0.8), Tag("ball", 0.5), Tag("apple", 0.4)], things) == "Photo of dogs, a man and a ball."
    assert tags_alt_text([Tag("white", 0.4), Tag("standing", 0.3)], things) is None
    assert tags_alt_text([], things) is None


def test_server_without_calibration_answers_null_confidence(uncalibrated_model):
    from fastapi.testclient import TestClient

    from captioner.server import Settings, create_app

    with TestClient(create_app(Settings(model_path=uncalibrated_model))) as client:
        body = client.post("/api/captions", files={"image": (EXAMPLES / "chelsea.jpg").read_bytes()}).json()
        assert body["captions"][0]["confidence"] is None
        assert client.get("/api/model").json()["confidence_bands"] is None
