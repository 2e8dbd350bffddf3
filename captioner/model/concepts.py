"""Visual concepts: per image, everyday words with probabilities, from two sources.

- The encoder's own ImageNet head (one linear layer on the pooled features) and a table mapping
  each of the 1,000 classes to caption words (`data/imagenet_concepts.json`, made by
  `scripts/build_concept_table.py`): p(word) = the summed probability of the classes that say it.
  ImageNet has seen a million photos with and without each object, so its words are trusted
  outside Flickr8k.
- Word detectors learned from captions (Fang et al. 2015): per word, a score for every cell of
  the feature grid, combined by a noisy-OR (the word is in the photo if it is in any cell), trained
  on "does any reference caption use this word". They cover what ImageNet has no class for:
  people, scenes, actions, colours. Words the ImageNet table covers are left to ImageNet, since the
  detectors only ever saw Flickr8k's people and dogs.

`ConceptDetector` turns encoder `Features` into probabilities over its word list; `tags` ranks
them for people, `concept_inputs` packs them as tokens for the decoder.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

TABLE_FORMAT_VERSION = 1
MAX_CONCEPT_WORDS = 3  # words per concept ("teddy bear", "hot dog")
SOURCE_PAD, SOURCE_IMAGENET, SOURCE_DETECTOR = 0, 1, 2
PERSON_OUTPUT = "<person>"  # the detectors' extra output: does any caption name a person

PERSON_WORDS = frozenset(
    "man men woman women person people boy boys girl girls child children kid kids baby babies toddler toddlers "
    "guy guys lady ladies gentleman player players skier skiers surfer surfers snowboarder snowboarders skateboarder "
    "skateboarders biker bikers cyclist cyclists rider riders swimmer swimmers climber climbers crowd "
    "someone he she his her him they them their teenager teenagers teen teens adult adults worker workers "
    "athlete athletes runner runners dancer dancers soldier soldiers policeman officer officers chef student students "
    "men's women's boy's girl's man's woman's cowboy diver bride groom hiker hikers tourists tourist".split()
)

# Words that put a person in the photo without naming one: "a cobra in a blue shirt and black pants"
WORN_WORDS = frozenset(
    "shirt shirts jacket jackets pants jeans shorts dress dresses coat coats sweater sweaters sweatshirt uniform uniforms "
    "jersey jerseys costume costumes suit suits skirt skirts vest vests outfit outfits swimsuit bikini hoodie wearing dressed "
    "wears wear".split()
)

# ImageNet-1k's standard class order lists its 398 animal synsets first (tench ... puffer).
ANIMAL_CLASSES = slice(0, 398)
# Words that only animal classes say but that captions also use for other things: food, verbs, sports.
NOT_ONLY_ANIMALS = frozenset("fly flies flying cricket ray rays shell seal turkey chicken salmon lobster crab fish bug".split())

_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "mice": "mouse", "geese": "goose",
              "teeth": "tooth", "feet": "foot", "knives": "knife", "leaves": "leaf", "shelves": "shelf", "wolves": "wolf",
              "sheep": "sheep", "fish": "fish", "glasses": "glasses", "skis": "ski", "buses": "bus", "dresses": "dress",
              "benches": "bench", "boxes": "box", "sandwiches": "sandwich", "couches": "couch", "dishes": "dish",
              "glasses'": "glasses", "series": "series", "species": "species", "grass": "grass", "bus": "bus", "gas": "gas"}
_KEEP_S = ("ss", "us", "is", "ous")
_PLURAL_ONLY = frozenset("jeans sunglasses glasses goggles pajamas binoculars trunks pants shorts scissors clothes bars tongs".split())


def singular(word: str) -> str:
    """A plain singular for matching caption words to concepts: 'dogs' -> 'dog', 'men' -> 'man'."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _PLURAL_ONLY or word.endswith(tuple(_PLURAL_ONLY)):
        return word
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(_KEEP_S):
        return word[:-1]
    return word


@dataclass
class Tag:
    """One visual concept of a photo: an everyday word and its probability."""

    word: str
    score: float


