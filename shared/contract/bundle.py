"""The tensor bundle: every model input for one video, in one versioned safetensors container.

Layout (U utterances, N frames, S frame size, M mel bins, T mel frames, L tokens):

=================  =====================  ========
name               shape                  dtype
=================  =====================  ========
frames             [U, N, 3, S, S]        uint8
frame_times        [U, N]                 float32   seconds into the media of each sampled frame
log_mel            [U, M, T]              float16
audio_mask         [U, T]                 bool      True where a mel frame holds real audio
input_ids          [U, L]                 int64
attention_mask     [U, L]                 int64
token_type_ids     [U, L]                 int64     1 on the dialogue-context segment
modality_mask      [U, 3]                 bool      text, audio, visual present (shared.contract.labels)
=================  =====================  ========

Metadata (safetensors' string map): schema version, spec hash, utterances as JSON (start, end,
text, speaker) and a media summary as JSON.

Arrays are numpy, not torch: the preprocess worker builds bundles and its image carries no torch.
The model side converts with ``torch.from_numpy``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from shared.errors import CodedError

BUNDLE_SCHEMA_VERSION = 1
CONTENT_TYPE = "application/x-safetensors"

_TENSORS: dict[str, np.dtype] = {
    "frames": np.dtype(np.uint8),
    "frame_times": np.dtype(np.float32),
    "log_mel": np.dtype(np.float16),
    "audio_mask": np.dtype(np.bool_),
    "input_ids": np.dtype(np.int64),
    "attention_mask": np.dtype(np.int64),
    "token_type_ids": np.dtype(np.int64),
    "modality_mask": np.dtype(np.bool_),
}


class BundleError(CodedError, ValueError):
    """A bundle that cannot be used: wrong schema, wrong spec, or malformed content."""


@dataclass(frozen=True)
class UtteranceMeta:
    start: float
    end: float
    text: str = ""
    speaker: str | None = None
    # The speech gate's verdict (shared.contract.features.speech): fraction of the span that is speech, and
    # why the audio is not used (None: it is, or the bundle predates the gate).
    speech_fraction: float | None = None
    audio_reason: str | None = None
    # With a face detector (shared.contract.features.faces): per sampled frame, its time, every face's box
    # (x, y, width, height normalised to the frame), their scores and the index of the tracked face
    # ("used", None where it is not seen); and why the visual modality is masked (None: it is used).
    faces: tuple[dict, ...] = ()
    visual_reason: str | None = None


@dataclass
class FeatureBundle:
    utterances: list[UtteranceMeta]
    frames: np.ndarray
    frame_times: np.ndarray
    log_mel: np.ndarray
    audio_mask: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    modality_mask: np.ndarray
    spec_hash: str
    media: dict[str, Any] = field(default_factory=dict)
    schema_version: int = BUNDLE_SCHEMA_VERSION
    # With a face detector, per utterance a JPEG of its middle face record's frame (None without a
    # sampled frame): for the worker to store, never serialised nor sent to the model.
    thumbnails: list[bytes | None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        count = len(self.utterances)
        for name, dtype in _TENSORS.items():
            tensor = getattr(self, name)
            if tensor.dtype != dtype:
                raise BundleError("malformed_bundle", f"{name} has dtype {tensor.dtype}, expected {dtype}")
            if tensor.shape[0] != count:
                raise BundleError(
                    "malformed_bundle", f"{name} has {tensor.shape[0]} rows for {count} utterances"
                )

    def __len__(self) -> int:
        return len(self.utterances)

    def select(self, indices: slice | list[int]) -> FeatureBundle:
        """A bundle of a subset of utterances (the invoke client chunks videos with this)."""
        picked = (
            self.utterances[indices] if isinstance(indices, slice) else [self.utterances[i] for i in indices]
        )
        index = indices if isinstance(indices, slice) else np.asarray(indices, dtype=np.int64)
        tensors = {name: getattr(self, name)[index] for name in _TENSORS}
        return FeatureBundle(utterances=picked, spec_hash=self.spec_hash, media=self.media, **tensors)

    # --- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in _TENSORS}
        metadata = {
            "schema_version": str(self.schema_version),
            "spec_hash": self.spec_hash,
            "utterances": json.dumps([u.__dict__ for u in self.utterances]),
            "media": json.dumps(self.media),
        }
        return st_save(tensors, metadata=metadata)

    def save(self, path: Path) -> None:
        path.write_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, expected_spec_hash: str | None = None) -> FeatureBundle:
        metadata = read_metadata(data)
        version = metadata.get("schema_version")
        if version != str(BUNDLE_SCHEMA_VERSION):
            raise BundleError(
                "schema_mismatch",
                f"bundle schema version {version!r} is not the supported {BUNDLE_SCHEMA_VERSION}",
            )
        spec_hash = metadata.get("spec_hash", "")
        if expected_spec_hash is not None and spec_hash != expected_spec_hash:
            raise BundleError(
                "spec_mismatch",
                f"bundle was built with feature spec {spec_hash} but the model expects {expected_spec_hash}",
            )
        try:
            tensors = st_load(data)
            utterances = [
                UtteranceMeta(**(u | {"faces": tuple(u.get("faces", ()))}))
                for u in json.loads(metadata["utterances"])
            ]
            media = json.loads(metadata.get("media", "{}"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise BundleError("malformed_bundle", f"bundle content is malformed: {exc}") from exc
        missing = sorted(set(_TENSORS) - set(tensors))
        if missing:
            raise BundleError("malformed_bundle", f"bundle lacks tensors: {', '.join(missing)}")
        return cls(
            utterances=utterances,
            spec_hash=spec_hash,
            media=media,
            **{name: tensors[name] for name in _TENSORS},
        )

    @classmethod
    def load(cls, path: Path, expected_spec_hash: str | None = None) -> FeatureBundle:
        return cls.from_bytes(path.read_bytes(), expected_spec_hash)


def read_metadata(data: bytes) -> dict[str, str]:
    """Read the safetensors header's ``__metadata__`` without loading any tensor.

    The format is an 8-byte little-endian header length followed by a JSON header; safetensors'
    own ``load`` from bytes does not return the metadata.
    """
    if len(data) < 8:
        raise BundleError("malformed_bundle", "bundle is shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8 or header_len > 100_000_000:
        raise BundleError("malformed_bundle", "bundle header length is out of range")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise BundleError("malformed_bundle", "bundle header is not JSON") from exc
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise BundleError("malformed_bundle", "bundle metadata is not a map")
    return metadata
