"""The speech gate on generated media: espeak-ng speech passes; noise, tones, notes and silence
are masked with their reason, through the real pipeline (ffmpeg decode, per-utterance spans)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.speech import AudioReason, speech_fraction, tonal_frames
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


# WebRTC's gate refusing tonal frames only in runs of 300 ms holding one pitch: these sounds stay
# masked (the notes by their steady level; music that rises and falls does not: test_silero_gate.py).
PITCH_STEADY = SPEC.model_copy(update={"tonal_min_run_frames": 10})


@pytest.mark.parametrize("spec", [SPEC, PITCH_STEADY], ids=["every_tonal_frame", "pitch_steady_runs"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_non_speech_is_masked_with_its_reason(tmp_path, name, spec):
    media = render(tmp_path, name, SOURCES[name])
    bundle = extract_features(media, spec, [{"start": 0.2, "end": 2.8, "text": "That's great news!"}])
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


def test_espeak_speech_passes_with_pitch_steady_runs(tmp_path):
    clip = spoken_clip(tmp_path)
    bundle = extract_features(clip.video, PITCH_STEADY, clip.segments)
    assert bundle.modality_mask[:, AUDIO].all()
    fractions = [u.speech_fraction for u in extract_features(clip.video, SPEC, clip.segments).utterances]
    # Never fewer voiced frames than when every tonal frame is refused.
    assert all(u.speech_fraction >= f for u, f in zip(bundle.utterances, fractions, strict=True))


def _tone(frequency_hz: np.ndarray) -> np.ndarray:
    """A sine following ``frequency_hz`` (one value per sample) at half scale."""
    return (0.5 * np.sin(2 * np.pi * np.cumsum(frequency_hz) / SPEC.sample_rate)).astype(np.float32)


def test_a_gliding_tone_is_refused_only_frame_by_frame():
    samples = int(0.9 * SPEC.sample_rate)  # 30 frames
    steady = _tone(np.full(samples, 300.0))
    # 200 -> 650 Hz: about half a 33 Hz bin per 30 ms frame, a voice's glide, more than the
    # tolerance within every 10 frames.
    gliding = _tone(np.linspace(200.0, 650.0, samples))
    assert tonal_frames(steady, SPEC).all() and tonal_frames(steady, PITCH_STEADY).all()
    assert tonal_frames(gliding, SPEC).all()
    assert not tonal_frames(gliding, PITCH_STEADY).any()
    # A steady stretch shorter than the run is not refused; as long as the run, it is (between
    # pauses, which are not tonal).
    pause = np.zeros(5 * 480, dtype=np.float32)
    for frames, refused in ((9, False), (10, True)):
        stretch = np.concatenate([pause, _tone(np.full(frames * 480, 300.0)), pause])
        flags = tonal_frames(stretch, PITCH_STEADY)
        assert not flags[:5].any() and not flags[5 + frames :].any()
        assert flags[5 : 5 + frames].all() == refused
        assert flags[5 : 5 + frames].any() == refused


def test_pitch_steady_runs_change_the_hash_only_when_set():
    assert "tonal_min_run_frames" not in SPEC.canonical_json()
    assert FeatureSpec(tonal_min_run_frames=1).hash == FeatureSpec().hash
    assert PITCH_STEADY.hash != SPEC.hash


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
