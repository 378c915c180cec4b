"""Where uploaded media lives: a local directory (embedded default) or an S3 bucket.

The gateway hands out upload targets (a presigned S3 PUT, or a signed PUT to itself); the worker
reads objects with :meth:`MediaStorage.download_to` and writes the small objects it derives (face
thumbnails) with :meth:`MediaStorage.put`; deleting an analysis deletes its media and those.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.settings import Settings, get_settings


class StorageError(Exception):
    """The object is missing or the store failed (the worker treats it as transient)."""


class MediaStorage(Protocol):
    backend: str

    def size(self, key: str) -> int | None: ...

    def download_to(self, key: str, destination: Path) -> int: ...

    def delete(self, key: str) -> None: ...

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def read(self, key: str) -> bytes | None: ...

    def delete_prefix(self, prefix: str) -> None: ...


def _safe_key(key: str) -> str:
    parts = Path(key).parts
    if not parts or key.startswith("/") or any(part in ("..", "") for part in parts):
        raise StorageError(f"invalid storage key {key!r}")
    return key


@dataclass
class LocalStorage:
    root: Path
    backend: str = "local"

    def path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def download_to(self, key: str, destination: Path) -> int:
        source = self.path(key)
        if not source.is_file():
            raise StorageError(f"upload {key} is missing")
        shutil.copyfile(source, destination)
        return destination.stat().st_size

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half an object

    def read(self, key: str) -> bytes | None:
        path = self.path(key)
        return path.read_bytes() if path.is_file() else None

    def delete_prefix(self, prefix: str) -> None:
        """Every object under ``prefix`` (a folder of keys, e.g. ``thumbnails/<analysis>/``)."""
        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)


@dataclass
class S3Storage:
    client: object  # a boto3 S3 client
    bucket: str
    backend: str = "s3"
    # Signs URLs for clients outside the services' network (the signature covers the host).
    presign_client: object | None = None

    def presign_put(self, key: str, content_type: str, size: int, expires_in: int) -> str:
        # Content-Type and Content-Length are signed: S3 refuses a PUT that differs from them.
        return (self.presign_client or self.client).generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": _safe_key(key),
                "ContentType": content_type,
                "ContentLength": size,
            },
            ExpiresIn=expires_in,
            HttpMethod="PUT",
        )

    def presign_get(self, key: str, content_type: str, expires_in: int) -> str:
        """A URL that reads the object (range requests included) until it expires; the response
        names the stored type and is shown inline."""
        return (self.presign_client or self.client).generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": _safe_key(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": "inline",
                "ResponseCacheControl": "private, no-store",
            },
            ExpiresIn=expires_in,
            HttpMethod="GET",
        )

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=_safe_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(str(exc)) from exc
        return int(head["ContentLength"])

    def download_to(self, key: str, destination: Path) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.download_file(self.bucket, _safe_key(key), str(destination))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(str(exc)) from exc
        return destination.stat().st_size

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=_safe_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(str(exc)) from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=_safe_key(key), Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(str(exc)) from exc

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=_safe_key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(str(exc)) from exc
        except BotoCoreError as exc:
            raise StorageError(str(exc)) from exc

    def delete_prefix(self, prefix: str) -> None:
        """Every object whose key starts with ``prefix`` (listed, then deleted 1000 at a time)."""
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = _safe_key(prefix.rstrip("/")) + "/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(str(exc)) from exc


def s3_client(settings: Settings, endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        region_name=settings.aws_region,
        endpoint_url=endpoint_url or settings.s3_endpoint_url,
        config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
    )


def get_storage(settings: Settings | None = None) -> LocalStorage | S3Storage:
    settings = settings or get_settings()
    if settings.storage_backend == "s3":
        public = settings.s3_public_endpoint_url
        return S3Storage(
            s3_client(settings),
            settings.s3_bucket,
            presign_client=s3_client(settings, public) if public else None,
        )
    return LocalStorage(settings.data_dir / "uploads")
