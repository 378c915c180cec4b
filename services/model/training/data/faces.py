"""FER2013 faces for the visual branch: a reader, a cache of decoded arrays and augmentations.

FER2013 (``settings.face_expression_dir``/fer2013, read in place and never copied) holds 48x48
grayscale faces in ``train/<label>/Training_<id>.jpg`` and ``test/<label>/{PublicTest,PrivateTest}_<id>.jpg``.
Splits: train = Training, dev = PublicTest (selection), test = PrivateTest (read once, at the end).
Rows are the tensors the feature pipeline produces for one sampled frame: ``frames`` [N, 1, 3, S, S]
uint8 RGB (the gray face in all three channels, resized to the spec's ``frame_size``), so a face
crop from a video and a FER2013 face reach the network the same way.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.model.training.data.speech import MELD_EMOTION_TO_SENTIMENT
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.logging import get_logger
from shared.settings import Settings, get_settings

log = get_logger(__name__)

# FER2013's folder names onto MELD's seven emotions (the same seven classes).
FER_TO_MELD = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "joy",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}
FER_SPLITS = {
    "train": ("train", "Training_"),
    "dev": ("test", "PublicTest_"),
    "test": ("test", "PrivateTest_"),
}


class FaceDataError(ValueError):
    pass


def fer_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).face_expression_dir / "fer2013"


def fer_available(settings: Settings | None = None) -> bool:
    directory = fer_dir(settings)
    return (directory / "train").is_dir() and (directory / "test").is_dir()


def fer_files(split: str, settings: Settings | None = None) -> list[tuple[Path, str]]:
    """``(path, MELD emotion)`` of every image of a split, in a stable order."""
    if split not in FER_SPLITS:
        raise FaceDataError(f"FER2013 has no split {split!r}; splits are {sorted(FER_SPLITS)}")
    folder, prefix = FER_SPLITS[split]
    root = fer_dir(settings) / folder
    if not root.is_dir():
        raise FaceDataError(f"FER2013 is not at {root.parent} (setting MOODREEL_FACE_EXPRESSION_DIR)")
    files = [
        (path, FER_TO_MELD[label])
        for label in sorted(FER_TO_MELD)
        for path in sorted((root / label).glob(f"{prefix}*.jpg"))
    ]
    if not files:
        raise FaceDataError(f"no {prefix}*.jpg images under {root}")
    return files


def read_gray(path: Path) -> np.ndarray:
    """One image file as 48x48 uint8 grayscale."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def as_frames(gray: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W]`` uint8 grayscale faces -> ``[N, 1, 3, S, S]`` uint8 RGB, resized as the
    pipeline resizes its crops (shared.contract.features.faces.crop_face: area when shrinking, cubic when
    enlarging)."""
    if gray.shape[1:] != (size, size):
        import cv2

        interpolation = cv2.INTER_AREA if size < gray.shape[1] else cv2.INTER_CUBIC
        gray = np.stack([cv2.resize(face, (size, size), interpolation=interpolation) for face in gray])
    return np.repeat(gray[:, None, None, :, :], 3, axis=2)


def load_split_arrays(split: str, settings: Settings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(faces [N, 48, 48] uint8, emotion [N] int64)``, decoded once and cached under
    ``<data_dir>/cache/fer2013`` (keyed by the file list, so a changed folder rebuilds it)."""
    settings = settings or get_settings()
    files = fer_files(split, settings)
    key = hashlib.sha256("\n".join(f"{p.relative_to(fer_dir(settings))}" for p, _ in files).encode())
    cache = settings.data_dir / "cache" / "fer2013" / f"{split}-{key.hexdigest()[:16]}.npz"
    if cache.is_file():
        stored = np.load(cache)
        return stored["faces"], stored["emotion"]
    log.info("fer2013_cache_build", split=split, images=len(files), path=str(cache))
    faces = np.stack([read_gray(path) for path, _ in files])
    emotion = np.array([EMOTIONS.index(label) for _, label in files], dtype=np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial.npz")
    np.savez(partial, faces=faces, emotion=emotion)
    partial.replace(cache)
    return faces, emotion


def face_examples(split: str, spec: FeatureSpec, settings: Settings | None = None):
    """One FER2013 split as training rows: only the visual modality, one frame per row."""
    from services.model.training.data.examples import ExampleSet

    faces, emotion = load_split_arrays(split, settings)
    modality_mask = torch.zeros(len(faces), len(MODALITIES), dtype=torch.bool)
    modality_mask[:, MODALITIES.index("visual")] = True
    sentiment = [MELD_EMOTION_TO_SENTIMENT[EMOTIONS[e]] for e in emotion]
    return ExampleSet(
        tensors={"frames": torch.from_numpy(as_frames(faces, spec.frame_size))},
        modality_mask=modality_mask,
        emotion=torch.from_numpy(emotion),
        sentiment=torch.tensor([SENTIMENTS.index(s) if s else -1 for s in sentiment], dtype=torch.int64),
    )


@dataclass(frozen=True)
class FaceAugment:
    """Training-time augmentations of uint8 face frames ``[B, N, 3, S, S]``, per image: horizontal
    flip, a random crop (shift and zoom), a small rotation, brightness and contrast, Gaussian blur
    and JPEG re-compression (video crops are blurrier and compressed where FER2013 is sharp)."""

    flip_probability: float = 0.5
    max_shift: float = 0.1  # fraction of the side
    zoom: tuple[float, float] = (0.9, 1.1)
    max_rotation_degrees: float = 10.0
    brightness: float = 0.25  # added, fraction of full scale
    contrast: tuple[float, float] = (0.7, 1.3)
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    jpeg_probability: float = 0.2
    jpeg_quality: tuple[int, int] = (30, 90)

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = frames.shape
        x = frames.reshape(-1, *shape[-3:]).float() / 255.0
        rows = x.shape[0]

        def uniform(low: float, high: float, *dims: int) -> torch.Tensor:
            return torch.rand(*dims, generator=generator) * (high - low) + low

        angle = uniform(-self.max_rotation_degrees, self.max_rotation_degrees, rows) * math.pi / 180
        scale = 1.0 / uniform(*self.zoom, rows)
        flip = torch.where(torch.rand(rows, generator=generator) < self.flip_probability, -1.0, 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, uniform(-self.max_shift, self.max_shift, rows) * 2], -1),
                torch.stack([sin * flip, cos, uniform(-self.max_shift, self.max_shift, rows) * 2], -1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(*self.contrast, rows, 1, 1, 1) + mean
        x = x + uniform(-self.brightness, self.brightness, rows, 1, 1, 1)
        blurred = torch.rand(rows, generator=generator) < self.blur_probability
        if blurred.any():
            x[blurred] = _gaussian_blur(x[blurred], uniform(*self.blur_sigma, int(blurred.sum())))
        out = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        compressed = (torch.rand(rows, generator=generator) < self.jpeg_probability).nonzero().flatten()
        for row in compressed.tolist():
            quality = int(torch.randint(*self.jpeg_quality, (1,), generator=generator))
            out[row] = _jpeg(out[row], quality)
        return out.reshape(shape)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``[B, C, H, W]`` with its own sigma (separable, 5 taps)."""
    taps = torch.arange(-2, 3, dtype=x.dtype)
    kernels = torch.exp(-(taps[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)  # [B, 5]
    rows, channels, height, width = x.shape
    flat = x.reshape(1, rows * channels, height, width)
    weight = kernels.repeat_interleave(channels, 0)
    flat = F.conv2d(
        F.pad(flat, (2, 2, 0, 0), mode="replicate"), weight[:, None, None, :], groups=rows * channels
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, 2, 2), mode="replicate"), weight[:, None, :, None], groups=rows * channels
    )
    return flat.reshape(rows, channels, height, width)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``[3, S, S]`` uint8 through a JPEG encode and decode at ``quality``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return torch.from_numpy(np.asarray(decoded.convert("RGB")).copy()).permute(2, 0, 1)
