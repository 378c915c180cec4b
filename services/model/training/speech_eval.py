"""Scores on acted speech (RAVDESS held-out actors, EmoDB): the audio branch alone and the fused
model, in RAVDESS's eight classes and in MELD's seven.

- ``speech_8``: the audio embedding's speech head (RAVDESS's eight emotions); only rows with an
  8-class label (RAVDESS).
- ``speech_meld7``: the same head, its class mapped to MELD-7 (calm -> neutral, ...).
- ``audio_meld7``: the audio branch's own MELD-7 emotion head.
- ``fused_meld7``: the fused emotion head, with whatever modalities the rows carry.

MELD-7 rows without a MELD label (EmoDB's boredom) are left out and counted.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from services.model.core.forward import forward_batches
from services.model.training.data.examples import ExampleSet
from services.model.training.data.speech import RAVDESS_EMOTIONS, RAVDESS_TO_MELD
from shared.contract.labels import EMOTIONS, MODALITIES

AUDIO = MODALITIES.index("audio")
_SPEECH_TO_MELD = np.asarray([EMOTIONS.index(RAVDESS_TO_MELD[label]) for label in RAVDESS_EMOTIONS])


def _scores(true: np.ndarray, predicted: np.ndarray) -> dict[str, float | int]:
    return {
        "count": int(len(true)),
        "accuracy": float(accuracy_score(true, predicted)),
        "weighted_f1": float(f1_score(true, predicted, average="weighted", zero_division=0)),
    }


@torch.no_grad()
def speech_scores(model, examples: ExampleSet, batch_size: int = 128, device="cpu") -> dict:
    from services.model.training.evaluation import batches_of

    fused, audio, speech, used = [], [], [], []
    for _, output in forward_batches(model, len(examples), batch_size, batches_of(examples), device):
        fused.append(output.emotion_logits.argmax(-1).cpu())
        audio.append(output.modality_emotion_logits[:, AUDIO].argmax(-1).cpu())
        used.append(output.modalities_used[:, AUDIO].cpu())
        if output.speech_logits is not None:
            speech.append(output.speech_logits.argmax(-1).cpu())
    emotion = examples.emotion.numpy()
    has_meld = emotion >= 0
    audio_used = torch.cat(used).numpy()
    report: dict = {
        "rows": len(examples),
        "rows_without_meld_label": int((~has_meld).sum()),
        "rows_without_audio": int((~audio_used).sum()),
        "fused_meld7": _scores(emotion[has_meld], torch.cat(fused).numpy()[has_meld]),
        "audio_meld7": _scores(emotion[has_meld], torch.cat(audio).numpy()[has_meld]),
    }
    if speech:
        predicted = torch.cat(speech).numpy()
        report["speech_meld7"] = _scores(emotion[has_meld], _SPEECH_TO_MELD[predicted][has_meld])
        if examples.speech is not None:
            labels = examples.speech.numpy()
            known = labels >= 0
            if known.any():
                report["speech_8"] = _scores(labels[known], predicted[known])
    return report


def evaluate_speech_corpora(model, spec, split: str = "test", batch_size: int = 128, device="cpu") -> dict:
    """``speech_scores`` on RAVDESS's actors of ``split`` (test: the held-out actors 21-24) and,
    for the test split, on EmoDB; corpora absent from EMOTION_SPEECH_DIR are left out."""
    from services.model.training.data.speech import corpus_available, speech_examples

    report = {}
    for corpus in ("ravdess", "emodb"):
        if not corpus_available(corpus):
            continue
        examples = speech_examples(corpus, split, spec)
        if examples is not None:
            report[corpus] = speech_scores(model, examples, batch_size, device)
    return report


def speech_card_lines(metrics_by_split: dict[str, dict]) -> list[str]:
    """Model-card section for the acted-speech scores in a checkpoint's metrics (empty if none)."""
    rows = []
    for key, report in metrics_by_split.items():
        scores = report.get("speech") if isinstance(report, dict) else None
        if not scores:
            continue
        for name, label in (
            ("speech_8", "audio branch, 8 classes (speech head)"),
            ("audio_meld7", "audio branch, MELD-7 (audio head)"),
            ("speech_meld7", "audio branch, MELD-7 (speech head mapped)"),
            ("fused_meld7", "fused model, MELD-7"),
        ):
            if name in scores:
                s = scores[name]
                rows.append(
                    f"| {key} | {label} | {s['count']} | {s['accuracy']:.3f} | {s['weighted_f1']:.3f} |"
                )
    if not rows:
        return []
    return [
        "## Acted speech (audio branch)",
        "",
        "The audio branch was trained on RAVDESS (24 North American actors, two fixed sentences, 8 "
        "acted emotions; calm counted as neutral in MELD-7), speaker-independent: actors 17-20 select "
        "the checkpoint, actors 21-24 are held out. EmoDB (German, clips cut/padded to 2 s, boredom "
        "left out) is a cross-language check. **Caveat:** acted, studio-recorded, deliberately "
        "emotional speech is not sitcom speech: expect the audio branch to be much weaker on real "
        "videos (laughter tracks, overlapping talk, music, subtle delivery) than these numbers.",
        "",
        "| data | output | n | accuracy | weighted F1 |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
