"""The numpy MTCNN against the torch networks and detect_face it reproduces, and in the pipeline.

The torch side is facenet-pytorch 2.6.0's ``PNet``/``RNet``/``ONet`` and ``detect_face`` written out
here (facenet_pytorch itself imports torchvision, which this environment cannot install; its
``batched_nms`` is torchvision's greedy IoU suppression, written in torch below). Tests that need the
installed weights (`make models`) or torch are skipped with the reason where they are absent (the
worker image has no torch; the development environment has both).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.contract.features.demo_media import make_face_clip
from shared.contract.features.faces import detect_faces
from shared.contract.features.mtcnn import MTCNN, MTCNNMissing, area_resize
from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import MTCNN_ROTATION, FeatureSpec
from shared.contract.labels import MODALITIES
from shared.settings import Settings

VISUAL = MODALITIES.index("visual")
SPEC = FeatureSpec(frames_per_utterance=4, frame_size=48, face_detector="mtcnn")
# The photograph enlarged to 240 px at (300, 60) in a 640x360 clip, shown from 2 s to 4 s.
LEFT, TOP, SIDE, WIDTH, HEIGHT = 300, 60, 240, 640, 360


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch checks the numpy MTCNN; the worker has none")


def torch_nets(torch):
    """facenet-pytorch's three networks (models/mtcnn.py), without their weight loading."""
    nn = torch.nn

    class PNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)

    class RNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
            x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)

    class ONet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2 = nn.Linear(256, 2), nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
            x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
            return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)

    return {"pnet": PNet().eval(), "rnet": RNet().eval(), "onet": ONet().eval()}


def write_state_dicts(torch, nets, folder: Path) -> None:
    # PReLU slopes of 0.25 everywhere would hide a slope applied to the wrong channel.
    generator = torch.Generator().manual_seed(0)
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            if "prelu" in key:
                value.copy_(torch.rand(value.shape, generator=generator) - 0.5)
        torch.save(net.state_dict(), folder / f"{name}.pt")


def test_converted_networks_match_torch(torch, tmp_path):
    """Random-weight networks saved as facenet-pytorch saves them, converted as `make models`
    converts them: the numpy forward passes give torch's outputs."""
    from services.model.pretrained.mtcnn import convert_mtcnn

    nets = torch_nets(torch)
    write_state_dicts(torch, nets, tmp_path)
    convert_mtcnn(tmp_path, tmp_path / "mtcnn.safetensors")
    numpy_nets = MTCNN.load(tmp_path / "mtcnn.safetensors")
    rng = np.random.default_rng(0)
    for name, shape in (("pnet", (2, 37, 53, 3)), ("rnet", (5, 24, 24, 3)), ("onet", (5, 48, 48, 3))):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.no_grad():
            expected = nets[name](torch.from_numpy(x).permute(0, 3, 1, 2))
        regression, probability = getattr(numpy_nets, name)(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))
        if name == "pnet":
            np.testing.assert_allclose(regression, expected[0].permute(0, 2, 3, 1).numpy(), atol=1e-4)
            np.testing.assert_allclose(probability, expected[1][:, 1].numpy(), atol=1e-5)
        else:
            np.testing.assert_allclose(regression, expected[0].numpy(), atol=1e-4)
            np.testing.assert_allclose(probability, expected[-1][:, 1].numpy(), atol=1e-5)


def test_converter_refuses_other_networks(torch, tmp_path):
    from services.model.pretrained.mtcnn import convert_mtcnn

    nets = torch_nets(torch)
    nets["rnet"].dense4 = torch.nn.Linear(576, 64)
    write_state_dicts(torch, nets, tmp_path)
    with pytest.raises(ValueError, match="rnet.pt is not facenet-pytorch's RNET"):
        convert_mtcnn(tmp_path, tmp_path / "mtcnn.safetensors")


def test_area_resize_is_torchs_area_interpolation(torch):
    image = np.random.default_rng(1).uniform(0, 255, (37, 53, 3)).astype(np.float32)
    for height, width in ((24, 24), (48, 48), (12, 20), (50, 70)):
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None], size=(height, width), mode="area"
        )[0].permute(1, 2, 0)
        np.testing.assert_allclose(area_resize(image, height, width), expected.numpy(), atol=1e-3)


