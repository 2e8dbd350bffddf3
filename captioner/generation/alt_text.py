"""Alt text from a photo's tags, the fallback where its caption is a guess: "Photo of a cup and coffee."

Only tags that are things (words of the ImageNet concept table or names of COCO objects) are used,
not the detectors' colours, verbs and scenes ("white", "standing"); each with its article, none
before a plural or a mass noun.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from ..data.lexicon import coco_categories
from ..model.concepts import Tag, singular
from .word_forms import indefinite_article

MOST_TAGS = 3
MASS_NOUNS = frozenset(
    "coffee tea espresso wine beer milk water food bread meat rice pasta soup ice snow sand grass hay wool broccoli "
    "cauliflower corn spinach lettuce cabbage chocolate ice cream candy furniture clothing equipment traffic".split()
)


@lru_cache(maxsize=1)
def _coco_names() -> frozenset[str]:
    return frozenset(name for names in coco_categories().values() for name in names)


def _with_article(word: str) -> str:
    if word in MASS_NOUNS or singular(word.split()[-1]) != word.split()[-1]:
        return word
    return f"{indefinite_article(word)} {word}"


def tags_alt_text(tags: Sequence[Tag], things: Iterable[str]) -> str | None:
    """"Photo of a cup and coffee." from the most probable tags that are things (`things`: the
    concept table's words; COCO's object names count too); None where no tag is one."""
    known = set(things) | _coco_names()
    words = [tag.word for tag in tags if tag.word in known][:MOST_TAGS]
    if not words:
        return None
    phrases = [_with_article(word) for word in words]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"Photo of {listed}."
