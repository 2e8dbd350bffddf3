"""Confidence: the probability that a caption is acceptable alt text (it names the photo's subject
and says nothing false), from a few features of the caption, calibrated on labelled dev photos.

A model folder's `calibration.json` (written by `scripts/fit_confidence.py`) holds a logistic
model over `FEATURES`, what it was fitted on, and the confidence bands the page puts into words.
A caption's features:

    score          its length-normalised log-probability (`Caption.score`)
    top_tag        the probability of the photo's most probable tag (0 without tags)
    named_tag      the probability of the most probable tag the caption names (0 where it names none)
    subject_named  1 where the subject rule chose a subject and the caption names it
    unsupported    COCO objects the caption names that no tag supports (a person aside)
    words          the caption's length in words

The fit keeps the weights of score, top_tag, named_tag and subject_named at or above zero and the
weight of unsupported at or below, so a surer score or more agreement with the tags never lowers the
confidence. A folder without the file gives no confidence (None), with a note, never an invented one.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic_files import atomic_write_json
from ..data.lexicon import mentioned_objects, normalise_object
from ..errors import CheckpointError
from ..json_files import read_json
from ..model.checkpoint import CALIBRATION
from ..model.concepts import Tag
from ..model.vocabulary import tokenize
from .word_forms import names_any

CALIBRATION_FORMAT_VERSION = 1
FEATURES = ("score", "top_tag", "named_tag", "subject_named", "unsupported", "words")
# +1: the weight may not be negative, -1: not positive, 0: free
SIGNS = {"score": 1, "top_tag": 1, "named_tag": 1, "subject_named": 1, "unsupported": -1, "words": 0}
# The page's words for a confidence: each band holds the confidences from its minimum up to the next band's
DEFAULT_BANDS = (("fairly-sure", 0.7), ("somewhat-sure", 0.5), ("unsure", 0.3), ("guess", 0.0))
LEVELS = tuple(level for level, _ in DEFAULT_BANDS)

logger = logging.getLogger("captioner")
_noted: set[str] = set()


def caption_features(text: str, score: float, tags: Sequence[Tag], subject: str | None) -> dict[str, float]:
    """The features of one caption (see the module docstring); `subject` is the word the subject rule chose."""
    tokens = tokenize(text)
    named = [tag.score for tag in tags if names_any(tokens, [tag.word])]
    tagged = {normalise_object(tag.word) for tag in tags}
    unsupported = [category for category in mentioned_objects(text) if category != "person" and category not in tagged]
    return {
        "score": float(score),
        "top_tag": float(tags[0].score) if tags else 0.0,
        "named_tag": float(max(named, default=0.0)),
        "subject_named": float(subject is not None and names_any(tokens, [subject])),
        "unsupported": float(len(unsupported)),
        "words": float(len(tokens)),
    }


@dataclass
class Band:
    level: str  # one of LEVELS
    minimum: float  # the lowest confidence in the band


@dataclass
class Calibration:
    """A logistic model of P(acceptable | features), and the bands that put it into words."""

    weights: dict[str, float]  # per feature name
    intercept: float
    bands: list[Band] = field(default_factory=lambda: [Band(level, minimum) for level, minimum in DEFAULT_BANDS])
    fitted_on: dict = field(default_factory=dict)  # what data, which labels, how well calibrated

    def confidence(self, features: dict[str, float]) -> float:
        """P(acceptable) in [0, 1], rounded to 4 places."""
        logit = self.intercept + sum(weight * features[name] for name, weight in self.weights.items())
        return round(1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, logit)))), 4)

    def band(self, confidence: float) -> str:
        return next(band.level for band in self.bands if confidence >= band.minimum)

    def to_dict(self) -> dict:
        return {
            "format_version": CALIBRATION_FORMAT_VERSION, "kind": "logistic",
            "features": list(self.weights), "weights": list(self.weights.values()), "intercept": self.intercept,
            "bands": [{"level": band.level, "minimum": band.minimum} for band in self.bands],
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, data, where: Path | str) -> "Calibration":
        refit = "refit it with scripts/fit_confidence.py, or delete it (captions then come without a confidence)"
        if not isinstance(data, dict) or data.get("format_version") != CALIBRATION_FORMAT_VERSION or data.get("kind") != "logistic":
            raise CheckpointError(f"{where}: not a logistic calibration of format {CALIBRATION_FORMAT_VERSION}; {refit}")
        names, weights, bands = data.get("features"), data.get("weights"), data.get("bands")
        numbers = weights if isinstance(weights, list) else []
        if not isinstance(names, list) or len(names) != len(numbers) or not _finite(*numbers, data.get("intercept")):
            raise CheckpointError(f"{where}: needs as many finite weights as features, and a finite intercept; {refit}")
        unknown = [name for name in names if name not in FEATURES]
        if unknown:
            raise CheckpointError(f"{where}: feature {unknown[0]!r} is unknown to this captioner (it knows {', '.join(FEATURES)}); {refit}")
        if not isinstance(bands, list) or not bands or not all(isinstance(b, dict) and b.get("level") in LEVELS and _finite(b.get("minimum")) for b in bands):
            raise CheckpointError(f"{where}: bands must be a list of {{level: {'|'.join(LEVELS)}, minimum: 0-1}}; {refit}")
        minimums = [b["minimum"] for b in bands]
        if minimums != sorted(minimums, reverse=True) or minimums[-1] != 0 or minimums[0] > 1:
            raise CheckpointError(f"{where}: bands must run from the surest down, the last with minimum 0; {refit}")
        return cls(dict(zip(names, map(float, weights))), float(data["intercept"]), [Band(b["level"], float(b["minimum"])) for b in bands], data.get("fitted_on") or {})


def _finite(*values) -> bool:
    return all(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) for value in values)


def load_calibration(folder: str | Path | None) -> Calibration | None:
    """The folder's calibration; None (with a note, once per folder) where it has none; CheckpointError where it is broken."""
    if folder is None:
        return None
    path = Path(folder) / CALIBRATION
    if not path.is_file():
        if str(folder) not in _noted:
            _noted.add(str(folder))
            logger.warning("captioner: note: the model folder %s has no %s; captions come without a confidence (fit one with scripts/fit_confidence.py)", folder, CALIBRATION)
        return None
    return Calibration.from_dict(read_json(path, "refit it with scripts/fit_confidence.py, or delete it", CheckpointError), path)


