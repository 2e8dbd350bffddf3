"""How a caption is written out, chosen here once for the API, the CLI, the server (and so the
page) and Ray: as a sentence, "A cat sitting on a bed." (ready for alt text), or plain, "a cat
sitting on a bed" (the decoder's words, as metrics score them); optionally gender-neutral."""
from __future__ import annotations

from ..errors import CaptionerError
from .neutral import neutral as neutral_words

SENTENCE, PLAIN = "sentence", "plain"
STYLES = (SENTENCE, PLAIN)


def check_style(style: str) -> str:
    if style not in STYLES:
        raise CaptionerError(f"unknown caption style {style!r}; choose one of: {', '.join(STYLES)}")
    return style


def sentence(text: str) -> str:
    """"a cat sitting on a bed" -> "A cat sitting on a bed."; an empty caption stays empty."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def written(text: str, style: str = SENTENCE, neutral: bool = False) -> str:
    """A caption's words as the user asked for them: gender-neutral if `neutral`, then in `style`."""
    text = neutral_words(text) if neutral else text
    return sentence(text) if check_style(style) == SENTENCE else text
