"""The speech gate: audio counts for an utterance only where someone speaks in its span.

Music, tones, noise and room tone carry no vocal emotion, yet an audio encoder scores them like
speech. Each utterance's span goes through a voice activity detector, frame by frame, and the
fraction of voiced frames decides (``spec.min_speech_fraction``). ``spec.speech_detector`` picks it:
``"silero"``, Silero VAD (``shared.contract.features.silero``, 32 ms chunks, a chunk is speech above
``spec.silero_threshold``), or ``"webrtc"``, WebRTC's detector (``webrtcvad``, a small C library,
frames of ``spec.vad_frame_ms``), which takes tones, notes and steady noise for speech and so is
paired with two tests of its own: tonal frames are refused and a span whose level stays steady
has no speech. An utterance whose audio is masked says why (``AudioReason``), and the result
reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.spec import FeatureSpec

VAD_SAMPLE_RATES = (8_000, 16_000, 32_000, 48_000)


class AudioReason(StrEnum):
    """Why an utterance's audio was not used."""

    no_audio = "no_audio"  # the media has no audio stream
    silent = "silent"  # the span is digital silence (below the log-mel's silence floor)
    no_speech = "no_speech"  # sound, but the voice detector found no speech in it
    too_little_speech = "too_little_speech"  # speech under spec.min_speech_fraction of the span


@dataclass(frozen=True)
class SpeechGate:
    speech_fraction: float  # voiced frames / frames in the span
    reason: AudioReason | None  # None: the audio is used

    @property
    def speech(self) -> bool:
        return self.reason is None


def frame_samples(spec: FeatureSpec) -> int:
    """Samples per detector frame: Silero's chunk, or ``spec.vad_frame_ms`` for WebRTC."""
    if spec.speech_detector == "silero":
        from shared.contract.features.silero import CHUNK_SAMPLES

        return CHUNK_SAMPLES[spec.sample_rate]
    return spec.sample_rate * spec.vad_frame_ms // 1000


def frame_seconds(spec: FeatureSpec) -> float:
    return frame_samples(spec) / spec.sample_rate


def frame_levels_db(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Level (dB) of each detector frame of ``samples``."""
    frames = _frames(samples, spec)
    return 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)


def is_steady(levels_db: np.ndarray, spec: FeatureSpec) -> bool:
    """Speech rises and falls with its syllables; a steady level is a tone, a hum or noise."""
    return len(levels_db) > 1 and float(levels_db.std()) < spec.min_level_spread_db


def detected_frames(
    samples: np.ndarray, spec: FeatureSpec, mode: int | None = None, models_dir: Path | None = None
) -> np.ndarray:
    """Per detector frame: the detector says speech (Silero, from ``models_dir``, default the
    settings': the chunk's probability is over ``spec.silero_threshold``; WebRTC: in mode
    ``spec.vad_mode``, or ``mode`` when given)."""
    if spec.speech_detector == "silero":
        from shared.contract.features.silero import silero_vad

        return silero_vad(models_dir).probabilities(samples, spec.sample_rate) > spec.silero_threshold
    import webrtcvad

    pcm = (_frames(samples, spec) * 32767.0).astype("<i2")
    detector = webrtcvad.Vad(spec.vad_mode if mode is None else mode)
    return np.array([detector.is_speech(row.tobytes(), spec.sample_rate) for row in pcm], dtype=bool)


def tonal_frames(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Per frame: its three strongest spectral bins hold more than ``spec.max_tonal_share`` of
    its energy (a tone or a note, which WebRTC's detector calls speech) and, with
    ``spec.tonal_min_run_frames`` above 1, it lies in a run of that many such frames holding one
    pitch."""
    frames = _frames(samples, spec)
    if len(frames) == 0:
        return np.zeros(0, dtype=bool)
    power = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]).astype(np.float32), axis=1)) ** 2 + 1e-12
    tonal = np.sort(power, axis=1)[:, -3:].sum(axis=1) / power.sum(axis=1) > spec.max_tonal_share
    if spec.tonal_min_run_frames == 1:
        return tonal
    return _steady_runs(tonal, power.argmax(axis=1), spec.tonal_min_run_frames)


