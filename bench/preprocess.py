"""Feature pipeline speed against the full-decode bound.

Generates (once, into bench/media/) a 60 s 1280x720 24 fps H.264/AAC clip with a 20-utterance
transcript, then times, interleaved in this one process, ``extract_features`` on it and
``ffmpeg -i clip -f null -`` (decoding every video and audio frame and doing nothing else). The
medians and their ratio go to bench/results/preprocess.json. Target: ratio <= 1.5, with and without
faces: the clip shows a real photograph (scikit-image's astronaut) over the test pattern, and the
pipeline runs once with the default checkpoint's spec (its face detector on) and once with the same
spec but the detector off (whole frames).

    .venv/bin/python bench/preprocess.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.contract.features.demo_media import ffmpeg_args, run_tool  # noqa: E402
from shared.contract.features.pipeline import extract_features  # noqa: E402
from shared.contract.features.spec import FeatureSpec  # noqa: E402
from shared.settings import get_settings  # noqa: E402

WORK = ROOT / "bench" / "media"
RESULTS = ROOT / "bench" / "results" / "preprocess.json"
DURATION, WIDTH, HEIGHT, FPS, UTTERANCES = 60, 1280, 720, 24, 20


OVERLAY = "overlay=700:160,format=yuv420p"


def make_clip() -> tuple[Path, list[dict]]:
    from PIL import Image
    from skimage import data

    WORK.mkdir(parents=True, exist_ok=True)
    clip = WORK / "bench-60s-720p-face.mp4"
    photo = WORK / "astronaut.png"
    if not photo.is_file():
        Image.fromarray(data.astronaut()).save(photo)
    if not clip.is_file():
        run_tool(
            ffmpeg_args(
                "-f", "lavfi", "-i", f"testsrc2=s={WIDTH}x{HEIGHT}:r={FPS}:d={DURATION}",
                "-f", "lavfi", "-i", f"sine=frequency=220:beep_factor=4:sample_rate=48000:d={DURATION}",
                "-loop", "1", "-t", f"{DURATION}", "-i", str(photo),
                "-filter_complex", f"[2]format=rgb24,scale=400:400[face];[0][face]{OVERLAY}",
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                "-c:a", "aac", "-b:a", "128k", "-ac", "2", str(clip),
            ),
            timeout=900,
        )  # fmt: skip
    # 20 utterances of 2.4 s, one every 3 s, like dialogue with short pauses.
    segments = [
        {
            "start": 3.0 * i + 0.3,
            "end": 3.0 * i + 2.7,
            "text": f"line number {i} of the benchmark",
            "speaker": "A",
        }
        for i in range(UTTERANCES)
    ]
    return clip, segments


def default_specs() -> tuple[FeatureSpec, FeatureSpec]:
    """The spec the default checkpoint serves with (faces on), and the same with the detector off."""
    from services.model.core.checkpoint import read_checkpoint_document

    document = read_checkpoint_document(get_settings().model_dir)
    faces = FeatureSpec.model_validate(document["feature_spec"])
    return FeatureSpec.model_validate(
        document["feature_spec"] | {"face_detector": "none", "face_scan_every": 1}
    ), faces


def time_decode(clip: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(clip), "-f", "null", "-"],
        check=True,
    )
    return time.perf_counter() - started


def time_pipeline(clip: Path, segments: list[dict], spec: FeatureSpec) -> float:
    started = time.perf_counter()
    bundle = extract_features(clip, spec, segments)
    elapsed = time.perf_counter() - started
    # text and the face in every utterance (the beeps are not speech: the speech gate masks audio)
    assert len(bundle) == UTTERANCES and bundle.modality_mask[:, [0, 2]].all(), bundle.modality_mask.sum(0)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    clip, segments = make_clip()
    spec, face_spec = default_specs()
    load_before = os.getloadavg()
    time_pipeline(clip, segments, spec)  # warm-up: imports, tokenizer load, page cache
    time_pipeline(clip, segments, face_spec)
    decode, pipeline, faces = [], [], []
    for _ in range(args.runs):
        decode.append(time_decode(clip))
        pipeline.append(time_pipeline(clip, segments, spec))
        faces.append(time_pipeline(clip, segments, face_spec))
    result = {
        "clip": {
            "duration_s": DURATION, "width": WIDTH, "height": HEIGHT, "fps": FPS,
            "codecs": "h264 (x264 veryfast crf 23) + aac stereo 48 kHz", "utterances": UTTERANCES,
            "size_bytes": clip.stat().st_size,
        },
        "spec": spec.model_dump(mode="json") | {"hash": spec.hash},
        "runs": args.runs,
        "decode_bound_s": round(statistics.median(decode), 3),
        "pipeline_s": round(statistics.median(pipeline), 3),
        "ratio": round(statistics.median(pipeline) / statistics.median(decode), 3),
        "target_ratio": 1.5,
        "face_spec": face_spec.model_dump(mode="json") | {"hash": face_spec.hash},
        "pipeline_faces_s": round(statistics.median(faces), 3),
        "ratio_faces": round(statistics.median(faces) / statistics.median(decode), 3),
        "all_decode_s": [round(x, 3) for x in decode],
        "all_pipeline_s": [round(x, 3) for x in pipeline],
        "all_pipeline_faces_s": [round(x, 3) for x in faces],
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "note": "shared dev VM",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("decode_bound_s", "pipeline_s", "ratio", "pipeline_faces_s", "ratio_faces")
            }
        )
    )


if __name__ == "__main__":
    main()
