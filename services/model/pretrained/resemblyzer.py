"""Resemblyzer's voice encoder checkpoint -> safetensors, for the torch-free preprocess worker.

``pretrained.pt`` holds ``model_state`` (the LSTM, the linear layer and two similarity scalars used
only in training) and the optimiser's state. Only the tensors the encoder runs on are kept, as
float32 under their torch names (``lstm.weight_ih_l0`` ...), so ``shared.contract.features.voice`` can
load them with ``safetensors.numpy``.
"""

from __future__ import annotations

from pathlib import Path

ENCODER_TENSORS = tuple(
    f"lstm.{kind}_l{layer}" for layer in range(3) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
) + ("linear.weight", "linear.bias")


def convert_voice_encoder(checkpoint: Path, output: Path) -> None:
    import torch
    from safetensors.torch import save_file

    # weights_only: the file is pinned by sha256, and still no pickle code may run from it.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model_state"]
    missing = [name for name in ENCODER_TENSORS if name not in state]
    if missing:
        raise ValueError(f"{checkpoint.name} lacks the voice encoder tensors {missing}")
    tensors = {name: state[name].detach().to(torch.float32).contiguous() for name in ENCODER_TENSORS}
    save_file(tensors, str(output), metadata={"source": "resemblyzer 0.1.4 pretrained.pt"})
