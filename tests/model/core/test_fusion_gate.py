"""The fusion gate: reliability-weighted pooling only where two or more modalities are used."""

from __future__ import annotations

import itertools

import pytest
import torch

from services.model.core.checkpoint import load_checkpoint, save_checkpoint
from services.model.core.gate import FusionGate, expert_logits
from services.model.core.network import MoodreelModel
from services.model.testing import TINY_SPEC, tiny_model_config
from tests.model.helpers import random_inputs

MASKS = [list(combo) for combo in itertools.product([False, True], repeat=3)]
DESIGNS = list(itertools.product(("log_linear", "mixture"), ("solo", "head"), (False, True), (0, 4)))
# Gates that also read the modalities' agreement and a projection of their embeddings, and set
# the pooled reading's own temperature.
FEATURED = [
    (*design, agreement, embedding, temperature)
    for design in DESIGNS[::3]
    for agreement, embedding, temperature in ((True, 0, False), (False, 2, True), (True, 2, True))
]


def build(**changes) -> MoodreelModel:
    torch.manual_seed(0)
    return MoodreelModel(tiny_model_config(TINY_SPEC, **changes)).eval()


def randomise_gate(model: MoodreelModel) -> None:
    """A fitted-looking gate: non-zero weights and temperatures (a zero gate weighs experts equally)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.fusion_gate.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def gated(
    pooling: str,
    experts: str,
    joint: bool,
    hidden: int,
    agreement: bool = False,
    embedding: int = 0,
    temperature: bool = False,
) -> MoodreelModel:
    model = build(
        fusion_gate=pooling,
        fusion_gate_experts=experts,
        fusion_gate_joint=joint,
        fusion_gate_hidden=hidden,
        fusion_gate_agreement=agreement,
        fusion_gate_embedding=embedding,
        fusion_gate_temperature=temperature,
    )
    randomise_gate(model)
    return model


def ungated_twin(model: MoodreelModel) -> MoodreelModel:
    twin = build()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(name.startswith("fusion_gate.") for name in unexpected)
    return twin.eval()


@pytest.mark.parametrize(("pooling", "experts", "joint", "hidden"), DESIGNS)
@torch.no_grad()
def test_rows_with_at_most_one_modality_keep_the_ungated_output_bit_for_bit(pooling, experts, joint, hidden):
    model = gated(pooling, experts, joint, hidden)
    inputs = random_inputs(TINY_SPEC, MASKS, seed=5)
    with_gate, without = model(inputs), ungated_twin(model)(inputs)
    single = with_gate.modalities_used.sum(-1) <= 1
    assert single.sum() == 4 and (~single).sum() == 4
    for name in ("emotion_logits", "sentiment_logits"):
        assert torch.equal(getattr(with_gate, name)[single], getattr(without, name)[single]), name
        assert not torch.allclose(getattr(with_gate, name)[~single], getattr(without, name)[~single]), name
    for name in ("modality_emotion_logits", "modality_sentiment_logits", "modalities_used"):
        assert torch.equal(getattr(with_gate, name), getattr(without, name)), name


@torch.no_grad()
def test_a_row_of_two_modalities_is_its_experts_pooled():
    model = gated("log_linear", "solo", False, 0)
    inputs = random_inputs(TINY_SPEC, [[True, True, False]], seed=2)
    pooled = torch.log_softmax(model(inputs).emotion_logits[0], -1)
    # A modality's "solo" expert is what the row with only that modality gets.
    weights = _weights(model, inputs)[0]
    experts = torch.stack(
        [
            torch.log_softmax(
                model(_only(inputs, m)).emotion_logits[0] / model.fusion_gate.log_temperature[0, m].exp(), -1
            )
            for m in (0, 1)
        ]
    )
    expected = torch.log_softmax(weights[0] * experts[0] + weights[1] * experts[1], -1)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def _only(inputs, modality: int):
    mask = torch.zeros_like(inputs.modality_mask)
    mask[:, modality] = inputs.modality_mask[:, modality]
    return type(inputs)(**{**inputs.__dict__, "modality_mask": mask})


def _weights(model: MoodreelModel, inputs) -> torch.Tensor:
    captured = {}

    def keep(_module, args, output):
        captured.setdefault("weights", output)

    handle = model.fusion_gate.gates[0].register_forward_hook(keep)
    try:
        model(inputs)
    finally:
        handle.remove()
    return captured["weights"]


@pytest.mark.parametrize(("pooling", "experts", "joint", "hidden"), DESIGNS)
@torch.no_grad()
def test_weights_sum_to_one_and_an_absent_modality_weighs_nothing(pooling, experts, joint, hidden):
    model = gated(pooling, experts, joint, hidden)
    inputs = random_inputs(TINY_SPEC, MASKS, seed=1)
    weights = _weights(model, inputs)
    used = model(inputs).modalities_used
    pooled_used = used[used.sum(-1) >= 2]
    modality_weights = weights[:, :3]
    assert torch.allclose(weights.sum(-1), torch.ones(len(weights)))
    assert torch.all(modality_weights[~pooled_used] == 0)
    assert torch.all(modality_weights[pooled_used] > 0)
    if joint:
        assert torch.all(weights[:, 3] > 0)


def test_gate_is_a_bounded_choice():
    with pytest.raises(ValueError, match="fusion_gate"):
        FusionGate("average", "solo", False, 0)
    with pytest.raises(ValueError, match="fusion_gate_experts"):
        FusionGate("mixture", "everything", False, 0)


@torch.no_grad()
def test_expert_logits_have_one_expert_per_modality_plus_the_joint_one():
    model = gated("mixture", "head", True, 0)
    embeddings = [torch.randn(2, 16) for _ in range(3)]
    used = torch.tensor([[True, True, False], [True, False, True]])
    emotion, sentiment, present = expert_logits(model, embeddings, used, torch.randn(2, 16))
    assert emotion.shape == (2, 4, 7) and sentiment.shape == (2, 4, 3)
    assert present.tolist() == [[True, True, False, True], [True, False, True, True]]


def test_the_gate_is_saved_and_loaded_with_the_checkpoint(tmp_path):
    model = gated("log_linear", "solo", True, 4)
    save_checkpoint(tmp_path, model, TINY_SPEC, {})
    loaded = load_checkpoint(tmp_path)
    assert loaded.config.fusion_gate == "log_linear" and loaded.config.fusion_gate_hidden == 4
    for name, tensor in model.fusion_gate.state_dict().items():
        assert torch.equal(loaded.model.fusion_gate.state_dict()[name], tensor), name
    inputs = random_inputs(TINY_SPEC, MASKS, seed=4)
    with torch.no_grad():
        assert torch.equal(model(inputs).emotion_logits, loaded.model(inputs).emotion_logits)


def test_a_checkpoint_without_a_gate_loads_and_behaves_as_before(tmp_path):
    model = build()
    save_checkpoint(tmp_path, model, TINY_SPEC, {})
    loaded = load_checkpoint(tmp_path)
    assert loaded.model.fusion_gate is None and loaded.config.fusion_gate == ""
    assert not any(name.startswith("fusion_gate.") for name in loaded.model.state_dict())
    inputs = random_inputs(TINY_SPEC, MASKS, seed=4)
    with torch.no_grad():
        before, after = model(inputs), loaded.model(inputs)
    assert torch.equal(before.emotion_logits, after.emotion_logits)
    assert torch.equal(before.sentiment_logits, after.sentiment_logits)


@pytest.mark.parametrize(
    ("pooling", "experts", "joint", "hidden", "agreement", "embedding", "temperature"), FEATURED
)
@torch.no_grad()
def test_a_gate_reading_agreement_and_embeddings_keeps_single_modality_rows_bit_for_bit(
    pooling, experts, joint, hidden, agreement, embedding, temperature
):
    model = gated(pooling, experts, joint, hidden, agreement, embedding, temperature)
    inputs = random_inputs(TINY_SPEC, MASKS, seed=5)
    with_gate, without = model(inputs), ungated_twin(model)(inputs)
    single = with_gate.modalities_used.sum(-1) <= 1
    for name in ("emotion_logits", "sentiment_logits"):
        assert torch.equal(getattr(with_gate, name)[single], getattr(without, name)[single]), name
        assert not torch.allclose(getattr(with_gate, name)[~single], getattr(without, name)[~single]), name
    weights = _weights(model, inputs)
    pooled_used = with_gate.modalities_used[with_gate.modalities_used.sum(-1) >= 2]
    assert torch.allclose(weights.sum(-1), torch.ones(len(weights)))
    assert torch.all(weights[:, :3][~pooled_used] == 0)


@torch.no_grad()
def test_the_embedding_features_see_only_used_modalities_and_move_the_weights():
    model = gated("mixture", "head", True, 0, agreement=True, embedding=2)
    gate = model.fusion_gate.gates[0]
    log_probs = torch.log_softmax(torch.randn(2, 4, 7), -1)
    present = torch.tensor([[True, True, False, True], [True, True, False, True]])
    embeddings = torch.randn(2, 3, 16)
    features = gate.features(log_probs, present, embeddings)
    assert features.shape == (2, 4 * 4 + 3 + 3 * 2)
    agreement, projected = features[:, 16:19], features[:, 19:].view(2, 3, 2)
    # Only text and audio are present: their pair agrees with some probability, the others are 0.
    assert torch.all(agreement[:, 0] > 0) and torch.all(agreement[:, 1:] == 0)
    assert torch.all(projected[:, 2] == 0) and torch.all(projected[:, :2] != 0)
    # What the visual branch would have said cannot count.
    other = embeddings.clone()
    other[:, 2] = torch.randn(2, 16)
    assert torch.equal(gate(log_probs, present, embeddings), gate(log_probs, present, other))
    # The audio embedding (the kind of voice) alone moves the weights, the readings unchanged.
    other[:, 1] = torch.randn(2, 16)
    assert not torch.allclose(gate(log_probs, present, embeddings), gate(log_probs, present, other))
    with pytest.raises(ValueError, match="embeddings"):
        gate(log_probs, present)


def test_a_gate_with_embedding_features_is_saved_and_loaded_with_the_checkpoint(tmp_path):
    model = gated("mixture", "head", True, 4, agreement=True, embedding=2, temperature=True)
    save_checkpoint(tmp_path, model, TINY_SPEC, {})
    loaded = load_checkpoint(tmp_path)
    assert loaded.config.fusion_gate_agreement and loaded.config.fusion_gate_embedding == 2
    assert loaded.config.fusion_gate_temperature
    stored = loaded.model.fusion_gate.state_dict()
    assert any(".projections." in name for name in stored)
    assert any(name.startswith("scales.") for name in stored)
    for name, tensor in model.fusion_gate.state_dict().items():
        assert torch.equal(stored[name], tensor), name
    inputs = random_inputs(TINY_SPEC, MASKS, seed=4)
    with torch.no_grad():
        assert torch.equal(model(inputs).emotion_logits, loaded.model(inputs).emotion_logits)
        assert torch.equal(model(inputs).sentiment_logits, loaded.model(inputs).sentiment_logits)


@torch.no_grad()
def test_the_gates_own_temperature_changes_confidence_but_no_label():
    model = gated("mixture", "head", True, 4, agreement=True, embedding=2, temperature=True)
    inputs = random_inputs(TINY_SPEC, MASKS, seed=6)
    sharp = model(inputs).emotion_logits
    with torch.no_grad():
        for scale in model.fusion_gate.scales:
            scale.weight.zero_()
            scale.bias.fill_(-3.0)  # temperature e^(2 tanh(-1.5)) < 1 on every row
    sharper = model(inputs).emotion_logits
    pooled = model(inputs).modalities_used.sum(-1) >= 2
    assert torch.equal(sharp.argmax(-1), sharper.argmax(-1))
    top = torch.softmax(sharp[pooled], -1).max(-1).values
    assert torch.all(torch.softmax(sharper[pooled], -1).max(-1).values > top)
    assert torch.equal(sharp[~pooled], sharper[~pooled])
