"""Faces in the sampled frames: detection, one tracked face per utterance, crops for the model.

Two detectors, both without torch, so the preprocess worker runs them. ``haar``: OpenCV's
frontal-face Haar cascade (``haarcascade_frontalface_default.xml``, shipped inside the pinned
``opencv-python-headless`` wheel) scans a grayscale copy of each sampled frame whose long side is
``spec.face_detect_side`` pixels; its score is the cascade's last-stage confidence through a
logistic (0.5 at the stage threshold; comparable within a video, not a calibrated probability).
``mtcnn``: facenet-pytorch's MTCNN (``shared.contract.features.mtcnn``, weights from `make models`)
scans an RGB copy of that size; its score is O-Net's face probability. Boxes are stored normalised
to the frame (x, y, width, height in 0..1, clipped to it).

Per utterance the face followed is the most prominent one (largest area times score) in any of its
frames, tracked to its neighbouring frames by overlap; the other faces' boxes are kept. Its crop
is square, widened (narrowed, when negative) by ``spec.face_margin`` on each side, padded by edge
replication where it leaves the frame and resized to ``frame_size`` (area when shrinking, cubic
when enlarging: the resize ``services.model.training.data.faces`` applies to FER2013's faces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from shared.contract.features.spec import FeatureSpec

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# With ``face_fallback``, a frame where the default cascade finds nothing is scanned by these in
# turn: another frontal cascade (other training faces: tilted heads, tight crops) and the profile
# cascade, on the frame and on its mirror image (it is trained on faces turned one way).
FALLBACK_CASCADES = ("haarcascade_frontalface_alt2.xml", "haarcascade_profileface.xml")
# The files opencv-python-headless 4.14.0.94 ships: a different cascade would find different faces
# than the ones the benchmarks measured.
CASCADE_SHA256 = {
    HAAR_CASCADE: "0f7d4527844eb514d4a4948e822da90fbb16a34a0bbbbc6adc6498747a5aafb0",
    "haarcascade_frontalface_alt2.xml": "7b0c967d9abbdfbde025eb9c786947d151b6426040d07a8f9562ed8fd90724b4",
    "haarcascade_profileface.xml": "b39a4a3be45539db146a7fc1d3e761a292c196eb88421185e6a615b3055e612d",
}
# A face in the next frame continues the track when its box overlaps the previous one this much.
TRACK_MIN_IOU = 0.2
# FaceScanner re-checks faces only this long after the whole-frame scan that found them: longer
# gaps (between utterances far apart) are scanned whole.
RECHECK_MAX_SECONDS = 2.0


@dataclass(frozen=True)
class FrameFaces:
    """Faces found in one sampled frame."""

    boxes: np.ndarray  # [K, 4] float32: x, y, width, height normalised to the frame
    scores: np.ndarray  # [K] float32
    crops: np.ndarray  # [K, 3, S, S] uint8 RGB
    turned: bool = False  # found in a turned copy of the frame (MTCNN's rotated rescan)

    def __len__(self) -> int:
        return len(self.scores)


@lru_cache(maxsize=len(CASCADE_SHA256))
def _cascade(name: str = HAAR_CASCADE):
    import hashlib

    import cv2

    path = Path(cv2.data.haarcascades) / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != CASCADE_SHA256[name]:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {CASCADE_SHA256[name]}")
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"OpenCV's {name} cannot be loaded from {cv2.data.haarcascades}")
    return cascade


def _scan(gray: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(rects [K, 4] in gray's pixels, last-stage weights [K])``: the default cascade, then
    (``face_fallback``, only while nothing is found) the fallback cascades."""
    smallest = max(1, round(spec.face_min_size * min(gray.shape)))
    options = {
        "scaleFactor": spec.face_scale_factor,
        "minNeighbors": spec.face_min_neighbors,
        "minSize": (smallest, smallest),
        "outputRejectLevels": True,
    }
    scans = [(HAAR_CASCADE, False)]
    if spec.face_fallback:
        scans += [(FALLBACK_CASCADES[0], False), (FALLBACK_CASCADES[1], False), (FALLBACK_CASCADES[1], True)]
    width = gray.shape[1]
    for name, mirrored in scans:
        image = np.ascontiguousarray(gray[:, ::-1]) if mirrored else gray
        rects, _, weights = _cascade(name).detectMultiScale3(image, **options)
        if len(rects):
            rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
            if mirrored:
                rects[:, 0] = width - rects[:, 0] - rects[:, 2]
            return rects, np.asarray(weights, dtype=np.float64).reshape(-1)
    return np.zeros((0, 4)), np.zeros(0)


