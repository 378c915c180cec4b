"""The feature pipeline: one media file (+ optional transcript) -> one FeatureBundle.

probe (limits first) -> utterances (transcript; without one, speech regions and speakers found in
the audio, or fixed windows) -> frames, audio and text. The video and the audio are each decoded
by one ffmpeg process, and the two run at the same time (the log-mels are computed while the
video is still decoding; only speech segmentation needs the audio before the video).
The worker and training both call ``extract_features`` so served tensors match trained ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.contract.bundle import FeatureBundle
from shared.contract.features.audio import load_audio, utterance_log_mels
from shared.contract.features.frames import extract_frames
from shared.contract.features.media import MediaError, probe
from shared.contract.features.mtcnn import mtcnn
from shared.contract.features.segmentation import SegmentationParams, assign_speakers, speech_utterances
from shared.contract.features.silero import silero_vad
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.speech import gate_utterances
from shared.contract.features.text import token_arrays
from shared.contract.features.transcripts import TranscriptError, parse_transcript, window_utterances
from shared.contract.features.voice import VoiceEncoder, VoiceEncoderMissing, voice_encoder
from shared.logging import get_logger
from shared.settings import Settings, get_settings, models_dir

log = get_logger(__name__)

TranscriptSource = str | bytes | list[dict] | Path
SEGMENTATIONS = ("speech", "windows")


def _encoder(settings: Settings) -> VoiceEncoder | None:
    try:
        return voice_encoder(models_dir(settings))
    except VoiceEncoderMissing as exc:
        # Utterances still come from speech; without voices they carry no speaker.
        log.warning("voice_encoder_missing", error=str(exc))
        return None


def extract_features(
    media_path: Path | str,
    spec: FeatureSpec,
    transcript: TranscriptSource | None = None,
    *,
    window_seconds: float | None = None,
    segmentation: str | None = None,
    speakers: int | None = None,
    settings: Settings | None = None,
) -> FeatureBundle:
    """Every model input for ``media_path``; raises ``MediaError`` or ``TranscriptError``.

    ``transcript`` is SRT/WebVTT/JSON text (str or bytes), JSON segments, or a path to such a file.
    Without it, ``segmentation`` (default from settings) is "speech" (utterances are the speech
    regions, with speakers told apart by voice; media without speech falls back to windows) or
    "windows" (fixed windows of ``window_seconds``). ``speakers`` fixes the number of voices;
    with a transcript, voices name only the utterances it leaves without a speaker.
    The bundle's ``media`` says what was done: ``segmentation`` ("transcript", "speech" or
    "windows") and ``speakers`` ("transcript", "voices" or none)."""
    settings = settings or get_settings()
    segmentation = segmentation or settings.default_segmentation
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, not {segmentation!r}")
    media_path = Path(media_path)
    info = probe(media_path, settings)
    params = SegmentationParams.from_settings(settings)
    weights_dir = models_dir(settings)
    # Loaded before any decoding: a missing model fails the analysis at once, with the fix. Silero
    # also finds the speech regions without a transcript, so it is needed with the gate off then.
    finds_speech = transcript is None and segmentation == "speech"
    if info.audio and spec.speech_detector == "silero" and (spec.speech_gate or finds_speech):
        silero_vad(weights_dir)
    if info.video and spec.face_detector == "mtcnn" and spec.frames_per_utterance > 0:
        mtcnn(weights_dir)

    clamped: list[str] = []
    waveform: np.ndarray | None = None
    speaker_source: str | None = None
    if transcript is None:
        utterances: list = []
        used = "windows"
        if segmentation == "speech" and info.audio:
            waveform = load_audio(media_path, spec, settings)
            encoder = _encoder(settings)
            utterances = speech_utterances(waveform, spec, params, encoder, speakers, weights_dir)
            used = "speech" if utterances else "windows"
            speaker_source = "voices" if utterances and encoder is not None else None
        if not utterances:
            window = window_seconds or settings.default_window_seconds
            utterances = window_utterances(info.duration, window)
        if len(utterances) > settings.max_utterances:
            raise TranscriptError(
                f"{len(utterances)} utterances exceed the limit of {settings.max_utterances}"
            )
    else:
        used = "transcript"
        if isinstance(transcript, Path):
            transcript = transcript.read_bytes()
        parsed = parse_transcript(transcript, info.duration, settings)
        utterances, clamped = parsed.utterances, parsed.clamped
        speaker_source = "transcript" if any(u.speaker for u in utterances) else None

    def audio_features() -> tuple[np.ndarray, np.ndarray, list, list]:
        audio = waveform
        if audio is None and info.audio:
            audio = load_audio(media_path, spec, settings)
        log_mel, audio_mask = utterance_log_mels(audio, utterances, spec)
        gates = gate_utterances(audio, utterances, audio_mask.any(axis=1), spec, weights_dir)
        named = utterances
        if used == "transcript" and audio is not None and not all(u.speaker for u in utterances):
            encoder = _encoder(settings)
            if encoder is not None:
                named = assign_speakers(audio, utterances, spec, params, encoder, speakers)
        return log_mel, audio_mask, gates, named

    with ThreadPoolExecutor(max_workers=1) as pool:
        # Audio decoding and log-mels overlap the video decode, which this thread drives (it mostly
        # waits on ffmpeg's pipe, and numpy's FFTs release the GIL).
        audio_job = pool.submit(audio_features)
        visual = extract_frames(media_path, info, utterances, spec, settings)
        log_mel, audio_mask, gates, named = audio_job.result()
    if named is not utterances:
        # The transcript's names where it gave them, voices for the rest.
        speaker_source = "transcript+voices" if speaker_source == "transcript" else "voices"
    utterances = named
    utterances = [
        replace(u, speech_fraction=g.speech_fraction, audio_reason=g.reason.value if g.reason else None)
        for u, g in zip(utterances, gates, strict=True)
    ]
    if visual.faces is not None:
        utterances = [
            replace(u, faces=tuple(faces), visual_reason=reason)
            for u, faces, reason in zip(utterances, visual.faces, visual.reasons, strict=True)
        ]
    tokens = token_arrays(utterances, spec)

    has_text = np.array([bool(u.text.strip()) for u in utterances], dtype=bool)
    has_speech = np.array([g.speech for g in gates], dtype=bool)
    # column order: shared.contract.labels.MODALITIES; audio only where the speech gate found speech
    modality_mask = np.stack([has_text, audio_mask.any(axis=1) & has_speech, visual.present], axis=1)
    media = info.to_dict() | {"clamped": clamped, "segmentation": used, "speakers": speaker_source}
    log.info(
        "features_extracted",
        utterances=len(utterances),
        duration=round(info.duration, 3),
        modalities=modality_mask.sum(axis=0).tolist(),
        audio_masked_by_gate=int((audio_mask.any(axis=1) & ~has_speech).sum()),
        visual_without_face=sum(reason == "no_face" for reason in visual.reasons or ()),
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
        thumbnails=visual.thumbnails,
        **tokens,
    )


def summary_table(bundle: FeatureBundle) -> str:
    """A plain-text table of a bundle: one row per utterance with its times, speaker, text and the
    modalities present (T text, A audio, V visual), under a line describing the media."""
    media = bundle.media
    video, audio = media.get("video"), media.get("audio")
    parts = [f"duration {media.get('duration', 0):.2f} s", str(media.get("container", "?"))]
    if video:
        parts.append(
            f"video {video['width']}x{video['height']} {video['fps']:.2f} fps rot {video['rotation']}"
        )
    if audio:
        parts.append(f"audio {audio['sample_rate']} Hz x{audio['channels']}")
    lines = [" | ".join(parts) + f" | spec {bundle.spec_hash}"]
    lines += [f"note: {note}" for note in media.get("clamped", [])]
    lines.append(f"{'#':>3}  {'start':>8}  {'end':>8}  {'mod':<3}  {'speaker':<12}  text")
    for index, utterance in enumerate(bundle.utterances):
        present = bundle.modality_mask[index]
        flags = "".join(letter if on else "-" for letter, on in zip("TAV", present, strict=True))
        text = utterance.text if len(utterance.text) <= 60 else utterance.text[:57] + "..."
        lines.append(
            f"{index:>3}  {utterance.start:>8.2f}  {utterance.end:>8.2f}  {flags:<3}  "
            f"{(utterance.speaker or '')[:12]:<12}  {text}"
        )
    text, audio_count, visual = (int(n) for n in bundle.modality_mask.sum(axis=0).reshape(3))
    lines.append(f"{len(bundle)} utterances; with text {text}, audio {audio_count}, visual {visual}")
    return "\n".join(lines)


__all__ = ["MediaError", "TranscriptError", "extract_features", "summary_table"]
