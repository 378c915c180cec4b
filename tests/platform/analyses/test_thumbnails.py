"""Face thumbnails: the worker's thumbnails of a real face clip (scikit-image's astronaut in a
generated video) stored through the media storage, served to the owner only as JPEG by
``GET /v1/analyses/{id}/utterances/{index}/thumbnail``, and deleted with the analysis."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from services.platform.analyses.thumbnails import store_thumbnails, thumbnail_key, thumbnail_prefix
from shared.contract.features.demo_media import make_face_clip
from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import FeatureSpec
from shared.storage import get_storage
from tests.gateway.conftest import new_api_key, sign_up
from tests.platform.analyses.test_media import uploaded_analysis
from tests.platform.auth.test_auth import assert_problem
from tests.platform.uploads.test_uploads import s3_gateway, s3_server  # noqa: F401

FACE_SPEC = FeatureSpec(frames_per_utterance=4, frame_size=48, face_detector="haar")


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    from skimage import data

    directory = tmp_path_factory.mktemp("thumbnails")
    Image.fromarray(data.astronaut()).save(directory / "astronaut.png")
    return make_face_clip(
        directory / "astronaut.mp4",
        directory / "astronaut.png",
        duration=4.0,
        visible=(0.0, 4.0),
        box=(300, 60, 240),
    )


def test_owner_gets_the_stored_thumbnail_and_deleting_removes_it(client, api_key, settings, face_clip):
    analysis_id = uploaded_analysis(client, api_key)
    bundle = extract_features(face_clip, FACE_SPEC, window_seconds=2.0, settings=settings)
    assert all(u.visual_reason is None for u in bundle.utterances)
    storage = get_storage(settings)
    assert store_thumbnails(storage, uuid.UUID(analysis_id), bundle.thumbnails) == 2

    path, auth = f"/v1/analyses/{analysis_id}/utterances/1/thumbnail", {"X-API-Key": api_key}
    answer = client.get(path, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["cache-control"].startswith("private")
    assert answer.content == bundle.thumbnails[1]
    assert Image.open(io.BytesIO(answer.content)).size == (320, 180)

    stranger = new_api_key(client, sign_up(client))["key"]
    assert_problem(client.get(path, headers={"X-API-Key": stranger}), 404, "analysis_not_found")
    assert client.get(path).status_code == 401
    missing = client.get(f"/v1/analyses/{analysis_id}/utterances/5/thumbnail", headers=auth)
    assert_problem(missing, 404, "thumbnail_not_stored")

    # A re-run with fewer utterances leaves none of the old ones behind.
    assert store_thumbnails(storage, uuid.UUID(analysis_id), [bundle.thumbnails[0]]) == 1
    assert storage.read(thumbnail_key(uuid.UUID(analysis_id), 1)) is None

    assert client.delete(f"/v1/analyses/{analysis_id}", headers=auth).status_code in (200, 202, 204)
    assert storage.read(thumbnail_key(uuid.UUID(analysis_id), 0)) is None
    assert not (settings.data_dir / "uploads" / "thumbnails" / analysis_id).exists()


def test_s3_storage_keeps_and_deletes_thumbnails(s3_gateway):  # noqa: F811
    settings, s3, bucket = s3_gateway
    storage = get_storage(settings)
    analysis_id = uuid.uuid4()
    assert store_thumbnails(storage, analysis_id, [b"\xff\xd8first", None, b"\xff\xd8third"]) == 2
    assert storage.read(thumbnail_key(analysis_id, 2)) == b"\xff\xd8third"
    assert storage.read(thumbnail_key(analysis_id, 1)) is None
    head = s3.head_object(Bucket=bucket, Key=thumbnail_key(analysis_id, 0))
    assert head["ContentType"] == "image/jpeg"
    # another analysis' thumbnails are under another prefix and stay
    other = uuid.uuid4()
    store_thumbnails(storage, other, [b"\xff\xd8other"])
    storage.delete_prefix(thumbnail_prefix(analysis_id))
    assert s3.list_objects_v2(Bucket=bucket, Prefix=thumbnail_prefix(analysis_id)).get("KeyCount") == 0
    assert storage.read(thumbnail_key(other, 0)) == b"\xff\xd8other"
