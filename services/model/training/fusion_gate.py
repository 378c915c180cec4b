"""Fitting the fusion gate (``moodreel gate CHECKPOINT --output-dir DIR``) on dev rows only.

The checkpoint's network stays frozen: every dev row's modality embeddings are computed once and
cached (``<data_dir>/cache/gate/``, beside the joint rows and speech states of
``services.model.training.calibration.joint_sets``), so fitting a gate takes seconds. The rows
are calibration's dev sets (MELD dev text, spoken by espeak-ng, spoken under a bed, transcripts
over a bed, RAVDESS actors 17-20 with their sentence and alone); the gate only ever sees the
rows where two or more modalities are used. Each candidate design (pooling, experts, the fused
heads as one more expert, a hidden layer, regularisation) is scored by two-fold cross-validation
on those rows, the best one refitted on all of them and stored in the output checkpoint
(``ModelConfig.fusion_gate`` and the gate's parameters; every other weight unchanged).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import f1_score

from services.model.core.gate import FusionGate, expert_logits
from services.model.training.data.examples import ExampleSet
from services.model.training.metrics import expected_calibration_error
from shared.contract.labels import MODALITIES
from shared.logging import get_logger

log = get_logger(__name__)

HEADS = ("emotion", "sentiment")
STEPS = 300
LEARNING_RATE = 0.05


@dataclass(frozen=True)
class GateDesign:
    pooling: str
    experts: str
    joint: bool
    hidden: int
    weight_decay: float

    @property
    def name(self) -> str:
        joint = "+joint" if self.joint else ""
        return f"{self.pooling}/{self.experts}{joint}/hidden{self.hidden}/wd{self.weight_decay:g}"


DESIGNS = tuple(
    GateDesign(pooling, experts, joint, hidden, decay)
    for pooling, experts, joint, hidden, decay in itertools.product(
        ("log_linear", "mixture"), ("solo", "head"), (False, True), (0, 8), (1e-3, 1e-1)
    )
)


@torch.no_grad()
def collect_embeddings(model, examples: ExampleSet, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Every row's three modality embeddings (``[N, 3, D]``, the "absent" one where a modality
    is not used), the modalities used and the labels, from the frozen network."""
    from services.model.core.forward import forward_batches

    captured: list[torch.Tensor] = []
    # The fusion's first layer reads the concatenated embeddings exactly once per forward.
    hook = model.fusion[0].register_forward_hook(
        lambda _m, args, _out: captured.append(args[0].float().cpu())
    )
    used = []
    device = next(model.parameters()).device

    def inputs_for(rows: slice):
        return examples.batch(torch.arange(rows.start, rows.stop)).inputs

    try:
        for _, output in forward_batches(model, len(examples), batch_size, inputs_for, device):
            used.append(output.modalities_used.cpu())
    finally:
        hook.remove()
    embeddings = torch.cat(captured).view(len(examples), len(MODALITIES), -1)
    return {
        "embeddings": embeddings,
        "used": torch.cat(used),
        "emotion": examples.emotion.clone(),
        "sentiment": examples.sentiment.clone(),
    }


def cached_embeddings(model, sets: dict[str, ExampleSet], cache_dir: Path, tag: str) -> dict[str, dict]:
    collected = {}
    for name, examples in sets.items():
        path = cache_dir / f"{name}-{tag}-{len(examples)}.safetensors"
        if path.is_file():
            collected[name] = load_file(path)
            continue
        collected[name] = collect_embeddings(model, examples)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in collected[name].items()}, path)
    return collected


@dataclass
class ExpertRows:
    """The rows a gate is fitted on: raw expert logits per head, presence, labels, source."""

    logits: dict[str, torch.Tensor]  # head -> [N, E, C]
    modality_emotion: torch.Tensor  # [N, 3, 7]: each modality's own emotion head (the benchmark's "alone")
    present: torch.Tensor  # [N, E] bool
    targets: dict[str, torch.Tensor]  # head -> [N]
    source: torch.Tensor  # [N] index into sources
    sources: list[str]

    def subset(self, rows: torch.Tensor) -> ExpertRows:
        return ExpertRows(
            {h: v[rows] for h, v in self.logits.items()},
            self.modality_emotion[rows],
            self.present[rows],
            {h: v[rows] for h, v in self.targets.items()},
            self.source[rows],
            self.sources,
        )