def save_calibration(folder: str | Path, calibration: Calibration) -> Path:
    path = Path(folder) / CALIBRATION
    atomic_write_json(path, calibration.to_dict())
    return path


# ---- fitting (numpy only) -----------------------------------------------------------------


def fit_logistic(features: np.ndarray, labels: np.ndarray, names: Sequence[str] = FEATURES, l2: float = 1e-3, steps: int = 5000) -> tuple[dict[str, float], float]:
    """Weights and intercept of a logistic regression of `labels` (N,) in {0, 1} on `features` (N, F),
    with each weight's sign held to `SIGNS` (projected gradient descent on standardised features)."""
    x = np.asarray(features, dtype=np.float64)  # (N, F)
    y = np.asarray(labels, dtype=np.float64)  # (N,)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = (x - mean) / std  # (N, F); a positive scale per feature keeps each weight's sign
    signs = np.array([SIGNS.get(name, 0) for name in names])
    # step 1/L, L bounding the loss' curvature: 0.25 * the largest eigenvalue of [1 z]'[1 z] / N
    design = np.hstack([np.ones((len(z), 1)), z])
    step = 1.0 / (0.25 * np.linalg.eigvalsh(design.T @ design / len(z)).max() + l2)
    w, b = np.zeros(z.shape[1]), math.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6))
    for _ in range(steps):
        error = 1.0 / (1.0 + np.exp(-(z @ w + b))) - y  # (N,)
        w = w - step * (z.T @ error / len(z) + l2 * w)
        b = b - step * error.mean()
        w = np.where(signs > 0, np.maximum(w, 0), np.where(signs < 0, np.minimum(w, 0), w))
    weights = w / std
    return {name: round(float(value), 6) for name, value in zip(names, weights)}, round(float(b - (weights * mean).sum()), 6)


def feature_matrix(rows: Sequence[dict[str, float]], names: Sequence[str] = FEATURES) -> np.ndarray:
    return np.array([[row[name] for name in names] for row in rows], dtype=np.float64).reshape(len(rows), len(names))  # (N, F)


@dataclass
class ReliabilityRow:
    low: float
    high: float
    count: int
    mean_predicted: float
    fraction_acceptable: float


def reliability(predicted: Sequence[float], labels: Sequence[float], bins: int = 10) -> tuple[list[ReliabilityRow], float]:
    """Equal-width bins of predicted confidence (empty ones left out) and the expected calibration
    error: the count-weighted mean gap between mean predicted and fraction acceptable."""
    predicted, labels = np.asarray(predicted, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    which = np.minimum((predicted * bins).astype(int), bins - 1)  # (N,) 1.0 falls in the last bin
    rows, error = [], 0.0
    for index in range(bins):
        chosen = which == index
        if chosen.any():
            row = ReliabilityRow(index / bins, (index + 1) / bins, int(chosen.sum()), float(predicted[chosen].mean()), float(labels[chosen].mean()))
            rows.append(row)
            error += row.count * abs(row.mean_predicted - row.fraction_acceptable)
    return rows, error / max(len(predicted), 1)