def torch_detect_face(torch, image: np.ndarray, minsize, nets, threshold, factor) -> np.ndarray:
    """facenet-pytorch 2.6.0's ``detect_face`` for one image (utils/detect_face.py), landmarks left
    out, torchvision's ``batched_nms`` as greedy IoU suppression."""
    interpolate = torch.nn.functional.interpolate

    def nms(boxes, scores, threshold):
        order, keep = torch.argsort(scores, descending=True), []
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        while len(order):
            i, order = order[0], order[1:]
            keep.append(int(i))
            w = (
                torch.minimum(boxes[i, 2], boxes[order, 2]) - torch.maximum(boxes[i, 0], boxes[order, 0])
            ).clamp(min=0)
            h = (
                torch.minimum(boxes[i, 3], boxes[order, 3]) - torch.maximum(boxes[i, 1], boxes[order, 1])
            ).clamp(min=0)
            inter = w * h
            order = order[inter / (area[i] + area[order] - inter) <= threshold]
        return torch.as_tensor(keep, dtype=torch.long)

    def nms_min(boxes, scores, threshold):
        x1, y1, x2, y2 = (boxes[:, k].numpy().copy() for k in range(4))
        area = (x2 - x1 + 1) * (y2 - y1 + 1)
        order, keep = np.argsort(scores.numpy()), []
        while order.size:
            i = order[-1]
            keep.append(i)
            rest = order[:-1]
            w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
            h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
            order = rest[w * h / np.minimum(area[i], area[rest]) <= threshold]
        return torch.as_tensor(keep, dtype=torch.long)

    def bbreg(box, reg):
        w, h = box[:, 2] - box[:, 0] + 1, box[:, 3] - box[:, 1] + 1
        box[:, :4] = torch.stack(
            [
                box[:, 0] + reg[:, 0] * w,
                box[:, 1] + reg[:, 1] * h,
                box[:, 2] + reg[:, 2] * w,
                box[:, 3] + reg[:, 3] * h,
            ]
        ).permute(1, 0)
        return box

    def rerec(box):
        h, w = box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]
        side = torch.max(w, h)
        box[:, 0] = box[:, 0] + w * 0.5 - side * 0.5
        box[:, 1] = box[:, 1] + h * 0.5 - side * 0.5
        box[:, 2:4] = box[:, :2] + side.repeat(2, 1).permute(1, 0)
        return box

    def crops(imgs, boxes, size, w, h):
        b = boxes.trunc().int().numpy()
        x, y, ex, ey = (
            np.maximum(b[:, 0], 1),
            np.maximum(b[:, 1], 1),
            np.minimum(b[:, 2], w),
            np.minimum(b[:, 3], h),
        )
        out = [
            interpolate(imgs[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]], size=(size, size), mode="area")
            for k in range(len(y))
        ]
        return (torch.cat(out) - 127.5) * 0.0078125

    imgs = torch.as_tensor(image.copy())[None].permute(0, 3, 1, 2).float()
    h, w = imgs.shape[2:4]
    m = 12.0 / minsize
    minl, scale, scales = min(h, w) * m, m, []
    while minl >= 12:
        scales.append(scale)
        scale, minl = scale * factor, minl * factor
    boxes = []
    with torch.no_grad():
        for scale in scales:
            data = (
                interpolate(imgs, size=(int(h * scale + 1), int(w * scale + 1)), mode="area") - 127.5
            ) * 0.0078125
            reg, probs = nets["pnet"](data)
            reg, probs = reg.permute(1, 0, 2, 3), probs[:, 1]
            mask = probs >= threshold[0]
            inds = mask.nonzero()
            bb = inds[:, 1:].type(reg.dtype).flip(1)
            q1, q2 = ((2 * bb + 1) / scale).floor(), ((2 * bb + 12) / scale).floor()
            found = torch.cat([q1, q2, probs[mask].unsqueeze(1), reg[:, mask].permute(1, 0)], dim=1)
            boxes.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        boxes = torch.cat(boxes)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack(
            [boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
             boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]]
        ).permute(1, 0)  # fmt: skip
        boxes = rerec(boxes)
        reg, probs = nets["rnet"](crops(imgs, boxes, 24, w, h))
        score = probs[:, 1]
        keep = score > threshold[1]
        boxes, reg = torch.cat((boxes[keep, :4], score[keep].unsqueeze(1)), dim=1), reg[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = rerec(bbreg(boxes[pick], reg[pick]))
        reg, _, probs = nets["onet"](crops(imgs, boxes, 48, w, h))
        score = probs[:, 1]
        keep = score > threshold[2]
        boxes = bbreg(torch.cat((boxes[keep, :4], score[keep].unsqueeze(1)), dim=1), reg[keep])
        return boxes[nms_min(boxes[:, :4], boxes[:, 4], 0.7)].numpy()


def installed_torch_nets(torch, mtcnn_detector: MTCNN):
    nets = torch_nets(torch)
    for name, net in nets.items():
        state = {}
        for key, value in net.state_dict().items():
            stored = mtcnn_detector.weights[f"{name}.{key}"]
            if value.ndim == 4:  # back from [O, k*k*C]
                k, c = value.shape[2], value.shape[1]
                stored = stored.reshape(-1, k, k, c).transpose(0, 3, 1, 2)
            elif value.ndim == 2:
                stored = stored.T
            state[key] = torch.from_numpy(np.ascontiguousarray(stored))
        net.load_state_dict(state)
    return nets


@pytest.fixture(scope="module")
def photograph() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def test_boxes_match_facenet_pytorchs_detect_face(torch, mtcnn_detector, photograph):
    """The installed weights on a real photograph (and the clip's 640x360 frame): the same faces,
    boxes within a pixel and probabilities within 1e-4 of the torch pipeline's."""
    frame = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    import cv2

    frame[TOP : TOP + SIDE, LEFT : LEFT + SIDE] = cv2.resize(
        photograph, (SIDE, SIDE), interpolation=cv2.INTER_AREA
    )
    nets = installed_torch_nets(torch, mtcnn_detector)
    for image, minsize in ((photograph, 20), (frame, 36)):
        expected = torch_detect_face(torch, image, minsize, nets, (0.6, 0.7, 0.7), 0.709)
        got = mtcnn_detector.detect(image, minsize)
        assert len(got) == len(expected) >= 1
        np.testing.assert_allclose(got[:, :4], expected[:, :4], atol=1.0)
        np.testing.assert_allclose(got[:, 4], expected[:, 4], atol=1e-4)


def test_the_astronauts_face_in_the_photograph(mtcnn_detector, photograph):
    """One face, on Eileen Collins' face (the photograph's face is about x 170-270, y 50-180)."""
    [(x1, y1, x2, y2, probability)] = mtcnn_detector.detect(photograph, 20)
    assert probability > 0.99
    assert 150 < x1 < 200 and 240 < x2 < 290 and 40 < y1 < 90 and 150 < y2 < 200


@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory, photograph) -> Path:
    from PIL import Image

    directory = tmp_path_factory.mktemp("mtcnn")
    Image.fromarray(photograph).save(directory / "astronaut.png")
    return make_face_clip(
        directory / "astronaut.mp4",
        directory / "astronaut.png",
        duration=6.0,
        visible=(2.0, 4.0),
        box=(LEFT, TOP, SIDE),
        size=(WIDTH, HEIGHT),
    )


