"""The dashboard's upload with S3 storage (compose's MinIO, AWS in production), simulated by moto's
S3 server: the gateway presigns, the dashboard PUTs the file to the presigned URL server-side
(signed Content-Type and Content-Length), and the analysis is accepted."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tests.dashboard.helpers import csrf_from, local_gateway, signed_in_client

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_gateway(tmp_path_factory) -> Iterator[tuple[str, object, str]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = f"moodreel-dash-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    env = {
        **AWS_ENV,
        "MOODREEL_STORAGE_BACKEND": "s3",
        "MOODREEL_S3_BUCKET": bucket,
        "MOODREEL_S3_ENDPOINT_URL": endpoint,
        # As under compose: presigned URLs name an address the gateway itself cannot resolve.
        "MOODREEL_S3_PUBLIC_ENDPOINT_URL": f"http://moodreel-s3-public:{port}",
    }
    try:
        with local_gateway(tmp_path_factory.mktemp("dashboard-s3"), **env) as (base_url, _):
            yield base_url, s3, bucket
    finally:
        server.stop()


def test_dashboard_upload_goes_to_the_presigned_s3_url(s3_gateway):
    base_url, s3, bucket = s3_gateway
    client, _ = signed_in_client(base_url)
    video = os.urandom(300_000)
    token = csrf_from(client.get("/dashboard/analyses/new"))
    submitted = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token},
        files={"video_file": ("interview.mp4", video, "video/mp4")},
    )
    assert submitted.status_code == 303, submitted.text[-2000:]
    analysis_id = submitted.headers["location"].rsplit("/", 1)[1]
    objects = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert len(objects) == 1 and objects[0]["Size"] == len(video)
    assert objects[0]["Key"].startswith("uploads/") and objects[0]["Key"].endswith(".mp4")
    assert s3.get_object(Bucket=bucket, Key=objects[0]["Key"])["Body"].read() == video
    page = client.get(f"/dashboard/analyses/{analysis_id}")
    assert page.status_code == 200 and 'data-status="queued"' in page.text
    # The player's source: a presigned GET for the public S3 address, which answers ranges itself.
    media = client.get(f"/dashboard/analyses/{analysis_id}/media", follow_redirects=False)
    assert media.status_code == 307, media.text
    presigned = media.headers["location"]
    public = f"http://moodreel-s3-public:{urlsplit(s3.meta.endpoint_url).port}/"
    assert presigned.startswith(public) and "X-Amz-Signature=" in presigned
    # Reached by the internal address with the signed Host, as a browser would reach the public one.
    internal = s3.meta.endpoint_url + "/" + presigned[len(public) :]
    part = httpx.get(internal, headers={"Range": "bytes=10-19", "Host": urlsplit(public).netloc}, timeout=30)
    assert part.status_code == 206 and part.content == video[10:20]
    assert part.headers["content-type"] == "video/mp4"
    # Deleting the analysis through the dashboard deletes the stored media too (the API's rule).
    deleted = client.post(f"/dashboard/analyses/{analysis_id}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    client.close()
    with httpx.Client(base_url=base_url) as stranger:
        assert stranger.get(f"/dashboard/analyses/{analysis_id}").status_code == 303
