"""Fusion you can trust: each modality alone and fused, on composed test sets (test splits only).

Sets (``services.model.training.data.joint``, drawn with a fixed seed; sizes fit two shared CPU cores, a
Whisper pass per speech row being the cost):

- ``meld_spoken``: MELD test utterances read by espeak-ng voices (label: MELD's, from the text).
- ``meld_text``: the same rows, text only (what the service gives without audio).
- ``meld_text_all``: every MELD test utterance with text, text only (2,610 rows: the text-only
  path measured without a draw's luck).
- ``meld_spoken_bed``: the same kind under noise/music/tone beds at 5-15 dB SNR.
- ``meld_bed``: MELD test transcripts over a non-speech bed (noise, notes, tone) and no voice.
- ``ravdess_sentence``: RAVDESS actors 21-24 with their own sentence as transcript (label: the voice).
- ``ravdess_audio``: the same clips, audio only.
- ``fer_faces``: FER2013 PrivateTest faces as the visual branch receives them (label: the face).
- ``fer_faces_neutral_text``: the same faces, each beside a MELD test line labelled neutral (the
  words carry no emotion: the face is the evidence).
- ``fer_faces_matching_text``: the same faces, each beside a MELD test line of the face's emotion.
- ``combined``: all of the above together but ``meld_text_all``.
- ``no_evidence``: generated media (silence, noise, a tone) without a transcript, through the real
  feature pipeline and ``predict_fn``: every label the service gives there is a label without
  evidence.

Per set: weighted F1 and accuracy of the fused emotion head and of each modality's own head (on
the rows where that modality is used, beside the fused head on exactly those rows), the fused
head's ECE (15 bins), rows without evidence. Each fused-minus-best-single margin carries a 95 %
paired bootstrap interval (``BOOTSTRAP`` resamples of the set's rows, the same rows for the fused
and the single reading), so a miss can be told from a few rows' luck: on 300 rows a weighted F1
moves by about +-0.03 between draws. ECE gets no bootstrap interval (resampling duplicates rows,
which raises ECE itself); instead each set carries what a perfectly calibrated model with the same
confidences would read on as many rows (``ece_if_calibrated``: mean and 95th percentile of 2,000
consistency draws, each row right with probability equal to its confidence) and the share of those
draws reading at least the measured ECE (``ece_p_value``: small means the miscalibration is the
model's, not the set's size; a perfectly calibrated model reads 0.06-0.07 on the 240-row RAVDESS
sets). Beds: the share of
text-driven labels a non-speech bed changes (fused with the bed against the same rows text only).
Language: the share of MELD test dialogues whose transcript the detector calls non-English (each
would lose its text).
Targets: fused >= best single modality - 0.01 weighted F1 on every set, ECE <= 0.06, a bed
changes <= 5 % of text-driven labels, zero labels without evidence.

    .venv/bin/python bench/multimodal.py [--checkpoint DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from services.model.core.checkpoint import load_checkpoint
from services.model.training.calibration import collect_logits, joint_sets
from services.model.training.data.examples import ExampleSet
from services.model.training.data.joint import face_examples
from services.model.training.metrics import calibration_error_if_calibrated, expected_calibration_error
from shared.contract.labels import MODALITIES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "multimodal.json"
DEFAULT_CHECKPOINT = ROOT / "services" / "model" / "checkpoints" / "default"
TEXT, AUDIO = MODALITIES.index("text"), MODALITIES.index("audio")
# None: the whole split (RAVDESS actors 21-24: 240 clips). The speech rows' Whisper pass is the cost.
SIZES = {"meld_spoken": 600, "meld_spoken_bed": 300, "meld_bed": 450, "ravdess_sentence": None}
FACES = 1500
BOOTSTRAP = 1000
SEED = 1  # not calibration's dev seed: other rows, other voices
TARGETS = {
    "fused_minus_best_single_weighted_f1": ">= -0.01",
    "ece": "<= 0.06",
    "bed_changed_text_labels": "<= 0.05",
    "labels_without_evidence": "== 0",
}


def without(examples: ExampleSet, modality: int) -> ExampleSet:
    mask = examples.modality_mask.clone()
    mask[:, modality] = False
    return ExampleSet(examples.tensors, mask, examples.emotion, examples.sentiment, examples.speech)


def _scores(targets: np.ndarray, logits: np.ndarray) -> dict[str, float | int]:
    predicted = logits.argmax(-1)
    return {
        "rows": int(len(targets)),
        "weighted_f1": round(float(f1_score(targets, predicted, average="weighted", zero_division=0)), 4),
        "accuracy": round(float(accuracy_score(targets, predicted)), 4),
    }


def weighted_f1(targets: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """sklearn's weighted F1 (zero_division=0) from one confusion matrix: the bootstrap calls it
    thousands of times."""
    cells = np.bincount(targets * classes + predicted, minlength=classes * classes)
    confusion = cells.reshape(classes, classes)
    true_positive = np.diag(confusion).astype(np.float64)
    support, found = confusion.sum(1), confusion.sum(0)
    denominator = support + found
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(classes), where=denominator > 0)
    return float((f1 * support).sum() / max(1, support.sum()))


def margin_interval(
    targets: np.ndarray, fused: np.ndarray, singles: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[float] | None:
    """95 % interval of the fused-minus-best-single margin over resampled rows. ``singles``: per
    modality, (the rows it is used on, its own logits there) within the set."""
    rng = np.random.default_rng(SEED)
    classes = fused.shape[-1]
    fused_label = fused.argmax(-1)
    single_labels = {name: (rows, logits.argmax(-1)) for name, (rows, logits) in singles.items()}
    margins = []
    for _ in range(BOOTSTRAP):
        draw = rng.integers(0, len(targets), len(targets))
        per_modality = []
        for rows, labels in single_labels.values():
            picked = draw[rows[draw]]
            if len(picked):
                per_modality.append(
                    weighted_f1(targets[picked], fused_label[picked], classes)
                    - weighted_f1(targets[picked], labels[picked], classes)
                )
        if per_modality:
            margins.append(min(per_modality))
    if not margins:
        return None
    return [round(float(np.percentile(margins, 2.5)), 4), round(float(np.percentile(margins, 97.5)), 4)]


def score_set(model, examples: ExampleSet) -> dict:
    collected = collect_logits(model, examples)
    used, targets = collected["used"], collected["emotion_target"]
    evidence = used.any(-1)
    known = (targets >= 0) & evidence
    fused = collected["emotion"]
    probabilities = torch.softmax(torch.as_tensor(fused[known]), -1).numpy()
    ece = expected_calibration_error(probabilities, targets[known])
    # What a perfectly calibrated model with the same confidences would read on as many rows.
    calibrated = calibration_error_if_calibrated(probabilities, seed=SEED)
    report: dict = {
        "rows": int(len(targets)),
        "rows_without_evidence": int((~evidence).sum()),
        "fused": _scores(targets[known], fused[known]),
        "ece": round(ece, 4),
        "ece_if_calibrated": {
            "mean": round(float(calibrated.mean()), 4),
            "p95": round(float(np.percentile(calibrated, 95)), 4),
        },
        # (k + 1) / (n + 1): a finite number of draws can never show a p-value of 0.
        "ece_p_value": round(float(((calibrated >= ece).sum() + 1) / (len(calibrated) + 1)), 4),
        "single": {},
    }
    margins, singles = [], {}
    for index, name in enumerate(MODALITIES):
        rows = known & used[:, index]
        if rows.sum() == 0:
            continue
        single = _scores(targets[rows], collected["modality_emotion"][rows, index])
        fused_here = _scores(targets[rows], fused[rows])
        report["single"][name] = {"alone": single, "fused_on_same_rows": fused_here}
        margins.append(fused_here["weighted_f1"] - single["weighted_f1"])
        singles[name] = (rows[known], collected["modality_emotion"][known, index])
    report["fused_minus_best_single_weighted_f1"] = round(min(margins), 4) if margins else None
    report["fused_minus_best_single_weighted_f1_95"] = margin_interval(targets[known], fused[known], singles)
    return report


def bed_change_rate(model, bedded: ExampleSet) -> dict:
    """Fused labels with the bed against the same rows text only."""
    with_bed = collect_logits(model, bedded)["emotion"].argmax(-1)
    text_only = collect_logits(model, without(bedded, AUDIO))["emotion"].argmax(-1)
    audio_used = bedded.modality_mask[:, AUDIO].numpy()
    return {
        "rows": int(len(with_bed)),
        "audio_passed_the_speech_gate": int(audio_used.sum()),
        "changed_text_labels": round(float((with_bed != text_only).mean()), 4),
    }


def no_evidence_labels(served_dir: Path) -> dict:
    """Media without a transcript and without speech, through the served path: labels given."""
    from services.model.serving.inference import build_response, model_fn, predict_fn
    from shared.contract.features.pipeline import extract_features

    served = model_fn(served_dir)
    sources = {
        "silence": "anullsrc=r=16000:cl=mono:d=6",
        "pink_noise": "anoisesrc=color=pink:amplitude=0.1:duration=6",
        "tone": "sine=frequency=440:duration=6",
    }
    utterances = labels = 0
    with tempfile.TemporaryDirectory() as folder:
        for name, source in sources.items():
            path = Path(folder) / f"{name}.m4a"
            subprocess.run(
                ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-c:a", "aac", str(path)],
                check=True,
                timeout=120,
            )
            bundle = extract_features(path, served.spec, None, window_seconds=2.0)
            for prediction in build_response(predict_fn(bundle, served)).utterances:
                utterances += 1
                labels += prediction.emotion is not None or prediction.sentiment is not None
    return {"utterances": utterances, "labels_without_evidence": labels}


def language_false_alarms() -> dict:
    from services.model.training.data.meld import read_split
    from shared.contract.features.language import detect_language
    from shared.settings import get_settings

    dialogues = read_split(get_settings().meld_dir, "test").dialogues()
    guesses = [detect_language([u.text for u in dialogue]) for dialogue in dialogues]
    other = [g.code for g in guesses if g.code not in (None, "en")]
    return {
        "dialogues": len(guesses),
        "undetermined": sum(g.code is None for g in guesses),
        "detected_not_english": len(other),
        "not_english_rate": round(len(other) / max(1, len(guesses)), 4),
        "codes": sorted(set(other)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model
    built = joint_sets(model, loaded.spec, "test", SIZES, SEED)
    whole_text = joint_sets(model, loaded.spec, "test", {"meld_text": None}, SEED)["meld_text"]
    faces = {
        text: face_examples("test", loaded.spec, text=text, count=FACES, seed=SEED)
        for text in ("none", "neutral", "matching")
    }
    sets = {
        "meld_spoken": built["meld_spoken"],
        "meld_text": without(built["meld_spoken"], AUDIO),
        "meld_text_all": whole_text,
        "meld_spoken_bed": built["meld_spoken_bed"],
        "meld_bed": built["meld_bed"],
        "ravdess_sentence": built["ravdess_sentence"],
        "ravdess_audio": without(built["ravdess_sentence"], TEXT),
        "fer_faces": faces["none"],
        "fer_faces_neutral_text": faces["neutral"],
        "fer_faces_matching_text": faces["matching"],
    }
    # The composed sets together (the whole text split would drown them).
    sets["combined"] = ExampleSet.concat([v for k, v in sets.items() if k != "meld_text_all"])
    report: dict = {
        "checkpoint": str(args.checkpoint.relative_to(ROOT))
        if args.checkpoint.is_relative_to(ROOT)
        else str(args.checkpoint),
        "feature_spec_hash": loaded.spec.hash,
        "calibrated": "calibration" in loaded.meta,
        "seed": SEED,
        "sizes": SIZES | {"fer_faces": FACES},
        "sets": {name: score_set(model, examples) for name, examples in sets.items()},
        "beds": {
            "meld_bed": bed_change_rate(model, built["meld_bed"]),
            "meld_spoken_bed": bed_change_rate(model, built["meld_spoken_bed"]),
        },
        "no_evidence": no_evidence_labels(args.checkpoint),
        "language": language_false_alarms(),
        "targets": TARGETS,
    }
    checks = {
        "fused_within_0.01_of_best_single": all(
            s["fused_minus_best_single_weighted_f1"] is None
            or s["fused_minus_best_single_weighted_f1"] >= -0.01
            for s in report["sets"].values()
        ),
        "ece_at_most_0.06": all(s["ece"] <= 0.06 for s in report["sets"].values()),
        "bed_changes_at_most_5pct": report["beds"]["meld_bed"]["changed_text_labels"] <= 0.05,
        "zero_labels_without_evidence": report["no_evidence"]["labels_without_evidence"] == 0,
    }
    report["checks"] = checks
    report["seconds"] = round(time.monotonic() - started, 1)
    report["machine"] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, scores in report["sets"].items():
        singles = {m: s["alone"]["weighted_f1"] for m, s in scores["single"].items()}
        print(f"{name}: fused {scores['fused']} single {singles} ece {scores['ece']}")
    print(json.dumps({"beds": report["beds"], "no_evidence": report["no_evidence"], "checks": checks}))


if __name__ == "__main__":
    main()
