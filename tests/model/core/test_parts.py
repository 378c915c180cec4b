"""One table of the model's parts: every state entry belongs to exactly one part, and freezing,
learning rates and checkpoint storage all read that table."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from services.model.core import parts
from services.model.core.network import MoodreelModel
from services.model.core.parts import GROUPS, PARTS, part_of
from services.model.testing import (
    TINY_SPEC,
    save_tiny_pretrained,
    tiny_model_config,
    tiny_speech_encoder_config,
)
from services.model.training.config import TrainConfig
from services.model.training.optimizer import build_optimizer, frozen_parameters

RATES = {"lr_text_encoder": 1e-5, "lr_audio": 2e-4, "lr_visual": 3e-3, "lr_fusion": 4e-2}


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    text = save_tiny_pretrained(tiny_model_config(TINY_SPEC).text_encoder_config, root / "text", seed=1)
    speech = save_tiny_pretrained(tiny_speech_encoder_config(TINY_SPEC), root / "speech", seed=2)
    return text, speech


def configs(pretrained_dirs):
    text, speech = pretrained_dirs
    yield tiny_model_config(TINY_SPEC)
    yield tiny_model_config(
        TINY_SPEC,
        text_encoder=str(text),
        text_encoder_config=None,
        text_train_mode="top_layers",
        text_train_layers=1,
        audio_backbone="transformers",
        audio_encoder=str(speech),
        audio_train_backbone=False,
        audio_pooling="layer_stats",
        speech_labels=("calm", "happy"),
        fusion_adapters=True,
    )
    yield tiny_model_config(
        TINY_SPEC,
        text_train_mode="lora",
        visual_backbone="face_cnn",
        visual_encoder_config=None,
        visual_channels=(4, 8),
        audio_frequency_bands=2,
        fusion_adapters=True,
    )


def models(pretrained_dirs):
    for config in configs(pretrained_dirs):
        torch.manual_seed(0)
        yield MoodreelModel(config)


def test_every_state_entry_belongs_to_exactly_one_part(pretrained_dirs):
    for model in models(pretrained_dirs):
        names = set(model.state_dict()) | {name for name, _ in model.named_parameters()}
        for name in names:
            longest = max(len(p) for part in PARTS for p in part.prefixes if name.startswith(p))
            owners = [
                part.name for part in PARTS for p in part.prefixes if name.startswith(p) and len(p) == longest
            ]
            assert owners == [part_of(name).name], name
    # Every part is a member of the groups of its own modality only.
    for group, members in GROUPS.items():
        assert len({parts.PARTS_BY_NAME[member].modality for member in members}) == 1, group


def test_the_text_projection_is_one_part_everywhere(pretrained_dirs):
    model = next(models(pretrained_dirs))
    projection = dict(model.named_parameters())["text.project.1.weight"]
    assert part_of("text.project.1.weight").name == "text_projection"
    assert id(projection) in frozen_parameters(model, ("text",))
    assert id(projection) in frozen_parameters(model, ("text_encoder",))
    assert id(projection) not in frozen_parameters(model, ("fusion",))
    optimizer = build_optimizer(model, TrainConfig(**RATES))
    (group,) = [g for g in optimizer.param_groups if any(p is projection for p in g["params"])]
    assert group["lr"] == RATES[part_of("text.project.1.weight").learning_rate]


def test_freezing_learning_rates_and_storage_follow_the_table(pretrained_dirs):
    for model in models(pretrained_dirs):
        named = dict(model.named_parameters())
        for group, members in GROUPS.items():
            expected = {id(p) for name, p in named.items() if part_of(name).name in members}
            assert frozen_parameters(model, (group,)) == expected, group
        optimizer = build_optimizer(model, TrainConfig(**RATES))
        rate_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        for name, parameter in named.items():
            if parameter.requires_grad:
                assert rate_of[id(parameter)] == RATES[part_of(name).learning_rate], name
        config = model.config
        pretrained = {
            "text": config.text_is_pretrained,
            "audio": config.audio_is_pretrained,
            "visual": config.visual_is_pretrained,
        }
        expected_base = {
            name
            for name in model.state_dict()
            if part_of(name).pretrained_base
            and pretrained[part_of(name).modality]
            and (name not in named or not named[name].requires_grad)
        }
        assert model.base_state_names() == expected_base


def test_changing_the_table_changes_all_three(pretrained_dirs, monkeypatch):
    """Freezing, learning rates and storage have no table of their own: edit the one table and
    all three follow."""
    model = list(models(pretrained_dirs))[1]  # a pretrained text encoder, its top layer trained
    moved = [
        dataclasses.replace(part, learning_rate="lr_text_encoder", pretrained_base=True)
        if part.name == "text_projection"
        else part
        for part in PARTS
    ]
    monkeypatch.setattr(parts, "PARTS", tuple(moved))
    monkeypatch.setattr(parts, "PARTS_BY_NAME", {part.name: part for part in moved})
    monkeypatch.setitem(parts.GROUPS, "fusion", ("fusion", "text_projection"))
    projection = dict(model.named_parameters())["text.project.1.weight"]
    assert id(projection) in frozen_parameters(model, ("fusion",))
    optimizer = build_optimizer(model, TrainConfig(**RATES))
    (group,) = [g for g in optimizer.param_groups if any(p is projection for p in g["params"])]
    assert group["name"] == "text_encoder" and group["lr"] == RATES["lr_text_encoder"]
    projection.requires_grad_(False)
    assert "text.project.1.weight" in model.base_state_names()


def test_unknown_groups_are_refused(pretrained_dirs):
    model = next(models(pretrained_dirs))
    with pytest.raises(ValueError, match="heads"):
        frozen_parameters(model, ("heads",))
