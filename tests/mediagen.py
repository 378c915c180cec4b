"""Media for tests, generated on the spot with ffmpeg's lavfi sources and espeak-ng.

Every helper writes into the directory it is given (use ``tmp_path`` or ``tmp_path_factory``) and
returns the file's path. Clips are small (320x240, 2-3 s, ultrafast x264) so a test session can make
dozens of them in seconds. The media cases:

==========================  =========================================================
``h264_aac_mp4``            H.264 + AAC in mp4 (the common upload)
``vp9_opus_webm``           VP9 + Opus in webm
``mkv``                     H.264 + Vorbis in Matroska
``vfr_mp4``                 variable frame rate (irregular frame intervals)
``rotated_portrait_mp4``    landscape-coded with a 90 degree display matrix: plays portrait.
                            Left half red, right half blue, so orientation is checkable
``no_audio_mp4``            video stream only
``audio_only_m4a``          audio stream only
``video_ends_early_mp4``    video stops after ``video_seconds`` (1 s), audio goes on
``late_audio_mp4``          the audio stream starts 1 s after the video
``truncated_mp4``           a valid mp4 cut short (``faststart=True``: header intact, data cut;
                            ``False``: the index at the end is gone)
``time_coded_mp4``          grey level encodes the time (luma = 16 + 50 * t), 10 fps, no audio
``subtitles_only_mkv``      a Matroska file whose only stream is a subtitle track
``random_bytes``            noise with a media-looking name
``zero_bytes``              an empty file
``spoken_clip``             espeak-ng speech over testsrc2 with a matching SRT/JSON transcript
==========================  =========================================================
"""

from __future__ import annotations

import random
from pathlib import Path

from shared.contract.features.demo_media import (
    DEMO_LINES,
    SpokenClip,
    ffmpeg_args,
    make_spoken_clip,
    run_tool,
)

SIZE = (320, 240)
FPS = 25

__all__ = [
    "FPS",
    "SIZE",
    "SpokenClip",
    "audio_only_m4a",
    "h264_aac_mp4",
    "late_audio_mp4",
    "make_clip",
    "mkv",
    "no_audio_mp4",
    "random_bytes",
    "rotated_portrait_mp4",
    "spoken_clip",
    "subtitles_only_mkv",
    "time_coded_mp4",
    "truncated_mp4",
    "vfr_mp4",
    "video_ends_early_mp4",
    "vp9_opus_webm",
    "zero_bytes",
]

_CODECS = {
    ".mp4": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    ".m4a": ([], ["-c:a", "aac"]),
    ".webm": (
        ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"],
        ["-c:a", "libopus"],
    ),
    ".mkv": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "libvorbis"]),
}


def make_clip(
    path: Path,
    *,
    duration: float = 3.0,
    size: tuple[int, int] = SIZE,
    fps: int = FPS,
    video: bool = True,
    audio: bool = True,
    video_seconds: float | None = None,
    tone_hz: int = 440,
    video_source: str | None = None,
    video_filter: str | None = None,
    extra: tuple[str, ...] = (),
) -> Path:
    """One clip; the container and codecs follow ``path``'s suffix (.mp4, .m4a, .webm, .mkv).

    ``video_seconds`` shortens the video stream alone; ``video_source`` replaces ``testsrc2`` with
    another lavfi graph; ``video_filter`` is applied to the video before encoding."""
    video_codec, audio_codec = _CODECS[path.suffix]
    width, height = size
    args: list[str] = []
    if video:
        source = video_source or f"testsrc2=s={width}x{height}:r={fps}"
        args += ["-f", "lavfi", "-t", f"{video_seconds or duration}", "-i", source]
    if audio:
        args += ["-f", "lavfi", "-t", f"{duration}", "-i", f"sine=frequency={tone_hz}:sample_rate=44100"]
    if video_filter:
        args += ["-vf", video_filter]
    args += (video_codec if video else ["-vn"]) + (audio_codec if audio else ["-an"])
    run_tool(ffmpeg_args(*args, *extra, str(path)))
    return path


def h264_aac_mp4(directory: Path, name: str = "h264.mp4", **options) -> Path:
    return make_clip(directory / name, **options)


def vp9_opus_webm(directory: Path, name: str = "vp9.webm", **options) -> Path:
    return make_clip(directory / name, **options)


