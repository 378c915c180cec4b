"""Starting from a checkpoint: the run's own spec settings are honoured where the weights allow
them and refused where they do not, never dropped; the tokenizer must be the text encoder's."""

from __future__ import annotations

import pytest
import torch

from services.model.core.checkpoint import save_checkpoint
from services.model.core.config import ModelConfig
from services.model.core.network import MoodreelModel
from services.model.testing import TINY_SPEC, build_tiny_checkpoint, save_tiny_pretrained, tiny_model_config
from services.model.training.cli import config_from_args, config_from_strings
from services.model.training.initial import initial_checkpoints, initial_spec, model_config
from services.model.training.loop import train
from shared.contract.features.spec import FeatureSpec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Every branch trained, on TINY_SPEC (32 tokens, 64 log-mel frames, 2 frames of 32 px)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("initial") / "checkpoint")


def run_spec(checkpoint, *flags: str) -> FeatureSpec:
    config = config_from_args(["--init-from", str(checkpoint), *flags])
    return initial_spec(config, initial_checkpoints(config))


def test_the_checkpoints_spec_without_flags(checkpoint):
    assert run_spec(checkpoint) == TINY_SPEC


def test_a_compatible_flag_is_honoured_even_at_its_default(checkpoint):
    assert run_spec(checkpoint, "--spec-max-tokens", "16").max_tokens == 16
    # 48 is FeatureSpec's default: a flag that names it is still the run's choice.
    default = FeatureSpec().max_tokens
    assert TINY_SPEC.max_tokens != default
    assert run_spec(checkpoint, "--spec-max-tokens", str(default)).max_tokens == default
    assert run_spec(checkpoint, "--spec-speech-gate", "true").speech_gate is True


@pytest.mark.parametrize(
    ("flag", "value", "branch"),
    [
        ("n-mels", "16", "audio"),
        ("max-audio-frames", str(FeatureSpec().max_audio_frames), "audio"),
        ("frame-size", "48", "visual"),
        ("tokenizer", "models:all-mpnet-base-v2", "text"),
    ],
)
def test_a_flag_the_initial_weights_cannot_read_is_refused(checkpoint, flag, value, branch):
    with pytest.raises(ValueError, match=f"{flag.replace('-', '_')} is") as refused:
        run_spec(checkpoint, f"--spec-{flag}", value)
    message = str(refused.value)
    assert f"the {branch} branch from --init-from" in message and value in message


def test_training_refuses_a_tokenizer_that_is_not_the_text_encoder(tmp_path):
    encoder = save_tiny_pretrained(tiny_model_config(TINY_SPEC).text_encoder_config, tmp_path / "encoder")
    config = config_from_args(["--output-dir", str(tmp_path / "run"), "--meld-dir", str(tmp_path / "none")])
    config.model = tiny_model_config(TINY_SPEC, text_encoder=str(encoder), text_encoder_config=None)
    config.spec = TINY_SPEC
    with pytest.raises(ValueError, match="tokenizer") as refused:
        train(config)
    assert str(encoder) in str(refused.value) and TINY_SPEC.tokenizer in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_that_never_trained_audio_does_not_bind_the_log_mel_settings(tmp_path, checkpoint):
    # A text-only checkpoint written with other log-mel settings than the audio checkpoint's.
    other_log_mel = TINY_SPEC.model_copy(update={"n_mels": 16, "max_audio_frames": 32})
    text_only = MoodreelModel(tiny_model_config(other_log_mel, trained_modalities=("text",)))
    meta = {"name": "text-only", "version": "test", "metrics": {}, "data_hash": None}
    save_checkpoint(tmp_path / "text-only", text_only, other_log_mel, meta, weights_dtype=torch.float16)
    spec = run_spec(f"{tmp_path / 'text-only'},audio={checkpoint}")
    assert (spec.n_mels, spec.max_audio_frames) == (TINY_SPEC.n_mels, TINY_SPEC.max_audio_frames)
    # Named as the visual source, it binds no frame settings either: the first entry's stay.
    other_frames = TINY_SPEC.model_copy(update={"frame_size": 48})
    save_checkpoint(tmp_path / "text-frames", text_only, other_frames, meta, weights_dtype=torch.float16)
    spec = run_spec(f"{checkpoint},visual={tmp_path / 'text-frames'}")
    assert spec.frame_size == TINY_SPEC.frame_size


def test_a_model_flag_at_its_default_wins_over_the_initial_checkpoint(checkpoint):
    default = ModelConfig().dropout
    config = config_from_args(["--init-from", str(checkpoint)])
    trained = model_config(config, initial_checkpoints(config)).dropout
    assert trained != default  # the checkpoint's own value, kept when the run sets none
    config = config_from_args(["--init-from", str(checkpoint), "--model-dropout", str(default)])
    assert model_config(config, initial_checkpoints(config)).dropout == default
    # A preset's [model] table is set the same way (its values reach config_from_strings).
    preset = config_from_strings({"init_from": str(checkpoint), "model.dropout": str(default)})
    assert model_config(preset, initial_checkpoints(preset)).dropout == default
