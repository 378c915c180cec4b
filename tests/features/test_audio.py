import numpy as np
import pytest
import torch

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.audio import load_audio, log_mel, utterance_log_mels
from shared.contract.features.spec import FeatureSpec

SPEC = FeatureSpec(max_audio_frames=128)


def tone(seconds: float, hz: float = 440.0, rate: int = 16_000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_load_audio_decodes_mono_16k(media, settings):
    waveform = load_audio(media.mp4, SPEC, settings)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - 3 * 16_000) < 1_600  # codec priming/padding: well under 0.1 s
    assert 0.1 < np.abs(waveform).max() <= 1.0


def test_log_mel_matches_a_torch_stft_reference():
    """Independent check of the numpy path: torch.stft + the same filter bank + same scaling."""
    from transformers.audio_utils import mel_filter_bank

    samples = tone(0.5) + tone(0.5, hz=1800, amplitude=0.1)
    features, mask = log_mel(samples, SPEC)
    spectrum = torch.stft(
        torch.from_numpy(samples), 400, 160, window=torch.hann_window(400), center=True, return_complex=True
    )
    bank = torch.from_numpy(
        mel_filter_bank(201, 64, 0.0, 8000.0, 16_000, norm="slaney", mel_scale="slaney").T.astype(np.float32)
    )
    reference = torch.clamp(bank @ spectrum.abs() ** 2, min=1e-10).log10()
    reference = (torch.maximum(reference, reference.max() - 8.0) + 4.0) / 4.0
    frames = 1 + len(samples) // 160
    assert features.shape == (64, 128) and features.dtype == np.float16
    assert mask.dtype == np.bool_ and mask.sum() == frames and mask[:frames].all()
    np.testing.assert_allclose(features[:, :frames].astype(np.float32), reference.numpy(), atol=2e-3)
    assert not features[:, frames:].any()


@pytest.mark.parametrize(
    "samples", [np.zeros(16_000, np.float32), np.full(8_000, 1e-6, np.float32), np.zeros(0, np.float32)]
)
def test_silence_gives_zeros_and_no_mask(samples):
    features, mask = log_mel(samples, SPEC)
    assert not mask.any() and not features.any()
    assert np.isfinite(features).all()


def test_short_and_long_inputs():
    features, mask = log_mel(tone(0.005), SPEC)  # 80 samples: shorter than half a window
    assert mask.sum() == 1 and np.isfinite(features).all()
    features, mask = log_mel(tone(5.0), SPEC)  # 501 frames, cut to T=128
    assert mask.all() and np.isfinite(features).all()


def test_no_nan_even_from_broken_samples():
    samples = tone(0.3)
    samples[100:200] = 0.0
    features, _ = log_mel(samples, SPEC)
    assert np.isfinite(features.astype(np.float32)).all()


def test_utterance_slices_follow_speech(media, settings):
    clip = media.spoken
    waveform = load_audio(clip.video, SPEC, settings)
    first = clip.segments[0]
    utterances = [
        UtteranceMeta(first["start"], first["end"]),
        UtteranceMeta(0.0, 0.3),  # the leading silence
        UtteranceMeta(clip.duration - 0.2, clip.duration + 5),  # runs past the end of the audio
    ]
    spec = FeatureSpec(max_audio_frames=512)
    features, masks = utterance_log_mels(waveform, utterances, spec)
    assert features.shape == (3, 64, 512) and masks.shape == (3, 512)
    speech_frames = int((first["end"] - first["start"]) * 100)
    assert abs(int(masks[0].sum()) - speech_frames) <= 2
    assert features[0].astype(np.float32).std() > 0.1
    assert not masks[1].any()  # espeak-ng's leading gap is digital silence
    assert masks[2].sum() <= 21  # only the 0.2 s that exist (and they are silent: maybe none)
    none_features, none_masks = utterance_log_mels(None, utterances, spec)
    assert not none_masks.any() and not none_features.any()


def test_audio_starting_late_stays_aligned(media, settings):
    waveform = load_audio(media.late_audio, SPEC, settings)
    assert abs(len(waveform) - 3 * 16_000) < 1_600  # padded from 0, not shifted to the start
    assert np.abs(waveform[:14_000]).max() < 1e-3  # silence until the stream starts at 1 s
    assert np.abs(waveform[18_000:40_000]).max() > 0.1
    _, masks = utterance_log_mels(waveform, [UtteranceMeta(0.0, 0.85), UtteranceMeta(1.2, 2.5)], SPEC)
    assert not masks[0].any()  # before the stream starts: silence, masked
    assert masks[1].all()  # 1.3 s of tone fills all T = 128 frames