class Concepts(NamedTuple):
    """Concept tokens for the decoder: up to K concepts per image, padded.

    ids (B, K, L) caption-vocabulary ids of each concept's words (0 = padding), scores (B, K) in
    [0, 1], sources (B, K) SOURCE_IMAGENET / SOURCE_DETECTOR, SOURCE_PAD for empty slots.
    """

    ids: torch.Tensor
    scores: torch.Tensor
    sources: torch.Tensor

    def index_select(self, indices: torch.Tensor) -> "Concepts":
        return Concepts(self.ids.index_select(0, indices), self.scores.index_select(0, indices), self.sources.index_select(0, indices))

    def to(self, device) -> "Concepts":
        return Concepts(self.ids.to(device), self.scores.to(device), self.sources.to(device))


def default_table_path() -> Path:
    return Path(str(resources.files("captioner") / "data" / "imagenet_concepts.json"))


class ConceptTable:
    """ImageNet class index -> caption words, read from the JSON the build script writes."""

    def __init__(self, classes: list[dict], digest: str):
        self.classes = classes
        self.digest = digest
        self.words: list[str] = sorted({word for entry in classes for word in entry["words"]})
        column = {word: index for index, word in enumerate(self.words)}
        self.membership = torch.zeros(len(classes), len(self.words))  # (1000, W) 1 where a class says a word
        for row, entry in enumerate(classes):
            for word in entry["words"]:
                self.membership[row, column[word]] = 1.0
        self.person_classes = [row for row, entry in enumerate(classes) if entry.get("person")]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ConceptTable":
        path = Path(path) if path else default_table_path()
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: cannot read the concept table ({error}); reinstall the package") from None
        if not isinstance(data, dict) or data.get("format_version") != TABLE_FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: concept table format {data.get('format_version') if isinstance(data, dict) else '?'} is not {TABLE_FORMAT_VERSION}; "
                "rebuild it with scripts/build_concept_table.py or reinstall the package"
            )
        classes = data.get("classes")
        if not isinstance(classes, list) or len(classes) != 1000 or not all(isinstance(c, dict) and c.get("words") for c in classes):
            raise CheckpointError(f"{path}: a concept table needs 1,000 classes, each with words; rebuild it with scripts/build_concept_table.py")
        return cls(classes, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])


