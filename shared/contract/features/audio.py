"""Audio features: decode once to mono float32, slice per utterance, log-mel with a padding mask.

The log-mel uses transformers' numpy audio utilities (STFT with a periodic Hann window + Slaney mel
filter bank): no torch, because the preprocess worker image carries none, and no torchaudio, whose
last release (2.11) does not load beside torch 2.13. Values are Whisper-style: log10 power, floored
8 decades below the utterance's peak, then ``(x + 4) / 4``, so nothing is divided by a
data-dependent spread and silence cannot produce NaN.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.media import MediaError, input_args
from shared.contract.features.spec import FeatureSpec
from shared.settings import Settings, get_settings

# Peak amplitude below which a slice counts as silence (about -80 dBFS).
SILENCE_PEAK = 1e-4


def load_audio(path: Path | str, spec: FeatureSpec, settings: Settings | None = None) -> np.ndarray:
    """The first audio stream as mono float32 at ``spec.sample_rate`` (one ffmpeg process)."""
    settings = settings or get_settings()
    args = [
        "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
        "-threads", str(settings.ffmpeg_threads), *input_args(path),
        "-map", "0:a:0", "-vn", "-sn", "-dn",
        # Pad/fill by timestamps from 0, so sample i is at i / rate even when the audio stream
        # starts late or has gaps: utterance times index the waveform directly.
        "-af", "aresample=async=1:first_pts=0",
        "-ac", "1", "-ar", str(spec.sample_rate), "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            args, capture_output=True, timeout=settings.ffmpeg_timeout_seconds, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError(
            "corrupt", f"decoding the audio took longer than {settings.ffmpeg_timeout_seconds:.0f} s"
        ) from exc
    usable = len(done.stdout) - len(done.stdout) % 4
    if done.returncode != 0 and usable == 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise MediaError("corrupt", f"the audio stream cannot be decoded: {detail[-1] if detail else ''}")
    waveform = np.frombuffer(done.stdout[:usable], dtype=np.float32)
    # A damaged stream can decode to inf/NaN samples; they would poison every mel frame.
    return np.nan_to_num(waveform, nan=0.0, posinf=0.0, neginf=0.0)


@lru_cache(maxsize=8)
def _mel_filters(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
    return mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    ).astype(np.float32)  # [F, M]


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    return window_function(n_fft, "hann").astype(np.float32)


def log_mel(waveform: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(log_mel [M, T] float16, mask [T] bool)`` for one utterance's samples.

    T is ``spec.max_audio_frames``: longer audio is cut, shorter is zero-padded with mask False.
    Silence (or no samples) gives all zeros and an all-False mask."""
    frames, bins = spec.max_audio_frames, spec.n_mels
    features = np.zeros((bins, frames), dtype=np.float16)
    mask = np.zeros(frames, dtype=bool)
    samples = np.asarray(waveform, dtype=np.float32)[: (frames - 1) * spec.hop_length + 1]
    if samples.size == 0 or float(np.abs(samples).max()) < SILENCE_PEAK:
        return features, mask
    # center=True pads n_fft/2 each side; reflection needs more samples than that.
    pad_mode = "reflect" if samples.size > spec.n_fft // 2 else "constant"
    mel = spectrogram(
        samples,
        _window(spec.n_fft),
        frame_length=spec.n_fft,
        hop_length=spec.hop_length,
        power=2.0,
        center=True,
        pad_mode=pad_mode,
        mel_filters=_mel_filters(spec.n_fft, spec.n_mels, spec.sample_rate),
        mel_floor=1e-10,
    )  # [M, frames], floored at 1e-10
    logs = np.log10(mel)
    logs = np.maximum(logs, logs.max() - 8.0)
    logs = (logs + 4.0) / 4.0
    used = min(frames, logs.shape[1])
    features[:, :used] = logs[:, :used]
    mask[:used] = True
    return features, mask


def utterance_log_mels(
    waveform: np.ndarray | None, utterances: Sequence[UtteranceMeta], spec: FeatureSpec
) -> tuple[np.ndarray, np.ndarray]:
    """``(log_mel [U, M, T] float16, audio_mask [U, T] bool)``; ``waveform`` None means no audio."""
    count = len(utterances)
    features = np.zeros((count, spec.n_mels, spec.max_audio_frames), dtype=np.float16)
    masks = np.zeros((count, spec.max_audio_frames), dtype=bool)
    if waveform is None:
        return features, masks
    rate = spec.sample_rate
    for row, utterance in enumerate(utterances):
        start = max(0, int(round(utterance.start * rate)))
        end = max(start, int(round(utterance.end * rate)))
        features[row], masks[row] = log_mel(waveform[start:end], spec)
    return features, masks
