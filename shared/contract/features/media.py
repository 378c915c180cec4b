"""Media probing: what a file holds, and whether Moodreel will process it, before any decoding.

``probe`` runs ffprobe once (JSON output, time limit) and checks the settings' limits: file size
before ffprobe even starts, then duration and resolution. Every refusal is a ``MediaError`` with a
stable ``code`` that jobs and API responses carry.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from shared.errors import CodedError
from shared.settings import Settings, get_settings

MEDIA_ERROR_CODES = frozenset(
    {"not_media", "no_streams", "corrupt", "too_long", "too_large_resolution", "unsupported", "too_large"}
)

# Formats ffprobe "recognises" that are not audio/video: text shown as ANSI art, still images.
_NOT_MEDIA_FORMATS = {"tty", "lrc", "srt", "webvtt", "ass", "subviewer", "microdvd"}
# image2 plus every "<codec>_pipe" demuxer (png_pipe, jpeg_pipe, ...) are still-image readers.
_STILL_IMAGE_FORMATS = {"image2"}


class MediaError(CodedError):
    """A file Moodreel will not process; ``code`` is one of ``MEDIA_ERROR_CODES``."""

    def __init__(self, code: str, message: str):
        if code not in MEDIA_ERROR_CODES:
            raise ValueError(f"unknown media error code {code!r}")
        super().__init__(code, message)


@dataclass(frozen=True)
class VideoStream:
    width: int  # as coded; see display_size for what a player shows
    height: int
    fps: float  # average frame rate (frames / duration); 0.0 when the container does not say
    rotation: int  # display matrix rotation in degrees, one of 0, 90, 180, 270
    codec: str

    @property
    def display_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


@dataclass(frozen=True)
class AudioStream:
    sample_rate: int
    channels: int
    codec: str


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    container: str
    size_bytes: int
    video: VideoStream | None
    audio: AudioStream | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The only demuxers ffmpeg/ffprobe may use on an upload. Playlist and script formats (hls, dash,
# concat, image2 patterns, ...) would make ffmpeg open further files or URLs named inside the
# upload; still-image demuxers are allowed only so probing can name them "unsupported".
SAFE_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,ogg,wav,w64,mp3,aac,flac,asf,aiff,"
    "png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,gif"
)


def input_args(path: Path | str) -> list[str]:
    """ffmpeg/ffprobe arguments that open ``path`` as a plain local file: only the ``file``
    protocol, only SAFE_DEMUXERS, and a ``file:`` URL so names like ``-x`` or ``concat:a|b`` are
    never read as options or protocols."""
    return [
        "-protocol_whitelist", "file",
        "-format_whitelist", SAFE_DEMUXERS,
        "-i", f"file:{Path(path).resolve()}",
    ]  # fmt: skip


# Leading bytes of containers ffmpeg reads: a file that starts like one but fails to probe is
# "corrupt" (e.g. an upload cut short), anything else is "not_media".
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM (EBML)
    (0, b"RIFF"),  # AVI, WAV
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)


def looks_like_media(head: bytes) -> bool:
    if any(head[offset : offset + len(magic)] == magic for offset, magic in _SIGNATURES):
        return True
    # MPEG transport stream: sync byte every 188 bytes.
    return len(head) >= 377 and head[0] == head[188] == head[376] == 0x47


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text or "0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if 0 < value < 1000 else 0.0


def _rotation(stream: dict[str, Any]) -> int:
    degrees: float = 0.0
    for side_data in stream.get("side_data_list") or []:
        if "rotation" in side_data:
            degrees = float(side_data["rotation"])
            break
    else:
        degrees = float((stream.get("tags") or {}).get("rotate", 0) or 0)
    return int(round(degrees / 90.0)) * 90 % 360


def _duration(report: dict[str, Any]) -> float | None:
    candidates = [report.get("format", {}).get("duration")]
    candidates += [stream.get("duration") for stream in report.get("streams", [])]
    for value in candidates:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds > 0:
            return seconds
    return None


def run_ffprobe(path: Path, timeout: float) -> dict[str, Any]:
    """ffprobe's JSON report. Not ``ffmpeg.probe``: ffmpeg-python 0.2's probe has no time limit,
    and a crafted file must not hold a worker forever."""
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", *input_args(path)]
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise MediaError("corrupt", f"probing took longer than {timeout:.0f} s") from exc
    if done.returncode != 0:
        with path.open("rb") as handle:
            head = handle.read(512)
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        detail = reason[-1] if reason else "unreadable"
        if looks_like_media(head):
            raise MediaError("corrupt", f"the file looks like media but cannot be read: {detail}")
        raise MediaError("not_media", "the file is not a video or audio file ffmpeg can read")
    return json.loads(done.stdout.decode("utf-8", errors="replace"))


def probe(path: Path | str, settings: Settings | None = None) -> MediaInfo:
    """Describe ``path`` and enforce the media limits; raises ``MediaError``."""
    settings = settings or get_settings()
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MediaError("not_media", f"cannot read the file: {exc.strerror}") from exc
    if size == 0:
        raise MediaError("not_media", "the file is empty")
    if size > settings.max_media_bytes:
        raise MediaError(
            "too_large", f"the file is {size} bytes; the limit is {settings.max_media_bytes} bytes"
        )

    report = run_ffprobe(path, settings.ffprobe_timeout_seconds)
    container = str(report.get("format", {}).get("format_name", ""))
    if container in _NOT_MEDIA_FORMATS:
        raise MediaError("not_media", f"the file is {container} text, not a video or audio file")
    if container in _STILL_IMAGE_FORMATS or container.endswith("_pipe"):
        raise MediaError("unsupported", "still images are not supported; upload a video or audio file")

    streams = report.get("streams", [])
    video_streams = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    audio_streams = [s for s in streams if s.get("codec_type") == "audio"]
    if not video_streams and not audio_streams:
        raise MediaError("no_streams", "the file has neither a video nor an audio stream")

    video = None
    if video_streams:
        stream = video_streams[0]
        width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
        codec = str(stream.get("codec_name") or "")
        if not codec or width <= 0 or height <= 0:
            raise MediaError("unsupported", "the video stream's codec or size is unknown to ffmpeg")
        video = VideoStream(
            width=width,
            height=height,
            fps=_rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")),
            rotation=_rotation(stream),
            codec=codec,
        )
        long_side, short_side = max(width, height), min(width, height)
        if long_side > settings.max_video_long_side or short_side > settings.max_video_short_side:
            raise MediaError(
                "too_large_resolution",
                f"the video is {width}x{height}; the limit is {settings.max_video_long_side}x"
                f"{settings.max_video_short_side} in either orientation",
            )
    audio = None
    if audio_streams:
        stream = audio_streams[0]
        codec = str(stream.get("codec_name") or "")
        if not codec:
            raise MediaError("unsupported", "the audio stream's codec is unknown to ffmpeg")
        audio = AudioStream(
            sample_rate=int(stream.get("sample_rate") or 0),
            channels=int(stream.get("channels") or 0),
            codec=codec,
        )

    duration = _duration(report)
    if duration is None:
        raise MediaError("corrupt", "the file's duration cannot be determined")
    if duration > settings.max_media_seconds:
        raise MediaError(
            "too_long", f"the media lasts {duration:.0f} s; the limit is {settings.max_media_seconds:.0f} s"
        )
    return MediaInfo(duration=duration, container=container, size_bytes=size, video=video, audio=audio)
