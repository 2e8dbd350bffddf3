"""CHAIR (object hallucination): the word matching, a hand-counted fixture, and `captioner evaluate` on COCO mini dev."""
import json
from fractions import Fraction

import pytest

from captioner.evaluation.chair import chair, ground_truth_objects
from captioner.data.lexicon import coco_categories, mentioned_objects, normalise_object, object_mentions
from captioner.data.datasets import ImageRecord
from conftest import COCO_MINI_DEV, needs_coco_mini_dev


def test_synonym_table_covers_cocos_80_categories_once_each():
    categories = coco_categories()
    assert len(categories) == 80 and {"person", "dining table", "hot dog", "teddy bear", "hair drier", "skis"} <= set(categories)
    names = [name for synonyms in categories.values() for name in synonyms]
    assert len(names) == len(set(names)), "a word may name only one category"
    assert all(category in synonyms for category, synonyms in categories.items())


@pytest.mark.parametrize("caption, objects", [
    ("a teddy bear on a bed", ["teddy bear", "bed"]),
    ("A hot dog with mustard.", ["hot dog"]),
    ("two hot dogs and a dog", ["hot dog", "dog"]),
    ("a baby elephant follows its mother", ["elephant", "person"]),
    ("adult giraffes and baby zebras", ["giraffe", "zebra"]),
    ("a woman holds a baby", ["person", "person"]),
    ("two men ride bikes", ["person", "bicycle"]),
    ("people, children and a skier", ["person", "person", "person"]),
    ("a surfer rides a wave", ["person"]),
    ("puppies and kittens", ["dog", "cat"]),
    ("a fire hydrant by a stop sign under a traffic light", ["fire hydrant", "stop sign", "traffic light"]),
    ("a cell phone, a tennis racket and a baseball glove", ["cell phone", "tennis racket", "baseball glove"]),
    ("wine glasses on the dining table", ["wine glass", "dining table"]),
    ("a potted plant and a sports ball beside a parking meter", ["potted plant", "sports ball", "parking meter"]),
    ("a man in a bow tie", ["person", "tie"]),
    ("a toilet seat", ["toilet"]),
    ("the seat of the toilet is up", ["toilet"]),
    ("a seat by the window", ["chair"]),
    ("a motor bike and a motorbike", ["motorcycle", "motorcycle"]),
    ("a passenger jet at the gate", ["airplane"]),
    ("a train on the train tracks", ["train"]),
    ("a batter at home plate", ["person"]),
    ("a man in a T-shirt and jeans", ["person"]),
    ("nothing here but sky", []),
])
def test_object_mentions(caption, objects):
    assert object_mentions(caption) == objects
    assert mentioned_objects(caption) == sorted(set(objects))


def test_normalise_object_maps_labels_and_synonyms_to_categories():
    assert normalise_object("Dining Table") == "dining table"
    assert normalise_object("tables") == "dining table"
    assert normalise_object("widget") == "widget"


def test_ground_truth_is_labels_plus_objects_the_references_name():
    assert ground_truth_objects(["cat"], ["A kitten beside a teddy bear.", "A cat and a toy."]) == {"cat", "teddy bear"}
    assert ground_truth_objects([], []) == set()


# Three captions, counted by hand:
#   a: "a man and a woman with a dog on a bench"  truth {person, dog, bench}
#      mentions person, person, dog, bench       -> 4 mentions, 0 hallucinated
#   b: "two cats on a couch next to a bear"      truth {cat, teddy bear} (label cat; "teddy bear" from the reference)
#      mentions cat, couch, bear                 -> 3 mentions, 2 hallucinated (couch, bear)
#   c: "a hot dog and a pizza on a table"        truth {hot dog, dining table}
#      mentions hot dog, pizza, dining table     -> 3 mentions, 1 hallucinated (pizza)
# CHAIR-i = (0 + 2 + 1) / (4 + 3 + 3) = 3/10; CHAIR-s = 2 of 3 captions hallucinate = 2/3.
HYPOTHESES = {
    "a.jpg": "a man and a woman with a dog on a bench",
    "b.jpg": "two cats on a couch next to a bear",
    "c.jpg": "a hot dog and a pizza on a table",
}
RECORDS = [
    ImageRecord("a.jpg", ["A couple walk their dog past a bench."], "dev", ["person", "dog", "bench"]),
    ImageRecord("b.jpg", ["A kitten beside a teddy bear."], "dev", ["cat"]),
    ImageRecord("c.jpg", [], "dev", ["dining table", "hot dog"]),
]


def test_chair_on_a_hand_counted_fixture():
    result = chair(HYPOTHESES, RECORDS)
    assert (result.captions, result.hallucinated_captions, result.mentions, result.hallucinated_mentions) == (3, 2, 10, 3)
    assert Fraction(result.sentence).limit_denominator(100) == Fraction(2, 3)
    assert Fraction(result.instance).limit_denominator(100) == Fraction(3, 10)
    assert {key: r.hallucinated for key, r in result.per_image.items()} == {"a.jpg": [], "b.jpg": ["bear", "couch"], "c.jpg": ["pizza"]}
    assert result.per_image["a.jpg"].mentions == ["person", "person", "dog", "bench"]


def test_chair_with_ground_truth_sets_and_edge_cases():
    truth = {"a.jpg": {"person", "dog", "bench"}, "b.jpg": {"cat", "teddy bear"}, "c.jpg": {"hot dog", "Dining Table"}}
    result = chair(HYPOTHESES, truth)
    assert (result.hallucinated_captions, result.hallucinated_mentions) == (2, 3)
    empty = chair({}, {})
    assert (empty.sentence, empty.instance) == (0.0, 0.0)
    assert chair({"x": "blue sky"}, {"x": set()}).instance == 0.0
    with pytest.raises(ValueError, match="no ground-truth objects"):
        chair({"z.jpg": "a dog"}, truth)


@needs_coco_mini_dev
def test_evaluate_on_coco_mini_dev_reports_chair(tmp_path):
    from captioner.evaluation.scoring import evaluate_model

    report = evaluate_model(None, str(COCO_MINI_DEV), beam_sizes=[1], limit=10, output=str(tmp_path / "eval"),
                            cache=str(tmp_path / "cache"), progress=False)
    assert report["split"] == "dev" and report["images"] == 10  # no test images there, so dev by default
    assert report["chair_ground_truth"] == "object labels + reference captions"
    scores = report["results"]["greedy"]
    assert 0.0 <= scores["CHAIR-s"] <= 1.0 and 0.0 <= scores["CHAIR-i"] <= 1.0
    captions = json.loads((tmp_path / "eval" / "captions.json").read_text())
    assert len(captions) == 10
    for entry in captions.values():
        assert set(entry["hallucinated"]["greedy"]) <= set(mentioned_objects(entry["greedy"]))
    hallucinating = sum(bool(entry["hallucinated"]["greedy"]) for entry in captions.values())
    assert scores["CHAIR-s"] == round(hallucinating / 10, 4)
