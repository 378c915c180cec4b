import json

import pytest
import torch
from safetensors.torch import load_file

from services.model.core.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from services.model.core.network import MoodreelModel
from services.model.testing import (
    TINY_SPEC,
    build_tiny_checkpoint,
    save_tiny_pretrained,
    tiny_model_config,
    tiny_speech_encoder_config,
)
from tests.model.helpers import random_inputs

MASKS = [[True, True, True], [True, False, False], [False, True, True], [False, False, True]]


def outputs(model, seed=0):
    with torch.no_grad():
        out = model.eval()(random_inputs(TINY_SPEC, MASKS, seed=seed))
    return out


def assert_same(a, b):
    for name in (
        "emotion_logits",
        "sentiment_logits",
        "modality_emotion_logits",
        "modality_sentiment_logits",
    ):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.modalities_used, b.modalities_used)


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = MoodreelModel(tiny_model_config(TINY_SPEC)).eval()
    save_checkpoint(tmp_path, model, TINY_SPEC, {"name": "t", "metrics": {"test": {"weighted_f1": 0.5}}})
    loaded = load_checkpoint(tmp_path)
    assert_same(outputs(model), outputs(loaded.model))
    assert loaded.spec == TINY_SPEC
    assert loaded.config == model.config
    assert loaded.meta["metrics"] == {"test": {"weighted_f1": 0.5}}
    assert loaded.meta["trained_modalities"] == ["text", "audio", "visual"]
    assert not loaded.model.training


def test_tiny_checkpoint_is_small_deterministic_and_loads(tmp_path):
    first = build_tiny_checkpoint(tmp_path / "a")
    second = build_tiny_checkpoint(tmp_path / "b")
    size = (first / WEIGHTS_FILE).stat().st_size
    assert size < 800_000
    assert (first / WEIGHTS_FILE).read_bytes() == (second / WEIGHTS_FILE).read_bytes()
    loaded_a, loaded_b = load_checkpoint(first), load_checkpoint(second)
    assert_same(outputs(loaded_a.model), outputs(loaded_b.model))
    assert outputs(loaded_a.model).modalities_used.tolist() == MASKS


def pretend_trained(module: torch.nn.Module) -> None:
    """Change every trainable weight of ``module``, as training would."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)


@pytest.fixture(scope="module")
def local_base_encoder(tmp_path_factory):
    """A pretrained-style encoder directory (save_pretrained), standing in for a package's model."""
    config = tiny_model_config(TINY_SPEC).text_encoder_config
    return save_tiny_pretrained(config, tmp_path_factory.mktemp("base-encoder"), seed=1)


@pytest.mark.parametrize("mode", ["top_layers", "lora", "frozen"])
def test_pretrained_base_is_rebuilt_not_stored(tmp_path, local_base_encoder, mode):
    config = tiny_model_config(
        TINY_SPEC, text_encoder=str(local_base_encoder), text_encoder_config=None, text_train_mode=mode
    ).replace(text_train_layers=1)
    torch.manual_seed(0)
    model = MoodreelModel(config)
    pretend_trained(model.text.backbone)
    save_checkpoint(tmp_path, model, TINY_SPEC.model_copy(update={"tokenizer": str(local_base_encoder)}), {})
    stored = set(load_file(tmp_path / WEIGHTS_FILE))
    text_stored = {name for name in stored if name.startswith("text.backbone.")}
    if mode == "top_layers":
        assert text_stored and all(".layer.1." in name for name in text_stored)
    elif mode == "lora":
        assert text_stored and all("lora_" in name for name in text_stored)
    else:
        assert not text_stored
    assert "text.backbone.embeddings.word_embeddings.weight" not in stored
    assert_same(outputs(model), outputs(load_checkpoint(tmp_path).model))


