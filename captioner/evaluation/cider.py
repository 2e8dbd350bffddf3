"""CIDEr-D for self-critical training: fast, in-process, with document frequencies from the
training references (the coco-caption scorer recomputes them per call and runs Java, which is
right for reporting but too slow for a reward computed every step)."""
from __future__ import annotations

import math
from collections import Counter, defaultdict


def ngram_counts(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class CiderD:
    """CIDEr-D (Vedantam et al. 2015): tf-idf n-gram cosine, clipped, with a Gaussian length penalty, x 10."""

    def __init__(self, references: dict[str, list[list[str]]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        document_frequency: Counter = Counter()
        for captions in references.values():
            document_frequency.update({gram for caption in captions for gram in ngram_counts(caption, n)})
        self.log_images = math.log(float(len(references)))
        self.document_frequency = document_frequency
        self.references = {key: [self._vector(caption) for caption in captions] for key, captions in references.items()}

    def _vector(self, words: list[str]):
        vector: list[dict] = [defaultdict(float) for _ in range(self.n)]
        norms = [0.0] * self.n
        for gram, count in ngram_counts(words, self.n).items():
            weight = count * (self.log_images - math.log(max(1.0, self.document_frequency[gram])))
            vector[len(gram) - 1][gram] = weight
            norms[len(gram) - 1] += weight * weight
        return vector, [math.sqrt(value) for value in norms], len(words)

    def score(self, key: str, words: list[str]) -> float:
        vector, norms, length = self._vector(words)
        total = 0.0
        for ref_vector, ref_norms, ref_length in self.references[key]:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * self.sigma**2))
            for k in range(self.n):
                if norms[k] and ref_norms[k]:
                    overlap = sum(min(weight, ref_vector[k].get(gram, 0.0)) * ref_vector[k].get(gram, 0.0) for gram, weight in vector[k].items())
                    total += penalty * overlap / (norms[k] * ref_norms[k])
        return 10.0 * total / (self.n * len(self.references[key]))
