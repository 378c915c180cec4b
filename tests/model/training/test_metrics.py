import json
import re

import numpy as np
import pytest

from services.model.core.config import ModelConfig
from services.model.training.metrics import (
    calibration_error_if_calibrated,
    classification_report,
    expected_calibration_error,
    format_metric_line,
    metric_regex,
    save_confusion_png,
)
from services.model.training.model_card import render_model_card
from shared.contract.features.spec import FeatureSpec

LABELS = ("a", "b", "c")
# Fixed prediction set: true labels and one-hot-ish probabilities with known confidences.
TARGETS = np.array([0, 0, 0, 1, 1, 2])
PREDICTED = np.array([0, 0, 1, 1, 2, 2])
CONFIDENCE = np.array([0.9, 0.8, 0.6, 0.7, 0.5, 0.95])


def probabilities() -> np.ndarray:
    probs = np.zeros((len(TARGETS), 3))
    for row, (label, confidence) in enumerate(zip(PREDICTED, CONFIDENCE, strict=True)):
        probs[row] = (1 - confidence) / 2
        probs[row, label] = confidence
    return probs


def test_report_on_a_fixed_prediction_set_has_the_known_values():
    report = classification_report(TARGETS, probabilities(), LABELS)
    # a: P=2/2, R=2/3, F1=0.8; b: P=1/2, R=1/2, F1=0.5; c: P=1/2, R=1/1, F1=2/3
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert report["per_class"]["b"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert report["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    json.dumps(report)  # the report is plain JSON


def test_expected_calibration_error_by_hand():
    # With 15 bins every one of the six confidences falls in its own bin, so
    # ECE = mean over samples of |correct - confidence|.
    correct = PREDICTED == TARGETS
    expected = np.mean(np.abs(correct.astype(float) - CONFIDENCE))
    assert expected_calibration_error(probabilities(), TARGETS) == pytest.approx(expected)
    perfect = np.eye(3)[TARGETS]
    assert expected_calibration_error(perfect, TARGETS) == 0.0


def test_metric_line_matches_its_regex_and_only_the_right_name():
    line = format_metric_line(
        "dev", 3, {"emotion_macro_f1": 0.25, "emotion_weighted_f1": 0.5, "loss_total": 1.5}
    )
    assert re.search(metric_regex("dev", "emotion_weighted_f1"), line).group(1) == "0.500000"
    assert re.search(metric_regex("dev", "emotion_macro_f1"), line).group(1) == "0.250000"
    assert re.search(metric_regex("train", "emotion_weighted_f1"), line) is None
    assert re.search(metric_regex("dev", "weighted_f1"), line) is None


def test_confusion_png_and_model_card(tmp_path):
    report = classification_report(TARGETS, probabilities(), LABELS)
    png = tmp_path / "confusion.png"
    save_confusion_png(report["confusion_matrix"], LABELS, "test", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    emotion = classification_report(
        np.array([0, 1, 2, 3, 4, 5, 6, 4]),
        np.eye(7)[[0, 1, 2, 3, 4, 5, 6, 6]],
        ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"),
    )
    card = render_model_card(
        {"name": "m", "version": "1", "trained_modalities": ["text"], "data_hash": "abc"},
        ModelConfig(trained_modalities=("text",)),
        FeatureSpec(context_turns=2),
        {"test": {"emotion": emotion, "sentiment": report}},
    )
    assert "not anyone's inner state" in card
    assert "untrained (treated as absent at inference, never reported as used): audio, visual" in card
    assert f"| test | emotion | 8 | {emotion['accuracy']:.3f} | {emotion['weighted_f1']:.3f} |" in card
    assert "dialogue context: 2 turn(s) either side as a second segment" in card
    previous_only = render_model_card(
        {"name": "m", "version": "1", "trained_modalities": ["text"]},
        ModelConfig(trained_modalities=("text",)),
        FeatureSpec(context_turns=2, context_next=False),
    )
    assert "dialogue context: 2 turn(s) before it as a second segment" in previous_only


def test_calibration_error_if_calibrated_shrinks_with_rows_as_binomial_noise():
    # One bin (every confidence 0.7): a calibrated model's ECE is |mean of n Bernoulli(0.7) - 0.7|,
    # whose expectation is about sqrt(2 / pi) * sqrt(0.7 * 0.3 / n).
    for rows in (240, 6000):
        probabilities = np.tile([0.7, 0.2, 0.1], (rows, 1))
        draws = calibration_error_if_calibrated(probabilities, draws=4000, seed=3)
        expected = np.sqrt(2 / np.pi) * np.sqrt(0.21 / rows)
        assert draws.shape == (4000,)
        assert draws.mean() == pytest.approx(expected, rel=0.1)
    certain = np.tile([1.0, 0.0, 0.0], (50, 1))
    assert calibration_error_if_calibrated(certain, draws=10).max() == 0.0


def test_calibration_error_if_calibrated_tells_a_real_miscalibration_from_noise():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(600, 7)) * 2.0
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    calibrated_targets = np.array([rng.choice(7, p=row) for row in probabilities])
    floor = calibration_error_if_calibrated(probabilities, seed=1)
    calibrated_ece = expected_calibration_error(probabilities, calibrated_targets)
    assert (floor >= calibrated_ece).mean() > 0.01
    # Never the predicted class: every confidence overstated.
    wrong_targets = (probabilities.argmax(1) + 1) % 7
    assert expected_calibration_error(probabilities, wrong_targets) > np.percentile(floor, 99.9)
