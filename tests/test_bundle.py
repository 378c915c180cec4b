import numpy as np
import pytest

from shared.contract.bundle import BundleError, FeatureBundle, UtteranceMeta, read_metadata
from shared.contract.features.spec import FeatureSpec


def make_bundle(spec: FeatureSpec, count: int = 3) -> FeatureBundle:
    rng = np.random.default_rng(0)
    n, s, m, t, length = (
        spec.frames_per_utterance,
        spec.frame_size,
        spec.n_mels,
        spec.max_audio_frames,
        spec.max_tokens,
    )
    return FeatureBundle(
        utterances=[UtteranceMeta(start=i, end=i + 0.5, text=f"line {i}", speaker="A") for i in range(count)],
        frames=rng.integers(0, 255, (count, n, 3, s, s), dtype=np.uint8),
        frame_times=rng.random((count, n), dtype=np.float32),
        log_mel=rng.standard_normal((count, m, t)).astype(np.float16),
        audio_mask=rng.random((count, t)) > 0.5,
        input_ids=rng.integers(0, 1000, (count, length), dtype=np.int64),
        attention_mask=np.ones((count, length), dtype=np.int64),
        token_type_ids=np.zeros((count, length), dtype=np.int64),
        modality_mask=np.array([[True, True, False]] * count),
        spec_hash=spec.hash,
        media={"duration": 3.0},
    )


def test_round_trip_keeps_every_tensor_and_metadata():
    spec = FeatureSpec(frame_size=32, frames_per_utterance=2, max_audio_frames=20)
    bundle = make_bundle(spec)
    restored = FeatureBundle.from_bytes(bundle.to_bytes(), expected_spec_hash=spec.hash)
    assert restored.utterances == bundle.utterances
    assert restored.media == {"duration": 3.0}
    for name in ("frames", "frame_times", "log_mel", "audio_mask", "input_ids", "modality_mask"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(bundle, name), err_msg=name)


def test_refuses_other_spec_hash_and_schema():
    spec = FeatureSpec(frame_size=32)
    data = make_bundle(spec).to_bytes()
    other = FeatureSpec(frame_size=48)
    with pytest.raises(BundleError) as info:
        FeatureBundle.from_bytes(data, expected_spec_hash=other.hash)
    assert info.value.code == "spec_mismatch"
    assert spec.hash in str(info.value) and other.hash in str(info.value)
    assert read_metadata(data)["schema_version"] == "1"
    tampered = data.replace(b'"schema_version":"1"', b'"schema_version":"9"')
    with pytest.raises(BundleError) as info:
        FeatureBundle.from_bytes(tampered)
    assert info.value.code == "schema_mismatch"


def test_garbage_is_malformed():
    for data in (b"", b"12345678", b"\xff" * 64):
        with pytest.raises(BundleError) as info:
            FeatureBundle.from_bytes(data)
        assert info.value.code == "malformed_bundle"


def test_select_keeps_rows_aligned():
    spec = FeatureSpec(frame_size=16, max_audio_frames=16)
    bundle = make_bundle(spec, count=5)
    part = bundle.select([1, 3])
    assert [u.start for u in part.utterances] == [1, 3]
    np.testing.assert_array_equal(part.frames[1], bundle.frames[3])


def test_spec_hash_is_stable_and_sensitive():
    assert FeatureSpec().hash == FeatureSpec().hash
    assert FeatureSpec().hash != FeatureSpec(n_mels=80).hash
    assert len(FeatureSpec().hash) == 16
