"""Utterances and speakers from the audio alone, on generated speech with known times.

Two espeak-ng voices of different pitch read lines separated by known pauses; a stretch of
silence and a stretch of music (synthetic notes) sit between them. The voice encoder is the one
`make models` installs (skipped with a reason where it is not installed).
"""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.audio import load_audio
from shared.contract.features.pipeline import extract_features
from shared.contract.features.segmentation import (
    SegmentationParams,
    _grow_edges,
    assign_speakers,
    cluster_voices,
    first_appearance_names,
    speech_regions,
    speech_utterances,
)
from shared.contract.features.spec import FeatureSpec
from shared.settings import Settings

SPEC = FeatureSpec()
RATE = SPEC.sample_rate
LOW = ("en+m3", 25)  # voice variant, espeak pitch 0-99
HIGH = ("en+f4", 85)
LINES = [
    (LOW, "I really think we should leave before the rain starts"),
    (HIGH, "The station is only ten minutes away from here"),
    (LOW, "Then we had better take the umbrellas with us"),
    (HIGH, "I left mine on the train yesterday afternoon"),
]


@dataclass(frozen=True)
class Line:
    start: float
    end: float
    voice: str


@pytest.fixture
def params() -> SegmentationParams:
    return SegmentationParams.from_settings(Settings(_env_file=None))


def speak(text: str, voice: tuple[str, int], directory: Path) -> np.ndarray:
    path = directory / f"{abs(hash((text, voice)))}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice[0], "-p", str(voice[1]), "-s", "160", "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    samples = load_audio(path, SPEC)
    # espeak pads each line with silence; the reference is the audible part
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0] : loud[-1] + 1]


def notes(seconds: float) -> np.ndarray:
    """Synthetic music: 0.25 s notes of a scale, three harmonics, plucked envelope."""
    t = np.arange(int(0.25 * RATE)) / RATE
    envelope = np.exp(-6 * t) * np.minimum(1.0, t / 0.01)
    pieces = []
    for index in range(int(seconds / 0.25)):
        pitch = 220.0 * 2 ** ([0, 2, 4, 5, 7, 9, 11, 12][index % 8] / 12)
        tone = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3))
        pieces.append(0.25 * envelope * tone)
    return np.concatenate(pieces).astype(np.float32)


def conversation(directory: Path, pauses=(0.8, 0.7, 1.2)) -> tuple[np.ndarray, list[Line]]:
    """1.5 s silence, lines with the given pauses, 2 s of music after the second line, 1 s tail."""
    rng = np.random.default_rng(3)
    parts, lines, now = [np.zeros(int(1.5 * RATE), np.float32)], [], 1.5
    for index, (voice, text) in enumerate(LINES):
        speech = speak(text, voice, directory)
        lines.append(Line(round(now, 3), round(now + len(speech) / RATE, 3), voice[0]))
        parts.append(speech)
        now += len(speech) / RATE
        if index < len(pauses):
            gap = [np.zeros(int(pauses[index] * RATE), np.float32)]
            if index == 1:
                gap += [notes(2.0), np.zeros(int(0.6 * RATE), np.float32)]
            parts += gap
            now += sum(len(g) for g in gap) / RATE
    parts.append(np.zeros(RATE, np.float32))
    audio = np.concatenate(parts)
    return audio + rng.normal(0, 1e-4, len(audio)).astype(np.float32), lines


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    directory = tmp_path_factory.mktemp("talk")
    audio, lines = conversation(directory)
    return audio, lines, write_wav(directory / "talk.wav", audio)


@pytest.mark.parametrize("detector", ["webrtc", "silero"])
def test_speech_regions_follow_the_lines_and_skip_silence_and_music(talk, params, detector, request):
    audio, lines, _ = talk
    spec = SPEC.model_copy(update={"speech_detector": detector})
    if detector == "silero":
        request.getfixturevalue("silero_detector")
    regions = speech_regions(audio, spec, params)
    music = (lines[1].end + 0.7, lines[1].end + 2.7)
    for start, end in regions:
        assert start >= 1.4, "nothing in the leading silence"
        assert end <= music[0] + 0.1 or start >= music[1] - 0.1, f"region {start}-{end} in the music"
        assert any(line.start - 0.3 <= start and end <= line.end + 0.3 for line in lines), (start, end)
    covered = [sum(max(0.0, min(e, ln.end) - max(s, ln.start)) for s, e in regions) for ln in lines]
    assert all(c >= 0.8 * (ln.end - ln.start) for c, ln in zip(covered, lines, strict=True)), covered