def mkv(directory: Path, name: str = "clip.mkv", **options) -> Path:
    return make_clip(directory / name, **options)


def vfr_mp4(directory: Path, name: str = "vfr.mp4", **options) -> Path:
    """30 fps source keeping 6 of every 10 frames at their original times: gaps of 33 and 133 ms."""
    return make_clip(
        directory / name,
        fps=30,
        video_filter="select='lt(mod(n,10),6)'",
        extra=("-fps_mode", "vfr"),
        **options,
    )


def rotated_portrait_mp4(directory: Path, name: str = "portrait.mp4", duration: float = 2.0) -> Path:
    """Coded 320x240 (left half red, right half blue) with a 90 degree display matrix: decoders
    that honour it show a 240x320 portrait frame."""
    width, height = SIZE
    half = width // 2
    coded = make_clip(
        directory / f"coded-{name}",
        duration=duration,
        video_source=(
            f"color=c=red:s={half}x{height}:r={FPS}[l];color=c=blue:s={half}x{height}:r={FPS}[r];[l][r]hstack"
        ),
    )
    path = directory / name
    run_tool(ffmpeg_args("-i", str(coded), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(path)))
    coded.unlink()
    return path


def no_audio_mp4(directory: Path, name: str = "silent-film.mp4", **options) -> Path:
    return make_clip(directory / name, audio=False, **options)


def audio_only_m4a(directory: Path, name: str = "audio.m4a", **options) -> Path:
    return make_clip(directory / name, video=False, **options)


def video_ends_early_mp4(
    directory: Path, name: str = "short-video.mp4", duration: float = 3.0, video_seconds: float = 1.0
) -> Path:
    return make_clip(directory / name, duration=duration, video_seconds=video_seconds)


def late_audio_mp4(directory: Path, name: str = "late-audio.mp4", offset: float = 1.0) -> Path:
    """3 s of video; a 440 Hz tone from ``offset`` seconds to the end (the stream starts late)."""
    width, height = SIZE
    path = directory / name
    video_codec, audio_codec = _CODECS[".mp4"]
    run_tool(
        ffmpeg_args(
            "-f", "lavfi", "-t", "3", "-i", f"testsrc2=s={width}x{height}:r={FPS}",
            "-itsoffset", str(offset), "-f", "lavfi", "-t", str(3 - offset), "-i", "sine=frequency=440",
            *video_codec, *audio_codec, str(path),
        )
    )  # fmt: skip
    return path


def truncated_mp4(
    directory: Path, name: str = "truncated.mp4", keep_fraction: float = 0.5, faststart: bool = True
) -> Path:
    full = make_clip(
        directory / f"full-{name}", duration=4.0, extra=("-movflags", "+faststart") if faststart else ()
    )
    data = full.read_bytes()
    full.unlink()
    path = directory / name
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def time_coded_mp4(
    directory: Path, name: str = "time-coded.mp4", duration: float = 4.0, fps: int = 10
) -> Path:
    """Each frame's luma is 16 + 50 * t (t in seconds), so a frame's brightness says when it is.
    At 10 fps neighbouring frames differ by 5 luma steps, far above coding/scaling error."""
    return make_clip(
        directory / name,
        duration=duration,
        audio=False,
        video_source=f"color=c=black:s=64x64:r={fps},format=yuv420p,geq=lum='16+50*T':cb=128:cr=128",
        extra=("-crf", "0"),
    )


def subtitles_only_mkv(directory: Path, name: str = "subtitles.mkv") -> Path:
    srt = directory / f"{name}.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n", encoding="utf-8")
    path = directory / name
    run_tool(ffmpeg_args("-i", str(srt), "-c:s", "srt", str(path)))
    srt.unlink()
    return path


def random_bytes(directory: Path, name: str = "noise.mp4", size: int = 64_000, seed: int = 7) -> Path:
    path = directory / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def zero_bytes(directory: Path, name: str = "empty.mp4") -> Path:
    path = directory / name
    path.write_bytes(b"")
    return path


def spoken_clip(directory: Path, lines=DEMO_LINES, **options) -> SpokenClip:
    """espeak-ng speech (one line per utterance, 0.4 s gaps) over testsrc2, H.264/AAC mp4, with
    ``.transcript`` (SRT) and ``.segments`` (JSON segments) giving each line's exact times."""
    return make_spoken_clip(directory, lines, **options)
