"""The speech gate with Silero VAD (``speech_detector = "silero"``): espeak-ng speech passes, alone
and under music; the music WebRTC's detector takes for speech (a staccato melody, struck chords,
drums) is masked, through the real pipeline too; the detector's chunking, its spec rules and
its missing-weights error."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from pydantic import ValidationError

from services.model.training.data.joint import bed
from shared.contract.features.pipeline import extract_features
from shared.contract.features.segmentation import SegmentationParams, speech_regions
from shared.contract.features.silero import SpeechDetectorMissing, silero_vad
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.speech import AudioReason, frame_seconds, speech_fraction
from shared.contract.labels import MODALITIES
from shared.settings import Settings, models_dir
from tests.mediagen import spoken_clip

AUDIO = MODALITIES.index("audio")
WEBRTC = FeatureSpec(frames_per_utterance=0)
SILERO = WEBRTC.model_copy(update={"speech_detector": "silero"})
MUSIC = ("staccato", "chords", "drums")


@pytest.fixture
def params() -> SegmentationParams:
    return SegmentationParams.from_settings(Settings(_env_file=None))


def music(kind: str, seconds: float = 3.0, level_db: float = -25.0) -> np.ndarray:
    rate = WEBRTC.sample_rate
    sound = bed(kind, int(seconds * rate), rate, np.random.default_rng(0))
    return (sound * 10 ** (level_db / 20)).astype(np.float32)


def speech(tmp_path) -> np.ndarray:
    clip = spoken_clip(tmp_path, lines=(("Ann", "I can't believe you did that to me, honestly."),))
    out = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(clip.video), "-ac", "1", "-ar", "16000",
         "-f", "f32le", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    samples = np.frombuffer(out, dtype=np.float32)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0] : loud[-1] + 1].copy()


def test_music_webrtc_takes_for_speech_is_masked(silero_detector):
    for kind in MUSIC:
        sound = music(kind)
        assert speech_fraction(sound, SILERO) < SILERO.min_speech_fraction, kind
    # What the Silero gate is for: WebRTC's detector with its tonal and level tests passes drums.
    assert speech_fraction(music("drums"), WEBRTC) >= WEBRTC.min_speech_fraction


def test_speech_passes_alone_and_under_music(silero_detector, tmp_path):
    voice = speech(tmp_path)
    assert speech_fraction(voice, SILERO) >= 0.4
    for kind in MUSIC:
        under = music(kind, seconds=len(voice) / SILERO.sample_rate)
        under *= np.sqrt(np.mean(voice**2) / np.mean(under**2)) * 10 ** (-10 / 20)  # 10 dB SNR
        assert speech_fraction(voice + under, SILERO) >= SILERO.min_speech_fraction, kind


def test_the_pipeline_masks_music_and_keeps_speech(silero_detector, tmp_path):
    clip = spoken_clip(tmp_path)
    bundle = extract_features(clip.video, SILERO, clip.segments)
    assert bundle.modality_mask[:, AUDIO].all()
    assert all(u.audio_reason is None for u in bundle.utterances)
    drums = tmp_path / "drums.m4a"
    pattern = "(1-0.5*mod(floor(t*4)\\,2))*(2*random(0)-1)*exp(-25*mod(t\\,0.25))"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"aevalsrc=0.4*{pattern}:d=3:s=16000",
         "-ac", "1", "-ar", "16000", "-c:a", "aac", str(drums)],
        check=True, timeout=60,
    )  # fmt: skip
    segments = [{"start": 0.2, "end": 2.8, "text": "That's great news!"}]
    [utterance] = extract_features(drums, SILERO, segments).utterances
    assert utterance.audio_reason in (AudioReason.no_speech, AudioReason.too_little_speech)
    [webrtc] = extract_features(drums, WEBRTC, segments).utterances
    assert webrtc.audio_reason is None


def test_chunks_are_32_ms_and_each_call_starts_fresh(silero_detector, tmp_path):
    voice = speech(tmp_path)
    first = silero_detector.probabilities(voice, 16_000)
    assert len(first) == len(voice) // 512 and frame_seconds(SILERO) == 0.032
    assert np.array_equal(first, silero_detector.probabilities(voice, 16_000))
    assert ((first >= 0) & (first <= 1)).all() and first.max() > 0.9
    assert len(silero_detector.probabilities(voice[::2], 8_000)) == len(voice[::2]) // 256
    assert len(silero_detector.probabilities(voice[:511], 16_000)) == 0
    with pytest.raises(ValueError, match="8 or 16 kHz"):
        silero_detector.probabilities(voice, 44_100)


# silero-vad 6.2.3's own OnnxWrapper.audio_forward on ``_voiced`` (its first 31 chunks): the same
# 64-sample context before each chunk and the same LSTM state carried from chunk to chunk.
REFERENCE = [
    0.1266, 0.446, 0.4632, 0.6183, 0.7964, 0.5812, 0.4847, 0.4306, 0.4036, 0.2775, 0.1413, 0.3361,
    0.6265, 0.4679, 0.5437, 0.4744, 0.3989, 0.3344, 0.0648, 0.1612, 0.3669, 0.2489, 0.1915, 0.1949,
    0.0875, 0.0434, 0.0257, 0.0608, 0.1028, 0.0352, 0.0809,
]  # fmt: skip


def _voiced() -> np.ndarray:
    """1 s of a voice-like sound: 14 harmonics over a gliding 90-150 Hz F0, syllables at 4 Hz."""
    rate = 16_000
    t = np.arange(rate) / rate
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 1.5 * t)) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * tone + 0.003 * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)


def test_probabilities_match_the_silero_package(silero_detector):
    assert silero_detector.probabilities(_voiced(), 16_000) == pytest.approx(REFERENCE, abs=1e-3)


def test_missing_weights_say_how_to_install_them(tmp_path):
    with pytest.raises(SpeechDetectorMissing, match="make models"):
        silero_vad(tmp_path)


def test_the_spec_rules():
    with pytest.raises(ValidationError, match="8 or 16 kHz"):
        FeatureSpec(speech_detector="silero", sample_rate=22_050)
    # WebRTC's gate tests shape nothing under Silero; its threshold does, and WebRTC's mode (it
    # proposes the speech regions of media without a transcript).
    steady = {"tonal_min_run_frames": 10, "max_tonal_share": 0.5, "min_level_spread_db": 3.0}
    assert SILERO.model_copy(update=steady).hash == SILERO.hash
    assert SILERO.model_copy(update={"silero_threshold": 0.6}).hash != SILERO.hash
    assert SILERO.model_copy(update={"vad_mode": 1}).hash != SILERO.hash
    # Specs from before Silero keep their hashes.
    assert "speech_detector" not in WEBRTC.canonical_json()
    assert FeatureSpec().hash == "f6ca285a22a4a9bf"


def test_a_missing_detector_fails_before_any_decoding(silero_detector, tmp_path, monkeypatch):
    import shared.contract.features.pipeline as pipeline

    clip = spoken_clip(tmp_path)

    def decoded(*args, **kwargs):
        raise AssertionError("decoded before the detector was loaded")

    monkeypatch.setattr(pipeline, "load_audio", decoded)
    monkeypatch.setattr(pipeline, "extract_frames", decoded)
    empty = Settings(_env_file=None, models_dir=tmp_path / "no-models")
    # With the gate off too, where Silero still finds the speech regions (no transcript).
    ungated = SILERO.model_copy(update={"speech_gate": False})
    for spec, transcript in ((SILERO, clip.segments), (SILERO, None), (ungated, None)):
        with pytest.raises(SpeechDetectorMissing, match="make models"):
            extract_features(clip.video, spec, transcript, settings=empty)
    # Without the gate and with a transcript, nothing needs it: the media is decoded.
    with pytest.raises(AssertionError, match="decoded before"):
        extract_features(clip.video, ungated, clip.segments, settings=empty)
    # The settings' folder is the one read: the installed detector there, none elsewhere.
    assert silero_vad(models_dir(Settings(_env_file=None))) is silero_detector


def test_regions_late_in_a_long_recording_are_judged_at_their_own_time(silero_detector, tmp_path, params):
    """WebRTC's 30 ms frames map to Silero's 32 ms chunks by their samples: a region a minute in
    is read where it is, music there is still refused."""
    rate = SILERO.sample_rate
    voice = speech(tmp_path)
    recording = np.random.default_rng(1).normal(0, 1e-4, 70 * rate).astype(np.float32)
    recording[60 * rate : 60 * rate + len(voice)] += voice
    recording[30 * rate : 33 * rate] += music("drums")
    spec = FeatureSpec(speech_detector="silero")
    regions = speech_regions(recording, spec, params)
    voiced = (60.0, 60.0 + len(voice) / rate)
    assert regions and all(voiced[0] - 0.5 <= s and e <= voiced[1] + 1.0 for s, e in regions), regions
    covered = sum(min(e, voiced[1]) - max(s, voiced[0]) for s, e in regions)
    assert covered >= 0.8 * (voiced[1] - voiced[0])
    # WebRTC's gate keeps the drums as a region.
    assert any(s < 33.0 and e > 30.0 for s, e in speech_regions(recording, FeatureSpec(), params))
