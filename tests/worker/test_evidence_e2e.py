"""No evidence, no label; the client's modalities; the transcript's language — through the real
gateway, worker, model server (tiny checkpoint), PostgreSQL and Redis: results, SSE, exports,
summary and webhooks."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from shared.contract.labels import EMOTIONS
from tests.worker import api
from tests.worker.stack import wait_until
from tests.worker.test_e2e import register_endpoint, webhook_route

pytestmark = pytest.mark.slow


def test_an_analysis_without_evidence_succeeds_with_null_labels_and_says_so(api_url, clips, receiver):
    user = api.new_user(api_url)
    register_endpoint(user, receiver.url("/hooks/no-evidence"))
    hits = webhook_route(receiver, "/hooks/no-evidence")
    # No transcript, and only the text may be used: no utterance has anything to read.
    created = user.submit(video_url=clips.url("short.mp4"), options={"modalities": ["text"]})
    stream = user.events(created["id"])
    assert stream[-1].data["status"] == "succeeded"
    streamed = [e.data for e in stream if e.type == "utterance"]
    analysis = user.get(created["id"])
    utterances = analysis["utterances"]
    assert utterances and len(streamed) == len(utterances)
    for u, event in zip(utterances, streamed, strict=True):
        for shown in (u, event):
            assert shown["emotion"] is None and shown["sentiment"] is None
            assert shown["reason"] == "no_evidence" and shown["modalities_used"] == []
            assert shown["modality_scores"] == {}
            assert shown["modalities_masked"] == {"audio": "not_requested", "visual": "not_requested"}
    summary = analysis["summary"]
    assert summary["evidence"] == "none" and summary["labelled_utterances"] == 0
    assert summary["no_evidence_utterances"] == summary["utterances"] == len(utterances)
    assert summary["dominant_emotion"] is None and summary["dominant_sentiment"] is None
    assert set(summary["sentiment_share"].values()) == {0.0}
    assert [e.data for e in stream if e.type == "summary"] == [summary]

    exported = user.http.get(f"/v1/analyses/{created['id']}/export", params={"format": "json"}).json()
    assert [u["reason"] for u in exported["utterances"]] == ["no_evidence"] * len(utterances)
    rows = list(csv.DictReader(io.StringIO(user.http.get(
        f"/v1/analyses/{created['id']}/export", params={"format": "csv"}).text)))  # fmt: skip
    assert [(r["emotion"], r["sentiment"], r["reason"]) for r in rows] == [("", "", "no_evidence")] * len(
        rows
    )
    srt = user.http.get(f"/v1/analyses/{created['id']}/export", params={"format": "srt"}).text
    assert srt.count("[no evidence]") == len(utterances)
    assert not re.search("negative|neutral|positive", srt)

    wait_until(lambda: hits, 30, "the analysis.succeeded delivery")
    payload = json.loads(hits[0][1])
    assert payload["type"] == "analysis.succeeded" and payload["data"]["summary"]["evidence"] == "none"


FRENCH = (
    "1\n00:00:00,000 --> 00:00:02,000\nJe ne sais pas ce que tu veux dire.\n\n"
    "2\n00:00:02,000 --> 00:00:04,000\nTu viens ce soir chez Monica ?\n"
)


def test_a_french_transcript_is_not_read_by_an_english_text_encoder(api_url, clips):
    user = api.new_user(api_url)
    created = user.submit(video_url=clips.url("spoken.mp4"), transcript=FRENCH)
    analysis = user.wait(created["id"])
    assert analysis["status"] == "succeeded", analysis["error"]
    assert analysis["summary"]["language"]["code"] == "fr"
    for u in analysis["utterances"]:
        assert u["modalities_masked"].get("text") == "language_unsupported"
        assert "text" not in u["modalities_used"] and u["modalities_used"]  # audio and video still count
        assert u["emotion"]["label"] in EMOTIONS and list(u["modality_scores"]) == u["modalities_used"]


def test_requested_modalities_keep_their_own_scores_and_mask_the_rest(api_url, clips):
    user = api.new_user(api_url)
    created = user.submit(
        video_url=clips.url("spoken.mp4"),
        transcript=clips.spoken_srt,
        options={"modalities": ["text", "audio"]},
    )
    analysis = user.wait(created["id"])
    assert analysis["status"] == "succeeded", analysis["error"]
    assert analysis["summary"]["language"]["code"] == "en" and analysis["summary"]["evidence"] == "all"
    for u in analysis["utterances"]:
        assert "visual" not in u["modalities_used"] and "text" in u["modalities_used"]
        assert u["modalities_masked"]["visual"] == "not_requested"
        assert list(u["modality_scores"]) == u["modalities_used"]
