"""Build captioner/data/imagenet_relatives.json: each ImageNet-1k class -> its WordNet relatives, nearest first.

For every class of `captioner/data/imagenet_concepts.json` (read by its `wnid`), the lemmas of its
hypernyms, walking up WordNet 3.0 nearest first (breadth first over multiple parents), as caption
phrases ("salamander", "amphibian", "vertebrate", "animal", ...). At run time a concept word the
caption model cannot write fluently (absent from its vocabulary, or rare in its training captions)
is written through its nearest relative that the model knows well, then named by the concept's own
word (Hendricks et al. 2016, "Deep Compositional Captioning": a novel word borrows a frequent
relative's place in the language model). The relatives depend on WordNet only, not on any one
model's vocabulary.

Run by hand, from the repository root (WordNet as for build_concept_table.py):

    apt-get install wordnet-base wordnet-sense-index
    pip install -e ".[build]"
    python scripts/build_concept_relatives.py
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_concept_table import DEFAULT_WORDNET, ROOT, open_wordnet, phrase_of  # noqa: E402

TABLE = ROOT / "captioner" / "data" / "imagenet_concepts.json"
DEFAULT_OUTPUT = ROOT / "captioner" / "data" / "imagenet_relatives.json"
FORMAT_VERSION = 1
TOO_GENERAL = frozenset(["entity", "physical entity", "abstraction", "abstract entity", "object", "physical object", "whole", "unit", "living thing", "organism", "being", "causal agent", "cause", "causal agency", "matter", "artifact", "artefact"])


def relatives(synset, limit: int = 40) -> list[str]:
    """Lemmas of the synset's hypernyms, breadth first (nearest first), without repeats or the most general ones."""
    seen, words, frontier = {synset}, [], [synset]
    while frontier and len(words) < limit:
        parents = []
        for node in frontier:
            for parent in node.hypernyms() + node.instance_hypernyms():
                if parent not in seen:
                    seen.add(parent)
                    parents.append(parent)
                    words.extend(phrase_of(lemma.name()) for lemma in parent.lemmas())
        frontier = parents
    return [word for word in dict.fromkeys(words) if word and word not in TOO_GENERAL][:limit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=DEFAULT_WORDNET)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    classes = json.loads(TABLE.read_text(encoding="utf-8"))["classes"]
    with tempfile.TemporaryDirectory() as nltk_data:
        wordnet = open_wordnet(args.wordnet, Path(nltk_data))
        rows = [relatives(wordnet.synset_from_pos_and_offset("n", int(entry["wnid"][1:]))) for entry in classes]
    lines = ",\n".join(json.dumps({"index": entry["index"], "wnid": entry["wnid"], "relatives": row}) for entry, row in zip(classes, rows))
    args.output.write_text(f'{{"format_version": {FORMAT_VERSION}, "source": "WordNet 3.0 hypernyms, nearest first", "classes": [\n{lines}\n]}}\n', encoding="utf-8")
    print(f"wrote {args.output}: {len(rows)} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
