"""Faces in the sampled frames: a real photograph composited into a generated video is found in
the frames that show it, a faceless video masks the visual modality."""

from pathlib import Path

import numpy as np
import pytest

from shared.contract.features.demo_media import make_face_clip
from shared.contract.features.faces import FrameFaces, crop_face, detect_faces, track_face
from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import MODALITIES

VISUAL = MODALITIES.index("visual")
FACE_SPEC = FeatureSpec(frames_per_utterance=4, frame_size=48, face_detector="haar")
# The photograph enlarged to 240 px at (300, 60) in a 640x360 clip, shown from 2 s to 4 s.
LEFT, TOP, SIDE, WIDTH, HEIGHT = 300, 60, 240, 640, 360


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(clip, the photograph as shown in it): scikit-image's astronaut (Eileen Collins, NASA)."""
    from PIL import Image
    from skimage import data

    directory = tmp_path_factory.mktemp("faces")
    photo = Image.fromarray(data.astronaut())
    photo.save(directory / "astronaut.png")
    clip = make_face_clip(
        directory / "astronaut.mp4",
        directory / "astronaut.png",
        duration=6.0,
        visible=(2.0, 4.0),
        box=(LEFT, TOP, SIDE),
        size=(WIDTH, HEIGHT),
    )
    return clip, np.asarray(photo.resize((SIDE, SIDE), Image.Resampling.BICUBIC))


def test_photograph_found_in_the_frames_that_show_it(astronaut):
    clip, shown = astronaut
    bundle = extract_features(clip, FACE_SPEC, window_seconds=2.0)
    assert [u.visual_reason for u in bundle.utterances] == ["no_face", None, "no_face"]
    assert bundle.modality_mask[:, VISUAL].tolist() == [False, True, False]

    # The same face the detector finds in the photograph itself, placed where the clip shows it.
    alone = detect_faces(shown, FACE_SPEC)
    assert len(alone) == 1
    x, y, w, h = alone.boxes[0]
    expected = np.array(
        [(LEFT + x * SIDE) / WIDTH, (TOP + y * SIDE) / HEIGHT, w * SIDE / WIDTH, h * SIDE / HEIGHT]
    )
    frames = bundle.utterances[1].faces
    assert len(frames) == 4
    for frame in frames:
        assert 2.0 <= frame["time"] <= 4.0 and frame["used"] == 0 and len(frame["boxes"]) == 1
        np.testing.assert_allclose(frame["boxes"][0], expected, atol=0.02)
        assert 0.5 < frame["scores"][0] <= 1.0
    # a sensible face box: inside the photograph, a face-sized part of it, square in pixels
    box = np.array(frames[0]["boxes"][0]) * [WIDTH, HEIGHT, WIDTH, HEIGHT]
    assert (
        box[0] >= LEFT and box[0] + box[2] <= LEFT + SIDE and box[1] >= TOP and box[1] + box[3] <= TOP + SIDE
    )
    assert 0.15 * SIDE < box[2] < 0.6 * SIDE and abs(box[2] - box[3]) <= 2

    crops = bundle.frames[1]
    assert crops.shape == (4, 3, 48, 48) and crops.dtype == np.uint8
    assert crops.std() > 20  # a face, not a flat background
    assert not bundle.frames[0].any() and not bundle.frames[2].any()
    for utterance in (bundle.utterances[0], bundle.utterances[2]):
        assert all(frame["boxes"] == [] and frame["used"] is None for frame in utterance.faces)


def test_faceless_video_masks_visual(media, settings):
    bundle = extract_features(media.mp4, FACE_SPEC, window_seconds=1.0, settings=settings)
    assert {u.visual_reason for u in bundle.utterances} == {"no_face"}
    assert not bundle.modality_mask[:, VISUAL].any() and not bundle.frames.any()
    assert all(len(u.faces) == 4 for u in bundle.utterances)


def test_audio_only_media_has_no_video_reason(media, settings):
    bundle = extract_features(media.audio_only, FACE_SPEC, window_seconds=1.0, settings=settings)
    assert {u.visual_reason for u in bundle.utterances} == {"no_video"}
    assert all(u.faces == () for u in bundle.utterances)


def test_bundle_keeps_the_faces(astronaut, tmp_path):
    from shared.contract.bundle import FeatureBundle

    bundle = extract_features(astronaut[0], FACE_SPEC, window_seconds=2.0)
    path = tmp_path / "bundle.safetensors"
    bundle.save(path)
    loaded = FeatureBundle.load(path, expected_spec_hash=FACE_SPEC.hash)
    assert [u.faces for u in loaded.utterances] == [u.faces for u in bundle.utterances]
    assert [u.visual_reason for u in loaded.utterances] == ["no_face", None, "no_face"]
    # Thumbnails are the worker's to store: never serialised for the model.
    assert loaded.thumbnails is None


