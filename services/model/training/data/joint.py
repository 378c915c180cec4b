"""Joint rows: two modalities of one utterance, composed from real single-modality sources.

No corpus here has the words and the voice of the same utterance (MELD's clips cannot be had), so
the data the fusion is calibrated and measured on is composed. Each source, what it teaches, and
its limits:

- ``meld_spoken`` (text + audio, labelled by the text): a MELD utterance read aloud by espeak-ng in
  one of several voices, rates and pitches. espeak-ng's delivery is flat whatever the words say,
  so the label is the text's: a voice that carries no emotion must not move the words' reading.
  Limits: synthetic speech is not sitcom speech, and no row has a voice that truly disagrees
  with its words.
- ``meld_spoken_bed``: the same under a noise or music bed at 5-15 dB SNR (speech in a room).
- ``meld_bed`` (text + non-speech audio, labelled by the text): the transcript over pink or white
  noise, notes at one level, a tone, or music that rises and falls (a staccato melody, struck
  chords, drums) and no voice at all. The speech gate masks most such audio
  (``no_speech``); where it lets some through, the fusion must keep the text's label. Limits:
  generated beds, not a laughter track or a real room.
- ``ravdess_sentence`` (text + audio, labelled by the voice): a RAVDESS clip with its own sentence
  ("Kids are talking by the door", "Dogs are sitting by the door") as transcript. The words say
  nothing emotional, so the voice is the evidence. Limits: two sentences, 24 actors, acted studio
  speech; a sentence's text alone always reads neutral.
- ``meld_text`` and ``ravdess_audio``: one modality each (the existing sources), so every
  combination the service meets has rows.
- faces (``face_examples``; visual, or visual + text, labelled by the face): FER2013 faces as the
  pipeline crops them, alone, beside a MELD line labelled neutral (the words carry no emotion, so
  the face is the evidence) or beside a MELD line of the face's own emotion (the two agree).
  Limits: posed and web photographs of single faces, one frame each, never a face that moves
  or talks; a MELD line and a FER2013 face never come from one person.

Rows go through the same log-mel, speech gate and tokenizer code as served media (a row's audio
is used only where the gate finds speech). Built rows are cached under
``<data_dir>/cache/joint/`` by source, split, count, seed and feature spec.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.model.training.data.examples import ExampleSet
from shared.contract.bundle import UtteranceMeta
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.logging import get_logger
from shared.settings import Settings, get_settings

log = get_logger(__name__)

TEXT, AUDIO, VISUAL = (MODALITIES.index(name) for name in ("text", "audio", "visual"))
FACE_TEXTS = ("none", "neutral", "matching")
# espeak-ng voices and variants (accents, male and female), rates (words per minute), pitches (0-99).
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f3", "en+f2", "en-us+m3")
RATES = (130, 150, 170, 190)
PITCHES = (30, 45, 60, 75)
BEDS = ("pink", "white", "notes", "tone", "staccato", "chords", "drums")
SOURCES = ("meld_spoken", "meld_spoken_bed", "meld_bed", "ravdess_sentence", "meld_text", "ravdess_audio")
BED_SECONDS = 3.0


@dataclass(frozen=True)
class Voice:
    name: str
    rate: int
    pitch: int


def synthesize(text: str, voice: Voice, sample_rate: int) -> np.ndarray:
    """espeak-ng's reading of ``text`` as float32 samples at ``sample_rate``."""
    from scipy.signal import resample_poly

    result = subprocess.run(
        [
            "espeak-ng",
            "--stdout",
            "-v",
            voice.name,
            "-s",
            str(voice.rate),
            "-p",
            str(voice.pitch),
            "--",
            text,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with wave.open(io.BytesIO(result.stdout)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    audio = samples.astype(np.float32) / 32768.0
    divisor = np.gcd(sample_rate, rate)
    return resample_poly(audio, sample_rate // divisor, rate // divisor).astype(np.float32)


def bed(kind: str, samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A non-speech sound: ``pink`` or ``white`` noise, ``notes`` (a decaying three-note figure
    with harmonics, one level), a 440 Hz ``tone``, or music that rises and falls like played
    notes: a ``staccato`` melody at three loudnesses, struck triads (``chords``), a ``drums``
    pattern with accents; at unit RMS."""
    seconds = np.arange(samples) / sample_rate
    if kind == "white":
        sound = rng.standard_normal(samples)
    elif kind == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(samples))
        spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(samples, 1 / sample_rate), 1.0))
        sound = np.fft.irfft(spectrum, samples)
    elif kind == "notes":
        pitch = 262 + 131 * (np.floor(seconds * 2) % 3)
        decay = np.exp(-2 * (seconds % 0.5))
        sound = (np.sin(2 * np.pi * pitch * seconds) + 0.5 * np.sin(4 * np.pi * pitch * seconds)) * decay
    elif kind == "tone":
        sound = np.sin(2 * np.pi * 440 * seconds)
    elif kind == "staccato":
        beat = seconds % 0.25
        pitch = 262 * 2 ** ((np.floor(seconds * 4) * 7 % 12) / 12)
        phase = 2 * np.pi * pitch * seconds
        loudness = 0.5 + 0.25 * (np.floor(seconds * 4) % 3)
        sound = (
            loudness
            * (beat < 0.2)
            * np.exp(-6 * beat)
            * (np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase))
        )
    elif kind == "chords":
        root = 220 * 2 ** ((np.floor(seconds * 2) * 5 % 12) / 12)
        sound = np.exp(-6 * (seconds % 0.5)) * sum(
            np.sin(2 * np.pi * root * ratio * seconds) for ratio in (1.0, 1.26, 1.498)
        )
    elif kind == "drums":
        accent = 1 - 0.5 * (np.floor(seconds * 4) % 2)
        sound = accent * rng.uniform(-1, 1, samples) * np.exp(-25 * (seconds % 0.25))
    else:
        raise ValueError(f"unknown bed {kind!r} (one of {', '.join(BEDS)})")
    return (sound / max(float(np.sqrt(np.mean(sound**2))), 1e-9)).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return max(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 1e-9)


def _level(sound: np.ndarray, dbfs: float) -> np.ndarray:
    return (sound * (10 ** (dbfs / 20) / _rms(sound))).astype(np.float32)


@dataclass(frozen=True)
class JointRow:
    text: str
    waveform: np.ndarray | None
    emotion: int  # index into EMOTIONS, -1 unknown
    sentiment: int  # index into SENTIMENTS, -1 unknown


def rows_to_examples(rows: Sequence[JointRow], spec: FeatureSpec) -> ExampleSet:
    """Token, log-mel and modality tensors of ``rows``, through the served feature code (the
    speech gate decides whether a row's audio is used)."""
    from shared.contract.features.audio import log_mel
    from shared.contract.features.speech import gate_utterances
    from shared.contract.features.text import tokenize_utterances

    count = len(rows)
    mels = np.zeros((count, spec.n_mels, spec.max_audio_frames), dtype=np.float16)
    masks = np.zeros((count, spec.max_audio_frames), dtype=bool)
    speech = np.zeros(count, dtype=bool)
    for i, row in enumerate(rows):
        if row.waveform is None:
            continue
        mels[i], masks[i] = log_mel(row.waveform, spec)
        meta = UtteranceMeta(0.0, len(row.waveform) / spec.sample_rate, row.text)
        speech[i] = gate_utterances(row.waveform, [meta], masks[i : i + 1].any(1), spec)[0].reason is None
    tokens = tokenize_utterances([UtteranceMeta(0.0, 0.0, row.text) for row in rows], spec)
    modality_mask = torch.zeros(count, len(MODALITIES), dtype=torch.bool)
    modality_mask[:, TEXT] = torch.tensor([bool(row.text.strip()) for row in rows])
    modality_mask[:, AUDIO] = torch.from_numpy(masks.any(1) & speech)
    return ExampleSet(
        tensors={**tokens, "log_mel": torch.from_numpy(mels), "audio_mask": torch.from_numpy(masks)},
        modality_mask=modality_mask,
        emotion=torch.tensor([row.emotion for row in rows], dtype=torch.int64),
        sentiment=torch.tensor([row.sentiment for row in rows], dtype=torch.int64),
    )


def _sample(items: Sequence, count: int | None, rng: np.random.Generator) -> list:
    if count is None or count >= len(items):
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=count, replace=False))]


def _meld_rows(
    source: str, split: str, count: int | None, rng: np.random.Generator, spec: FeatureSpec, settings
):
    from services.model.training.data.meld import read_split

    # Utterances without text are left out: there is nothing to read aloud or to label by.
    utterances = _sample([u for u in read_split(settings.meld_dir, split).utterances if u.text], count, rng)
    rows = []
    for utterance in utterances:
        voice = Voice(str(rng.choice(VOICES)), int(rng.choice(RATES)), int(rng.choice(PITCHES)))
        if source == "meld_text":
            waveform = None
        elif source == "meld_bed":
            samples = int(BED_SECONDS * spec.sample_rate)
            waveform = _level(
                bed(str(rng.choice(BEDS)), samples, spec.sample_rate, rng), rng.uniform(-40, -20)
            )
        else:
            waveform = _level(synthesize(utterance.text, voice, spec.sample_rate), -20.0)
            if source == "meld_spoken_bed":
                noise = bed(str(rng.choice(BEDS)), len(waveform), spec.sample_rate, rng)
                waveform = waveform + _level(noise, -20.0 - rng.uniform(5, 15))
        rows.append(JointRow(utterance.text, waveform, utterance.emotion, utterance.sentiment))
    return rows


def _ravdess_rows(
    source: str, split: str, count: int | None, rng: np.random.Generator, spec: FeatureSpec, settings
):
    from services.model.training.data.speech import read_ravdess, split_ravdess
    from shared.contract.features.audio import load_audio

    clips = _sample(split_ravdess(read_ravdess(settings))[split], count, rng)
    rows = []
    for clip in clips:
        text = clip.text if source == "ravdess_sentence" else ""
        emotion = EMOTIONS.index(clip.emotion) if clip.emotion else -1
        sentiment = SENTIMENTS.index(clip.sentiment) if clip.sentiment else -1
        rows.append(JointRow(text, load_audio(clip.path, spec, settings), emotion, sentiment))
    return rows


def joint_examples(
    source: str,
    split: str,
    spec: FeatureSpec,
    *,
    count: int | None = None,
    seed: int = 0,
    settings: Settings | None = None,
) -> ExampleSet:
    """``count`` rows (all when None) of one source's ``split`` (MELD: train/dev/test; RAVDESS:
    actors 1-16 / 17-20 / 21-24), drawn with ``seed``; built once and cached."""
    settings = settings or get_settings()
    if source not in SOURCES:
        raise ValueError(f"unknown joint source {source!r} (one of {', '.join(SOURCES)})")
    key = json.dumps([source, split, count, seed, spec.hash, VOICES, RATES, PITCHES, BEDS])
    cache = (
        settings.data_dir
        / "cache"
        / "joint"
        / f"{source}-{split}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    )
    if cache.is_file():
        return ExampleSet.load(cache)
    rng = np.random.default_rng(seed)
    build = _ravdess_rows if source.startswith("ravdess") else _meld_rows
    rows = build(source, split, count, rng, spec, settings)
    log.info("joint_rows_built", source=source, split=split, rows=len(rows))
    examples = rows_to_examples(rows, spec)
    examples.save(cache)
    return examples


def with_audio_states(
    model, examples: ExampleSet, cache: Path | None = None, batch_size: int = 16
) -> ExampleSet:
    """``examples`` with the frozen speech encoder's per-layer statistics in place of log-mels
    (``audio_states``), computed once for the rows that use audio and cached at ``cache``: a
    Whisper forward pass is by far the costliest step of scoring a row on a CPU."""
    if not getattr(model.audio, "caches_states", False):
        return examples
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        states = load_file(str(cache))["audio_states"]
    else:
        rows = examples.modality_mask[:, AUDIO].nonzero(as_tuple=True)[0]
        shape = (model.audio.backbone.hidden_count, 2 * model.audio.backbone.features)
        states = torch.zeros((len(examples), *shape), dtype=torch.float16)
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                picked = rows[start : start + batch_size]
                computed = model.audio.layer_statistics(
                    examples.tensors["log_mel"][picked], examples.tensors["audio_mask"][picked]
                )
                states[picked] = computed.to(torch.float16)
        if cache is not None:
            from safetensors.torch import save_file

            cache.parent.mkdir(parents=True, exist_ok=True)
            save_file({"audio_states": states}, str(cache))
    tensors = {k: v for k, v in examples.tensors.items() if k not in ("log_mel", "audio_mask")}
    return ExampleSet(
        tensors=tensors | {"audio_states": states},
        modality_mask=examples.modality_mask,
        emotion=examples.emotion,
        sentiment=examples.sentiment,
        speech=examples.speech,
    )


def face_examples(
    split: str,
    spec: FeatureSpec,
    *,
    text: str = "none",
    count: int | None = None,
    seed: int = 0,
    settings: Settings | None = None,
) -> ExampleSet:
    """``count`` FER2013 faces of ``split`` (dev: PublicTest, test: PrivateTest; all when None),
    drawn with ``seed``, as the visual branch receives them, labelled by the face. ``text``:
    "none" (the face alone), "neutral" (beside a MELD line of the same split labelled neutral) or
    "matching" (beside a MELD line labelled with the face's emotion)."""
    from services.model.training.data.faces import as_frames, load_split_arrays
    from services.model.training.data.meld import read_split

    if text not in FACE_TEXTS:
        raise ValueError(f"text must be one of {FACE_TEXTS}, not {text!r}")
    settings = settings or get_settings()
    rng = np.random.default_rng(seed)
    faces, labels = load_split_arrays(split, settings)
    picked = _sample(range(len(faces)), count, rng)
    lines = [u for u in read_split(settings.meld_dir, split).utterances if u.text]
    by_emotion = {k: [u.text for u in lines if u.emotion == k] for k in range(len(EMOTIONS))}
    neutral = by_emotion[EMOTIONS.index("neutral")]
    words = []
    for index in picked:
        pool = {"none": None, "neutral": neutral, "matching": by_emotion[int(labels[index])]}[text]
        words.append(str(pool[rng.integers(len(pool))]) if pool else "")
    rows = [JointRow(line, None, int(labels[index]), -1) for line, index in zip(words, picked, strict=True)]
    examples = rows_to_examples(rows, spec)
    examples.tensors["frames"] = torch.from_numpy(as_frames(faces[picked], spec.frame_size))
    examples.modality_mask[:, VISUAL] = True
    return examples
