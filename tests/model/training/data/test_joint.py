"""Joint rows (espeak-ng speech, beds) through the served feature code, and the fusion stage's
fast path (cached embeddings) giving exactly the network's own fused logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.model.core.checkpoint import load_checkpoint
from services.model.testing import TINY_SPEC, build_tiny_checkpoint
from services.model.training.data.joint import BEDS, JointRow, Voice, bed, rows_to_examples, synthesize
from services.model.training.fusion_stage import _fused_logits, embed
from shared.contract.labels import MODALITIES

GATED = TINY_SPEC.model_copy(update={"speech_gate": True, "speech_detector": "silero"})
TEXT, AUDIO = MODALITIES.index("text"), MODALITIES.index("audio")
MUSIC = ("staccato", "chords", "drums")


def test_synthetic_speech_passes_the_speech_gate_and_beds_do_not(silero_detector):
    rng = np.random.default_rng(0)
    speech = synthesize("I can't believe you did that, this is wonderful!", Voice("en-us", 150, 50), 16_000)
    assert 1.0 < len(speech) / 16_000 < 6.0
    rows = [JointRow("I can't believe it!", speech, 3, 2)]
    rows += [JointRow("Okay.", 0.1 * bed(kind, 48_000, 16_000, rng), 4, 1) for kind in BEDS]
    rows.append(JointRow("", None, -1, -1))
    examples = rows_to_examples(rows, GATED)
    assert examples.modality_mask[:, AUDIO].tolist() == [True] + [False] * len(BEDS) + [False]
    assert examples.modality_mask[:, TEXT].tolist() == [True] * (1 + len(BEDS)) + [False]
    assert examples.emotion.tolist() == [3] + [4] * len(BEDS) + [-1]
    # WebRTC's gate masks the noises, the tone and the notes at one level, and lets the music
    # that rises and falls through: why the beds have it.
    webrtc = rows_to_examples(rows, GATED.model_copy(update={"speech_detector": "webrtc"}))
    passed = {
        kind for kind, used in zip(BEDS, webrtc.modality_mask[1:-1, AUDIO].tolist(), strict=True) if used
    }
    assert passed and passed <= set(MUSIC)


def test_an_unknown_bed_is_refused():
    with pytest.raises(ValueError, match="unknown bed"):
        bed("applause", 100, 16_000, np.random.default_rng(0))


def test_the_fusion_stage_reads_the_networks_own_fused_logits(tmp_path):
    model = load_checkpoint(build_tiny_checkpoint(tmp_path / "tiny")).model
    rng = np.random.default_rng(1)
    rows = [
        JointRow(f"line {i} is here", rng.standard_normal(16_000).astype(np.float32) * 0.1, i % 7, i % 3)
        for i in range(6)
    ]
    examples = rows_to_examples(rows, TINY_SPEC)
    examples.modality_mask[::2, AUDIO] = False
    embeddings, used = embed(model, examples)
    with torch.no_grad():
        emotion, sentiment = _fused_logits(model, embeddings, used)
        output = model(examples.batch(torch.arange(len(examples))).inputs)
    torch.testing.assert_close(emotion, output.emotion_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sentiment, output.sentiment_logits, atol=1e-5, rtol=1e-4)
    assert torch.equal(used, output.modalities_used)


def test_faces_alone_and_beside_neutral_or_matching_words():
    """FER2013 PublicTest faces as the visual branch receives them, labelled by the face, beside
    MELD dev lines (both real data sets; skipped with the reason where either is absent)."""
    from services.model.training.data.faces import fer_available
    from services.model.training.data.joint import face_examples
    from services.model.training.data.meld import read_split
    from shared.contract.bundle import UtteranceMeta
    from shared.contract.features.text import tokenize_utterances
    from shared.contract.labels import EMOTIONS
    from shared.settings import get_settings

    settings = get_settings()
    if not fer_available() or not (settings.meld_dir / "dev_sent_emo.csv").is_file():
        pytest.skip("FER2013 or MELD's CSVs are not here (research data, never in the repository)")
    visual = MODALITIES.index("visual")
    alone = face_examples("dev", TINY_SPEC, count=12, seed=3)
    frames = alone.tensors["frames"]
    assert frames.shape == (12, 1, 3, 32, 32) and frames.dtype == torch.uint8
    assert alone.modality_mask.tolist() == [[False, False, True]] * 12
    assert (alone.sentiment == -1).all() and alone.tensors["frames"].float().std() > 10
    lines = read_split(settings.meld_dir, "dev").utterances
    tokenized = {}
    for emotion in set(alone.emotion.tolist()) | {EMOTIONS.index("neutral")}:
        texts = sorted({u.text for u in lines if u.text and u.emotion == emotion})
        tokens = tokenize_utterances([UtteranceMeta(0.0, 0.0, t) for t in texts], TINY_SPEC)
        tokenized[emotion] = {
            tuple(tokens["input_ids"][k, : int(tokens["attention_mask"][k].sum())].tolist())
            for k in range(len(texts))
        }
    for text in ("neutral", "matching"):
        examples = face_examples("dev", TINY_SPEC, text=text, count=12, seed=3)
        # the same faces, with their labels, and words beside every one
        assert torch.equal(examples.tensors["frames"], alone.tensors["frames"])
        assert torch.equal(examples.emotion, alone.emotion)
        assert examples.modality_mask[:, [TEXT, visual]].all() and not examples.modality_mask[:, AUDIO].any()
        for row in range(12):
            length = int(examples.tensors["attention_mask"][row].sum())
            ids = examples.tensors["input_ids"][row, :length].tolist()
            wanted = EMOTIONS.index("neutral") if text == "neutral" else int(examples.emotion[row])
            assert tuple(ids) in tokenized[wanted], (text, row)
    with pytest.raises(ValueError, match="text must be one of"):
        face_examples("dev", TINY_SPEC, text="angry")