@torch.no_grad()
def expert_rows(model, gate: FusionGate, collected: dict[str, dict]) -> ExpertRows:
    """Expert logits of every row with two or more modalities used, for ``gate``'s design."""
    model.fusion_gate = gate
    logits: dict[str, list] = {h: [] for h in HEADS}
    own: list[torch.Tensor] = []
    present, targets, source = [], {h: [] for h in HEADS}, []
    sources = sorted(collected)
    for index, name in enumerate(sources):
        data = collected[name]
        rows = data["used"].sum(-1) >= 2
        if not rows.any():
            continue
        used = data["used"][rows]
        embeddings = [data["embeddings"][rows, m] for m in range(len(MODALITIES))]
        fused = model._fuse(embeddings, used.unsqueeze(-1).float())
        emotion, sentiment, mask = expert_logits(model, embeddings, used, fused)
        logits["emotion"].append(emotion)
        logits["sentiment"].append(sentiment)
        own.append(
            torch.stack([h(e) for h, e in zip(model.modality_emotion_heads, embeddings, strict=True)], 1)
        )
        present.append(mask)
        for head in HEADS:
            targets[head].append(data[head][rows])
        source.append(torch.full((int(rows.sum()),), index))
    return ExpertRows(
        {h: torch.cat(v) for h, v in logits.items()},
        torch.cat(own),
        torch.cat(present),
        {h: torch.cat(v) for h, v in targets.items()},
        torch.cat(source),
        sources,
    )


def _row_weights(rows: ExpertRows, head: str) -> torch.Tensor:
    """Each source weighs the same in the loss (RAVDESS and MELD rows are not equally many)."""
    known = rows.targets[head] >= 0
    weights = torch.zeros(len(known))
    for index in rows.source.unique():
        here = (rows.source == index) & known
        weights[here] = 1.0 / here.sum().clamp(min=1)
    return weights / weights.sum()


def fit_gate(gate: FusionGate, rows: ExpertRows, weight_decay: float) -> FusionGate:
    """Temperatures and gate weights by the source-balanced negative log-likelihood, with an L2
    penalty on the gate's weights (never on the temperatures)."""
    gate.train()
    for head_index, head in enumerate(HEADS):
        weights = _row_weights(rows, head)
        targets = rows.targets[head].clamp(min=0)
        params = [gate.gates[head_index].net.parameters()]
        optimizer = torch.optim.Adam([gate.log_temperature, *itertools.chain(*params)], lr=LEARNING_RATE)
        for _ in range(STEPS):
            optimizer.zero_grad()
            pooled, _ = gate.pool(head_index, rows.logits[head], rows.present)
            nll = torch.nn.functional.nll_loss(pooled, targets, reduction="none")
            penalty = sum((p**2).sum() for n, p in gate.gates[head_index].named_parameters() if "weight" in n)
            loss = (nll * weights).sum() + weight_decay * penalty
            loss.backward()
            # Only this head's temperatures move with this head's loss.
            gate.log_temperature.grad[1 - head_index] = 0
            optimizer.step()
    gate.eval()
    with torch.no_grad():  # what is measured is what a float16 checkpoint serves
        for parameter in gate.parameters():
            parameter.copy_(parameter.half().float())
    return gate


@torch.no_grad()
def score(gate: FusionGate, rows: ExpertRows) -> dict[str, Any]:
    """Per source: pooled emotion weighted F1 and ECE, and the best single modality's F1 there
    (each modality's own head, as the benchmark scores it)."""
    pooled, weights = gate.pool(0, rows.logits["emotion"], rows.present)
    report: dict[str, Any] = {}
    for index, name in enumerate(rows.sources):
        here = (rows.source == index) & (rows.targets["emotion"] >= 0)
        if not here.any():
            continue
        targets = rows.targets["emotion"][here].numpy()
        single = max(
            f1_score(targets, rows.modality_emotion[here, m].argmax(-1).numpy(), average="weighted")
            for m in range(len(MODALITIES))
            if rows.present[here, m].all()
        )
        predicted = pooled[here].argmax(-1).numpy()
        report[name] = {
            "rows": int(here.sum()),
            "weighted_f1": round(float(f1_score(targets, predicted, average="weighted")), 4),
            "best_single_weighted_f1": round(float(single), 4),
            "ece": round(expected_calibration_error(pooled[here].exp().numpy(), targets), 4),
            "mean_weights": [round(float(w), 3) for w in weights[here].mean(0)],
        }
    return report


def _objective(report: dict[str, Any]) -> float:
    """The design's cross-validated worth: the worst source's margin over its best single
    modality, then the mean ECE as a small tie-breaker."""
    margins = [s["weighted_f1"] - s["best_single_weighted_f1"] for s in report.values()]
    return (
        min(margins)
        + 0.25 * float(np.mean(margins))
        - 0.1 * float(np.mean([s["ece"] for s in report.values()]))
    )


