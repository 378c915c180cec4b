"""The speech gate's detectors on acted speech, on non-speech and on speech under music.

Candidates: WebRTC's detector with its tonal test per ``tonal_min_run_frames`` (1: every tonal frame
refused, the ``FeatureSpec`` default; above 1: only runs of that many tonal frames holding one
pitch) and Silero VAD per ``silero_threshold``. For each, the share of RAVDESS actors 17-20 (dev)
clips whose whole span passes the gate, the speech fraction of the robustness bench's generated
non-speech (noise at -60 to -20 dBFS, a 440 Hz tone, notes at one level, silence, and music that
rises and falls: a staccato melody, struck chords, drums, all three), of espeak-ng lines, and of
the same lines under each music at 10 dB SNR, and the detector's CPU-seconds per second of audio.
Dev only: this chooses the detector, the test split is not read.

    .venv/bin/python bench/speech_gate.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

# The robustness bench's generated sounds and voices (this folder is on the path of a bench run).
from robustness import non_speech_sources, render, speak

from services.model.training.data.speech import read_ravdess, split_ravdess
from shared.contract.features.audio import load_audio
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.speech import speech_fraction
from shared.settings import get_settings

RESULTS = Path(__file__).parent / "results" / "speech-gate.json"
RUNS = (1, 5, 8, 10, 15)
SILERO_THRESHOLDS = (0.3, 0.5, 0.7)
MUSIC_SNR_DB = 10.0
LINES = (
    "I can't believe you did that to me.",
    "Well, that is the best news I have heard all week!",
    "Okay, see you tomorrow then.",
)


def with_bed(speech: np.ndarray, bed: np.ndarray) -> np.ndarray:
    """``speech`` with ``bed`` under it at MUSIC_SNR_DB (RMS over the shorter length)."""
    length = min(len(speech), len(bed))
    speech, bed = speech[:length], bed[:length]
    gain = np.sqrt(np.mean(speech**2) / max(float(np.mean(bed**2)), 1e-12)) * 10 ** (-MUSIC_SNR_DB / 20)
    return np.clip(speech + gain * bed, -1.0, 1.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    settings = get_settings()
    base = FeatureSpec(frames_per_utterance=0)
    clips = split_ravdess(read_ravdess(settings))["dev"]
    acted = [load_audio(clip.path, base, settings) for clip in clips]
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        sounds = {
            name: load_audio(render(directory, name, source), base, settings)
            for name, source in non_speech_sources().items()
        }
        spoken = [load_audio(speak(directory, i, line), base, settings) for i, line in enumerate(LINES)]
    music = {name: wav for name, wav in sounds.items() if name.startswith("music_")}
    in_music = {
        f"line{i}+{name}": with_bed(line, bed_wav)
        for name, bed_wav in music.items()
        for i, line in enumerate(spoken)
    }
    candidates = [(f"webrtc/tonal_min_run_frames={run}", {"tonal_min_run_frames": run}) for run in RUNS]
    candidates += [
        (f"silero/threshold={threshold}", {"speech_detector": "silero", "silero_threshold": threshold})
        for threshold in SILERO_THRESHOLDS
    ]
    rows = {}
    for name, update in candidates:
        spec = base.model_copy(update=update)
        cpu = time.process_time()
        fractions = [speech_fraction(wav, spec) for wav in acted]
        cpu_per_second = (time.process_time() - cpu) / (sum(len(wav) for wav in acted) / spec.sample_rate)
        non_speech = {k: round(speech_fraction(wav, spec), 4) for k, wav in sounds.items()}
        under_music = [speech_fraction(wav, spec) for wav in in_music.values()]
        rows[name] = {
            "ravdess_dev_clips_passing": sum(f >= spec.min_speech_fraction for f in fractions),
            "ravdess_dev_clips": len(fractions),
            "non_speech_passing": sorted(k for k, v in non_speech.items() if v >= spec.min_speech_fraction),
            "non_speech_speech_fraction": non_speech,
            "espeak_speech_fraction": [round(speech_fraction(wav, spec), 4) for wav in spoken],
            "espeak_under_music_passing": sum(f >= spec.min_speech_fraction for f in under_music),
            "espeak_under_music": len(under_music),
            "cpu_seconds_per_audio_second": round(cpu_per_second, 5),
        }
        print(name, {k: v for k, v in rows[name].items() if k != "non_speech_speech_fraction"}, flush=True)
    report = {
        "split": "dev",
        "min_speech_fraction": base.min_speech_fraction,
        "max_tonal_share": base.max_tonal_share,
        "music_snr_db": MUSIC_SNR_DB,
        "by_detector": rows,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