def test_thumbnail_is_the_middle_face_records_frame(astronaut):
    import io

    from PIL import Image

    clip, shown = astronaut
    bundle = extract_features(clip, FACE_SPEC, window_seconds=2.0)
    assert bundle.thumbnails is not None and len(bundle.thumbnails) == 3
    images = [np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")) for jpeg in bundle.thumbnails]
    # the 640x360 frame at 320x180: the frame itself, not a crop
    assert all(image.shape == (180, 320, 3) for image in images)
    # The photograph is in the middle utterance's thumbnail where the clip shows it, halved; the
    # others show the background there.
    half = np.asarray(Image.fromarray(shown).resize((SIDE // 2, SIDE // 2), Image.Resampling.BOX)).astype(
        float
    )
    region = (slice(TOP // 2, (TOP + SIDE) // 2), slice(LEFT // 2, (LEFT + SIDE) // 2))
    assert np.abs(images[1][region].astype(float) - half).mean() < 12
    assert np.abs(images[0][region].astype(float) - half).mean() > 30
    frame = bundle.utterances[1].faces[len(bundle.utterances[1].faces) // 2]
    assert frame["used"] == 0 and 2.0 <= frame["time"] <= 4.0


def test_no_thumbnails_without_a_detector(astronaut):
    spec = FACE_SPEC.model_copy(update={"face_detector": "none"})
    assert extract_features(astronaut[0], spec, window_seconds=2.0).thumbnails is None


def _faces(*boxes: tuple[float, float, float, float], score: float = 0.9) -> FrameFaces:
    count = len(boxes)
    return FrameFaces(
        np.array(boxes, np.float32).reshape(count, 4),
        np.full(count, score, np.float32),
        np.zeros((count, 3, 8, 8), np.uint8),
    )


def test_track_follows_the_most_prominent_face():
    big, small = (0.5, 0.2, 0.3, 0.5), (0.05, 0.1, 0.1, 0.15)
    moved = (0.52, 0.22, 0.3, 0.5)
    frames = [_faces(small), _faces(small, big), None, _faces(moved, small), _faces()]
    # frame 0: only the small face, which does not overlap the tracked one
    assert track_face(frames) == [None, 1, None, 0, None]
    assert track_face([None, _faces()]) == [None, None]


def test_crop_at_the_frame_edge_is_padded():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :20] = 200
    crop = crop_face(
        frame, np.array([0.0, 0.0, 0.2, 0.4]), FACE_SPEC.model_copy(update={"face_margin": 0.25})
    )
    assert crop.shape == (3, 48, 48)
    assert crop[:, :, 0].min() == 200  # the replicated edge, not black


def test_spec_hash_without_detector_is_unchanged():
    """The face fields shape nothing without a detector: older specs keep their hashes."""
    assert FeatureSpec().hash == "f6ca285a22a4a9bf"
    assert FACE_SPEC.hash != FACE_SPEC.model_copy(update={"face_margin": 0.1}).hash


def test_fallback_cascades_find_a_turned_face_and_no_cat():
    """scikit-image's cameraman (head turned, Haar's frontal default misses him) is found by the
    fallback cascades, at mirrored places in the mirrored photograph; its cat and coffee cup are
    no faces either way."""
    from skimage import data

    def rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image

    fallback = FACE_SPEC.model_copy(update={"face_fallback": True})
    camera = rgb(data.camera())
    assert len(detect_faces(camera, FACE_SPEC)) == 0
    found = detect_faces(camera, fallback)
    mirrored = detect_faces(np.ascontiguousarray(camera[:, ::-1]), fallback)
    assert len(found) == 1 and len(mirrored) == 1
    x, y, w, h = found.boxes[0]
    assert 0.25 < x < 0.45 and 0.1 < y < 0.3 and 0.15 < w < 0.3  # his head, upper middle of the picture
    np.testing.assert_allclose(mirrored.boxes[0], [1 - x - w, y, w, h], atol=0.01)
    assert found.crops.shape == (1, 3, 48, 48)
    for picture in (data.chelsea(), data.coffee()):
        assert len(detect_faces(rgb(picture), fallback)) == 0


def test_fallback_spec_hash_only_changes_when_on():
    assert FACE_SPEC.model_copy(update={"face_fallback": False}).hash == FACE_SPEC.hash
    assert FACE_SPEC.model_copy(update={"face_fallback": True}).hash != FACE_SPEC.hash


def test_faceless_video_masks_visual_with_fallback(media, settings):
    spec = FACE_SPEC.model_copy(update={"face_fallback": True})
    bundle = extract_features(media.mp4, spec, window_seconds=1.0, settings=settings)
    assert {u.visual_reason for u in bundle.utterances} == {"no_face"}
