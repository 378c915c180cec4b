"""MELD: the label CSVs (always) and the MELD.Raw clip folders (when present).

Rows are keyed by (Dialogue_ID, Utterance_ID) — "Sr No." repeats — and ordered by Utterance_ID
inside a dialogue, which is the dialogue context the text features see. Times are MELD's
``H:MM:SS,fff`` where the part after the comma is a fraction of a second (``,28`` is 0.28 s).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.model.training.data.examples import TEXT_TENSORS, ExampleSet
from shared.contract.bundle import UtteranceMeta
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.text import tokenize_utterances
from shared.contract.features.transcripts import parse_timestamp
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS

SPLITS = ("train", "dev", "test")
CSV_FILES = {split: f"{split}_sent_emo.csv" for split in SPLITS}
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
# Known bad clips of MELD.Raw (see shared/meld/FACTS.md): skipped with a counted report.
KNOWN_BAD_CLIPS = {("train", 125, 3): "corrupt", ("dev", 110, 7): "missing"}
# Longer clips are mis-cut (test dia38_utt4 is 305 s): their media is clamped to this length.
MAX_CLIP_SECONDS = 30.0
# MELD's own shape ([H]H:MM:SS,f-fff); the arithmetic is the transcript parser's.
_MELD_TIME = re.compile(r"^\d{1,2}:\d{2}:\d{2},\d{1,3}$")


class MeldError(ValueError):
    pass


def parse_meld_time(value: str) -> float:
    """Seconds of a MELD timestamp; the digits after the comma are a decimal fraction."""
    if not _MELD_TIME.match(value.strip()):
        raise MeldError(f"not a MELD timestamp: {value!r}")
    try:
        return parse_timestamp(value.strip())
    except ValueError as exc:
        raise MeldError(f"not a MELD timestamp: {value!r}") from exc


@dataclass(frozen=True)
class MeldUtterance:
    split: str
    dialogue_id: int
    utterance_id: int
    text: str
    speaker: str
    emotion: int  # index into shared.contract.labels.EMOTIONS
    sentiment: int  # index into shared.contract.labels.SENTIMENTS
    start: float
    end: float

    @property
    def key(self) -> tuple[int, int]:
        return (self.dialogue_id, self.utterance_id)

    @property
    def clip_name(self) -> str:
        return f"dia{self.dialogue_id}_utt{self.utterance_id}.mp4"

    def meta(self) -> UtteranceMeta:
        return UtteranceMeta(start=self.start, end=self.end, text=self.text, speaker=self.speaker)


@dataclass
class MeldSplit:
    split: str
    utterances: list[MeldUtterance]
    report: Counter = field(default_factory=Counter)

    def dialogues(self) -> list[list[MeldUtterance]]:
        """Utterances grouped by dialogue, each in Utterance_ID order."""
        grouped: dict[int, list[MeldUtterance]] = {}
        for utterance in self.utterances:
            grouped.setdefault(utterance.dialogue_id, []).append(utterance)
        return [sorted(rows, key=lambda u: u.utterance_id) for _, rows in sorted(grouped.items())]


def read_split(meld_dir: Path, split: str) -> MeldSplit:
    """Parse one label CSV; duplicate keys keep the first row and are counted in ``report``."""
    if split not in CSV_FILES:
        raise MeldError(f"unknown MELD split {split!r} (one of {', '.join(SPLITS)})")
    path = Path(meld_dir) / CSV_FILES[split]
    if not path.is_file():
        raise MeldError(f"MELD label file not found: {path} (set MELD_DIR)")
    report: Counter = Counter()
    seen: dict[tuple[int, int], MeldUtterance] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            start, end = parse_meld_time(row["StartTime"]), parse_meld_time(row["EndTime"])
            if end < start:
                report["end_before_start"] += 1
                end = start
            utterance = MeldUtterance(
                split=split,
                dialogue_id=int(row["Dialogue_ID"]),
                utterance_id=int(row["Utterance_ID"]),
                text=row["Utterance"].strip(),
                speaker=row["Speaker"].strip(),
                emotion=EMOTIONS.index(row["Emotion"].strip().lower()),
                sentiment=SENTIMENTS.index(row["Sentiment"].strip().lower()),
                start=start,
                end=end,
            )
            if utterance.key in seen:
                report["duplicate_key"] += 1
                continue
            seen[utterance.key] = utterance
    report["rows"] = len(seen)
    ordered = sorted(seen.values(), key=lambda u: u.key)
    return MeldSplit(split=split, utterances=ordered, report=report)


def clip_path(meld_dir: Path, utterance: MeldUtterance) -> Path | None:
    """The utterance's MELD.Raw clip, or None when absent (text-only mode).

    Some test clips carry a ``final_videos_test`` prefix in the raw release.
    """
    folder = Path(meld_dir) / CLIP_DIRS[utterance.split]
    for name in (utterance.clip_name, f"final_videos_test{utterance.clip_name}"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def clip_status(meld_dir: Path, utterance: MeldUtterance) -> tuple[Path | None, str]:
    """(path, status): status is "ok", "clamped" (mis-cut, over MAX_CLIP_SECONDS), a known-bad
    reason, or "absent"."""
    bad = KNOWN_BAD_CLIPS.get((utterance.split, utterance.dialogue_id, utterance.utterance_id))
    if bad:
        return None, bad
    path = clip_path(meld_dir, utterance)
    if path is None:
        return None, "absent"
    if utterance.end - utterance.start > MAX_CLIP_SECONDS:
        return path, "clamped"
    return path, "ok"


def clips_available(meld_dir: Path) -> bool:
    return any((Path(meld_dir) / folder).is_dir() for folder in CLIP_DIRS.values())


def text_examples(data: MeldSplit, spec: FeatureSpec) -> ExampleSet:
    """Token ids of every utterance, with the dialogue context the spec asks for."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in TEXT_TENSORS}
    ordered: list[MeldUtterance] = []
    for dialogue in data.dialogues():
        tokens = tokenize_utterances([u.meta() for u in dialogue], spec)
        for name in TEXT_TENSORS:
            parts[name].append(tokens[name])
        ordered += dialogue
    count = len(ordered)
    modality_mask = torch.zeros(count, len(MODALITIES), dtype=torch.bool)
    modality_mask[:, MODALITIES.index("text")] = torch.tensor([bool(u.text) for u in ordered])
    return ExampleSet(
        tensors={name: torch.cat(chunks) for name, chunks in parts.items()},
        modality_mask=modality_mask,
        emotion=torch.tensor([u.emotion for u in ordered], dtype=torch.int64),
        sentiment=torch.tensor([u.sentiment for u in ordered], dtype=torch.int64),
    )


