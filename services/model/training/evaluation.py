"""Evaluation: ``moodreel evaluate CHECKPOINT --split test [--out report.json]``, and the scores a
training run reports (``score_sources``: per source and split; ``score_baseline``: the checkpoint
the retraining guard compares against). Every score runs through the one forward path
(``services.model.core.forward``).

Scores a checkpoint on a MELD split (text-only from the label CSVs; the split's clips are used when
a feature cache of them exists): accuracy, weighted F1 (MELD's headline metric), macro F1,
per-class precision/recall/F1, expected calibration error, confusion-matrix PNGs, a JSON report and
a generated model card.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from services.model.core.checkpoint import load_checkpoint
from services.model.core.forward import forward_batches
from services.model.training.caches import (
    TEXT_COLUMN,
    audio_cache_dir,
    cache_audio_states,
    cache_text_hidden,
    text_cache_dir,
    uses_text_cache,
)
from services.model.training.config import TrainConfig
from services.model.training.data.examples import ExampleSet
from services.model.training.data.sources import load_source
from services.model.training.data.speech import SPEECH_CORPORA, corpus_available
from services.model.training.metrics import classification_report, emit_metric_line, save_confusion_png
from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.logging import get_logger

log = get_logger(__name__)


def batches_of(examples: ExampleSet):
    """``rows -> ModelInputs``: the model batch of those rows of an ExampleSet (``forward_batches``)."""
    return lambda rows: examples.batch(torch.arange(rows.start, rows.stop)).inputs


@torch.no_grad()
def predict(model, examples: ExampleSet, batch_size: int, device, criterion=None):
    """Softmax probabilities of both heads for every row (and mean losses when given a criterion)."""
    emotion, sentiment, losses = [], [], {}
    for rows, output in forward_batches(model, len(examples), batch_size, batches_of(examples), device):
        emotion.append(output.emotion_logits.float().softmax(-1).cpu())
        sentiment.append(output.sentiment_logits.float().softmax(-1).cpu())
        if criterion is not None:
            targets = examples.emotion[rows].to(device), examples.sentiment[rows].to(device)
            terms = criterion(output, *targets)
            for name, value in {"total": terms.total, **terms.parts}.items():
                losses.setdefault(name, []).append(float(value.detach()) * len(targets[0]))
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


def score_sources(model, config: TrainConfig, splits, device, *, prefix: str, epoch: int) -> dict:
    """Reports per source and split. Each source is scored on its own ("test" is the first
    source's, "ravdess_test" another's), so MELD's numbers are never mixed with acted speech;
    EmoDB is a cross-language check."""
    metrics = {}
    sources = list(config.sources)
    if "ravdess" in sources and corpus_available("emodb"):
        sources.append("emodb")
    for split in splits:
        for source in dict.fromkeys(sources):
            examples = load_source(source, split, config)
            if examples is None:
                continue
            key = split if source == config.sources[0] else f"{source}_{split}"
            if uses_text_cache(model, config) and bool(examples.modality_mask[:, TEXT_COLUMN].any()):
                # The float16 states the epochs were scored on (computed once, or read from disk).
                cache_text_hidden(
                    model, examples, config.eval_batch_size, device, config.progress, text_cache_dir(config)
                )
            if config.cache_audio_states and model.audio.caches_states:
                cache_audio_states(
                    model, examples, config.audio_cache_batch_size, device, config.progress, audio_cache_dir()
                )
            report = evaluate_examples(model, examples, config.eval_batch_size, device)
            if source in SPEECH_CORPORA:
                from services.model.training.speech_eval import speech_scores

                report["speech"] = speech_scores(model, examples, config.eval_batch_size, device)
            metrics[key] = report
            emit_metric_line(f"{prefix}_{key}", epoch, summary(report))
    return metrics


def score_baseline(path: Path, config: TrainConfig, device) -> dict:
    """The baseline checkpoint's dev reports on this run's sources, with its own FeatureSpec."""
    import tarfile
    import tempfile

    # A SageMaker channel holding the deployed model.tar.gz, or a checkpoint directory.
    archives = [path] if path.is_file() else sorted(path.glob("*.tar.gz"))
    archive = archives[0] if archives and not (path / "checkpoint.json").is_file() else None
    with tempfile.TemporaryDirectory(prefix="moodreel-baseline-") as scratch:
        directory = path
        if archive is not None:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            directory = Path(scratch)
        baseline = load_checkpoint(directory, device=device)
        scoring = dataclasses.replace(config, spec=baseline.spec)
        metrics = score_sources(baseline.model, scoring, ["dev"], device, prefix="baseline", epoch=0)
    return {
        "name": str(baseline.meta.get("name")),
        "version": str(baseline.meta.get("version")),
        "spec_hash": baseline.spec.hash,
        "metrics": metrics,
    }
