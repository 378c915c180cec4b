"""The speech gate's tonal test on acted speech and on non-speech, per ``tonal_min_run_frames``.

For each value (1: every tonal frame refused, as the default spec does; above 1: only runs of that
many tonal frames holding one pitch), the share of RAVDESS actors 17-20 (dev) clips whose whole
span passes the gate, and the speech fraction of the robustness bench's generated non-speech
(noise at -60 to -20 dBFS, a 440 Hz tone, synthetic notes, silence) and of espeak-ng lines. Dev
only: this chooses a value, the test split is not read.

    .venv/bin/python bench/speech_gate.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# The robustness bench's generated sounds and voices (this folder is on the path of a bench run).
from robustness import non_speech_sources, render, speak

from services.model.training.data.speech import read_ravdess, split_ravdess
from shared.contract.features.audio import load_audio
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.speech import speech_fraction
from shared.settings import get_settings

RESULTS = Path(__file__).parent / "results" / "speech-gate.json"
RUNS = (1, 5, 8, 10, 15)
LINES = (
    "I can't believe you did that to me.",
    "Well, that is the best news I have heard all week!",
    "Okay, see you tomorrow then.",
)


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
    rows = {}
    for run in RUNS:
        spec = base.model_copy(update={"tonal_min_run_frames": run})
        fractions = [speech_fraction(wav, spec) for wav in acted]
        non_speech = {name: round(speech_fraction(wav, spec), 4) for name, wav in sounds.items()}
        rows[str(run)] = {
            "ravdess_dev_clips_passing": sum(f >= spec.min_speech_fraction for f in fractions),
            "ravdess_dev_clips": len(fractions),
            "non_speech_passing": sorted(k for k, v in non_speech.items() if v >= spec.min_speech_fraction),
            "non_speech_speech_fraction": non_speech,
            "espeak_speech_fraction": [round(speech_fraction(wav, spec), 4) for wav in spoken],
        }
        print(run, {k: v for k, v in rows[str(run)].items() if k != "non_speech_speech_fraction"}, flush=True)
    report = {
        "split": "dev",
        "min_speech_fraction": base.min_speech_fraction,
        "max_tonal_share": base.max_tonal_share,
        "by_tonal_min_run_frames": rows,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
