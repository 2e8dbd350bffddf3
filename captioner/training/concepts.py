"""Learning the word detectors, and concept tokens for captions that have no photo.

- `choose_detector_words`: the frequent content words of the training captions.
- `train_word_detector`: multiple-instance learning on cached grid features (noisy-OR, BCE).
- `out_of_fold`: detector probabilities for training photos from detectors that never saw them,
  so the decoder trains on concepts as noisy as those it gets on new photos.
- `ConceptNoise`: measured from those out-of-fold predictions (how often a true word is found,
  with what score; how many wrong words come along, with what scores), then used to draw concept
  tokens for caption-text photos from the words of their own captions.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.concepts import ANIMAL_CLASSES, PERSON_OUTPUT, SOURCE_DETECTOR, SOURCE_IMAGENET, ConceptDetector, WordDetector, animal_floor, animal_words, guarded_words, numpy_labels, person_by_class, singular

STOPWORDS = frozenset(
    "a an the is are was were be been being of in on at to from for with without by and or but as into onto over under "
    "near next front behind while his her their its it this that these those there here he she they them him who whom "
    "which what some one two three four five six seven eight nine ten several many other another each very up down out "
    "off away back through across around along together has have had having does do doing just other also than then "
    "another top side middle end something someone other 's".split()
)
QUANTILES = np.linspace(0.0, 1.0, 21)


def choose_detector_words(captions_per_image: list[list[list[str]]], min_images: int = 30, max_words: int = 400) -> list[str]:
    """Content words (singular) used for at least `min_images` photos, most frequent first, plus PERSON_OUTPUT."""
    counts: Counter[str] = Counter()
    for captions in captions_per_image:
        counts.update({singular(token) for tokens in captions for token in tokens})
    words = [w for w, n in counts.most_common() if n >= min_images and w not in STOPWORDS and len(w) > 1 and not w.isdigit()]
    return words[:max_words] + [PERSON_OUTPUT]


def train_word_detector(
    grids: list[torch.Tensor], labels: torch.Tensor, feature_dim: int, hidden_dim: int = 256,
    epochs: int = 8, batch_size: int = 64, learning_rate: float = 2e-3, seed: int = 0,
) -> WordDetector:
    """Fit a `WordDetector` on float16 grids (N, G, C) — one or more views of the same photos, e.g.
    the mirrored ones — and labels (N, W)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    detector = WordDetector(labels.shape[1], feature_dim, hidden_dim)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=learning_rate, weight_decay=0.01)
    count = labels.shape[0]
    total = epochs * ((count + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=total, pct_start=0.1)
    detector.train()
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator)
        views = torch.randint(len(grids), (count,), generator=generator)
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            grid = torch.stack([grids[v][i] for v, i in zip(views[index].tolist(), index.tolist())]).float()  # (B, G, C)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = detector.loss(grid, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return detector.eval()


