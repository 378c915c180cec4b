"""Acted-speech accuracy of a checkpoint's audio branch: RAVDESS actors 17-20 (dev) and 21-24
(test, held out), 8 classes, audio only, and EmoDB (German, cross-language, not tuned on).

A frozen speech encoder's per-layer statistics come from the training cache
(``services.model.training.caches.cache_audio_states``), so the same clips are not encoded twice. Writes
``bench/results/speech.json``.

    .venv/bin/python bench/speech.py CHECKPOINT_DIR [--out bench/results/speech.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from services.model.core.checkpoint import load_checkpoint
from services.model.training.caches import audio_cache_dir, cache_audio_states
from services.model.training.data.speech import corpus_available, speech_examples
from services.model.training.speech_eval import speech_scores

RESULTS = Path(__file__).parent / "results" / "speech.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    loaded = load_checkpoint(args.checkpoint)
    report: dict = {
        "checkpoint": {
            "name": loaded.meta.get("name"),
            "best_epoch": loaded.meta.get("best_epoch"),
            "audio_encoder": loaded.config.audio_encoder,
            "audio_pooling": loaded.config.audio_pooling,
            "weights_megabytes": round((args.checkpoint / "model.safetensors").stat().st_size / 1e6, 2),
        },
        "scores": {},
    }
    for corpus, split in (("ravdess", "dev"), ("ravdess", "test"), ("emodb", "test")):
        if not corpus_available(corpus):
            continue
        examples = speech_examples(corpus, split, loaded.spec)
        if loaded.model.audio.caches_states:
            cache_audio_states(loaded.model, examples, 16, "cpu", False, audio_cache_dir())
        with torch.no_grad():
            report["scores"][f"{corpus}_{split}"] = speech_scores(loaded.model, examples)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for key, scores in report["scores"].items():
        eight = scores.get("speech_8", {})
        sys_line = f"{key}: 8-class acc {eight.get('accuracy', float('nan')):.3f}"
        sys_line += f", fused MELD-7 acc {scores['fused_meld7']['accuracy']:.3f}"
        print(sys_line)


if __name__ == "__main__":
    main()
