"""The speech branch with a tiny random Whisper: shortened window, per-layer statistics over the
real frames, the learned layer weighting, the audio-state cache, and a checkpoint whose frozen
encoder is rebuilt from the models folder (`make models`), never stored."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from services.model.core.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from services.model.core.network import ModelInputs, MoodreelModel
from services.model.testing import (
    TINY_SPEC,
    save_tiny_pretrained,
    tiny_model_config,
    tiny_speech_encoder_config,
)
from services.model.training.caches import cache_audio_states
from services.model.training.data.examples import ExampleSet
from shared.settings import get_settings

# A Whisper window four times the spec's: the branch must cut it to the spec's 64 frames.
LONG_WINDOW = tiny_speech_encoder_config(TINY_SPEC) | {"max_source_positions": 128, "encoder_layers": 2}


def speech_config(**changes):
    values = dict(
        audio_backbone="transformers",
        audio_encoder_config=LONG_WINDOW,
        audio_train_backbone=False,
        audio_input_frames=TINY_SPEC.max_audio_frames,
        audio_pooling="layer_stats",
        speech_labels=("calm", "angry"),
    )
    return tiny_model_config(TINY_SPEC, **(values | changes))


def audio_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    log_mel = torch.rand(3, TINY_SPEC.n_mels, TINY_SPEC.max_audio_frames, generator=generator) - 0.5
    mask = torch.ones(3, TINY_SPEC.max_audio_frames, dtype=torch.bool)
    mask[1, 20:] = False  # a short utterance
    mask[2] = False  # no audio at all
    return log_mel, mask


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MoodreelModel(speech_config()).eval()


def test_window_is_cut_to_the_spec_keeping_the_first_positions(model):
    torch.manual_seed(0)
    full = MoodreelModel(speech_config(audio_input_frames=0)).eval()
    short, long = model.audio.backbone, full.audio.backbone
    assert short.input_frames == TINY_SPEC.max_audio_frames and long.input_frames == 256
    table = short.encoder.embed_positions.weight
    assert table.shape[0] == TINY_SPEC.max_audio_frames // 2
    assert torch.equal(table, long.encoder.embed_positions.weight[: table.shape[0]])


def test_statistics_cover_every_layer_and_only_real_frames(model):
    log_mel, mask = audio_batch()
    with torch.no_grad():
        states = model.audio.layer_statistics(log_mel, mask)
        assert states.shape == (3, LONG_WINDOW["encoder_layers"] + 1, 2 * LONG_WINDOW["d_model"])
        assert not states[2].any()  # no frames: zeros, not NaN
        # What lies in padded frames does not matter: they are replaced by Whisper's floor.
        changed = log_mel.clone()
        changed[1, :, 20:] = 3.0
        again = model.audio.layer_statistics(changed, mask)
    torch.testing.assert_close(states, again)
    assert not torch.equal(states[1], states[0])


def test_learned_layer_weighting_selects_layers(model):
    log_mel, mask = audio_batch()
    with torch.no_grad():
        states = model.audio.layer_statistics(log_mel, mask)
        model.audio.layer_logits.copy_(torch.tensor([0.0, 0.0, 30.0]))  # all weight on the last
        last_only = model.audio(None, None, states=states)
        expected = model.audio.project(states[:, -1])  # standardisation starts as identity
        torch.testing.assert_close(last_only, expected)
        model.audio.layer_logits.copy_(torch.tensor([30.0, 0.0, 0.0]))
        assert not torch.allclose(model.audio(None, None, states=states), last_only)
    assert model.audio.layer_logits.requires_grad  # learned with the heads


def test_cached_states_give_the_same_outputs_as_log_mels(model, tmp_path):
    log_mel, mask = audio_batch()
    modality_mask = torch.zeros(3, 3, dtype=torch.bool)
    modality_mask[:2, 1] = True
    examples = ExampleSet(
        tensors={"log_mel": log_mel.half(), "audio_mask": mask},
        modality_mask=modality_mask,
        emotion=torch.tensor([0, 1, -1]),
        sentiment=torch.tensor([0, 1, -1]),
    )
    with torch.no_grad():
        direct = model(ModelInputs(modality_mask=modality_mask, log_mel=log_mel.half(), audio_mask=mask))
    assert model.audio.caches_states
    cache_audio_states(model, examples, 2, "cpu", False, tmp_path)
    assert set(examples.tensors) == {"audio_states"}
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    with torch.no_grad():
        cached = model(examples.batch(torch.arange(3)).inputs)
    torch.testing.assert_close(cached.emotion_logits, direct.emotion_logits, atol=2e-3, rtol=2e-3)
    assert cached.modalities_used[:, 1].tolist() == [True, True, False]


def test_the_same_clips_inside_a_mixed_set_reuse_the_cache(model, tmp_path):
    log_mel, mask = audio_batch()
    audio_rows = torch.zeros(2, 3, dtype=torch.bool)
    audio_rows[:, 1] = True
    alone = ExampleSet(
        tensors={"log_mel": log_mel[:2].half(), "audio_mask": mask[:2]},
        modality_mask=audio_rows,
        emotion=torch.tensor([0, 1]),
        sentiment=torch.tensor([0, 1]),
    )
    text_rows = torch.zeros(3, 3, dtype=torch.bool)
    text_rows[:, 0] = True
    text_only = ExampleSet(
        tensors={
            "log_mel": torch.zeros(3, *log_mel.shape[1:], dtype=torch.float16),
            "audio_mask": mask[:3] & False,
        },
        modality_mask=text_rows,
        emotion=torch.tensor([2, 3, 4]),
        sentiment=torch.tensor([0, 1, 2]),
    )
    mixed = ExampleSet.concat([text_only, alone])
    cache_audio_states(model, alone, 2, "cpu", False, tmp_path)
    [entry] = tmp_path.glob("*.safetensors")
    stamp = entry.stat().st_mtime_ns
    cache_audio_states(model, mixed, 2, "cpu", False, tmp_path)
    assert list(tmp_path.glob("*.safetensors")) == [entry] and entry.stat().st_mtime_ns == stamp
    assert torch.equal(mixed.tensors["audio_states"][3:], alone.tensors["audio_states"])
    assert not mixed.tensors["audio_states"][:3].any()


def test_a_trained_encoder_is_not_cached():
    torch.manual_seed(0)
    assert not MoodreelModel(speech_config(audio_train_backbone=True)).audio.caches_states


def test_checkpoint_rebuilds_the_frozen_encoder_from_the_models_folder(tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    save_tiny_pretrained(LONG_WINDOW, models_dir / "tiny-whisper", seed=3)
    monkeypatch.setenv("MOODREEL_MODELS_DIR", str(models_dir))
    get_settings.cache_clear()
    try:
        config = speech_config(audio_encoder_config=None, audio_encoder="models:tiny-whisper")
        torch.manual_seed(0)
        model = MoodreelModel(config).eval()
        with torch.no_grad():
            model.audio.layer_logits.copy_(torch.tensor([1.0, -1.0, 0.5]))  # as training would
        save_checkpoint(tmp_path / "checkpoint", model, TINY_SPEC, {})
        stored = set(load_file(tmp_path / "checkpoint" / WEIGHTS_FILE))
        assert not any(name.startswith("audio.backbone.") for name in stored)
        assert {"audio.layer_logits", "audio.project.1.weight", "speech_head.weight"} <= stored
        text = (tmp_path / "checkpoint" / META_FILE).read_text()
        assert str(tmp_path) not in text  # the encoder is named portably, never by a path
        assert json.loads(text)["weights"]["base_rebuilt_from"]["audio"] == "models:tiny-whisper"

        reloaded = load_checkpoint(tmp_path / "checkpoint").model
        log_mel, mask = audio_batch(seed=1)
        inputs = ModelInputs(
            modality_mask=torch.tensor([[False, True, False]] * 3), log_mel=log_mel, audio_mask=mask
        )
        with torch.no_grad():
            torch.testing.assert_close(reloaded(inputs).speech_logits, model(inputs).speech_logits)

        monkeypatch.setenv("MOODREEL_MODELS_DIR", str(tmp_path / "empty"))
        get_settings.cache_clear()
        with pytest.raises(FileNotFoundError, match="make models"):
            load_checkpoint(tmp_path / "checkpoint")
    finally:
        get_settings.cache_clear()


def test_model_tar_carries_the_encoders_the_checkpoint_rebuilds(tmp_path, monkeypatch):
    """SageMaker's framework container has no `make models`: the archive brings the encoder."""
    import tarfile

    from services.model.serving.inference import model_fn
    from services.model.serving.packaging import package_model_tar

    save_tiny_pretrained(LONG_WINDOW, tmp_path / "models" / "tiny-whisper", seed=3)
    monkeypatch.setenv("MOODREEL_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    try:
        config = speech_config(audio_encoder_config=None, audio_encoder="models:tiny-whisper")
        torch.manual_seed(0)
        model = MoodreelModel(config).eval()
        save_checkpoint(tmp_path / "checkpoint", model, TINY_SPEC, {})
        archive_path = package_model_tar(tmp_path / "checkpoint", tmp_path / "model.tar.gz")
        with tarfile.open(archive_path) as archive:
            assert "models/tiny-whisper/config.json" in archive.getnames()
            archive.extractall(tmp_path / "opt-ml-model", filter="data")

        monkeypatch.setenv("MOODREEL_MODELS_DIR", str(tmp_path / "empty"))
        get_settings.cache_clear()
        served = model_fn(tmp_path / "opt-ml-model")
        log_mel, mask = audio_batch(seed=1)
        inputs = ModelInputs(
            modality_mask=torch.tensor([[False, True, False]] * 3), log_mel=log_mel, audio_mask=mask
        )
        with torch.no_grad():
            torch.testing.assert_close(served.loaded.model(inputs).speech_logits, model(inputs).speech_logits)
    finally:
        get_settings.cache_clear()
