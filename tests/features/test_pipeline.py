import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from shared.contract.bundle import FeatureBundle, UtteranceMeta
from shared.contract.features.frames import NO_FRAME
from shared.contract.features.media import MediaError
from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.transcripts import TranscriptError

# These media carry sine tones: the speech gate (tests/features/test_speech_gate.py) would mask
# them, and here the audio mask must show what was decoded.
SPEC = FeatureSpec(
    frames_per_utterance=3, frame_size=32, max_audio_frames=160, max_tokens=32, speech_gate=False
)


def check_bundle(bundle: FeatureBundle, spec: FeatureSpec = SPEC) -> None:
    count = len(bundle)
    n, s = spec.frames_per_utterance, spec.frame_size
    assert bundle.frames.shape == (count, n, 3, s, s) and bundle.frames.dtype == np.uint8
    assert bundle.frame_times.shape == (count, n) and bundle.frame_times.dtype == np.float32
    assert bundle.log_mel.shape == (count, spec.n_mels, spec.max_audio_frames)
    assert bundle.log_mel.dtype == np.float16 and np.isfinite(bundle.log_mel.astype(np.float32)).all()
    assert bundle.audio_mask.shape == (count, spec.max_audio_frames) and bundle.audio_mask.dtype == np.bool_
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert (
            getattr(bundle, name).shape == (count, spec.max_tokens)
            and getattr(bundle, name).dtype == np.int64
        )
    assert bundle.modality_mask.shape == (count, 3) and bundle.modality_mask.dtype == np.bool_
    assert bundle.spec_hash == spec.hash
    # sampled frames lie inside their utterance; utterances without video have none at all
    for row, utterance in enumerate(bundle.utterances):
        times = bundle.frame_times[row]
        if bundle.modality_mask[row, 2]:
            assert (times >= utterance.start - 1e-3).all() and (times <= utterance.end + 1e-3).all()
        else:
            assert (times == NO_FRAME).all() and not bundle.frames[row].any()
        assert bundle.modality_mask[row, 1] == bundle.audio_mask[row].any()
    restored = FeatureBundle.from_bytes(bundle.to_bytes(), expected_spec_hash=spec.hash)
    assert restored.utterances == bundle.utterances
    np.testing.assert_array_equal(restored.frames, bundle.frames)


@pytest.mark.parametrize(
    ("case", "audio", "visual"),
    [
        ("mp4", [True, True, True], [True, True, True]),
        ("webm", [True, True, True], [True, True, True]),
        ("mkv", [True, True, True], [True, True, True]),
        ("vfr", [True, True, True], [True, True, True]),
        ("portrait", [True, True], [True, True]),
        ("no_audio", [False, False, False], [True, True, True]),
        ("audio_only", [True, True, True], [False, False, False]),
        ("video_ends_early", [True, True, True], [True, False, False]),
        # cut at half its bytes: how far each stream reaches depends on interleaving (None: unchecked)
        ("truncated", [True, True, None, False], [True, None, None, False]),
    ],
)
def test_media_cases_without_transcript(media, settings, case, audio, visual):
    bundle = extract_features(getattr(media, case), SPEC, window_seconds=1.0, settings=settings)
    check_bundle(bundle)
    assert [u.text for u in bundle.utterances] == [""] * len(audio)
    assert bundle.modality_mask[:, 0].tolist() == [False] * len(audio)  # no transcript: no text
    for column, expected in ((1, audio), (2, visual)):
        got = bundle.modality_mask[:, column].tolist()
        assert [g if e is not None else None for g, e in zip(got, expected, strict=True)] == expected
    assert bundle.media["duration"] > 0 and bundle.media["clamped"] == []


def test_spoken_clip_with_transcript(media, settings):
    clip = media.spoken
    for transcript in (clip.transcript, clip.transcript.read_bytes(), clip.segments):
        bundle = extract_features(clip.video, SPEC, transcript, settings=settings)
        check_bundle(bundle)
        assert [u.text for u in bundle.utterances] == [s["text"] for s in clip.segments]
        assert bundle.modality_mask.all()
        # the mask covers the spoken line: about 100 mel frames per second, capped at T
        expected = [min(160, int((s["end"] - s["start"]) * 100)) for s in clip.segments]
        assert np.abs(bundle.audio_mask.sum(axis=1) - expected).max() <= 2
    assert [u.speaker for u in bundle.utterances] == [s["speaker"] for s in clip.segments]


