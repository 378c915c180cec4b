"""The training loop: ``setup`` builds the run, ``train_epoch`` and ``evaluate_epoch`` repeat,
``finish`` scores the stored best checkpoint and writes what ships.

One loop for every source and modality mix: sources become ExampleSets (modality masks, -1 for
labels a source lacks), AdamW with per-part learning rates, label smoothing, class weights or focal
loss, gradient clipping, early stopping and best-checkpoint selection on dev emotion weighted F1,
autocast on GPU (``services.model.core.forward``) with loss scaling under float16,
DistributedDataParallel under torchrun. With a text encoder whose lower layers are frozen, their
hidden states are computed once and cached, so epochs only run the trained layers.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.model.core.checkpoint import META_FILE, PUBLISHED_FILE_MODE, load_checkpoint, save_checkpoint
from services.model.core.config import check_tokenizer
from services.model.core.forward import autocast, loss_scaler
from services.model.core.network import MoodreelModel
from services.model.core.parts import group_modality, part_of
from services.model.training.caches import (
    audio_cache_dir,
    cache_audio_states,
    cache_text_hidden,
    cache_visual_embedding,
    text_cache_dir,
    uses_text_cache,
)
from services.model.training.config import TrainConfig, hyperparameters
from services.model.training.data.examples import ExampleSet
from services.model.training.data.sources import data_hash, load_split
from services.model.training.data.speech import RAVDESS_EMOTIONS, SpeechAugment
from services.model.training.distributed import Distributed
from services.model.training.evaluation import evaluate_examples, score_baseline, score_sources, summary
from services.model.training.initial import (
    check_frozen_parts_loaded,
    initial_checkpoints,
    initial_spec,
    load_initial_weights,
    model_config,
)
from services.model.training.losses import Criterion
from services.model.training.metrics import emit_metric_line
from services.model.training.optimizer import (
    WarmupCosine,
    build_optimizer,
    frozen_parameters,
    keep_frozen_statistics,
    planned_epochs,
)
from shared.contract.labels import MODALITIES
from shared.logging import get_logger

log = get_logger(__name__)


@dataclass
class Run:
    """Everything a training run holds between its steps."""

    config: TrainConfig
    distributed: Distributed
    device: torch.device
    model: MoodreelModel
    network: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    train_set: ExampleSet
    dev_set: ExampleSet
    frozen: set[int]
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    optimized: list[torch.nn.Parameter]
    plan: WarmupCosine
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler  # loss scaling under float16 autocast, a pass-through otherwise
    steps_per_epoch: int
    writer: object | None
    speech_augment: SpeechAugment | None
    face_augment: object | None
    started: float
    step: int = 0
    best_f1: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def best_dir(self) -> Path:
        return Path(self.config.output_dir) / "checkpoint"


def train(config: TrainConfig) -> Path:
    """Train, keep the best checkpoint on dev, evaluate it; returns the checkpoint directory."""
    run = setup(config)
    stale = 0
    epoch_seconds: list[float] = []
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.monotonic()
        train_losses = train_epoch(run, epoch)
        improved = evaluate_epoch(run, epoch, train_losses) if run.distributed.is_main else False
        improved = run.distributed.broadcast_flag(improved)
        stale = 0 if improved else stale + 1
        epoch_seconds.append(time.monotonic() - epoch_started)
        log.info("epoch_done", epoch=epoch, seconds=round(epoch_seconds[-1], 1), best_epoch=run.best_epoch)
        # The budget is the epochs': feature caches built once before them do not count.
        planned = planned_epochs(config, epoch, sum(epoch_seconds), max(epoch_seconds))
        # Decay the learning rate to zero by the last epoch that fits (same on every rank: rank
        # 0's timing decides).
        planned = run.distributed.broadcast_int(planned)
        run.plan.total_steps = min(run.plan.total_steps, planned * run.steps_per_epoch)
        over_budget = epoch >= planned < config.epochs
        if run.distributed.broadcast_flag(stale >= config.patience or bool(over_budget)):
            log.info("training_stopped", epoch=epoch, stale=stale, over_budget=bool(over_budget))
            break
    if run.distributed.is_main:
        finish(run)
    run.distributed.close()
    return run.best_dir


# --- setup ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(config: TrainConfig) -> Run:
    """Data, model (from initial checkpoints where asked), feature caches, optimiser and schedule."""
    distributed = Distributed()
    device = distributed.device()
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed + distributed.rank)
    started = time.monotonic()
    initial = initial_checkpoints(config)
    if initial:
        # Features must be the ones the initial weights were trained on; the fields this run
        # sets itself apply on top where the weights allow it.
        config.spec = initial_spec(config, initial)
    # Refused before any data is read: token ids of another vocabulary would be read as other words.
    check_tokenizer(model_config(config, initial), config.spec)

    train_set, dev_set = load_split("train", config), load_split("dev", config)
    if train_set is None or dev_set is None:
        raise ValueError("training needs a train and a dev split")
    provided = {m for i, m in enumerate(MODALITIES) if bool(train_set.modality_mask[:, i].any())}
    kept = {
        modality
        for parts, loaded in initial
        for modality in loaded.config.trained_modalities
        if not parts or modality in {group_modality(part) for part in parts}
    }
    trained = tuple(m for m in MODALITIES if (m in config.modalities and m in provided) or m in kept)
    if not trained:
        raise ValueError(f"no source provides any of the modalities {config.modalities}")
    network_config = model_config(config, initial).replace(trained_modalities=trained)
    if train_set.speech is not None:
        network_config = network_config.replace(speech_labels=RAVDESS_EMOTIONS)
    model, frozen, loaded_names = build_model(config, network_config, initial)
    model.to(device)
    prepare_features(config, model, train_set, dev_set, loaded_names, device, distributed, started)

    network = model
    if distributed.enabled:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    criterion = Criterion(config, train_set, device)
    speech_augment = (
        SpeechAugment(frequency_warp=config.speech_frequency_warp, tempo=config.speech_tempo)
        if config.speech_augment
        else None
    )
    face_augment = None
    if config.face_augment and "visual" in trained and "visual_encoder" not in config.freeze:
        from services.model.training.data.faces import FaceAugment

        face_augment = FaceAugment()
    optimizer = build_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_set) / distributed.world / config.batch_size)
    plan = WarmupCosine(steps_per_epoch * config.epochs, config.warmup_ratio)
    return Run(
        config=config,
        distributed=distributed,
        device=device,
        model=model,
        network=network,
        train_set=train_set,
        dev_set=dev_set,
        frozen=frozen,
        criterion=criterion,
        optimizer=optimizer,
        # Only what the optimiser updates is clipped: a frozen backbone's gradients must not shrink it.
        optimized=[p for group in optimizer.param_groups for p in group["params"]],
        plan=plan,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, plan),
        scaler=loss_scaler(device),
        steps_per_epoch=steps_per_epoch,
        writer=_summary_writer(
            config.tensorboard_dir or Path(config.output_dir) / "tensorboard", distributed
        ),
        speech_augment=speech_augment,
        face_augment=face_augment,
        started=started,
    )


def build_model(config: TrainConfig, network_config, initial) -> tuple[MoodreelModel, set[int], set[str]]:
    """The network with its initial weights; the ids of its frozen parameters and the names of the
    state entries initial checkpoints supplied."""
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = MoodreelModel(network_config)
    loaded_names: set[str] = set()
    for parts, loaded in initial:
        loaded_names |= load_initial_weights(model, loaded.model, parts)
    frozen = frozen_parameters(model, config.freeze)
    if initial:
        check_frozen_parts_loaded(model, frozen, loaded_names)
    for name, parameter in model.named_parameters():
        # Frozen weights need no gradient, except a pretrained base's: they keep the flag, which is
        # how the checkpoint tells weights it must store (trained at some point) from the base it
        # rebuilds from the package. The optimiser never sees any of them.
        if id(parameter) in frozen and not part_of(name).pretrained_base:
            parameter.requires_grad_(False)
    for modality in MODALITIES:
        if modality not in network_config.trained_modalities:
            # An untrained branch keeps its initial weights; the model treats it as absent.
            getattr(model, modality).requires_grad_(False)
    return model, frozen, loaded_names


def prepare_features(
    config: TrainConfig,
    model: MoodreelModel,
    train_set: ExampleSet,
    dev_set: ExampleSet,
    loaded_names: set[str],
    device: torch.device,
    distributed: Distributed,
    started: float,
) -> None:
    """Cache what frozen encoders compute, once; fit a new speech branch's standardisation."""
    trained = model.config.trained_modalities
    progress = config.progress and distributed.is_main
    use_cache = uses_text_cache(model, config)
    if use_cache and {"text", "text_encoder"} & set(config.freeze):
        # A frozen text branch is constant: cache the last layer, so epochs run none of them.
        model.text.frozen_depth = model.text.layer_count
    if use_cache:
        for examples in (train_set, dev_set):
            cache_text_hidden(
                model, examples, config.eval_batch_size, device, progress, text_cache_dir(config)
            )
    use_audio_cache = config.cache_audio_states and "audio" in trained and model.audio.caches_states
    if use_audio_cache:
        for examples in (train_set, dev_set):
            cache_audio_states(
                model, examples, config.audio_cache_batch_size, device, progress, audio_cache_dir()
            )
    if "visual" in trained and "visual_encoder" in config.freeze:
        for examples in (train_set, dev_set):
            cache_visual_embedding(model, examples, config.eval_batch_size, device)
    if "audio" in trained and model.audio.layer_stats and "audio.states_mean" not in loaded_names:
        # A new speech branch: standardise its pooled statistics with the training rows' own.
        audio_rows = train_set.modality_mask[:, MODALITIES.index("audio")]
        if "audio_states" in train_set.tensors:
            states = train_set.tensors["audio_states"][audio_rows]
        else:
            with torch.no_grad():
                states = torch.cat(
                    [
                        model.audio.layer_statistics(
                            train_set.tensors["log_mel"][rows].to(device),
                            train_set.tensors["audio_mask"][rows].to(device),
                        ).cpu()
                        for rows in audio_rows.nonzero(as_tuple=True)[0].split(config.audio_cache_batch_size)
                    ]
                )
        model.audio.fit_standardisation(states.to(device))
    log.info(
        "training_data",
        train=len(train_set),
        dev=len(dev_set),
        trained_modalities=trained,
        cached_text_hidden=use_cache,
        cached_audio_states=use_audio_cache,
        seconds=round(time.monotonic() - started, 1),
    )