def _scan_mtcnn(
    rgb: np.ndarray, spec: FeatureSpec, models_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(rects [K, 4] in rgb's pixels, clipped to it; face probabilities [K]; found turned)``."""
    detector = _mtcnn(models_dir)
    height, width = rgb.shape[:2]
    smallest = max(1.0, spec.face_min_size * min(height, width))
    found = detector.detect(rgb, smallest, spec.face_mtcnn_thresholds, spec.face_mtcnn_factor)
    turned = False
    for angle in spec.face_mtcnn_rotations if not len(found) else ():
        found = _scan_rotated(detector, rgb, angle, smallest, spec)
        if len(found):
            turned = True
            break
    return *_rects(found, width, height), turned


def _mtcnn(models_dir: Path | None):
    from shared.contract.features.mtcnn import mtcnn
    from shared.settings import models_dir as default_models_dir

    return mtcnn(models_dir or default_models_dir())


def _rects(found: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's ``[K, 5]`` corner rows as ``(x, y, w, h)`` rects clipped to the image, and scores."""
    corners = np.clip(found[:, :4].astype(np.float64), 0, [width, height, width, height])
    rects = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
    keep = (rects[:, 2] > 0) & (rects[:, 3] > 0)
    return rects[keep], found[keep, 4].astype(np.float64)


def _scan_rotated(detector, rgb: np.ndarray, angle: float, smallest: float, spec: FeatureSpec) -> np.ndarray:
    """MTCNN on a copy of ``rgb`` turned ``angle`` degrees counter-clockwise about its centre (same
    size, edges replicated): ``[K, 5]`` rows x1, y1, x2, y2, probability in ``rgb``'s pixels, at or
    above ``face_mtcnn_rotated_threshold``. Each box keeps its size and moves to where its centre
    lies in the upright frame: the crop then frames the tilted face as FER2013's upright crops
    frame theirs."""
    import cv2

    height, width = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    turned = cv2.warpAffine(
        rgb, turn, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    thresholds = spec.face_mtcnn_thresholds[:2] + (spec.face_mtcnn_rotated_threshold,)
    found = detector.detect(turned, smallest, thresholds, spec.face_mtcnn_factor)
    if not len(found):
        return found
    back = cv2.invertAffineTransform(turn)
    centres = ((found[:, 0:2] + found[:, 2:4]) / 2) @ back[:, :2].T + back[:, 2]
    half = (found[:, 2:4] - found[:, 0:2]) / 2
    return np.concatenate([centres - half, centres + half, found[:, 4:5]], axis=1).astype(np.float32)


def _scanned_copy(frame: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The copy of a frame the detector reads: long side at most ``face_detect_side`` (RGB for
    MTCNN, grayscale for the cascades)."""
    import cv2

    height, width = frame.shape[:2]
    scale = min(1.0, spec.face_detect_side / max(height, width))
    scanned = frame if spec.face_detector == "mtcnn" else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        scanned = cv2.resize(scanned, size, interpolation=cv2.INTER_AREA)
    return scanned


def _frame_faces(
    frame: np.ndarray,
    scanned_shape: tuple[int, ...],
    rects: np.ndarray,
    scores: np.ndarray,
    spec: FeatureSpec,
    turned: bool = False,
) -> FrameFaces:
    """Rects in the scanned copy's pixels as a frame's faces: largest first, at most
    ``face_max_faces``, normalised, with their crops from the full frame."""
    size = spec.frame_size
    if len(rects) == 0:
        return FrameFaces(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 3, size, size), np.uint8)
        )
    order = np.argsort(-(rects[:, 2] * rects[:, 3]), kind="stable")[: spec.face_max_faces]
    scanned_height, scanned_width = scanned_shape[:2]
    boxes = rects[order] / np.array([scanned_width, scanned_height, scanned_width, scanned_height])
    crops = np.stack([crop_face(frame, box, spec) for box in boxes])
    return FrameFaces(boxes.astype(np.float32), scores[order].astype(np.float32), crops, turned)


def detect_faces(frame: np.ndarray, spec: FeatureSpec, models_dir: Path | None = None) -> FrameFaces:
    """Every face in one ``[H, W, 3]`` uint8 RGB frame, largest first, at most ``face_max_faces``.
    ``models_dir`` (MTCNN's weights): default ``settings.models_dir``."""
    scanned = _scanned_copy(frame, spec)
    turned = False
    if spec.face_detector == "mtcnn":
        rects, scores, turned = _scan_mtcnn(scanned, spec, models_dir)
    else:
        rects, weights = _scan(scanned, spec)
        scores = 1.0 / (1.0 + np.exp(-weights))
    return _frame_faces(frame, scanned.shape, rects, scores, spec, turned)


class FaceScanner:
    """The faces of one video's sampled frames, given in time order from one thread.

    With ``spec.face_scan_every`` N > 1 (MTCNN), the N - 1 frames after a whole-frame scan that
    found upright faces re-check those faces with O-Net alone (``MTCNN.recheck``), each from the
    boxes of that scan, so re-checks do not drift; when every box still holds a face, those are the
    frame's faces. Otherwise the whole frame is scanned, and so is every N-th frame, a frame more
    than ``RECHECK_MAX_SECONDS`` after the scan, and a frame after faces found only turned (the
    upright O-Net would confirm them at the upright threshold): a face that comes into view is
    missed for at most N - 1 sampled frames."""

    def __init__(self, spec: FeatureSpec, models_dir: Path | None = None):
        self.spec = spec
        self.models_dir = models_dir
        self._scanned: FrameFaces | None = None  # the last whole-frame scan's faces ...
        self._scanned_at = -np.inf  # ... and its frame's time
        self._rechecked = 0

    def scan(self, frame: np.ndarray, time: float) -> FrameFaces:
        """The faces in ``frame``, shown at ``time`` seconds (frames come in time order)."""
        anchor = self._scanned
        if (
            anchor is not None
            and len(anchor)
            and not anchor.turned
            and self._rechecked < self.spec.face_scan_every - 1
            and time - self._scanned_at <= RECHECK_MAX_SECONDS
        ):
            self._rechecked += 1
            faces = self._recheck(frame, anchor)
            if faces is not None:
                return faces
        self._scanned = detect_faces(frame, self.spec, self.models_dir)
        self._scanned_at, self._rechecked = time, 0
        return self._scanned

    def _recheck(self, frame: np.ndarray, anchor: FrameFaces) -> FrameFaces | None:
        scanned = _scanned_copy(frame, self.spec)
        height, width = scanned.shape[:2]
        corners = anchor.boxes.astype(np.float64) * [width, height, width, height]
        corners[:, 2:] += corners[:, :2]
        found = _mtcnn(self.models_dir).recheck(scanned, corners, self.spec.face_mtcnn_thresholds[2])
        rects, scores = _rects(found, width, height)
        # Each anchor box yields at most one face (suppression merges overlapping ones), so as
        # many faces as anchors means every face is still in its place.
        if len(rects) < len(anchor):
            return None
        return _frame_faces(frame, scanned.shape, rects, scores, self.spec)


def crop_face(frame: np.ndarray, box: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The square crop of a normalised box (with the spec's margin), ``[3, S, S]`` uint8."""
    import cv2

    height, width = frame.shape[:2]
    x, y, w, h = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    side = max(w, h) * (1.0 + 2.0 * spec.face_margin)
    left = math.floor(x + w / 2 - side / 2)
    top = math.floor(y + h / 2 - side / 2)
    side = max(1, round(side))
    pad = max(0, -left, -top, left + side - width, top + side - height)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        left, top = left + pad, top + pad
    patch = frame[top : top + side, left : left + side]
    size = spec.frame_size
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interpolation).transpose(2, 0, 1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter + 1e-9)


def track_face(frames: list[FrameFaces | None]) -> list[int | None]:
    """Per frame, the index of the followed face (None where it is not seen).

    The track starts at the most prominent face of the utterance (largest area times score) and
    moves frame by frame in both directions to the face that overlaps its last box most; a frame
    without such a face keeps the last box for the next comparison."""
    chosen: list[int | None] = [None] * len(frames)
    best, start = -1.0, None
    for position, faces in enumerate(frames):
        if faces is None or not len(faces):
            continue
        prominence = faces.boxes[:, 2] * faces.boxes[:, 3] * faces.scores
        index = int(np.argmax(prominence))
        if prominence[index] > best:
            best, start = float(prominence[index]), (position, index)
    if start is None:
        return chosen
    chosen[start[0]] = start[1]
    anchor = frames[start[0]].boxes[start[1]]
    for direction in (1, -1):
        last = anchor
        position = start[0] + direction
        while 0 <= position < len(frames):
            faces = frames[position]
            if faces is not None and len(faces):
                overlap = _iou(last, faces.boxes)
                index = int(np.argmax(overlap))
                if overlap[index] >= TRACK_MIN_IOU:
                    chosen[position] = index
                    last = faces.boxes[index]
            position += direction
    return chosen
