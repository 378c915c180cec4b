"""`moodreel purge`: expired idempotency records and abandoned uploads go; live ones stay."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from services.gateway.maintenance import purge_expired
from shared.db.models import IdempotencyRecord, Upload
from shared.db.session import make_session_factory, session_scope
from shared.db.types import utcnow
from shared.storage import LocalStorage
from tests.fixtures.db import engine_for
from tests.platform.uploads.test_uploads import MEDIA, start_upload

PUBLIC_URL = "https://93.184.215.14/clip.mp4"


def test_purge_removes_only_expired_things(client, api_key, settings, database_url):
    headers = {"X-API-Key": api_key}
    client.post("/v1/analyses", json={"video_url": PUBLIC_URL}, headers=headers | {"Idempotency-Key": "old"})
    client.post("/v1/analyses", json={"video_url": PUBLIC_URL}, headers=headers | {"Idempotency-Key": "new"})
    abandoned = start_upload(client, api_key).json()
    client.put(abandoned["url"], content=MEDIA, headers=abandoned["headers"])  # PUT, never submitted...
    pending = start_upload(client, api_key).json()
    used = start_upload(client, api_key).json()
    client.put(used["url"], content=MEDIA, headers=used["headers"])
    assert (
        client.post("/v1/analyses", json={"upload_id": used["upload_id"]}, headers=headers).status_code == 202
    )

    engine = engine_for(database_url)
    past = utcnow() - timedelta(seconds=1)
    with engine.begin() as connection:
        connection.execute(
            update(IdempotencyRecord).where(IdempotencyRecord.key == "old").values(expires_at=past)
        )
        connection.execute(update(Upload).values(expires_at=past))
        # ...and treat the abandoned one as never completed (the object exists without a submission).
        connection.execute(
            update(Upload).where(Upload.id == uuid.UUID(abandoned["upload_id"])).values(completed_at=None)
        )
        connection.execute(
            update(Upload).where(Upload.id == uuid.UUID(pending["upload_id"])).values(completed_at=None)
        )
    with session_scope(make_session_factory(engine)) as session:
        report = purge_expired(session, settings)
    assert report.idempotency_records == 1 and report.uploads == 2
    with engine.connect() as connection:
        keys = connection.execute(select(IdempotencyRecord.key)).scalars().all()
        uploads = connection.execute(select(func.count()).select_from(Upload)).scalar_one()
    assert keys == ["new"] and uploads == 1
    stored = list((settings.data_dir / "uploads").rglob("*.mp4"))
    assert len(stored) == 1 and LocalStorage(settings.data_dir / "uploads").size(
        str(stored[0].relative_to(settings.data_dir / "uploads"))
    ) == len(MEDIA)


def test_purge_command_runs(sqlite_url, tmp_path):
    env = {"MOODREEL_DATABASE_URL": sqlite_url, "MOODREEL_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "moodreel"), "purge"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("purged ")
