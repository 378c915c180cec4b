"""Utterances and speakers from the audio itself, for media without a transcript.

1. **Speech regions**: WebRTC's detector (mode ``spec.vad_mode``, frames of ``spec.vad_frame_ms``)
   proposes them over the whole waveform; runs of speech closer than ``join_pause_seconds`` are
   one region (the gaps between words), and a region is kept only if the speech gate finds speech
   in it (``speech.is_speech`` with the spec's own detector: Silero VAD, or WebRTC's with its
   tonal and steady-level tests), so music, tones and noise the proposer takes for speech are not
   utterances. The strict detector clips the quiet onsets and trailing syllables of speech, so each
   kept region then grows, frame by frame and up to ``edge_max_seconds`` each way, while WebRTC's
   more lenient mode ``edge_vad_mode`` still hears speech and the frame stands
   ``EDGE_FLOOR_MARGIN_DB`` above the recording's noise floor, never into its neighbours.
2. **Voices**: each region's voice embedding (``shared.contract.features.voice``, Resemblyzer in numpy),
   without its first ``speaker_nuisance_dims`` within-speaker (emotion) directions
   (``voice.remove_nuisance``), clustered by average-linkage agglomeration on cosine distance
   (``cluster_voices``): the number of speakers is where the closest remaining clusters are
   further apart than ``speaker_distance`` (or the number asked for). Regions shorter than
   ``speaker_min_embed_seconds`` carry too little voice to decide a cluster; they join the nearest
   cluster found from the longer ones.
3. **Utterances**: neighbouring regions of the same speaker separated by less than
   ``split_pause_seconds`` are one utterance, up to ``max_seconds``; a longer pause or a change of
   speaker ends it. An utterance longer than ``max_seconds`` is cut at its quietest frames, one
   shorter than ``min_seconds`` is dropped (a click or a breath, not an utterance).
4. Speakers are named ``S1``, ``S2``, ... in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shared.contract.bundle import UtteranceMeta
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.speech import (
    detected_frames,
    fills_enough,
    frame_levels_db,
    frame_samples,
    frame_seconds,
    is_speech,
)
from shared.contract.features.voice import VoiceEncoder, remove_nuisance
from shared.logging import get_logger

log = get_logger(__name__)

SPEAKER_PREFIX = "S"
# Regions grow only over frames this much above the recording's noise floor (its 10th-percentile
# frame level): the lenient detector's hangover otherwise carries them on over the silence after
# speech.
EDGE_FLOOR_MARGIN_DB = 3.0
NOISE_FLOOR_PERCENTILE = 10


@dataclass(frozen=True)
class SegmentationParams:
    """The settings' ``segment_*`` and ``speaker_*`` values (documented there)."""

    join_pause_seconds: float
    split_pause_seconds: float
    min_seconds: float
    max_seconds: float
    speaker_distance: float
    single_speaker_distance: float
    speaker_min_embed_seconds: float
    max_speakers: int
    speaker_nuisance_dims: int = 0
    edge_vad_mode: int = 1
    edge_max_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings) -> SegmentationParams:
        return cls(
            join_pause_seconds=settings.segment_join_pause_seconds,
            split_pause_seconds=settings.segment_split_pause_seconds,
            min_seconds=settings.segment_min_seconds,
            max_seconds=settings.segment_max_seconds,
            speaker_distance=settings.speaker_distance_threshold,
            single_speaker_distance=settings.single_speaker_distance_threshold,
            speaker_min_embed_seconds=settings.speaker_min_embed_seconds,
            max_speakers=settings.max_speakers,
            speaker_nuisance_dims=settings.speaker_nuisance_dims,
            edge_vad_mode=settings.segment_edge_vad_mode,
            edge_max_seconds=settings.segment_edge_max_seconds,
        )


