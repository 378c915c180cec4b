"""The result page of media without a transcript: the "words not analysed" notice, the speaker
strips and the speaker filter, over real HTTP (the gateway under uvicorn on a loopback port, a
migrated SQLite database, this machine's Redis)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from services.platform.analyses.summary import summarise
from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.contract.predictions import LabelScores, UtterancePrediction
from shared.db.models import Analysis, UtteranceResult
from tests.dashboard.helpers import local_gateway, signed_in_client, stored_for

SPOKEN = [(0.0, 2.0, "S1", "joy"), (2.5, 3.5, "S2", "anger"), (4.0, 7.0, "S1", "sadness")]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[str, str]]:
    with local_gateway(tmp_path_factory.mktemp("dashboard-speakers")) as running:
        yield running


def scores(labels, top):
    return {label: 0.7 if label == top else 0.3 / (len(labels) - 1) for label in labels}


def stored(database_url: str, email: str, transcript: str | None) -> uuid.UUID:
    predictions = [
        UtterancePrediction(
            start=start,
            end=end,
            text="" if transcript is None else f"words {i}",
            speaker=speaker,
            emotion=LabelScores.from_probabilities(EMOTIONS, list(scores(EMOTIONS, emotion).values())),
            sentiment=LabelScores.from_probabilities(SENTIMENTS, [0.6, 0.3, 0.1]),
            modalities_used=["audio"],
        )
        for i, (start, end, speaker, emotion) in enumerate(SPOKEN)
    ]
    kind = "none" if transcript is None else "srt"
    with stored_for(database_url, email) as (session, user_id):
        analysis = Analysis(
            user_id=user_id,
            status="succeeded",
            source_url="https://93.184.215.14/v.mp4",
            transcript=transcript,
            transcript_format=None if transcript is None else "srt",
            duration_seconds=8.0,
            summary=summarise(predictions, 8.0, transcript=kind, segmentation="speech"),
        )
        session.add(analysis)
        session.flush()
        for index, p in enumerate(predictions):
            session.add(
                UtteranceResult(
                    analysis_id=analysis.id,
                    index=index,
                    start=p.start,
                    end=p.end,
                    text=p.text,
                    speaker=p.speaker,
                    emotion=p.emotion.label,
                    emotion_scores=p.emotion.scores,
                    sentiment=p.sentiment.label,
                    sentiment_scores=p.sentiment.scores,
                    modalities=p.modalities_used,
                )
            )
        return analysis.id


def test_without_a_transcript_the_page_says_words_were_not_analysed(gateway):
    base_url, database_url = gateway
    client, email = signed_in_client(base_url)
    try:
        page = client.get(f"/dashboard/analyses/{stored(database_url, email, None)}").text
        assert "Words not analysed: add a transcript for text." in page
        assert "Utterances and speakers were found in the audio." in page
        assert page.count("data-words-not-analysed") == 3
        srt = "1\n00:00:00,000 --> 00:00:02,000\nwords\n"
        page = client.get(f"/dashboard/analyses/{stored(database_url, email, srt)}").text
        assert "Words not analysed" not in page and "data-words-not-analysed" not in page
    finally:
        client.close()


def test_speaker_strips_and_the_speaker_filter(gateway):
    base_url, database_url = gateway
    client, email = signed_in_client(base_url)
    try:
        analysis_id = stored(database_url, email, None)
        page = client.get(f"/dashboard/analyses/{analysis_id}").text
        strips = re.findall(r'data-speaker-strip="([^"]+)"', page)
        assert strips == ["S1", "S2"], "in order of first appearance"
        s1 = page[page.index('data-speaker-strip="S1"') : page.index('data-speaker-strip="S2"')]
        assert s1.count("<rect") == 2 and "data-speaking-time>0:05.0<" in s1 and "sadness" in s1
        assert page.count("data-utterance ") == 3
        only_s2 = client.get(f"/dashboard/analyses/{analysis_id}", params={"speaker": "S2"}).text
        assert only_s2.count("data-utterance ") == 1 and "data-speaker>S2<" in only_s2
        assert re.search(r'bg-indigo-600 text-white"[^>]*data-speaker-filter="S2"', only_s2)
        unknown = client.get(f"/dashboard/analyses/{analysis_id}", params={"speaker": "<b>x</b>"}).text
        assert unknown.count("data-utterance ") == 3 and "<b>x</b>" not in unknown
    finally:
        client.close()
