"""FER2013 reader on real files (skipped without the data set), face augmentations, the
expression network and frozen batch norms."""

import numpy as np
import pytest
import torch

from services.model.core.config import ModelConfig
from services.model.core.network import MoodreelModel
from services.model.training.data.faces import FaceAugment, as_frames, fer_available, fer_files, read_gray
from shared.contract.labels import EMOTIONS

needs_fer = pytest.mark.skipif(
    not fer_available(),
    reason="FER2013 is not in MOODREEL_FACE_EXPRESSION_DIR/fer2013 (research data, never in the repository)",
)


def tiny_face_model(**overrides) -> MoodreelModel:
    """A random-weight model with a tiny text encoder and the face CNN as its visual branch."""
    tiny_text = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1}
    config = ModelConfig(
        text_encoder_config=tiny_text | {"num_attention_heads": 2, "intermediate_size": 32},
        visual_backbone="face_cnn",
        visual_channels=(8, 16),
        embed_dim=16,
        fusion_hidden=16,
        **overrides,
    )
    return MoodreelModel(config)


@needs_fer
def test_fer_splits_and_real_faces():
    dev, test = fer_files("dev"), fer_files("test")
    assert len(dev) == 3589 and len(test) == 3589  # PublicTest and PrivateTest
    assert all(path.name.startswith("PublicTest_") for path, _ in dev)
    assert {label for _, label in test} == set(EMOTIONS)
    picked = [dev[i] for i in range(0, len(dev), 700)]
    faces = np.stack([read_gray(path) for path, _ in picked])
    assert faces.shape == (len(picked), 48, 48) and faces.dtype == np.uint8 and faces.std() > 10
    frames = as_frames(faces, 48)
    assert frames.shape == (len(picked), 1, 3, 48, 48)
    assert (frames[:, :, 0] == frames[:, :, 2]).all() and (frames[:, 0, 1] == faces).all()
    assert as_frames(faces, 64).shape == (len(picked), 1, 3, 64, 64)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="no split"):
        fer_files("validation")


def test_augment_keeps_shape_and_flips():
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (6, 2, 3, 48, 48), dtype=torch.uint8)
    out = FaceAugment()(frames, generator)
    assert out.shape == frames.shape and out.dtype == torch.uint8 and not torch.equal(out, frames)
    flip_only = FaceAugment(
        flip_probability=1.0, max_shift=0.0, zoom=(1.0, 1.0), max_rotation_degrees=0.0, brightness=0.0,
        contrast=(1.0, 1.0), blur_probability=0.0, jpeg_probability=0.0,
    )  # fmt: skip
    assert (flip_only(frames, generator).int() - frames.flip(-1).int()).abs().max() <= 1


def test_face_cnn_reads_frames_and_frozen_norms_stay():
    from services.model.training.optimizer import frozen_parameters, keep_frozen_statistics

    model = tiny_face_model()
    frames = torch.randint(0, 256, (3, 4, 3, 48, 48), dtype=torch.uint8)
    embedding = model.visual(frames)
    assert embedding.shape == (3, 16)
    model.train()
    keep_frozen_statistics(model, frozen_parameters(model, ("visual_encoder",)))
    norms = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = norms[0].running_mean.clone()
    model.visual(frames)
    assert torch.equal(before, norms[0].running_mean)


def test_flip_average_reads_a_face_and_its_mirror_alike_at_inference_only():
    frames = torch.randint(0, 256, (2, 3, 3, 48, 48), dtype=torch.uint8)
    mirrored = frames.flip(-1)
    averaged = tiny_face_model(visual_flip_average=True).eval()
    torch.testing.assert_close(averaged.visual(frames), averaged.visual(mirrored))
    plain = tiny_face_model().eval()
    assert not torch.allclose(plain.visual(frames), plain.visual(mirrored))
    # the same weights without the average: in training mode it reads the frames as given
    plain.load_state_dict(averaged.state_dict())
    torch.manual_seed(0)
    trained = averaged.train().visual(frames)
    torch.manual_seed(0)
    torch.testing.assert_close(trained, plain.train().visual(frames))


def test_cached_visual_embedding_gives_the_frames_output():
    from services.model.training.caches import cache_visual_embedding
    from services.model.training.data.examples import ExampleSet

    model = tiny_face_model(trained_modalities=("visual",)).eval()
    frames = torch.randint(0, 256, (5, 1, 3, 48, 48), dtype=torch.uint8)
    mask = torch.zeros(5, 3, dtype=torch.bool)
    mask[:4, 2] = True  # the last row has no face
    examples = ExampleSet(
        {"frames": frames.clone()}, mask, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)
    )
    direct = model(examples.batch(torch.arange(5)).inputs)
    cache_visual_embedding(model, examples, 2, "cpu")
    assert "frames" not in examples.tensors and examples.tensors["visual_embedding"].shape == (5, 16)
    batch = examples.batch(torch.arange(5)).inputs
    assert batch.frames is None
    cached = model(batch)
    torch.testing.assert_close(cached.emotion_logits, direct.emotion_logits)
    assert cached.modalities_used[:, 2].tolist() == [True] * 4 + [False]


def test_composition_keeps_the_default_figures_and_names_its_own(tmp_path):
    from services.model.core.checkpoint import load_checkpoint, save_checkpoint
    from services.model.testing import TINY_SPEC, build_tiny_checkpoint
    from services.model.training.config import TrainConfig
    from services.model.training.loop import carried_metrics

    report = {"emotion": {"accuracy": 0.5, "weighted_f1": 0.4, "macro_f1": 0.3, "ece": 0.1}, "losses": {}}
    default = build_tiny_checkpoint(tmp_path / "default")

    loaded = load_checkpoint(default)
    meta = loaded.meta | {"name": "default", "metrics": {"dev": report, "ravdess_test": report}}
    save_checkpoint(default, loaded.model, TINY_SPEC, meta)
    visual = tmp_path / "visual"
    training = {"seconds": 120.0, "machine": "CPU x86_64, 2 cores", "history": [{"epoch": 1}]}
    save_checkpoint(visual, loaded.model, TINY_SPEC, meta | {"name": "fer", "training": training})
    config = TrainConfig(sources=("fer2013",), init_from=(f"text+audio+fusion={default}", f"visual={visual}"))
    own = dict(report, emotion=dict(report["emotion"], accuracy=0.7))
    published: dict = {}
    metrics = carried_metrics(config, {"dev": own}, published)
    assert metrics == {"dev": report, "ravdess_test": report, "fer2013_dev": own}
    assert published["metrics_carried"]["splits"] == ["dev", "ravdess_test"]
    visual_run = published["initial_training"]["visual"]
    assert visual_run["name"] == "fer" and visual_run["seconds"] == 120.0 and "history" not in visual_run
    assert visual_run["dev"]["emotion_accuracy"] == 0.5
    from services.model.training.model_card import render_model_card

    card = render_model_card(published | {"metrics": {}}, loaded.config, TINY_SPEC)
    assert "- visual: `fer` (test), best epoch None of None, 120.0 s" in card
    assert "The figures of dev, ravdess_test are `default@test`'s" in card