def load_text_examples(meld_dir: Path, split: str, spec: FeatureSpec, cache_dir: Path | None) -> ExampleSet:
    """``text_examples`` of a split, cached per spec hash so runs after the first skip tokenising."""
    cache = Path(cache_dir) / spec.hash / f"{split}-text.safetensors" if cache_dir else None
    if cache is not None and cache.is_file():
        return ExampleSet.load(cache)
    examples = text_examples(read_split(meld_dir, split), spec)
    if cache is not None:
        examples.save(cache)
    return examples


def _clip_features(
    path: Path, utterance: MeldUtterance, spec: FeatureSpec, settings
) -> dict[str, np.ndarray]:
    """Audio and visual tensors of one clip (the whole clip is the utterance, clamped if mis-cut)."""
    from shared.contract.features.media import probe
    from shared.contract.features.pipeline import extract_features

    duration = min(probe(path, settings).duration, MAX_CLIP_SECONDS)
    segment = {"start": 0.0, "end": duration, "text": utterance.text, "speaker": utterance.speaker}
    bundle = extract_features(path, spec, [segment], settings=settings)
    return {name: getattr(bundle, name)[0] for name in ("log_mel", "audio_mask", "frames", "modality_mask")}


def clip_examples(
    meld_dir: Path,
    split: str,
    spec: FeatureSpec,
    cache_dir: Path,
    *,
    settings=None,
    shard_size: int = 256,
    progress: bool = False,
) -> tuple[ExampleSet, Counter]:
    """Text + audio + visual rows of a split. Each clip runs through the shared feature pipeline
    once: results are kept in safetensors shards of ``shard_size`` rows under
    ``cache_dir/<spec hash>/``, so epochs (and later runs) never decode video again. Rows whose clip
    is absent, known bad or undecodable keep their text and are counted in the report."""
    from tqdm import tqdm

    from shared.contract.features.media import MediaError
    from shared.contract.features.transcripts import TranscriptError

    data = read_split(meld_dir, split)
    examples = text_examples(data, spec)
    ordered = [u for dialogue in data.dialogues() for u in dialogue]
    directory = Path(cache_dir) / spec.hash
    directory.mkdir(parents=True, exist_ok=True)
    report_path = directory / f"{split}-clips-report.json"
    report: Counter = Counter(json.loads(report_path.read_text())) if report_path.is_file() else Counter()
    shards: list[ExampleSet] = []
    starts = range(0, len(ordered), shard_size)
    for number, start in enumerate(tqdm(starts, desc=f"{split} clips", disable=not progress)):
        shard_path = directory / f"{split}-clips-{number:04d}.safetensors"
        if shard_path.is_file():
            shards.append(ExampleSet.load(shard_path))
            continue
        rows = ordered[start : start + shard_size]
        tensors = {
            "log_mel": np.zeros((len(rows), spec.n_mels, spec.max_audio_frames), np.float16),
            "audio_mask": np.zeros((len(rows), spec.max_audio_frames), bool),
            "frames": np.zeros(
                (len(rows), spec.frames_per_utterance, 3, spec.frame_size, spec.frame_size), np.uint8
            ),
        }
        mask = np.zeros((len(rows), len(MODALITIES)), bool)
        for index, utterance in enumerate(rows):
            path, status = clip_status(meld_dir, utterance)
            if path is not None:
                try:
                    features = _clip_features(path, utterance, spec, settings)
                except (MediaError, TranscriptError) as exc:
                    status = f"unreadable_{getattr(exc, 'code', 'error')}"
                else:
                    for name in tensors:
                        tensors[name][index] = features[name]
                    mask[index, 1:] = features["modality_mask"][1:]
            report[status] += 1
        shard = ExampleSet(
            tensors={name: torch.from_numpy(array) for name, array in tensors.items()},
            modality_mask=torch.from_numpy(mask),
            emotion=torch.tensor([u.emotion for u in rows]),
            sentiment=torch.tensor([u.sentiment for u in rows]),
        )
        shard.save(shard_path)
        report_path.write_text(json.dumps(report, sort_keys=True))
        shards.append(shard)
    clips = ExampleSet.concat(shards)
    examples.tensors |= clips.tensors
    examples.modality_mask = examples.modality_mask | clips.modality_mask
    return examples, report
