"""Text features: token ids for each utterance, optionally with its dialogue context.

Segment A is the utterance itself. With ``spec.context_turns = k > 0`` a second segment holds up to
k previous and k next utterances as ``Speaker: text``, previous ones first, the two sides separated
by the tokenizer's separator token (with ``spec.context_next`` false, the previous ones only).
Context turns are added whole, nearest first, while they fit in ``spec.max_tokens``; the
utterance's own text is never cut to make room for its context.

``token_arrays`` returns numpy (the bundle's type; the preprocess worker has no torch);
``tokenize_utterances`` returns the same values as torch tensors for training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.spec import FeatureSpec, resolve_pretrained


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """The tokenizer a spec names (hub name, local path or ``package:<module>``), loaded once."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name))


def _turn_text(utterance: UtteranceMeta) -> str:
    text = utterance.text.strip()
    return f"{utterance.speaker}: {text}" if utterance.speaker else text


def _context_segment(
    utterances: Sequence[UtteranceMeta], index: int, spec: FeatureSpec, budget: int, tokenizer
) -> str | None:
    """Previous (and, with ``spec.context_next``, next) turns, nearest first and whole, that fit
    in ``budget`` tokens."""
    turns = spec.context_turns
    previous = [u for u in reversed(utterances[max(0, index - turns) : index]) if u.text.strip()]
    ahead = utterances[index + 1 : index + 1 + turns] if spec.context_next else []
    following = [u for u in ahead if u.text.strip()]
    separator = tokenizer.sep_token or "|"
    if spec.context_next:
        budget -= len(tokenizer.tokenize(separator))
    kept_previous: list[str] = []
    kept_following: list[str] = []
    # Alternate sides so the nearest turns on both sides win over far ones on one side.
    for distance in range(turns):
        for side, kept in ((previous, kept_previous), (following, kept_following)):
            if distance >= len(side):
                continue
            text = _turn_text(side[distance])
            cost = len(tokenizer.tokenize(text))
            if cost <= budget:
                kept.append(text)
                budget -= cost
    if not kept_previous and not kept_following:
        return None
    if not spec.context_next:
        return " ".join(reversed(kept_previous))
    return f"{' '.join(reversed(kept_previous))} {separator} {' '.join(kept_following)}".strip()


def token_arrays(utterances: Sequence[UtteranceMeta], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` and ``token_type_ids``, each int64 ``[U, max_tokens]``.

    ``token_type_ids`` is 1 exactly on the context segment's tokens, whatever the tokenizer's own
    convention (RoBERTa-style tokenizers return no segment ids).
    """
    tokenizer = load_tokenizer(spec.tokenizer)
    length = spec.max_tokens
    count = len(utterances)
    result = {
        name: np.zeros((count, length), dtype=np.int64)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    if count == 0:
        return result

    singles: list[int] = []
    pairs: list[tuple[int, str]] = []
    for index, utterance in enumerate(utterances):
        context = None
        if spec.context_turns > 0:
            own = len(tokenizer.tokenize(utterance.text))
            budget = length - own - tokenizer.num_special_tokens_to_add(pair=True)
            if budget > 0:
                context = _context_segment(utterances, index, spec, budget, tokenizer)
        if context is None:
            singles.append(index)
        else:
            pairs.append((index, context))

    def fill(rows: list[int], first: list[str], second: list[str] | None) -> None:
        encoded = tokenizer(
            first,
            second,
            max_length=length,
            padding="max_length",
            truncation="longest_first",
            return_tensors="np",
        )
        result["input_ids"][rows] = encoded["input_ids"]
        result["attention_mask"][rows] = encoded["attention_mask"]
        if second is not None:
            result["token_type_ids"][rows] = [
                [1 if sid == 1 else 0 for sid in encoded.sequence_ids(i)] for i in range(len(rows))
            ]

    if singles:
        fill(singles, [utterances[i].text for i in singles], None)
    if pairs:
        fill([i for i, _ in pairs], [utterances[i].text for i, _ in pairs], [c for _, c in pairs])
    return result


def tokenize_utterances(utterances: Sequence[UtteranceMeta], spec: FeatureSpec) -> dict:
    """``token_arrays`` as int64 torch tensors ``[U, max_tokens]`` (training side; needs torch)."""
    import torch

    return {name: torch.from_numpy(array) for name, array in token_arrays(utterances, spec).items()}
