"""Fitting the fusion gate: designs selected by cross-validation on rows where which modality is
right depends on the kind of input, not on how sure each modality is."""

from __future__ import annotations

import torch

from services.model.core.checkpoint import load_checkpoint, save_checkpoint
from services.model.core.network import MoodreelModel
from services.model.testing import TINY_SPEC, tiny_model_config
from services.model.training.fusion_gate import GateDesign, select_and_fit
from tests.model.helpers import random_inputs

ROWS = 120
RELIABILITY = GateDesign("mixture", "head", False, 0, 1e-3)
EMBEDDING = GateDesign("mixture", "head", False, 0, 1e-3, agreement=True, embedding=2)


def tiny() -> MoodreelModel:
    torch.manual_seed(0)
    return MoodreelModel(tiny_model_config(TINY_SPEC)).eval()


@torch.no_grad()
def sources(model: MoodreelModel) -> dict[str, dict[str, torch.Tensor]]:
    """Two sources of text+audio rows, alike in every reading's confidence: in "synthetic" the
    text is right and the voice says nothing, in "acted" the voice is right and the text says
    nothing. Only the audio embedding's direction tells them apart."""
    generator = torch.Generator().manual_seed(1)
    collected = {}
    for name, right, offset in (("synthetic", 0, 3.0), ("acted", 1, -3.0)):
        embeddings = torch.randn(ROWS, 3, 16, generator=generator)
        embeddings[:, 1, 0] += offset
        embeddings[:, 2] = model.absent[2]
        used = torch.tensor([True, True, False]).expand(ROWS, 3).clone()
        label = model.modality_emotion_heads[right](embeddings[:, right]).argmax(-1)
        collected[name] = {
            "embeddings": embeddings,
            "used": used,
            "emotion": label,
            "sentiment": model.modality_sentiment_heads[right](embeddings[:, right]).argmax(-1),
        }
    return collected


def test_embedding_features_let_the_gate_trust_the_modality_that_earned_it():
    model = tiny()
    collected = sources(model)
    gate, report = select_and_fit(model, collected, designs=(RELIABILITY, EMBEDDING))
    scored = report["cross_validated"]
    assert report["design"]["embedding"] == 2 and report["design"]["agreement"]
    assert scored[EMBEDDING.name]["objective"] > scored[RELIABILITY.name]["objective"] + 0.1
    for name in ("synthetic", "acted"):
        held_out = scored[EMBEDDING.name]["sources"][name]
        assert held_out["weighted_f1"] > 0.8, (name, held_out)
    fitted = report["fitted_on_all_dev"]
    # The text expert dominates the synthetic rows, the voice the acted ones.
    assert fitted["synthetic"]["mean_weights"][0] > 0.7
    assert fitted["acted"]["mean_weights"][1] > 0.7
    # The embedding projections are fitted, not left at their random start.
    torch.manual_seed(0)  # the start select_and_fit refits from
    start = EMBEDDING.gate(16).gates[0].projections[1].weight
    assert not torch.allclose(gate.gates[0].projections[1].weight, start.half().float())
    # What is scored is what a float16 checkpoint serves.
    for parameter in gate.parameters():
        assert torch.equal(parameter, parameter.half().float())


def test_the_fitted_gate_travels_in_the_checkpoint_and_leaves_single_modality_rows(tmp_path):
    # The network as published (float16 weights), so the gated checkpoint's other weights match it.
    base = load_checkpoint(
        save_checkpoint(tmp_path / "base", tiny(), TINY_SPEC, {}, weights_dtype=torch.float16)
    )
    model = base.model.eval()
    masks = [[True, False, False], [False, True, False], [True, True, False], [True, True, True]]
    inputs = random_inputs(TINY_SPEC, masks, seed=3)
    with torch.no_grad():
        reference = model(inputs)
    gate, report = select_and_fit(model, sources(model), designs=(EMBEDDING,))
    design = report["design"]
    model.fusion_gate = gate
    model.config = model.config.replace(
        fusion_gate=design["pooling"],
        fusion_gate_experts=design["experts"],
        fusion_gate_joint=design["joint"],
        fusion_gate_hidden=design["hidden"],
        fusion_gate_agreement=design["agreement"],
        fusion_gate_embedding=design["embedding"],
    )
    save_checkpoint(tmp_path / "gated", model, TINY_SPEC, {}, weights_dtype=torch.float16)
    loaded = load_checkpoint(tmp_path / "gated").model.eval()
    assert loaded.config.fusion_gate_embedding == 2 and loaded.config.fusion_gate_agreement
    for name, tensor in gate.state_dict().items():
        assert torch.equal(loaded.fusion_gate.state_dict()[name], tensor), name
    with torch.no_grad():
        served = loaded(inputs)
    single = served.modalities_used.sum(-1) == 1
    assert single.sum() == 2
    for name in ("emotion_logits", "sentiment_logits"):
        assert torch.equal(getattr(served, name)[single], getattr(reference, name)[single]), name
        assert not torch.allclose(getattr(served, name)[~single], getattr(reference, name)[~single]), name
    assert torch.equal(served.modality_emotion_logits, reference.modality_emotion_logits)
