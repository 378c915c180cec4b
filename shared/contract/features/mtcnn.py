"""The MTCNN face detector without torch: facenet-pytorch's P-Net, R-Net and O-Net in numpy.

MTCNN (Zhang et al., 2016) is a cascade of three small convolutional networks: P-Net runs fully
convolutionally over an image pyramid and proposes 12x12 windows (stride 2) with a face probability
and a box regression; R-Net rescores and refines each proposal resampled to 24x24; O-Net does the
same at 48x48. Between the stages, non-maximum suppression merges overlapping boxes and the boxes
are made square around their centre. This module reproduces facenet-pytorch 2.6.0's
``detect_face`` step by step (its pyramid, area resampling, thresholds, NMS variants and box
arithmetic), so the same weights find the same boxes; `make models` installs those weights
converted to safetensors (``<models_dir>/mtcnn/mtcnn.safetensors``) because the preprocess worker
carries no torch.

The convolutions are im2col (the shifted slices stacked) and one float32 matrix product each, on
channels-first ``[C, N, H, W]`` arrays: each shifted slice then copies whole image rows, where
channels-last copied three floats at a time in the first layers, which cost more than the products.
BLAS is held to one thread, as the worker scans in one thread beside ffmpeg's decode.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from shared.contract.features.installed import ModelMissing

MODEL_NAME = "mtcnn"
WEIGHTS_FILE = "mtcnn.safetensors"
# facenet-pytorch's normalisation of 0..255 pixels: (x - 127.5) / 128.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125
PNET_CELL, PNET_STRIDE = 12, 2
# Suppression thresholds of detect_face: within one pyramid scale, across scales, after R-Net
# (intersection over union), after O-Net (intersection over the smaller box).
NMS_SCALE, NMS_PYRAMID, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7


class MTCNNMissing(ModelMissing):
    """The MTCNN weights are not installed."""


@lru_cache(maxsize=256)
def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` averaging weights of torch's ``interpolate(mode="area")`` (adaptive
    average pooling: output i averages inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1)."""
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[H, W, C]`` -> ``[height, width, C]`` float32, as torch's area interpolation."""
    rows = _area_matrix(image.shape[0], height)
    columns = _area_matrix(image.shape[1], width)
    image = np.asarray(image, dtype=np.float32)
    size_in, width_in, channels = image.shape
    # Two plain matrix products (rows, then columns per output row): einsum's path search per call
    # cost more than the arithmetic on R-Net's and O-Net's small patches.
    out = (rows @ image.reshape(size_in, width_in * channels)).reshape(height, width_in, channels)
    return np.matmul(columns, out)


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, kernel: int) -> np.ndarray:
    """Valid convolution, stride 1: ``[C, N, H, W]`` -> ``[O, N, H-k+1, W-k+1]``; ``weight`` is
    ``[O, k*k*C]`` in (row, column, channel) order."""
    channels, n, h, w = x.shape
    oh, ow = h - kernel + 1, w - kernel + 1
    if kernel == 1:
        columns = x.reshape(channels, -1)
    else:
        columns = np.empty((kernel * kernel, channels, n, oh, ow), dtype=np.float32)
        for i in range(kernel):
            for j in range(kernel):
                columns[i * kernel + j] = x[:, :, i : i + oh, j : j + ow]
        columns = columns.reshape(kernel * kernel * channels, -1)
    out = weight @ columns
    out += bias[:, None]
    return out.reshape(-1, n, oh, ow)


def _prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """In place (``x`` is always a fresh layer output): max(x, 0) + slope * min(x, 0)."""
    negative = np.minimum(x, 0.0)
    negative *= slope
    np.maximum(x, 0.0, out=x)
    x += negative
    return x


def _pool(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Max pooling over the last two axes with torch's ``ceil_mode=True`` (the last window may
    overhang; no padding)."""
    c, n, h, w = x.shape
    oh = math.ceil((h - kernel) / stride) + 1
    ow = math.ceil((w - kernel) / stride) + 1
    ph, pw = (oh - 1) * stride + kernel, (ow - 1) * stride + kernel
    if ph > h or pw > w:
        padded = np.full((c, n, ph, pw), -np.inf, dtype=x.dtype)
        padded[:, :, :h, :w] = x
        x = padded
    out = None
    for i in range(kernel):
        for j in range(kernel):
            window = x[:, :, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
            out = window.copy() if out is None else np.maximum(out, window, out=out)
    return out


def _face_probability(logits: np.ndarray) -> np.ndarray:
    """The softmax's face class of two logits (first axis)."""
    return 1.0 / (1.0 + np.exp(logits[0] - logits[1]))