class WordDetector(nn.Module):
    """Multiple-instance word detectors over the feature grid (Fang et al. 2015, noisy-OR)."""

    def __init__(self, num_words: int, feature_dim: int, hidden_dim: int = 512, dropout: float = 0.2):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.hidden = nn.Linear(feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.cells = nn.Linear(hidden_dim, num_words)
        # A noisy-OR over ~49 cells saturates unless each cell starts out very unlikely (p ~ 0.0025).
        nn.init.constant_(self.cells.bias, -6.0)

    def log_absent(self, grid: torch.Tensor) -> torch.Tensor:
        """log P(word in no cell), (B, W): the sum over cells of log(1 - p_cell)."""
        cell_logits = self.cells(self.dropout(F.gelu(self.hidden(self.norm(grid)))))  # (B, G, W)
        return -F.softplus(cell_logits).sum(dim=1)  # log(1 - sigmoid(x)) = -softplus(x)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(self.log_absent(grid))  # (B, W) P(word in some cell)

    def loss(self, grid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the noisy-OR, computed in log space for stability."""
        log_absent = self.log_absent(grid).clamp(max=-1e-6)  # (B, W)
        log_present = torch.log(-torch.expm1(log_absent))
        return -(labels * log_present + (1 - labels) * log_absent).mean()


class ConceptDetector(nn.Module):
    """Both concept sources over one word list: `forward(features) -> (probabilities (B, W), person (B,))`.

    `words` = the ImageNet table's words, then the detector words the table does not cover.
    """

    def __init__(self, table: ConceptTable, imagenet_head: nn.Linear, detector_words: list[str], feature_dim: int, hidden_dim: int = 512):
        super().__init__()
        self.table = table
        self.imagenet_head = imagenet_head
        self.imagenet_head.requires_grad_(False)
        self.register_buffer("membership", table.membership.clone(), persistent=False)
        self.detector_words = list(detector_words)
        self.detector = WordDetector(len(self.detector_words), feature_dim, hidden_dim) if self.detector_words else None
        covered = set(table.words)
        self.extra = [index for index, word in enumerate(self.detector_words) if word not in covered and word != PERSON_OUTPUT]
        self.words: list[str] = table.words + [self.detector_words[i] for i in self.extra]
        self.sources = [SOURCE_IMAGENET] * len(table.words) + [SOURCE_DETECTOR] * len(self.extra)
        self.person_index = self.detector_words.index(PERSON_OUTPUT) if PERSON_OUTPUT in self.detector_words else None
        self.register_buffer("is_person_word", torch.tensor([word in PERSON_WORDS for word in self.words]), persistent=False)
        # P(person | ImageNet class), (1000,), from the training photos (`person_by_class`); None: detectors alone
        self.register_buffer("person_by_class", None, persistent=False)

    def imagenet_probabilities(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.imagenet_head(pooled.float()), dim=-1)  # (B, 1000)

    @torch.inference_mode()
    def animal_probability(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B,) the ImageNet probability that the photo shows an animal."""
        return self.imagenet_probabilities(pooled)[:, ANIMAL_CLASSES].sum(dim=-1)

    @torch.inference_mode()
    def forward(self, grid: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        detected = self.detector(grid.float()) if self.detector is not None else grid.new_zeros(len(grid), 0)
        return self.combine(self.imagenet_probabilities(pooled), detected)

    def combine(self, classes: torch.Tensor, detected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ImageNet class probabilities (B, 1000) and detector probabilities (B, W_detector) ->
        probabilities over `words` (B, W) and the probability that a person is in the photo (B,)."""
        imagenet = (classes @ self.membership).clamp(max=1.0)  # (B, W_table)
        person = detected[:, self.person_index] if self.person_index is not None else detected.new_zeros(len(detected))
        if self.person_by_class is not None:  # the detectors only saw Flickr8k; ImageNet knows photos without people
            person = torch.sqrt(person * (classes @ self.person_by_class).clamp(0.0, 1.0))
        if self.table.person_classes:  # a diver or a groom is a person whatever the detectors say
            person = torch.maximum(person, classes[:, self.table.person_classes].sum(dim=1))
        return torch.cat([imagenet, detected[:, self.extra]], dim=1), person  # (B, W), (B,)

    def allowed(self, person: torch.Tensor, person_threshold: float) -> torch.Tensor:
        """(B, W) bool: every word, except person words where a person is unlikely."""
        return ~self.is_person_word[None, :] | (person >= person_threshold)[:, None]



def person_by_class(classes: torch.Tensor, has_person: torch.Tensor, strength: float = 5.0, prior: float = 0.1) -> torch.Tensor:
    """P(person | ImageNet class), (1000,), from photos' class probabilities (N, 1000) and whether
    their captions name a person (N,): soft counts, shrunk towards `prior` with the weight of
    `strength` photos. Classes the photos rarely show keep the prior: ImageNet's own photos of a
    zebra or a microwave mostly have nobody in them."""
    seen = classes.sum(dim=0)  # (1000,)
    with_person = (classes * has_person.float()[:, None]).sum(dim=0)  # (1000,)
    return (with_person + strength * prior) / (seen + strength)


def guarded_words(imagenet: torch.Tensor, labels: torch.Tensor, words: list[str], floor: float, min_photos: int = 10, min_recall: float = 0.9) -> list[str]:
    """The one-word concepts a caption may name only with evidence: those whose ImageNet
    probability (N, W) reaches `floor` on at least `min_recall` of the training photos whose
    captions name them (labels (N, W)), measured on at least `min_photos` photos."""
    named = labels > 0
    counts = named.sum(dim=0)  # (W,)
    found = ((imagenet >= floor) & named).sum(dim=0)  # (W,)
    return [word for word, n, k in zip(words, counts.tolist(), found.tolist()) if " " not in word and n >= min_photos and k >= min_recall * n]


def animal_words(table: ConceptTable) -> frozenset[str]:
    """Singular words naming an animal: COCO's animal categories and their names, and the table's
    words that only animal classes say (less `NOT_ONLY_ANIMALS`)."""
    from ..data.lexicon import ANIMALS, coco_categories

    names = {singular(name) for category in ANIMALS for name in coco_categories()[category] if " " not in name}
    only_animals = {w for c in table.classes[ANIMAL_CLASSES] for w in c["words"]} - {w for c in table.classes[ANIMAL_CLASSES.stop :] for w in c["words"]}
    return frozenset((names | {w for w in only_animals if " " not in w}) - NOT_ONLY_ANIMALS)


def animal_floor(animal: torch.Tensor, names_animal: torch.Tensor, candidates=(0.2, 0.1, 0.05, 0.02, 0.01), min_recall: float = 0.95) -> float:
    """The highest ImageNet animal probability that still finds `min_recall` of the photos whose
    captions name an animal (animal (N,), names_animal (N,) bool); the lowest candidate otherwise."""
    for floor in candidates:
        if names_animal.any() and (animal[names_animal] >= floor).float().mean() >= min_recall:
            return floor
    return candidates[-1]


def tags_from_probabilities(probabilities: torch.Tensor, words: list[str], threshold: float, top_k: int) -> list[list[Tag]]:
    """Each image's words with probability >= `threshold`, most probable first, at most `top_k`."""
    scores, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)  # (B, k)
    return [[Tag(words[i], round(score, 4)) for i, score in zip(row_indices, row_scores) if score >= threshold]
            for row_indices, row_scores in zip(indices.tolist(), scores.tolist())]


def concept_word_ids(words: list[str], vocabulary) -> torch.Tensor:
    """(W, L) caption-vocabulary ids of each concept's words, 0-padded; unknown words become <unk>."""
    ids = torch.zeros(len(words), MAX_CONCEPT_WORDS, dtype=torch.long)
    for row, concept in enumerate(words):
        encoded = vocabulary.encode(concept)[:MAX_CONCEPT_WORDS]
        ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
    return ids


def concept_inputs(probabilities: torch.Tensor, word_ids: torch.Tensor, sources: torch.Tensor, allowed: torch.Tensor, max_concepts: int, min_score: float) -> Concepts:
    """The `max_concepts` most probable allowed concepts per image as decoder inputs.

    probabilities (B, W); word_ids (W, L); sources (W,); allowed (B, W) bool.
    """
    masked = torch.where(allowed & (probabilities >= min_score), probabilities, torch.full_like(probabilities, -1.0))
    top_scores, top_index = masked.topk(min(max_concepts, masked.shape[1]), dim=1)  # (B, K)
    present = top_scores >= 0
    ids = word_ids[top_index] * present[..., None]  # (B, K, L)
    return Concepts(ids, top_scores.clamp(min=0.0), sources[top_index] * present)


def pad_concepts(rows: list[list[tuple[list[int], float, int]]], max_concepts: int) -> Concepts:
    """Concepts from Python lists (one list of (word ids, score, source) per image), padded to K."""
    ids = torch.zeros(len(rows), max_concepts, MAX_CONCEPT_WORDS, dtype=torch.long)
    scores = torch.zeros(len(rows), max_concepts)
    sources = torch.zeros(len(rows), max_concepts, dtype=torch.long)
    for row, concepts in enumerate(rows):
        for slot, (word_ids, score, source) in enumerate(concepts[:max_concepts]):
            ids[row, slot, : len(word_ids[:MAX_CONCEPT_WORDS])] = torch.tensor(word_ids[:MAX_CONCEPT_WORDS], dtype=torch.long)
            scores[row, slot], sources[row, slot] = score, source
    return Concepts(ids, scores, sources)


def imagenet_head(encoder) -> nn.Linear:
    """The encoder backbone's own ImageNet classifier (EfficientNet's `_fc`), shared, frozen."""
    head = getattr(encoder.backbone, "_fc", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1000:
        raise CheckpointError(f"encoder {encoder.name} has no 1000-class ImageNet head; concepts need one")
    return head


def numpy_labels(captions_per_image: list[list[list[str]]], words: list[str]) -> np.ndarray:
    """(N, W) 1.0 where any caption of the image uses the word (singular forms; PERSON_OUTPUT: any person word)."""
    column = {word: index for index, word in enumerate(words)}
    labels = np.zeros((len(captions_per_image), len(words)), dtype=np.float32)
    for row, captions in enumerate(captions_per_image):
        for tokens in captions:
            for token in tokens:
                index = column.get(singular(token))
                if index is not None:
                    labels[row, index] = 1.0
                if token in PERSON_WORDS and PERSON_OUTPUT in column:
                    labels[row, column[PERSON_OUTPUT]] = 1.0
    return labels


def to_concepts(lists: list[list[tuple[int, float]]], word_ids: torch.Tensor, sources: list[int], max_concepts: int) -> Concepts:
    """Concept tokens from per-image lists of (concept index, score), padded to `max_concepts`."""
    return pad_concepts([[(word_ids[i][word_ids[i] != 0].tolist(), score, sources[i]) for i, score in row] for row in lists], max_concepts)