def test_photograph_found_in_the_frames_that_show_it(mtcnn_detector, astronaut_clip, photograph):
    from PIL import Image

    bundle = extract_features(astronaut_clip, SPEC, window_seconds=2.0)
    assert [u.visual_reason for u in bundle.utterances] == ["no_face", None, "no_face"]
    assert bundle.modality_mask[:, VISUAL].tolist() == [False, True, False]
    shown = np.asarray(Image.fromarray(photograph).resize((SIDE, SIDE), Image.Resampling.BICUBIC))
    alone = detect_faces(shown, SPEC)
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
        assert frame["scores"][0] > 0.9
    crops = bundle.frames[1]
    assert crops.shape == (4, 3, 48, 48) and crops.std() > 20
    assert not bundle.frames[0].any() and not bundle.frames[2].any()


def test_faceless_video_masks_visual(mtcnn_detector, media, settings):
    bundle = extract_features(media.mp4, SPEC, window_seconds=1.0, settings=settings)
    assert {u.visual_reason for u in bundle.utterances} == {"no_face"}
    assert not bundle.modality_mask[:, VISUAL].any() and not bundle.frames.any()
    assert all(len(u.faces) == 4 for u in bundle.utterances)


def test_missing_weights_fail_before_decoding(media, tmp_path, monkeypatch):
    import shared.contract.features.pipeline as pipeline

    def decoded(*args, **kwargs):
        raise AssertionError("decoded before the face detector was loaded")

    monkeypatch.setattr(pipeline, "load_audio", decoded)
    monkeypatch.setattr(pipeline, "extract_frames", decoded)
    settings = Settings(_env_file=None, models_dir=tmp_path)
    for segmentation in ("speech", "windows"):
        with pytest.raises(MTCNNMissing, match="run `make models`") as raised:
            extract_features(
                media.mp4, SPEC, window_seconds=1.0, segmentation=segmentation, settings=settings
            )
        assert raised.value.model == "mtcnn"


