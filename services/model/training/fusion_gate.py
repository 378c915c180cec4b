"""Fitting the fusion gate (``moodreel gate CHECKPOINT --output-dir DIR``) on dev rows only.

The checkpoint's network stays frozen: every dev row's modality embeddings are computed once and
cached (``<data_dir>/cache/gate/``, beside the joint rows and speech states of
``services.model.training.calibration.joint_sets``), so fitting a gate takes seconds. The rows
are calibration's dev sets (MELD dev text, spoken by espeak-ng, spoken under a bed, transcripts
over a bed, RAVDESS actors 17-20 with their sentence and alone) and FER2013 PublicTest faces
beside a MELD dev line labelled neutral or with the face's emotion; the gate only ever sees the
rows where two or more modalities are used. Each candidate design (pooling, experts, the fused
heads as one more expert, a hidden layer, the modalities' agreement and a projection of their
embeddings as features, regularisation) is scored by two-fold cross-validation
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
# Two-fold cross-validation, repeated on this many shuffles: the smallest source (RAVDESS with
# speech) has at most 240 dev rows with two modalities, and one split's luck would pick among a
# hundred designs.
REPEATS = 2
ECE_WEIGHT = 0.25


@dataclass(frozen=True)
class GateDesign:
    pooling: str
    experts: str
    joint: bool
    hidden: int
    weight_decay: float
    agreement: bool = False
    embedding: int = 0
    temperature: bool = False

    @property
    def name(self) -> str:
        joint = "+joint" if self.joint else ""
        features = "reliability" + ("+agreement" if self.agreement else "")
        features += f"+embedding{self.embedding}" if self.embedding else ""
        features += "/own-temperature" if self.temperature else ""
        return f"{self.pooling}/{self.experts}{joint}/hidden{self.hidden}/wd{self.weight_decay:g}/{features}"

    def gate(self, dim: int) -> FusionGate:
        return FusionGate(
            self.pooling,
            self.experts,
            self.joint,
            self.hidden,
            self.agreement,
            self.embedding,
            dim,
            self.temperature,
        )


DESIGNS = tuple(
    GateDesign(pooling, experts, joint, hidden, decay, agreement, embedding, temperature)
    for pooling, experts, joint, hidden, decay, agreement, embedding, temperature in itertools.product(
        ("log_linear", "mixture"),
        ("solo", "head"),
        (False, True),
        # No linear gate (hidden 0) reached the best 25 of a grid with them, nor did weight decay
        # 1e-1 (it flattens every gate to equal weights): bench/results/fusion-gate-dev.json's history.
        (8,),
        (1e-3, 1e-2),
        (False, True),
        (0, 4),
        (False, True),
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
    embeddings: torch.Tensor  # [N, 3, D]: each modality's embedding ("absent" where unused)
    modality_emotion: torch.Tensor  # [N, 3, 7]: each modality's own emotion head (the benchmark's "alone")
    present: torch.Tensor  # [N, E] bool
    targets: dict[str, torch.Tensor]  # head -> [N]
    source: torch.Tensor  # [N] index into sources
    sources: list[str]

    def subset(self, rows: torch.Tensor) -> ExpertRows:
        return ExpertRows(
            {h: v[rows] for h, v in self.logits.items()},
            self.embeddings[rows],
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
    stacked: list[torch.Tensor] = []
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
        stacked.append(data["embeddings"][rows])
        own.append(
            torch.stack([h(e) for h, e in zip(model.modality_emotion_heads, embeddings, strict=True)], 1)
        )
        present.append(mask)
        for head in HEADS:
            targets[head].append(data[head][rows])
        source.append(torch.full((int(rows.sum()),), index))
    return ExpertRows(
        {h: torch.cat(v) for h, v in logits.items()},
        torch.cat(stacked),
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


def fit_gate(
    gate: FusionGate, rows: ExpertRows, weight_decay: float, heads: tuple[str, ...] = HEADS
) -> FusionGate:
    """Temperatures and gate weights of ``heads`` by the source-balanced negative log-likelihood,
    with an L2 penalty on the gate's weights (never on the temperatures)."""
    gate.train()
    for head_index, head in enumerate(HEADS):
        if head not in heads:
            continue
        weights = _row_weights(rows, head)
        targets = rows.targets[head].clamp(min=0)
        trained = [gate.gates[head_index]] + ([gate.scales[head_index]] if gate.scales is not None else [])
        params = [p for module in trained for p in module.parameters()]
        optimizer = torch.optim.Adam([gate.log_temperature, *params], lr=LEARNING_RATE)
        for _ in range(STEPS):
            optimizer.zero_grad()
            pooled, _ = gate.pool(head_index, rows.logits[head], rows.present, rows.embeddings)
            nll = torch.nn.functional.nll_loss(pooled, targets, reduction="none")
            penalty = sum(
                (p**2).sum() for module in trained for n, p in module.named_parameters() if "weight" in n
            )
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
    pooled, weights = gate.pool(0, rows.logits["emotion"], rows.present, rows.embeddings)
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
    modality, a quarter of the mean margin, less a quarter of the mean ECE. With a tenth of the
    ECE, designs within 0.01 of each other in F1 were told apart by sharper gates whose held-out
    ECE was 0.14-0.21 (a gate that sets its own temperature overfits it)."""
    margins = [s["weighted_f1"] - s["best_single_weighted_f1"] for s in report.values()]
    return (
        min(margins)
        + 0.25 * float(np.mean(margins))
        - ECE_WEIGHT * float(np.mean([s["ece"] for s in report.values()]))
    )


def _merge(folds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        name: {
            key: round(float(np.mean([f[name][key] for f in folds])), 4)
            for key in ("weighted_f1", "best_single_weighted_f1", "ece")
        }
        for name in folds[0]
    }


def select_and_fit(
    model, collected: dict[str, dict], seed: int = 0, designs: tuple[GateDesign, ...] = DESIGNS
) -> tuple[FusionGate, dict[str, Any]]:
    """Repeated two-fold cross-validation of every design on the dev rows, then the best refitted
    on all. One thread: the gate's tensors are tiny, and two threads on shared cores spend their
    time waiting for each other (a fit took 29 s instead of 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _select_and_fit(model, collected, seed, designs)
    finally:
        torch.set_num_threads(threads)


def _select_and_fit(
    model, collected: dict[str, dict], seed: int, designs: tuple[GateDesign, ...]
) -> tuple[FusionGate, dict[str, Any]]:
    candidates: dict[str, Any] = {}
    best: tuple[float, GateDesign] | None = None
    dim = next(iter(collected.values()))["embeddings"].shape[-1]
    # The same folds for every design (every design fits the same rows), so designs differ by
    # what they are, not by which rows they drew.
    count = int(sum((data["used"].sum(-1) >= 2).sum() for data in collected.values()))
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for _ in range(REPEATS):
        order = torch.randperm(count, generator=generator)
        halves = (order[: count // 2], order[count // 2 :])
        splits.extend((halves, halves[::-1]))
    rows_by_experts: dict[tuple[str, bool], ExpertRows] = {}
    for design in designs:
        key = (design.experts, design.joint)
        if key not in rows_by_experts:
            rows_by_experts[key] = expert_rows(model, design.gate(dim), collected)
        rows = rows_by_experts[key]
        folds = []
        for fit_rows, held_out in splits:
            torch.manual_seed(seed)
            gate = design.gate(dim)
            # Designs are scored on emotion alone: the sentiment gate is fitted once, at the end.
            fit_gate(gate, rows.subset(fit_rows), design.weight_decay, heads=("emotion",))
            folds.append(score(gate, rows.subset(held_out)))
        merged = _merge(folds)
        objective = _objective(merged)
        candidates[design.name] = {"objective": round(objective, 4), "sources": merged}
        log.info("gate_design_scored", design=design.name, objective=round(objective, 4))
        if best is None or objective > best[0]:
            best = (objective, design)
    design = best[1]
    torch.manual_seed(seed)
    gate = design.gate(dim)
    rows = expert_rows(model, gate, collected)
    fit_gate(gate, rows, design.weight_decay)
    report = {
        "design": {
            "pooling": design.pooling,
            "experts": design.experts,
            "joint": design.joint,
            "hidden": design.hidden,
            "weight_decay": design.weight_decay,
            "agreement": design.agreement,
            "embedding": design.embedding,
            "temperature": design.temperature,
        },
        "cross_validated": candidates,
        "folds": len(splits),
        "fitted_on_all_dev": score(gate, rows),
        "temperatures": {
            h: [round(float(t), 4) for t in gate.log_temperature[i].detach().exp()]
            for i, h in enumerate(HEADS)
        },
        "rows": int(len(rows.present)),
    }
    return gate, report


def fit_checkpoint_gate(checkpoint_dir: Path, output_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Fit the gate on ``checkpoint_dir``'s dev rows; write the checkpoint with it to
    ``output_dir`` (float16 weights, as published); returns the fit report."""
    from services.model.core.calibration import reset
    from services.model.core.checkpoint import load_checkpoint, read_checkpoint_document, save_checkpoint
    from services.model.training.calibration import FACE_DEV_SETS, dev_sets
    from shared.settings import get_settings

    started = time.perf_counter()
    loaded = load_checkpoint(checkpoint_dir)
    model = loaded.model
    # A gate and a calibration belong to the network they were fitted on: a refit starts from the
    # raw logits and replaces both (calibrate the result again: make fusion-gate does).
    model.fusion_gate = None
    reset(model)
    # Faces beside words: the visual expert's only dev rows with a second modality (a face alone
    # never reaches the gate).
    beside_words = {name: text for name, text in FACE_DEV_SETS.items() if text != "none"}
    sets = dev_sets(model, loaded.spec, seed, faces=beside_words)
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
        fusion_gate_agreement=design["agreement"],
        fusion_gate_embedding=design["embedding"],
        fusion_gate_temperature=design["temperature"],
    )
    report["fitted_on"] = {"split": "dev", "seed": seed, "sets": {name: len(s) for name, s in sets.items()}}
    report["seconds"] = round(time.perf_counter() - started, 1)
    # Same name and version: the same network with its gate refitted.
    dropped = ("created_at", "git_sha", "calibration")
    meta = {k: v for k, v in loaded.meta.items() if k not in dropped}
    meta["fusion_gate"] = {k: v for k, v in report.items() if k != "cross_validated"}
    save_checkpoint(output_dir, model, loaded.spec, meta, weights_dtype=torch.float16)
    (Path(output_dir) / "fusion_gate_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
