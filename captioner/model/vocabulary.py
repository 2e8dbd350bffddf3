"""Caption cleaning and the word-level `Vocabulary` (saved as JSON)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def clean_caption(caption: str) -> str:
    """Lower-case, keep letters, digits and apostrophes, collapse spaces: 'A dog .' -> 'a dog'."""
    text = _NON_WORD.sub(" ", caption.lower().replace("’", "'"))
    words = [word.strip("'") for word in text.split()]
    return " ".join(word for word in words if word)


def tokenize(caption: str) -> list[str]:
    return clean_caption(caption).split()


class Vocabulary:
    """Maps words to ids. Ids 0-3 are `<pad> <bos> <eos> <unk>`; padding (0) is never a word."""

    def __init__(self, words: Iterable[str]):
        words = [word for word in words if word not in SPECIALS]
        self.itos: list[str] = list(SPECIALS) + words
        self.stoi: dict[str, int] = {word: index for index, word in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for caption in captions for word in tokenize(caption))
        words = sorted((word for word, count in counts.items() if count >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def encode(self, caption: str) -> list[int]:
        """Caption -> ids, without `<bos>` / `<eos>`; unknown words become `<unk>`."""
        return [self.stoi.get(word, self.unk_id) for word in tokenize(caption)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, stopping at `<eos>` and skipping the other special tokens."""
        words = []
        for index in ids:
            index = int(index)
            if index == self.eos_id:
                break
            if index >= len(SPECIALS):
                words.append(self.itos[index])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"specials": list(SPECIALS), "words": self.itos[len(SPECIALS):]}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        if not isinstance(data, dict) or not isinstance(data.get("words"), list) or not all(isinstance(w, str) for w in data["words"]):
            raise ValueError('expected {"specials": [...], "words": [...]} with words as strings')
        if data.get("specials") != list(SPECIALS):
            raise ValueError(f"vocabulary specials {data.get('specials')} differ from {list(SPECIALS)}")
        return cls(data["words"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=0))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        return cls.from_dict(json.loads(Path(path).read_text()))
