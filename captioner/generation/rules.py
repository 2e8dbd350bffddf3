"""The decoding rules: small processors that turn a batch's visual evidence into what the searches
apply to the next-word log-probabilities (`decoding._mask_logits`, the one place that does).

Each rule is built once per model (from its vocabulary, concept detector and settings) and called
per batch with the `Evidence`; it adds to the `Decisions`: words a caption must not use, a
log-probability bias, word sequences never to complete, the subject it must name. `DecodingRules`
runs them in order (the subject rule last: it never requires a banned word), in the spirit of
Hugging Face's `LogitsProcessor` list.

- `PersonRule`: person words, and clothes, only where a person is likely.
- `GuardRule`: words ImageNet reliably sees (dog, canoe, ...) only where it sees them.
- `AnimalRule`: animal words only where ImageNet sees an animal; on an animal photo, only the
  animals it sees a trace of.
- `ObjectPenalty`: COCO object words ImageNet sees no trace of lose log-probability.
- `ColourRule`: a colour photo is no "black and white photo"; a thing in it is black and white only
  where the word detectors see both colours.
- `SubjectConstraint`: the photo's confident concept as a constraint (`subject.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..data.colour import COLOUR_SATURATION
from ..data.lexicon import coco_categories, object_words
from ..model.concepts import PERSON_WORDS, SOURCE_IMAGENET, WORN_WORDS, ConceptDetector, animal_words, singular
from ..model.config import ConceptSettings, SubjectSettings
from ..model.decoders import Features
from ..model.vocabulary import Vocabulary
from .subject import Subject, SubjectRule

ANIMAL_PHOTO = 0.5  # ImageNet's animal probability above which a photo is of an animal
BLACK_AND_WHITE = (("black", "and", "white"), ("white", "and", "black"))
BLACK_AND_WHITE_FLOOR = 0.5  # detector probability of "black" and of "white" that lets a colour photo show a black and white thing
A_BLACK_AND_WHITE_PHOTO = tuple((*phrase, noun) for phrase in BLACK_AND_WHITE for noun in ("photo", "picture", "image", "photograph"))


@dataclass
class Evidence:
    """What a batch of photos shows, as the rules read it."""

    features: Features
    probabilities: torch.Tensor  # (B, W) over the concept detector's words
    allowed: torch.Tensor  # (B, W) bool: person words only where a person is likely
    animal: torch.Tensor  # (B,) ImageNet's probability that the photo shows an animal

    @property
    def person_likely(self) -> torch.Tensor:
        return self.allowed.all(dim=1)  # (B,) only person words are ever disallowed

    @property
    def colourful(self) -> torch.Tensor:
        saturation = self.features.saturation
        return saturation > COLOUR_SATURATION if saturation is not None else torch.zeros(len(self.animal), dtype=torch.bool)  # (B,)


@dataclass
class Decisions:
    """What the rules decided for a batch; the searches apply it."""

    banned: torch.Tensor  # (B, V) bool
    bias: torch.Tensor | None = None  # (B, V) added to the log-probabilities
    banned_phrases: list[list[tuple[int, ...]]] = field(default_factory=list)  # per image
    subjects: list[Subject | None] = field(default_factory=list)  # per image

    def add_bias(self, tokens: torch.Tensor, values: torch.Tensor) -> None:
        if self.bias is None:
            self.bias = torch.zeros(self.banned.shape, device=self.banned.device)
        self.bias[:, tokens] += values


class Rule(Protocol):
    def __call__(self, evidence: Evidence, decisions: Decisions) -> None: ...


def _token_mask(vocabulary: Vocabulary, words, device) -> torch.Tensor:
    mask = torch.zeros(len(vocabulary), dtype=torch.bool, device=device)
    mask[[index for word, index in vocabulary.stoi.items() if word in words]] = True
    return mask  # (V,)


class PersonRule:
    """Person words and clothes ("in a blue shirt", "wearing") only where a person is likely."""

    def __init__(self, vocabulary: Vocabulary, device):
        self.tokens = _token_mask(vocabulary, PERSON_WORDS | WORN_WORDS, device)  # (V,)

    def __call__(self, evidence: Evidence, decisions: Decisions) -> None:
        decisions.banned |= self.tokens[None, :] & ~evidence.person_likely[:, None]


class GuardRule:
    """Guarded words, in every vocabulary form ("dog", "dogs") and with the names of their COCO
    category that have no evidence of their own ("puppy"), only where ImageNet gives them `floor`."""

    def __init__(self, vocabulary: Vocabulary, detector: ConceptDetector, guarded: list[str], floor: float, device):
        self.floor = floor
        column = {word: index for index, word in enumerate(detector.words)}
        evidence_of = {word: column[word] for word in set(guarded) & set(column)}
        for word in list(evidence_of):
            for names in coco_categories().values():
                if word in names:
                    evidence_of.update({name: column[word] for name in names if " " not in name and name not in column})
        pairs = [(evidence_of[token], index) for token, index in vocabulary.stoi.items() if token in evidence_of]
        pairs += [(evidence_of[singular(token)], index) for token, index in vocabulary.stoi.items() if token not in evidence_of and singular(token) in evidence_of]
        self.columns = torch.tensor([c for c, _ in pairs], dtype=torch.long, device=device)  # (P,)
        self.tokens = torch.tensor([t for _, t in pairs], dtype=torch.long, device=device)  # (P,)

    def __call__(self, evidence: Evidence, decisions: Decisions) -> None:
        if len(self.tokens):
            decisions.banned[:, self.tokens] |= evidence.probabilities[:, self.columns] < self.floor  # (B, P)


class AnimalRule:
    """Animal words only where ImageNet's animal classes reach `floor`; on an animal photo, an
    animal word ImageNet sees no trace of (under `trace`) is another animal: a squirrel is no cat."""

    def __init__(self, vocabulary: Vocabulary, detector: ConceptDetector, floor: float, trace: float, device):
        self.floor, self.trace = floor, trace
        animals = animal_words(detector.table)
        column = {word: index for index, word in enumerate(detector.words)}
        self.tokens = torch.tensor([index for token, index in vocabulary.stoi.items() if singular(token) in animals], dtype=torch.long, device=device)  # (A,)
        self.columns = torch.tensor([column.get(singular(vocabulary.itos[t]), -1) for t in self.tokens.tolist()], dtype=torch.long, device=device)  # (A,) -1: no column

    def __call__(self, evidence: Evidence, decisions: Decisions) -> None:
        if self.floor <= 0 or not len(self.tokens):  # models trained without a floor: never banned
            return
        decisions.banned[:, self.tokens] |= (evidence.animal < self.floor)[:, None]
        support = torch.where(self.columns >= 0, evidence.probabilities[:, self.columns.clamp(min=0)], torch.zeros_like(evidence.probabilities[:, :1]))  # (B, A)
        decisions.banned[:, self.tokens] |= (evidence.animal >= ANIMAL_PHOTO)[:, None] & (support < self.trace)


class ObjectPenalty:
    """COCO object words (people aside) ImageNet sees no trace of (under `trace`) lose `penalty`
    log-probability: a soft push, since ImageNet misses many real ones."""

    def __init__(self, vocabulary: Vocabulary, detector: ConceptDetector, penalty: float, trace: float, device):
        self.penalty, self.trace = penalty, trace
        imagenet_words = {word: index for index, (word, source) in enumerate(zip(detector.words, detector.sources)) if source == SOURCE_IMAGENET}
        objects = {singular(name) for name in object_words()}
        pairs = [(imagenet_words[singular(token)], index) for token, index in vocabulary.stoi.items() if singular(token) in objects and singular(token) in imagenet_words]
        self.columns = torch.tensor([c for c, _ in pairs], dtype=torch.long, device=device)  # (R,)
        self.tokens = torch.tensor([t for _, t in pairs], dtype=torch.long, device=device)  # (R,)

    def __call__(self, evidence: Evidence, decisions: Decisions) -> None:
        if self.penalty > 0 and len(self.tokens):
            unsupported = evidence.probabilities[:, self.columns] < self.trace  # (B, R)
            decisions.add_bias(self.tokens, -self.penalty * unsupported.float())


class ColourRule:
    """A colour photo is no "black and white photo", and a thing in it is "black and white" only
    where the word detectors see black and white (each at least `floor`)."""

    def __init__(self, vocabulary: Vocabulary, detector: ConceptDetector, floor: float = BLACK_AND_WHITE_FLOOR):
        def known(phrases):
            return [tuple(vocabulary.stoi[word] for word in phrase) for phrase in phrases if all(word in vocabulary.stoi for word in phrase)]

        self.anything, self.photo = known(BLACK_AND_WHITE), known(A_BLACK_AND_WHITE_PHOTO)
        self.columns = [detector.words.index(word) for word in ("black", "white") if word in detector.words]
        self.floor = floor

    def __call__(self, evidence: Evidence, decisions: Decisions) -> None:
        colourful = evidence.colourful
        if len(self.columns) == 2:
            both = evidence.probabilities[:, self.columns].min(dim=1).values >= self.floor  # (B,)
        else:
            both = torch.zeros_like(colourful)
        decisions.banned_phrases = [
            phrases + ((list(self.photo) if seen else list(self.anything)) if colour else [])
            for phrases, colour, seen in zip(decisions.banned_phrases, colourful.tolist(), both.tolist())
        ]


class SubjectConstraint:
    """The subject each caption must name, among the words no other rule bans (`subject.py`)."""

    def __init__(self, rule: SubjectRule, person_rule: bool):
        self.rule, self.person_rule = rule, person_rule

    def __call__(self, evidence: Evidence, decisions: Decisions) -> None:
        if self.rule.settings.enabled:
            people = evidence.person_likely if self.person_rule else None  # models without a person rule: unknown
            decisions.subjects = self.rule(evidence.probabilities, evidence.allowed, decisions.banned, people)


class DecodingRules:
    """A model's rules, run in order on a batch's evidence."""

    def __init__(self, vocabulary: Vocabulary, detector: ConceptDetector, concepts: ConceptSettings, subject: SubjectSettings, person_threshold: float, device):
        trace = concepts.guard_floor
        self.guard = GuardRule(vocabulary, detector, list(concepts.guarded_words), trace, device)
        self.subject = SubjectConstraint(SubjectRule(detector.table, vocabulary, subject), person_threshold > 0)
        self.rules: list[Rule] = [
            PersonRule(vocabulary, device),
            self.guard,
            AnimalRule(vocabulary, detector, concepts.animal_floor, trace, device),
            ObjectPenalty(vocabulary, detector, concepts.object_penalty, trace, device),
            ColourRule(vocabulary, detector),
            self.subject,  # last: it never requires a word another rule bans
        ]
        self.vocab_size, self.device = len(vocabulary), device

    def __call__(self, evidence: Evidence) -> Decisions:
        batch = len(evidence.animal)
        decisions = Decisions(torch.zeros(batch, self.vocab_size, dtype=torch.bool, device=self.device),
                              banned_phrases=[[] for _ in range(batch)], subjects=[None] * batch)
        for rule in self.rules:
            rule(evidence, decisions)
        return decisions
