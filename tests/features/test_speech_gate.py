"""The speech gate on generated media: espeak-ng speech passes; noise, tones, notes and silence
are masked with their reason, through the real pipeline (ffmpeg decode, per-utterance spans)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.speech import AudioReason, speech_fraction
from shared.contract.labels import MODALITIES
from tests.mediagen import spoken_clip

AUDIO = MODALITIES.index("audio")
SPEC = FeatureSpec(frames_per_utterance=0)
SOURCES = {
    "pink_-60": "anoisesrc=color=pink:amplitude=1:duration=3,volume=-60dB",
    "pink_-20": "anoisesrc=color=pink:amplitude=1:duration=3,volume=-20dB",
    "white_-40": "anoisesrc=color=white:amplitude=1:duration=3,volume=-40dB",
    "tone_440": "sine=frequency=440:duration=3",
    "notes": (
        "aevalsrc=0.25*sin(2*PI*(262+131*mod(floor(t*2)\\,3))*t)*exp(-2*mod(t\\,0.5))"
        "+0.1*sin(2*PI*131*t):d=3:s=16000"
    ),
    "silence": "anullsrc=r=16000:cl=mono:d=3",
}


def render(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.m4a"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "1", "-ar", "16000",
         "-c:a", "aac", str(path)],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


def waveform(path: Path) -> np.ndarray:
    out = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return np.frombuffer(out, dtype=np.float32)


def test_espeak_speech_passes_the_gate(tmp_path):
    clip = spoken_clip(tmp_path)
    bundle = extract_features(clip.video, SPEC, clip.segments)
    assert bundle.modality_mask[:, AUDIO].all()
    for utterance in bundle.utterances:
        assert utterance.audio_reason is None
        assert utterance.speech_fraction >= SPEC.min_speech_fraction


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_non_speech_is_masked_with_its_reason(tmp_path, name):
    media = render(tmp_path, name, SOURCES[name])
    bundle = extract_features(media, SPEC, [{"start": 0.2, "end": 2.8, "text": "That's great news!"}])
    [utterance] = bundle.utterances
    assert not bundle.modality_mask[0, AUDIO]
    assert bundle.modality_mask[0, MODALITIES.index("text")]
    expected = (
        {AudioReason.silent} if name == "silence" else {AudioReason.no_speech, AudioReason.too_little_speech}
    )
    assert utterance.audio_reason in expected


def test_speech_in_a_fraction_of_the_span_is_too_little(tmp_path):
    clip = spoken_clip(tmp_path, lines=(("Ann", "Yes."),))
    samples = waveform(clip.video)
    rate = SPEC.sample_rate
    # The one short word inside 12 s of pink noise: speech, but far under the set fraction.
    noise = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=color=pink:amplitude=1:duration=12",
         "-af", "volume=-45dB", "-ar", "16000", "-f", "f32le", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    mixed = np.frombuffer(noise, dtype=np.float32).copy()
    mixed[rate : rate + len(samples)] += samples
    fraction = speech_fraction(mixed, SPEC)
    assert 0.0 < fraction < SPEC.min_speech_fraction
    assert speech_fraction(samples, SPEC) >= SPEC.min_speech_fraction


def test_the_gate_can_be_switched_off_in_the_spec(tmp_path):
    media = render(tmp_path, "tone", SOURCES["tone_440"])
    spec = SPEC.model_copy(update={"speech_gate": False})
    bundle = extract_features(media, spec, [{"start": 0.2, "end": 2.8, "text": "hello"}])
    assert bundle.modality_mask[0, AUDIO]
    assert bundle.utterances[0].audio_reason is None


def test_media_without_audio_says_so(tmp_path):
    from tests.mediagen import no_audio_mp4

    bundle = extract_features(no_audio_mp4(tmp_path), SPEC, [{"start": 0.2, "end": 1.5, "text": "hi"}])
    assert bundle.utterances[0].audio_reason == AudioReason.no_audio
    assert not bundle.modality_mask[0, AUDIO]
