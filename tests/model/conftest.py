"""A miniature MELD directory (label CSVs in MELD's format + generated clips) for model tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from services.model.testing import TINY_SPEC
from services.model.training.data.meld import CLIP_DIRS, CSV_FILES
from tests import mediagen

COLUMNS = [
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
]  # fmt: skip
# Two easily separable classes: what is said, the tone heard and the colour seen all agree.
CLASSES = {
    "joy": ("positive", "I love this, it is wonderful!", 1200, "red"),
    "anger": ("negative", "I hate this, it is awful!", 300, "blue"),
}


def _row(number: int, dialogue: int, utterance: int, emotion: str, start: str = "0:00:01,5") -> dict:
    sentiment, text, _, _ = CLASSES[emotion]
    return {
        "Sr No.": number, "Utterance": text, "Speaker": "Monica" if utterance % 2 else "Ross",
        "Emotion": emotion, "Sentiment": sentiment, "Dialogue_ID": dialogue, "Utterance_ID": utterance,
        "Season": 1, "Episode": 1, "StartTime": start, "EndTime": "00:00:03,25",
    }  # fmt: skip


def write_split(directory: Path, split: str, rows: list[dict]) -> None:
    with (directory / CSV_FILES[split]).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def clip(directory: Path, split: str, name: str, emotion: str) -> Path:
    _, _, tone, colour = CLASSES[emotion]
    folder = directory / CLIP_DIRS[split]
    folder.mkdir(exist_ok=True)
    return mediagen.make_clip(
        folder / name,
        duration=1.5,
        size=(64, 48),
        fps=8,
        tone_hz=tone,
        video_source=f"color=c={colour}:s=64x48:r=8",
    )


@pytest.fixture(scope="session")
def mini_meld(tmp_path_factory) -> Path:
    """train: 8 rows in 2 dialogues (one clip absent, dia125_utt3 is MELD's known-corrupt clip);
    dev: 4 rows; test: 4 rows, one clip with the ``final_videos_test`` prefix."""
    directory = tmp_path_factory.mktemp("meld")
    emotions = ["joy", "anger"] * 4
    train = [_row(i, 1 + i // 4, i % 4, e) for i, e in enumerate(emotions)]
    train[-1] = _row(7, 125, 3, "anger")
    write_split(directory, "train", train)
    for row in train:
        name = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4"
        if row["Sr No."] == 2:
            continue  # absent clip
        clip(directory, "train", name, row["Emotion"])
    dev = [_row(i, 0, i, e) for i, e in enumerate(["joy", "anger", "anger", "joy"])]
    write_split(directory, "dev", dev)
    for row in dev:
        clip(directory, "dev", f"dia0_utt{row['Utterance_ID']}.mp4", row["Emotion"])
    test = [_row(i, 3, i, e, start="00:00:01,28") for i, e in enumerate(["anger", "joy", "joy", "anger"])]
    write_split(directory, "test", test)
    for row in test:
        prefix = "final_videos_test" if row["Utterance_ID"] == 0 else ""
        clip(directory, "test", f"{prefix}dia3_utt{row['Utterance_ID']}.mp4", row["Emotion"])
    return directory


@pytest.fixture
def spec():
    return TINY_SPEC