def test_only_the_chosen_detectors_settings_are_hashed():
    haar = FeatureSpec(face_detector="haar")
    assert haar.model_copy(update={"face_mtcnn_factor": 0.5}).hash == haar.hash
    assert SPEC.model_copy(update={"face_min_neighbors": 9}).hash == SPEC.hash
    assert SPEC.model_copy(update={"face_mtcnn_thresholds": (0.5, 0.7, 0.7)}).hash != SPEC.hash
    assert SPEC.model_copy(update={"face_margin": 0.1}).hash != SPEC.hash
    with pytest.raises(ValueError, match="face_fallback"):
        FeatureSpec(face_detector="mtcnn", face_fallback=True)
    with pytest.raises(ValueError, match="probabilities"):
        FeatureSpec(face_detector="mtcnn", face_mtcnn_thresholds=(0.6, 1.0, 0.7))


# The default checkpoint's MTCNN settings with the rotated rescan.
TURNED_SPEC = SPEC.model_copy(
    update={
        "face_detect_side": 320,
        "face_mtcnn_thresholds": (0.4, 0.4, 0.4),
        "face_mtcnn_rotations": (20.0, -20.0),
        "face_mtcnn_rotated_threshold": 0.9,
    }
)
# The astronaut's face, gray (as FER2013's faces are), enlarged to 200 px at (300, 80).
FACE_LEFT, FACE_TOP, FACE_SIDE = 300, 80, 200


@pytest.fixture(scope="module")
def tilted_face_clip(tmp_path_factory, photograph) -> Path:
    """The face turned 65 degrees clockwise, shown from 1 s to 3 s of a 4 s clip: upright, MTCNN at
    the default's thresholds finds nothing in it."""
    from PIL import Image

    directory = tmp_path_factory.mktemp("tilted")
    face = Image.fromarray(photograph[30:210, 130:310]).convert("L").convert("RGB")
    face.rotate(-65, resample=Image.Resampling.BICUBIC).save(directory / "face.png")
    return make_face_clip(
        directory / "face.mp4",
        directory / "face.png",
        duration=4.0,
        visible=(1.0, 3.0),
        box=(FACE_LEFT, FACE_TOP, FACE_SIDE),
        size=(WIDTH, HEIGHT),
    )


def test_tilted_head_found_by_the_rotated_rescan(mtcnn_detector, tilted_face_clip):
    upright = TURNED_SPEC.model_copy(update={"face_mtcnn_rotations": ()})
    missed = extract_features(tilted_face_clip, upright, window_seconds=1.0)
    assert [u.visual_reason for u in missed.utterances] == ["no_face"] * 4

    bundle = extract_features(tilted_face_clip, TURNED_SPEC, window_seconds=1.0)
    assert bundle.modality_mask[:, VISUAL].tolist() == [False, True, True, False]
    for utterance in bundle.utterances[1:3]:
        assert len(utterance.faces) == 4
        for frame in utterance.faces:
            [(x, y, w, h)] = frame["boxes"]
            # the box keeps its size and sits on the face in the upright frame
            cx, cy = (x + w / 2) * WIDTH, (y + h / 2) * HEIGHT
            assert FACE_LEFT + 40 < cx < FACE_LEFT + FACE_SIDE - 40
            assert FACE_TOP + 40 < cy < FACE_TOP + FACE_SIDE - 40
            assert 0.35 < w * WIDTH / FACE_SIDE < 0.75 and frame["scores"][0] >= 0.9
    assert bundle.frames[1].std() > 20 and not bundle.frames[0].any()