# A run keeps its pitch while each frame's strongest bin stays this close to the run's first
# (30 ms frames at 16 kHz: 33 Hz bins); a note's decay or a tone's vibrato moves it less.
PITCH_TOLERANCE_BINS = 1


def _steady_runs(tonal: np.ndarray, peaks: np.ndarray, min_run: int) -> np.ndarray:
    """The tonal frames that belong to a run of at least ``min_run`` consecutive tonal frames
    whose strongest bin stays within PITCH_TOLERANCE_BINS of the run's first frame's."""
    steady = np.zeros(len(tonal), dtype=bool)
    start = 0
    while start < len(tonal):
        if not tonal[start]:
            start += 1
            continue
        end = start + 1
        while (
            end < len(tonal)
            and tonal[end]
            and abs(int(peaks[end]) - int(peaks[start])) <= PITCH_TOLERANCE_BINS
        ):
            end += 1
        if end - start >= min_run:
            steady[start:end] = True
        start = end
    return steady


def voiced_frames(samples: np.ndarray, spec: FeatureSpec, models_dir: Path | None = None) -> np.ndarray:
    """Per frame: the detector says speech (and, with WebRTC's, the frame is not tonal)."""
    if spec.speech_detector == "silero":
        return detected_frames(samples, spec, models_dir=models_dir)
    return detected_frames(samples, spec) & ~tonal_frames(samples, spec)


def is_speech(samples: np.ndarray, spec: FeatureSpec, models_dir: Path | None = None) -> bool:
    """The gate's verdict on a span with sound: speech fills ``spec.min_speech_fraction`` of it."""
    return fills_enough(speech_fraction(samples, spec, models_dir), spec)


def fills_enough(fraction: float, spec: FeatureSpec) -> bool:
    """The gate's rule: some speech, and at least ``spec.min_speech_fraction`` of the span."""
    return fraction > 0.0 and fraction >= spec.min_speech_fraction


def _frames(samples: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    if spec.sample_rate not in VAD_SAMPLE_RATES:
        raise ValueError(f"the speech gate needs a sample rate in {VAD_SAMPLE_RATES}, not {spec.sample_rate}")
    size = frame_samples(spec)
    count = len(samples) // size
    return np.clip(np.asarray(samples[: count * size], dtype=np.float32), -1.0, 1.0).reshape(count, size)


def speech_fraction(samples: np.ndarray, spec: FeatureSpec, models_dir: Path | None = None) -> float:
    """Fraction of detector frames that are speech (``voiced_frames``); with WebRTC's detector, 0
    for a span whose level stays steady (``spec.min_level_spread_db``)."""
    if len(_frames(samples, spec)) == 0:
        return 0.0
    if spec.speech_detector == "webrtc" and is_steady(frame_levels_db(samples, spec), spec):
        return 0.0
    voiced = voiced_frames(samples, spec, models_dir)
    return float(voiced.sum()) / len(voiced)


def gate_utterances(
    waveform: np.ndarray | None,
    utterances: Sequence[UtteranceMeta],
    audio_present: np.ndarray,
    spec: FeatureSpec,
    models_dir: Path | None = None,
) -> list[SpeechGate]:
    """One verdict per utterance, each span judged on its own sound (a detector's state starts
    fresh per span, as for a training row's clip); ``audio_present`` is the log-mel mask's "any
    frame" per row; ``models_dir``: where Silero is installed (default the settings')."""
    if waveform is None:
        return [SpeechGate(0.0, AudioReason.no_audio) for _ in utterances]
    verdicts = []
    rate = spec.sample_rate
    for row, utterance in enumerate(utterances):
        if not audio_present[row]:
            verdicts.append(SpeechGate(0.0, AudioReason.silent))
            continue
        if not spec.speech_gate:
            verdicts.append(SpeechGate(1.0, None))
            continue
        start = max(0, int(round(utterance.start * rate)))
        end = max(start, int(round(utterance.end * rate)))
        fraction = speech_fraction(waveform[start:end], spec, models_dir)
        if fraction == 0.0:
            reason = AudioReason.no_speech
        elif fraction < spec.min_speech_fraction:
            reason = AudioReason.too_little_speech
        else:
            reason = None
        verdicts.append(SpeechGate(round(fraction, 4), reason))
    return verdicts
