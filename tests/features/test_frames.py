import subprocess

import numpy as np
import pytest

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.frames import NO_FRAME, extract_frames, select_expression, target_times
from shared.contract.features.media import probe
from shared.contract.features.spec import FeatureSpec

SPEC = FeatureSpec(frames_per_utterance=4, frame_size=32)
UTTERANCES = [UtteranceMeta(0.0, 0.9), UtteranceMeta(1.0, 1.5), UtteranceMeta(2.0, 2.9)]


def assert_times_inside(frame_times, utterances, present):
    for row, utterance in enumerate(utterances):
        if not present[row]:
            assert (frame_times[row] == NO_FRAME).all()
            continue
        assert (frame_times[row] >= utterance.start - 1e-3).all(), (row, frame_times[row])
        assert (frame_times[row] <= utterance.end + 1e-3).all(), (row, frame_times[row])


def test_targets_spread_evenly():
    times = target_times([UtteranceMeta(2.0, 4.0)], 4)
    np.testing.assert_allclose(times, [[2.25, 2.75, 3.25, 3.75]])


@pytest.mark.parametrize("reference_only", [False, True], ids=["every-frame", "reference-only"])
@pytest.mark.parametrize("case", ["mp4", "webm", "mkv", "vfr", "no_audio"])
def test_shapes_and_times_inside_utterances(media, settings, case, reference_only):
    path = getattr(media, case)
    spec = SPEC.model_copy(update={"frames_reference_only": reference_only})
    visual = extract_frames(path, probe(path, settings), UTTERANCES, spec, settings)
    assert visual.frames.shape == (3, 4, 3, 32, 32) and visual.frames.dtype == np.uint8
    assert visual.frame_times.shape == (3, 4) and visual.frame_times.dtype == np.float32
    assert visual.present.tolist() == [True, True, True]
    assert_times_inside(visual.frame_times, UTTERANCES, visual.present)
    assert visual.frames.std() > 10  # real pictures, not a blank tensor
    # testsrc2 moves: frames at different times differ
    assert not np.array_equal(visual.frames[0, 0], visual.frames[2, 3])


def test_frames_are_the_ones_their_times_say(media, settings):
    """Brightness encodes time in this clip, so every pixel block proves its timestamp."""
    utterances = [UtteranceMeta(0.1, 0.6), UtteranceMeta(0.7, 2.2), UtteranceMeta(2.5, 3.9)]
    spec = FeatureSpec(frames_per_utterance=6, frame_size=16)
    visual = extract_frames(media.time_coded, probe(media.time_coded, settings), utterances, spec, settings)
    assert visual.present.all()
    # luma 16 + 50 t in limited range -> RGB 50 t * 255 / 219
    seconds_from_pixels = visual.frames.astype(np.float64).mean(axis=(2, 3, 4)) / (50 * 255 / 219)
    np.testing.assert_allclose(seconds_from_pixels, visual.frame_times, atol=0.03)
    # neighbouring frames are 0.1 s apart, so the pixels name the frame; and each sampled frame is
    # the one nearest its target (within half a frame interval)
    np.testing.assert_allclose(visual.frame_times, target_times(utterances, 6), atol=0.05 + 1e-6)


def test_one_ffmpeg_process_for_all_utterances(media, settings, monkeypatch):
    launched = []
    real_popen = subprocess.Popen

    class CountingPopen(real_popen):
        def __init__(self, args, *rest, **options):
            launched.append(args[0])
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", CountingPopen)
    utterances = [UtteranceMeta(i * 0.1, i * 0.1 + 0.08) for i in range(25)]
    info = probe(media.mp4, settings)
    launched.clear()
    visual = extract_frames(
        media.mp4, info, utterances, FeatureSpec(frames_per_utterance=2, frame_size=16), settings
    )
    assert launched == ["ffmpeg"]
    assert visual.present.all()


def test_rotation_is_honoured(media, settings):
    """The portrait clip is coded landscape with red left / blue right and a 90 degree display
    matrix. Shown upright, red and blue are top and bottom (in one order or the other)."""
    spec = FeatureSpec(frames_per_utterance=1, frame_size=32)
    visual = extract_frames(
        media.portrait, probe(media.portrait, settings), [UtteranceMeta(0, 1)], spec, settings
    )
    frame = visual.frames[0, 0].astype(int)  # [3, S, S]
    top, bottom = frame[:, :4].mean(axis=(1, 2)), frame[:, -4:].mean(axis=(1, 2))
    left, right = frame[:, :, :4].mean(axis=(1, 2)), frame[:, :, -4:].mean(axis=(1, 2))
    red_blue = {(top[0] > top[2]), (bottom[0] > bottom[2])}
    assert red_blue == {True, False}, (top, bottom)  # rows differ in colour: red above/below blue
    assert abs(left - right).max() < 30  # columns alike


def test_video_ending_early_masks_later_utterances(media, settings):
    visual = extract_frames(
        media.video_ends_early, probe(media.video_ends_early, settings), UTTERANCES, SPEC, settings
    )
    assert visual.present.tolist() == [True, False, False]
    assert (visual.frames[1:] == 0).all()
    assert (visual.frame_times[1:] == NO_FRAME).all()


