"""Inputs without a face: the published default against the checkpoint it was composed from.

The visual branch joins the default through a zero-initialised fusion adapter while the text and
speech branches and the fusion stay frozen, so every input without a face must give exactly the
earlier outputs and MELD's and RAVDESS's figures cannot move. This scores both checkpoints on the
same rows (MELD's transcripts, RAVDESS's speech; no video, so the visual modality is absent) and
reports the largest difference of any probability and both checkpoints' metrics. Results:
bench/results/default-parity.json.

    .venv/bin/python bench/default_parity.py --before DIR [--after DIR] [--splits dev,test]

``--before``: e.g. the default as committed before, ``git archive <rev> services/model/checkpoints/default``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.model.core.checkpoint import load_checkpoint  # noqa: E402
from services.model.training.caches import (  # noqa: E402
    audio_cache_dir,
    cache_audio_states,
    cache_text_hidden,
    text_cache_dir,
    uses_text_cache,
)
from services.model.training.config import TrainConfig  # noqa: E402
from services.model.training.data.sources import load_source  # noqa: E402
from services.model.training.evaluation import evaluate_examples, predict, summary  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "default-parity.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=ROOT / "services/model/checkpoints/default")
    parser.add_argument("--splits", default="dev,test")
    parser.add_argument("--sources", default="meld,ravdess")
    parser.add_argument("--limit", type=int, default=0, help="first N rows per set (to try the bench out)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()
    before, after = load_checkpoint(args.before), load_checkpoint(args.after)
    shared = [
        name
        for name, value in before.model.state_dict().items()
        if name.startswith(("text.", "audio.", "fusion.", "emotion_head.", "sentiment_head."))
    ]
    state = after.model.state_dict()
    weights_equal = all(torch.equal(before.model.state_dict()[name], state[name]) for name in shared)
    rows = {}
    started = time.perf_counter()
    for source in args.sources.split(","):
        for split in args.splits.split(","):
            # The earlier checkpoint's features: no frames (MELD here has transcripts only and
            # RAVDESS no video), so the visual modality is absent from every row.
            config = TrainConfig(
                sources=(source,), modalities=("text", "audio"), spec=before.spec, progress=False
            )
            config.cache_dir = ROOT / "var" / "cache" / "meld"
            examples = load_source(source, split, config)
            if examples is None:
                continue
            if uses_text_cache(before.model, config) and bool(examples.modality_mask[:, 0].any()):
                cache_text_hidden(before.model, examples, 128, "cpu", False, text_cache_dir(config))
            if before.model.audio.caches_states:
                cache_audio_states(before.model, examples, 16, "cpu", False, audio_cache_dir())
            outputs = [predict(loaded.model, examples, 128, "cpu") for loaded in (before, after)]
            difference = max(
                float(np.abs(a - b).max()) for a, b in zip(outputs[0][:2], outputs[1][:2], strict=True)
            )
            rows[f"{source}_{split}"] = {
                "rows": len(examples),
                "max_abs_probability_difference": difference,
                "before": summary(evaluate_examples(before.model, examples, 128, "cpu")),
                "after": summary(evaluate_examples(after.model, examples, 128, "cpu")),
            }
            print(source, split, len(examples), difference, flush=True)
    result = {
        "before": {"path": str(args.before), "name": before.meta.get("name"), "spec_hash": before.spec.hash},
        "after": {"path": str(args.after), "name": after.meta.get("name"), "spec_hash": after.spec.hash},
        "frozen_weights_equal": weights_equal,
        "sets": rows,
        "identical": weights_equal and all(r["max_abs_probability_difference"] == 0.0 for r in rows.values()),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "note": "shared dev VM",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not args.limit:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sets"}, indent=2))


if __name__ == "__main__":
    main()