def test_regions_grow_over_the_quiet_trailing_speech_the_strict_detector_clips(tmp_path, params):
    line = speak(LINES[0][1], LOW, tmp_path)
    line[-int(0.8 * RATE) :] *= 0.1  # its last 0.8 s 20 dB quieter, as a voice trails off
    silence = np.zeros(RATE, np.float32)
    audio = np.concatenate([silence, line, silence])
    audio += np.random.default_rng(0).normal(0, 1e-4, len(audio)).astype(np.float32)
    end = 1.0 + len(line) / RATE
    strict = speech_regions(audio, SPEC, replace(params, edge_max_seconds=0.0))
    grown = speech_regions(audio, SPEC, params)
    assert params.edge_max_seconds > 0
    assert strict[-1][1] < end - 0.1, "the strict detector hears the quiet tail (make it quieter)"
    assert end - 0.03 <= grown[-1][1] <= end + 0.3
    assert grown[0][0] <= strict[0][0]
    limited = speech_regions(audio, SPEC, replace(params, edge_max_seconds=0.06))
    assert strict[-1][1] < limited[-1][1] <= strict[-1][1] + 0.06 + 1e-9


def test_regions_grow_no_further_than_their_reach_nor_into_their_neighbours(params):
    speech_everywhere = np.ones(10, dtype=bool)
    runs = [(2, 4), (6, 8)]
    frame = SPEC.vad_frame_ms / 1000.0
    one_frame = replace(params, edge_max_seconds=frame)
    assert _grow_edges(runs, speech_everywhere, frame, one_frame) == [(1, 5), (5, 9)]
    far = replace(params, edge_max_seconds=10.0)
    assert _grow_edges(runs, speech_everywhere, frame, far) == [(0, 6), (6, 10)]
    silence_between = np.array([True] * 5 + [False] + [True] * 4)
    assert _grow_edges(runs, silence_between, frame, far) == [(0, 5), (6, 10)]


def test_utterances_are_the_lines_with_their_speakers_in_order_of_appearance(talk, params, encoder):
    audio, lines, _ = talk
    utterances = speech_utterances(audio, SPEC, params, encoder)
    found = [t for u in utterances for t in (u.start, u.end)]
    assert found == pytest.approx([t for ln in lines for t in (ln.start, ln.end)], abs=0.3)
    assert [u.speaker for u in utterances] == ["S1", "S2", "S1", "S2"]
    assert all(u.text == "" for u in utterances)


def test_the_speaker_count_can_be_given(talk, params, encoder):
    audio, lines, _ = talk
    one = speech_utterances(audio, SPEC, replace(params, split_pause_seconds=1.0), encoder, speakers=1)
    assert {u.speaker for u in one} == {"S1"}
    # one voice throughout: the lines closer than the split pause (0.8 s apart) become one
    assert len(one) == len(lines) - 1


def test_min_and_max_lengths_bound_the_utterances(talk, params, encoder):
    audio, lines, _ = talk
    short = speech_utterances(audio, SPEC, replace(params, max_seconds=1.5), encoder)
    assert len(short) > len(lines) and all(u.end - u.start <= 1.5 + 1e-6 for u in short)
    longest = max(ln.end - ln.start for ln in lines)
    assert speech_utterances(audio, SPEC, replace(params, min_seconds=longest + 1), encoder) == []


def test_two_espeak_voices_of_different_pitch_are_two_clusters(tmp_path, params, encoder):
    texts = ["one two three four five six", "the quick brown fox jumps", "seven eight nine ten"]
    wavs = [speak(t, voice, tmp_path) for voice in (LOW, HIGH) for t in texts]
    labels = cluster_voices(encoder.embed(wavs), [len(w) / RATE for w in wavs], params)
    assert labels[:3].tolist() == [labels[0]] * 3 and labels[3:].tolist() == [labels[3]] * 3
    assert labels[0] != labels[3]
    assert first_appearance_names(labels) == ["S1"] * 3 + ["S2"] * 3


def test_a_transcripts_speaker_names_win(talk, params, encoder):
    audio, lines, _ = talk
    named = [
        UtteranceMeta(lines[0].start, lines[0].end, "first", "Ann"),
        UtteranceMeta(lines[1].start, lines[1].end, "second", None),
        UtteranceMeta(lines[2].start, lines[2].end, "third", None),
        UtteranceMeta(lines[3].start, lines[3].end, "fourth", "S1"),
    ]
    result = assign_speakers(audio, named, SPEC, params, encoder)
    # Ann's voice gives her name to her unnamed line; the other voice keeps the transcript's "S1"
    assert [u.speaker for u in result] == ["Ann", "S1", "Ann", "S1"]
    everyone = [replace(u, speaker=f"P{i}") for i, u in enumerate(named)]
    assert assign_speakers(audio, everyone, SPEC, params, encoder) == everyone


