"""Visual features: N frames per utterance from ONE ffmpeg decode of the whole video.

For every utterance [start, end] the targets are N times spread evenly across it (the centres of N
equal slices). A single ffmpeg process decodes the video once; its ``select`` filter lets through
only frames near a target, so scaling and the pipe carry a few frames per target, not the whole
video. The selection expression is a binary search over the sorted target windows (O(log K) per
decoded frame), written to a filter script so thousands of utterances fit. ``showinfo`` reports
each selected frame's timestamp on stderr; Python pairs those with the raw RGB frames from stdout
and keeps, for each target, the nearest frame inside its utterance.

ffmpeg applies the display matrix (autorotate) before the filter graph, so a rotated phone video
is cropped in the orientation a player shows. Resizing: short side to S, centre crop to S x S.

With a face detector each utterance also gets a thumbnail: a small JPEG of the frame of its middle
face record (``faces[len(faces) // 2]``), encoded from the frame already decoded for detection, so
its boxes can be drawn over it.
"""

from __future__ import annotations

import bisect
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.faces import FaceScanner, FrameFaces, track_face
from shared.contract.features.media import MediaError, MediaInfo, input_args
from shared.contract.features.spec import FeatureSpec
from shared.settings import Settings, get_settings, models_dir

# Marks a target with no usable frame in frame_times.
NO_FRAME = -1.0
_PTS_TIME = re.compile(rb"Parsed_showinfo.*? pts_time:\s*(-?[0-9.eE+-]+|nan)")
_INSIDE_SLACK = 1e-3
# Thumbnails: long side in pixels (never enlarged) and JPEG quality; about 10 kB each.
THUMBNAIL_SIDE = 320
THUMBNAIL_QUALITY = 80


@dataclass
class VisualFeatures:
    frames: np.ndarray  # [U, N, 3, S, S] uint8
    frame_times: np.ndarray  # [U, N] float32, seconds; NO_FRAME where nothing was found
    present: np.ndarray  # [U] bool: at least one real frame (a face, with a detector) in the utterance
    # With a face detector: per utterance, per sampled frame, the faces found
    # ({"time", "boxes": [[x, y, w, h], ...], "scores", "used"}), and why the visual modality is
    # masked ("no_video": no frame at all, "no_face": frames but no face), None where it is used.
    faces: list[list[dict]] | None = None
    reasons: list[str | None] | None = None
    # With a face detector: per utterance, the JPEG of its middle face record's frame (None
    # without a sampled frame).
    thumbnails: list[bytes | None] | None = None


def decode_size(info: MediaInfo, spec: FeatureSpec) -> tuple[int, int]:
    """Width and height (even) of frames decoded for face detection: the displayed picture with
    its long side at most ``face_decode_side``, never enlarged."""
    width, height = info.video.display_size
    scale = min(1.0, spec.face_decode_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def encode_thumbnail(pixels: np.ndarray) -> bytes:
    """An RGB frame as a JPEG whose long side is at most ``THUMBNAIL_SIDE``."""
    import cv2

    height, width = pixels.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY]
    )
    if not ok:
        raise MediaError("corrupt", "a sampled frame cannot be encoded as a thumbnail")
    return encoded.tobytes()


def target_times(utterances: Sequence[UtteranceMeta], frames_per_utterance: int) -> np.ndarray:
    """[U, N] times: the centre of each of N equal slices of [start, end]."""
    starts = np.array([u.start for u in utterances], dtype=np.float64)[:, None]
    ends = np.array([u.end for u in utterances], dtype=np.float64)[:, None]
    slices = (np.arange(frames_per_utterance, dtype=np.float64) + 0.5) / frames_per_utterance
    return starts + (ends - starts) * slices[None, :]


def _merged_windows(times: np.ndarray, half_width: float) -> list[tuple[float, float]]:
    windows: list[tuple[float, float]] = []
    for time in np.unique(times):
        low, high = time - half_width, time + half_width
        if windows and low <= windows[-1][1]:
            windows[-1] = (windows[-1][0], high)
        else:
            windows.append((low, high))
    return windows


def _window_tree(windows: list[tuple[float, float]], lo: int, hi: int) -> str:
    """1 when t lies in one of the disjoint sorted windows[lo:hi], by binary search on t."""
    if hi - lo == 1:
        low, high = windows[lo]
        return f"between(t,{low:.6f},{high:.6f})"
    mid = (lo + hi) // 2
    return (
        f"if(gte(t,{windows[mid][0]:.6f}),{_window_tree(windows, mid, hi)},{_window_tree(windows, lo, mid)})"
    )


def _latest_target_tree(times: list[float], lo: int, hi: int) -> str:
    """The largest target <= t among the sorted times[lo:hi], or -1."""
    if hi - lo == 1:
        return f"if(gte(t,{times[lo]:.6f}),{times[lo]:.6f},-1)"
    mid = (lo + hi) // 2
    return (
        f"if(gte(t,{times[mid]:.6f}),{_latest_target_tree(times, mid, hi)},"
        f"{_latest_target_tree(times, lo, mid)})"
    )


