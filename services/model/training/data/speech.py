"""Acted emotional speech (RAVDESS, EmoDB): readers, a speaker-independent split and a log-mel cache.

MELD's clips are not available here, so these corpora are where the audio branch meets a real
voice. Labels come from the file names. Each clip becomes one utterance in the same form the
feature pipeline gives a MELD utterance: its log-mel through the shared audio path
(``shared.contract.features.audio``), the text masked (RAVDESS actors say one of two fixed sentences, so
the words carry no emotion; see docs/audio.md for the dev comparison) and no video.

The corpora are research / non-commercial data: they are read in place from
``settings.emotion_speech_dir`` and never copied; only derived log-mels are cached, outside the
repository under ``settings.data_dir``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

from shared.contract.features.spec import FeatureSpec
from shared.logging import get_logger
from shared.settings import Settings, get_settings

log = get_logger(__name__)

# RAVDESS field EE, in code order 01..08: the eight classes of the audio branch's speech head.
RAVDESS_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)
RAVDESS_TO_MELD: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "joy",
    "sad": "sadness",
    "angry": "anger",
    "fearful": "fear",
    "disgust": "disgust",
    "surprised": "surprise",
}
RAVDESS_STATEMENTS = {1: "Kids are talking by the door.", 2: "Dogs are sitting by the door."}

# EmoDB's German initials. Boredom has no MELD counterpart: it is read, but carries no MELD label
# and is left out of accuracy (its predictions are reported separately).
EMODB_EMOTIONS: dict[str, str] = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}
EMODB_TO_MELD: dict[str, str | None] = {
    "anger": "anger",
    "boredom": None,
    "disgust": "disgust",
    "fear": "fear",
    "happiness": "joy",
    "sadness": "sadness",
    "neutral": "neutral",
}
EMODB_MALE_SPEAKERS = frozenset({3, 10, 11, 12, 15})

# Sentiment follows MELD's own pairing (train CSV: anger, disgust, fear, sadness are always
# negative, joy positive, neutral neutral). MELD's surprise is split 614 negative / 591
# positive, so a surprised clip gets no sentiment target rather than a coin toss.
MELD_EMOTION_TO_SENTIMENT: dict[str, str | None] = {
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
    "joy": "positive",
    "neutral": "neutral",
    "surprise": None,
}

# Speaker-independent split of RAVDESS's 24 actors (odd male, even female): actors 21-24 are the
# held-out test set; 17-20 (two male, two female) select checkpoints.
RAVDESS_TEST_ACTORS = frozenset({21, 22, 23, 24})
RAVDESS_DEV_ACTORS = frozenset({17, 18, 19, 20})


class SpeechDataError(ValueError):
    """A corpus folder that is missing or holds a file whose name does not follow its scheme."""


@dataclass(frozen=True)
class SpeechClip:
    corpus: str  # "ravdess" or "emodb"
    path: Path
    speaker: int
    label: str  # the corpus's own emotion name
    emotion: str | None  # MELD-7 name, None where the corpus class has no counterpart
    sentiment: str | None  # None where MELD's sentiment is ambiguous (surprise) or unknown
    text: str
    male: bool

    @property
    def speaker_id(self) -> str:
        return f"{self.corpus}-{self.speaker:02d}"

    @property
    def label_index(self) -> int | None:
        """Index into RAVDESS_EMOTIONS (the 8-class speech head), None for other corpora."""
        return RAVDESS_EMOTIONS.index(self.label) if self.corpus == "ravdess" else None


def parse_ravdess_name(path: Path) -> SpeechClip:
    """``MM-VV-EE-II-SS-RR-AA.flac``: modality, vocal channel, emotion, intensity, statement,
    repetition, actor."""
    fields = path.stem.split("-")
    if len(fields) != 7 or not all(f.isdigit() and len(f) == 2 for f in fields):
        raise SpeechDataError(f"{path.name}: not a RAVDESS name MM-VV-EE-II-SS-RR-AA")
    _modality, channel, emotion, _intensity, statement, _repetition, actor = map(int, fields)
    if channel != 1 or not 1 <= emotion <= 8 or statement not in RAVDESS_STATEMENTS or not 1 <= actor <= 24:
        raise SpeechDataError(f"{path.name}: field out of range for RAVDESS speech")
    label = RAVDESS_EMOTIONS[emotion - 1]
    meld = RAVDESS_TO_MELD[label]
    return SpeechClip(
        corpus="ravdess",
        path=path,
        speaker=actor,
        label=label,
        emotion=meld,
        sentiment=MELD_EMOTION_TO_SENTIMENT[meld],
        text=RAVDESS_STATEMENTS[statement],
        male=actor % 2 == 1,
    )


def parse_emodb_name(path: Path) -> SpeechClip:
    """``SSTTTEV.flac``: speaker, text code, emotion initial, take."""
    stem = path.stem
    if len(stem) != 7 or not stem[:2].isdigit() or stem[5] not in EMODB_EMOTIONS:
        raise SpeechDataError(f"{path.name}: not an EmoDB name SSTTTEV")
    speaker = int(stem[:2])
    label = EMODB_EMOTIONS[stem[5]]
    meld = EMODB_TO_MELD[label]
    return SpeechClip(
        corpus="emodb",
        path=path,
        speaker=speaker,
        label=label,
        emotion=meld,
        sentiment=MELD_EMOTION_TO_SENTIMENT[meld] if meld else None,
        text="",  # the German sentences are not transcribed in this copy
        male=speaker in EMODB_MALE_SPEAKERS,
    )


def _corpus_dir(name: str, settings: Settings | None) -> Path:
    root = (settings or get_settings()).emotion_speech_dir / name
    if not root.is_dir():
        raise SpeechDataError(f"{name} not found at {root} (set MOODREEL_EMOTION_SPEECH_DIR)")
    return root


def corpus_available(name: str, settings: Settings | None = None) -> bool:
    return ((settings or get_settings()).emotion_speech_dir / name).is_dir()


def read_ravdess(settings: Settings | None = None) -> list[SpeechClip]:
    root = _corpus_dir("ravdess", settings)
    return [parse_ravdess_name(p) for p in sorted(root.glob("Actor_*/*.flac"))]


def read_emodb(settings: Settings | None = None) -> list[SpeechClip]:
    root = _corpus_dir("emodb", settings)
    return [parse_emodb_name(p) for p in sorted(root.glob("*.flac"))]


def split_ravdess(clips: Iterable[SpeechClip]) -> dict[str, list[SpeechClip]]:
    """Whole actors per split: test 21-24, dev 17-20, train the other sixteen."""
    splits: dict[str, list[SpeechClip]] = {"train": [], "dev": [], "test": []}
    for clip in clips:
        if clip.speaker in RAVDESS_TEST_ACTORS:
            splits["test"].append(clip)
        elif clip.speaker in RAVDESS_DEV_ACTORS:
            splits["dev"].append(clip)
        else:
            splits["train"].append(clip)
    return splits


# --- log-mel cache -----------------------------------------------------------------------------


@dataclass
class SpeechFeatures:
    """Log-mels of a list of clips, row i belonging to clips[i]."""

    clips: list[SpeechClip]
    log_mel: np.ndarray  # [N, M, T] float16
    audio_mask: np.ndarray  # [N, T] bool

    def __len__(self) -> int:
        return len(self.clips)

    def subset(self, clips: Sequence[SpeechClip]) -> SpeechFeatures:
        index = {clip.path: i for i, clip in enumerate(self.clips)}
        rows = np.asarray([index[clip.path] for clip in clips], dtype=np.int64)
        return SpeechFeatures(list(clips), self.log_mel[rows], self.audio_mask[rows])


def _audio_spec_key(spec: FeatureSpec) -> dict[str, int]:
    return {
        "sample_rate": spec.sample_rate,
        "n_fft": spec.n_fft,
        "hop_length": spec.hop_length,
        "n_mels": spec.n_mels,
        "max_audio_frames": spec.max_audio_frames,
    }


def _log_mel_fingerprint(spec: FeatureSpec) -> str:
    """A hash of the shared log-mel of a fixed chirp: a change in what the shared audio code
    computes invalidates the cache, an edit that changes nothing does not."""
    from shared.contract.features.audio import log_mel

    seconds = np.arange(spec.sample_rate, dtype=np.float64) / spec.sample_rate
    chirp = (0.3 * np.sin(2 * np.pi * (100 + 1900 * seconds) * seconds)).astype(np.float32)
    features, mask = log_mel(chirp, spec)
    return hashlib.sha256(np.asarray(features).tobytes() + np.asarray(mask).tobytes()).hexdigest()


def _cache_key(clips: Sequence[SpeechClip], spec: FeatureSpec) -> str:
    payload = {
        "spec": _audio_spec_key(spec),
        "files": [[c.path.name, c.path.stat().st_size] for c in clips],
        "log_mel": _log_mel_fingerprint(spec),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def compute_log_mels(clips: Sequence[SpeechClip], spec: FeatureSpec) -> SpeechFeatures:
    """Decode each clip and compute its log-mel through the shared audio path."""
    from shared.contract.features.audio import load_audio, log_mel

    mels = np.zeros((len(clips), spec.n_mels, spec.max_audio_frames), dtype=np.float16)
    masks = np.zeros((len(clips), spec.max_audio_frames), dtype=np.bool_)
    for i, clip in enumerate(clips):
        waveform = load_audio(clip.path, spec)
        mel, mask = log_mel(waveform, spec)
        mels[i], masks[i] = np.asarray(mel, dtype=np.float16), np.asarray(mask, dtype=np.bool_)
    return SpeechFeatures(list(clips), mels, masks)


def load_log_mels(
    clips: Sequence[SpeechClip], spec: FeatureSpec, settings: Settings | None = None
) -> SpeechFeatures:
    """Log-mels of ``clips``, computed once and cached so epochs never re-decode audio."""
    settings = settings or get_settings()
    corpus = clips[0].corpus if clips else "empty"
    cache = settings.data_dir / "cache" / "speech" / f"{corpus}-{_cache_key(clips, spec)}.safetensors"
    if cache.exists():
        tensors = load_file(str(cache))
        return SpeechFeatures(list(clips), tensors["log_mel"], tensors["audio_mask"])
    log.info("speech_cache_build", corpus=corpus, clips=len(clips), path=str(cache))
    features = compute_log_mels(clips, spec)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    save_file(
        {"log_mel": features.log_mel, "audio_mask": features.audio_mask},
        str(partial),
        metadata={"clips": json.dumps([asdict(c) | {"path": c.path.name} for c in clips])},
    )
    partial.replace(cache)
    return features


# --- augmentation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechAugment:
    """Training-time augmentations of cached log-mels (shared.contract.features.audio's scale: log10 power
    floored 8 decades below the peak, then ``(x + 4) / 4``), applied per row of a batch.

    gain: a level change in dB; noise: stationary noise added in the power domain at a random SNR
    with a random spectral tilt; shift: the speech moved in time (padding stays masked);
    crop: a random window of the speech; SpecAugment: mel bands and time spans replaced by the
    utterance's mean level.
    """

    gain_db: float = 6.0
    noise_probability: float = 0.5
    snr_db: tuple[float, float] = (10.0, 30.0)
    max_shift_frames: int = 30
    freq_masks: int = 2
    freq_mask_bins: int = 8
    time_masks: int = 2
    time_mask_frames: int = 40
    # Train on random windows of this many frames inside the speech (0: whole clips): halves the
    # CNN's work per clip and varies what it hears; evaluation always sees the whole clip.
    crop_frames: int = 256
    # Speaker-like variety for a corpus of few speakers: the mel axis stretched by up to this
    # fraction (a longer or shorter vocal tract moves formants and pitch harmonics), and the time
    # axis by up to ``tempo`` (slower or faster speech). 0 turns either off.
    frequency_warp: float = 0.0
    tempo: float = 0.0

    def __call__(
        self, log_mel: torch.Tensor, audio_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = log_mel.float().clone()
        mask = audio_mask.bool().clone()
        rows, bins, frames = x.shape

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator) * (high - low) + low

        if self.frequency_warp or self.tempo:
            x, mask = self._warp(x, mask, uniform)
        # gain: dB / 10 decades of power, / 4 for the feature scale
        x = x + (uniform(-self.gain_db, self.gain_db, rows, 1, 1) / 40.0)
        weights = mask[:, None, :].float()
        count = weights.sum(-1, keepdim=True).clamp(min=1.0)
        power = torch.pow(10.0, 4.0 * x - 4.0)
        if self.noise_probability > 0:
            mean_power = (power * weights).sum(-1, keepdim=True) / count  # [B, M, 1]
            snr = torch.pow(10.0, uniform(*self.snr_db, rows, 1, 1) / 10.0)
            tilt = torch.linspace(-1.0, 1.0, bins)[None, :, None] * uniform(-1.0, 1.0, rows, 1, 1)
            noise = mean_power.mean(1, keepdim=True) / snr * torch.pow(10.0, tilt)
            noisy = torch.rand(rows, 1, 1, generator=generator) < self.noise_probability
            power = power + noise * noisy
            x = (torch.log10(power) + 4.0) / 4.0
        if self.max_shift_frames:
            shifts = torch.randint(
                -self.max_shift_frames, self.max_shift_frames + 1, (rows,), generator=generator
            )
            source = torch.arange(frames)[None, :] - shifts[:, None]  # [B, T]
            inside = (source >= 0) & (source < frames)
            source = source.clamp(0, frames - 1)
            x = torch.gather(x, 2, source[:, None, :].expand(-1, bins, -1))
            mask = torch.gather(mask, 1, source) & inside
        if self.crop_frames and frames > self.crop_frames:
            first = mask.float().argmax(-1)
            room = (mask.sum(-1) - self.crop_frames).clamp(min=0)
            starts = (first + (torch.rand(rows, generator=generator) * (room + 1)).floor()).long()
            starts = starts.clamp(max=frames - self.crop_frames)
            window = starts[:, None] + torch.arange(self.crop_frames)[None, :]  # [B, crop]
            x = torch.gather(x, 2, window[:, None, :].expand(-1, bins, -1))
            mask = torch.gather(mask, 1, window)
            frames = self.crop_frames
        level = (x * mask[:, None, :]).sum((1, 2), keepdim=True) / (
            mask.sum(-1)[:, None, None].float() * bins
        ).clamp(min=1.0)
        for count_, width, axis, size in (
            (self.freq_masks, self.freq_mask_bins, 1, bins),
            (self.time_masks, self.time_mask_frames, 2, frames),
        ):
            for _ in range(count_):
                widths = torch.randint(0, width + 1, (rows, 1), generator=generator)
                starts = (torch.rand(rows, 1, generator=generator) * (size - widths)).long()
                positions = torch.arange(size)[None, :]
                band = (positions >= starts) & (positions < starts + widths)  # [B, size]
                band = band[:, :, None] if axis == 1 else band[:, None, :]
                x = torch.where(band, level.expand_as(x), x)
        x = x * mask[:, None, :]
        return x.to(log_mel.dtype), mask

    def _warp(self, x: torch.Tensor, mask: torch.Tensor, uniform) -> tuple[torch.Tensor, torch.Tensor]:
        """Stretch each row's mel and time axes by random factors, anchored at the lowest bin and
        at frame 0 (speech that starts late moves with the stretch; what is pushed past the end is
        dropped)."""
        rows = x.shape[0]
        # A factor s samples input position s * output position: s < 1 stretches the image.
        frequency = torch.exp(uniform(-self.frequency_warp, self.frequency_warp, rows))
        time = torch.exp(uniform(-self.tempo, self.tempo, rows))
        theta = torch.zeros(rows, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = time, time - 1.0  # x: frames
        theta[:, 1, 1], theta[:, 1, 2] = frequency, frequency - 1.0  # y: mel bins
        grid = F.affine_grid(theta, [rows, 1, *x.shape[1:]], align_corners=True)
        warped = F.grid_sample(x[:, None], grid, padding_mode="border", align_corners=True)[:, 0]
        frames = F.grid_sample(
            mask[:, None, None, :].float().expand(-1, -1, x.shape[1], -1),
            grid,
            padding_mode="zeros",
            align_corners=True,
        )[:, 0, 0]
        warped_mask = frames > 0.5
        return warped * warped_mask[:, None, :], warped_mask


# --- training rows -----------------------------------------------------------------------------

SPEECH_CORPORA = ("ravdess", "emodb")


def speech_examples(
    corpus: str, split: str, spec: FeatureSpec, *, with_text: bool = False, settings: Settings | None = None
):
    """One corpus split as training rows (``services.model.training.data.examples.ExampleSet``): the audio
    modality from the cached log-mels, text only when ``with_text`` (the spoken statement), video
    never. RAVDESS splits are whole actors; EmoDB is evaluation only, every clip in "test"."""
    from services.model.training.data.examples import ExampleSet
    from shared.contract.features.text import tokenize_utterances
    from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS

    if corpus == "ravdess":
        clips = split_ravdess(read_ravdess(settings))[split]
        features = load_log_mels(read_ravdess(settings), spec, settings).subset(clips)
    elif corpus == "emodb":
        if split != "test":
            return None
        clips = read_emodb(settings)
        features = load_log_mels(clips, spec, settings)
    else:
        raise SpeechDataError(f"unknown speech corpus {corpus!r}")
    modality_mask = torch.zeros(len(clips), len(MODALITIES), dtype=torch.bool)
    modality_mask[:, MODALITIES.index("audio")] = torch.from_numpy(features.audio_mask.any(1))
    tensors = {
        "log_mel": torch.from_numpy(features.log_mel),
        "audio_mask": torch.from_numpy(features.audio_mask),
    }
    if with_text:
        from shared.contract.bundle import UtteranceMeta

        tokens = tokenize_utterances([UtteranceMeta(0.0, 0.0, clip.text) for clip in clips], spec)
        tensors |= {name: torch.as_tensor(np.asarray(value)) for name, value in tokens.items()}
        modality_mask[:, MODALITIES.index("text")] = torch.tensor([bool(clip.text) for clip in clips])

    def index(labels: Sequence[str], value: str | None) -> int:
        return labels.index(value) if value is not None else -1

    return ExampleSet(
        tensors=tensors,
        modality_mask=modality_mask,
        emotion=torch.tensor([index(EMOTIONS, c.emotion) for c in clips], dtype=torch.int64),
        sentiment=torch.tensor([index(SENTIMENTS, c.sentiment) for c in clips], dtype=torch.int64),
        speech=torch.tensor([c.label_index if c.label_index is not None else -1 for c in clips]),
    )
