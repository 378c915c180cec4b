import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.model.core.checkpoint import load_checkpoint
from services.model.core.network import MoodreelModel
from services.model.testing import TINY_SPEC, tiny_model_config
from services.model.training import loop
from services.model.training.cli import config_from_args, config_from_strings
from services.model.training.config import TrainConfig, hyperparameters
from services.model.training.data.meld import clip_examples
from services.model.training.loop import optimizer_step, train
from services.model.training.losses import Criterion, class_weights, classification_loss
from services.model.training.optimizer import WarmupCosine, build_optimizer, planned_epochs
from services.model.training.sagemaker import metric_definitions
from shared.settings import REPO_ROOT


def tiny_train_config(tmp_path: Path, meld_dir: Path, **changes) -> TrainConfig:
    values = {
        "output_dir": tmp_path / "run",
        "meld_dir": meld_dir,
        "cache_dir": tmp_path / "cache",
        "epochs": 2,
        "batch_size": 4,
        "eval_batch_size": 8,
        "progress": False,
        "lr_text_encoder": 1e-3,
        "model": tiny_model_config(TINY_SPEC, text_train_mode="top_layers", text_train_layers=1),
        "spec": TINY_SPEC,
    }
    return TrainConfig(**(values | changes))


@pytest.mark.slow
def test_loss_falls_when_overfitting_generated_clips(mini_meld, tmp_path):
    examples, _ = clip_examples(mini_meld, "train", TINY_SPEC, tmp_path)
    torch.manual_seed(0)
    model = MoodreelModel(tiny_model_config(TINY_SPEC, modality_dropout=0.0, dropout=0.0))
    config = TrainConfig(
        lr_fusion=3e-3, lr_audio=3e-3, lr_visual=3e-3, lr_text_encoder=3e-3, label_smoothing=0.0
    )
    optimizer = build_optimizer(model, config)
    criterion = Criterion(config, examples, torch.device("cpu"))
    batch = examples.batch(torch.arange(len(examples)))
    assert batch.inputs.modality_mask[:, 1:].sum() == 12  # 6 clips with audio and video
    losses = []
    model.train()
    for _ in range(25):
        terms = criterion(model(batch.inputs), batch.emotion, batch.sentiment)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(float(terms.total.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert set(terms.parts) == {"emotion", "sentiment", "text_head", "audio_head", "visual_head"}


def test_losses_ignore_unknown_labels_and_weight_classes():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    targets = torch.tensor([0, -1, 1])
    plain = classification_loss(logits, targets, None, 0.0, None)
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], targets[[0, 2]])
    torch.testing.assert_close(plain, expected)
    focal = classification_loss(logits, targets, None, 0.0, 2.0)
    assert focal < plain  # the easy, correct row is down-weighted
    assert classification_loss(logits, torch.tensor([-1, -1, -1]), None, 0.0, None) == 0
    weights = class_weights(torch.tensor([0, 0, 0, 1, -1]), 3, "inverse")
    assert weights[1] > weights[0]
    assert class_weights(torch.tensor([0, 1]), 3, "none") is None


def test_hyperparameters_from_arguments_and_preset():
    config = config_from_args(["--preset", "text-default", "--epochs", "3", "--model-audio-channels", "4,8"])
    assert config.epochs == 3
    assert config.max_minutes == 40.0
    assert config.spec.context_turns == 0
    assert config.model.text_train_mode == "top_layers"
    assert config.model.audio_channels == (4, 8)
    assert config.modalities == ("text",)
    with pytest.raises(SystemExit):
        config_from_args(["--no-such-option", "1"])