@dataclass(frozen=True)
class MTCNN:
    """The three networks; ``weights`` keyed ``<net>.<torch name>`` as `make models` stores them."""

    weights: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: Path) -> MTCNN:
        from safetensors.numpy import load_file

        if not path.is_file():
            raise MTCNNMissing(
                "mtcnn", f"the MTCNN face detector is not installed at {path}: run `make models`"
            )
        return cls.from_state(load_file(str(path)))

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> MTCNN:
        """Convolution kernels rearranged once for im2col, dense layers transposed, the PReLU
        slopes of convolutions shaped to broadcast over ``[C, N, H, W]``."""
        weights = {}
        for name, value in state.items():
            value = np.asarray(value, dtype=np.float32)
            if value.ndim == 4:  # [O, C, k, k] -> [O, k*k*C]
                value = value.transpose(0, 2, 3, 1).reshape(value.shape[0], -1)
            elif value.ndim == 2:
                value = value.T
            weights[name] = np.ascontiguousarray(value)
        return cls(weights)

    def _layer(self, x: np.ndarray, net: str, conv: str, prelu: str, kernel: int) -> np.ndarray:
        w = self.weights
        out = _conv(x, w[f"{net}.{conv}.weight"], w[f"{net}.{conv}.bias"], kernel)
        return _prelu(out, w[f"{net}.{prelu}.weight"][:, None, None, None])

    def _dense(self, x: np.ndarray, net: str, name: str) -> np.ndarray:
        return x @ self.weights[f"{net}.{name}.weight"] + self.weights[f"{net}.{name}.bias"]

    def pnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[3, N, H, W]`` normalised -> (box regression ``[N, H', W', 4]``, face probability
        ``[N, H', W']``)."""
        x = _pool(self._layer(x, "pnet", "conv1", "prelu1", 3), 2, 2)
        x = self._layer(x, "pnet", "conv2", "prelu2", 3)
        x = self._layer(x, "pnet", "conv3", "prelu3", 3)
        w = self.weights
        logits = _conv(x, w["pnet.conv4_1.weight"], w["pnet.conv4_1.bias"], 1)
        regression = _conv(x, w["pnet.conv4_2.weight"], w["pnet.conv4_2.bias"], 1)
        return regression.transpose(1, 2, 3, 0), _face_probability(logits)

    def rnet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[3, N, 24, 24]`` -> (regression ``[N, 4]``, probability ``[N]``)."""
        x = _pool(self._layer(x, "rnet", "conv1", "prelu1", 3), 3, 2)
        x = _pool(self._layer(x, "rnet", "conv2", "prelu2", 3), 3, 2)
        x = self._layer(x, "rnet", "conv3", "prelu3", 2)
        # torch flattens its NCHW map permuted to (N, W, H, C).
        x = x.transpose(1, 3, 2, 0).reshape(x.shape[1], -1)
        x = _prelu(self._dense(x, "rnet", "dense4"), self.weights["rnet.prelu4.weight"])
        return self._dense(x, "rnet", "dense5_2"), _face_probability(self._dense(x, "rnet", "dense5_1").T)

    def onet(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[3, N, 48, 48]`` -> (regression ``[N, 4]``, probability ``[N]``); landmarks unused."""
        x = _pool(self._layer(x, "onet", "conv1", "prelu1", 3), 3, 2)
        x = _pool(self._layer(x, "onet", "conv2", "prelu2", 3), 3, 2)
        x = _pool(self._layer(x, "onet", "conv3", "prelu3", 3), 2, 2)
        x = self._layer(x, "onet", "conv4", "prelu4", 2)
        x = x.transpose(1, 3, 2, 0).reshape(x.shape[1], -1)
        x = _prelu(self._dense(x, "onet", "dense5"), self.weights["onet.prelu5.weight"])
        return self._dense(x, "onet", "dense6_2"), _face_probability(self._dense(x, "onet", "dense6_1").T)

    def detect(
        self,
        image: np.ndarray,
        min_face: float,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> np.ndarray:
        """Faces in one ``[H, W, 3]`` RGB image: ``[K, 5]`` float32 rows x1, y1, x2, y2, probability
        in the image's pixels (facenet-pytorch's ``detect_face`` for a single image)."""
        with threadpool_limits(limits=1, user_api="blas"):
            return self._detect(np.asarray(image, dtype=np.float32), min_face, thresholds, factor)

    def _detect(self, image, min_face, thresholds, factor) -> np.ndarray:
        height, width = image.shape[:2]
        empty = np.zeros((0, 5), np.float32)
        m = 12.0 / min_face
        smallest = min(height, width) * m
        scales = []
        scale = m
        while smallest >= 12:
            scales.append(scale)
            scale *= factor
            smallest *= factor

        proposals = []
        for scale in scales:
            scaled = area_resize(image, int(height * scale + 1), int(width * scale + 1))
            normalised = np.ascontiguousarray(((scaled - PIXEL_MEAN) * PIXEL_SCALE).transpose(2, 0, 1))
            regression, probability = self.pnet(normalised[:, None])
            boxes = _proposals(regression[0], probability[0], scale, thresholds[0])
            proposals.append(boxes[nms(boxes[:, :4], boxes[:, 4], NMS_SCALE)])
        boxes = np.concatenate(proposals) if proposals else np.zeros((0, 9), np.float32)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], NMS_PYRAMID)]
        if not len(boxes):
            return empty
        size = boxes[:, 2:4] - boxes[:, 0:2]
        corners = boxes[:, :4] + boxes[:, 5:9] * np.tile(size, 2)
        boxes = _square(np.concatenate([corners, boxes[:, 4:5]], axis=1))

        boxes, patches = _patches(image, boxes, 24)
        if not len(boxes):
            return empty
        regression, probability = self.rnet(patches)
        keep = probability > thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], probability[keep, None]], axis=1)
        regression = regression[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], NMS_RNET)
        boxes = _square(_regress(boxes[pick], regression[pick]))

        return self._output_stage(image, boxes, thresholds[2])

    def recheck(self, image: np.ndarray, corners: np.ndarray, threshold: float) -> np.ndarray:
        """O-Net alone on boxes found in a neighbouring frame (``[K, 4]`` x1, y1, x2, y2 in
        ``image``'s pixels): the faces still there, refined, as ``detect`` returns them. A face
        that stays put is confirmed for the cost of one 48x48 patch instead of the pyramid."""
        with threadpool_limits(limits=1, user_api="blas"):
            boxes = np.concatenate([corners, np.ones((len(corners), 1))], axis=1).astype(np.float32)
            return self._output_stage(np.asarray(image, dtype=np.float32), _square(boxes), threshold)

    def _output_stage(self, image: np.ndarray, boxes: np.ndarray, threshold: float) -> np.ndarray:
        """O-Net on square boxes: those above ``threshold``, regressed and suppressed."""
        boxes, patches = _patches(image, boxes, 48)
        if not len(boxes):
            return np.zeros((0, 5), np.float32)
        regression, probability = self.onet(patches)
        keep = probability > threshold
        boxes = np.concatenate([boxes[keep, :4], probability[keep, None]], axis=1)
        boxes = _regress(boxes, regression[keep])
        return boxes[nms(boxes[:, :4], boxes[:, 4], NMS_ONET, over_smaller=True)].astype(np.float32)


def _proposals(regression: np.ndarray, probability: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """P-Net's windows at or above ``threshold``: ``[K, 9]`` x1, y1, x2, y2, score, 4 regressions
    in the unscaled image's pixels (``generateBoundingBox``)."""
    rows, columns = np.nonzero(probability >= threshold)
    cells = np.stack([columns, rows], axis=1).astype(np.float32)
    scale = np.float32(scale)
    top_left = np.floor((PNET_STRIDE * cells + 1) / scale)
    bottom_right = np.floor((PNET_STRIDE * cells + PNET_CELL) / scale)
    return np.concatenate(
        [top_left, bottom_right, probability[rows, columns, None], regression[rows, columns]], axis=1
    ).astype(np.float32)


def _regress(boxes: np.ndarray, regression: np.ndarray) -> np.ndarray:
    """``bbreg``: corners moved by the regression, in units of the box's inclusive size."""
    size = boxes[:, 2:4] - boxes[:, 0:2] + 1
    out = boxes.copy()
    out[:, :4] = boxes[:, :4] + regression * np.tile(size, 2)
    return out


def _square(boxes: np.ndarray) -> np.ndarray:
    """``rerec``: each box made square (its longer side) around its centre."""
    out = boxes.copy()
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(axis=1, keepdims=True)
    out[:, 0:2] = boxes[:, 0:2] + size * 0.5 - side * 0.5
    out[:, 2:4] = out[:, 0:2] + side
    return out


def _patches(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The boxes' pixels (clipped to the image as ``pad`` does) resampled to ``size`` square and
    normalised, ``[3, N, size, size]``, with the boxes that have any pixels."""
    height, width = image.shape[:2]
    corners = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(corners[:, 0], 1)
    y = np.maximum(corners[:, 1], 1)
    ex = np.minimum(corners[:, 2], width)
    ey = np.minimum(corners[:, 3], height)
    # detect_face skips an empty crop; its box is dropped with it here so boxes and patches align.
    valid = (ey > y - 1) & (ex > x - 1) & (ex >= 1) & (ey >= 1)
    patches = [
        area_resize(image[y[k] - 1 : ey[k], x[k] - 1 : ex[k]], size, size) for k in np.flatnonzero(valid)
    ]
    if not patches:
        return boxes[:0], np.zeros((3, 0, size, size), np.float32)
    stacked = np.ascontiguousarray(np.stack(patches).transpose(3, 0, 1, 2))
    return boxes[valid], (stacked - PIXEL_MEAN) * PIXEL_SCALE


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, over_smaller: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first. Default: torchvision's ``nms``
    (intersection over union, areas without the +1); ``over_smaller``: facenet-pytorch's
    ``nms_numpy`` "Min" (intersection over the smaller box, areas with +1)."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    one = 1.0 if over_smaller else 0.0
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + one)
        inter = w * h
        if over_smaller:
            overlap = inter / np.minimum(area[best], area[rest])
        else:
            overlap = inter / (area[best] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


_DETECTORS: dict[Path, MTCNN] = {}
_LOCK = threading.Lock()


def mtcnn(models_dir: Path) -> MTCNN:
    """The installed detector, loaded once per process."""
    path = Path(models_dir) / MODEL_NAME / WEIGHTS_FILE
    with _LOCK:
        if path not in _DETECTORS:
            _DETECTORS[path] = MTCNN.load(path)
        return _DETECTORS[path]
