"""Recipe sweep of the all-mpnet-base-v2 text branch on MELD: dev selects, test is read once.

Every variant is the ``text-mpnet`` preset with a few overrides, trained through ``moodreel train``
with MELD test left unread (``--evaluate-test false``). The variant with the best dev emotion
weighted F1 is then trained again with other seeds, and only those runs (the selected recipe)
score MELD test. Runs live under ``var/train/text-sweep/<variant>-seed<k>``; a run whose
checkpoint already holds the same hyperparameters is read, not trained again, so an interrupted
sweep resumes. Writes bench/results/text-sweep.json: each variant's dev figures and time, the
selected recipe's seeds (mean and standard deviation, dev and test), per-class F1, the machine
and its load.

    .venv/bin/python bench/text_sweep.py [--variants base,epochs4,...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "text-sweep.json"
RUNS = ROOT / "var" / "train" / "text-sweep"
PRESET = "text-mpnet"

# Every variant names each setting the sweep varies, so it means the same run whatever the preset
# holds now. "base" is the recipe as first published (one epoch, the utterance alone); each later
# variant changes one or two things against its parent.
BASE = {
    "epochs": "1",
    "lr-text-encoder": "1e-4",
    "class-weighting": "sqrt",
    "spec-context-turns": "0",
    "spec-context-next": "true",
    "spec-max-tokens": "48",
}
FOUR_EPOCHS = BASE | {"epochs": "4"}
FASTER = FOUR_EPOCHS | {"lr-text-encoder": "3e-4"}
VARIANTS: dict[str, dict[str, str]] = {
    "base": BASE,
    "epochs4": FOUR_EPOCHS,
    "epochs4-lr3e-4": FASTER,
    "epochs4-inverse": FOUR_EPOCHS | {"class-weighting": "inverse"},
    "context1": FASTER | {"spec-context-turns": "1", "spec-max-tokens": "96"},
    "context2": FASTER | {"spec-context-turns": "2", "spec-max-tokens": "128"},
    "previous2": FASTER | {"spec-context-turns": "2", "spec-context-next": "false", "spec-max-tokens": "128"},
}
SELECTION = ("dev", "emotion", "weighted_f1")
TARGETS = {
    ("test", "emotion", "weighted_f1"): (">=", 0.63),
    ("test", "sentiment", "weighted_f1"): (">=", 0.70),
    ("test", "emotion", "macro_f1"): (">=", 0.45),
    ("test", "emotion", "ece"): ("<=", 0.05),
}


def _flags(overrides: dict[str, str], seed: int, evaluate_test: bool) -> dict[str, str]:
    # No early stop: every epoch of the decayed schedule runs (the best dev epoch is kept).
    return overrides | {
        "seed": str(seed),
        "evaluate-test": "true" if evaluate_test else "false",
        "patience": overrides["epochs"],
    }


def _recorded(checkpoint: Path) -> dict | None:
    path = checkpoint / "checkpoint.json"
    return json.loads(path.read_text())["meta"] if path.is_file() else None


def trainer_values(flags: dict[str, str]) -> dict[str, str]:
    """The preset's settings with ``flags`` over them, keyed as ``config_from_strings`` takes them."""
    from services.model.training.cli import load_preset

    values = load_preset(PRESET)
    for flag, value in flags.items():
        # --spec-<name> and --model-<name> are the spec's and the model config's fields.
        for table in ("spec", "model"):
            if flag.startswith(f"{table}-"):
                flag = f"{table}.{flag.removeprefix(f'{table}-')}"
        values[flag.replace("-", "_")] = value
    return values


def stored_run_matches(meta: dict, flags: dict[str, str]) -> bool:
    """Whether a stored run was trained with these flags (compared as the trainer parsed them)."""
    from pydantic import ValidationError

    from services.model.training.cli import config_from_strings
    from services.model.training.config import hyperparameters
    from shared.contract.features.spec import FeatureSpec

    wanted = config_from_strings(trainer_values(flags))
    # A run stopped before its final scoring stored no metrics: it is trained again.
    stored = meta.get("training", {}).get("hyperparameters", {}) if "metrics" in meta else {}
    spec = {key.removeprefix("spec."): value for key, value in stored.items() if key.startswith("spec.")}
    # The spec is compared by its hash, which a setting added later leaves alone at its default.
    try:
        if not stored or FeatureSpec.model_validate(spec).hash != wanted.spec.hash:
            return False
    except ValidationError:  # a spec setting this code no longer has
        return False
    rest = {key: value for key, value in hyperparameters(wanted).items() if not key.startswith("spec.")}
    return all(stored.get(key) == value for key, value in rest.items())


