"""What each training step trains on. A `BatchPlan` per training mode plans an epoch's batches
(`batches(epoch)`) and builds one of them (`batch(...)` -> features, and the caption tokens or the
photos' keys):

- `CaptionPlan`: cross-entropy on the training photos' captions, in batches of similar length;
- `ConceptPlan`: the same with concept tokens, plus caption-text examples (captions of photos
  that are not here, each with the concepts its photo would get);
- `SelfCriticalPlan`: photos, whose sampled captions are rewarded by their references' CIDEr-D.

Every process plans the same global batches from the same seeds (`seed + epoch` for the order,
`+ 1000` for mirrored photos, `+ 2000` for caption text, `+ 3000` for hidden images); under
torchrun each builds and trains on its share of each.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..data.features import FeatureCache
from ..generation.cached_decoding import batch_features
from ..model.concepts import concept_word_ids, to_concepts
from ..model.decoders import Features
from ..model.vocabulary import Vocabulary
from .concepts import ConceptSetup, TextExamples


class Batch(NamedTuple):
    """One step's examples (this process's share of the global batch), on the device."""

    features: Features  # grid (B, G, C), pooled (B, C); concept models: concepts and has_image too
    inputs: torch.Tensor | None  # (B, T) `<bos> w1..wn`; None in self-critical training
    targets: torch.Tensor | None  # (B, T) `w1..wn <eos>`; None in self-critical training
    keys: list[str] | None  # the photos, whose references reward their samples (self-critical only)


def pad_batch(sequences: list[list[int]], vocabulary: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption ids -> (inputs `<bos> w1..wn`, targets `w1..wn <eos>`), both (B, T), padded with <pad>."""
    length = max(len(ids) for ids in sequences) + 1
    inputs = torch.full((len(sequences), length), vocabulary.pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), length), vocabulary.pad_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        inputs[row, : len(ids) + 1] = torch.tensor([vocabulary.bos_id] + ids)
        targets[row, : len(ids) + 1] = torch.tensor(ids + [vocabulary.eos_id])
    return inputs, targets


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of captions of similar length: far less padding, so far fewer wasted steps."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class PhotoFeatures:
    """Cached features of training photos, each read from the plain or the mirrored copy."""

    def __init__(self, cache: FeatureCache, flip_cache: FeatureCache | None, train_keys: list[str], device: torch.device):
        self.cache, self.flip_cache, self.device = cache, flip_cache, device
        self.flip_row_of = np.full(len(cache.keys), -1, dtype=np.int64)  # a cache row -> the row of its mirrored photo in flip_cache
        if flip_cache is not None:
            self.flip_row_of[cache.rows(train_keys)] = flip_cache.rows(train_keys)

    def read(self, rows: np.ndarray, mirrored: np.ndarray) -> Features:
        """Features of cache `rows` (B,), mirrored where `mirrored` (B,) and the photo has a mirrored copy."""
        return batch_features(self.cache, rows, self.device, self.flip_cache, np.where(mirrored, self.flip_row_of[rows], -1))


class BatchPlan:
    """An epoch's batches of example indices, and one batch's tensors. `batches(epoch)` draws the
    epoch's random choices; `units` is then what each example adds to a batch's mean loss, which
    weighs each process's share under DDP (`distributed.share_weight`)."""

    units: np.ndarray

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int) -> list[np.ndarray]:
        raise NotImplementedError

    def batch(self, batch: np.ndarray, share: np.ndarray) -> Batch:
        """The examples at positions `share` of the global `batch` (indices from `batches`)."""
        raise NotImplementedError


class CaptionPlan(BatchPlan):
    """Cross-entropy on `samples`, (cache row, caption ids) pairs: batches of captions of similar
    length, each photo mirrored at random (half the time) where a mirrored copy is cached."""

    def __init__(self, samples: list[tuple[int, list[int]]], photos: PhotoFeatures, vocabulary: Vocabulary, batch_size: int, seed: int):
        self.samples, self.photos, self.vocabulary, self.batch_size, self.seed = samples, photos, vocabulary, batch_size, seed
        self.lengths = np.array([len(ids) for _, ids in samples])
        self.units = self.lengths + 1  # target tokens, <eos> included

    def steps_per_epoch(self) -> int:
        return len(length_bucketed_batches(self.lengths, self.batch_size, np.random.default_rng(0)))

    def batches(self, epoch: int) -> list[np.ndarray]:
        self.mirrored = np.random.default_rng(self.seed + 1000 + epoch).random(len(self.samples)) < 0.5
        return length_bucketed_batches(self.lengths, self.batch_size, np.random.default_rng(self.seed + epoch))

    def batch(self, batch: np.ndarray, share: np.ndarray) -> Batch:
        indices = batch[share]
        rows = np.array([self.samples[i][0] for i in indices])
        inputs, targets = pad_batch([self.samples[i][1] for i in indices], self.vocabulary)
        return Batch(self.photos.read(rows, self.mirrored[indices]), inputs.to(self.photos.device), targets.to(self.photos.device), None)


