"""The committed default checkpoint loads to exactly the network it was published as.

``default_outputs.safetensors`` holds the default's outputs on fixed inputs (every combination of
text and audio), computed on CPU in float32 with one thread when the checkpoint was published;
rebuild it with ``python -m tests.model.core.test_default_checkpoint`` after publishing a new
default. Which modalities were used must match exactly; logits match to 1e-4, because the CPU's
instruction set picks the matrix kernels and so the order of float32 sums (machines with and without
AVX-512 differ by about 1e-5), while a wrong or missing tensor moves them by far more.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.model.core.checkpoint import load_checkpoint
from shared.contract.features.spec import resolve_pretrained
from shared.settings import REPO_ROOT
from tests.model.helpers import random_inputs

DEFAULT = REPO_ROOT / "services" / "model" / "checkpoints" / "default"
EXPECTED = Path(__file__).with_name("default_outputs.safetensors")
MASKS = [[True, False, False], [False, True, False], [True, True, False], [False, False, False]]


def default_outputs() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order on every machine
    try:
        loaded = load_checkpoint(DEFAULT)
        inputs = random_inputs(loaded.spec, MASKS, seed=12)
        with torch.no_grad():
            output = loaded.model(inputs)
    finally:
        torch.set_num_threads(threads)
    return {
        "emotion_logits": output.emotion_logits,
        "sentiment_logits": output.sentiment_logits,
        "modality_emotion_logits": output.modality_emotion_logits,
        "modality_sentiment_logits": output.modality_sentiment_logits,
        "speech_logits": output.speech_logits,
        "modalities_used": output.modalities_used,
    }


def _encoders_installed() -> bool:
    try:
        resolve_pretrained("models:whisper-base")
    except (FileNotFoundError, ValueError):
        return False
    return True


@pytest.mark.skipif(not _encoders_installed(), reason="the default's speech encoder needs `make models`")
def test_the_default_checkpoint_loads_to_its_published_outputs():
    expected = load_file(EXPECTED)
    actual = default_outputs()
    assert set(actual) == set(expected)
    assert torch.equal(actual["modalities_used"], expected["modalities_used"])
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-4, atol=1e-4, msg=name)


if __name__ == "__main__":
    save_file({k: v.contiguous() for k, v in default_outputs().items()}, EXPECTED)