# --- one epoch -----------------------------------------------------------------------------------


def length_bucketed_order(
    examples: ExampleSet, generator: torch.Generator, batches: int, batch_size: int
) -> torch.Tensor:
    """``[batches, batch_size]`` row indices for one epoch: shuffled, then sorted by text length
    inside windows of 50 batches so a batch pads to similar lengths, then the batches shuffled.
    Wraps around to fill every batch, so every DDP rank runs the same number of full steps."""
    order = torch.randperm(len(examples), generator=generator)
    total = batches * batch_size
    order = order.repeat(math.ceil(total / len(order)))[:total]
    mask = examples.tensors.get("attention_mask")
    if mask is not None:
        lengths = mask.sum(1)
        window = 50 * batch_size
        order = torch.cat(
            [chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in order.split(window)]
        )
    grouped = order.view(batches, batch_size)
    return grouped[torch.randperm(batches, generator=generator)]


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over the training rows; the epoch's mean losses."""
    from tqdm import tqdm

    config, distributed, device = run.config, run.distributed, run.device
    run.network.train()
    keep_frozen_statistics(run.model, run.frozen)
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    order = length_bucketed_order(
        run.train_set, generator, run.steps_per_epoch * distributed.world, config.batch_size
    )
    order = order[distributed.rank :: distributed.world]
    bar = tqdm(
        range(run.steps_per_epoch),
        desc=f"epoch {epoch}",
        disable=not (config.progress and distributed.is_main),
    )
    running: dict[str, float] = {}
    for index in bar:
        batch = run.train_set.batch(order[index])
        if run.speech_augment is not None and batch.inputs.log_mel is not None:
            batch.inputs.log_mel, batch.inputs.audio_mask = run.speech_augment(
                batch.inputs.log_mel, batch.inputs.audio_mask, generator
            )
        if run.face_augment is not None and batch.inputs.frames is not None:
            batch.inputs.frames = run.face_augment(batch.inputs.frames, generator)
        with autocast(device):
            output = run.network(batch.inputs.to(device))
        speech = batch.speech.to(device) if batch.speech is not None else None
        terms = run.criterion(output, batch.emotion.to(device), batch.sentiment.to(device), speech)
        optimizer_step(terms.total, run.optimizer, run.optimized, config.grad_clip, run.scaler)
        run.scheduler.step()
        run.step += 1
        losses = {
            name: float(value.detach()) for name, value in {"total": terms.total, **terms.parts}.items()
        }
        for name, value in losses.items():
            running[name] = running.get(name, 0.0) + value
        if run.writer is not None and run.step % 20 == 0:
            for name, value in losses.items():
                run.writer.add_scalar(f"train_step/loss_{name}", value, run.step)
        bar.set_postfix(loss=f"{losses['total']:.3f}")
    return {f"loss_{k}": v / max(1, run.steps_per_epoch) for k, v in running.items()}


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    optimized: list[torch.nn.Parameter],
    grad_clip: float,
    scaler: torch.amp.GradScaler,
) -> None:
    """Backward and one optimiser step through ``scaler``: the gradients are unscaled before they
    are clipped, so the clipping threshold applies to the true gradients."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(optimized, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def evaluate_epoch(run: Run, epoch: int, train_losses: dict[str, float]) -> bool:
    """Score dev, log the epoch, store the checkpoint if it is the best so far (main rank)."""
    config = run.config
    report = evaluate_examples(run.model, run.dev_set, config.eval_batch_size, run.device, run.criterion)
    dev_values = summary(report)
    emit_metric_line("train", epoch, train_losses)
    emit_metric_line("dev", epoch, dev_values)
    _log_epoch(run.writer, epoch, train_losses, report)
    current = report["emotion"]["weighted_f1"] if "emotion" in report else -dev_values["loss_total"]
    run.history.append({"epoch": epoch, "train": train_losses, "dev": dev_values})
    if current <= run.best_f1:
        return False
    run.best_f1, run.best_epoch = current, epoch
    save(run, epoch)
    return True


def save(run: Run, epoch: int) -> None:
    config = run.config
    save_checkpoint(
        run.best_dir,
        run.model,
        config.spec,
        {"name": config.checkpoint_name, "best_epoch": epoch},
        weights_dtype=getattr(torch, config.weights_dtype),
    )


# --- the finished run ----------------------------------------------------------------------------


def finish(run: Run) -> None:
    """Reload the stored best checkpoint (what ships), score dev and test, write the meta."""
    from services.model.training.model_card import render_model_card

    config, device, best_dir, writer = run.config, run.device, run.best_dir, run.writer
    loaded = load_checkpoint(best_dir, device=device)
    splits = ["dev", "test"] if config.evaluate_test else ["dev"]
    metrics = score_sources(loaded.model, config, splits, device, prefix="best", epoch=run.best_epoch)
    document = json.loads((best_dir / META_FILE).read_text())
    if config.carry_metrics and config.init_from:
        metrics = carried_metrics(config, metrics, document["meta"])
    if config.compare_with is not None:
        document["meta"]["baseline"] = score_baseline(Path(config.compare_with), config, device)
    document["meta"].update(
        {
            "name": config.checkpoint_name,
            "version": time.strftime("%Y%m%d", time.gmtime()),
            "metrics": metrics,
            "data_hash": data_hash(config),
            "data": {"sources": list(config.sources), "selection": "best dev emotion weighted F1"},
            "training": {
                "best_epoch": run.best_epoch,
                "epochs_run": len(run.history),
                "history": run.history,
                "seconds": round(time.monotonic() - run.started, 1),
                "device": str(device),
                "machine": machine_description(device),
                "hyperparameters": hyperparameters(config),
            },
        }
    )
    (best_dir / META_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (best_dir / "MODEL_CARD.md").write_text(
        render_model_card(document["meta"], loaded.config, loaded.spec, metrics)
    )
    if config.publish_dir is not None:
        publish(best_dir, Path(config.publish_dir), config.publish_max_mb)
    if writer is not None:
        final = {
            f"best/{split}_{head}_weighted_f1": metrics[split][head]["weighted_f1"]
            for split in metrics
            for head in ("emotion", "sentiment")
            if head in metrics[split]
        }
        hparams = {
            k: v if isinstance(v, int | float | str | bool) else str(v)
            for k, v in hyperparameters(config).items()
        }
        writer.add_hparams(hparams, final, run_name="hparams")
        writer.close()
    log.info("training_done", checkpoint=str(best_dir), best_epoch=run.best_epoch)


def carried_metrics(config: TrainConfig, metrics: dict, meta: dict) -> dict:
    """A composition that freezes every branch but a new one (visual-default) scores only the new
    branch's source; the first init_from checkpoint's figures still hold, since an input without
    the new modality gives exactly its outputs. They are kept, this run's are named by their source
    (``fer2013_dev``), and the initial checkpoints' training records go into ``meta``."""
    initial = initial_checkpoints(config)
    base = initial[0][1].meta
    source = config.sources[0]
    own = {(f"{source}_{key}" if key in ("dev", "test") else key): report for key, report in metrics.items()}
    meta["metrics_carried"] = {
        "from": f"{base.get('name')}@{base.get('version')}",
        "splits": sorted(base.get("metrics", {})),
    }
    meta["initial_training"] = {
        "+".join(parts) or "all": {  # e.g. the visual encoder's FER2013 run: its time, machine, dev
            "name": loaded.meta.get("name"),
            "version": loaded.meta.get("version"),
            **{k: v for k, v in loaded.meta.get("training", {}).items() if k != "history"},
            "dev": summary(loaded.meta["metrics"]["dev"]) if "dev" in loaded.meta.get("metrics", {}) else {},
        }
        for parts, loaded in initial
    }
    return base.get("metrics", {}) | own


