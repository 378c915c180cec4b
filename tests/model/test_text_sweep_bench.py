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
    assert spread.keys() == {"dev_emotion_weighted_f1"}
    assert spread["dev_emotion_weighted_f1"]["mean"] == pytest.approx(0.6)
    assert spread["dev_emotion_weighted_f1"]["sd"] == pytest.approx(0.1)


def _scored_meta(dev_f1: float, with_test: bool) -> dict:
    report = {"weighted_f1": dev_f1, "macro_f1": 0.4, "accuracy": 0.5, "ece": 0.04, "per_class": {}}
    splits = ("dev", "test") if with_test else ("dev",)
    meta = _meta(FLAGS)
    meta["metrics"] = {split: {"emotion": report, "sentiment": report} for split in splits}
    meta["training"] |= {"seconds": 1.0, "device": "cpu"}
    return meta | {"best_epoch": 2}


def test_selection_reads_dev_and_only_the_selected_recipe_reads_test(monkeypatch) -> None:
    dev_scores = {"base": 0.55, "epochs4": 0.58, "context1": 0.57}
    calls: list[tuple[str, int, bool]] = []

    def fake_train(name, overrides, seed, evaluate_test):
        calls.append((name, seed, evaluate_test))
        variant = name.removesuffix("-scored")
        return _scored_meta(dev_scores[variant] + 0.001 * seed, with_test=evaluate_test), False

    monkeypatch.setattr(text_sweep, "train", fake_train)
    document = text_sweep.sweep(list(dev_scores), seeds=2)
    assert document["selected"] == "epochs4"
    assert [call for call in calls if call[2]] == [("epochs4-scored", 0, True), ("epochs4-scored", 1, True)]
    assert all(not evaluate_test for name, _, evaluate_test in calls if not name.endswith("-scored"))
    assert all("test_emotion_weighted_f1" not in run["seed0"] for run in document["variants"].values())
    spread = document["selected_spread"]["dev_emotion_weighted_f1"]
    assert spread["mean"] == pytest.approx(0.5805)
    target = document["targets"]["test_emotion_weighted_f1"]
    assert target["target"] == ">= 0.63" and target["mean"] == pytest.approx(0.5805) and not target["met"]
    assert document["targets"]["test_emotion_ece"]["met"] is True
