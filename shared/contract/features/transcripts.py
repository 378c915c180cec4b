"""Timed transcripts: SRT, WebVTT and JSON segments, validated against the media.

Times accept ``HH:MM:SS,mmm`` / ``HH:MM:SS.mmm``, a one-digit hour (MELD's ``0:12:32,632``), WebVTT's
hourless ``MM:SS.mmm``, and read the digits after the comma as a FRACTION of a second, so MELD's
``00:06:47,28`` is 407.28 s (not 407.028). JSON segments may also give times as numbers of seconds.

Validation: every cue ends after it starts, cues are in time order, none starts after the media
ends; an end up to ``transcript_time_tolerance_seconds`` past the media's end is clamped to it and
reported in ``TranscriptResult.clamped``. Empty texts are kept (audio/visual-only utterances).
Errors name the line (SRT/WebVTT) or the segment (JSON).

Speakers: WebVTT's ``<v NAME>``, JSON's ``speaker``, and an SRT cue written ``NAME: text`` (see
``split_speaker``): the name becomes the utterance's speaker and leaves its text, so the model
reads the same words and the same dialogue context it was trained on.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from shared.contract.bundle import UtteranceMeta
from shared.errors import CodedError
from shared.settings import Settings, get_settings

_TIME = re.compile(r"^\s*(?:(\d{1,3}):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,9}))?\s*$")
_ARROW = re.compile(r"^\s*(\S+)\s+-->\s+(\S+)(?:\s+.*)?$")
_VOICE = re.compile(r"<v(?:\.[^\s>]*)?\s+([^>]+)>")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>|<\d[\d:.]*>")
# "NAME: text" at the start of an SRT cue: the colon is followed by white space (so "10:30" is no
# label), and the label holds no sentence punctuation and at most four words of 32 characters.
_SPEAKER_LABEL = re.compile(
    r"^(?P<name>[^\s:,;!?\"()\[\]{}…][^:,;!?\"()\[\]{}…]{0,31}?)\s*:(?:\s+|$)(?P<text>.*)$", re.S
)
# Lower-case words a name may hold ("Boy in the Cape", "Maitre d'") without being a sentence.
_NAME_JOINERS = frozenset({"and", "in", "the", "of", "on", "at", "de", "d'", "von", "van", "&", "with"})
_MAX_NAME_WORDS = 4


class TranscriptError(CodedError, ValueError):
    """A transcript that cannot be used; the message says where and why."""

    code = "transcript_invalid"

    def __init__(self, message: str, line: int | None = None):
        super().__init__(None, f"line {line}: {message}" if line is not None else message)
        self.line = line


@dataclass
class TranscriptResult:
    utterances: list[UtteranceMeta]
    clamped: list[str] = field(default_factory=list)


@dataclass
class _Cue:
    start: float
    end: float
    text: str
    speaker: str | None
    where: str  # "line 12" or "segment 3", for messages
    line: int | None


def parse_timestamp(text: str) -> float:
    """Seconds from ``[H]H:MM:SS,fff`` / ``MM:SS.fff`` (the fraction may have 1-9 digits)."""
    match = _TIME.match(text)
    if not match:
        raise ValueError(f"not a timestamp: {text!r}")
    hours, minutes, seconds, fraction = match.groups()
    if int(minutes) >= 60 or int(seconds) >= 60:
        raise ValueError(f"minutes and seconds must be below 60: {text!r}")
    value = int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
    # Rounded to the microsecond so 2.28 reads back as the float 2.28, not 2.2800000000000002.
    return round(value + (int(fraction) / 10 ** len(fraction) if fraction else 0.0), 6)


def _time_range(line: str, number: int) -> tuple[float, float]:
    match = _ARROW.match(line)
    if not match:
        raise TranscriptError(
            f"expected a time range like '00:00:01,000 --> 00:00:02,500', got {line!r}", number
        )
    try:
        return parse_timestamp(match.group(1)), parse_timestamp(match.group(2))
    except ValueError as exc:
        raise TranscriptError(str(exc), number) from exc


def _blocks(text: str) -> list[list[tuple[int, str]]]:
    """Lines grouped by blank lines, each with its 1-based line number."""
    blocks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            current.append((number, line.rstrip()))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _speaker_label(body: str) -> tuple[str, str] | None:
    """``(name, text)`` when ``body`` starts with a name-shaped ``NAME:`` label, else None."""
    match = _SPEAKER_LABEL.match(body)
    if not match:
        return None
    name = match.group("name").strip()
    words = name.split()
    if not words or len(words) > _MAX_NAME_WORDS or not any(c.isalpha() for c in name):
        return None
    return name, match.group("text").strip()


def _looks_like_a_name(name: str) -> bool:
    """Every word starts like a proper name (capital, digit, '#') or is a joiner ("and", "the")."""
    return all(w[0].isupper() or w[0].isdigit() or w[0] == "#" or w in _NAME_JOINERS for w in name.split())


def split_speaker(bodies: list[str]) -> list[tuple[str | None, str]]:
    """``(speaker, text)`` for each SRT cue body of one transcript.

    A cue opening with ``NAME: text`` names its speaker when the label looks like a name (every
    word capitalised, a digit or '#', or a joiner such as "and"/"the": "JOEY", "Dr. Green",
    "Man 2", "Boy in the Cape"), or when the same label (in any case) opens another cue of the
    transcript, which is how lower-case names ("joey: hi" ... "joey: bye") are told from a colon
    inside a sentence ("listen to this: we won"). A colon without white space after it ("10:30")
    is never a label.
    """
    labels = [_speaker_label(body) for body in bodies]
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label[0].casefold()] = counts.get(label[0].casefold(), 0) + 1
    result: list[tuple[str | None, str]] = []
    for body, label in zip(bodies, labels, strict=True):
        if label is not None and (_looks_like_a_name(label[0]) or counts[label[0].casefold()] > 1):
            result.append(label)
        else:
            result.append((None, body))
    return result


def _parse_srt(text: str) -> list[_Cue]:
    cues = []
    for block in _blocks(text):
        lines = list(block)
        if "-->" not in lines[0][1]:
            if not lines[0][1].strip().isdigit():
                raise TranscriptError(
                    f"expected a cue number or a time range, got {lines[0][1]!r}", lines[0][0]
                )
            lines = lines[1:]
            if not lines:
                raise TranscriptError("cue number without a time range", block[0][0])
        number, timing = lines[0]
        start, end = _time_range(timing, number)
        body = " ".join(line.strip() for _, line in lines[1:])
        cues.append(
            _Cue(start, end, html.unescape(_TAG.sub("", body)).strip(), None, f"line {number}", number)
        )
    for cue, (speaker, body) in zip(cues, split_speaker([cue.text for cue in cues]), strict=True):
        cue.speaker, cue.text = speaker, body
    return cues


def _parse_vtt(text: str) -> list[_Cue]:
    blocks = _blocks(text)
    if not blocks or not blocks[0][0][1].startswith("WEBVTT"):
        raise TranscriptError("a WebVTT file must start with 'WEBVTT'", 1)
    cues = []
    for block in blocks[1:]:
        first = block[0][1]
        if first.startswith(("NOTE", "STYLE", "REGION")):
            continue
        lines = block if "-->" in first else block[1:]  # an optional cue identifier
        if not lines:
            raise TranscriptError("cue identifier without a time range", block[0][0])
        number, timing = lines[0]
        start, end = _time_range(timing, number)
        body = " ".join(line.strip() for _, line in lines[1:])
        voice = _VOICE.search(body)
        speaker = voice.group(1).strip() if voice else None
        cleaned = html.unescape(_TAG.sub("", body)).strip()
        cues.append(_Cue(start, end, cleaned, speaker, f"line {number}", number))
    return cues


def _seconds(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool):
        raise TranscriptError(f"{where}: '{name}' must be seconds or a timestamp, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_timestamp(value) if ":" in value else float(value)
        except ValueError as exc:
            raise TranscriptError(f"{where}: '{name}' {exc}") from exc
    else:
        raise TranscriptError(f"{where}: '{name}' must be seconds or a timestamp, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise TranscriptError(f"{where}: '{name}' must be a non-negative number, got {value!r}")
    return seconds


def _parse_segments(segments: Any) -> list[_Cue]:
    if isinstance(segments, dict) and "segments" in segments:
        segments = segments["segments"]
    if not isinstance(segments, list):
        raise TranscriptError("JSON transcript must be a list of {start, end, text, speaker?} segments")
    cues = []
    for index, segment in enumerate(segments):
        where = f"segment {index}"
        if not isinstance(segment, dict):
            raise TranscriptError(f"{where}: expected an object with start, end and text")
        for key in ("start", "end"):
            if key not in segment:
                raise TranscriptError(f"{where}: missing '{key}'")
        text = segment.get("text") or ""
        speaker = segment.get("speaker")
        if not isinstance(text, str) or (speaker is not None and not isinstance(speaker, str)):
            raise TranscriptError(f"{where}: 'text' and 'speaker' must be strings")
        start = _seconds(segment["start"], where, "start")
        end = _seconds(segment["end"], where, "end")
        cues.append(_Cue(start, end, text.strip(), speaker.strip() or None if speaker else None, where, None))
    return cues


def _decode(source: str | bytes, settings: Settings) -> str:
    if len(source) > settings.max_transcript_bytes:
        raise TranscriptError(f"transcript is larger than {settings.max_transcript_bytes} bytes")
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise TranscriptError("transcript is not UTF-8 text") from exc
    return source.removeprefix("\ufeff")


def parse_transcript(
    source: str | bytes | list[dict],
    media_duration: float | None,
    settings: Settings | None = None,
) -> TranscriptResult:
    """Utterances from an SRT, WebVTT or JSON transcript, checked against ``media_duration``."""
    settings = settings or get_settings()
    if isinstance(source, list | dict):
        cues = _parse_segments(source)
    else:
        text = _decode(source, settings)
        stripped = text.lstrip()
        if stripped.startswith("WEBVTT"):
            cues = _parse_vtt(stripped)
        elif stripped.startswith(("[", "{")):
            try:
                cues = _parse_segments(json.loads(stripped))
            except json.JSONDecodeError as exc:
                raise TranscriptError(f"invalid JSON: {exc.msg}", exc.lineno) from exc
        else:
            cues = _parse_srt(text)
    return _validate(cues, media_duration, settings)


def _validate(cues: list[_Cue], duration: float | None, settings: Settings) -> TranscriptResult:
    if not cues:
        raise TranscriptError("transcript has no cues")
    if len(cues) > settings.max_utterances:
        raise TranscriptError(f"transcript has {len(cues)} cues; the limit is {settings.max_utterances}")
    tolerance = settings.transcript_time_tolerance_seconds
    utterances: list[UtteranceMeta] = []
    clamped: list[str] = []
    previous_start = -1.0
    for cue in cues:
        if cue.end <= cue.start:
            raise TranscriptError(
                _message(cue, f"end {cue.end:.3f} s is not after start {cue.start:.3f} s"), cue.line
            )
        if cue.start < previous_start:
            raise TranscriptError(
                _message(
                    cue, f"starts at {cue.start:.3f} s, before the previous cue; cues must be in time order"
                ),
                cue.line,
            )
        previous_start = cue.start
        end = cue.end
        if duration is not None:
            if cue.start >= duration:
                raise TranscriptError(
                    _message(cue, f"starts at {cue.start:.3f} s, after the media ends ({duration:.3f} s)"),
                    cue.line,
                )
            if end > duration + tolerance:
                raise TranscriptError(
                    _message(
                        cue,
                        f"ends at {end:.3f} s, over {tolerance} s after the media ends ({duration:.3f} s)",
                    ),
                    cue.line,
                )
            if end > duration:
                clamped.append(f"{cue.where}: end {end:.3f} s clamped to the media's end {duration:.3f} s")
                end = duration
        utterances.append(UtteranceMeta(start=cue.start, end=end, text=cue.text, speaker=cue.speaker))
    return TranscriptResult(utterances=utterances, clamped=clamped)


def _message(cue: _Cue, text: str) -> str:
    # TranscriptError prefixes "line N: " itself; JSON segments name themselves here.
    return text if cue.line is not None else f"{cue.where}: {text}"


def window_utterances(duration: float, window_seconds: float) -> list[UtteranceMeta]:
    """Fixed windows covering [0, duration] without text; a last sliver shorter than a quarter
    window joins the window before it."""
    if duration <= 0 or window_seconds <= 0:
        raise ValueError("duration and window_seconds must be positive")
    bounds = []
    start = 0.0
    while start < duration - 1e-9:
        bounds.append([start, min(start + window_seconds, duration)])
        start += window_seconds
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < window_seconds / 4:
        last = bounds.pop()
        bounds[-1][1] = last[1]
    return [UtteranceMeta(start=round(s, 6), end=round(e, 6)) for s, e in bounds]
