"""Corrections: the owner labels utterances (prediction kept), with who and when; results and
exports show them; the account's training consent is off until the user turns it on."""

from __future__ import annotations

import csv
import io
import uuid

from sqlalchemy import select

from shared.db.models import User, UtteranceResult
from tests.fixtures.db import engine_for
from tests.gateway.conftest import new_api_key, sign_up
from tests.platform.analyses.test_analyses import store_results, submit
from tests.platform.auth.test_auth import assert_problem


def label(client, key, analysis_id, index, body):
    return client.put(
        f"/v1/analyses/{analysis_id}/utterances/{index}/label", json=body, headers={"X-API-Key": key}
    )


def test_owner_corrects_an_utterance_and_the_prediction_is_kept(client, api_key, account, database_url):
    analysis_id = submit(client, api_key).json()["id"]
    store_results(database_url, analysis_id)
    response = label(client, api_key, analysis_id, 1, {"emotion": "sadness", "sentiment": "negative"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["index"] == 1 and body["emotion"]["label"] == "joy"  # the model's answer stays
    correction = body["correction"]
    assert correction["emotion"] == "sadness" and correction["sentiment"] == "negative"
    me = client.get("/v1/auth/me", headers=account.headers).json()
    assert correction["corrected_by"] == me["id"] and correction["corrected_at"]

    detail = client.get(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).json()
    assert [u["correction"] is not None for u in detail["utterances"]] == [False, True, False]
    assert detail["utterances"][1]["correction"] == correction

    # Only the sentiment now: the emotion is no longer corrected.
    only_sentiment = label(client, api_key, analysis_id, 1, {"sentiment": "neutral"}).json()
    assert only_sentiment["correction"]["emotion"] is None
    assert only_sentiment["correction"]["sentiment"] == "neutral"
    with engine_for(database_url).connect() as connection:
        row = connection.execute(
            select(UtteranceResult.emotion, UtteranceResult.corrected_sentiment).where(
                UtteranceResult.index == 1
            )
        ).one()
    assert tuple(row) == ("joy", "neutral")

    as_csv = client.get(f"/v1/analyses/{analysis_id}/export?format=csv", headers={"X-API-Key": api_key})
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["corrected_sentiment"] for r in rows] == ["", "neutral", ""]
    assert rows[1]["corrected_emotion"] == "" and rows[1]["corrected_at"]
    assert rows[1]["emotion"] == "joy"

    cleared = label(client, api_key, analysis_id, 1, {}).json()
    assert cleared["correction"] is None


def test_labels_outside_the_label_sets_are_422(client, api_key, database_url):
    analysis_id = submit(client, api_key).json()["id"]
    store_results(database_url, analysis_id)
    for body in ({"emotion": "happy"}, {"sentiment": "joy"}, {"emotion": "joy", "extra": 1}):
        assert_problem(label(client, api_key, analysis_id, 0, body), 422, "validation_error")
    assert_problem(label(client, api_key, analysis_id, 9, {"emotion": "joy"}), 404, "utterance_not_found")
    assert_problem(label(client, api_key, analysis_id, -1, {"emotion": "joy"}), 422, "validation_error")


def test_other_users_cannot_correct_and_reading_keys_cannot_write(client, api_key, database_url):
    analysis_id = submit(client, api_key).json()["id"]
    store_results(database_url, analysis_id)
    stranger = new_api_key(client, sign_up(client))["key"]
    assert_problem(label(client, stranger, analysis_id, 0, {"emotion": "fear"}), 404, "analysis_not_found")
    missing = label(client, api_key, str(uuid.uuid4()), 0, {"emotion": "fear"})
    assert_problem(missing, 404, "analysis_not_found")
    reader = new_api_key(client, sign_up(client), scopes=("analyses:read",))["key"]
    assert_problem(label(client, reader, analysis_id, 0, {"emotion": "fear"}), 403, "forbidden")
    with engine_for(database_url).connect() as connection:
        assert connection.execute(select(UtteranceResult.corrected_at)).scalars().all() == [None] * 3


def test_training_consent_is_off_by_default_and_only_the_user_changes_it(
    client, account, api_key, database_url
):
    assert client.get("/v1/auth/me", headers=account.headers).json()["training_consent"] is False
    by_key = client.patch("/v1/auth/me", json={"training_consent": True}, headers={"X-API-Key": api_key})
    assert_problem(by_key, 403, "forbidden")
    changed = client.patch("/v1/auth/me", json={"training_consent": True}, headers=account.headers)
    assert changed.status_code == 200 and changed.json()["training_consent"] is True
    with engine_for(database_url).connect() as connection:
        assert connection.execute(select(User.training_consent)).scalar_one() is True
    assert_problem(
        client.patch("/v1/auth/me", json={"training_consent": "maybe"}, headers=account.headers),
        422,
        "validation_error",
    )
    off = client.patch("/v1/auth/me", json={"training_consent": False}, headers=account.headers)
    assert off.json()["training_consent"] is False


def test_the_workers_utterance_event_has_the_public_result_shape():
    from services.platform.analyses.jobs import utterance_event
    from services.platform.analyses.repository import utterance_row
    from services.platform.analyses.schemas import UtteranceResultPublic
    from shared.contract.labels import EMOTIONS, SENTIMENTS
    from shared.contract.predictions import LabelScores, UtterancePrediction

    prediction = UtterancePrediction(
        start=0.0,
        end=1.0,
        text="hi",
        emotion=LabelScores.from_probabilities(EMOTIONS, [1 / 7] * 7),
        sentiment=LabelScores.from_probabilities(SENTIMENTS, [1 / 3] * 3),
        modalities_used=["text"],
    )
    event = utterance_event(utterance_row(uuid.uuid4(), 3, prediction), "none")
    assert set(event) == set(UtteranceResultPublic.model_fields)
    assert event["index"] == 3 and event["emotion"] == prediction.emotion.model_dump(mode="json")
    assert UtteranceResultPublic.model_validate(event).correction is None
    assert event["transcript"] == "none"
