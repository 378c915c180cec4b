"""The text recipe sweep resumes: a stored run is reused only when it was trained with the very
flags asked for (a spec setting added later, at its default, leaves it reusable), and a run stopped
before its final scoring is trained again."""

from __future__ import annotations

import json
import subprocess

import pytest

from bench import text_sweep
from services.model.training.cli import config_from_strings
from services.model.training.config import hyperparameters


def _meta(flags: dict[str, str], *, metrics: bool = True) -> dict:
    values = text_sweep.trainer_values(flags)
    meta = {"training": {"hyperparameters": hyperparameters(config_from_strings(values))}}
    if metrics:
        meta["metrics"] = {}
    return meta


FLAGS = text_sweep._flags(text_sweep.VARIANTS["context2"], seed=0, evaluate_test=False)


def test_a_run_with_the_same_flags_is_reused() -> None:
    assert text_sweep.stored_run_matches(_meta(FLAGS), FLAGS)


@pytest.mark.parametrize(
    "changed",
    [
        {"lr-text-encoder": "1e-4"},
        {"seed": "1"},
        {"evaluate-test": "true"},
        {"spec-context-turns": "1"},
        {"spec-context-next": "false"},
    ],
)
def test_a_run_with_other_flags_is_not(changed: dict[str, str]) -> None:
    assert not text_sweep.stored_run_matches(_meta(FLAGS | changed), FLAGS)


def test_a_spec_setting_added_later_at_its_default_keeps_a_run_reusable() -> None:
    meta = _meta(FLAGS)
    del meta["training"]["hyperparameters"]["spec.context_next"]
    assert text_sweep.stored_run_matches(meta, FLAGS)


def test_a_run_without_its_final_scores_is_trained_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(text_sweep, "RUNS", tmp_path)
    checkpoint = tmp_path / "context2-seed0" / "checkpoint"
    checkpoint.mkdir(parents=True)
    launched: list[list[str]] = []

    def record(command, **options):
        launched.append(command)
        (checkpoint / "checkpoint.json").write_text(json.dumps({"meta": _meta(FLAGS)}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(text_sweep.subprocess, "run", record)
    (checkpoint / "checkpoint.json").write_text(json.dumps({"meta": _meta(FLAGS, metrics=False)}))
    text_sweep.train("context2", text_sweep.VARIANTS["context2"], seed=0, evaluate_test=False)
    assert len(launched) == 1
    command = launched[0]
    assert command[command.index("--spec-context-turns") + 1] == "2"
    assert command[command.index("--output-dir") + 1] == str(tmp_path / "context2-seed0")
    # Now stored whole: the next sweep reads it instead of training.
    text_sweep.train("context2", text_sweep.VARIANTS["context2"], seed=0, evaluate_test=False)
    assert len(launched) == 1


def test_seed_spread() -> None:
    runs = [{"dev_emotion_weighted_f1": value, "seconds": 9.0} for value in (0.5, 0.6, 0.7)]
    spread = text_sweep.seed_spread(runs)
    assert spread == {"dev_emotion_weighted_f1": {"mean": 0.6, "sd": 0.1}}