def test_text_training_caches_frozen_layers_and_keeps_the_best_checkpoint(mini_meld, tmp_path, capsys):
    checkpoint = train(tiny_train_config(tmp_path, mini_meld, publish_dir=tmp_path / "published"))
    out = capsys.readouterr().out
    assert re.search(r"^METRIC split=dev epoch=1 .* emotion_weighted_f1=[0-9.]+", out, re.M)
    assert re.search(r"^METRIC split=best_test epoch=\d .* sentiment_weighted_f1=[0-9.]+", out, re.M)
    # Every SageMaker metric definition finds its value in what the trainer really printed.
    for definition in metric_definitions():
        match = re.search(definition["Regex"], out)
        assert match, definition
        float(match.group(1))
    loaded = load_checkpoint(checkpoint)
    assert loaded.meta["trained_modalities"] == ["text"]
    assert set(loaded.meta["metrics"]) == {"dev", "test"}
    assert loaded.meta["metrics"]["test"]["emotion"]["count"] == 4
    assert loaded.meta["training"]["best_epoch"] in (1, 2)
    assert len(loaded.meta["data_hash"]) == 16
    assert "## Measured results" in (checkpoint / "MODEL_CARD.md").read_text()
    assert (tmp_path / "published" / "model.safetensors").is_file()
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}
    ).Reload()
    tags = accumulator.Tags()
    assert {"emotion_weighted_f1/dev", "emotion_macro_f1/dev", "loss_emotion/train"} <= set(tags["scalars"])
    assert "emotion_f1_per_class/fear" in tags["scalars"]
    assert "emotion_confusion/dev" in tags["images"]


@pytest.mark.slow
def test_multimodal_training_from_clips_trains_every_modality(mini_meld, tmp_path):
    config = tiny_train_config(
        tmp_path, mini_meld, modalities=("text", "audio", "visual"), epochs=1, evaluate_test=False
    )
    loaded = load_checkpoint(train(config))
    assert loaded.meta["trained_modalities"] == ["text", "audio", "visual"]
    assert set(loaded.meta["metrics"]) == {"dev"}


@pytest.mark.slow
def test_distributed_training_with_two_gloo_processes(mini_meld, tmp_path):
    model_config = json.dumps(tiny_model_config(TINY_SPEC).text_encoder_config)
    visual_config = json.dumps(tiny_model_config(TINY_SPEC).visual_encoder_config)
    spec_args = [
        f"--spec-{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k, v in TINY_SPEC.model_dump().items()
    ]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "services.model.training.cli",
        "--output-dir", str(tmp_path / "run"), "--meld-dir", str(mini_meld),
        "--cache-dir", str(tmp_path / "cache"), "--epochs", "2", "--batch-size", "2",
        "--progress", "false", "--threads", "1", "--evaluate-test", "false",
        "--model-text-encoder", "", "--model-text-encoder-config", model_config,
        "--model-text-train-mode", "full",
        "--model-visual-backbone", "transformers", "--model-visual-encoder-config", visual_config,
        "--model-audio-channels", "8,16", "--model-embed-dim", "16", "--model-fusion-hidden", "16",
        *spec_args,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 evaluates and prints metric lines; both ranks trained the same model.
    assert result.stdout.count("METRIC split=dev ") == 2
    loaded = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert loaded.meta["training"]["epochs_run"] == 2


def test_time_budget_plans_epochs_and_the_schedule_decays_to_zero():
    config = TrainConfig(epochs=5, max_minutes=40)
    # 18 minutes gone after epoch 1 of 14 minutes: one more epoch fits, not two.
    assert planned_epochs(config, 1, 18 * 60, 14 * 60) == 2
    assert planned_epochs(config, 1, 5 * 60, 5 * 60) == 5
    assert planned_epochs(config, 2, 45 * 60, 14 * 60) == 2
    assert planned_epochs(TrainConfig(epochs=5), 1, 10**6, 10**6) == 5
    plan = WarmupCosine(total_steps=100, warmup_ratio=0.1)
    assert plan(0) == pytest.approx(0.1) and plan(9) == pytest.approx(1.0)
    plan.total_steps = 50
    assert plan(50) == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < plan(30) < 1.0


def test_frozen_text_states_are_cached_on_disk_and_reused(mini_meld, tmp_path):
    from services.model.training.caches import cache_text_hidden
    from services.model.training.data.meld import read_split, text_examples

    torch.manual_seed(0)
    model = MoodreelModel(tiny_model_config(TINY_SPEC, text_train_mode="top_layers", text_train_layers=1))
    first = text_examples(read_split(mini_meld, "train"), TINY_SPEC)
    cache_text_hidden(model, first, 4, "cpu", False, tmp_path / "states")
    [stored] = list((tmp_path / "states").iterdir())

    def no_encoder(*args):
        raise AssertionError("the frozen layers ran again")

    model.text.frozen_hidden = no_encoder
    again = text_examples(read_split(mini_meld, "train"), TINY_SPEC)
    cache_text_hidden(model, again, 4, "cpu", False, tmp_path / "states")
    assert torch.equal(first.tensors["text_hidden"], again.tensors["text_hidden"])
    assert torch.equal(first.tensors["input_ids"], again.tensors["input_ids"])

    # Other tokens (or other frozen weights) are another entry, never a stale hit.
    other = text_examples(read_split(mini_meld, "dev"), TINY_SPEC)
    with pytest.raises(AssertionError, match="ran again"):
        cache_text_hidden(model, other, 4, "cpu", False, tmp_path / "states")
    assert [p.name for p in (tmp_path / "states").iterdir()] == [stored.name]


