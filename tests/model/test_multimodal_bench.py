"""The multimodal bench's scoring: its fast weighted F1 is sklearn's, and its bootstrap interval
of the fused-minus-best-single margin brackets the margin and narrows with more rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from bench.multimodal import margin_interval, weighted_f1


@pytest.mark.parametrize("rows", [5, 40, 700])
def test_weighted_f1_is_sklearns(rows: int) -> None:
    rng = np.random.default_rng(rows)
    targets = rng.integers(0, 7, rows)
    # Classes 4-6 are true but never predicted (their F1 is 0 by zero division); on the smallest set
    # classes 5 and 6 are never true either.
    targets = np.arange(rows) if rows == 5 else targets
    predicted = np.minimum(np.where(rng.random(rows) < 0.6, targets, rng.integers(0, 7, rows)), 3)
    expected = f1_score(targets, predicted, average="weighted", zero_division=0)
    assert weighted_f1(targets, predicted, 7) == pytest.approx(expected, abs=1e-12)


def _reading(targets: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Logits naming the target on ``accuracy`` of the rows, another class elsewhere."""
    wrong = (targets + rng.integers(1, 7, len(targets))) % 7
    labels = np.where(rng.random(len(targets)) < accuracy, targets, wrong)
    return np.eye(7)[labels] * 4.0


def test_margin_interval_brackets_the_margin_and_narrows_with_rows() -> None:
    widths = []
    for rows in (200, 2000):
        rng = np.random.default_rng(0)
        targets = rng.integers(0, 7, rows)
        fused, single = _reading(targets, 0.5, rng), _reading(targets, 0.7, rng)
        used = np.ones(rows, dtype=bool)
        low, high = margin_interval(targets, fused, {"audio": (used, single)})
        margin = weighted_f1(targets, fused.argmax(-1), 7) - weighted_f1(targets, single.argmax(-1), 7)
        assert low < margin < high < 0
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_margin_interval_takes_the_worst_modality_on_its_own_rows() -> None:
    rng = np.random.default_rng(1)
    rows = 600
    targets = rng.integers(0, 7, rows)
    fused = np.eye(7)[targets] * 4.0  # always right
    half = np.arange(rows) < rows // 2
    # Text is right everywhere (the fused reading's equal: margin 0); audio, on half the rows, is
    # wrong (margin +1): the worst margin is text's.
    text = fused.copy()
    audio = _reading(targets, 0.0, rng)
    low, high = margin_interval(
        targets, fused, {"text": (np.ones(rows, dtype=bool), text), "audio": (half, audio)}
    )
    assert low == high == 0.0
    # No modality used anywhere: no margin to bound.
    assert margin_interval(targets, fused, {"text": (np.zeros(rows, dtype=bool), text)}) is None


def test_margin_interval_scores_each_modality_on_its_own_rows_only() -> None:
    rng = np.random.default_rng(2)
    rows = 800
    targets = rng.integers(0, 7, rows)
    fused = _reading(targets, 0.6, rng)
    half = np.arange(rows) < rows // 2
    # Audio is used on the first half only: right there, wrong on the rows it never saw.
    audio = np.where(half[:, None], np.eye(7)[targets] * 4.0, _reading(targets, 0.0, rng))
    low, high = margin_interval(targets, fused, {"audio": (half, audio)})
    on_its_rows = weighted_f1(targets[half], fused[half].argmax(-1), 7) - 1.0
    everywhere = weighted_f1(targets, fused.argmax(-1), 7) - weighted_f1(targets, audio.argmax(-1), 7)
    assert low < on_its_rows < high
    assert not low < everywhere < high
