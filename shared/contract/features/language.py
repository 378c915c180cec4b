"""The transcript's language, once per analysis: py3langid (langid.py's naive Bayes model over
byte n-grams, 97 languages, offline, about a millisecond per text after a 1 s load).

The whole transcript is read as one text: a sitcom line ("Okay.", "Oh my God!") is too short for
any detector, while a transcript of a few lines is not. A guess counts only when it is sure
(probability >= ``MIN_PROBABILITY`` on at least ``MIN_CHARACTERS`` letters); otherwise the
language is undetermined (``code`` None) and the text is used as before. A transcript that mixes
languages reads as its main one, or as undetermined when none dominates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

MIN_CHARACTERS = 20
MIN_PROBABILITY = 0.9


@dataclass(frozen=True)
class LanguageGuess:
    code: str | None  # ISO 639-1, None: undetermined
    probability: float  # the detector's for its best language
    best: str  # the detector's best language, even when not sure enough to count
    characters: int  # letters the guess was made on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(texts: Sequence[str]) -> LanguageGuess:
    text = "\n".join(t.strip() for t in texts if t and t.strip())
    letters = sum(character.isalpha() for character in text)
    if not letters:
        return LanguageGuess(code=None, probability=0.0, best="", characters=0)
    best, probability = _identifier().classify(text)
    best = str(best)  # a numpy string: plain, so every JSON encoder takes it
    sure = letters >= MIN_CHARACTERS and probability >= MIN_PROBABILITY
    return LanguageGuess(
        code=best if sure else None, probability=round(float(probability), 4), best=best, characters=letters
    )
