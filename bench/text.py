"""The text branch's MELD figures against the targets and the previous text branch.

Reads what the trainer measured and stored in each checkpoint's meta (dev selects the epoch; test
is scored once, by the run that produced the checkpoint) and the dialogue-context probe of
``bench/text_context.py``, and writes bench/results/text.json: emotion and sentiment weighted F1,
macro F1, per-class F1 and ECE on MELD dev and test, the seeds' spread, the machine and its load.

    .venv/bin/python bench/text.py --checkpoint var/train/text-mpnet/checkpoint \
        [--baseline services/model/checkpoints/default]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "text.json"
CONTEXT = ROOT / "bench" / "results" / "text-context.json"
TARGETS = {
    "test_emotion_weighted_f1": (">=", 0.63),
    "test_sentiment_weighted_f1": (">=", 0.70),
    "test_emotion_macro_f1": (">=", 0.45),
    "test_emotion_ece": ("<=", 0.05),
}


def figures(checkpoint: Path) -> dict:
    document = json.loads((checkpoint / "checkpoint.json").read_text())
    meta = document["meta"]
    result = {
        "name": meta.get("name"),
        "text_encoder": document["model_config"].get("text_encoder"),
        "weights_mb": round((checkpoint / "model.safetensors").stat().st_size / 1e6, 2),
        "training": {
            k: meta.get("training", {}).get(k) for k in ("device", "seconds", "best_epoch", "epochs_run")
        },
    }
    for split in ("dev", "test"):
        for head in ("emotion", "sentiment"):
            report = meta.get("metrics", {}).get(split, {}).get(head)
            if report is None:
                continue
            for metric in ("accuracy", "weighted_f1", "macro_f1", "ece"):
                result[f"{split}_{head}_{metric}"] = round(report[metric], 4)
            if head == "emotion":
                result[f"{split}_emotion_per_class_f1"] = {
                    label: round(values["f1"], 4) for label, values in report["per_class"].items()
                }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--baseline", type=Path, default=ROOT / "services" / "model" / "checkpoints" / "default"
    )
    args = parser.parse_args(argv)
    new = figures(args.checkpoint)
    targets = {}
    for name, (relation, bound) in TARGETS.items():
        value = new.get(name)
        met = None if value is None else (value >= bound if relation == ">=" else value <= bound)
        targets[name] = {"target": f"{relation} {bound}", "measured": value, "met": met}
    document = {
        "text_branch": new,
        "baseline": figures(args.baseline),
        "targets": targets,
        "context_probe": json.loads(CONTEXT.read_text()) if CONTEXT.is_file() else None,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(targets, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
