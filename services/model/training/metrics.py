"""Classification metrics (scikit-learn), calibration, confusion-matrix images, metric lines.

Metric lines are the one fixed format SageMaker's ``metric_definitions`` parse from the training
log: ``METRIC split=<split> epoch=<n> <name>=<value> ...``; ``metric_regex`` builds the matching
regular expression so the launcher and the trainer cannot drift apart.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

METRIC_PREFIX = "METRIC"


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 confidence over equal-width bins (Guo et al., 2017)."""
    correct = probabilities.argmax(1) == targets
    return float(_binned_calibration_error(probabilities.max(1), correct[None, :], bins)[0])


def _binned_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> np.ndarray:
    """ECE of each row of ``correct`` (``[D, N]`` booleans) against the ``[N]`` confidences."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = np.zeros(len(correct))
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            gap = correct[:, in_bin].mean(1) - confidence[in_bin].mean()
            error += in_bin.mean() * np.abs(gap)
    return error


def calibration_error_if_calibrated(
    probabilities: np.ndarray, bins: int = 15, draws: int = 2000, seed: int = 0
) -> np.ndarray:
    """The ECE a perfectly calibrated model with these confidences would read on this many rows.

    Binned ECE is biased upwards on small sets: each bin's accuracy is a mean of a few Bernoulli
    draws, so even a calibrated model reads well above 0 on a few hundred rows. After consistency
    resampling (Bröcker and Smith, 2007), with the confidences kept as they are: each row's
    correctness is drawn with probability equal to its confidence, ``draws`` times; returns those
    ``[draws]`` ECEs, the reading to compare a measured ECE with."""
    if draws < 1:
        raise ValueError("draws must be at least 1")
    confidence = probabilities.max(1)
    rng = np.random.default_rng(seed)
    # In blocks of draws: all of them at once would be draws x rows floats (100 MB on 7,000 rows).
    block = 200
    return np.concatenate(
        [
            _binned_calibration_error(
                confidence, rng.random((min(block, draws - start), len(confidence))) < confidence, bins
            )
            for start in range(0, draws, block)
        ]
    )


def classification_report(
    targets: np.ndarray, probabilities: np.ndarray, labels: Sequence[str]
) -> dict[str, object]:
    """Accuracy, weighted/macro F1, per-class P/R/F1/support, confusion matrix, ECE."""
    targets = np.asarray(targets)
    predictions = probabilities.argmax(1)
    indices = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=indices, zero_division=0
    )
    return {
        "count": int(len(targets)),
        "accuracy": float(accuracy_score(targets, predictions)),
        "weighted_f1": float(
            f1_score(targets, predictions, labels=indices, average="weighted", zero_division=0)
        ),
        "macro_f1": float(f1_score(targets, predictions, labels=indices, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probabilities, targets),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(targets, predictions, labels=indices).tolist(),
        "labels": list(labels),
    }


def confusion_figure(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str):
    """A matplotlib figure of a confusion matrix, rows normalised (counts annotated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=float)
    normalised = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    figure, axes = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)), dpi=100)
    axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row in range(len(labels)):
        for column in range(len(labels)):
            colour = "white" if normalised[row, column] > 0.5 else "black"
            axes.text(
                column, row, int(counts[row, column]), ha="center", va="center", fontsize=8, color=colour
            )
    figure.tight_layout()
    return figure


def save_confusion_png(matrix, labels, title: str, path) -> None:
    import matplotlib.pyplot as plt

    figure = confusion_figure(matrix, labels, title)
    figure.savefig(path)
    plt.close(figure)


def format_metric_line(split: str, epoch: int, values: dict[str, float]) -> str:
    fields = " ".join(f"{name}={value:.6f}" for name, value in values.items())
    return f"{METRIC_PREFIX} split={split} epoch={epoch} {fields}"


def emit_metric_line(split: str, epoch: int, values: dict[str, float]) -> str:
    """Write one metric line to stdout (what SageMaker scrapes into CloudWatch)."""
    line = format_metric_line(split, epoch, values)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return line


def metric_regex(split: str, name: str) -> str:
    # A space precedes every name, so "f1" never matches inside "weighted_f1".
    return rf"{METRIC_PREFIX} split={re.escape(split)} epoch=\d+.* {re.escape(name)}=([-+0-9.eE]+)"