def _merge(folds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        name: {
            key: round(float(np.mean([f[name][key] for f in folds])), 4)
            for key in ("weighted_f1", "best_single_weighted_f1", "ece")
        }
        for name in folds[0]
    }


def select_and_fit(model, collected: dict[str, dict], seed: int = 0) -> tuple[FusionGate, dict[str, Any]]:
    """Two-fold cross-validation of every design on the dev rows, then the best refitted on all."""
    generator = torch.Generator().manual_seed(seed)
    candidates: dict[str, Any] = {}
    best: tuple[float, GateDesign] | None = None
    for design in DESIGNS:
        template = FusionGate(design.pooling, design.experts, design.joint, design.hidden)
        rows = expert_rows(model, template, collected)
        order = torch.randperm(len(rows.present), generator=generator)
        halves = (order[: len(order) // 2], order[len(order) // 2 :])
        folds = []
        for fit_rows, held_out in (halves, halves[::-1]):
            torch.manual_seed(seed)
            gate = FusionGate(design.pooling, design.experts, design.joint, design.hidden)
            fit_gate(gate, rows.subset(fit_rows), design.weight_decay)
            folds.append(score(gate, rows.subset(held_out)))
        merged = _merge(folds)
        objective = _objective(merged)
        candidates[design.name] = {"objective": round(objective, 4), "sources": merged}
        log.info("gate_design_scored", design=design.name, objective=round(objective, 4))
        if best is None or objective > best[0]:
            best = (objective, design)
    design = best[1]
    torch.manual_seed(seed)
    gate = FusionGate(design.pooling, design.experts, design.joint, design.hidden)
    rows = expert_rows(model, gate, collected)
    fit_gate(gate, rows, design.weight_decay)
    report = {
        "design": {
            "pooling": design.pooling,
            "experts": design.experts,
            "joint": design.joint,
            "hidden": design.hidden,
            "weight_decay": design.weight_decay,
        },
        "cross_validated": candidates,
        "fitted_on_all_dev": score(gate, rows),
        "temperatures": {
            h: [round(float(t), 4) for t in gate.log_temperature[i].exp()] for i, h in enumerate(HEADS)
        },
        "rows": int(len(rows.present)),
    }
    return gate, report


def fit_checkpoint_gate(checkpoint_dir: Path, output_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Fit the gate on ``checkpoint_dir``'s dev rows; write the checkpoint with it to
    ``output_dir`` (float16 weights, as published); returns the fit report."""
    from services.model.core.checkpoint import load_checkpoint, read_checkpoint_document, save_checkpoint
    from services.model.training.calibration import DEV_SETS, joint_sets
    from shared.settings import get_settings

    started = time.perf_counter()
    loaded = load_checkpoint(checkpoint_dir)
    model = loaded.model
    if model.fusion_gate is not None:
        raise ValueError(f"{checkpoint_dir} already has a fusion gate")
    if any(model.fused_temperature.flatten() != 1) or any(model.modality_temperature.flatten() != 1):
        raise ValueError("fit the gate before calibrating: the gate reads the raw logits")
    sets = joint_sets(model, loaded.spec, "dev", DEV_SETS, seed)
    encoder = (model.config.audio_encoder or "inline").replace(":", "_").replace("/", "_")
    weights = read_checkpoint_document(checkpoint_dir)["weights"]["sha256"][:12]
    tag = f"dev-{seed}-{loaded.spec.hash}-{encoder}-{weights}"
    collected = cached_embeddings(model, sets, get_settings().data_dir / "cache" / "gate", tag)
    gate, report = select_and_fit(model, collected, seed)
    model.fusion_gate = gate
    design = report["design"]
    model.config = model.config.replace(
        fusion_gate=design["pooling"],
        fusion_gate_experts=design["experts"],
        fusion_gate_joint=design["joint"],
        fusion_gate_hidden=design["hidden"],
    )
    report["fitted_on"] = {"split": "dev", "seed": seed, "sets": {name: len(s) for name, s in sets.items()}}
    report["seconds"] = round(time.perf_counter() - started, 1)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("name", "version", "created_at", "git_sha")}
    meta["fusion_gate"] = {k: v for k, v in report.items() if k != "cross_validated"}
    save_checkpoint(output_dir, model, loaded.spec, meta, weights_dtype=torch.float16)
    (Path(output_dir) / "fusion_gate_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
