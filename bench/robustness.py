"""Sound that is not speech must not move the result: the speech gate on generated media.

Media generated here (ffmpeg lavfi, espeak-ng): pink and white noise at -60 to -20 dBFS, a 440 Hz
tone, synthetic notes, digital silence, and espeak-ng speech, each 3 s, each alone (one window,
no transcript) and under a transcript line. Through the real feature pipeline and a checkpoint
(default: the committed one), with the gate as the checkpoint's spec sets it and, as the baseline
in the same run, with the gate off. Reported: how often audio is used on non-speech utterances
(target <= 5 %), how often the fused label under a transcript equals the text-only label for
non-speech audio (target >= 95 %), and how often speech keeps its audio. Writes
``bench/results/robustness.json``.

    .venv/bin/python bench/robustness.py [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from services.model.core.checkpoint import load_checkpoint
from services.model.core.network import inputs_from_bundle
from shared.contract.features.pipeline import extract_features
from shared.contract.labels import EMOTIONS, MODALITIES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "robustness.json"
DEFAULT_CHECKPOINT = ROOT / "services" / "model" / "checkpoints" / "default"
AUDIO = MODALITIES.index("audio")
SECONDS = 3
NOTES = (
    "aevalsrc=0.25*sin(2*PI*(262+131*mod(floor(t*2)\\,3))*t)*exp(-2*mod(t\\,0.5))"
    f"+0.12*sin(4*PI*(262+131*mod(floor(t*2)\\,3))*t)*exp(-3*mod(t\\,0.5))+0.1*sin(2*PI*131*t):d={SECONDS}:s=16000"
)
# Music with the rise and fall of played notes (the notes above keep one level): a staccato melody at
# three loudnesses, struck triads, a drum pattern with accents, and the three together.
_PITCH = "262*pow(2\\,mod(floor(t*4)*7\\,12)/12)"
_STACCATO = (
    f"(0.5+0.25*mod(floor(t*4)\\,3))*lt(mod(t\\,0.25)\\,0.2)*exp(-6*mod(t\\,0.25))"
    f"*(sin(2*PI*{_PITCH}*t)+0.4*sin(4*PI*{_PITCH}*t)+0.2*sin(6*PI*{_PITCH}*t))"
)
_ROOT = "220*pow(2\\,mod(floor(t*2)*5\\,12)/12)"
_CHORDS = f"exp(-6*mod(t\\,0.5))*(sin(2*PI*{_ROOT}*t)+sin(2*PI*{_ROOT}*1.26*t)+sin(2*PI*{_ROOT}*1.498*t))"
_DRUMS = "(1-0.5*mod(floor(t*4)\\,2))*(2*random(0)-1)*exp(-25*mod(t\\,0.25))"
MUSIC = {
    "staccato": f"aevalsrc=0.2*{_STACCATO}:d={SECONDS}:s=16000",
    "chords": f"aevalsrc=0.12*{_CHORDS}:d={SECONDS}:s=16000",
    "drums": f"aevalsrc=0.4*{_DRUMS}:d={SECONDS}:s=16000",
    "band": f"aevalsrc=0.1*{_STACCATO}+0.04*{_CHORDS}+0.4*{_DRUMS}:d={SECONDS}:s=16000",
}
LINES = (
    "That's great news!",
    "I am so angry right now.",
    "Oh no, this is terrible.",
    "Okay, see you at seven.",
)
SPOKEN = (
    "I can't believe you did that, this is the best day ever!",
    "Put the boxes by the door and close the window.",
    "Why would you say something like that to me?",
)

NOISE_SEED = 7


def non_speech_sources() -> dict[str, str]:
    sources = {}
    for level in (-60, -50, -40, -30, -20):
        for color in ("pink", "white"):
            sources[f"{color}_{level}dBFS"] = (
                # Seeded: ffmpeg draws another noise each run otherwise, and the ungated baseline
                # moved by a few labels between runs.
                f"anoisesrc=color={color}:amplitude=1:duration={SECONDS}:seed={NOISE_SEED},volume={level}dB"
            )
    sources["tone_440Hz"] = f"sine=frequency=440:duration={SECONDS}"
    sources["tone_440Hz_-30dBFS"] = f"sine=frequency=440:duration={SECONDS},volume=-30dB"
    sources["notes"] = NOTES
    sources |= {f"music_{name}": source for name, source in MUSIC.items()}
    sources["silence"] = f"anullsrc=r=16000:cl=mono:d={SECONDS}"
    return sources


def render(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.m4a"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "1", "-ar", "16000",
         "-c:a", "aac", str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


def speak(directory: Path, index: int, text: str) -> Path:
    wav = directory / f"speech_{index}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, timeout=120)
    path = directory / f"speech_{index}.m4a"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-af", f"apad=whole_dur={SECONDS}",
         "-ac", "1", "-ar", "16000", "-c:a", "aac", str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


@torch.no_grad()
def score(model, bundle) -> tuple[list[bool], list[str], list[str]]:
    """(audio used, fused label, text-only label) per utterance."""
    inputs = inputs_from_bundle(bundle)
    output = model(inputs)
    inputs.modality_mask = inputs.modality_mask.clone()
    inputs.modality_mask[:, AUDIO] = False
    text_only = model(inputs)
    return (
        output.modalities_used[:, AUDIO].tolist(),
        [EMOTIONS[i] for i in output.emotion_logits.argmax(-1).tolist()],
        [EMOTIONS[i] for i in text_only.emotion_logits.argmax(-1).tolist()],
    )


def run_case(model, spec, media: Path, transcript: str | None) -> dict:
    segments = [{"start": 0.1, "end": SECONDS - 0.1, "text": transcript}] if transcript else None
    bundle = extract_features(media, spec, segments, window_seconds=SECONDS)
    used, fused, text_only = score(model, bundle)
    return {
        "audio_used": used[0],
        "fused": fused[0],
        "text_only": text_only[0] if transcript else None,
        "audio_reason": bundle.utterances[0].audio_reason,
        "speech_fraction": bundle.utterances[0].speech_fraction,
    }


def summarise(cases: list[dict]) -> dict:
    non_speech = [c for c in cases if not c["speech"]]
    speech = [c for c in cases if c["speech"]]
    under_text = [c for c in non_speech if c["transcript"]]
    return {
        "non_speech_utterances": len(non_speech),
        "non_speech_audio_used_rate": sum(c["audio_used"] for c in non_speech) / max(1, len(non_speech)),
        "non_speech_under_transcript": len(under_text),
        "fused_equals_text_only_rate": sum(c["fused"] == c["text_only"] for c in under_text)
        / max(1, len(under_text)),
        "speech_utterances": len(speech),
        "speech_audio_used_rate": sum(c["audio_used"] for c in speech) / max(1, len(speech)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    loaded = load_checkpoint(args.checkpoint)
    gated = loaded.spec
    ungated = gated.model_copy(update={"speech_gate": False})
    report: dict = {
        "checkpoint": str(args.checkpoint.relative_to(ROOT))
        if args.checkpoint.is_relative_to(ROOT)
        else args.checkpoint.name,
        "feature_spec_hash": gated.hash,
        "conditions": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        media = {
            name: (render(directory, name, source), False) for name, source in non_speech_sources().items()
        }
        for index, text in enumerate(SPOKEN):
            media[f"espeak_{index}"] = (speak(directory, index, text), True)
        for condition, spec in (("gate", gated), ("baseline_no_gate", ungated)):
            cases = []
            for name, (path, is_speech) in media.items():
                for transcript in (None, *LINES):
                    case = run_case(loaded.model, spec, path, transcript)
                    cases.append({"media": name, "speech": is_speech, "transcript": transcript, **case})
            report["conditions"][condition] = {"summary": summarise(cases), "cases": cases}
    report["targets"] = {"non_speech_audio_used_rate": "<= 0.05", "fused_equals_text_only_rate": ">= 0.95"}
    report["seconds"] = round(time.monotonic() - started, 1)
    report["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for condition, data in report["conditions"].items():
        print(condition, json.dumps(data["summary"]))


if __name__ == "__main__":
    main()
