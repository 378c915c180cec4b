"""Feature pipeline speed against the full-decode bound.

Generates (once, into bench/media/) a 60 s 1280x720 24 fps H.264/AAC clip with a 20-utterance
transcript, then times, interleaved in this one process, ``extract_features`` on it and
``ffmpeg -i clip -f null -`` (decoding every video and audio frame and doing nothing else). The
medians and their ratio go to bench/results/preprocess.json. Target: ratio <= 1.5.

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

WORK = ROOT / "bench" / "media"
RESULTS = ROOT / "bench" / "results" / "preprocess.json"
DURATION, WIDTH, HEIGHT, FPS, UTTERANCES = 60, 1280, 720, 24, 20


def make_clip() -> tuple[Path, list[dict]]:
    WORK.mkdir(parents=True, exist_ok=True)
    clip = WORK / "bench-60s-720p.mp4"
    if not clip.is_file():
        run_tool(
            ffmpeg_args(
                "-f", "lavfi", "-i", f"testsrc2=s={WIDTH}x{HEIGHT}:r={FPS}:d={DURATION}",
                "-f", "lavfi", "-i", f"sine=frequency=220:beep_factor=4:sample_rate=48000:d={DURATION}",
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
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
    assert len(bundle) == UTTERANCES and bundle.modality_mask.all()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    clip, segments = make_clip()
    spec = FeatureSpec()
    time_pipeline(clip, segments, spec)  # warm-up: imports, tokenizer load, page cache
    decode, pipeline = [], []
    for _ in range(args.runs):
        decode.append(time_decode(clip))
        pipeline.append(time_pipeline(clip, segments, spec))
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
        "all_decode_s": [round(x, 3) for x in decode],
        "all_pipeline_s": [round(x, 3) for x in pipeline],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "note": "shared dev VM"},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("decode_bound_s", "pipeline_s", "ratio")}))


if __name__ == "__main__":
    main()
