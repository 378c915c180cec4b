"""Faces reach the model service's response: boxes per sampled frame and the visual modality
masked with its reason where no face was found."""

from pathlib import Path

from services.model.serving.inference import build_response, model_fn, predict_fn
from services.model.testing import TINY_SPEC, build_tiny_checkpoint
from shared.contract.features.demo_media import make_face_clip
from shared.contract.features.pipeline import extract_features


def test_response_carries_faces_and_the_no_face_reason(tmp_path: Path):
    from PIL import Image
    from skimage import data

    spec = TINY_SPEC.model_copy(update={"face_detector": "haar", "frames_per_utterance": 2})
    served = model_fn(build_tiny_checkpoint(tmp_path / "checkpoint", spec=spec))
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    clip = make_face_clip(
        tmp_path / "face.mp4",
        tmp_path / "astronaut.png",
        duration=4.0,
        visible=(0.0, 2.0),
        box=(300, 60, 240),
    )
    bundle = extract_features(clip, spec, window_seconds=2.0)
    seen, empty = build_response(predict_fn(bundle, served)).utterances
    assert "visual" in seen.modalities_used and "visual" not in seen.modalities_masked
    assert len(seen.faces) == 2 and all(frame.used == 0 and len(frame.boxes) == 1 for frame in seen.faces)
    box = seen.faces[0].boxes[0]
    assert 0.47 < box.x < 0.85 and 0.17 < box.y < 0.84 and 0.5 < box.score <= 1.0
    assert "visual" not in empty.modalities_used and empty.modalities_masked["visual"] == "no_face"
    assert [frame.boxes for frame in empty.faces] == [[], []]
    assert all(frame.used is None for frame in empty.faces)