def test_the_pipeline_without_a_transcript(talk, encoder):
    _, lines, path = talk
    settings = Settings(_env_file=None)
    bundle = extract_features(path, SPEC, settings=settings)
    assert bundle.media["segmentation"] == "speech" and bundle.media["speakers"] == "voices"
    assert [u.speaker for u in bundle.utterances] == ["S1", "S2", "S1", "S2"]
    assert bundle.modality_mask[:, 1].all(), "every utterance is speech to the gate"
    windows = extract_features(path, SPEC, segmentation="windows", settings=settings)
    assert windows.media["segmentation"] == "windows"
    assert all(u.speaker is None for u in windows.utterances)
    assert windows.utterances[0].end == settings.default_window_seconds


def test_media_without_speech_falls_back_to_windows(tmp_path, encoder):
    quiet = np.concatenate([np.zeros(RATE * 2, np.float32), notes(4.0)])
    bundle = extract_features(
        write_wav(tmp_path / "music.wav", quiet), SPEC, settings=Settings(_env_file=None)
    )
    assert bundle.media["segmentation"] == "windows"
    assert not bundle.modality_mask[:, 1].any(), "the gate keeps music out of the audio branch"


def test_a_transcript_without_speakers_is_named_by_voice(talk, encoder):
    _, lines, path = talk
    segments = [{"start": ln.start, "end": ln.end, "text": f"line {i}"} for i, ln in enumerate(lines)]
    bundle = extract_features(path, SPEC, segments, settings=Settings(_env_file=None))
    assert bundle.media["segmentation"] == "transcript" and bundle.media["speakers"] == "voices"
    assert [u.speaker for u in bundle.utterances] == ["S1", "S2", "S1", "S2"]
    segments[0]["speaker"] = "Ann"
    bundle = extract_features(path, SPEC, segments, settings=Settings(_env_file=None))
    assert bundle.media["speakers"] == "transcript+voices"
    assert [u.speaker for u in bundle.utterances] == ["Ann", "S1", "Ann", "S1"]


def test_an_unknown_segmentation_is_refused(talk):
    with pytest.raises(ValueError, match="segmentation"):
        extract_features(talk[2], SPEC, segmentation="sentences", settings=Settings(_env_file=None))


def test_voices_apart_only_along_the_emotion_directions_are_one_speaker(params):
    from shared.contract.features.voice import nuisance_basis

    basis = nuisance_basis()[:4].astype(np.float64)
    rng = np.random.default_rng(5)
    voice = rng.standard_normal(basis.shape[1])
    voice -= basis.T @ (basis @ voice)
    voice /= np.linalg.norm(voice)
    # one voice, calm and shouting: apart along the first nuisance direction only
    prints = np.stack(
        [
            voice + sign * 0.8 * basis[0] + rng.normal(0, 0.02, voice.shape)
            for sign in (1, -1)
            for _ in range(5)
        ]
    )
    prints = (prints / np.linalg.norm(prints, axis=1, keepdims=True)).astype(np.float32)
    durations = [2.0] * len(prints)
    assert params.speaker_nuisance_dims >= 1
    assert set(cluster_voices(prints, durations, params).tolist()) == {0}
    apart = cluster_voices(prints, durations, replace(params, speaker_nuisance_dims=0))
    assert apart[:5].tolist() == [apart[0]] * 5 and apart[5:].tolist() == [apart[5]] * 5
    assert apart[0] != apart[5]


def test_drums_between_lines_are_no_utterance_with_silero_as_the_gate(tmp_path, params, silero_detector):
    from services.model.training.data.joint import bed

    first, second = speak(LINES[0][1], LOW, tmp_path), speak(LINES[1][1], HIGH, tmp_path)
    drums = 0.05 * bed("drums", 2 * RATE, RATE, np.random.default_rng(0))
    pause = np.zeros(int(0.7 * RATE), np.float32)
    audio = np.concatenate([pause, first, pause, drums, pause, second, pause])
    start = (len(pause) * 2 + len(first)) / RATE
    span = (start + 0.1, start + 1.9)

    def in_drums(spec):
        return [(s, e) for s, e in speech_regions(audio, spec, params) if e > span[0] and s < span[1]]

    # WebRTC's detector with its tonal and level tests takes the drums for speech; Silero does not.
    assert in_drums(SPEC)
    assert not in_drums(SPEC.model_copy(update={"speech_detector": "silero"}))