def test_faceless_video_stays_faceless_with_the_rotated_rescan(mtcnn_detector, media, settings):
    bundle = extract_features(media.mp4, TURNED_SPEC, window_seconds=1.0, settings=settings)
    assert {u.visual_reason for u in bundle.utterances} == {"no_face"}
    assert not bundle.modality_mask[:, VISUAL].any() and not bundle.frames.any()


def test_rotated_rescan_settings():
    """Off (no angles), the rescan's fields leave an MTCNN spec's hash as it was before they
    existed; the command line writes the angles comma-separated."""
    assert SPEC.model_copy(update={"face_mtcnn_rotated_threshold": 0.5}).hash == SPEC.hash
    assert json.loads(SPEC.canonical_json()).keys().isdisjoint(MTCNN_ROTATION)
    assert TURNED_SPEC.hash != TURNED_SPEC.model_copy(update={"face_mtcnn_rotations": ()}).hash
    assert TURNED_SPEC.hash != TURNED_SPEC.model_copy(update={"face_mtcnn_rotated_threshold": 0.8}).hash
    assert FeatureSpec(face_detector="mtcnn", face_mtcnn_rotations="20, -20").face_mtcnn_rotations == (
        20.0,
        -20.0,
    )
    assert FeatureSpec(face_detector="mtcnn", face_mtcnn_rotations="").face_mtcnn_rotations == ()
    haar = FeatureSpec(face_detector="haar")
    assert haar.model_copy(update={"face_mtcnn_rotations": (20.0,)}).hash == haar.hash
    for angles in ((0.0,), (120.0,), (10.0,) * 9):
        with pytest.raises(ValueError, match="face_mtcnn_rotations"):
            FeatureSpec(face_detector="mtcnn", face_mtcnn_rotations=angles)


def _shown_at(photograph: np.ndarray, left: int, top: int) -> np.ndarray:
    """A 640x360 frame with the photograph at 200 px, its top-left corner at (left, top)."""
    import cv2

    frame = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    frame[top : top + 200, left : left + 200] = cv2.resize(
        photograph, (200, 200), interpolation=cv2.INTER_AREA
    )
    return frame


def test_recheck_confirms_a_face_that_stays_and_drops_one_that_left(mtcnn_detector, photograph):
    frame = _shown_at(photograph, 300, 80)
    found = mtcnn_detector.detect(frame, 36)
    assert len(found) == 1
    again = mtcnn_detector.recheck(frame, found[:, :4], 0.4)
    assert len(again) == 1 and again[0, 4] > 0.9
    np.testing.assert_allclose(again[0, :4], found[0, :4], atol=6)
    # the same box over background, once the face has gone
    assert len(mtcnn_detector.recheck(np.full_like(frame, 40), found[:, :4], 0.4)) == 0


def counting(monkeypatch, name: str) -> list:
    calls: list = []
    method = getattr(MTCNN, name)

    def counted(self, *args, **kwargs):
        calls.append(name)
        return method(self, *args, **kwargs)

    monkeypatch.setattr(MTCNN, name, counted)
    return calls