def speech_regions(
    waveform: np.ndarray, spec: FeatureSpec, params: SegmentationParams, models_dir: Path | None = None
) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of each speech region, in time order (``models_dir``: where Silero
    is installed, default the settings')."""
    # WebRTC's detector proposes the regions and grows their edges, whichever detector the gate
    # uses: its 30 ms frames follow onsets and pauses closely, where Silero (an LSTM over 32 ms
    # chunks) lags a chunk or two at each end (on the diarization bench's dev mixes its own regions
    # missed 6-10 % of the speech). The gate itself then decides which regions are speech.
    proposer = spec.model_copy(update={"speech_detector": "webrtc"})
    frame = proposer.vad_frame_ms / 1000.0
    voiced = detected_frames(waveform, proposer)
    if not voiced.any():
        return []
    edges = np.diff(np.concatenate(([0], voiced.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    joined: list[list[int]] = []
    gap_frames = params.join_pause_seconds / frame
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if joined and start - joined[-1][1] < gap_frames:
            joined[-1][1] = end
        else:
            joined.append([start, end])
    if spec.speech_detector == "silero":
        # One pass over the whole recording, its state carried across the regions (cheaper than a
        # pass per region, and the network hears each region's lead-in); proposer frames map to
        # detector chunks by their samples.
        speech = detected_frames(waveform, spec, models_dir=models_dir)
        proposed, chunk = frame_samples(proposer), frame_samples(spec)
        kept = []
        for start, end in joined:
            inside = speech[start * proposed // chunk : -(-end * proposed // chunk)]
            kept.append(fills_enough(float(inside.mean()) if inside.size else 0.0, spec))
    else:
        proposed = frame_samples(proposer)
        kept = [is_speech(waveform[start * proposed : end * proposed], spec) for start, end in joined]
    if params.edge_max_seconds > 0 and any(kept):
        levels = frame_levels_db(waveform, proposer)
        audible = levels > np.percentile(levels, NOISE_FLOOR_PERCENTILE) + EDGE_FLOOR_MARGIN_DB
        lenient = detected_frames(waveform, proposer, params.edge_vad_mode) & audible
        joined = _grow_edges(joined, lenient, frame, params)
    return [
        (round(start * frame, 3), round(end * frame, 3))
        for (start, end), keep in zip(joined, kept, strict=True)
        if keep
    ]


def _grow_edges(
    runs: Sequence[Sequence[int]], lenient: np.ndarray, frame: float, params: SegmentationParams
) -> list[tuple[int, int]]:
    """``runs`` (``[start, end)`` frame indices, in time order) grown while ``lenient`` frames are
    speech, up to ``edge_max_seconds`` each way and never into the neighbouring runs."""
    reach = int(round(params.edge_max_seconds / frame))
    grown: list[tuple[int, int]] = []
    for index, (start, end) in enumerate(runs):
        floor = max(start - reach, grown[-1][1] if grown else 0)
        ceiling = min(end + reach, runs[index + 1][0] if index + 1 < len(runs) else len(lenient))
        while start > floor and lenient[start - 1]:
            start -= 1
        while end < ceiling and lenient[end]:
            end += 1
        grown.append((start, end))
    return grown


def cluster_voices(
    embeddings: np.ndarray,
    durations: Sequence[float],
    params: SegmentationParams,
    speakers: int | None = None,
) -> np.ndarray:
    """One cluster index per embedding (``[N, D]`` unit-norm rows); ``speakers`` fixes the count.

    Two steps, because one threshold cannot do both: one voice throughout is recognised on the
    raw embeddings (every cluster within ``single_speaker_distance``); otherwise the embeddings
    are centred on the recording's mean voice before clustering, which removes what all its
    voices share (room, microphone, language) and leaves what tells them apart."""
    count = len(embeddings)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    embeddings = remove_nuisance(embeddings, params.speaker_nuisance_dims)
    durations = np.asarray(durations, dtype=np.float64)
    anchors = np.flatnonzero(durations >= params.speaker_min_embed_seconds)
    if len(anchors) < max(2, speakers or 0):
        anchors = np.arange(count)
    if len(anchors) == 1 or speakers == 1:
        return np.zeros(count, dtype=np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage

    points = embeddings[anchors].astype(np.float64)
    if (
        speakers is None
        and linkage(points, method="average", metric="cosine")[-1, 2] < params.single_speaker_distance
    ):
        return np.zeros(count, dtype=np.int64)
    centre = points.mean(axis=0)
    centred = embeddings - centre
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    tree = linkage(centred[anchors], method="average", metric="cosine")
    if speakers is not None:
        labels = fcluster(tree, t=min(speakers, len(anchors)), criterion="maxclust")
    else:
        labels = fcluster(tree, t=params.speaker_distance, criterion="distance")
        if labels.max() > params.max_speakers:
            labels = fcluster(tree, t=params.max_speakers, criterion="maxclust")
    labels = labels - 1
    centroids = np.stack([centred[anchors][labels == k].mean(axis=0) for k in range(labels.max() + 1)])
    assigned = np.argmax(centred @ centroids.T, axis=1)
    assigned[anchors] = labels
    return assigned


def first_appearance_names(clusters: Sequence[int]) -> list[str]:
    """``S1``, ``S2``, ... in the order each cluster first speaks."""
    names: dict[int, str] = {}
    for cluster in clusters:
        names.setdefault(int(cluster), f"{SPEAKER_PREFIX}{len(names) + 1}")
    return [names[int(c)] for c in clusters]


def _spans(waveform: np.ndarray, spans: Sequence[tuple[float, float]], rate: int) -> list[np.ndarray]:
    return [waveform[int(s * rate) : int(e * rate)] for s, e in spans]


def _cut_long(
    waveform: np.ndarray, start: float, end: float, spec: FeatureSpec, params: SegmentationParams
) -> list[tuple[float, float]]:
    """Cut [start, end] into the fewest pieces of at most ``max_seconds``, each cut at the quietest
    frame within a second of its even-division point that keeps every piece within the limit."""
    pieces = int(np.ceil((end - start) / params.max_seconds - 1e-9))
    if pieces <= 1:
        return [(start, end)]
    frame = frame_seconds(spec)
    bounds = [start]
    for piece in range(1, pieces):
        target = start + piece * (end - start) / pieces
        earliest = max(bounds[-1] + frame, end - (pieces - piece) * params.max_seconds, target - 1.0)
        latest = min(bounds[-1] + params.max_seconds, target + 1.0)
        rate = spec.sample_rate
        levels = frame_levels_db(waveform[int(earliest * rate) : int(latest * rate)], spec)
        cut = earliest + int(np.argmin(levels)) * frame if len(levels) and latest > earliest else target
        bounds.append(round(min(max(cut, earliest), latest), 3))
    bounds.append(end)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def speech_utterances(
    waveform: np.ndarray,
    spec: FeatureSpec,
    params: SegmentationParams,
    encoder: VoiceEncoder | None,
    speakers: int | None = None,
    models_dir: Path | None = None,
) -> list[UtteranceMeta]:
    """Utterances with ``S<n>`` speakers from the speech in ``waveform`` (none: no speech found).
    Without an encoder the regions are joined by pauses alone and carry no speaker."""
    regions = speech_regions(waveform, spec, params, models_dir)
    embeddings = encoder.embed(_spans(waveform, regions, spec.sample_rate)) if encoder and regions else None
    return utterances_from_regions(waveform, regions, embeddings, spec, params, speakers)


def utterances_from_regions(
    waveform: np.ndarray,
    regions: Sequence[tuple[float, float]],
    embeddings: np.ndarray | None,
    spec: FeatureSpec,
    params: SegmentationParams,
    speakers: int | None = None,
) -> list[UtteranceMeta]:
    """Steps 2-4 on regions whose voice embeddings are known (None: no speakers)."""
    if not regions:
        return []
    if embeddings is not None:
        clusters = cluster_voices(embeddings, [e - s for s, e in regions], params, speakers).tolist()
    else:
        clusters = [None] * len(regions)
    merged: list[list] = []  # [start, end, cluster]
    for (start, end), cluster in zip(regions, clusters, strict=True):
        if merged:
            last = merged[-1]
            if (
                last[2] == cluster
                and start - last[1] < params.split_pause_seconds
                and end - last[0] <= params.max_seconds
            ):
                last[1] = end
                continue
        merged.append([start, end, cluster])
    spans: list[tuple[float, float, int | None]] = []
    for start, end, cluster in merged:
        spans += [(s, e, cluster) for s, e in _cut_long(waveform, start, end, spec, params)]
    spans = [span for span in spans if span[1] - span[0] >= params.min_seconds]
    names: list[str | None] = (
        list(first_appearance_names([c for _, _, c in spans]))
        if embeddings is not None
        else [None] * len(spans)
    )
    log.info(
        "speech_segmented",
        regions=len(regions),
        utterances=len(spans),
        speakers=len({n for n in names if n}) if embeddings is not None else None,
    )
    return [UtteranceMeta(start=s, end=e, speaker=name) for (s, e, _), name in zip(spans, names, strict=True)]


def assign_speakers(
    waveform: np.ndarray,
    utterances: Sequence[UtteranceMeta],
    spec: FeatureSpec,
    params: SegmentationParams,
    encoder: VoiceEncoder,
    speakers: int | None = None,
) -> list[UtteranceMeta]:
    """Speakers for a transcript's utterances that name none. The transcript's names win: a voice
    cluster whose named utterances mostly carry one name lends it to its unnamed ones; the other
    clusters are ``S1``, ``S2``, ... in order of first appearance."""
    unnamed = [i for i, u in enumerate(utterances) if not u.speaker]
    if not unnamed:
        return list(utterances)
    spans = [(u.start, u.end) for u in utterances]
    embeddings = encoder.embed(_spans(waveform, spans, spec.sample_rate))
    clusters = cluster_voices(embeddings, [e - s for s, e in spans], params, speakers)
    votes: dict[int, dict[str, float]] = {}
    for utterance, cluster in zip(utterances, clusters.tolist(), strict=True):
        if utterance.speaker:
            tally = votes.setdefault(cluster, {})
            tally[utterance.speaker] = tally.get(utterance.speaker, 0.0) + utterance.end - utterance.start
    borrowed = {cluster: max(tally, key=tally.__getitem__) for cluster, tally in votes.items()}
    # Anonymous clusters get S<n> names the transcript does not already use for someone else.
    taken = {u.speaker for u in utterances if u.speaker}
    names: dict[int, str] = dict(borrowed)
    number = 0
    result = list(utterances)
    for i in unnamed:
        cluster = int(clusters[i])
        if cluster not in names:
            number += 1
            while f"{SPEAKER_PREFIX}{number}" in taken:
                number += 1
            names[cluster] = f"{SPEAKER_PREFIX}{number}"
        result[i] = replace(utterances[i], speaker=names[cluster])
    return result
