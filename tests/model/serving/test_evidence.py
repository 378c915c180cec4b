"""No evidence, no label; the client's modalities; the transcript's language; calibration."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from services.model.core.checkpoint import META_FILE, load_checkpoint
from services.model.core.network import inputs_from_bundle
from services.model.serving.inference import ServedModel, build_response, predict_fn
from services.model.training import calibration
from services.model.training.data.examples import ExampleSet
from shared.contract.bundle import CONTENT_TYPE
from shared.contract.labels import MODALITIES
from shared.contract.predictions import InvocationResponse

from .conftest import make_bundle


def test_an_utterance_without_any_modality_has_null_labels_with_the_reason(server_url: str):
    masks = [[True, True, True], [False, False, False], [False, True, False]]
    bundle = make_bundle(count=3, modality_mask=masks, seed=1)
    response = httpx.post(
        f"{server_url}/invocations",
        content=bundle.to_bytes(),
        headers={"Content-Type": CONTENT_TYPE, "Accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    raw = response.json()["utterances"]
    assert raw[1]["emotion"] is None and raw[1]["sentiment"] is None
    assert (
        raw[1]["reason"] == "no_evidence" and raw[1]["modalities_used"] == [] and raw[1]["modalities"] == {}
    )
    labelled = InvocationResponse.model_validate_json(response.content).utterances
    for row in (0, 2):
        assert labelled[row].reason is None and labelled[row].emotion is not None
        assert labelled[row].sentiment is not None


def _masked_bundle(bundle, mask):
    return dataclasses.replace(bundle, modality_mask=np.asarray(mask, dtype=bool))


SUBSETS = [list(s) for n in range(1, 4) for s in itertools.combinations(MODALITIES, n)]


@pytest.mark.parametrize("requested", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_requested_modalities_are_the_only_ones_used_and_the_rest_say_why(
    served_model: ServedModel, requested: list[str]
):
    bundle = make_bundle(count=3, seed=2)
    bundle.media["modalities_requested"] = requested
    result = build_response(predict_fn(bundle, served_model)).utterances
    keep = [name in requested for name in MODALITIES]
    # The same rows with the unrequested modalities absent: identical probabilities, so their content
    # cannot have counted.
    with torch.inference_mode():
        output = served_model.loaded.model(inputs_from_bundle(_masked_bundle(bundle, [keep] * 3)))
    expected = output.emotion_logits.softmax(-1).numpy()
    for row, prediction in enumerate(result):
        assert prediction.modalities_used == requested
        assert list(prediction.modalities) == requested  # each used modality's own scores
        assert prediction.modalities_masked == {m: "not_requested" for m in MODALITIES if m not in requested}
        np.testing.assert_allclose(list(prediction.emotion.scores.values()), expected[row], atol=1e-5)


def test_only_unrequested_modalities_present_means_no_evidence(served_model: ServedModel):
    bundle = make_bundle(count=2, modality_mask=[[False, True, False]] * 2)
    bundle.media["modalities_requested"] = ["text", "visual"]
    for prediction in build_response(predict_fn(bundle, served_model)).utterances:
        assert prediction.emotion is None and prediction.reason == "no_evidence"
        assert prediction.modalities_masked == {"audio": "not_requested"}


@pytest.mark.parametrize(
    ("language", "text_used"),
    [
        ({"code": "fr", "probability": 0.99}, False),
        ({"code": "en", "probability": 0.99}, True),
        ({"code": None}, True),
    ],
    ids=["french", "english", "undetermined"],
)
def test_text_in_a_language_the_encoder_does_not_read_is_masked(
    served_model: ServedModel, language: dict, text_used: bool
):
    assert served_model.loaded.config.text_languages == ("en",)
    bundle = make_bundle(count=2, modality_mask=[[True, True, False], [True, False, False]])
    bundle.media["language"] = language
    first, text_only = build_response(predict_fn(bundle, served_model)).utterances
    if text_used:
        assert first.modalities_used == ["text", "audio"] and text_only.modalities_used == ["text"]
        assert "text" not in first.modalities_masked
    else:
        assert first.modalities_used == ["audio"]
        assert first.modalities_masked == {"text": "language_unsupported"}
        assert text_only.emotion is None and text_only.reason == "no_evidence"
        assert text_only.modalities_masked == {"text": "language_unsupported"}


def test_a_text_encoder_declared_for_every_language_reads_any(served_model: ServedModel):
    config = dataclasses.replace(served_model.loaded.config, text_languages=())
    served = dataclasses.replace(served_model, loaded=dataclasses.replace(served_model.loaded, config=config))
    bundle = make_bundle(count=1, modality_mask=[[True, False, False]])
    bundle.media["language"] = {"code": "de", "probability": 1.0}
    [prediction] = build_response(predict_fn(bundle, served)).utterances
    assert prediction.modalities_used == ["text"]


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 7))
    probabilities = torch.softmax(torch.as_tensor(logits) / 2.5, -1).numpy()
    targets = np.array([rng.choice(7, p=p) for p in probabilities])
    assert calibration.fit_temperature(logits, targets) == pytest.approx(2.5, rel=0.08)


@pytest.mark.parametrize(("seed", "kept"), [(0, True), (6, False)])
def test_a_temperature_is_kept_only_where_it_lowers_its_rows_ece(seed, kept):
    # Labels drawn from the logits themselves: the NLL-optimal temperature sits near 1 and, on 200
    # rows, lowers ECE for one draw (seed 0: 0.081 -> 0.061) and raises it for another (seed 6).
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (200, 7))
    targets = np.array([rng.choice(7, p=row) for row in torch.softmax(torch.as_tensor(logits), -1).numpy()])
    fitted = calibration.fitted_temperature(logits, targets)
    assert fitted["kept"] is kept
    assert (fitted["ece_after"] < fitted["ece_before"]) is kept
    assert fitted["temperature"] != 1.0 and fitted["rows"] == 200


def _examples(bundle, labels_seed: int) -> ExampleSet:
    rng = np.random.default_rng(labels_seed)
    tensors = {
        name: torch.as_tensor(np.asarray(getattr(bundle, name)))
        for name in ("input_ids", "attention_mask", "token_type_ids", "log_mel", "audio_mask", "frames")
    }
    count = len(bundle)
    return ExampleSet(
        tensors=tensors,
        modality_mask=torch.as_tensor(np.asarray(bundle.modality_mask)),
        emotion=torch.as_tensor(rng.integers(0, 7, count)),
        sentiment=torch.as_tensor(rng.integers(0, 3, count)),
    )


def test_calibration_is_fitted_per_combination_stored_in_the_checkpoint_and_served(
    tiny_checkpoint: Path, tmp_path: Path
):
    import shutil

    directory = tmp_path / "calibrated"
    shutil.copytree(tiny_checkpoint, directory)
    loaded = load_checkpoint(directory)
    masks = [[True, False, False]] * 40 + [[True, True, False]] * 40 + [[False, False, True]] * 10
    bundle = make_bundle(count=len(masks), modality_mask=masks, seed=4)
    fitted = calibration.fit(loaded.model, {"dev": _examples(bundle, 7)})
    # Random labels: the fit flattens the confidences (temperature above 1) of the combinations with
    # enough rows, and leaves the one with too few (visual alone, 10 rows) at 1.
    assert fitted["fused"]["emotion"]["text"] > 1 and fitted["fused"]["emotion"]["text+audio"] > 1
    assert "visual" not in fitted["fused"]["emotion"] and fitted["rows"]["emotion"]["visual"] == 10
    assert fitted["modality"]["emotion"]["text"] > 1
    assert (
        fitted["dev_sets"]["dev"]["emotion"]["ece_after"]
        <= fitted["dev_sets"]["dev"]["emotion"]["ece_before"]
    )
    # Only the temperatures that lower their own rows' ECE are stored; every fit is reported.
    for head in ("emotion", "sentiment"):
        for name, fit in fitted["fits"][head].items():
            stored = fitted["modality" if name.endswith("_head") else "fused"][head]
            key = name.removesuffix("_head")
            assert fit["kept"] == (fit["ece_after"] < fit["ece_before"])
            assert stored.get(key) == (fit["temperature"] if fit["kept"] else None)

    document = json.loads((directory / META_FILE).read_text())
    document["meta"]["calibration"] = fitted
    (directory / META_FILE).write_text(json.dumps(document))
    calibrated = load_checkpoint(directory).model
    raw = load_checkpoint(tiny_checkpoint).model
    text_rows = bundle.select(slice(0, 40))
    with torch.inference_mode():
        before = raw(inputs_from_bundle(text_rows)).emotion_logits
        after = calibrated(inputs_from_bundle(text_rows)).emotion_logits
    torch.testing.assert_close(after, before / fitted["fused"]["emotion"]["text"], atol=1e-5, rtol=1e-4)
    assert torch.equal(after.argmax(-1), before.argmax(-1))  # temperatures change no label
    assert after.softmax(-1).amax(-1).mean() < before.softmax(-1).amax(-1).mean()
