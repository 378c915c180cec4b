"""The feature pipeline: one media file (+ optional transcript) -> one FeatureBundle.

probe (limits first) -> utterances (transcript or fixed windows) -> frames, audio and text. The
video and the audio are each decoded by one ffmpeg process, and the two run at the same time.
The worker and training both call ``extract_features`` so served tensors match trained ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from shared.bundle import FeatureBundle
from shared.features.audio import load_audio, utterance_log_mels
from shared.features.frames import extract_frames
from shared.features.media import MediaError, probe
from shared.features.spec import FeatureSpec
from shared.features.text import token_arrays
from shared.features.transcripts import TranscriptError, parse_transcript, window_utterances
from shared.logging import get_logger
from shared.settings import Settings, get_settings

log = get_logger(__name__)

TranscriptSource = str | bytes | list[dict] | Path


def extract_features(
    media_path: Path | str,
    spec: FeatureSpec,
    transcript: TranscriptSource | None = None,
    *,
    window_seconds: float | None = None,
    settings: Settings | None = None,
) -> FeatureBundle:
    """Every model input for ``media_path``; raises ``MediaError`` or ``TranscriptError``.

    ``transcript`` is SRT/WebVTT/JSON text (str or bytes), JSON segments, or a path to such a file.
    Without it the media is cut into windows of ``window_seconds`` (default from settings)."""
    settings = settings or get_settings()
    media_path = Path(media_path)
    info = probe(media_path, settings)

    clamped: list[str] = []
    if transcript is None:
        window = window_seconds or settings.default_window_seconds
        utterances = window_utterances(info.duration, window)
        if len(utterances) > settings.max_utterances:
            raise TranscriptError(
                f"{len(utterances)} windows of {window} s exceed the limit of {settings.max_utterances}"
            )
    else:
        if isinstance(transcript, Path):
            transcript = transcript.read_bytes()
        parsed = parse_transcript(transcript, info.duration, settings)
        utterances, clamped = parsed.utterances, parsed.clamped

    with ThreadPoolExecutor(max_workers=1) as pool:
        # ffmpeg decodes the audio in its own process while this thread drives the video decode.
        audio_job = pool.submit(load_audio, media_path, spec, settings) if info.audio else None
        visual = extract_frames(media_path, info, utterances, spec, settings)
        waveform = audio_job.result() if audio_job else None
    log_mel, audio_mask = utterance_log_mels(waveform, utterances, spec)
    tokens = token_arrays(utterances, spec)

    has_text = np.array([bool(u.text.strip()) for u in utterances], dtype=bool)
    # column order: shared.labels.MODALITIES
    modality_mask = np.stack([has_text, audio_mask.any(axis=1), visual.present], axis=1)
    media = info.to_dict() | {"clamped": clamped}
    log.info(
        "features_extracted",
        utterances=len(utterances),
        duration=round(info.duration, 3),
        modalities=modality_mask.sum(axis=0).tolist(),
    )
    return FeatureBundle(
        utterances=list(utterances),
        frames=visual.frames,
        frame_times=visual.frame_times,
        log_mel=log_mel,
        audio_mask=audio_mask,
        modality_mask=modality_mask,
        spec_hash=spec.hash,
        media=media,
        **tokens,
    )


__all__ = ["MediaError", "TranscriptError", "extract_features"]
