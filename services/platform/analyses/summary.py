"""The per-analysis summary: dominant emotion and sentiment, emotion share over time, and the
same per speaker.

Shares are weighted by speaking time (utterance duration), so one long angry speech outweighs two
short "okay"s; a timeline splits the video into at most ``MAX_BUCKETS`` equal spans and gives the
emotion share of the speech overlapping each. ``speakers`` lists every named speaker in order of
first appearance with their speaking time and their own shares; ``transcript`` says which
transcript the words came from ("none": the words were not analysed) and ``segmentation`` how the
utterances were found ("transcript", "speech" or "windows"). Utterances without evidence (null
labels) are left out of every share and counted apart: an analysis with none labelled has no
dominant emotion or sentiment (``evidence: "none"``), never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.contract.predictions import UtterancePrediction

MAX_BUCKETS = 20
MIN_BUCKET_SECONDS = 5.0


def _shares(weights: dict[str, float], labels: tuple[str, ...]) -> dict[str, float]:
    total = sum(weights.values())
    return {label: round(weights.get(label, 0.0) / total, 4) if total else 0.0 for label in labels}


def _dominant(weights: dict[str, float], labels: tuple[str, ...]) -> str | None:
    if not any(weights.values()):
        return None
    # Ties go to the label order of shared.contract.labels, so the result is deterministic.
    return max(labels, key=lambda label: weights.get(label, 0.0))


def _weight(prediction: UtterancePrediction) -> float:
    # Zero-length utterances (point captions) still count a little.
    return max(prediction.end - prediction.start, 0.01)


def _label_summary(predictions: Sequence[UtterancePrediction]) -> dict[str, Any]:
    emotion_time: dict[str, float] = {}
    sentiment_time: dict[str, float] = {}
    for p in predictions:
        emotion_time[p.emotion.label] = emotion_time.get(p.emotion.label, 0.0) + _weight(p)
        sentiment_time[p.sentiment.label] = sentiment_time.get(p.sentiment.label, 0.0) + _weight(p)
    return {
        "dominant_emotion": _dominant(emotion_time, EMOTIONS),
        "dominant_sentiment": _dominant(sentiment_time, SENTIMENTS),
        "emotion_share": _shares(emotion_time, EMOTIONS),
        "sentiment_share": _shares(sentiment_time, SENTIMENTS),
    }


def _speakers(predictions: Sequence[UtterancePrediction]) -> list[dict[str, Any]]:
    by_speaker: dict[str, list[UtterancePrediction]] = {}
    for p in sorted(predictions, key=lambda p: p.start):
        if p.speaker:
            by_speaker.setdefault(p.speaker, []).append(p)
    return [
        {
            "speaker": speaker,
            "utterances": len(spoken),
            "speaking_seconds": round(sum(max(p.end - p.start, 0.0) for p in spoken), 3),
            **_label_summary(spoken),
        }
        for speaker, spoken in by_speaker.items()
    ]


def summarise(
    predictions: Sequence[UtterancePrediction],
    duration: float,
    *,
    transcript: str = "none",
    segmentation: str | None = None,
    language: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``language``: the transcript's detected language (shared.contract.features.language), as is."""
    unlabelled = sum(1 for p in predictions if p.emotion is None or p.sentiment is None)
    predictions = [p for p in predictions if p.emotion is not None and p.sentiment is not None]
    span = max(duration, max((p.end for p in predictions), default=0.0))
    bucket = max(MIN_BUCKET_SECONDS, span / MAX_BUCKETS) if span > 0 else MIN_BUCKET_SECONDS
    timeline = []
    for i in range(max(1, math.ceil(span / bucket))):
        lo, hi = i * bucket, min(span, (i + 1) * bucket)
        overlap: dict[str, float] = {}
        for p in predictions:
            shared_time = min(hi, p.end) - max(lo, p.start)
            if shared_time > 0:
                overlap[p.emotion.label] = overlap.get(p.emotion.label, 0.0) + shared_time
        timeline.append(
            {
                "start": round(lo, 3),
                "end": round(hi, 3),
                "dominant_emotion": _dominant(overlap, EMOTIONS),
                "emotion_share": _shares(overlap, EMOTIONS),
            }
        )
    return {
        "utterances": len(predictions) + unlabelled,
        "labelled_utterances": len(predictions),
        "no_evidence_utterances": unlabelled,
        "evidence": "none" if not predictions else ("partial" if unlabelled else "all"),
        "language": language,
        "duration_seconds": round(duration, 3),
        "transcript": transcript,
        "segmentation": segmentation,
        **_label_summary(predictions),
        "timeline": timeline,
        "speakers": _speakers(predictions),
    }
