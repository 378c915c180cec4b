"""Face detector settings selected on dev: found rate, false faces, CPU time, box geometry, margin.

Dev frames: FER2013 PublicTest faces (the dev split; PrivateTest is read only by bench/faces.py),
each enlarged (bicubic) to 120-220 px at a random place on a plain 640x360 background (every
other face on bench/faces.py's clips' orange, the others on blue), as bench/faces.py composes its
clips but without video coding; and faceless frames of ffmpeg's ``testsrc2``, ``testsrc``,
``smptehdbars``, ``mandelbrot``, ``cellauto`` and ``life`` sources and eighteen scikit-image
photographs without a human face.
A face frame counts as found when a box's centre lies inside the placed face; any box on a faceless
frame is a false face. CPU seconds per frame are ``time.process_time`` around ``detect_faces`` (BLAS
and OpenCV held to one thread, as the worker's detection thread runs). For MTCNN, the box is
compared with the placed face (FER2013's own crop, made by OpenCV's cascade), and the crop margin
is chosen on the visual head's accuracy on the found faces' crops (the default checkpoint's weights).
Results: bench/results/faces-select.json.

    nice -n 10 .venv/bin/python bench/faces_select.py [--faces 600]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from shared.contract.features.faces import crop_face, detect_faces  # noqa: E402
from shared.contract.features.spec import FeatureSpec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "faces-select.json"
WIDTH, HEIGHT = 640, 360
FACELESS_SOURCES = ("testsrc2", "testsrc", "smptehdbars", "mandelbrot", "cellauto", "life")
FACELESS_PER_SOURCE = 8
BASE = {"frames_per_utterance": 4, "frame_size": 48}
CONFIGS = {
    "haar": {"face_detector": "haar"},
    "haar+fallback": {"face_detector": "haar", "face_fallback": True},
    "mtcnn 320 px": {"face_detector": "mtcnn", "face_detect_side": 320},
    "mtcnn 480 px": {"face_detector": "mtcnn", "face_detect_side": 480},
    "mtcnn 320 px, min 0.15": {"face_detector": "mtcnn", "face_detect_side": 320, "face_min_size": 0.15},
    "mtcnn 320 px, thresholds 0.6/0.6/0.5": {
        "face_detector": "mtcnn", "face_detect_side": 320, "face_mtcnn_thresholds": (0.6, 0.6, 0.5),
    },
    "mtcnn 320 px, thresholds 0.4/0.4/0.4": {
        "face_detector": "mtcnn", "face_detect_side": 320, "face_mtcnn_thresholds": (0.4, 0.4, 0.4),
    },
    "mtcnn 320 px, thresholds 0.4/0.4/0.3": {
        "face_detector": "mtcnn", "face_detect_side": 320, "face_mtcnn_thresholds": (0.4, 0.4, 0.3),
    },
    "mtcnn 320 px, thresholds 0.5/0.5/0.5, factor 0.8": {
        "face_detector": "mtcnn", "face_detect_side": 320, "face_mtcnn_thresholds": (0.5, 0.5, 0.5),
        "face_mtcnn_factor": 0.8,
    },
    # a frame without a face scanned again turned, faces found turned at a stricter O-Net probability
    **{
        f"mtcnn 320 px, thresholds 0.4/0.4/0.4, turned {turned}, O-Net {threshold}": {
            "face_detector": "mtcnn", "face_detect_side": 320, "face_mtcnn_thresholds": (0.4, 0.4, 0.4),
            "face_mtcnn_rotations": angles, "face_mtcnn_rotated_threshold": threshold,
        }
        for turned, angles, threshold in (
            ("20/-20", (20.0, -20.0), 0.6),
            ("20/-20", (20.0, -20.0), 0.8),
            ("20/-20", (20.0, -20.0), 0.9),
            ("15/-15", (15.0, -15.0), 0.9),
            ("25/-25", (25.0, -25.0), 0.9),
            ("20/-20/35/-35", (20.0, -20.0, 35.0, -35.0), 0.9),
        )
    },
}  # fmt: skip
# Every other face on each: bench/faces.py's clips as they decode (its BGR (64, 96, 128) written
# by OpenCV: orange, near skin tones, which MTCNN finds harder) and the blue of the same triple.
BACKGROUNDS = ((128, 96, 64), (64, 96, 128))
MARGINS = (-0.1, -0.08, -0.06, -0.04, -0.02, 0.0, 0.05, 0.1)
# Photographs without a human face (scikit-image's), letterboxed into the frame (gray ones in all
# three channels).
FACELESS_PHOTOS = (
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "astronaut_masked",
    "brick",
    "clock",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "moon",
    "page",
    "text",
    "retina",
    "cell",
)


def face_frames(count: int, seed: int):
    """``(frames, placements [K, 3] left/top/side, labels, faces)`` of ``count`` PublicTest faces."""
    import cv2

    from services.model.training.data.faces import load_split_arrays

    faces, labels = load_split_arrays("dev")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(faces), size=min(count, len(faces)), replace=False))
    frames, placements = [], []
    for face in faces[picked]:
        side = int(rng.integers(120, 221))
        left, top = int(rng.integers(0, WIDTH - side)), int(rng.integers(0, HEIGHT - side))
        frame = np.full((HEIGHT, WIDTH, 3), BACKGROUNDS[len(frames) % 2], np.uint8)
        frame[top : top + side, left : left + side] = cv2.resize(
            face, (side, side), interpolation=cv2.INTER_CUBIC
        )[:, :, None]
        frames.append(frame)
        placements.append((left, top, side))
    return frames, np.array(placements, dtype=np.float64), labels[picked], faces[picked]


def faceless_photos() -> list[np.ndarray]:
    import cv2
    from skimage import data
    from skimage.util import img_as_ubyte

    frames = []
    for name in FACELESS_PHOTOS:
        if name == "astronaut_masked":
            # the astronaut photograph with her head painted over: the rest of it (flag, suit, shuttle)
            image = data.astronaut().copy()
            image[20:220, 140:310] = (90, 90, 90)
        else:
            image = img_as_ubyte(getattr(data, name)())
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
        scale = min(WIDTH / image.shape[1], HEIGHT / image.shape[0])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        top, left = (HEIGHT - size[1]) // 2, (WIDTH - size[0]) // 2
        frame[top : top + size[1], left : left + size[0]] = resized
        frames.append(frame)
    return frames


def faceless_frames() -> list[np.ndarray]:
    frames = []
    for source in FACELESS_SOURCES:
        command = [
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"{source}=size={WIDTH}x{HEIGHT}:rate=2",
            "-frames:v", str(FACELESS_PER_SOURCE), "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ]  # fmt: skip
        raw = subprocess.run(command, capture_output=True, check=True, timeout=120).stdout
        frames += list(np.frombuffer(raw, np.uint8).reshape(-1, HEIGHT, WIDTH, 3))
    return frames


def timed(frames, spec):
    found, seconds = [], []
    for frame in frames:
        started = time.process_time()
        found.append(detect_faces(frame, spec))
        seconds.append(time.process_time() - started)
    return found, float(np.mean(seconds))


def hit(faces, placement) -> int | None:
    """Index of the largest box whose centre lies inside the placed face (None: missed)."""
    left, top, side = placement
    for index, box in enumerate(faces.boxes):
        cx, cy = (box[0] + box[2] / 2) * WIDTH, (box[1] + box[3] / 2) * HEIGHT
        if left <= cx <= left + side and top <= cy <= top + side:
            return index
    return None


def main() -> None:
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    from services.model.core.checkpoint import load_checkpoint
    from services.model.training.data.faces import as_frames

    sys.path.insert(0, str(ROOT / "bench"))
    from faces import visual_predictions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "services/model/checkpoints/default")
    parser.add_argument("--only", nargs="*", default=None, help="detector settings to measure (names)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    frames, placements, labels, faces = face_frames(args.faces, args.seed)
    blank = faceless_frames()
    photos = faceless_photos()
    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model.eval()
    size = loaded.spec.frame_size
    direct = visual_predictions(model, as_frames(faces, size)) == labels

    results, chosen = {}, {}
    with threadpool_limits(limits=1):
        for name, settings in CONFIGS.items():
            if args.only and name not in args.only:
                continue
            spec = FeatureSpec(**BASE, **settings)
            found, face_seconds = timed(frames, spec)
            empty, blank_seconds = timed(blank, spec)
            on_photos, _ = timed(photos, spec)
            hits = [hit(f, p) for f, p in zip(found, placements, strict=True)]
            ok = np.array([h is not None for h in hits])
            stray = sum(len(f) - (h is not None) for f, h in zip(found, hits, strict=True))
            entry = {
                "spec": settings,
                "found_rate": round(float(ok.mean()), 4),
                "false_faces_faceless_frames": sum(len(f) > 0 for f in empty),
                "faceless_frames": len(blank),
                "false_faces_faceless_photos": sum(len(f) > 0 for f in on_photos),
                "faceless_photos": len(photos),
                "stray_boxes_face_frames": int(stray),
                "cpu_s_per_face_frame": round(face_seconds, 4),
                "cpu_s_per_faceless_frame": round(blank_seconds, 4),
            }
            boxes = np.array([f.boxes[h] for f, h in zip(found, hits, strict=True) if h is not None])
            if len(boxes):
                placed = placements[ok]
                pixels = boxes * [WIDTH, HEIGHT, WIDTH, HEIGHT]
                entry["box_vs_fer_crop"] = {
                    "width": round(float(np.median(pixels[:, 2] / placed[:, 2])), 3),
                    "height": round(float(np.median(pixels[:, 3] / placed[:, 2])), 3),
                    "centre_dx": round(
                        float(
                            np.median((pixels[:, 0] + pixels[:, 2] / 2 - placed[:, 0]) / placed[:, 2] - 0.5)
                        ),
                        3,
                    ),
                    "centre_dy": round(
                        float(
                            np.median((pixels[:, 1] + pixels[:, 3] / 2 - placed[:, 1]) / placed[:, 2] - 0.5)
                        ),
                        3,
                    ),
                }
            results[name] = entry
            chosen[name] = (found, hits, ok)
            print(name, json.dumps(entry), flush=True)

        margins = {}
        for name, (found, hits, ok) in chosen.items():
            tried = MARGINS if CONFIGS[name]["face_detector"] == "mtcnn" else (0.0,)
            for margin in tried:
                spec = FeatureSpec(**BASE, **CONFIGS[name] | {"face_margin": margin})
                crops = np.stack(
                    [
                        crop_face(frame, f.boxes[h], spec)
                        for frame, f, h in zip(frames, found, hits, strict=True)
                        if h is not None
                    ]
                )[:, None]
                through = visual_predictions(model, crops) == labels[ok]
                margins[f"{name}, margin {margin}"] = {
                    "found": int(ok.sum()),
                    "accuracy_found": round(float(through.mean()), 4),
                    "direct_accuracy_same_faces": round(float(direct[ok].mean()), 4),
                    "gap": round(float(direct[ok].mean() - through.mean()), 4),
                }
                print(name, margin, json.dumps(margins[f"{name}, margin {margin}"]), flush=True)

    result = {
        "split": "PublicTest",
        "faces": len(frames),
        "checkpoint": str(args.checkpoint.relative_to(ROOT))
        if args.checkpoint.is_relative_to(ROOT)
        else str(args.checkpoint),
        "frame": {
            "width": WIDTH,
            "height": HEIGHT,
            "face_px": [120, 220],
            "video_coding": False,
            "backgrounds_rgb": [list(b) for b in BACKGROUNDS],
        },  # fmt: skip
        "faceless_sources": list(FACELESS_SOURCES),
        "faceless_photos": list(FACELESS_PHOTOS),
        "detectors": results,
        "margins": margins,
        "machine": {
            "cpus": os.cpu_count(),
            "note": "shared dev VM; CPU seconds with one BLAS/OpenCV thread",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
