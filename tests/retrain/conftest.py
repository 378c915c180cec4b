"""Corrected analyses in a real database, with uploaded media in local storage."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.retrain.dataset import split_of
from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.db.models import Analysis, Upload, User, UtteranceResult
from shared.db.session import make_session_factory, session_scope
from shared.settings import Settings
from tests import mediagen
from tests.fixtures.db import empty_all_tables, engine_for

CORRECTED_AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)


def analysis_id_in(split: str, seed: str) -> uuid.UUID:
    """A deterministic analysis id that the export sends to ``split``."""
    for number in range(1000):
        candidate = uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}-{number}")
        if split_of(candidate) == split:
            return candidate
    raise AssertionError("no id found")


@dataclass
class Corpus:
    settings: Settings
    database_url: str
    consenting: uuid.UUID
    refusing: uuid.UUID
    train_analysis: uuid.UUID
    dev_analysis: uuid.UUID
    url_analysis: uuid.UUID


def _utterances(analysis_id: uuid.UUID, user_id: uuid.UUID, labels: list[tuple[str | None, str | None]]):
    rows = []
    for index, (emotion, sentiment) in enumerate(labels):
        corrected = emotion is not None or sentiment is not None
        rows.append(
            UtteranceResult(
                analysis_id=analysis_id,
                index=index,
                start=index * 1.0,
                end=index * 1.0 + 0.8,
                text=f'line {index}, "quoted"\nand broken',
                speaker="Ada" if index % 2 == 0 else None,
                emotion="neutral",
                emotion_scores={label: 1 / len(EMOTIONS) for label in EMOTIONS},
                sentiment="neutral",
                sentiment_scores={label: 1 / len(SENTIMENTS) for label in SENTIMENTS},
                modalities=["text", "audio"],
                corrected_emotion=emotion,
                corrected_sentiment=sentiment,
                corrected_by=user_id if corrected else None,
                corrected_at=CORRECTED_AT + timedelta(minutes=index) if corrected else None,
            )
        )
    return rows


@pytest.fixture(scope="session")
def corrections_media(tmp_path_factory) -> Path:
    return mediagen.make_clip(
        tmp_path_factory.mktemp("media") / "call.mp4", duration=4.0, size=(64, 48), fps=8
    )


@pytest.fixture
def corpus(pg_url, tmp_path, corrections_media) -> Corpus:
    empty_all_tables(engine_for(pg_url))
    settings = Settings(environment="test", database_url=pg_url, data_dir=tmp_path, storage_backend="local")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    consenting, refusing = uuid.uuid4(), uuid.uuid4()
    train_analysis, dev_analysis = analysis_id_in("train", "train"), analysis_id_in("dev", "dev")
    url_analysis, refused_analysis = analysis_id_in("train", "url"), analysis_id_in("train", "refused")
    factory = make_session_factory(engine_for(pg_url))
    with session_scope(factory) as session:
        session.add_all(
            [
                User(id=consenting, email="yes@example.com", password_hash="x", training_consent=True),
                User(id=refusing, email="no@example.com", password_hash="x"),
            ]
        )
        session.flush()
        for analysis_id, user_id, with_media in (
            (train_analysis, consenting, True),
            (dev_analysis, consenting, True),
            (url_analysis, consenting, False),
            (refused_analysis, refusing, True),
        ):
            upload_id = None
            if with_media:
                key = f"{user_id}/{analysis_id}.mp4"
                (uploads / key).parent.mkdir(exist_ok=True)
                (uploads / key).write_bytes(corrections_media.read_bytes())
                upload = Upload(
                    user_id=user_id,
                    filename="call.mp4",
                    content_type="video/mp4",
                    size_bytes=corrections_media.stat().st_size,
                    backend="local",
                    storage_key=key,
                    expires_at=UNTIL,
                    completed_at=CORRECTED_AT,
                )
                session.add(upload)
                session.flush()
                upload_id = upload.id
            session.add(
                Analysis(
                    id=analysis_id,
                    user_id=user_id,
                    status="succeeded",
                    upload_id=upload_id,
                    source_url=None if with_media else "https://93.184.215.14/v.mp4",
                )
            )
        session.flush()
        session.add_all(
            _utterances(
                train_analysis, consenting, [("joy", "positive"), (None, None), ("anger", "negative")]
            )
            + _utterances(dev_analysis, consenting, [("sadness", "negative"), ("fear", None)])
            + _utterances(url_analysis, consenting, [("surprise", "positive")])
            + _utterances(refused_analysis, refusing, [("disgust", "negative")])
        )
    return Corpus(settings, pg_url, consenting, refusing, train_analysis, dev_analysis, url_analysis)
