"""The fusion stage: the fusion layers and fused heads trained on joint rows over frozen branches.

The branches (text encoder, speech encoder, their projections and own heads) stay exactly as the
checkpoint has them; each row's modality embeddings are computed once, and only what combines
them trains: the fusion's dense layers, its per-modality adapters and the fused emotion and
sentiment heads (a few hundred thousand weights, seconds per epoch on a CPU). The rows come from
``services.model.training.data.joint``: MELD text alone, MELD read by espeak-ng voices (with and without a
noise or music bed) and MELD transcripts over a bed, all labelled by the text; RAVDESS with its
neutral sentence and RAVDESS audio alone, labelled by the voice. So the fusion sees both
modalities together for the first time, learns from data of each kind which one carries the label,
and, with modality dropout, every combination. Each source weighs the same in the loss, however
many rows it has. The epoch kept is the best on the dev rows (mean fused emotion weighted F1 over
the joint dev sets); then ``moodreel calibrate`` fits the temperatures of the result.

    moodreel fuse CHECKPOINT --output-dir DIR     # make train-fusion
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from services.model.training.data.examples import ExampleSet
from shared.contract.labels import MODALITIES
from shared.logging import get_logger

log = get_logger(__name__)
TEXT, AUDIO = MODALITIES.index("text"), MODALITIES.index("audio")
# Rows per source (None: all), sized so the Whisper pass over the speech rows (about 200 of them)
# fits two CPU cores shared with other work; "ravdess_audio" reuses ravdess_sentence's clips. On
# an idle machine or a GPU, more rows are the first lever.
TRAIN_SETS: dict[str, int | None] = {
    "meld_text": 1500,
    "meld_spoken": 64,
    "meld_spoken_bed": 32,
    "meld_bed": 100,
    "ravdess_sentence": 96,
}
# The epoch's dev rows: smaller than calibration's and the gate's DEV_SETS, as every epoch scores them.
DEV_SETS: dict[str, int | None] = {
    "meld_spoken": 300,
    "meld_spoken_bed": 150,
    "meld_bed": 150,
    "ravdess_sentence": None,
}


def _text_masked(examples: ExampleSet) -> ExampleSet:
    mask = examples.modality_mask.clone()
    mask[:, TEXT] = False
    return ExampleSet(examples.tensors, mask, examples.emotion, examples.sentiment, examples.speech)


@torch.no_grad()
def embed(model, examples: ExampleSet, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's modality embeddings ``[N, 3, D]`` (the absent embedding where unused) and the
    modalities used ``[N, 3]``, with the branches in eval mode."""
    model.eval()
    embeddings, used = [], []
    order = torch.arange(len(examples))
    for start in range(0, len(examples), batch_size):
        inputs = examples.batch(order[start : start + batch_size]).inputs
        use = model._modalities_to_use(inputs)
        rows = []
        for index in range(len(MODALITIES)):
            embedding = model.absent[index].expand(len(use), -1).clone()
            picked = use[:, index].nonzero(as_tuple=True)[0]
            if picked.numel():
                embedding[picked] = model._encode(index, inputs, picked).to(embedding.dtype)
            rows.append(embedding)
        embeddings.append(torch.stack(rows, 1))
        used.append(use)
    return torch.cat(embeddings), torch.cat(used)


