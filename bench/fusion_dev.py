"""Three questions about the default's fusion, answered on dev rows only (no test split is read):

1. **Rows with one modality**: the fusion gate leaves them to the fused heads. Would each
   modality's own head read them better? Emotion and sentiment weighted F1 of both on MELD dev
   text only, RAVDESS actors 17-20 audio only and FER2013 PublicTest faces alone.
2. **Calibration**: what ``moodreel calibrate`` would fit and keep on this checkpoint
   (``services.model.training.calibration``: the checkpoint's own temperatures reset, fitted on
   calibration's ``dev_sets``), each dev set's ECE before and after (in-sample, which flatters the
   temperatures).
3. **Each dev set as the multimodal bench scores its test sets** (``multimodal.score_set``): fused
   weighted F1, its margin over the best single modality on the same rows, and ECE beside a
   perfectly calibrated model's reading on as many rows, so two
   fusion gates (say the default's and a refit, ``--checkpoint``) are compared on the same rows.

    .venv/bin/python bench/fusion_dev.py [--checkpoint DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

# The multimodal bench's per-set scoring (this folder is on the path of a bench run).
from multimodal import score_set
from sklearn.metrics import f1_score

from services.model.core.checkpoint import load_checkpoint
from services.model.training.calibration import collect_logits, dev_sets, fit
from shared.contract.labels import MODALITIES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "fusion-dev.json"
DEFAULT_CHECKPOINT = ROOT / "services" / "model" / "checkpoints" / "default"
SINGLE = {"meld_text": "text", "ravdess_audio": "audio", "fer_faces": "visual"}


def single_modality_rows(model, examples, modality: str) -> dict:
    collected = collect_logits(model, examples)
    index = MODALITIES.index(modality)
    used = collected["used"]
    report = {}
    for head in ("emotion", "sentiment"):
        targets = collected[f"{head}_target"]
        rows = (used.sum(-1) == 1) & used[:, index] & (targets >= 0)
        if not rows.any():
            continue
        scores = {
            "fused": f1_score(targets[rows], collected[head][rows].argmax(-1), average="weighted"),
            "own_head": f1_score(
                targets[rows], collected[f"modality_{head}"][rows, index].argmax(-1), average="weighted"
            ),
        }
        report[head] = {"rows": int(rows.sum())} | {k: round(float(v), 4) for k, v in scores.items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    loaded = load_checkpoint(args.checkpoint)
    sets = dev_sets(loaded.model, loaded.spec, 0)
    single = {
        name: single_modality_rows(loaded.model, sets[name], modality) for name, modality in SINGLE.items()
    }
    scored = {}
    for name, examples in sets.items():
        scores = score_set(loaded.model, examples)
        scored[name] = {
            "rows": scores["rows"],
            "fused_weighted_f1": scores["fused"]["weighted_f1"],
            "fused_minus_best_single_weighted_f1": scores["fused_minus_best_single_weighted_f1"],
            "ece": scores["ece"],
            "ece_if_calibrated": scores["ece_if_calibrated"],
            "ece_p_value": scores["ece_p_value"],
            "rows_with_audio": scores["single"].get("audio", {}).get("alone", {}).get("rows", 0),
        }
    # fit() resets the network's temperatures first and only returns what it fitted: the
    # checkpoint on disk is untouched.
    calibration = fit(loaded.model, sets)
    report = {
        "checkpoint": str(args.checkpoint.relative_to(ROOT))
        if args.checkpoint.is_relative_to(ROOT)
        else str(args.checkpoint),
        "feature_spec_hash": loaded.spec.hash,
        "calibrated": "calibration" in loaded.meta,
        "split": "dev",
        "sets": {name: len(examples) for name, examples in sets.items()},
        "single_modality_rows": single,
        "per_set": scored,
        "calibration": {
            "temperatures": {"fused": calibration["fused"], "modality": calibration["modality"]},
            "ece_per_set": calibration["dev_sets"],
        },
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(single, indent=1))
    for name, scores in calibration["dev_sets"].items():
        print(name, json.dumps(scores))


if __name__ == "__main__":
    main()
