"""The analysis summary: shares weighted by speaking time, dominant labels, the timeline."""

from __future__ import annotations

import pytest

from services.platform.analyses.summary import summarise
from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.contract.predictions import LabelScores, UtterancePrediction


def prediction(
    start: float, end: float, emotion: str, sentiment: str, speaker: str | None = None
) -> UtterancePrediction:
    def scores(labels, label):
        probabilities = [0.9 if name == label else 0.1 / (len(labels) - 1) for name in labels]
        return LabelScores.from_probabilities(labels, probabilities)

    return UtterancePrediction(
        start=start,
        end=end,
        emotion=scores(EMOTIONS, emotion),
        sentiment=scores(SENTIMENTS, sentiment),
        modalities_used=["text"],
        speaker=speaker,
    )


def test_long_speech_outweighs_short_ones():
    predictions = [
        prediction(0, 8, "anger", "negative"),
        prediction(8, 9, "joy", "positive"),
        prediction(9, 10, "joy", "positive"),
    ]
    summary = summarise(predictions, duration=10.0)
    assert summary["dominant_emotion"] == "anger" and summary["dominant_sentiment"] == "negative"
    assert summary["emotion_share"]["anger"] == pytest.approx(0.8)
    assert summary["emotion_share"]["joy"] == pytest.approx(0.2)
    assert sum(summary["emotion_share"].values()) == pytest.approx(1.0)
    assert summary["utterances"] == 3


def test_timeline_spans_cover_the_video_and_share_by_overlap():
    predictions = [prediction(0, 10, "sadness", "negative"), prediction(10, 20, "surprise", "positive")]
    summary = summarise(predictions, duration=20.0)
    timeline = summary["timeline"]
    assert timeline[0]["start"] == 0.0 and timeline[-1]["end"] == 20.0
    assert [span["dominant_emotion"] for span in timeline] == ["sadness", "sadness", "surprise", "surprise"]
    assert all(span["end"] - span["start"] == pytest.approx(5.0) for span in timeline)


def test_long_videos_get_at_most_twenty_spans():
    summary = summarise([prediction(0, 600, "neutral", "neutral")], duration=3600.0)
    assert len(summary["timeline"]) == 20


def test_no_utterances_has_no_dominant_label():
    summary = summarise([], duration=5.0)
    assert summary["dominant_emotion"] is None and summary["utterances"] == 0
    assert summary["timeline"][0]["dominant_emotion"] is None


def test_per_speaker_shares_and_speaking_time_in_order_of_first_appearance():
    predictions = [
        prediction(4, 5, "joy", "positive", "S2"),
        prediction(0, 3, "anger", "negative", "S1"),
        prediction(5, 6, "anger", "negative", "S1"),
        prediction(6, 7, "joy", "positive", "S1"),
        prediction(7, 8, "fear", "negative"),  # no speaker: in the totals only
    ]
    summary = summarise(predictions, duration=8.0, transcript="none", segmentation="speech")
    assert (summary["transcript"], summary["segmentation"]) == ("none", "speech")
    first, second = summary["speakers"]
    assert (first["speaker"], first["utterances"], first["speaking_seconds"]) == ("S1", 3, 5.0)
    assert first["emotion_share"]["anger"] == pytest.approx(0.8) and first["dominant_emotion"] == "anger"
    assert first["sentiment_share"]["positive"] == pytest.approx(0.2)
    assert (second["speaker"], second["speaking_seconds"], second["dominant_sentiment"]) == (
        "S2",
        1.0,
        "positive",
    )
    assert summarise(predictions[-1:], duration=8.0)["speakers"] == []
