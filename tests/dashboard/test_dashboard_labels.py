"""The dashboard's label picker and training-consent switch over real HTTP (the gateway under
uvicorn on a loopback port, a migrated SQLite database, this machine's Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select

from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.db.models import Analysis, UtteranceResult
from tests.dashboard.helpers import csrf_from, local_gateway, signed_in_client, stored_for


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[str, str]]:
    with local_gateway(tmp_path_factory.mktemp("dashboard-labels")) as running:
        yield running


def scored_analysis(database_url: str, email: str) -> uuid.UUID:
    with stored_for(database_url, email) as (session, user_id):
        analysis = Analysis(user_id=user_id, status="succeeded", source_url="https://93.184.215.14/v.mp4")
        session.add(analysis)
        session.flush()
        for index in range(2):
            session.add(
                UtteranceResult(
                    analysis_id=analysis.id,
                    index=index,
                    start=float(index),
                    end=index + 0.9,
                    text=f"line {index}",
                    emotion="joy",
                    emotion_scores={label: 0.5 if label == "joy" else 0.08 for label in EMOTIONS},
                    sentiment="positive",
                    sentiment_scores={label: 0.6 if label == "positive" else 0.2 for label in SENTIMENTS},
                    modalities=["text"],
                )
            )
        return analysis.id


def test_label_picker_corrects_a_card(gateway):
    base_url, database_url = gateway
    client, email = signed_in_client(base_url)
    try:
        analysis_id = scored_analysis(database_url, email)
        page = client.get(f"/dashboard/analyses/{analysis_id}")
        assert page.status_code == 200 and page.text.count("data-label-picker") == 2
        assert 'hx-target="closest article"' in page.text
        token = csrf_from(page)
        path = f"/dashboard/analyses/{analysis_id}/utterances/1/label"
        form = {"csrf_token": token, "emotion": "sadness", "sentiment": "negative", "action": "save"}
        assert (
            client.post(
                path, data={**form, "csrf_token": "x" * 64}, headers={"HX-Request": "true"}
            ).status_code
            == 403
        )
        card = client.post(path, data=form, headers={"HX-Request": "true"})
        assert card.status_code == 200
        assert "data-correction" in card.text and "<html" not in card.text
        assert '<option value="sadness" selected>' in card.text and 'data-index="1"' in card.text

        page = client.get(f"/dashboard/analyses/{analysis_id}")
        assert page.text.count("data-correction") == 1 and "data-corrected-emotion>sadness<" in page.text
        engine = create_engine(database_url)
        with engine.connect() as connection:
            row = connection.execute(
                select(UtteranceResult.emotion, UtteranceResult.corrected_emotion).where(
                    UtteranceResult.index == 1
                )
            ).one()
        engine.dispose()
        assert tuple(row) == ("joy", "sadness")

        invalid = client.post(path, data={**form, "emotion": "happy"}, headers={"HX-Request": "true"})
        assert invalid.status_code == 422 and "data-label-error" in invalid.text
        cleared = client.post(path, data={**form, "action": "clear"}, headers={"HX-Request": "true"})
        assert cleared.status_code == 200 and "data-correction" not in cleared.text
        without_htmx = client.post(path, data=form)
        assert without_htmx.status_code == 303
        assert without_htmx.headers["location"] == f"/dashboard/analyses/{analysis_id}"
    finally:
        client.close()


def test_other_users_cannot_label_and_consent_is_a_setting(gateway):
    base_url, database_url = gateway
    owner, email = signed_in_client(base_url)
    stranger, _ = signed_in_client(base_url)
    try:
        analysis_id = scored_analysis(database_url, email)
        token = csrf_from(stranger.get("/dashboard/keys"))
        refused = stranger.post(
            f"/dashboard/analyses/{analysis_id}/utterances/0/label",
            data={"csrf_token": token, "emotion": "fear", "sentiment": "negative"},
            headers={"HX-Request": "true"},
        )
        assert refused.status_code == 404

        keys = owner.get("/dashboard/keys")
        assert "data-training-consent" in keys.text
        assert 'name="consent" value="true" checked' not in keys.text
        token = csrf_from(keys)
        saved = owner.post(
            "/dashboard/account/training-consent", data={"csrf_token": token, "consent": "true"}
        )
        assert saved.status_code == 303
        assert 'name="consent" value="true" checked' in owner.get("/dashboard/keys").text
        owner.post("/dashboard/account/training-consent", data={"csrf_token": token})
        assert 'name="consent" value="true" checked' not in owner.get("/dashboard/keys").text
    finally:
        owner.close()
        stranger.close()