def test_scanner_rechecks_faces_and_scans_whole_frames_when_they_move(
    mtcnn_detector, photograph, monkeypatch
):
    from shared.contract.features.faces import FaceScanner

    spec = SPEC.model_copy(update={"face_scan_every": 3})
    calls = counting(monkeypatch, "detect")
    rechecks = counting(monkeypatch, "recheck")
    scanner = FaceScanner(spec)
    still = _shown_at(photograph, 300, 80)
    moved = _shown_at(photograph, 20, 150)
    sequence = [still, still, still, still, moved, moved, np.full_like(still, 40), still]
    faces = [scanner.scan(frame, 0.5 * k) for k, frame in enumerate(sequence)]
    # re-checks: frames 2, 3 (then the 4th is scanned whole: 3 frames per whole scan), 5 (nothing
    # where the face was: scanned whole), 6 and 7 (nothing there: scanned whole); frame 8 follows a
    # frame without faces: scanned whole
    assert len(calls) == 5 and len(rechecks) == 5
    assert [len(f) for f in faces] == [1, 1, 1, 1, 1, 1, 0, 1]
    for f in faces[:4] + faces[7:]:
        np.testing.assert_allclose(f.boxes[0], faces[0].boxes[0], atol=0.02)
    assert faces[4].boxes[0][0] < 0.2 and faces[5].boxes[0][0] < 0.2
    # one frame per whole scan: every frame is scanned whole, as before the re-check existed
    plain = FaceScanner(SPEC)
    before = len(calls)
    assert [len(plain.scan(frame, 0.5 * k)) for k, frame in enumerate(sequence)] == [1, 1, 1, 1, 1, 1, 0, 1]
    assert len(calls) - before == len(sequence) and len(rechecks) == 5


def test_scanner_rescans_after_a_gap_and_after_turned_faces(mtcnn_detector, photograph, monkeypatch):
    from shared.contract.features.faces import RECHECK_MAX_SECONDS, FaceScanner, FrameFaces

    spec = SPEC.model_copy(update={"face_scan_every": 4})
    calls = counting(monkeypatch, "detect")
    rechecks = counting(monkeypatch, "recheck")
    still = _shown_at(photograph, 300, 80)
    scanner = FaceScanner(spec)
    scanner.scan(still, 10.0)
    scanner.scan(still, 10.0 + RECHECK_MAX_SECONDS)  # re-checked
    scanner.scan(still, 10.1 + RECHECK_MAX_SECONDS)  # too long after the whole-frame scan
    assert len(calls) == 2 and len(rechecks) == 1
    # faces found only in a turned copy are not confirmed by the upright O-Net
    turned = FaceScanner(spec)
    found = turned.scan(still, 0.0)
    turned._scanned = FrameFaces(found.boxes, found.scores, found.crops, turned=True)
    assert len(turned.scan(still, 0.5)) == 1
    assert len(calls) == 4 and len(rechecks) == 1


def test_tracking_settings():
    """Off (1), the re-check leaves an MTCNN spec's hash as it was; it needs MTCNN."""
    assert "face_scan_every" not in json.loads(SPEC.canonical_json())
    assert SPEC.model_copy(update={"face_scan_every": 4}).hash != SPEC.hash
    with pytest.raises(ValueError, match="face_scan_every"):
        FeatureSpec(face_detector="haar", face_scan_every=4)
    with pytest.raises(ValueError, match="face_scan_every"):
        FeatureSpec(face_scan_every=0, face_detector="mtcnn")


def test_rechecked_faces_in_the_pipeline(mtcnn_detector, astronaut_clip, monkeypatch):
    """With the re-check the clip's face is found in the same frames, boxes within 2 % of the
    frame of the whole-frame scans, with one whole-frame scan for its four frames."""
    plain = extract_features(astronaut_clip, SPEC, window_seconds=2.0)
    calls = counting(monkeypatch, "detect")
    rechecks = counting(monkeypatch, "recheck")
    bundle = extract_features(
        astronaut_clip, SPEC.model_copy(update={"face_scan_every": 4}), window_seconds=2.0
    )
    # 12 sampled frames: 4 faceless, 4 with the face (one whole scan, three re-checks), then the
    # first faceless frame is the 4th after the scan and the rest follow a frame without faces
    assert len(calls) == 9 and len(rechecks) == 3
    assert [u.visual_reason for u in bundle.utterances] == ["no_face", None, "no_face"]
    for ours, theirs in zip(bundle.utterances[1].faces, plain.utterances[1].faces, strict=True):
        assert ours["time"] == theirs["time"] and ours["used"] == 0
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=0.02)
