"""Quality regression: the shipped model on 100 fixed Flickr8k test images stays above a floor.

The floors sit a little under what the shipped model scored; a change to preprocessing, decoding or the weights that hurts captions fails here.
"""
import json

from captioner.api import pretrained_path
from captioner.evaluation import evaluate_model
from conftest import COCO_MINI_DEV, FLICKR8K, needs_coco_mini_dev, needs_flickr8k

BLEU4_FLOOR = 0.19
CIDER_FLOOR = 0.50
# The shipped model on the 80 coco-mini-dev photos, beam 3, measured: CIDEr 0.485, CHAIR-s 0.287.
COCO_CIDER_FLOOR = 0.44
COCO_CHAIR_S_CEILING = 0.33


@needs_flickr8k
def test_shipped_model_on_100_test_images(tmp_path):
    report = evaluate_model(None, str(FLICKR8K), split="test", beam_sizes=[3], output=str(tmp_path / "eval"), cache=str(tmp_path / "cache"), limit=100, progress=False)
    scores = report["results"]["beam 3"]
    assert report["images"] == 100
    assert scores["BLEU-4"] >= BLEU4_FLOOR, scores
    assert scores["CIDEr"] >= CIDER_FLOOR, scores
    captions = json.loads((tmp_path / "eval" / "captions.json").read_text())
    assert len(captions) == 100 and all(entry["beam 3"] for entry in captions.values())


def test_shipped_model_is_complete():
    folder = pretrained_path()
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert config["encoder"] == "efficientnet-lite2"
    assert metrics["split"] == "test" and metrics["images"] == 1000
    assert metrics["results"]["beam 3"]["BLEU-4"] >= 0.20 and metrics["results"]["beam 3"]["CIDEr"] >= 0.50


@needs_coco_mini_dev
def test_shipped_model_outside_flickr8k_does_not_get_worse(tmp_path):
    report = evaluate_model(None, str(COCO_MINI_DEV), beam_sizes=[3], output=str(tmp_path / "eval"), cache=str(tmp_path / "cache"), progress=False)
    scores = report["results"]["beam 3"]
    assert report["images"] == 80 and report["chair_ground_truth"] == "object labels + reference captions"
    assert scores["CIDEr"] >= COCO_CIDER_FLOOR, scores
    assert scores["CHAIR-s"] <= COCO_CHAIR_S_CEILING, scores
    assert 0 < report["tags"]["precision"] <= 1 and 0 < report["tags"]["recall"] <= 1
