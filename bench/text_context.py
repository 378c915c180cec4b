"""Dialogue context for the mpnet text branch, measured on MELD dev at utterance level (cheap).

all-mpnet-base-v2's frozen layers run once (the states `moodreel train --preset text-mpnet` caches
under <data_dir>/cache/text-hidden); its pretrained top layer then gives one mean-pooled embedding
per utterance. A linear probe (inverse-sqrt class weights, full-batch AdamW) is trained on MELD
train and scored on dev for each context variant, over several seeds; or (``--protocol dev-cv``,
when only dev's states are at hand) trained and scored by 5-fold cross-validation over dev's
dialogues (a dialogue's turns never sit on both sides):

- ``none``: the utterance alone
- ``prev1``/``prev2``: plus the embedding of each of the 1 or 2 previous turns, split by whether
  the previous speaker is the utterance's own (the speaker enters as same/other)
- ``prev1+next1``: plus the following turn

Selection is on dev only; the test split is not read. Results: bench/results/text-context.json.

    nice -n 10 .venv/bin/python bench/text_context.py [--seeds 3] [--protocol train-dev|dev-cv]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.model.core.network import MoodreelModel  # noqa: E402
from services.model.training.caches import cache_text_hidden, text_cache_dir  # noqa: E402
from services.model.training.cli import config_from_strings, load_preset  # noqa: E402
from services.model.training.data.meld import read_split  # noqa: E402
from services.model.training.data.sources import load_split  # noqa: E402
from services.model.training.losses import class_weights  # noqa: E402
from services.model.training.metrics import classification_report  # noqa: E402
from shared.contract.labels import EMOTIONS, SENTIMENTS  # noqa: E402
from shared.settings import get_settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "text-context.json"
VARIANTS = {"none": (0, 0), "prev1": (1, 0), "prev2": (2, 0), "prev1+next1": (1, 1)}


@torch.no_grad()
def utterance_embeddings(
    model: MoodreelModel, examples, cache_dir: Path, batch_size: int = 256
) -> torch.Tensor:
    cache_text_hidden(model, examples, 128, "cpu", False, cache_dir)
    hidden, mask = examples.tensors["text_hidden"], examples.tensors["attention_mask"]
    out = torch.zeros(len(examples), model.text.hidden_size)
    for start in range(0, len(examples), batch_size):
        rows = slice(start, start + batch_size)
        states = model.text._run_trained_layers(hidden[rows].float(), mask[rows])
        weights = mask[rows].unsqueeze(-1).float()
        out[rows] = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return out


def context_features(embeddings: torch.Tensor, dialogues, previous: int, following: int) -> torch.Tensor:
    """[own, per previous turn: same-speaker part, other-speaker part, per next turn: embedding]."""
    width = embeddings.shape[1]
    blocks = [embeddings]
    index, speakers, dialogue_of = 0, [], []
    for number, dialogue in enumerate(dialogues):
        for utterance in dialogue:
            speakers.append(utterance.speaker)
            dialogue_of.append(number)
            index += 1
    count = len(speakers)
    for distance in range(1, previous + 1):
        same, other = torch.zeros(count, width), torch.zeros(count, width)
        for row in range(distance, count):
            if dialogue_of[row - distance] == dialogue_of[row]:
                target = same if speakers[row - distance] == speakers[row] else other
                target[row] = embeddings[row - distance]
        blocks += [same, other]
    for distance in range(1, following + 1):
        after = torch.zeros(count, width)
        for row in range(count - distance):
            if dialogue_of[row + distance] == dialogue_of[row]:
                after[row] = embeddings[row + distance]
        blocks.append(after)
    return torch.cat(blocks, 1)


def probe(train_x, train_y, dev_x, seed: int, classes: int, steps: int = 100) -> np.ndarray:
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(train_x.shape[1], classes))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.05)
    weights = class_weights(train_y, classes, "sqrt")
    x = (train_x - mean) / std
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(x), train_y, weight=weights, label_smoothing=0.1).backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        return torch.softmax(head((dev_x - mean) / std), 1).numpy()


def dialogue_folds(dialogues, folds: int) -> torch.Tensor:
    """Fold number of each utterance: whole dialogues, dealt round-robin."""
    return torch.tensor([number % folds for number, dialogue in enumerate(dialogues) for _ in dialogue])


def score_variant(splits, protocol: str, previous: int, following: int, seed: int, folds: int = 5) -> dict:
    row = {}
    for head, labels in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
        if protocol == "train-dev":
            features = {s: context_features(e, d, previous, following) for s, (e, d, _) in splits.items()}
            train_y = getattr(splits["train"][2], head)
            probabilities = probe(features["train"], train_y, features["dev"], seed, len(labels))
            targets = getattr(splits["dev"][2], head).numpy()
        else:
            embeddings, dialogues, examples = splits["dev"]
            features = context_features(embeddings, dialogues, previous, following)
            labels_all = getattr(examples, head)
            fold = dialogue_folds(dialogues, folds)
            probabilities = np.zeros((len(labels_all), len(labels)), dtype=np.float32)
            for k in range(folds):
                held = fold == k
                probabilities[held.numpy()] = probe(
                    features[~held], labels_all[~held], features[held], seed, len(labels)
                )
            targets = labels_all.numpy()
        report = classification_report(targets, probabilities, labels)
        row[head] = {k: report[k] for k in ("weighted_f1", "macro_f1")}
        if head == "emotion":
            row["emotion_per_class_f1"] = {c: report["per_class"][c]["f1"] for c in labels}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--protocol", choices=("train-dev", "dev-cv"), default="train-dev")
    args = parser.parse_args(argv)
    # One thread: the probes are thousands of tiny steps, and on a loaded machine a second thread's
    # barrier waits cost more than it computes.
    torch.set_num_threads(1)
    started = time.monotonic()
    config = config_from_strings(
        load_preset("text-mpnet") | {"output_dir": str(ROOT / "var" / "train" / "probe")}
    )
    model = MoodreelModel(config.model.replace(trained_modalities=("text",))).eval()
    meld_dir = Path(config.meld_dir or get_settings().meld_dir)
    splits = {}
    for split in ("train", "dev") if args.protocol == "train-dev" else ("dev",):
        examples = load_split(split, config)
        dialogues = read_split(meld_dir, split).dialogues()
        splits[split] = (utterance_embeddings(model, examples, text_cache_dir(config)), dialogues, examples)
    results = {}
    for name, (previous, following) in VARIANTS.items():
        scores = [
            score_variant(splits, args.protocol, previous, following, seed) for seed in range(args.seeds)
        ]
        summary = {}
        for head in ("emotion", "sentiment"):
            for metric in ("weighted_f1", "macro_f1"):
                values = [s[head][metric] for s in scores]
                summary[f"dev_{head}_{metric}"] = {
                    "mean": round(statistics.mean(values), 4),
                    "std": round(statistics.pstdev(values), 4),
                    "seeds": [round(v, 4) for v in values],
                }
        summary["dev_emotion_per_class_f1_seed0"] = {
            k: round(v, 4) for k, v in scores[0]["emotion_per_class_f1"].items()
        }
        results[name] = summary
        print(
            name,
            json.dumps({k: v for k, v in summary.items() if "weighted" in k or "macro" in k}),
            flush=True,
        )
    document = {
        "what": "linear probe on frozen all-mpnet-base-v2 utterance embeddings (mean-pooled, pretrained top)",
        "protocol": args.protocol,
        "variants": results,
        "seeds": args.seeds,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