class ConceptPlan(CaptionPlan):
    """`CaptionPlan` for a decoder that reads concept tokens: each photo example with its photo's
    detected concepts, and each epoch `text_per_epoch` fresh caption-text examples (indices after
    the photo examples') with the concepts their photo would get, shown a random training photo
    (which they must not describe) or none. `image_dropout`: the share of photo examples whose
    image is hidden, so the decoder learns to caption from the concepts alone."""

    def __init__(
        self, samples: list[tuple[int, list[int]]], photos: PhotoFeatures, vocabulary: Vocabulary, batch_size: int, seed: int,
        setup: ConceptSetup, text: TextExamples, text_per_epoch: int, train_rows: np.ndarray, max_concepts: int, text_image_prob: float, image_dropout: float,
    ):
        super().__init__(samples, photos, vocabulary, batch_size, seed)
        self.setup, self.text, self.text_per_epoch, self.train_rows = setup, text, text_per_epoch, train_rows
        self.max_concepts, self.text_image_prob, self.image_dropout = max_concepts, text_image_prob, image_dropout
        self.concepts_of_row = {int(row): concepts for row, concepts in zip(train_rows, setup.train_concepts)}
        self.word_ids = concept_word_ids(setup.detector.words, vocabulary)  # (W, L)

    def steps_per_epoch(self) -> int:  # the count of batches depends on the number of examples alone
        return len(length_bucketed_batches(np.zeros(len(self.samples) + self.text_per_epoch), self.batch_size, np.random.default_rng(0)))

    def batches(self, epoch: int) -> list[np.ndarray]:
        self.epoch_text = self.text.draw(np.random.default_rng(self.seed + 2000 + epoch), self.setup, self.max_concepts, len(self.train_rows), self.text_image_prob)
        lengths = np.concatenate([self.lengths, [len(ids) for ids, _, _ in self.epoch_text]]).astype(int)
        self.units = lengths + 1
        self.hidden = np.random.default_rng(self.seed + 3000 + epoch)  # a draw a step: which photo examples lose their image
        self.mirrored = np.random.default_rng(self.seed + 1000 + epoch).random(len(lengths)) < 0.5
        return length_bucketed_batches(lengths, self.batch_size, np.random.default_rng(self.seed + epoch))

    def batch(self, batch: np.ndarray, share: np.ndarray) -> Batch:
        indices = batch[share]
        rows, sequences, concepts, has_image = [], [], [], []
        for index in indices.tolist():
            if index < len(self.samples):  # a photo example
                row, ids = self.samples[index]
                rows.append(row), sequences.append(ids), concepts.append(self.concepts_of_row[row]), has_image.append(True)
            else:  # a caption-text example, maybe shown a training photo
                ids, drawn, shown = self.epoch_text[index - len(self.samples)]
                rows.append(int(self.train_rows[max(shown, 0)])), sequences.append(ids), concepts.append(drawn), has_image.append(shown >= 0)
        rows, has_image = np.array(rows), torch.tensor(has_image)
        if self.image_dropout > 0:  # photo examples captioned from their concepts alone
            has_image &= ~torch.from_numpy((self.hidden.random(len(batch))[share] < self.image_dropout) & (indices < len(self.samples)))
        device = self.photos.device
        features = self.photos.read(rows, self.mirrored[indices])._replace(
            concepts=to_concepts(concepts, self.word_ids, self.setup.detector.sources, self.max_concepts).to(device), has_image=has_image.to(device))
        inputs, targets = pad_batch(sequences, self.vocabulary)
        return Batch(features, inputs.to(device), targets.to(device), None)


class SelfCriticalPlan(BatchPlan):
    """Self-critical training: shuffled batches of `images_per_batch` training photos (`keys`, at
    cache `rows`), each mirrored at random (half the time) where a mirrored copy is cached."""

    def __init__(self, keys: list[str], rows: np.ndarray, photos: PhotoFeatures, images_per_batch: int, seed: int):
        self.keys, self.rows, self.photos, self.images_per_batch, self.seed = keys, rows, photos, images_per_batch, seed
        self.units = np.ones(len(keys))  # the loss is a mean over photos

    def steps_per_epoch(self) -> int:
        return -(-len(self.keys) // self.images_per_batch)

    def batches(self, epoch: int) -> list[np.ndarray]:
        self.mirrored = np.random.default_rng(self.seed + 1000 + epoch).random(len(self.keys)) < 0.5
        order = np.random.default_rng(self.seed + epoch).permutation(len(self.keys))
        return [order[i : i + self.images_per_batch] for i in range(0, len(order), self.images_per_batch)]

    def batch(self, batch: np.ndarray, share: np.ndarray) -> Batch:
        indices = batch[share]
        return Batch(self.photos.read(self.rows[indices], self.mirrored[indices]), None, None, [self.keys[i] for i in indices])
