"""The numpy voice encoder against the torch module it reproduces.

The installed safetensors weights (`make models`) go into a ``torch.nn.LSTM`` + ``Linear`` built
exactly as Resemblyzer's ``VoiceEncoder``; the numpy forward pass must give the same embeddings.
Skipped with a reason where torch or the installed encoder is absent (the worker image has no
torch; the project's development environment has both).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.contract.features.voice import (
    EMBEDDING_SIZE,
    HOP,
    N_FFT,
    N_MELS,
    NUISANCE_FILE,
    PARTIAL_FRAMES,
    mel_spectrogram,
    normalize_volume,
    nuisance_basis,
    partial_slices,
    remove_nuisance,
)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch checks the numpy encoder; the worker has none")


def torch_encoder(torch, weights):
    lstm = torch.nn.LSTM(N_MELS, 256, 3, batch_first=True)
    linear = torch.nn.Linear(256, EMBEDDING_SIZE)
    lstm.load_state_dict(
        {k.removeprefix("lstm."): torch.from_numpy(v) for k, v in weights.items() if k.startswith("lstm.")}
    )
    linear.load_state_dict(
        {
            k.removeprefix("linear."): torch.from_numpy(v)
            for k, v in weights.items()
            if k.startswith("linear.")
        }
    )

    def forward(mels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            _, (hidden, _) = lstm(torch.from_numpy(mels))
            raw = torch.relu(linear(hidden[-1]))
            return (raw / torch.norm(raw, dim=1, keepdim=True)).numpy()

    return forward


def test_the_numpy_lstm_matches_torch(encoder, torch):
    rng = np.random.default_rng(0)
    mels = rng.gamma(0.5, 2.0, size=(5, PARTIAL_FRAMES, N_MELS)).astype(np.float32)
    expected = torch_encoder(torch, encoder.weights)(mels)
    got = encoder.forward(mels)
    assert got.shape == (5, EMBEDDING_SIZE)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_the_mel_spectrum_matches_torch_stft(torch):
    from shared.contract.features.audio import _mel_filters

    wav = np.random.default_rng(1).standard_normal(16_000 * 2).astype(np.float32) * 0.1
    power = torch.stft(
        torch.from_numpy(wav), N_FFT, HOP, window=torch.hann_window(N_FFT), center=True,
        pad_mode="constant", return_complex=True,
    ).abs() ** 2  # fmt: skip
    expected = power.numpy().T @ _mel_filters(N_FFT, N_MELS, 16_000)
    got = mel_spectrogram(wav)
    assert got.shape == (1 + len(wav) // HOP, N_MELS)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


def test_partials_follow_resemblyzers_rule():
    # 1.6 s windows every 77 frames; the last kept only when 75 % of it has audio
    assert partial_slices(16_000) == [slice(0, 160)]
    assert partial_slices(int(16_000 * 2.0)) == [slice(0, 160), slice(77, 237)]
    assert partial_slices(int(16_000 * 1.8)) == [slice(0, 160)]


def test_volume_is_raised_to_minus_30_dbfs_never_lowered():
    quiet = np.full(1600, 0.001, dtype=np.float32)
    raised = normalize_volume(quiet)
    assert 20 * np.log10(np.sqrt(np.mean(raised**2))) == pytest.approx(-30.0, abs=0.01)
    loud = np.full(1600, 0.5, dtype=np.float32)
    assert normalize_volume(loud) is loud


def test_embeddings_are_unit_norm_and_batched(encoder):
    rng = np.random.default_rng(2)
    wavs = [rng.standard_normal(n).astype(np.float32) * 0.05 for n in (8_000, 40_000, 70_000)]
    together = encoder.embed(wavs)
    assert together.shape == (3, EMBEDDING_SIZE)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.embed(wavs[1:2])[0], together[1], atol=1e-5)


def test_nuisance_directions_are_projected_out(tmp_path):
    rng = np.random.default_rng(4)
    basis, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_SIZE, 3)))
    path = tmp_path / "nuisance.json"
    path.write_text(json.dumps({"basis": basis.T.tolist()}))
    prints = rng.standard_normal((5, EMBEDDING_SIZE)).astype(np.float32)
    prints /= np.linalg.norm(prints, axis=1, keepdims=True)
    kept = remove_nuisance(prints, 2, path)
    np.testing.assert_allclose(np.linalg.norm(kept, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(kept @ basis[:, :2], 0.0, atol=1e-5)
    assert np.abs(kept @ basis[:, 2]).min() > 1e-4, "only the first two directions go"
    # what is left is the print's own direction off the nuisance plane
    rest = prints - (prints @ basis[:, :2]) @ basis[:, :2].T
    np.testing.assert_allclose(kept, rest / np.linalg.norm(rest, axis=1, keepdims=True), atol=1e-5)
    assert remove_nuisance(prints, 0, path) is prints
    with pytest.raises(ValueError, match="3 nuisance directions"):
        remove_nuisance(prints, 4, path)


def test_the_stored_nuisance_basis_is_orthonormal_and_from_dev_speakers_only():
    basis = nuisance_basis()
    assert basis.shape[1] == EMBEDDING_SIZE and len(basis) >= 8
    np.testing.assert_allclose(basis @ basis.T, np.eye(len(basis)), atol=1e-5)
    fitted = json.loads(NUISANCE_FILE.read_text())
    from bench.diarization import SPLITS

    test = {f"{corpus}/{s}" for corpus in ("ravdess", "emodb") for s in SPLITS["test"][corpus]}
    assert fitted["speakers"] and not test & set(fitted["speakers"]), "fitted on held-out speakers"