def _fused_logits(model, embeddings: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    absent = model.absent[None].expand_as(embeddings)
    embeddings = torch.where(used[..., None], embeddings, absent)
    hidden = model._fuse(list(embeddings.unbind(1)), used[..., None].to(embeddings.dtype))
    return model.emotion_head(hidden), model.sentiment_head(hidden)


def _fusion_parameters(model) -> list[torch.nn.Parameter]:
    parts = [model.fusion, model.emotion_head, model.sentiment_head]
    if model.fusion_adapters is not None:
        parts.append(model.fusion_adapters)
    return [p for part in parts for p in part.parameters()]


def _dev_score(model, dev: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    model.eval()
    scores = {}
    with torch.no_grad():
        for name, (embeddings, used, targets) in dev.items():
            known = (targets >= 0) & used.any(-1)
            logits, _ = _fused_logits(model, embeddings[known], used[known])
            scores[name] = float(
                f1_score(
                    targets[known].numpy(), logits.argmax(-1).numpy(), average="weighted", zero_division=0
                )
            )
    return scores


def train_fusion(
    checkpoint_dir: Path,
    output_dir: Path,
    *,
    epochs: int = 30,
    learning_rate: float = 1e-3,
    modality_dropout: float = 0.3,
    label_smoothing: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the fusion of ``checkpoint_dir`` on the joint rows; write the result to ``output_dir``."""
    from services.model.core.checkpoint import load_checkpoint, save_checkpoint
    from services.model.training.calibration import joint_sets

    started = time.perf_counter()
    torch.manual_seed(seed)
    loaded = load_checkpoint(checkpoint_dir)
    model = loaded.model
    train_sets = joint_sets(model, loaded.spec, "train", TRAIN_SETS, seed)
    train_sets["ravdess_audio"] = _text_masked(train_sets["ravdess_sentence"])
    dev_sets = joint_sets(model, loaded.spec, "dev", DEV_SETS, 0)
    dev_sets["ravdess_audio"] = _text_masked(dev_sets["ravdess_sentence"])

    parts, weights = [], []
    for examples in train_sets.values():
        embeddings, used = embed(model, examples)
        parts.append((embeddings, used, examples.emotion, examples.sentiment))
        weights.append(torch.full((len(examples),), 1.0 / len(examples)))
    embeddings, used, emotion, sentiment = (torch.cat(column) for column in zip(*parts, strict=True))
    row_weight = torch.cat(weights) * len(weights)  # every source sums to 1; mean weight ~1
    dev = {name: (*embed(model, examples), examples.emotion) for name, examples in dev_sets.items()}

    # Only these are optimised; the embeddings are constants, so nothing else receives a gradient
    # (requires_grad is left as loaded: it decides which encoder weights the checkpoint stores).
    parameters = _fusion_parameters(model)
    optimiser = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    history = [{"epoch": 0, "dev": _dev_score(model, dev)}]
    best = (
        float(np.mean(list(history[0]["dev"].values()))),
        0,
        {k: v.clone() for k, v in model.state_dict().items()},
    )
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(emotion), generator=generator)
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            use = used[rows]
            dropped = use & (torch.rand(use.shape, generator=generator) < modality_dropout)
            kept = use & ~dropped
            use = torch.where(kept.any(-1, keepdim=True), kept, use)  # never hide every modality
            emotion_logits, sentiment_logits = _fused_logits(model, embeddings[rows], use)
            loss = 0.0
            for logits, targets in ((emotion_logits, emotion[rows]), (sentiment_logits, sentiment[rows])):
                known = targets >= 0
                if known.any():
                    per_row = F.cross_entropy(
                        logits[known], targets[known], label_smoothing=label_smoothing, reduction="none"
                    )
                    loss = loss + (per_row * row_weight[rows][known]).sum() / row_weight[rows][known].sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        scores = _dev_score(model, dev)
        history.append({"epoch": epoch, "dev": {k: round(v, 4) for k, v in scores.items()}})
        mean = float(np.mean(list(scores.values())))
        if mean > best[0]:
            best = (mean, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    model.eval()
    report = {
        "epochs": epochs,
        "best_epoch": best[1],
        "dev_mean_emotion_weighted_f1": round(best[0], 4),
        "dev_before": {k: round(v, 4) for k, v in history[0]["dev"].items()},
        "dev_after": history[best[1]]["dev"],
        "train_rows": {name: len(s) for name, s in train_sets.items()},
        "hyperparameters": {
            "learning_rate": learning_rate,
            "modality_dropout": modality_dropout,
            "label_smoothing": label_smoothing,
            "seed": seed,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta = {
        k: v
        for k, v in loaded.meta.items()
        if k not in ("calibration", "created_at", "git_sha", "trained_modalities")
    }
    meta["fusion_stage"] = report
    save_checkpoint(output_dir, model, loaded.spec, meta, weights_dtype=torch.float16)
    log.info(
        "fusion_stage_done", output_dir=str(output_dir), **{k: report[k] for k in ("best_epoch", "seconds")}
    )
    return report
