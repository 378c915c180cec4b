"""Silero VAD: a neural speech detector, for the speech gate's ``speech_detector = "silero"``.

WebRTC's detector is an energy and spectral-shape model: it calls chords, drums and melodies
speech, so the gate stacks tests on top of it (tonal frames, a steady level) that still let most
music through (docs/audio.md). Silero VAD (v6, MIT; ``make models`` installs its ONNX graph from
the ``silero-vad`` wheel into ``<models_dir>/silero-vad/``) is a small convolutional + LSTM
network trained on speech against noise and music. It reads 32 ms chunks (512 samples at 16 kHz,
256 at 8 kHz), each with the previous chunk's last 64 (32) samples as context, carrying its LSTM
state from chunk to chunk, and gives each chunk a speech probability. onnxruntime runs it on one
thread: about 0.003 CPU-s per second of audio.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from shared.contract.features.installed import ModelMissing

MODEL_NAME = "silero-vad"
WEIGHTS_FILE = "silero_vad.onnx"
CHUNK_SAMPLES = {16_000: 512, 8_000: 256}
CONTEXT_SAMPLES = {16_000: 64, 8_000: 32}
STATE_SHAPE = (2, 1, 128)


class SpeechDetectorMissing(ModelMissing):
    """Silero VAD's weights (or onnxruntime, which runs them) are not installed."""


class SileroVad:
    """One ONNX session; ``probabilities`` is safe to call from several threads."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise SpeechDetectorMissing(
                "silero-vad", f"{path} is missing: run `make models` to install silero-vad"
            )
        try:
            import onnxruntime
        except ImportError as exc:
            raise SpeechDetectorMissing(
                "silero-vad",
                "onnxruntime, which runs Silero VAD, is not installed (install the worker's "
                f"requirements): {exc}",
            ) from exc
        options = onnxruntime.SessionOptions()
        # Chunks run one after another (the LSTM state links them): more threads only add contention.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probabilities(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Speech probability of each whole chunk of ``samples`` (float in [-1, 1]), in order; the
        state starts fresh, so a span is judged on its own sound alone."""
        if sample_rate not in CHUNK_SAMPLES:
            raise ValueError(f"Silero VAD reads 8 or 16 kHz audio, not {sample_rate} Hz")
        size, context = CHUNK_SAMPLES[sample_rate], CONTEXT_SAMPLES[sample_rate]
        count = len(samples) // size
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        audio = np.clip(np.asarray(samples[: count * size], dtype=np.float32), -1.0, 1.0)
        padded = np.concatenate([np.zeros(context, dtype=np.float32), audio])
        state = np.zeros(STATE_SHAPE, dtype=np.float32)
        rate = np.array(sample_rate, dtype=np.int64)
        out = np.empty(count, dtype=np.float32)
        for index in range(count):
            start = index * size
            chunk = padded[start : start + context + size][None, :]
            probability, state = self.session.run(None, {"input": chunk, "state": state, "sr": rate})
            out[index] = probability[0, 0]
        return out


_DETECTORS: dict[Path, SileroVad] = {}
_LOCK = threading.Lock()


def silero_vad(models_dir: Path | None = None) -> SileroVad:
    """The installed detector (``models_dir``: default ``settings.models_dir``), loaded once per
    process; raises ``SpeechDetectorMissing`` when ``make models`` has not installed it."""
    from shared.settings import models_dir as default_models_dir

    path = Path(models_dir or default_models_dir()) / MODEL_NAME / WEIGHTS_FILE
    with _LOCK:
        if path not in _DETECTORS:
            _DETECTORS[path] = SileroVad(path)
        return _DETECTORS[path]
