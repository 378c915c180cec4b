"""The corrections export: MELD's layout read back by the MELD loader, consent, determinism, S3."""

from __future__ import annotations

import json
from datetime import timedelta

import boto3

from services.model.testing import TINY_SPEC
from services.model.training.data.meld import clip_examples, clip_path, clip_status, read_split
from services.retrain.dataset import MANIFEST, dialogue_id, export, meld_time
from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.db.session import make_session_factory, session_scope
from tests.fixtures.db import engine_for
from tests.retrain.conftest import CORRECTED_AT, UNTIL

pytest_plugins = ["tests.fixtures.s3"]


def run_export(corpus, out, since=None, **kwargs) -> dict:
    with session_scope(make_session_factory(engine_for(corpus.database_url))) as session:
        return export(session, corpus.settings, str(out), since=since, until=UNTIL, **kwargs)


def test_meld_time_is_meld_format():
    assert meld_time(0) == "00:00:00,000"
    assert meld_time(3723.25) == "01:02:03,250"


def test_export_is_read_back_by_the_meld_loader_with_clips(corpus, tmp_path):
    out = tmp_path / "export"
    manifest = run_export(corpus, out)
    train, dev = read_split(out, "train"), read_split(out, "dev")
    assert read_split(out, "test").utterances == []
    # The consenting user's fully labelled rows only: partial labels and the refusing user's are out.
    assert [(u.dialogue_id, u.utterance_id) for u in dev.utterances] == [
        (dialogue_id(corpus.dev_analysis), 0)
    ]
    assert (EMOTIONS[dev.utterances[0].emotion], SENTIMENTS[dev.utterances[0].sentiment]) == (
        "sadness",
        "negative",
    )
    assert sorted((u.dialogue_id, u.utterance_id) for u in train.utterances) == sorted(
        [
            (dialogue_id(corpus.train_analysis), 0),
            (dialogue_id(corpus.train_analysis), 2),
            (dialogue_id(corpus.url_analysis), 0),
        ]
    )
    second = next(u for u in train.utterances if u.key == (dialogue_id(corpus.train_analysis), 2))
    assert EMOTIONS[second.emotion] == "anger" and second.start == 2.0 and second.end == 2.8
    assert second.text == 'line 2, "quoted"\nand broken' and second.speaker == "Ada"

    # Clips were cut from the stored media; the URL analysis has none and stays text-only.
    assert clip_status(out, second)[1] == "ok"
    url_row = next(u for u in train.utterances if u.dialogue_id == dialogue_id(corpus.url_analysis))
    assert clip_path(out, url_row) is None
    examples, report = clip_examples(out, "train", TINY_SPEC, tmp_path / "cache")
    assert report["ok"] == 2 and report["absent"] == 1
    assert int(examples.modality_mask[:, 1].sum()) == 2  # audio read from both clips

    assert manifest["utterances"] == 4 and manifest["splits"] == {"train": 3, "dev": 1, "test": 0}
    assert manifest["clips"] == 3 and manifest["clips_absent"] == 1
    assert manifest["skipped_partial_label"] == 1
    assert set(manifest["files"]) == {
        "train_sent_emo.csv",
        "dev_sent_emo.csv",
        "test_sent_emo.csv",
        f"train_splits/dia{dialogue_id(corpus.train_analysis)}_utt0.mp4",
        f"train_splits/dia{dialogue_id(corpus.train_analysis)}_utt2.mp4",
        f"dev_splits_complete/dia{dialogue_id(corpus.dev_analysis)}_utt0.mp4",
    }
    assert json.loads((out / MANIFEST).read_text()) == manifest


def test_export_is_deterministic_and_respects_since(corpus, tmp_path):
    first, second = run_export(corpus, tmp_path / "a"), run_export(corpus, tmp_path / "b")
    assert first == second
    for name in first["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # Utterance 2 of the train analysis was corrected two minutes after utterance 0.
    later = run_export(corpus, tmp_path / "later", since=CORRECTED_AT + timedelta(minutes=1))
    assert later["utterances"] == 1 and later["splits"]["train"] == 1


def test_consent_withdrawn_exports_nothing(corpus, tmp_path):
    from sqlalchemy import update

    from shared.db.models import User

    with engine_for(corpus.database_url).begin() as connection:
        connection.execute(update(User).values(training_consent=False))
    manifest = run_export(corpus, tmp_path / "none")
    assert manifest["utterances"] == 0 and read_split(tmp_path / "none", "train").utterances == []


def test_export_to_s3(corpus, tmp_path, moto_s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="training")
    manifest = run_export(corpus, "s3://training/corrections/2026-12-01/", s3_client=s3)
    listed = s3.list_objects_v2(Bucket="training", Prefix="corrections/2026-12-01/")["Contents"]
    keys = {item["Key"].removeprefix("corrections/2026-12-01/") for item in listed}
    assert keys == set(manifest["files"]) | {MANIFEST}
    stored = json.loads(
        s3.get_object(Bucket="training", Key=f"corrections/2026-12-01/{MANIFEST}")["Body"].read()
    )
    assert stored == manifest


def test_the_cli_exports(corpus, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from services.cli import app
    from shared.settings import get_settings

    monkeypatch.setenv("MOODREEL_DATABASE_URL", corpus.database_url)
    monkeypatch.setenv("MOODREEL_DATA_DIR", str(corpus.settings.data_dir))
    get_settings.cache_clear()
    try:
        out = tmp_path / "cli"
        result = CliRunner().invoke(
            app,
            ["dataset", "export", "--out", str(out), "--since", "2026-11-01", "--until", UNTIL.isoformat()],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["utterances"] == 4
        assert json.loads((out / MANIFEST).read_text())["since"] == "2026-11-01T00:00:00+00:00"
        again = CliRunner().invoke(app, ["dataset", "export", "--out", str(out)])
        assert again.exit_code == 2 and "not an empty directory" in again.output
        bad = CliRunner().invoke(app, ["dataset", "export", "--out", str(tmp_path / "x"), "--since", "soon"])
        assert bad.exit_code == 2
    finally:
        get_settings.cache_clear()