def test_transcript_is_checked_against_the_media(media, settings):
    late = "1\n00:00:01,000 --> 00:00:03,400\nnear the end\n\n2\n00:00:05,000 --> 00:00:06,000\ntoo late\n"
    with pytest.raises(TranscriptError) as info:
        extract_features(media.mp4, SPEC, late, settings=settings)
    assert info.value.line == 6
    result = extract_features(media.mp4, SPEC, late.split("\n\n")[0], settings=settings)
    assert result.utterances[0].end == pytest.approx(3.0, abs=0.01)
    assert len(result.media["clamped"]) == 1


@pytest.mark.parametrize(("case", "code"), [("random", "not_media"), ("empty", "not_media")])
def test_refused_before_any_decoding(media, settings, monkeypatch, case, code):
    launched = []
    real_popen = subprocess.Popen

    class CountingPopen(real_popen):
        def __init__(self, args, *rest, **options):
            launched.append(args[0])
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", CountingPopen)
    with pytest.raises(MediaError) as info:
        extract_features(getattr(media, case), SPEC, settings=settings)
    assert info.value.code == code
    assert "ffmpeg" not in launched


def test_too_many_windows_is_refused(media, settings):
    with pytest.raises(TranscriptError, match="exceed"):
        extract_features(
            media.mp4, SPEC, window_seconds=0.5, settings=settings.model_copy(update={"max_utterances": 4})
        )


def test_features_command(media, tmp_path):
    from services.cli import app

    out = tmp_path / "bundle.safetensors"
    clip = media.spoken
    result = CliRunner().invoke(
        app, ["features", str(clip.video), "--transcript", str(clip.transcript), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "4 utterances; with text 4, audio 4, visual 4" in result.output
    assert "This is the best day ever!" in result.output
    bundle = FeatureBundle.load(out, expected_spec_hash=FeatureSpec().hash)
    assert len(bundle) == 4

    refused = CliRunner().invoke(app, ["features", str(clip.video), "--segmentation", "sentences"])
    assert refused.exit_code == 2 and "sentences" in refused.output
    result = CliRunner().invoke(app, ["features", str(media.random)])
    assert result.exit_code == 2
    assert "not_media" in result.output


def test_demo_command(tmp_path):
    from services.cli import app

    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "4 utterances; with text 4, audio 4, visual 4" in result.output
    assert "Ross" in result.output and (tmp_path / "spoken.mp4").is_file()


def test_time_limits_stop_ffmpeg(media, settings):
    from shared.contract.features.audio import load_audio
    from shared.contract.features.frames import extract_frames
    from shared.contract.features.media import probe

    info = probe(media.spoken.video, settings)
    hasty = settings.model_copy(update={"ffmpeg_timeout_seconds": 0.001, "ffprobe_timeout_seconds": 0.001})
    utterances = [UtteranceMeta(0.0, info.duration)]
    for run in (
        lambda: probe(media.spoken.video, hasty),
        lambda: extract_frames(media.spoken.video, info, utterances, SPEC, hasty),
        lambda: load_audio(media.spoken.video, SPEC, hasty),
    ):
        with pytest.raises(MediaError) as error:
            run()
        assert error.value.code == "corrupt" and "longer than" in str(error.value)


def test_spec_without_frames_decodes_no_video(media, settings, monkeypatch):
    """A model whose visual branch is untrained declares 0 frames: only the audio is decoded."""
    clip = media.spoken  # generated on first use: before the recording starts
    launched = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):
        def __init__(self, args, *rest, **options):
            launched.append(list(args))
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    spec = SPEC.model_copy(update={"frames_per_utterance": 0})
    bundle = extract_features(clip.video, spec, clip.transcript, settings=settings)
    check_bundle(bundle, spec)
    assert bundle.frames.shape[1] == 0 and not bundle.modality_mask[:, 2].any()
    assert bundle.modality_mask[:, :2].all()
    ffmpeg_runs = [args for args in launched if args[0].endswith("ffmpeg")]
    assert len(ffmpeg_runs) == 1 and "-vn" in ffmpeg_runs[0]
