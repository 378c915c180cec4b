"""Train/serve parity of the text input: MELD's test dialogues sent as a client's transcript (SRT
with ``NAME:`` cues, WebVTT with ``<v NAME>``, JSON segments) give exactly the token ids, and so the
dialogue context with its speakers, that training built from MELD's CSV for the same utterances."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest

from services.model.training.data.meld import read_split, text_examples
from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import MINILM_PACKAGE, FeatureSpec, resolve_pretrained
from shared.contract.features.text import token_arrays
from shared.contract.features.transcripts import parse_transcript
from tests import mediagen

MPNET = "models:all-mpnet-base-v2"
TEXT_TENSORS = ("input_ids", "attention_mask", "token_type_ids")
CUE_SECONDS = 1.0


def _installed(name: str) -> bool:
    try:
        resolve_pretrained(name)
    except FileNotFoundError:
        return False
    return True


def _specs() -> list:
    specs = [
        pytest.param(
            FeatureSpec(tokenizer=MINILM_PACKAGE, max_tokens=48, frames_per_utterance=0), id="minilm"
        ),
        pytest.param(
            FeatureSpec(tokenizer=MINILM_PACKAGE, max_tokens=128, context_turns=2, frames_per_utterance=0),
            id="minilm-context2",
        ),
        pytest.param(
            FeatureSpec(
                tokenizer=MINILM_PACKAGE,
                max_tokens=128,
                context_turns=2,
                context_next=False,
                frames_per_utterance=0,
            ),
            id="minilm-previous2",
        ),
    ]
    mpnet = pytest.mark.skipif(not _installed(MPNET), reason=f"{MPNET} is not installed (`make models`)")
    specs.append(
        pytest.param(
            FeatureSpec(tokenizer=MPNET, max_tokens=48, frames_per_utterance=0), id="mpnet", marks=mpnet
        )
    )
    specs.append(
        pytest.param(
            FeatureSpec(tokenizer=MPNET, max_tokens=128, context_turns=2, frames_per_utterance=0),
            id="mpnet-context2",
            marks=mpnet,
        )
    )
    specs.append(
        pytest.param(
            FeatureSpec(
                tokenizer=MPNET, max_tokens=128, context_turns=2, context_next=False, frames_per_utterance=0
            ),
            id="mpnet-previous2",
            marks=mpnet,
        )
    )
    return specs


def _times(index: int) -> tuple[float, float]:
    return index * CUE_SECONDS, index * CUE_SECONDS + 0.9 * CUE_SECONDS


def _srt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    return (
        f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:{millis // 1000 % 60:02d},{millis % 1000:03d}"
    )


def as_srt(dialogue) -> str:
    cues = []
    for index, utterance in enumerate(dialogue, start=1):
        start, end = _times(index - 1)
        text = html.escape(utterance.text, quote=False)
        cues.append(f"{index}\n{_srt_time(start)} --> {_srt_time(end)}\n{utterance.speaker}: {text}\n")
    return "\n".join(cues)


def as_vtt(dialogue) -> str:
    cues = ["WEBVTT\n"]
    for index, utterance in enumerate(dialogue):
        start, end = _times(index)
        text = html.escape(utterance.text, quote=False)
        cues.append(
            f"{_srt_time(start).replace(',', '.')} --> {_srt_time(end).replace(',', '.')}\n"
            f"<v {utterance.speaker}>{text}\n"
        )
    return "\n".join(cues)


def as_json(dialogue) -> str:
    segments = []
    for index, utterance in enumerate(dialogue):
        start, end = _times(index)
        segments.append({"start": start, "end": end, "text": utterance.text, "speaker": utterance.speaker})
    return json.dumps(segments)


FORMATS = {"srt": as_srt, "vtt": as_vtt, "json": as_json}


@pytest.fixture(scope="module")
def meld_test(settings_module):
    if not (settings_module.meld_dir / "test_sent_emo.csv").is_file():
        pytest.skip(f"MELD CSVs not found under settings.meld_dir ({settings_module.meld_dir})")
    return read_split(settings_module.meld_dir, "test")


@pytest.fixture(scope="module")
def settings_module():
    from shared.settings import Settings

    return Settings(_env_file=None)


def _training_tokens(dialogue, spec: FeatureSpec) -> dict[str, np.ndarray]:
    from services.model.training.data.meld import MeldSplit

    examples = text_examples(MeldSplit(split="test", utterances=list(dialogue)), spec)
    return {name: examples.tensors[name].numpy() for name in TEXT_TENSORS}


@pytest.mark.parametrize("spec", _specs())
def test_every_meld_test_dialogue_parses_to_the_tokens_training_used(meld_test, spec):
    dialogues = meld_test.dialogues()
    assert len(dialogues) > 250
    for dialogue in dialogues:
        trained = _training_tokens(dialogue, spec)
        for name, render in FORMATS.items():
            parsed = parse_transcript(render(dialogue), None).utterances
            assert [(u.speaker, u.text) for u in parsed] == [(u.speaker, u.text) for u in dialogue], name
            served = token_arrays(parsed, spec)
            for tensor in TEXT_TENSORS:
                assert np.array_equal(served[tensor], trained[tensor]), (
                    name,
                    dialogue[0].dialogue_id,
                    tensor,
                )
    if spec.context_turns:
        # The context segment really is there (speakers and all), not an empty second segment.
        longest = max(dialogues, key=len)
        assert _training_tokens(longest, spec)["token_type_ids"].any()


@pytest.mark.parametrize("spec", _specs()[1:2])
def test_the_workers_extract_features_gives_the_training_tokens(meld_test, spec, tmp_path):
    # Two real dialogues through the worker's whole pipeline on a generated clip (times are the
    # cue grid: MELD's own times are per episode).
    dialogues = sorted(meld_test.dialogues(), key=len)[-2:]
    for dialogue in dialogues:
        clip = mediagen.make_clip(
            tmp_path / f"dia{dialogue[0].dialogue_id}.mp4", duration=len(dialogue) * CUE_SECONDS
        )
        trained = _training_tokens(dialogue, spec)
        for name, render in FORMATS.items():
            bundle = extract_features(clip, spec, render(dialogue))
            assert [(u.speaker, u.text) for u in bundle.utterances] == [(u.speaker, u.text) for u in dialogue]
            for tensor in TEXT_TENSORS:
                assert np.array_equal(getattr(bundle, tensor), trained[tensor]), (name, tensor)
