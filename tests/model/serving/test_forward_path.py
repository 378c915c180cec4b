"""Evaluation and serving score through one forward path, in one precision."""

from __future__ import annotations

import contextlib

import torch

from services.model.core import forward
from services.model.serving.inference import ServedModel, predict_fn
from services.model.training.evaluation import predict

from .conftest import make_bundle
from .test_evidence import _examples


def test_the_precision_policy(monkeypatch):
    assert forward.compute_dtype("cpu") == torch.float32
    with forward.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert forward.compute_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert forward.compute_dtype("cuda") == torch.float16


def test_loss_scaling_is_enabled_exactly_under_float16(monkeypatch):
    created: list[tuple[str, bool]] = []
    # Without a CUDA device a real "cuda" scaler turns itself off, so its arguments are recorded.
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: created.append((device, enabled)))
    forward.loss_scaler("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    forward.loss_scaler("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    forward.loss_scaler("cuda")
    assert created == [("cpu", False), ("cuda", False), ("cuda", True)]


def test_evaluation_and_serving_run_the_same_forward_path(served_model: ServedModel, monkeypatch):
    devices: list[tuple[str, torch.device]] = []

    def recording(caller: str):
        def autocast(device):
            devices.append((caller, torch.device(device)))
            return contextlib.nullcontext()

        return autocast

    bundle = make_bundle(count=5, seed=3)
    monkeypatch.setattr(forward, "autocast", recording("serving"))
    served = predict_fn(bundle, served_model)
    monkeypatch.setattr(forward, "autocast", recording("evaluation"))
    emotion, sentiment, _ = predict(served_model.loaded.model, _examples(bundle, 0), 2, served_model.device)
    # Batches of 2 in evaluation, the server's batch size in serving: each ran through forward.autocast.
    assert [caller for caller, _ in devices].count("evaluation") == 3
    assert "serving" in {caller for caller, _ in devices}
    assert {device for _, device in devices} == {served_model.device}
    torch.testing.assert_close(torch.as_tensor(emotion), served.emotion)
    torch.testing.assert_close(torch.as_tensor(sentiment), served.sentiment)