def train(name: str, overrides: dict[str, str], seed: int, evaluate_test: bool) -> tuple[dict, bool]:
    """One run of the preset with ``overrides``: its meta, and whether a stored run was reused."""
    output = RUNS / f"{name}-seed{seed}"
    flags = _flags(overrides, seed, evaluate_test)
    meta = _recorded(output / "checkpoint")
    if meta is not None and stored_run_matches(meta, flags):
        print(f"{name} seed {seed}: stored run reused", flush=True)
        return meta, True
    command = [str(ROOT / ".venv" / "bin" / "moodreel"), "train", "--preset", PRESET]
    command += ["--output-dir", str(output), "--progress", "false"]
    for flag, value in flags.items():
        command += [f"--{flag}", value]
    print(" ".join(command), flush=True)
    subprocess.run(["nice", "-n", "5", *command], check=True, cwd=ROOT)
    return _recorded(output / "checkpoint"), False


def figures(meta: dict, reused: bool) -> dict:
    """A run's figures (unrounded: rounding is for the page) and how it was produced."""
    from shared.contract.features.spec import FeatureSpec

    training = meta["training"]
    spec = {
        key.removeprefix("spec."): value
        for key, value in training["hyperparameters"].items()
        if key.startswith("spec.")
    }
    result = {
        "spec_hash": FeatureSpec.model_validate(spec).hash,
        "device": training.get("device"),
        "machine": training.get("machine"),
        # Tokenising and the frozen pass over the lower layers count where the run built them;
        # a run reading the caches another one built pays only its epochs.
        "seconds_including_caches_built": round(training["seconds"], 1),
        "best_epoch": meta["best_epoch"],
        "reused_stored_run": reused,
        "trained_at": meta.get("created_at"),
        "trained_at_git_sha": meta.get("git_sha"),
    }
    for split, heads in meta["metrics"].items():
        for head, report in heads.items():
            for metric in ("weighted_f1", "macro_f1", "accuracy", "ece"):
                result[f"{split}_{head}_{metric}"] = report[metric]
            if head == "emotion":
                result[f"{split}_emotion_per_class_f1"] = {
                    label: round(values["f1"], 4) for label, values in report["per_class"].items()
                }
    return result


def seed_spread(runs: list[dict]) -> dict:
    """Mean and standard deviation over the seeds of every metric."""
    summary = {}
    for key, value in runs[0].items():
        if isinstance(value, float) and key.startswith(("dev_", "test_")):
            values = [run[key] for run in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key] = {"mean": statistics.fmean(values), "sd": sd}
    return summary


def sweep(names: list[str], seeds: int) -> dict:
    """Every variant on dev, then the best one's seeds with test scored: the results document."""
    swept = {name: figures(*train(name, VARIANTS[name], 0, evaluate_test=False)) for name in names}
    selection_key = "_".join(SELECTION)
    selected = max(names, key=lambda name: swept[name][selection_key])
    # Seed 0 is the swept run trained again with test scored (training is deterministic on one
    # device, so its dev figures are those it was selected on: the dev mean leans upward).
    runs = [
        figures(*train(f"{selected}-scored", VARIANTS[selected], seed, evaluate_test=True))
        for seed in range(seeds)
    ]
    spread = seed_spread(runs)
    targets = {}
    for (split, head, metric), (relation, bound) in TARGETS.items():
        measured = spread[f"{split}_{head}_{metric}"]["mean"]
        met = measured >= bound if relation == ">=" else measured <= bound
        targets[f"{split}_{head}_{metric}"] = {"target": f"{relation} {bound}", "mean": measured, "met": met}
    return {
        "benchmark": f"{PRESET} recipe sweep on MELD: variants scored on dev only, the best "
        f"({selection_key}) trained with {seeds} seeds, and only those runs read test; ECE is the "
        "trained branch's own (uncalibrated), the mean over the seeds",
        "preset": PRESET,
        "variants": {name: {"overrides": VARIANTS[name], "seed0": swept[name]} for name in names},
        "selected": selected,
        "selected_seeds": runs,
        "selected_spread": spread,
        "targets": targets,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3, help="runs of the selected recipe")
    args = parser.parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    document = sweep(names, args.seeds) | {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "git_sha": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({"selected": document["selected"], "targets": document["targets"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
