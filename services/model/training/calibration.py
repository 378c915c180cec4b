"""Fitting calibration temperatures (``moodreel calibrate CHECKPOINT``) on the dev sets of
``services.model.training.data.joint``; the temperatures themselves and how a loaded network
applies them: ``services.model.core.calibration``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.model.core.calibration import HEADS, PATTERNS, reset
from services.model.training.data.examples import ExampleSet
from shared.contract.labels import MODALITIES

MIN_ROWS = 30
# Temperatures outside this range mean a degenerate fit (a handful of rows, all right or wrong).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood of ``targets``."""
    from scipy.optimize import minimize_scalar  # fitting only: serving never needs scipy

    logits = torch.as_tensor(logits, dtype=torch.float64)
    targets = torch.as_tensor(targets, dtype=torch.int64)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), targets))

    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    return float(math.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


@torch.no_grad()
def collect_logits(model, examples: ExampleSet, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Raw fused and per-modality logits of every row, the modalities used and the labels."""
    from services.model.core.forward import forward_batches

    parts: dict[str, list[torch.Tensor]] = {}
    device = next(model.parameters()).device

    def inputs_for(rows: slice):
        return examples.batch(torch.arange(rows.start, rows.stop)).inputs

    for _, output in forward_batches(model, len(examples), batch_size, inputs_for, device):
        for name, value in (
            ("emotion", output.emotion_logits),
            ("sentiment", output.sentiment_logits),
            ("modality_emotion", output.modality_emotion_logits),
            ("modality_sentiment", output.modality_sentiment_logits),
            ("used", output.modalities_used),
        ):
            parts.setdefault(name, []).append(value.float().cpu() if name != "used" else value.cpu())
    collected = {name: torch.cat(values).numpy() for name, values in parts.items()}
    collected["emotion_target"] = examples.emotion.numpy()
    collected["sentiment_target"] = examples.sentiment.numpy()
    return collected


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits) / temperature, -1).numpy()


def fitted_temperature(logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """The NLL-optimal temperature of these rows with their ECE before and after it; ``kept`` only
    where it lowers that ECE. NLL and ECE can disagree (NLL weighs a few confident mistakes most),
    and a temperature that makes the shown confidences worse by the measure they are judged by has
    no place in the checkpoint."""
    from services.model.training.metrics import expected_calibration_error

    temperature = round(fit_temperature(logits, targets), 4)
    # Rounded as reported, so the report and the decision agree.
    before = round(expected_calibration_error(_softmax(logits), targets), 4)
    after = round(expected_calibration_error(_softmax(logits, temperature), targets), 4)
    return {
        "temperature": temperature,
        "rows": int(len(targets)),
        "ece_before": before,
        "ece_after": after,
        "kept": bool(after < before),
    }


def fit(model, dev_sets: Mapping[str, ExampleSet], batch_size: int = 64) -> dict[str, Any]:
    """Fit every temperature on the union of ``dev_sets`` (raw logits: the model's own
    temperatures are reset first); returns the calibration (the temperatures kept, see
    ``fitted_temperature``) with its fit report (rows per combination, every fit, dev ECE before
    and after)."""
    reset(model)
    per_set = {name: collect_logits(model, examples, batch_size) for name, examples in dev_sets.items()}
    merged = {key: np.concatenate([c[key] for c in per_set.values()]) for key in next(iter(per_set.values()))}
    patterns = (merged["used"].astype(np.int64) * (1 << np.arange(len(MODALITIES)))).sum(-1)
    calibration: dict[str, Any] = {"fused": {}, "modality": {}, "rows": {}, "fits": {}, "dev_sets": {}}
    for head in HEADS:
        targets = merged[f"{head}_target"]
        calibration["fused"][head], calibration["modality"][head] = {}, {}
        calibration["rows"][head], fits = {}, {}
        for index, pattern in enumerate(PATTERNS):
            rows = (patterns == index) & (targets >= 0)
            calibration["rows"][head][pattern] = int(rows.sum())
            if index and rows.sum() >= MIN_ROWS:
                fits[pattern] = fitted_temperature(merged[head][rows], targets[rows])
                if fits[pattern]["kept"]:
                    calibration["fused"][head][pattern] = fits[pattern]["temperature"]
        for m, modality in enumerate(MODALITIES):
            rows = merged["used"][:, m] & (targets >= 0)
            calibration["rows"][head][f"{modality}_head"] = int(rows.sum())
            if rows.sum() >= MIN_ROWS:
                name = f"{modality}_head"
                fits[name] = fitted_temperature(merged[f"modality_{head}"][rows, m], targets[rows])
                if fits[name]["kept"]:
                    calibration["modality"][head][modality] = fits[name]["temperature"]
        calibration["fits"][head] = fits
    for name, collected in per_set.items():
        calibration["dev_sets"][name] = _set_report(collected, calibration)
    return calibration


def _set_report(collected: dict[str, np.ndarray], calibration: dict[str, Any]) -> dict[str, Any]:
    from services.model.training.metrics import expected_calibration_error

    patterns = (collected["used"].astype(np.int64) * (1 << np.arange(len(MODALITIES)))).sum(-1)
    report: dict[str, Any] = {"rows": int(len(patterns))}
    for head in HEADS:
        targets = collected[f"{head}_target"]
        known = (targets >= 0) & (patterns > 0)
        if not known.any():
            continue
        temperatures = np.asarray(
            [calibration["fused"][head].get(PATTERNS[index], 1.0) for index in patterns[known]]
        )
        raw = _softmax(collected[head][known])
        calibrated = torch.softmax(
            torch.as_tensor(collected[head][known]) / torch.as_tensor(temperatures)[:, None], -1
        ).numpy()
        report[head] = {
            "ece_before": round(expected_calibration_error(raw, targets[known]), 4),
            "ece_after": round(expected_calibration_error(calibrated, targets[known]), 4),
        }
    return report


# The dev sets a calibration is fitted on (services.model.training.data.joint), with their row counts:
# every combination of modalities the default serves has rows (None: the whole split). The Whisper
# pass over the speech rows (about 1,800) is the cost, once: rows and states are cached. A source of
# a few hundred rows could not tell gate designs 0.01 apart: its weighted F1 moves by 0.03 between
# draws.
DEV_SETS: dict[str, int | None] = {
    "meld_text": None,
    "meld_spoken": None,
    "meld_spoken_bed": 450,
    "meld_bed": 450,
    "ravdess_sentence": None,
    "ravdess_audio": None,
}


# FER2013 PublicTest faces as the visual branch receives them, alone and beside a MELD dev line
# labelled neutral or with the face's emotion (``joint.face_examples``'s ``text``), labelled by the
# face: the only dev rows with a face. 1,000 per set: on 300 a source's weighted F1 moved by about
# 0.03 between draws, more than the margins the gate's designs are told apart by. The sets draw the
# same faces (the same seed).
FACE_DEV_SETS = {
    "fer_faces": "none",
    "fer_faces_neutral_text": "neutral",
    "fer_faces_matching_text": "matching",
}
FACE_DEV_ROWS = 1000


def dev_sets(model, spec, seed: int = 0, faces: Mapping[str, str] = FACE_DEV_SETS) -> dict[str, ExampleSet]:
    """Every dev set calibration, the fusion gate and their bench read: ``DEV_SETS`` and ``faces``."""
    from services.model.training.data.joint import face_examples

    sets = joint_sets(model, spec, "dev", DEV_SETS, seed)
    faces_sets = {
        name: face_examples("dev", spec, text=text, count=FACE_DEV_ROWS, seed=seed)
        for name, text in faces.items()
    }
    return sets | faces_sets


def joint_sets(model, spec, split: str, sizes: Mapping[str, int | None], seed: int, settings=None):
    """``{source: ExampleSet}`` of ``split`` with the speech encoder's states cached per set."""
    from services.model.training.data.joint import joint_examples, with_audio_states
    from shared.settings import get_settings

    settings = settings or get_settings()
    encoder = model.config.audio_encoder or "inline"
    sets = {}
    for source, count in sizes.items():
        examples = joint_examples(source, split, spec, count=count, seed=seed, settings=settings)
        name = f"{source}-{split}-{count}-{seed}-{spec.hash}-{encoder.replace(':', '_').replace('/', '_')}"
        cache = settings.data_dir / "cache" / "joint" / "states" / f"{name}.safetensors"
        sets[source] = with_audio_states(model, examples, cache)
    return sets


def calibrate_checkpoint(checkpoint_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Fit the checkpoint's temperatures on its dev sets and store them in its checkpoint.json
    (the weights are untouched); returns the stored calibration."""
    import json
    import time

    from services.model.core.checkpoint import META_FILE, load_checkpoint, read_checkpoint_document

    started = time.perf_counter()
    checkpoint_dir = Path(checkpoint_dir)
    loaded = load_checkpoint(checkpoint_dir)
    sets = dev_sets(loaded.model, loaded.spec, seed)
    fitted = fit(loaded.model, sets)
    fitted["fitted_on"] = {"split": "dev", "seed": seed, "sets": {name: len(s) for name, s in sets.items()}}
    fitted["seconds"] = round(time.perf_counter() - started, 1)
    document = read_checkpoint_document(checkpoint_dir)
    document["meta"]["calibration"] = fitted
    (checkpoint_dir / META_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return fitted