def test_the_text_mpnet_preset_names_its_encoder_portably():
    config = config_from_args(["--preset", "text-mpnet", "--output-dir", "x"])
    assert config.model.text_encoder == config.spec.tokenizer == "models:all-mpnet-base-v2"
    assert (config.model.text_train_mode, config.model.text_train_layers) == ("top_layers", 1)
    assert config.class_weighting == "sqrt" and config.weights_dtype == "float16"
    assert config.publish_max_mb == 25.0 and config.spec.frames_per_utterance == 0


def test_the_text_mpnet_preset_is_the_recipe_its_sweep_selected():
    """`make train-text-mpnet` trains exactly the run bench/results/text-sweep.json reports."""
    from bench import text_sweep

    selected = json.loads(text_sweep.RESULTS.read_text())["selected"]
    flags = text_sweep._flags(text_sweep.VARIANTS[selected], seed=0, evaluate_test=True)
    swept = config_from_strings(text_sweep.trainer_values(flags))
    preset = config_from_args(["--preset", "text-mpnet"])
    assert hyperparameters(preset) == hyperparameters(swept)


def _scaled_step(scaler: torch.amp.GradScaler, gradient: float) -> tuple[torch.nn.Parameter, torch.Tensor]:
    """One optimizer_step of plain SGD (lr 1, clip 1) on a 3-vector whose gradient is ``gradient``
    in each element; the parameter and its value before the step."""
    weight = torch.nn.Parameter(torch.zeros(3))
    before = weight.detach().clone()
    optimizer = torch.optim.SGD([weight], lr=1.0)
    optimizer_step((weight * gradient).sum(), optimizer, [weight], 1.0, scaler)
    return weight, before


def test_the_step_unscales_gradients_before_clipping_them():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True)
    weight, before = _scaled_step(scaler, 5.0)
    # Clipped to norm 1 after unscaling: an update of norm lr * clip. Clipping the scaled gradient
    # first would leave an update 1024 times smaller.
    assert torch.linalg.vector_norm(weight.detach() - before) == pytest.approx(1.0, rel=1e-5)
    assert scaler.get_scale() == 2.0**10  # nothing overflowed; grows only after many clean steps


def test_a_step_whose_scaled_gradients_overflow_is_skipped():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True)
    weight, before = _scaled_step(scaler, float("inf"))
    assert torch.equal(weight.detach(), before)
    assert scaler.get_scale() == 2.0**9


def test_a_disabled_scaler_is_a_plain_clipped_step():
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    weight, before = _scaled_step(scaler, 5.0)
    step = torch.full((3,), -5.0) / torch.linalg.vector_norm(torch.full((3,), 5.0))
    assert torch.allclose(weight.detach() - before, step)


class RecordingScaler(torch.amp.GradScaler):
    """A CPU scaler that counts the calls the training loop makes."""

    def __init__(self) -> None:
        super().__init__("cpu", enabled=True)
        self.calls: list[str] = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        super().update(new_scale)


def test_the_training_loop_steps_through_the_devices_loss_scaler(mini_meld, tmp_path, monkeypatch):
    scalers: list[RecordingScaler] = []
    devices: list[torch.device] = []

    def recording(device):
        devices.append(torch.device(device))
        scalers.append(RecordingScaler())
        return scalers[-1]

    monkeypatch.setattr(loop, "loss_scaler", recording)
    run = loop.setup(tiny_train_config(tmp_path, mini_meld, epochs=1))
    loop.train_epoch(run, 1)
    assert devices == [run.device] and run.scaler is scalers[0]
    assert run.steps_per_epoch > 0
    assert scalers[0].calls == ["scale", "unscale_", "step", "update"] * run.steps_per_epoch