@torch.inference_mode()
def detect(detector: WordDetector, grid: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Detector probabilities (N, W) for float16 grids (N, G, C)."""
    return torch.cat([detector(grid[start : start + batch_size].float()) for start in range(0, len(grid), batch_size)])


def out_of_fold(grids: list[torch.Tensor], labels: torch.Tensor, feature_dim: int, folds: int = 2, seed: int = 0, **options) -> torch.Tensor:
    """Probabilities for every photo from a detector trained on the other folds, (N, W)."""
    fold_of = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed)) % folds
    probabilities = torch.zeros_like(labels)
    for fold in range(folds):
        held_out, kept = fold_of == fold, fold_of != fold
        detector = train_word_detector([g[kept] for g in grids], labels[kept], feature_dim, seed=seed + fold, **options)
        probabilities[held_out] = detect(detector, grids[0][held_out])
    return probabilities


def _fitted_detectors(grids, labels, words, feature_dim, epochs, seed, store: Path | None, log) -> tuple[torch.Tensor, WordDetector]:
    """Out-of-fold probabilities (N, W) and the detector fitted on all photos, from `store` when a
    run with the same photos, words and settings already fitted them."""
    from safetensors.torch import load_file

    from ..atomic_files import atomic_save_tensors

    key = hashlib.sha256(json.dumps([words, labels.shape[0], float(labels.sum()), [g.shape[1:] for g in grids], len(grids), epochs, seed]).encode()).hexdigest()[:16]
    path = store / f"detectors-{key}.safetensors" if store is not None else None
    if path is not None and path.is_file():
        tensors = load_file(path)
        detector = WordDetector(len(words), feature_dim, tensors["detector.hidden.weight"].shape[0])
        detector.load_state_dict({name[len("detector."):]: value for name, value in tensors.items() if name.startswith("detector.")})
        log(f"concepts: reusing the word detectors fitted earlier ({path})")
        return tensors["out_of_fold"], detector.eval()
    log(f"concepts: {len(words) - 1} detector words; fitting out-of-fold detectors on {len(labels)} photos")
    probabilities = out_of_fold(grids, labels, feature_dim, seed=seed, epochs=epochs)
    detector = train_word_detector(grids, labels, feature_dim, epochs=epochs, seed=seed)
    if path is not None:
        atomic_save_tensors(path, {"out_of_fold": probabilities.contiguous(), **{f"detector.{name}": value.contiguous() for name, value in detector.state_dict().items()}})
    return probabilities, detector


@dataclass
class SourceNoise:
    """How one concept source behaves on photos it never saw, measured above `min_score`."""

    recall: float  # share of true words it reports
    true_scores: list[float]  # quantiles of the scores of true words it reports
    false_per_photo: float  # mean number of wrong words it reports per photo
    false_scores: list[float]  # quantiles of the scores of those wrong words

    @classmethod
    def measure(cls, probabilities: np.ndarray, labels: np.ndarray, min_score: float) -> "SourceNoise":
        reported = probabilities >= min_score
        true_hits = probabilities[(labels > 0) & reported]
        false_hits = probabilities[(labels == 0) & reported]
        return cls(
            recall=float(true_hits.size / max(1, (labels > 0).sum())),
            true_scores=np.quantile(true_hits, QUANTILES).round(4).tolist() if true_hits.size else [1.0] * len(QUANTILES),
            false_per_photo=float(false_hits.size / max(1, len(labels))),
            false_scores=np.quantile(false_hits, QUANTILES).round(4).tolist() if false_hits.size else [min_score] * len(QUANTILES),
        )


@dataclass
class ConceptNoise:
    """Draws concept tokens for a caption-text photo from the words of its captions, with the
    errors the real detectors make (one `SourceNoise` per source)."""

    imagenet: SourceNoise
    detector: SourceNoise

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ConceptNoise":
        return cls(SourceNoise(**data["imagenet"]), SourceNoise(**data["detector"]))

    def draw(self, true_concepts: list[int], sources: list[int], false_pool: np.ndarray, false_weights: np.ndarray, rng: np.random.Generator) -> list[tuple[int, float]]:
        """(concept index, score) pairs, most confident first. `false_pool` holds the indices wrong
        words are drawn from (weighted by how often the detectors report them wrongly)."""
        drawn: dict[int, float] = {}
        for concept in true_concepts:
            noise = self.imagenet if sources[concept] == SOURCE_IMAGENET else self.detector
            if rng.random() < noise.recall:
                drawn[concept] = float(np.interp(rng.random(), QUANTILES, noise.true_scores))
        for noise in (self.imagenet, self.detector):
            for _ in range(rng.poisson(noise.false_per_photo)):
                concept = int(false_pool[rng.choice(len(false_pool), p=false_weights)])
                if concept not in drawn and concept not in true_concepts:
                    drawn[concept] = float(np.interp(rng.random(), QUANTILES, noise.false_scores))
        return sorted(drawn.items(), key=lambda item: -item[1])


class ConceptMatcher:
    """Finds the concepts a caption names: words and phrases up to three words, singular forms."""

    def __init__(self, words: list[str]):
        self.index = {tuple(singular(token) for token in word.split()): i for i, word in enumerate(words)}
        self.longest = max((len(key) for key in self.index), default=1)

    def __call__(self, tokens: list[str]) -> list[int]:
        singulars = [singular(token) for token in tokens]
        found, position = [], 0
        while position < len(singulars):
            for length in range(min(self.longest, len(singulars) - position), 0, -1):
                concept = self.index.get(tuple(singulars[position : position + length]))
                if concept is not None:
                    found.append(concept)
                    position += length
                    break
            else:
                position += 1
        return found


def image_concept_lists(probabilities: torch.Tensor, allowed: torch.Tensor, max_concepts: int, min_score: float) -> list[list[tuple[int, float]]]:
    """Per photo, its `max_concepts` most probable allowed concepts as (index, score), best first."""
    masked = torch.where(allowed & (probabilities >= min_score), probabilities, torch.full_like(probabilities, -1.0))
    scores, indices = masked.topk(min(max_concepts, masked.shape[1]), dim=1)
    return [[(i, round(s, 4)) for i, s in zip(row_indices, row_scores) if s >= 0] for row_indices, row_scores in zip(indices.tolist(), scores.tolist())]


@dataclass
class ConceptSetup:
    """What training with concepts needs: the fitted detector, concepts of every train and dev
    photo (train ones out of fold), the measured noise and the caption-text photos' true concepts."""

    detector: ConceptDetector
    train_concepts: list[list[tuple[int, float]]]
    dev_concepts: list[list[tuple[int, float]]]
    noise: ConceptNoise
    false_pool: np.ndarray
    false_weights: np.ndarray
    report: dict


def fit_concepts(
    table, head, train_grids: list[torch.Tensor], train_pooled: torch.Tensor, train_captions: list[list[list[str]]],
    dev_grid: torch.Tensor, dev_pooled: torch.Tensor, feature_dim: int, max_concepts: int, min_score: float,
    person_threshold: float, detector_words: int = 400, detector_epochs: int = 8, seed: int = 0, log=print,
    store: Path | None = None, guard_floor: float = 0.02,
) -> ConceptSetup:
    """Train the word detectors (out of fold for the train photos, then on all of them), measure
    their noise, and compute every photo's concept list. With `store` (a folder beside the feature
    cache) fitted detectors are kept and reused by later runs on the same photos and settings."""
    words = choose_detector_words(train_captions, max_words=detector_words)
    labels = torch.from_numpy(numpy_labels(train_captions, words))
    out_of_fold_probabilities, final = _fitted_detectors(train_grids, labels, words, feature_dim, detector_epochs, seed, store, log)
    detector = ConceptDetector(table, head, words, feature_dim, hidden_dim=final.hidden.out_features)
    detector.detector.load_state_dict(final.state_dict())
    detector.eval()
    person_column = words.index(PERSON_OUTPUT)
    with torch.inference_mode():
        classes = detector.imagenet_probabilities(train_pooled.float())
        detector.person_by_class = person_by_class(classes, labels[:, person_column] > 0)
        train_probabilities, train_person = detector.combine(classes, out_of_fold_probabilities)
        dev_probabilities, dev_person = detector(dev_grid, dev_pooled)
    train_concepts = image_concept_lists(train_probabilities, detector.allowed(train_person, person_threshold), max_concepts, min_score)
    dev_concepts = image_concept_lists(dev_probabilities, detector.allowed(dev_person, person_threshold), max_concepts, min_score)

    matcher = ConceptMatcher(detector.words)
    concept_labels = np.zeros(tuple(train_probabilities.shape), dtype=np.float32)
    for row, captions in enumerate(train_captions):
        for tokens in captions:
            concept_labels[row, matcher(tokens)] = 1.0
    probabilities = train_probabilities.numpy()
    sources = np.array(detector.sources)
    noise = ConceptNoise(*(SourceNoise.measure(probabilities[:, sources == s], concept_labels[:, sources == s], min_score) for s in (SOURCE_IMAGENET, SOURCE_DETECTOR)))
    false_counts = ((probabilities >= min_score) & (concept_labels == 0)).sum(axis=0).astype(np.float64)
    false_pool = np.flatnonzero(false_counts)
    labels_np = labels.numpy()
    table_columns = len(table.words)
    guarded = guarded_words(train_probabilities[:, :table_columns], torch.from_numpy(concept_labels[:, :table_columns]), table.words, guard_floor)
    animals = animal_words(table)
    names_animal = torch.tensor([sum(any(singular(token) in animals for token in tokens) for tokens in captions) >= 2 for captions in train_captions])
    floor_for_animals = animal_floor(classes[:, ANIMAL_CLASSES].sum(dim=1), names_animal)
    report = {
        "detector_words": len(words) - 1, "noise": noise.to_dict(), "guarded_words": guarded, "guard_floor": guard_floor, "animal_floor": floor_for_animals,
        "out_of_fold_person": {
            "precision": float(((train_person.numpy() >= person_threshold) & (labels_np[:, person_column] > 0)).sum() / max(1, (train_person.numpy() >= person_threshold).sum())),
            "recall": float(((train_person.numpy() >= person_threshold) & (labels_np[:, person_column] > 0)).sum() / max(1, (labels_np[:, person_column] > 0).sum())),
        },
    }
    log(f"concepts: words named only with evidence (ImageNet >= {guard_floor}): {', '.join(guarded) or 'none'}; animals only where ImageNet sees one (>= {floor_for_animals})")
    log(f"concepts: ImageNet recall {noise.imagenet.recall:.2f}, {noise.imagenet.false_per_photo:.2f} wrong words/photo; "
        f"detectors recall {noise.detector.recall:.2f}, {noise.detector.false_per_photo:.2f} wrong words/photo (out of fold, score >= {min_score})")
    return ConceptSetup(detector, train_concepts, dev_concepts, noise, false_pool, false_counts[false_pool] / false_counts[false_pool].sum(), report)


class TextExamples:
    """Caption-text photos as training examples: each draw picks `per_epoch` captions of each file
    and gives each the concepts its photo would get from the detectors (`ConceptNoise`)."""

    def __init__(self, files: list[tuple[list, int]], vocabulary, matcher: ConceptMatcher, max_length: int):
        from ..model.vocabulary import tokenize

        self.files = []
        for photos, per_epoch in files:
            captions, true_concepts = [], []
            for photo_index, photo in enumerate(photos):
                tokenized = [tokenize(caption) for caption in photo.captions]
                true_concepts.append(sorted({concept for tokens in tokenized for concept in matcher(tokens)}))
                captions.extend((ids[:max_length], photo_index) for ids in (vocabulary.encode(" ".join(tokens)) for tokens in tokenized) if ids)
            self.files.append((captions, true_concepts, per_epoch))

    def draw(self, rng: np.random.Generator, setup: ConceptSetup, max_concepts: int, photos: int, image_prob: float) -> list[tuple[list[int], list[tuple[int, float]], int]]:
        """(caption ids, concepts, training-photo row to show or -1) for one epoch."""
        sources = setup.detector.sources
        examples = []
        for captions, true_concepts, per_epoch in self.files:
            for pick in rng.integers(len(captions), size=per_epoch):
                ids, photo = captions[pick]
                concepts = setup.noise.draw(true_concepts[photo], sources, setup.false_pool, setup.false_weights, rng)[:max_concepts]
                shown = int(rng.integers(photos)) if rng.random() < image_prob else -1
                examples.append((ids, [(index, round(score, 4)) for index, score in concepts], shown))
        return examples
