"""English word forms the captions need: plurals, indefinite articles, phrase matching.

Used where a caption names a concept the training captions rarely saw ("an axolotl", "two
cargo ships"), and where captions are checked against the words that name a photo.
"""
from __future__ import annotations

from ..model.concepts import singular

_IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice", "goose": "geese",
    "tooth": "teeth", "foot": "feet", "knife": "knives", "leaf": "leaves", "shelf": "shelves", "wolf": "wolves",
    "louse": "lice", "ox": "oxen", "calf": "calves", "half": "halves", "loaf": "loaves", "thief": "thieves",
    "wife": "wives", "life": "lives", "cactus": "cacti", "fungus": "fungi", "octopus": "octopuses",
}
_SAME_PLURAL = frozenset("sheep fish deer moose bison shrimp salmon trout species series aircraft swine cattle".split())
# Words spelled with a vowel that start with a consonant sound, and the reverse
_CONSONANT_SOUND = ("uni", "use", "usu", "uti", "eu", "one", "once", "ewe", "ubi", "uro", "ura")
_VOWEL_SOUND = ("hour", "honest", "honor", "honour", "heir")


def plural(phrase: str) -> str:
    """'squirrel' -> 'squirrels', 'cargo ship' -> 'cargo ships', 'butterfly' -> 'butterflies'."""
    *head, word = phrase.split(" ")
    if word in _SAME_PLURAL or word.endswith("fish"):
        form = word
    elif word in _IRREGULAR_PLURALS:
        form = _IRREGULAR_PLURALS[word]
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        form = word + "es"
    elif word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        form = word[:-1] + "ies"
    else:
        form = word + "s"
    return " ".join([*head, form])


def indefinite_article(word: str) -> str:
    """'a' or 'an' for the word that follows: 'an axolotl', 'an espresso', 'a unicorn', 'an hour'."""
    word = word.lower()
    if word.startswith(_VOWEL_SOUND):
        return "an"
    if word.startswith(_CONSONANT_SOUND):
        return "a"
    return "an" if word[:1] in set("aeiou") else "a"


def fix_articles(words: list[str]) -> list[str]:
    """'a' / 'an' made to agree with the word after it."""
    return [indefinite_article(words[i + 1]) if word in ("a", "an") and i + 1 < len(words) else word for i, word in enumerate(words)]


def forms(phrase: str) -> tuple[str, ...]:
    """A word or phrase and its plural (and its singular, where it was given as a plural)."""
    return tuple(dict.fromkeys([phrase, plural(phrase), " ".join([*phrase.split(" ")[:-1], singular(phrase.split(" ")[-1])])]))


def contains_phrase(tokens: list[str], phrase: str) -> bool:
    """Whether the phrase's words occur together, in order, in `tokens`."""
    words = phrase.split()
    n = len(words)
    return any(tokens[i : i + n] == words for i in range(len(tokens) - n + 1)) if n else False


def names_any(tokens: list[str], phrases) -> bool:
    """Whether `tokens` name any of the phrases, in the singular or the plural."""
    return any(contains_phrase(tokens, form) for phrase in phrases for form in forms(phrase))
