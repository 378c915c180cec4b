"""The dashboard shows an utterance without evidence greyed with its reason, says when a whole
analysis had none, and its form sends the chosen modalities (real HTTP, migrated SQLite)."""

from __future__ import annotations

import uuid

from sqlalchemy import create_engine, select

from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.db.models import Analysis, UtteranceResult
from tests.dashboard.helpers import csrf_from, signed_in_client, stored_for
from tests.dashboard.test_dashboard_labels import gateway  # noqa: F401  (the module's live gateway)

NO_EVIDENCE_SUMMARY = {
    "utterances": 1,
    "labelled_utterances": 0,
    "no_evidence_utterances": 1,
    "evidence": "none",
    "dominant_emotion": None,
    "dominant_sentiment": None,
    "emotion_share": dict.fromkeys(EMOTIONS, 0.0),
    "sentiment_share": dict.fromkeys(SENTIMENTS, 0.0),
    "timeline": [],
}

PARTIAL_SUMMARY = NO_EVIDENCE_SUMMARY | {
    "utterances": 2,
    "labelled_utterances": 1,
    "evidence": "partial",
    "dominant_emotion": "joy",
    "dominant_sentiment": "positive",
}


def stored_analysis(database_url: str, email: str, *, labelled: bool) -> uuid.UUID:
    with stored_for(database_url, email) as (session, user_id):
        analysis = Analysis(
            user_id=user_id,
            status="succeeded",
            source_url="https://93.184.215.14/v.mp4",
            summary=PARTIAL_SUMMARY if labelled else NO_EVIDENCE_SUMMARY,
        )
        session.add(analysis)
        session.flush()
        rows = [dict(emotion=None, emotion_scores=None, sentiment=None, sentiment_scores=None)]
        rows[0] |= {
            "reason": "no_evidence",
            "modalities_masked": {"audio": "no_speech", "visual": "not_requested"},
        }
        if labelled:
            rows.append(
                dict(
                    emotion="joy",
                    emotion_scores={label: 0.5 if label == "joy" else 0.08 for label in EMOTIONS},
                    sentiment="positive",
                    sentiment_scores={label: 0.6 if label == "positive" else 0.2 for label in SENTIMENTS},
                    modalities=["audio"],
                )
            )
        for index, row in enumerate(rows):
            session.add(
                UtteranceResult(
                    analysis_id=analysis.id, index=index, start=float(index), end=index + 0.9, **row
                )
            )
        return analysis.id


def test_an_utterance_without_evidence_is_greyed_with_its_reason(gateway):  # noqa: F811
    base_url, database_url = gateway
    client, email = signed_in_client(base_url)
    try:
        page = client.get(f"/dashboard/analyses/{stored_analysis(database_url, email, labelled=True)}")
        assert page.status_code == 200, page.text
        card = page.text.split('data-index="0"', 1)[1].split("</article>", 1)[0]
        assert 'data-reason="no_evidence"' in card and "no label · no evidence" in card
        assert 'data-masked="audio">audio: no speech' in card and "visual: not requested" in card
        before = page.text.split('data-index="0"', 1)[0]
        assert "opacity-60" in before.rsplit("<article", 1)[1]
        assert "data-no-evidence" not in page.text and "1 of 2 utterances had no evidence" in page.text
        labelled = page.text.split('data-index="1"', 1)[1].split("</article>", 1)[0]
        assert "data-reason" not in labelled and "joy 50%" in labelled

        whole = client.get(f"/dashboard/analyses/{stored_analysis(database_url, email, labelled=False)}")
        assert whole.status_code == 200 and "data-no-evidence" in whole.text
        dominant = whole.text.split("data-dominant-sentiment", 1)[1].split("</div>", 1)[0]
        assert "negative" not in dominant and "—" in dominant
    finally:
        client.close()


def test_the_form_sends_the_chosen_modalities(gateway):  # noqa: F811
    base_url, database_url = gateway
    client, _ = signed_in_client(base_url)
    try:
        form_page = client.get("/dashboard/analyses/new")
        assert form_page.text.count('type="checkbox" name="modality_') == 3
        token = csrf_from(form_page)
        base = {"csrf_token": token, "video_url": "https://93.184.215.14/a.mp4", "modalities_shown": "1"}
        none = client.post("/dashboard/analyses", data=base)
        assert none.status_code == 422 and "Choose at least one modality" in none.text
        created = client.post(
            "/dashboard/analyses", data=base | {"modality_text": "1", "modality_audio": "1"}
        )
        assert created.status_code == 303, created.text
        every = client.post("/dashboard/analyses", data=base | {f"modality_{m}": "1" for m in MODALITIES})
        assert every.status_code == 303, every.text
        stored = {}
        engine = create_engine(database_url)
        with engine.connect() as connection:
            for response in (created, every):
                analysis_id = uuid.UUID(response.headers["location"].rsplit("/", 1)[1])
                stored[response] = connection.execute(
                    select(Analysis.options).where(Analysis.id == analysis_id)
                ).scalar_one()
        engine.dispose()
        assert stored[created] == {"modalities": ["text", "audio"]}
        assert "modalities" not in stored[every]  # all of them: the default
    finally:
        client.close()
