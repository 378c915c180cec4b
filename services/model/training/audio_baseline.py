"""The plain audio baseline the audio branch must beat: per-bin log-mel mean and standard
deviation (2 x 64 numbers per clip) into a logistic regression.

Trained on RAVDESS's training actors, its regularisation chosen on the dev actors, scored on the
held-out actors 21-24 (8 classes and mapped to MELD-7) and, cross-language, on EmoDB.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.model.training.data.speech import (
    RAVDESS_EMOTIONS,
    RAVDESS_TO_MELD,
    SpeechFeatures,
    load_log_mels,
    read_emodb,
    read_ravdess,
    split_ravdess,
)
from shared.contract.features.spec import FeatureSpec
from shared.logging import get_logger
from shared.settings import Settings, get_settings

log = get_logger(__name__)

REGULARISATION_GRID = (0.01, 0.1, 1.0, 10.0)


def summary_statistics(features: SpeechFeatures) -> np.ndarray:
    """[N, 2M]: mean and standard deviation of each mel bin over the clip's real frames."""
    mel = features.log_mel.astype(np.float32)  # [N, M, T]
    mask = features.audio_mask[:, None, :].astype(np.float32)  # [N, 1, T]
    frames = np.maximum(mask.sum(axis=2), 1.0)  # [N, 1]
    mean = (mel * mask).sum(axis=2) / frames
    var = (((mel - mean[:, :, None]) ** 2) * mask).sum(axis=2) / frames
    return np.concatenate([mean, np.sqrt(var)], axis=1)


def _scores(true: list[str], predicted: list[str]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(true, predicted)),
        "weighted_f1": float(f1_score(true, predicted, average="weighted", zero_division=0)),
    }


def run_baseline(spec: FeatureSpec | None = None, settings: Settings | None = None) -> dict:
    spec = spec or FeatureSpec()
    settings = settings or get_settings()
    ravdess = read_ravdess(settings)
    features = load_log_mels(ravdess, spec, settings)
    splits = {name: features.subset(clips) for name, clips in split_ravdess(ravdess).items()}
    x = {name: summary_statistics(part) for name, part in splits.items()}
    y = {name: np.asarray([c.label_index for c in part.clips]) for name, part in splits.items()}

    def fit(c: float):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x["train"], y["train"])

    dev_accuracy = {c: float(accuracy_score(y["dev"], fit(c).predict(x["dev"]))) for c in REGULARISATION_GRID}
    best_c = max(dev_accuracy, key=lambda c: dev_accuracy[c])
    model = fit(best_c)

    predicted = [RAVDESS_EMOTIONS[i] for i in model.predict(x["test"])]
    true = [c.label for c in splits["test"].clips]
    report = {
        "model": "log-mel mean+std (2x64) -> standardise -> logistic regression",
        "C": best_c,
        "dev_accuracy_by_C": {str(c): a for c, a in dev_accuracy.items()},
        "ravdess_test_8": _scores(true, predicted),
        "ravdess_test_meld7": _scores(
            [RAVDESS_TO_MELD[t] for t in true], [RAVDESS_TO_MELD[p] for p in predicted]
        ),
    }

    emodb_all = read_emodb(settings)
    emodb = [c for c in emodb_all if c.emotion is not None]  # boredom has no MELD class
    emodb_features = load_log_mels(emodb_all, spec, settings).subset(emodb)
    emodb_predicted = [
        RAVDESS_TO_MELD[RAVDESS_EMOTIONS[i]] for i in model.predict(summary_statistics(emodb_features))
    ]
    report["emodb_meld6"] = _scores([c.emotion for c in emodb], emodb_predicted) | {"clips": len(emodb)}
    log.info("audio_baseline", **{k: v for k, v in report.items() if k.startswith(("ravdess", "emodb"))})
    return report
