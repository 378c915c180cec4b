"""Media from upload storage into a job's workspace: local directory and S3 (moto's server)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import boto3
import pytest

from services.platform.uploads.download import fetch_upload
from shared.db.models import Upload, User
from shared.db.session import make_session_factory
from shared.db.types import utcnow
from shared.net.fetch import FetchError
from shared.settings import Settings
from tests.fixtures import s3 as moto_s3

MEDIA = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 100


@pytest.fixture
def sessions(db_engine):
    return make_session_factory(db_engine)


def add_upload(sessions, *, backend: str, key: str, completed: bool = True) -> uuid.UUID:
    with sessions() as session:
        user = User(email=f"{uuid.uuid4().hex}@example.com", password_hash="x")
        session.add(user)
        session.flush()
        upload = Upload(
            user_id=user.id,
            filename="clip.mp4",
            content_type="video/mp4",
            size_bytes=len(MEDIA),
            backend=backend,
            storage_key=key,
            expires_at=utcnow() + timedelta(hours=1),
            completed_at=utcnow() if completed else None,
        )
        session.add(upload)
        session.commit()
        return upload.id


async def test_local_upload_is_copied_into_the_workspace(sessions, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", storage_backend="local")
    (settings.data_dir / "uploads" / "u").mkdir(parents=True)
    (settings.data_dir / "uploads" / "u" / "clip.mp4").write_bytes(MEDIA)
    workspace = tmp_path / "job"
    workspace.mkdir()
    path = await fetch_upload(
        sessions, add_upload(sessions, backend="local", key="u/clip.mp4"), workspace, settings
    )
    assert path.parent == workspace and path.read_bytes() == MEDIA


@pytest.mark.parametrize(
    ("key", "completed", "overrides", "code"),
    [
        ("u/absent.mp4", True, {}, "download_failed"),
        ("u/clip.mp4", False, {}, "download_failed"),
        ("u/clip.mp4", True, {"max_media_bytes": 100}, "too_large"),
    ],
)
async def test_unusable_uploads_fail_with_a_code(sessions, tmp_path, key, completed, overrides, code):
    settings = Settings(data_dir=tmp_path / "data", storage_backend="local", **overrides)
    (settings.data_dir / "uploads" / "u").mkdir(parents=True)
    (settings.data_dir / "uploads" / "u" / "clip.mp4").write_bytes(MEDIA)
    upload_id = add_upload(sessions, backend="local", key=key, completed=completed)
    with pytest.raises(FetchError) as caught:
        await fetch_upload(sessions, upload_id, tmp_path, settings)
    assert caught.value.code == code
    assert not (tmp_path / "media").exists()


# moto S3 on loopback (shared fixture)
s3_endpoint = moto_s3.moto_s3_endpoint


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_s3_upload_is_downloaded_over_http(sessions, tmp_path, s3_endpoint):
    bucket = f"moodreel-test-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="uploads/clip.mp4", Body=MEDIA)
    settings = Settings(storage_backend="s3", s3_bucket=bucket, s3_endpoint_url=s3_endpoint)
    path = await fetch_upload(
        sessions, add_upload(sessions, backend="s3", key="uploads/clip.mp4"), tmp_path, settings
    )
    assert path.read_bytes() == MEDIA

    missing = add_upload(sessions, backend="s3", key="uploads/gone.mp4")
    with pytest.raises(FetchError) as caught:
        await fetch_upload(sessions, missing, tmp_path, settings)
    assert caught.value.code == "download_failed" and not caught.value.transient
