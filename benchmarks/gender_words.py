"""How often the model's gender word disagrees with the references, on Flickr8k test.

A photo counts when its references agree on a gender: every reference that names a person with a
gendered word (man, woman, boy, girl, he, her, ...; `captioner.generation.neutral.MALE` / `FEMALE`) uses only
male words, or only female words, and at least one does. Its beam-3 caption (plain words, as
`captioner caption --plain` gives them) then names the same gender, the other one (a
disagreement; "a man and a woman" counts as one too), or none. Printed as a JSON report; the
numbers go into MODEL_CARD.md.

    python benchmarks/gender_words.py [--dataset ../shared/flickr8k] [--model FOLDER] [--limit N] [--output report.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captioner.generation.neutral import gender_of  # noqa: E402
from captioner.model.vocabulary import tokenize  # noqa: E402


def reference_gender(references: list[str]) -> str | None:
    """male or female where the gendered references all agree; None otherwise (no person, mixed, or disagreeing)."""
    genders = {gender_of(tokenize(reference)) for reference in references} - {None}
    return genders.pop() if len(genders) == 1 and genders <= {"male", "female"} else None


def compare(captions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """The counts and rates of the report, from each photo's caption and its references."""
    outcome: Counter = Counter()
    for image, caption in captions.items():
        expected = reference_gender(references[image])
        if expected is None:
            continue
        said = gender_of(tokenize(caption))
        outcome[(expected, "none" if said is None else "same" if said == expected else "other")] += 1
    report: dict = {"photos": len(captions)}
    for gender in ("male", "female", "all"):
        counts = {kind: sum(n for (expected, k), n in outcome.items() if k == kind and gender in (expected, "all")) for kind in ("same", "other", "none")}
        gendered = counts["same"] + counts["other"]
        report[gender] = {
            "photos_references_agree": sum(counts.values()), **counts,
            "disagreement_rate": round(counts["other"] / gendered, 4) if gendered else None,  # of captions that name a gender
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "flickr8k"))
    parser.add_argument("--model", help="model folder or shipped name (default: the shipped model)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="first N test photos only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="also write the report, with every photo's caption, to this JSON file")
    args = parser.parse_args()

    import torch

    from captioner.api import Captioner
    from captioner.data.datasets import load_dataset

    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    records = dataset.split("test")[: args.limit or None]
    captioner = Captioner.from_pretrained(args.model) if args.model else Captioner.from_pretrained()
    started = time.time()
    results = captioner.caption([dataset.image_path(record) for record in records], beam_size=args.beam_size, style="plain", batch_size=16)
    captions = {record.image: caption.text for record, caption in zip(records, results)}
    report = {
        "model": captioner.name, "dataset": dataset.name, "split": "test", "beam_size": args.beam_size, "seconds": round(time.time() - started),
        **compare(captions, {record.image: record.captions for record in records}),
        "command": "python benchmarks/gender_words.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps({**report, "captions": captions}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
