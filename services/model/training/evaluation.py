"""Evaluation: ``moodreel evaluate CHECKPOINT --split test [--out report.json]``.

Scores a checkpoint on a MELD split (text-only from the label CSVs; the split's clips are used when
a feature cache of them exists): accuracy, weighted F1 (MELD's headline metric), macro F1,
per-class precision/recall/F1, expected calibration error, confusion-matrix PNGs, a JSON report and
a generated model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from services.model.training.data.examples import ExampleSet
from services.model.training.metrics import classification_report, save_confusion_png
from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.logging import get_logger

log = get_logger(__name__)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(model, examples: ExampleSet, batch_size: int, device, criterion=None):
    """Softmax probabilities of both heads for every row (and mean losses when given a criterion)."""
    model.eval()
    device = torch.device(device)
    emotion, sentiment, losses = [], [], {}
    order = torch.arange(len(examples))
    for start in range(0, len(examples), batch_size):
        batch = examples.batch(order[start : start + batch_size])
        with autocast(device):
            output = model(batch.inputs.to(device))
        emotion.append(output.emotion_logits.float().softmax(-1).cpu())
        sentiment.append(output.sentiment_logits.float().softmax(-1).cpu())
        if criterion is not None:
            terms = criterion(output, batch.emotion.to(device), batch.sentiment.to(device))
            for name, value in {"total": terms.total, **terms.parts}.items():
                losses.setdefault(name, []).append(float(value.detach()) * len(batch.emotion))
    totals = {name: sum(values) / len(examples) for name, values in losses.items()}
    return torch.cat(emotion).numpy(), torch.cat(sentiment).numpy(), totals


def evaluate_examples(model, examples: ExampleSet, batch_size: int, device, criterion=None) -> dict:
    emotion_probs, sentiment_probs, losses = predict(model, examples, batch_size, device, criterion)
    report: dict = {"losses": losses} if losses else {}
    for head, probs, targets, labels in (
        ("emotion", emotion_probs, examples.emotion, EMOTIONS),
        ("sentiment", sentiment_probs, examples.sentiment, SENTIMENTS),
    ):
        known = (targets >= 0).numpy()
        if known.any():
            report[head] = classification_report(targets.numpy()[known], probs[known], labels)
    return report


def summary(report: dict) -> dict[str, float]:
    """The scalar metrics of a report, flat (metric lines, TensorBoard)."""
    values = {f"loss_{name}": value for name, value in report.get("losses", {}).items()}
    for head in ("emotion", "sentiment"):
        if head in report:
            for metric in ("accuracy", "weighted_f1", "macro_f1", "ece"):
                values[f"{head}_{metric}"] = report[head][metric]
    return values


def evaluate_checkpoint(
    checkpoint_dir: Path,
    split: str = "test",
    out: Path | None = None,
    *,
    meld_dir: Path | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 128,
    device: str = "cpu",
    acted_speech: bool = True,
) -> dict:
    """Score a checkpoint on a MELD split; with ``out``, write the JSON report, confusion PNGs and
    the model card beside it. ``acted_speech``: also score an audio-trained checkpoint on the
    speech corpora (slow the first time: it builds their feature cache)."""
    from services.model.core.checkpoint import load_checkpoint
    from services.model.training.data.meld import load_text_examples
    from services.model.training.model_card import render_model_card
    from shared.settings import get_settings

    settings = get_settings()
    loaded = load_checkpoint(checkpoint_dir, device=device)
    examples = load_text_examples(
        Path(meld_dir or settings.meld_dir),
        split,
        loaded.spec,
        cache_dir or settings.data_dir / "cache" / "meld",
    )
    metrics = evaluate_examples(loaded.model, examples, batch_size, device)
    speech_scores = {}
    if acted_speech and "audio" in loaded.config.trained_modalities:
        from services.model.training.speech_eval import evaluate_speech_corpora

        # RAVDESS's actors of the same split (test: held-out actors 21-24) and EmoDB.
        speech_scores = evaluate_speech_corpora(loaded.model, loaded.spec, split, batch_size, device)
    report = {
        "checkpoint": {key: loaded.meta.get(key) for key in ("name", "version", "git_sha", "data_hash")},
        "split": split,
        "data": "MELD label CSVs (text only)",
        "trained_modalities": loaded.meta.get("trained_modalities"),
        "spec_hash": loaded.spec.hash,
        **metrics,
    }
    if speech_scores:
        report["acted_speech"] = speech_scores
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for head in ("emotion", "sentiment"):
            png = out.with_name(f"{out.stem}-{head}-confusion.png")
            save_confusion_png(
                metrics[head]["confusion_matrix"], metrics[head]["labels"], f"{head}, MELD {split}", png
            )
            report[f"{head}_confusion_png"] = png.name
        card = out.with_name(f"{out.stem}-model-card.md")
        speech_metrics = {f"{corpus}_{split}": {"speech": scores} for corpus, scores in speech_scores.items()}
        card.write_text(
            render_model_card(loaded.meta, loaded.config, loaded.spec, {split: metrics} | speech_metrics)
        )
        report["model_card"] = card.name
        out.write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "evaluated",
        split=split,
        emotion_weighted_f1=round(metrics["emotion"]["weighted_f1"], 4),
        sentiment_weighted_f1=round(metrics["sentiment"]["weighted_f1"], 4),
    )
    return report
