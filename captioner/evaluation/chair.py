"""CHAIR: how often captions name COCO objects that are not in the photo.

After Rohrbach et al. 2018, "Object Hallucination in Image Captioning" (EMNLP). A caption's object
mentions are found by `lexicon` (COCO's 80 categories and their words and phrases). The objects
truly in a photo are its labelled objects plus every object its reference captions name. A
mentioned object outside that set is hallucinated, and

    CHAIR-i = hallucinated object mentions / object mentions        (over all captions)
    CHAIR-s = captions with at least one hallucinated object / captions

Like the authors' code, every mention counts towards CHAIR-i ("a man and a woman" is two mentions
of person).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data.lexicon import normalise_object, object_mentions

if TYPE_CHECKING:
    from ..data.datasets import ImageRecord


def ground_truth_objects(objects: Iterable[str], references: Iterable[str]) -> set[str]:
    """The objects truly in a photo: its labelled objects plus every object its reference captions name."""
    truth = {normalise_object(name) for name in objects}
    for reference in references:
        truth.update(object_mentions(reference))
    return truth


def ground_truth(records: Iterable["ImageRecord"]) -> dict[str, set[str]]:
    """`ground_truth_objects` of each dataset record, keyed by its image."""
    return {record.image: ground_truth_objects(record.objects, record.captions) for record in records}


@dataclass
class CaptionChair:
    """One generated caption: its object mentions (in order, repeats kept) and the hallucinated objects (sorted, once each)."""

    mentions: list[str]
    hallucinated: list[str]

    @property
    def hallucinated_mentions(self) -> int:
        return sum(category in self.hallucinated for category in self.mentions)


@dataclass
class ChairResult:
    """CHAIR-s (`sentence`) and CHAIR-i (`instance`) over a set of captions, the counts behind them and each caption's objects."""

    sentence: float
    instance: float
    per_image: dict[str, CaptionChair]
    captions: int
    hallucinated_captions: int
    mentions: int
    hallucinated_mentions: int


def chair(hypotheses: Mapping[str, str], truth: Mapping[str, Iterable[str]] | Iterable["ImageRecord"]) -> ChairResult:
    """CHAIR of one generated caption per image.

    `truth` is either each image's ground-truth objects (labels are normalised to COCO categories;
    add the reference captions' objects yourself, see `ground_truth_objects`) or the dataset's
    `ImageRecord`s, whose labelled objects and reference captions give it. Both figures are 0.0
    when there is nothing to count.
    """
    if isinstance(truth, Mapping):
        truth = {key: {normalise_object(name) for name in objects} for key, objects in truth.items()}
    else:
        truth = ground_truth(truth)
    missing = [key for key in hypotheses if key not in truth]
    if missing:
        raise ValueError(f"no ground-truth objects for {len(missing)} captioned image(s), e.g. {missing[0]!r}")
    per_image = {}
    for key, caption in hypotheses.items():
        mentions = object_mentions(caption)
        per_image[key] = CaptionChair(mentions, sorted(set(mentions) - truth[key]))
    mentions = sum(len(result.mentions) for result in per_image.values())
    hallucinated_mentions = sum(result.hallucinated_mentions for result in per_image.values())
    hallucinated_captions = sum(bool(result.hallucinated) for result in per_image.values())
    return ChairResult(
        sentence=hallucinated_captions / len(per_image) if per_image else 0.0,
        instance=hallucinated_mentions / mentions if mentions else 0.0,
        per_image=per_image, captions=len(per_image), hallucinated_captions=hallucinated_captions,
        mentions=mentions, hallucinated_mentions=hallucinated_mentions,
    )
