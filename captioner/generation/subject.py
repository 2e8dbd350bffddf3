"""What a caption must say: the photo's confident ImageNet concept, as a constraint on beam search.

`SubjectRule` picks, per image, the most specific everyday word of the concept table that ImageNet
is confident of ("squirrel" 0.95 over "animal"; "butterfly" over "insect"), and says how the
decoder writes it:

- a word the decoder knows well (in its vocabulary, among its `max_rank` most frequent words) is
  written as itself, singular or plural;
- any other word (absent from the vocabulary, rare in its training captions, or a phrase such as
  "cargo ship") is written through its nearest well-known relative, from the class's own words
  and then its WordNet hypernyms (`data/imagenet_relatives.json`, made by
  `scripts/build_concept_relatives.py`): the decoder says "salamander"'s relative "animal" where it
  fits in the sentence, and the caption prints "axolotl" there, with its article made to agree
  (Hendricks et al. 2016, "Deep Compositional Captioning": a novel word borrows a frequent
  relative's place in the language model).

The constraint is disjunctive (the word or its plural) and `beam_search` drops it where no caption
within its margin meets it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..data.lexicon import coco_categories
from ..errors import CheckpointError
from ..model.concepts import ConceptTable
from ..model.config import SubjectSettings
from ..model.vocabulary import Vocabulary
from .word_forms import fix_articles, plural

RELATIVES_FORMAT_VERSION = 1
MAX_RELATIVES = 3  # ways to write a word through relatives, tried in turn where a rule bans one


def default_relatives_path() -> Path:
    return Path(str(resources.files("captioner") / "data" / "imagenet_relatives.json"))


def load_relatives(path: str | Path | None = None) -> list[list[str]]:
    """Per ImageNet class, its WordNet relatives nearest first."""
    path = Path(path) if path else default_relatives_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read the concept relatives ({error}); reinstall the package") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if data.get("format_version") != RELATIVES_FORMAT_VERSION or not isinstance(classes, list) or len(classes) != 1000:
        raise CheckpointError(f"{path}: not a relatives file of format {RELATIVES_FORMAT_VERSION} with 1,000 classes; rebuild it with scripts/build_concept_relatives.py or reinstall the package")
    return [list(entry.get("relatives", [])) for entry in classes]


@dataclass
class Writing:
    """How the decoder writes one concept word."""

    tokens: tuple[int, ...]  # word ids any one of which says it (the word and its plural, or its relative's)
    renames: dict[int, str] = field(default_factory=dict)  # word id -> what the caption prints instead


@dataclass
class Subject:
    """One image's constraint: the concept word, its probability and how it is written."""

    word: str
    score: float
    writing: Writing


