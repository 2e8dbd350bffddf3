"""Which words a caption may say again: only function words. A short caption that names a thing
twice ("a plate of food on a plate with food", "a living room with a chair and chairs", "a man in a
black jacket and black jacket") reads as broken alt text. The searches use `once_groups` to ban a
word, in every form, once it is said. Chosen on Flickr8k dev and coco-mini-dev against banning
only COCO object names again, and against letting colours repeat (README, "Outside Flickr8k")."""
from __future__ import annotations

from ..model.concepts import singular
from ..model.vocabulary import Vocabulary

FUNCTION_WORDS = frozenset(
    """a an the and or but of in on at by for from with without to into onto over under above below
    through across along around behind beside besides between near next front side top bottom back
    down up out off away toward towards past after before during against inside outside while as
    than then there here where when who which what that this these those it its his her their him
    them they he she one two three four five six seven eight nine ten several many few some each
    both other another all any every no not is are be being been has have had does do very just
    only also too""".split()
)


def repeatable(word: str) -> bool:
    return word in FUNCTION_WORDS or not word.isalpha()


def once_groups(vocabulary: Vocabulary) -> dict[int, tuple[int, ...]]:
    """Token id -> the ids of every form of its word ("chair" -> chair, chairs) for the words a
    caption says at most once: all but function words and numbers."""
    forms: dict[str, list[int]] = {}
    for word, index in vocabulary.stoi.items():
        if not repeatable(word):  # the specials (<pad>, ...) are not words either
            forms.setdefault(singular(word), []).append(index)
    return {index: tuple(group) for group in forms.values() for index in group}
