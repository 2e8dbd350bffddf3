"""The words that name COCO's 80 object categories, and the object mentions of a caption.

A caption mentions a category when it contains one of the category's words or phrases
(`data/coco_synonyms.json`, after the synonym list of Rohrbach et al. 2018: "men" and "skier" name
person, "puppies" dog, "hot dog" hot dog). Words are lowercase runs of letters; plurals are singular
through the synonym table, not a stemmer. Phrases are matched longest first, with the authors'
special cases:
- "baby" or "adult" before an animal word is that animal, not a person ("a baby elephant");
- "passenger" before a vehicle word is that vehicle ("a passenger jet" is an airplane);
- "hot dog" is not a dog, "teddy bear" not a bear, "bow tie" a tie, "toilet seat" a toilet (and
  in a caption naming a toilet, "seat" is its seat, not a chair);
- "train track" and "home plate" name no object (the track is not a train).
The decoding rules, the confidence and the tags read these lists; `chair` scores with them.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

SYNONYMS_FILE = Path(str(resources.files("captioner") / "data" / "coco_synonyms.json"))
# "baby"/"adult" + one of these categories' words is the animal ("baby elephant"), not a person.
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
# "passenger" + one of these categories' words is the vehicle ("passenger jet"), not a person.
PASSENGER_VEHICLES = ("airplane", "train", "bus", "boat")
# Phrases that contain an object word but name no COCO object.
NOT_OBJECTS = ("train track", "train tracks", "home plate", "home plates", "baby animal", "baby animals",
               "adult animal", "adult animals", "baby cub", "baby cubs")
SEATS = ("seat", "seats")


@lru_cache(maxsize=1)
def coco_categories() -> dict[str, list[str]]:
    """COCO's 80 category names, each with the words and phrases (singular and plural) naming it."""
    return json.loads(SYNONYMS_FILE.read_text(encoding="utf-8"))["categories"]


@lru_cache(maxsize=1)
def object_words() -> frozenset[str]:
    """The one-word names of COCO's categories other than person ("dog", "puppies", "sofa")."""
    return frozenset(name for category, names in coco_categories().items() if category != "person" for name in names if " " not in name)


@lru_cache(maxsize=1)
def _phrase_table() -> tuple[dict[tuple[str, ...], str | None], int]:
    """Word tuple -> category (None: a phrase naming no object), and the longest phrase's length."""
    categories = coco_categories()
    table: dict[tuple[str, ...], str | None] = {}
    for category, names in categories.items():
        for name in names:
            table[tuple(name.split())] = category
    for qualifier, kinds in (("baby", ANIMALS), ("adult", ANIMALS), ("passenger", PASSENGER_VEHICLES)):
        for category in kinds:
            for name in categories[category]:
                if " " not in name:
                    table[(qualifier, name)] = category
    for phrase in NOT_OBJECTS:
        table[tuple(phrase.split())] = None
    table[("toilet", "seat")] = table[("toilet", "seats")] = "toilet"
    return table, max(len(phrase) for phrase in table)


def words(caption: str) -> list[str]:
    """The caption's lowercase words (runs of letters; "T-shirt" is "t", "shirt")."""
    return re.findall(r"[a-z]+", caption.lower())


def _matches(caption: str) -> list[tuple[tuple[str, ...], str]]:
    """(phrase, category) for each object mention, left to right, longest phrase first."""
    table, longest = _phrase_table()
    tokens = words(caption)
    found: list[tuple[tuple[str, ...], str]] = []
    i = 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            phrase = tuple(tokens[i : i + n])
            if phrase in table:
                if table[phrase] is not None:
                    found.append((phrase, table[phrase]))
                i += n
                break
        else:
            i += 1
    if any(category == "toilet" for _, category in found):  # "the seat of the toilet" is no chair
        found = [(phrase, category) for phrase, category in found if phrase not in ((seat,) for seat in SEATS)]
    return found


def object_mentions(caption: str) -> list[str]:
    """The COCO category of every object mention in the caption, in order, repeats kept."""
    return [category for _, category in _matches(caption)]


def mentioned_objects(caption: str) -> list[str]:
    """The COCO categories the caption names, sorted, each once."""
    return sorted(set(object_mentions(caption)))


def normalise_object(name: str) -> str:
    """A label's COCO category ("Dining Table", "tables" -> "dining table"); unknown labels lowercased as they are."""
    name = " ".join(words(name)) or name.strip().lower()
    table, _ = _phrase_table()
    return table.get(tuple(name.split())) or name