class SubjectRule:
    """Concept probabilities -> per image, the subject the caption must name (or None)."""

    def __init__(self, table: ConceptTable, vocabulary: Vocabulary, settings: SubjectSettings, relatives: list[list[str]] | None = None):
        self.settings = settings
        self.vocabulary = vocabulary
        relatives = relatives if relatives is not None else load_relatives()
        self.words = table.words  # the first len(table.words) columns of the concept probabilities
        self.classes_saying = table.membership.sum(dim=0)  # (W_table,) fewer = more specific
        self.other_classes = (table.membership.T @ table.membership) == 0  # (W_table, W_table) words no class says both of
        self.writings: dict[str, list[Writing]] = {}
        for index, entry in enumerate(table.classes):
            for position, word in enumerate(entry["words"]):
                if not self.writings.get(word):
                    self.writings[word] = self._writings(word, entry["words"][position + 1 :] + relatives[index])
        self.writable = torch.tensor([bool(self.writings.get(word)) for word in self.words])  # (W_table,)
        self.compounds = frozenset(word for word in self.words if " " in word)
        objects = {name for names in coco_categories().values() for name in names} - {"person"}
        self.thresholds = torch.tensor([settings.object_threshold if word in objects else settings.threshold for word in self.words])  # (W_table,)

    def _known(self, word: str) -> int | None:
        index = self.vocabulary.stoi.get(word)
        return index if index is not None and index - 4 < self.settings.max_rank else None

    def _forms(self, word: str) -> tuple[int, ...]:
        return tuple(index for index in (self._known(word), self.vocabulary.stoi.get(plural(word))) if index is not None)

    def _writings(self, word: str, relatives: list[str]) -> list[Writing]:
        """How the decoder can write the word, best first: itself, else through each well-known relative, nearest first."""
        if " " not in word and self._known(word) is not None:
            return [Writing(self._forms(word))]
        writings = []
        for relative in relatives:
            if " " not in relative and self._known(relative) is not None:
                singular_id, plural_id = self._known(relative), self.vocabulary.stoi.get(plural(relative))
                renames = ({plural_id: plural(word)} if plural_id is not None else {}) | {singular_id: word}  # "cattle" is both: singular
                writings.append(Writing(tuple(renames), renames))
        return writings[:MAX_RELATIVES]

    def __call__(self, probabilities: torch.Tensor, allowed: torch.Tensor, banned: torch.Tensor, people: torch.Tensor | None = None) -> list[Subject | None]:
        """probabilities (B, W) and allowed (B, W) over the concept words, banned (B, V) word ids,
        people (B,) bool where a person is likely -> per image the most specific confident concept
        that the decoder may write."""
        width = len(self.words)
        thresholds = self.thresholds[None, :].to(probabilities.device)  # (1, W_table)
        if people is not None:
            thresholds = torch.where(people[:, None], thresholds.clamp(min=self.settings.with_people_threshold), thresholds)  # (B, W_table)
        confident = (probabilities[:, :width] >= thresholds) & allowed[:, :width] & self.writable[None, :].to(probabilities.device)  # (B, W_table)
        subjects: list[Subject | None] = []
        table_probabilities = probabilities[:, :width].cpu()  # (B, W_table)
        for row, columns in enumerate(confident.cpu()):
            candidates = sorted(columns.nonzero().flatten().tolist(), key=lambda c: (self.classes_saying[c].item(), -table_probabilities[row, c].item()))
            best = max((table_probabilities[row, c].item() for c in candidates), default=0.0)
            subject = None
            for c in candidates:
                score = table_probabilities[row, c].item()
                rival = table_probabilities[row][self.other_classes[c]].max().item()
                if score < self.settings.share * best or score < self.settings.lead * rival:
                    continue
                for writing in self.writings[self.words[c]]:  # the first way to write it that no rule bans
                    tokens = tuple(t for t in writing.tokens if not banned[row, t])
                    if tokens:
                        subject = Subject(self.words[c], round(score, 4), Writing(tokens, {t: writing.renames[t] for t in tokens if t in writing.renames}))
                        break
                if subject is not None:
                    break
            subjects.append(subject)
        return subjects


COUNTING = frozenset("two three four five six seven eight nine ten several many some few".split())


def render(vocabulary: Vocabulary, tokens: list[int], renames: dict[int, str] | None = None, compounds: frozenset[str] = frozenset()) -> str:
    """Caption ids -> text, printing renamed words (a relative -> the concept's own word), with
    every 'a' / 'an' made to agree with the word after it ("a eagle" -> "an eagle").
    Tokens are a hypothesis' words (no <bos> or <eos>)."""
    renames = renames or {}
    words: list[str] = []  # `compounds`: the concept table's phrases ("teddy bear")
    for token in tokens:
        if token == vocabulary.eos_id:
            break
        if token < 4:  # the other special tokens are not words
            continue
        word = vocabulary.itos[token]
        if token not in renames:
            words.append(word)
            continue
        phrase = renames[token]
        if words and f"{words[-1]} {word}" in compounds:
            words.pop()  # the decoder's own compound is another thing ("teddy" + "bear"): the concept replaces it whole
        elif words and (words[-1] in COUNTING or words[-2:-1] in (["group"], ["couple"], ["herd"], ["flock"], ["pair"], ["bunch"], ["lot"]) and words[-1] == "of") and plural(phrase) != phrase and (plural(phrase) in renames.values() or len(renames) == 1):
            phrase = plural(phrase)  # the decoder's singular where a plural belongs: "a group of cd players", "two axolotls"
        split = phrase.split()
        if len(split) > 1 and words[len(words) - len(split) + 1 :] == split[:-1]:
            split = split[-1:]  # the caption already says the phrase's first words ("baseball" + "player")
        words.extend(split)
    return " ".join(fix_articles(words))