def machine_description(device) -> str:
    """What trained the checkpoint: the accelerator, or the CPU with its core count and load."""
    import platform

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    processor = platform.processor() or platform.machine()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    threads = torch.get_num_threads()
    return f"CPU {processor}, {os.cpu_count()} cores, {threads} torch threads, load average {load}"


def publish(checkpoint: Path, destination: Path, max_mb: float) -> bool:
    """Copy a checkpoint's files to ``destination`` (e.g. the committed default) if small enough."""
    import shutil

    size = sum(path.stat().st_size for path in checkpoint.iterdir() if path.is_file())
    if size > max_mb * 1_000_000:
        log.warning(
            "publish_skipped", checkpoint=str(checkpoint), megabytes=round(size / 1e6, 2), limit=max_mb
        )
        return False
    destination.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        if path.is_file():
            shutil.copy2(path, destination / path.name)
            (destination / path.name).chmod(PUBLISHED_FILE_MODE)
    log.info("published", destination=str(destination), megabytes=round(size / 1e6, 2))
    return True


def _summary_writer(directory: Path, distributed: Distributed):
    if not distributed.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(directory))


def _log_epoch(writer, epoch: int, train_losses: dict[str, float], report: dict) -> None:
    if writer is None:
        return
    from services.model.training.metrics import confusion_figure

    for name, value in train_losses.items():
        writer.add_scalar(f"{name}/train", value, epoch)
    for name, value in report.get("losses", {}).items():
        writer.add_scalar(f"loss_{name}/dev", value, epoch)
    for head in ("emotion", "sentiment"):
        if head not in report:
            continue
        result = report[head]
        for metric in ("accuracy", "weighted_f1", "macro_f1", "ece"):
            writer.add_scalar(f"{head}_{metric}/dev", result[metric], epoch)
        for label, scores in result["per_class"].items():
            writer.add_scalar(f"{head}_f1_per_class/{label}", scores["f1"], epoch)
        figure = confusion_figure(result["confusion_matrix"], result["labels"], f"{head} dev, epoch {epoch}")
        writer.add_figure(f"{head}_confusion/dev", figure, epoch)
    writer.flush()
