"""Quality regression: the shipped model, run on the whole Flickr8k test split (1,000 photos) and on
coco-mini-dev, stays above a floor, and the committed metrics.json is what that run measures.

The floors sit a little under what the shipped model scored; a change to preprocessing, decoding or the weights that hurts captions fails here.
"""
import json

import pytest

from captioner.api import pretrained_path
from captioner.evaluation.scoring import evaluate_model
from conftest import COCO_MINI_DEV, FLICKR8K, needs_coco_mini_dev, needs_flickr8k

# The shipped model on the 1,000 Flickr8k test photos, beam 3, measured: BLEU-4 0.209, CIDEr 0.544.
BLEU4_FLOOR = 0.20
CIDER_FLOOR = 0.52
# The shipped model on the 80 coco-mini-dev photos, beam 3, measured: CIDEr 0.485, CHAIR-s 0.287.
COCO_CIDER_FLOOR = 0.44
COCO_CHAIR_S_CEILING = 0.33
# How far a rerun may drift from metrics.json (another CPU may change a caption or two; a retrained
# model without regenerated metrics moves scores by far more).
SCORE_TOLERANCE = 0.003


@pytest.fixture(scope="module")
def test_split_report(tmp_path_factory):
    """The shipped model evaluated as `captioner evaluate --split test --beam-size 1 3` does (about a minute)."""
    folder = tmp_path_factory.mktemp("flickr8k-test")
    report = evaluate_model(None, str(FLICKR8K), split="test", beam_sizes=[1, 3], output=str(folder / "eval"), cache=str(folder / "cache"), progress=False)
    report["captions"] = json.loads((folder / "eval" / "captions.json").read_text())
    return report


@pytest.mark.slow
@needs_flickr8k
def test_shipped_model_on_the_flickr8k_test_split(test_split_report):
    scores = test_split_report["results"]["beam 3"]
    assert test_split_report["images"] == 1000
    assert scores["BLEU-4"] >= BLEU4_FLOOR, scores
    assert scores["CIDEr"] >= CIDER_FLOOR, scores
    captions = test_split_report["captions"]
    assert len(captions) == 1000 and all(entry["beam 3"] and entry["greedy"] for entry in captions.values())


@pytest.mark.slow
@needs_flickr8k
def test_committed_metrics_are_what_the_shipped_model_scores(test_split_report):
    committed = json.loads((pretrained_path() / "metrics.json").read_text())
    for field in ("model", "dataset", "split", "images", "decoding", "chair_ground_truth"):
        assert committed[field] == test_split_report[field], field
    assert committed["results"].keys() == test_split_report["results"].keys()
    for label, scores in test_split_report["results"].items():
        assert committed["results"][label].keys() == scores.keys()
        for metric, value in scores.items():
            assert committed["results"][label][metric] == pytest.approx(value, abs=SCORE_TOLERANCE), f"{label} {metric}"
    for field in ("precision", "recall", "tags_per_image", "threshold"):
        assert committed["tags"][field] == pytest.approx(test_split_report["tags"][field], abs=SCORE_TOLERANCE), field
    for label, count in test_split_report["distinct_words"].items():
        assert abs(committed["distinct_words"][label] - count) <= 3, label


def test_shipped_model_records_its_encoder():
    config = json.loads((pretrained_path() / "config.json").read_text())
    assert config["encoder"] == "efficientnet-lite2"


@pytest.mark.slow
@needs_coco_mini_dev
def test_shipped_model_outside_flickr8k_does_not_get_worse(tmp_path):
    report = evaluate_model(None, str(COCO_MINI_DEV), beam_sizes=[3], output=str(tmp_path / "eval"), cache=str(tmp_path / "cache"), progress=False)
    scores = report["results"]["beam 3"]
    assert report["images"] == 80 and report["chair_ground_truth"] == "object labels + reference captions"
    assert scores["CIDEr"] >= COCO_CIDER_FLOOR, scores
    assert scores["CHAIR-s"] <= COCO_CHAIR_S_CEILING, scores
    assert 0 < report["tags"]["precision"] <= 1 and 0 < report["tags"]["recall"] <= 1