def select_expression(times: np.ndarray, half_width: float) -> str:
    """Keep a frame when it is within ``half_width`` of a target, or when it is the first frame at
    or after a target (which catches targets that fall in a gap of a variable-frame-rate video)."""
    windows = _merged_windows(times.ravel(), half_width)
    distinct = sorted(set(times.ravel().tolist()))
    near = _window_tree(windows, 0, len(windows))
    first_after = f"gt({_latest_target_tree(distinct, 0, len(distinct))},if(isnan(prev_t),-1,prev_t))"
    return f"gt({near}+{first_after},0)"


def _drain(stream, sink: queue.Queue, log: bytearray) -> None:
    for line in iter(stream.readline, b""):
        match = _PTS_TIME.search(line)
        if match:
            sink.put(float(match.group(1)))
        elif len(log) < 8000:
            log.extend(line)
    sink.put(None)


def extract_frames(
    path: Path,
    info: MediaInfo,
    utterances: Sequence[UtteranceMeta],
    spec: FeatureSpec,
    settings: Settings | None = None,
) -> VisualFeatures:
    settings = settings or get_settings()
    count, per, size = len(utterances), spec.frames_per_utterance, spec.frame_size
    frames = np.zeros((count, per, 3, size, size), dtype=np.uint8)
    frame_times = np.full((count, per), NO_FRAME, dtype=np.float32)
    present = np.zeros(count, dtype=bool)
    with_faces = spec.face_detector != "none"
    if info.video is None or count == 0 or per == 0:
        if with_faces:
            return VisualFeatures(
                frames, frame_times, present, [[] for _ in range(count)], ["no_video"] * count, [None] * count
            )
        return VisualFeatures(frames, frame_times, present)

    targets = target_times(utterances, per)
    # A frame "near" a target is within half a frame interval of it: about one candidate per target.
    fps = info.video.fps if info.video.fps >= 1 else 25.0
    half_width = 0.5 / fps
    order = np.argsort(targets.ravel(), kind="stable")
    sorted_times = targets.ravel()[order]
    best_distance = np.full(targets.size, np.inf)
    inside = np.zeros(targets.size, dtype=bool)
    flat_frames = frames.reshape(count * per, 3, size, size)
    flat_times = frame_times.reshape(-1)
    starts = np.repeat([u.start for u in utterances], per)
    ends = np.repeat([u.end for u in utterances], per)
    # Faces: each target keeps the faces of its frame; a frame is scanned once, when it first
    # serves a target (about one frame per target: the detector never sees unsampled frames), in a
    # second thread (OpenCV and BLAS release the GIL) while ffmpeg goes on decoding. That one
    # thread scans the frames in time order, as the scanner's re-check of faces needs.
    target_faces: list[Future | None] = [None] * targets.size
    scanned: dict[float, Future] = {}
    # Each scanned frame's thumbnail, encoded in the same thread (the frame is decoded once).
    target_thumbnails: list[Future | None] = [None] * targets.size
    thumbnailed: dict[float, Future] = {}
    weights_dir = models_dir(settings)
    # One worker: the scanner re-checks faces from frame to frame, so it takes them in order.
    scans = ThreadPoolExecutor(max_workers=1) if with_faces else None
    scanner = FaceScanner(spec, weights_dir) if with_faces else None
    if with_faces:
        out_width, out_height = decode_size(info, spec)
        scaling = f"scale={out_width}:{out_height}:flags=area+accurate_rnd+full_chroma_int"
        frame_shape = (out_height, out_width, 3)
    else:
        scaling = (
            f"scale={size}:{size}:force_original_aspect_ratio=increase:flags=area+accurate_rnd+full_chroma_int,"
            f"crop={size}:{size}"
        )
        frame_shape = (size, size, 3)

    def offer(time: float, pixels: np.ndarray, previous: float) -> None:
        """Give this frame to every target it could serve: targets since the previous selected frame
        (this is the first frame after them) and those within half a frame interval ahead."""
        low = bisect.bisect_right(sorted_times, min(previous, time - half_width))
        high = bisect.bisect_right(sorted_times, time + half_width)
        for position in range(low, high):
            target = order[position]
            distance = abs(time - sorted_times[position])
            is_inside = starts[target] - _INSIDE_SLACK <= time <= ends[target] + _INSIDE_SLACK
            # Decoding reference frames only, a target that has no frame yet takes the first one
            # after it, however far: a short utterance inside a run of B-frames has none of its own.
            first_reference = spec.frames_reference_only and flat_times[target] == NO_FRAME
            if not is_inside and distance > half_width and not first_reference:
                continue
            if (is_inside, -distance) > (inside[target], -best_distance[target]):
                inside[target], best_distance[target] = is_inside, distance
                flat_times[target] = time
                if with_faces:
                    if time not in scanned:
                        scanned[time] = scans.submit(scanner.scan, pixels, time)
                        thumbnailed[time] = scans.submit(encode_thumbnail, pixels)
                    target_faces[target] = scanned[time]
                    target_thumbnails[target] = thumbnailed[time]
                else:
                    flat_frames[target] = pixels.transpose(2, 0, 1)

    with tempfile.TemporaryDirectory(prefix="moodreel-frames-") as scratch:
        script = Path(scratch) / "select.filter"
        script.write_text(f"select='{select_expression(targets, half_width)}',{scaling},showinfo")
        args = [
            "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info",
            "-threads", str(settings.ffmpeg_threads),
            *(["-skip_frame", "noref"] if spec.frames_reference_only else []), *input_args(path),
            "-map", "0:v:0", "-an", "-sn", "-dn",
            "-filter_threads", "1", "-filter_script:v", str(script),
            "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ]  # fmt: skip
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            process.kill()

        watchdog = threading.Timer(settings.ffmpeg_timeout_seconds, stop)
        watchdog.start()
        times: queue.Queue = queue.Queue()
        log = bytearray()
        reader = threading.Thread(target=_drain, args=(process.stderr, times, log), daemon=True)
        reader.start()
        frame_bytes = int(np.prod(frame_shape))
        received = 0
        previous = -np.inf
        try:
            while True:
                data = process.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    break
                time = times.get(timeout=settings.ffmpeg_timeout_seconds)
                if time is None:
                    break
                pixels = np.frombuffer(data, dtype=np.uint8).reshape(frame_shape)
                offer(time, pixels, previous)
                previous = time
                received += 1
        finally:
            if scans is not None:
                # waits for the scans in flight (all of them are needed unless decoding failed)
                scans.shutdown(cancel_futures=timed_out.is_set())
            process.stdout.close()
            returncode = process.wait()
            watchdog.cancel()
            reader.join(timeout=5)
    if timed_out.is_set():
        raise MediaError(
            "corrupt", f"decoding the video took longer than {settings.ffmpeg_timeout_seconds:.0f} s"
        )
    if returncode != 0 and received == 0:
        detail = log.decode(errors="replace").strip().splitlines()
        raise MediaError(
            "corrupt", f"the video stream cannot be decoded: {detail[-1] if detail else returncode}"
        )

    if with_faces:
        found = [job.result() if job is not None else None for job in target_faces]
        thumbnails = [job.result() if job is not None else None for job in target_thumbnails]
        return _face_features(frames, frame_times, found, thumbnails)
    _fill_missing(flat_frames, flat_times, count, per)
    present = (frame_times != NO_FRAME).any(axis=1)
    return VisualFeatures(frames, frame_times, present)


def _face_features(
    frames: np.ndarray,
    frame_times: np.ndarray,
    target_faces: list[FrameFaces | None],
    target_thumbnails: list[bytes | None],
) -> VisualFeatures:
    """The tracked face's crop in every sampled frame of each utterance; a frame where the face is
    not seen borrows the nearest frame's crop, and an utterance without any face stays zeros.
    The thumbnail is the frame of the middle face record (the records are the sampled frames)."""
    count, per = frame_times.shape
    faces: list[list[dict]] = []
    reasons: list[str | None] = []
    thumbnails: list[bytes | None] = []
    for row in range(count):
        found = target_faces[row * per : (row + 1) * per]
        sampled = [k for k in range(per) if found[k] is not None]
        thumbnails.append(target_thumbnails[row * per + sampled[len(sampled) // 2]] if sampled else None)
        chosen = track_face(found)
        seen = [k for k in range(per) if chosen[k] is not None]
        for k in range(per):
            if seen:
                nearest = min(seen, key=lambda j, k=k: abs(j - k))
                frames[row, k] = found[nearest].crops[chosen[nearest]]
        faces.append(
            [
                {
                    "time": round(float(frame_times[row, k]), 3),
                    "boxes": [[round(float(v), 4) for v in box] for box in found[k].boxes],
                    "scores": [round(float(v), 3) for v in found[k].scores],
                    "used": chosen[k],
                }
                for k in range(per)
                if found[k] is not None
            ]
        )
        if seen:
            reasons.append(None)
        elif (frame_times[row] != NO_FRAME).any():
            reasons.append("no_face")
        else:
            reasons.append("no_video")
    present = np.array([reason is None for reason in reasons], dtype=bool)
    return VisualFeatures(frames, frame_times, present, faces, reasons, thumbnails)


def _fill_missing(flat_frames: np.ndarray, flat_times: np.ndarray, count: int, per: int) -> None:
    """A target without a frame borrows the nearest found frame of the same utterance (a short gap
    in the video); an utterance without any frame stays zeros and is masked."""
    for row in range(count):
        found = [k for k in range(per) if flat_times[row * per + k] != NO_FRAME]
        if not found or len(found) == per:
            continue
        for k in range(per):
            if flat_times[row * per + k] == NO_FRAME:
                nearest = min(found, key=lambda j, k=k: abs(j - k))
                flat_frames[row * per + k] = flat_frames[row * per + nearest]
                flat_times[row * per + k] = flat_times[row * per + nearest]
