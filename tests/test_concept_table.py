"""The shipped ImageNet class -> caption words table (captioner/data/imagenet_concepts.json).

Made by scripts/build_concept_table.py; these tests read only the JSON, so they need no WordNet.
"""
import json
import re
from pathlib import Path

import pytest

import captioner

TABLE_PATH = Path(captioner.__file__).parent / "data" / "imagenet_concepts.json"
CAT_CLASSES = {281, 282, 283, 284, 285}  # as in test_encoder.py: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # as in test_encoder.py: espresso, cup
DOG_BREEDS = range(151, 269)  # Chihuahua (n02085620) ... Mexican hairless (n02113978)
PERSON_CLASSES = {"n09835506", "n10148035", "n10565667"}  # ballplayer, groom, scuba diver


@pytest.fixture(scope="module")
def table() -> dict:
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def words_of(table) -> dict[str, list[str]]:
    return {entry["wnid"]: entry["words"] for entry in table["classes"]}


def test_covers_the_1000_classes_in_classifier_order(table):
    assert table["format_version"] == 1 and table["source"]
    classes = table["classes"]
    assert [entry["index"] for entry in classes] == list(range(1000))
    wnids = [entry["wnid"] for entry in classes]
    assert len(set(wnids)) == 1000 and all(re.fullmatch(r"n\d{8}", wnid) for wnid in wnids)
    assert wnids == sorted(wnids)  # the standard ImageNet-1k order, which the classifier uses
    assert (classes[0]["wnid"], classes[281]["wnid"], classes[967]["wnid"]) == ("n01440764", "n02123045", "n07920052")


def test_every_class_has_one_to_three_lowercase_words(table):
    for entry in table["classes"]:
        words = entry["words"]
        assert 1 <= len(words) <= 3 and len(set(words)) == len(words), entry
        for word in words:
            assert re.fullmatch(r"[a-z]+( [a-z]+){0,2}", word), entry


@pytest.mark.parametrize("wnid, word", [
    ("n02123045", "cat"),  # tabby
    ("n02123159", "cat"),  # tiger cat
    ("n02123394", "cat"),  # Persian cat
    ("n02123597", "cat"),  # Siamese cat
    ("n02124075", "cat"),  # Egyptian cat
    ("n07742313", "apple"),  # Granny Smith
    ("n02279972", "butterfly"),  # monarch
    ("n02356798", "squirrel"),  # fox squirrel
    ("n02099601", "dog"),  # golden retriever
    ("n04487081", "bus"),  # trolleybus
    ("n03895866", "train"),  # passenger car
    ("n03272562", "train"),  # electric locomotive
    ("n04310018", "train"),  # steam locomotive
    ("n03792782", "bike"),  # mountain bike
    ("n02835271", "bike"),  # bicycle-built-for-two
    ("n03785016", "motorcycle"),  # moped
    ("n03642806", "laptop"),  # laptop
    ("n03832673", "laptop"),  # notebook
    ("n02992529", "phone"),  # cellular telephone
    ("n03201208", "table"),  # dining table
    ("n04344873", "couch"),  # studio couch
    ("n07697537", "hot dog"),  # hotdog
    ("n04399382", "teddy bear"),  # teddy
    ("n02486410", "baboon"),  # baboon
    ("n02403003", "cow"),  # ox
    ("n02389026", "horse"),  # sorrel
    ("n09428293", "beach"),  # seashore
    ("n09332890", "lake"),  # lakeside
    ("n09193705", "mountain"),  # alp
    ("n10565667", "diver"),  # scuba diver
    ("n10148035", "man"),  # groom
])
def test_everyday_main_word(words_of, wnid, word):
    assert words_of[wnid][0] == word


@pytest.mark.parametrize("wnid, word", [
    ("n07920052", "coffee"),  # espresso
    ("n04146614", "bus"),  # school bus
    ("n04285008", "car"),  # sports car
    ("n02930766", "car"),  # cab
    ("n03670208", "car"),  # limousine
    ("n03791053", "motorcycle"),  # motor scooter
    ("n04254680", "ball"),  # soccer ball
    ("n04254680", "soccer"),
    ("n04404412", "tv"),  # television
    ("n02486410", "monkey"),  # baboon
    ("n01531178", "bird"),  # goldfinch
])
def test_broader_or_other_words(words_of, wnid, word):
    assert word in words_of[wnid]


def test_every_dog_breed_is_a_dog(table):
    assert all(table["classes"][index]["words"] == ["dog"] for index in DOG_BREEDS)


def test_the_example_photos_classes_name_the_cat_and_the_coffee(table):
    """test_encoder.py finds the cat photo in CAT_CLASSES and the coffee photo in COFFEE_CLASSES."""
    assert all(table["classes"][index]["words"][0] == "cat" for index in CAT_CLASSES)
    assert all({"coffee", "cup"} & set(table["classes"][index]["words"]) for index in COFFEE_CLASSES)


def test_only_people_are_marked_as_people(table):
    assert {entry["wnid"] for entry in table["classes"] if entry.get("person")} == PERSON_CLASSES
    assert all(entry["person"] is True for entry in table["classes"] if "person" in entry)