def test_truncated_file_keeps_what_decodes(media, settings):
    info = probe(media.truncated, settings)
    utterances = [UtteranceMeta(0.0, 0.5), UtteranceMeta(3.5, 4.0)]
    visual = extract_frames(media.truncated, info, utterances, SPEC, settings)
    assert visual.present.tolist() == [True, False]


def test_no_video_gives_zeros(media, settings):
    visual = extract_frames(media.audio_only, probe(media.audio_only, settings), UTTERANCES, SPEC, settings)
    assert not visual.present.any()
    assert visual.frames.shape == (3, 4, 3, 32, 32) and not visual.frames.any()


def test_select_expression_is_a_search_tree():
    times = target_times([UtteranceMeta(i, i + 0.5) for i in range(200)], 8)
    expression = select_expression(times, 0.02)
    # nesting grows with log2 of the targets, not with their count
    depth = max_depth = 0
    for char in expression:
        depth += char == "("
        depth -= char == ")"
        max_depth = max(max_depth, depth)
    assert max_depth < 40


def b_frames_clip(directory, b_frames: int):
    """The time-coded clip (10 fps) coded as I/P frames with runs of ``b_frames`` B-frames that
    nothing refers to, and the times of its reference (I and P) frames."""
    from tests import mediagen

    path = mediagen.make_clip(
        directory / f"b-frames-{b_frames}.mp4",
        duration=4.0,
        audio=False,
        video_source="color=c=black:s=64x64:r=10,format=yuv420p,geq=lum='16+50*T':cb=128:cr=128",
        extra=("-crf", "10", "-bf", str(b_frames), "-x264-params", "b-pyramid=none:b-adapt=0:scenecut=0"),
    )
    listed = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=pts_time,pict_type",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    frames = [line.split(",")[:2] for line in listed.split()]
    assert {kind for _, kind in frames} == {"I", "P", "B"}
    return path, sorted(float(time) for time, kind in frames if kind != "B")


@pytest.fixture(scope="module")
def b_frame_clip(tmp_path_factory):
    return b_frames_clip(tmp_path_factory.mktemp("b-frames"), 3)


def nearest_reference(times: np.ndarray, references: list[float]) -> np.ndarray:
    return np.abs(times.astype(np.float64)[..., None] - np.array(references)).min(axis=-1)


def test_reference_only_decodes_the_reference_frames(b_frame_clip, settings):
    path, references = b_frame_clip
    # the second utterance lies between two reference frames, inside a run of B-frames
    utterances = [UtteranceMeta(0.4, 1.9), UtteranceMeta(2.05, 2.25), UtteranceMeta(2.5, 3.9)]
    spec = FeatureSpec(frames_per_utterance=4, frame_size=16, frames_reference_only=True)
    visual = extract_frames(path, probe(path, settings), utterances, spec, settings)
    assert visual.present.all()
    times = visual.frame_times.astype(np.float64)
    assert (nearest_reference(times, references) < 1e-3).all(), times
    # each a reference frame within half an interval of its target or the next one after it (a run
    # of three B-frames: at most 0.4 s later)
    late = times - target_times(utterances, 4)
    assert (late >= -0.05 - 1e-6).all() and (late <= 0.4 + 1e-6).all(), late
    # and the pixels are those of the frame at that time
    seconds_from_pixels = visual.frames.astype(np.float64).mean(axis=(2, 3, 4)) / (50 * 255 / 219)
    np.testing.assert_allclose(seconds_from_pixels, times, atol=0.03)
    # decoding every frame, the targets take the B-frames between
    every_frame = spec.model_copy(update={"frames_reference_only": False})
    every = extract_frames(path, probe(path, settings), utterances, every_frame, settings)
    assert (nearest_reference(every.frame_times, references) > 0.05).any()


def test_reference_only_gives_short_utterances_the_next_reference_frame(tmp_path, settings):
    """Runs of 12 B-frames: reference frames 1.3 s apart, so these utterances hold none."""
    path, references = b_frames_clip(tmp_path, 12)
    utterances = [UtteranceMeta(0.1, 0.3), UtteranceMeta(0.8, 1.1), UtteranceMeta(2.9, 3.2)]
    spec = FeatureSpec(frames_per_utterance=2, frame_size=16, frames_reference_only=True)
    visual = extract_frames(path, probe(path, settings), utterances, spec, settings)
    assert visual.present.all()
    assert (nearest_reference(visual.frame_times, references) < 1e-3).all(), visual.frame_times
    late = visual.frame_times - target_times(utterances, 2)
    assert (late >= -0.05 - 1e-6).all() and (late <= 1.4).all(), late


def test_reference_only_is_hashed_only_when_on():
    assert "frames_reference_only" not in SPEC.canonical_json()
    assert SPEC.model_copy(update={"frames_reference_only": True}).hash != SPEC.hash
