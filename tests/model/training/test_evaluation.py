import json

from typer.testing import CliRunner

from services.cli import app
from services.model.testing import build_tiny_checkpoint
from services.model.training.evaluation import evaluate_checkpoint
from shared.settings import get_settings


def test_evaluate_writes_report_confusion_pngs_and_model_card(mini_meld, tmp_path):
    checkpoint = build_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "reports" / "test.json"
    report = evaluate_checkpoint(
        checkpoint, "test", out, meld_dir=mini_meld, cache_dir=tmp_path / "cache", acted_speech=False
    )
    written = json.loads(out.read_text())
    assert written["split"] == "test"
    assert written["emotion"]["count"] == 4
    assert set(written["emotion"]["per_class"]) == {
        "anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"
    }  # fmt: skip
    assert 0.0 <= written["emotion"]["ece"] <= 1.0
    assert sum(map(sum, written["sentiment"]["confusion_matrix"])) == 4
    for head in ("emotion", "sentiment"):
        assert (out.parent / written[f"{head}_confusion_png"]).read_bytes()[:4] == b"\x89PNG"
    card = (out.parent / written["model_card"]).read_text()
    assert "| test | emotion | 4 |" in card
    assert "not anyone's inner state" in card
    assert report["emotion"]["weighted_f1"] == written["emotion"]["weighted_f1"]


def test_evaluate_command(mini_meld, tmp_path, monkeypatch):
    checkpoint = build_tiny_checkpoint(tmp_path / "ckpt")
    monkeypatch.setenv("MELD_DIR", str(mini_meld))
    monkeypatch.setenv("MOODREEL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app,
            [
                "evaluate",
                str(checkpoint),
                "--split",
                "dev",
                "--out",
                str(tmp_path / "dev.json"),
                "--no-acted-speech",
            ],
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "emotion: {" in result.output and "weighted_f1" in result.output
    assert json.loads((tmp_path / "dev.json").read_text())["emotion"]["count"] == 4
