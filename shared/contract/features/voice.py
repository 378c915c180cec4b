"""Voice embeddings without torch: Resemblyzer's speaker encoder run in numpy.

Resemblyzer 0.1.4 (Apache-2.0) turns speech into a 256-d unit-norm "voice print": a 3-layer LSTM
(hidden 256) over 40-band mel power spectra (25 ms windows, 10 ms hop, 16 kHz), read in partial
windows of 160 frames (1.6 s) every 1/1.3 s; the last hidden state of the top layer goes through a
linear layer and a ReLU, is L2-normalised, and an utterance's embedding is the normalised mean of
its partials. `make models` installs its weights converted to safetensors
(``<models_dir>/resemblyzer/encoder.safetensors``); this module reproduces its preprocessing
(volume raised to -30 dBFS, long silences trimmed by WebRTC's VAD, mel spectrum, partials) and its
forward pass with numpy, because the preprocess worker carries no torch.

Emotion moves a voice print: the same actor shouting and whispering is about as far apart as two
speakers. ``voice_nuisance.json`` holds the directions along which one speaker's prints vary most
(the top eigenvectors of the within-speaker scatter of acted emotional speech, fitted by
``bench/diarization.py`` on its dev speakers only); ``remove_nuisance`` projects the first few out
before voices are compared (nuisance attribute projection).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from shared.contract.features.audio import _mel_filters, _window
from shared.contract.features.installed import ModelMissing

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_SECOND = 1.3
MIN_COVERAGE = 0.75
LAYERS = 3
HIDDEN = 256
EMBEDDING_SIZE = 256
VOLUME_TARGET_DBFS = -30.0
# trim_long_silences: WebRTC VAD (mode 3) in 30 ms windows, moving average over 8, dilated by 7
VAD_WINDOW = SAMPLE_RATE * 30 // 1000
VAD_AVERAGE_WIDTH = 8
VAD_MAX_SILENCE = 6
INT16_MAX = 2**15 - 1
MODEL_NAME = "resemblyzer"
WEIGHTS_FILE = "encoder.safetensors"


NUISANCE_FILE = Path(__file__).with_name("voice_nuisance.json")


def nuisance_basis(path: Path = NUISANCE_FILE) -> np.ndarray:
    """``[K, 256]`` orthonormal rows, the largest within-speaker variation first."""
    with _LOCK:
        if path not in _NUISANCE:
            data = json.loads(Path(path).read_text())
            _NUISANCE[path] = np.asarray(data["basis"], dtype=np.float64).reshape(-1, EMBEDDING_SIZE)
        return _NUISANCE[path]


def remove_nuisance(embeddings: np.ndarray, dims: int, path: Path = NUISANCE_FILE) -> np.ndarray:
    """``embeddings`` (``[N, 256]``) without their part along the first ``dims`` nuisance
    directions, unit-norm again; ``dims`` 0 returns them unchanged."""
    if dims <= 0 or len(embeddings) == 0:
        return embeddings
    basis = nuisance_basis(path)
    if dims > len(basis):
        raise ValueError(f"{path.name} holds {len(basis)} nuisance directions, not {dims}")
    return project_out(embeddings, basis[:dims])


def project_out(embeddings: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``embeddings`` without their part along ``basis``'s orthonormal rows, unit-norm again."""
    points = np.asarray(embeddings, dtype=np.float64)
    kept = points - (points @ basis.T) @ basis
    return (kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class VoiceEncoderMissing(ModelMissing):
    """The voice encoder's weights are not installed."""


def normalize_volume(wav: np.ndarray, target_dbfs: float = VOLUME_TARGET_DBFS) -> np.ndarray:
    """Raise (never lower) the level to ``target_dbfs``, as Resemblyzer's ``normalize_volume``."""
    rms = float(np.sqrt(np.mean((wav.astype(np.float64) * INT16_MAX) ** 2))) if wav.size else 0.0
    if rms == 0.0:
        return wav
    change = target_dbfs - 20.0 * np.log10(rms / INT16_MAX)
    if change < 0:
        return wav
    return (wav * (10.0 ** (change / 20.0))).astype(np.float32)


def trim_long_silences(wav: np.ndarray) -> np.ndarray:
    """Resemblyzer's ``trim_long_silences``: keep voiced windows, smoothed and dilated."""
    import webrtcvad
    from scipy.ndimage import binary_dilation

    wav = wav[: len(wav) - len(wav) % VAD_WINDOW]
    if wav.size == 0:
        return wav
    pcm = np.round(np.clip(wav, -1.0, 1.0) * INT16_MAX).astype("<i2").reshape(-1, VAD_WINDOW)
    vad = webrtcvad.Vad(3)
    flags = np.array([vad.is_speech(row.tobytes(), SAMPLE_RATE) for row in pcm], dtype=np.float64)
    width = VAD_AVERAGE_WIDTH
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    total = np.cumsum(padded)
    total[width:] = total[width:] - total[:-width]
    mask = np.round(total[width - 1 :] / width).astype(bool)
    mask = binary_dilation(mask, np.ones(VAD_MAX_SILENCE + 1))
    return wav[np.repeat(mask, VAD_WINDOW)]


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """``[frames, 40]`` mel power spectrum as ``librosa.feature.melspectrogram`` computes it for
    Resemblyzer (periodic Hann, centred with zero padding, power 2, Slaney mel scale and norm)."""
    padded = np.pad(np.asarray(wav, dtype=np.float32), N_FFT // 2, mode="constant")
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count]
    power = np.abs(np.fft.rfft(frames * _window(N_FFT), axis=1)) ** 2
    return (power.astype(np.float32) @ _mel_filters(N_FFT, N_MELS, SAMPLE_RATE)).astype(np.float32)


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame slices of the partial windows (Resemblyzer's ``compute_partial_slices``)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / PARTIALS_PER_SECOND) / HOP))
    steps = max(1, n_frames - PARTIAL_FRAMES + step + 1)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, steps, step)]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / ((last.stop - last.start) * HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices = slices[:-1]
    return slices


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class VoiceEncoder:
    """The LSTM and linear layer; ``weights`` keyed by their torch names."""

    weights: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: Path) -> VoiceEncoder:
        from safetensors.numpy import load_file

        if not path.is_file():
            raise VoiceEncoderMissing(
                MODEL_NAME, f"the voice encoder is not installed at {path}: run `make models`"
            )
        return cls({name: value.astype(np.float32) for name, value in load_file(str(path)).items()})

    def forward(self, mels: np.ndarray) -> np.ndarray:
        """``[B, T, 40]`` mel windows -> ``[B, 256]`` unit-norm embeddings (torch's LSTM gate order
        i, f, g, o; zero initial states; the top layer's last hidden state)."""
        w = self.weights
        sequence = np.asarray(mels, dtype=np.float32)
        batch, steps = sequence.shape[:2]
        for layer in range(LAYERS):
            # The input projection for every step at once; only the recurrence is sequential.
            inputs = sequence @ w[f"lstm.weight_ih_l{layer}"].T
            inputs += w[f"lstm.bias_ih_l{layer}"] + w[f"lstm.bias_hh_l{layer}"]
            recurrent = np.ascontiguousarray(w[f"lstm.weight_hh_l{layer}"].T)
            h = np.zeros((batch, HIDDEN), dtype=np.float32)
            c = np.zeros((batch, HIDDEN), dtype=np.float32)
            outputs = np.empty((batch, steps, HIDDEN), dtype=np.float32)
            for t in range(steps):
                gates = inputs[:, t] + h @ recurrent
                i = _sigmoid(gates[:, :HIDDEN])
                f = _sigmoid(gates[:, HIDDEN : 2 * HIDDEN])
                g = np.tanh(gates[:, 2 * HIDDEN : 3 * HIDDEN])
                o = _sigmoid(gates[:, 3 * HIDDEN :])
                c = f * c + i * g
                h = o * np.tanh(c)
                outputs[:, t] = h
            sequence = outputs
        raw = np.maximum(h @ w["linear.weight"].T + w["linear.bias"], 0.0)
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)

    def embed(self, wavs: Sequence[np.ndarray], *, preprocess: bool = True) -> np.ndarray:
        """One unit-norm embedding per waveform (16 kHz float32), ``[N, 256]``; all partials of
        all waveforms go through the LSTM as one batch."""
        windows: list[np.ndarray] = []
        owners: list[int] = []
        for index, wav in enumerate(wavs):
            wav = np.asarray(wav, dtype=np.float32)
            if preprocess:
                trimmed = trim_long_silences(normalize_volume(wav))
                wav = trimmed if trimmed.size >= HOP else normalize_volume(wav)
            slices = partial_slices(len(wav))
            needed = slices[-1].stop * HOP
            if needed >= len(wav):
                wav = np.pad(wav, (0, needed - len(wav)))
            mel = mel_spectrogram(wav)
            windows += [mel[s] for s in slices]
            owners += [index] * len(slices)
        embeddings = np.zeros((len(wavs), EMBEDDING_SIZE), dtype=np.float32)
        if not windows:
            return embeddings
        # Small matrices in a long sequential loop: BLAS threads only add contention here.
        with threadpool_limits(limits=1, user_api="blas"):
            partials = self.forward(np.stack(windows))
        np.add.at(embeddings, np.asarray(owners), partials)
        return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


_ENCODERS: dict[Path, VoiceEncoder] = {}
_NUISANCE: dict[Path, np.ndarray] = {}
_LOCK = threading.Lock()


def voice_encoder(models_dir: Path) -> VoiceEncoder:
    """The installed encoder, loaded once per process."""
    path = Path(models_dir) / MODEL_NAME / WEIGHTS_FILE
    with _LOCK:
        if path not in _ENCODERS:
            _ENCODERS[path] = VoiceEncoder.load(path)
        return _ENCODERS[path]
