"""``moodreel dataset export``: users' corrections as a MELD-layout data set.

Only utterances whose owner consented to training and whose both labels (emotion and sentiment)
the owner set are exported; an utterance with one corrected head has no evidence for the other.
The directory is what ``services.model.training.data.meld`` reads unchanged::

    train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv   (MELD's columns and time format)
    train_splits/dia<D>_utt<U>.mp4  dev_splits_complete/...  (clips cut from the stored media)
    manifest.json                                            (counts, sha256 of every file)

``Dialogue_ID`` is derived from the analysis id and ``Utterance_ID`` is the utterance index, so
the same utterance has the same key in every export (a later export's row supersedes it). Whole
analyses go to one split: a stable hash of the analysis id sends about one in five to ``dev``,
the held-out slice the retraining guard scores. ``test`` is written with its header only. The
output is deterministic: the same corrections give byte-identical files (bit-exact encodes,
rows in key order, no clock in the manifest but the window asked for).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.model.training.data.meld import CLIP_DIRS, CSV_FILES
from shared.contract.features.media import input_args
from shared.db.models import Analysis, Upload, User, UtteranceResult
from shared.logging import get_logger
from shared.settings import Settings
from shared.storage import StorageError, get_storage

log = get_logger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "moodreel-corrections/1"
MELD_COLUMNS = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
)  # fmt: skip
# One analysis in DEV_SHARE goes to the held-out dev split (by a stable hash of its id).
DEV_SHARE = 5
# Clips are encoded small: the trainer's feature pipeline resamples to its FeatureSpec anyway.
CLIP_ARGS = (
    "-map", "0:v:0?", "-map", "0:a:0?", "-vf", "scale=-2:'min(360,ih)'", "-r", "10",
    "-c:v", "libx264", "-preset", "veryfast", "-crf", "28", "-pix_fmt", "yuv420p",
    "-c:a", "aac", "-ar", "16000", "-ac", "1", "-b:a", "64k",
    "-threads", "1", "-map_metadata", "-1", "-fflags", "+bitexact",
    "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-movflags", "+faststart",
)  # fmt: skip


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class CorrectedUtterance:
    analysis_id: uuid.UUID
    index: int
    start: float
    end: float
    text: str
    speaker: str | None
    emotion: str
    sentiment: str
    upload_key: str | None

    @property
    def dialogue_id(self) -> int:
        return dialogue_id(self.analysis_id)

    @property
    def split(self) -> str:
        return split_of(self.analysis_id)


def dialogue_id(analysis_id: uuid.UUID) -> int:
    """A stable integer per analysis (48 bits of its id: MELD's loader reads it with int())."""
    return int(analysis_id.hex[:12], 16)


def split_of(analysis_id: uuid.UUID) -> str:
    digest = hashlib.sha256(analysis_id.bytes).digest()
    return "dev" if digest[0] % DEV_SHARE == 0 else "train"


def meld_time(seconds: float) -> str:
    """MELD's ``HH:MM:SS,fff`` (the part after the comma is milliseconds, three digits)."""
    milliseconds = round(max(seconds, 0.0) * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def consented_corrections(
    session: Session, since: datetime | None, until: datetime
) -> tuple[list[CorrectedUtterance], Counter]:
    """Corrections in [since, until) by consenting owners, in (analysis, index) order."""
    statement = (
        select(UtteranceResult, Analysis.id, Upload.storage_key)
        .join(Analysis, Analysis.id == UtteranceResult.analysis_id)
        .join(User, User.id == Analysis.user_id)
        .outerjoin(Upload, Upload.id == Analysis.upload_id)
        .where(User.training_consent.is_(True), UtteranceResult.corrected_at.is_not(None))
        .where(UtteranceResult.corrected_at < until)
        .order_by(Analysis.id, UtteranceResult.index)
    )
    if since is not None:
        statement = statement.where(UtteranceResult.corrected_at >= since)
    counts: Counter = Counter()
    rows: list[CorrectedUtterance] = []
    for result, analysis_id, storage_key in session.execute(statement):
        if result.corrected_emotion is None or result.corrected_sentiment is None:
            counts["skipped_partial_label"] += 1
            continue
        rows.append(
            CorrectedUtterance(
                analysis_id=analysis_id,
                index=result.index,
                start=result.start,
                end=result.end,
                text=result.text or "",
                speaker=result.speaker,
                emotion=result.corrected_emotion,
                sentiment=result.corrected_sentiment,
                upload_key=storage_key,
            )
        )
    rows.sort(key=lambda row: (row.dialogue_id, row.index))
    return rows, counts


def cut_clip(media: Path, start: float, end: float, out: Path, settings: Settings) -> None:
    duration = max(end - start, 0.05)
    args = [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-ss", f"{start:.3f}", "-t", f"{duration:.3f}", *input_args(media), *CLIP_ARGS, str(out),
    ]  # fmt: skip
    try:
        subprocess.run(
            args,
            check=True,
            capture_output=True,
            timeout=settings.ffmpeg_timeout_seconds,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as exc:
        raise ExportError(exc.stderr.decode(errors="replace").strip()[-300:]) from exc
    except subprocess.TimeoutExpired as exc:
        raise ExportError("cutting the clip timed out") from exc


def _csv_text(rows: list[CorrectedUtterance]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MELD_COLUMNS)
    for number, row in enumerate(rows):
        # MELD's loader strips text and speaker; a line break inside a cell is quoted by csv.
        writer.writerow(
            [
                number,
                row.text,
                row.speaker or "",
                row.emotion,
                row.sentiment,
                row.dialogue_id,
                row.index,
                0,
                0,
                meld_time(row.start),
                meld_time(row.end),
            ]  # fmt: skip
        )
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_directory(
    session: Session, settings: Settings, out: Path, *, since: datetime | None, until: datetime
) -> dict:
    """Write the data set into ``out`` (created; must be empty) and return the manifest."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    rows, counts = consented_corrections(session, since, until)
    storage = get_storage(settings)
    by_split = {split: [row for row in rows if row.split == split] for split in CSV_FILES}
    with tempfile.TemporaryDirectory(prefix="moodreel-export-") as scratch:
        media_cache: dict[str, Path | None] = {}
        for split, split_rows in by_split.items():
            (out / CSV_FILES[split]).write_text(_csv_text(split_rows), encoding="utf-8")
            for row in split_rows:
                media = _media(storage, row, media_cache, Path(scratch), counts)
                if media is None:
                    continue
                folder = out / CLIP_DIRS[split]
                folder.mkdir(exist_ok=True)
                try:
                    cut_clip(
                        media,
                        row.start,
                        row.end,
                        folder / f"dia{row.dialogue_id}_utt{row.index}.mp4",
                        settings,
                    )
                except ExportError as exc:
                    counts["clip_failed"] += 1
                    log.warning(
                        "clip_failed", analysis_id=str(row.analysis_id), index=row.index, error=str(exc)
                    )
                else:
                    counts["clips"] += 1
    files = {
        path.relative_to(out).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "since": since.isoformat() if since else None,
        "until": until.isoformat(),
        "utterances": len(rows),
        "analyses": len({row.analysis_id for row in rows}),
        "splits": {split: len(split_rows) for split, split_rows in by_split.items()},
        "emotions": dict(sorted(Counter(row.emotion for row in rows).items())),
        "sentiments": dict(sorted(Counter(row.sentiment for row in rows).items())),
        "clips": counts["clips"],
        "clips_absent": counts["clip_absent"],
        "clips_failed": counts["clip_failed"],
        "skipped_partial_label": counts["skipped_partial_label"],
        "files": files,
        "sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("corrections_exported", out=str(out), utterances=len(rows), clips=counts["clips"])
    return manifest


def _media(storage, row: CorrectedUtterance, cache: dict, scratch: Path, counts: Counter) -> Path | None:
    """The analysis' stored media (downloaded once per analysis); None when it has none (a URL
    analysis keeps no copy): the row stays, text only."""
    if row.upload_key is None:
        counts["clip_absent"] += 1
        return None
    if row.upload_key not in cache:
        destination = scratch / f"{row.analysis_id}.media"
        try:
            storage.download_to(row.upload_key, destination)
        except StorageError as exc:
            log.warning("media_missing", analysis_id=str(row.analysis_id), error=str(exc))
            cache[row.upload_key] = None
        else:
            cache[row.upload_key] = destination
    if cache[row.upload_key] is None:
        counts["clip_absent"] += 1
    return cache[row.upload_key]


def upload_directory(directory: Path, uri: str, s3_client) -> list[str]:
    """Copy an export to ``s3://bucket/prefix/``; the manifest goes last, so an S3 notification
    on ``manifest.json`` sees a complete data set."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ExportError(f"not an s3:// URI: {uri!r}")
    prefix = prefix.strip("/")
    paths = sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != MANIFEST)
    keys = []
    for path in [*paths, Path(directory) / MANIFEST]:
        key = (
            f"{prefix}/{path.relative_to(directory).as_posix()}"
            if prefix
            else path.relative_to(directory).as_posix()
        )
        s3_client.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


def export(
    session: Session,
    settings: Settings,
    out: str,
    *,
    since: datetime | None,
    until: datetime | None = None,
    s3_client=None,
) -> dict:
    """Export to a directory or an ``s3://`` prefix; returns the manifest."""
    until = until or datetime.now(UTC)
    if not out.startswith("s3://"):
        return export_directory(session, settings, Path(out), since=since, until=until)
    with tempfile.TemporaryDirectory(prefix="moodreel-export-") as scratch:
        manifest = export_directory(session, settings, Path(scratch) / "export", since=since, until=until)
        if s3_client is None:
            from shared.storage import s3_client as make_client

            s3_client = make_client(settings)
        upload_directory(Path(scratch) / "export", out, s3_client)
    return manifest