@pytest.mark.parametrize("train_backbone", [False, True])
def test_pretrained_speech_encoder_is_rebuilt_unless_trained(tmp_path, train_backbone):
    """A Whisper-style speech encoder from a local directory: frozen, only the projection and
    heads are stored; fine-tuned, its weights are stored too. Both reload to the same outputs."""
    save_tiny_pretrained(tiny_speech_encoder_config(TINY_SPEC), tmp_path / "speech-encoder", seed=2)
    config = tiny_model_config(
        TINY_SPEC,
        audio_backbone="transformers",
        audio_encoder=str(tmp_path / "speech-encoder"),
        audio_train_backbone=train_backbone,
    )
    torch.manual_seed(0)
    model = MoodreelModel(config)
    pretend_trained(model.audio.backbone)
    save_checkpoint(tmp_path / "checkpoint", model, TINY_SPEC, {})
    stored = set(load_file(tmp_path / "checkpoint" / WEIGHTS_FILE))
    backbone_stored = {name for name in stored if name.startswith("audio.backbone.")}
    assert bool(backbone_stored) == train_backbone
    assert not any(".decoder." in name for name in stored)  # only the encoder is kept
    assert {"audio.project.1.weight", "modality_emotion_heads.1.weight"} <= stored
    document = json.loads((tmp_path / "checkpoint" / META_FILE).read_text())
    assert document["weights"]["base_rebuilt_from"]["audio"] == str(tmp_path / "speech-encoder")
    assert_same(outputs(model), outputs(load_checkpoint(tmp_path / "checkpoint").model))


def test_float16_storage_halves_the_file_and_stays_close(tmp_path):
    torch.manual_seed(0)
    model = MoodreelModel(tiny_model_config(TINY_SPEC)).eval()
    save_checkpoint(tmp_path / "full", model, TINY_SPEC, {})
    save_checkpoint(tmp_path / "half", model, TINY_SPEC, {}, weights_dtype=torch.float16)
    full = (tmp_path / "full" / WEIGHTS_FILE).stat().st_size
    half = (tmp_path / "half" / WEIGHTS_FILE).stat().st_size
    assert half < 0.6 * full
    torch.testing.assert_close(
        outputs(model).emotion_logits,
        outputs(load_checkpoint(tmp_path / "half").model).emotion_logits,
        atol=1e-2,
        rtol=1e-2,
    )


def test_mismatched_weights_are_refused(tmp_path):
    build_tiny_checkpoint(tmp_path)
    document = json.loads((tmp_path / META_FILE).read_text())
    document["model_config"]["fusion_hidden"] = 32
    (tmp_path / META_FILE).write_text(json.dumps(document))
    with pytest.raises((CheckpointError, RuntimeError)):
        load_checkpoint(tmp_path)


def test_wrong_format_or_missing_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)
    build_tiny_checkpoint(tmp_path)
    document = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps(document | {"format_version": 99}))
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(tmp_path)


def test_saved_and_published_files_are_readable_by_other_users(tmp_path):
    """The model container runs as another user than the one that trained the checkpoint."""
    import stat

    from services.model.testing import build_tiny_checkpoint
    from services.model.training.loop import publish

    checkpoint = build_tiny_checkpoint(tmp_path / "trained")
    published = tmp_path / "published"
    assert publish(checkpoint, published, max_mb=100)
    for directory in (checkpoint, published):
        files = [path for path in directory.iterdir() if path.is_file()]
        assert any(path.suffix == ".safetensors" for path in files)
        for path in files:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o044 == 0o044, f"{path.name} is {oct(mode)}"


def test_a_checkpoint_whose_tokenizer_is_not_its_text_encoder_is_refused(tmp_path, local_base_encoder):
    config = tiny_model_config(TINY_SPEC, text_encoder=str(local_base_encoder), text_encoder_config=None)
    own_tokenizer = TINY_SPEC.model_copy(update={"tokenizer": str(local_base_encoder)})
    save_checkpoint(tmp_path / "agrees", MoodreelModel(config), own_tokenizer, {})
    assert load_checkpoint(tmp_path / "agrees").spec.tokenizer == str(local_base_encoder)
    save_checkpoint(tmp_path / "disagrees", MoodreelModel(config), TINY_SPEC, {})
    with pytest.raises(ValueError, match="tokenizer") as refused:
        load_checkpoint(tmp_path / "disagrees")
    assert TINY_SPEC.tokenizer in str(refused.value) and str(local_base_encoder) in str(refused.value)
