"""A short spoken clip with a matching transcript, generated locally (ffmpeg lavfi + espeak-ng).

``moodreel demo`` runs the pipeline on it, and tests use it as real speech with known times. It
lives outside ``tests/`` because the installed command line must not import test code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_LINES: tuple[tuple[str, str], ...] = (
    ("Ross", "I can't believe you did that. This is the best day ever!"),
    ("Rachel", "Oh no. I lost the keys again, and now we are locked out."),
    ("Joey", "Wait, what? You're telling me there's no more pizza?"),
    ("Monica", "Okay. The table is set and dinner is at seven."),
)


class ToolMissing(RuntimeError):
    """ffmpeg or espeak-ng is not installed."""


@dataclass(frozen=True)
class SpokenClip:
    video: Path
    transcript: Path  # SRT
    segments: list[dict]  # [{start, end, text, speaker}], the transcript as JSON segments
    duration: float


def run_tool(args: list[str], timeout: float = 120.0) -> None:
    """Run ffmpeg/espeak-ng quietly; raise with its stderr when it fails."""
    if shutil.which(args[0]) is None:
        raise ToolMissing(f"{args[0]} is not installed (Debian: apt-get install ffmpeg espeak-ng)")
    done = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {done.stderr.decode(errors='replace')[-800:]}")


def ffmpeg_args(*args: str) -> list[str]:
    return ["ffmpeg", "-y", "-hide_banner", "-loglevel", "error", "-nostdin", *args]


def _speak(text: str, path: Path) -> np.ndarray:
    run_tool(["espeak-ng", "-s", "165", "-w", str(path), text])
    with wave.open(str(path), "rb") as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    if rate != 22_050:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected 22050")
    return samples


def _srt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def make_spoken_clip(
    directory: Path,
    lines: tuple[tuple[str, str], ...] | list[tuple[str, str]] = DEMO_LINES,
    *,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    gap_seconds: float = 0.4,
    name: str = "spoken",
) -> SpokenClip:
    """An H.264/AAC mp4 of ``testsrc2`` with espeak-ng reading ``lines`` (speaker, text), one after
    another with ``gap_seconds`` of silence, plus an SRT and JSON segments with the exact times."""
    directory.mkdir(parents=True, exist_ok=True)
    rate = 22_050
    gap = np.zeros(int(gap_seconds * rate), dtype=np.int16)
    pieces: list[np.ndarray] = [gap]
    segments: list[dict] = []
    cursor = len(gap)
    for index, (speaker, text) in enumerate(lines):
        speech = _speak(text, directory / f"{name}-line{index}.wav")
        segments.append(
            {
                "start": round(cursor / rate, 3),
                "end": round((cursor + len(speech)) / rate, 3),
                "text": text,
                "speaker": speaker,
            }
        )
        pieces += [speech, gap]
        cursor += len(speech) + len(gap)
    audio_path = directory / f"{name}.wav"
    with wave.open(str(audio_path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.concatenate(pieces).tobytes())
    duration = cursor / rate
    video = directory / f"{name}.mp4"
    width, height = size
    run_tool(
        ffmpeg_args(
            "-f", "lavfi", "-i", f"testsrc2=s={width}x{height}:r={fps}:d={duration:.3f}",
            "-i", str(audio_path),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "96k", "-shortest", str(video),
        )
    )  # fmt: skip
    transcript = directory / f"{name}.srt"
    transcript.write_text(
        "\n".join(
            f"{i}\n{_srt_time(s['start'])} --> {_srt_time(s['end'])}\n{s['text']}\n"
            for i, s in enumerate(segments, start=1)
        ),
        encoding="utf-8",
    )
    (directory / f"{name}.json").write_text(json.dumps(segments, indent=2), encoding="utf-8")
    return SpokenClip(video=video, transcript=transcript, segments=segments, duration=duration)


def make_face_clip(
    path: Path,
    image: Path,
    *,
    duration: float,
    visible: tuple[float, float],
    box: tuple[int, int, int],
    size: tuple[int, int] = (640, 360),
    fps: int = 24,
    background: str = "0x406080",
) -> Path:
    """An H.264 mp4 (no audio) of ``image`` enlarged to ``box[2]`` pixels square at (``box[0]``,
    ``box[1]``) over a plain background, visible from ``visible[0]`` to ``visible[1]`` seconds
    (bicubic enlargement: a 48x48 face becomes what a camera would show at that size)."""
    left, top, side = box
    width, height = size
    start, end = visible
    run_tool(
        ffmpeg_args(
            "-f",
            "lavfi",
            "-t",
            f"{duration}",
            "-i",
            f"color=c={background}:s={width}x{height}:r={fps}",
            "-loop",
            "1",
            "-t",
            f"{duration}",
            "-i",
            str(image),
            "-filter_complex",
            f"[1]format=rgb24,scale={side}:{side}:flags=bicubic[face];"
            f"[0][face]overlay={left}:{top}:enable='between(t,{start},{end})',format=yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "20",
            "-an",
            str(path),
        )  # fmt: skip
    )
    return path
