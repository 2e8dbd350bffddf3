"""The in-process CIDEr-D used as the self-critical reward agrees with pycocoevalcap's."""
import random

import pytest
from pycocoevalcap.cider.cider import Cider

from captioner.evaluation.cider import CiderD

WORDS = "a the dog man woman boy girl runs jumps sits on in grass water ball red blue black white park street".split()


def random_caption(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]


def test_matches_pycocoevalcap_cider():
    rng = random.Random(0)
    references = {f"img{i}": [random_caption(rng) for _ in range(5)] for i in range(30)}
    hypotheses = {key: random_caption(rng) if i % 3 else captions[0] for i, (key, captions) in enumerate(references.items())}
    ours = CiderD(references)
    mine = sum(ours.score(key, hypotheses[key]) for key in references) / len(references)
    theirs, per_image = Cider().compute_score({k: [" ".join(c) for c in v] for k, v in references.items()}, {k: [" ".join(v)] for k, v in hypotheses.items()})
    assert mine == pytest.approx(theirs, rel=1e-6)
    assert [ours.score(key, hypotheses[key]) for key in references] == pytest.approx(list(per_image), rel=1e-6)


def test_a_reference_scores_higher_than_noise():
    references = {"a": [["a", "dog", "runs", "on", "the", "grass"]] * 2 + [["a", "brown", "dog", "in", "a", "field"]], "b": [["a", "man", "sits"]]}
    scorer = CiderD(references)
    assert scorer.score("a", ["a", "dog", "runs", "on", "the", "grass"]) > scorer.score("a", ["a", "man", "sits"]) >= 0.0
