"""The ``moodreel`` client commands against the real stack (gateway, worker, model server)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.client.test_sdk import signed_up_clients

pytestmark = pytest.mark.slow


@pytest.fixture
def env(api_url):
    account, keyed = signed_up_clients(api_url)
    yield {"MOODREEL_URL": api_url, "MOODREEL_API_KEY": keyed._http.headers["X-API-Key"]}
    account.close()
    keyed.close()


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env=env)


def test_analyse_file_with_transcript_then_list_show_export_cancel(env, clips, tmp_path):
    transcript = tmp_path / "spoken.srt"
    transcript.write_text(clips.spoken_srt)
    out = tmp_path / "result.json"
    result = invoke(
        [
            "analyse",
            str(clips.paths["spoken.mp4"]),
            "--transcript",
            str(transcript),
            "--format",
            "json",
            "--out",
            str(out),
        ],
        env,
    )
    assert result.exit_code == 0, result.output + result.stderr
    document = json.loads(out.read_text())
    assert document["status"] == "succeeded"
    assert len(document["utterances"]) == clips.spoken_srt.count("-->")
    analysis_id = document["id"]

    listed = invoke(["analyses", "list", "--format", "json"], env)
    assert listed.exit_code == 0 and [item["id"] for item in json.loads(listed.stdout)["items"]] == [
        analysis_id
    ]
    table = invoke(["analyses", "list"], env)
    assert table.exit_code == 0 and analysis_id in table.stdout and "succeeded" in table.stdout
    assert "spoken.mp4" in table.stdout
    searched = invoke(["analyses", "list", "--q", "nothing-like-it", "--format", "json"], env)
    assert searched.exit_code == 0 and json.loads(searched.stdout)["items"] == []

    shown = invoke(["analyses", "show", analysis_id], env)
    first_label = document["utterances"][0]["emotion"]["label"]
    assert shown.exit_code == 0 and first_label in shown.stdout

    exported = invoke(["analyses", "export", analysis_id, "--format", "csv"], env)
    assert exported.exit_code == 0
    assert len(list(csv.DictReader(io.StringIO(exported.stdout)))) == len(document["utterances"])

    srt = invoke(["analyses", "show", analysis_id, "--format", "srt"], env)
    assert srt.exit_code == 0 and srt.stdout.count("-->") == len(document["utterances"])

    deleted = invoke(["analyses", "cancel", analysis_id], env)
    assert deleted.exit_code == 0
    gone = invoke(["analyses", "show", analysis_id], env)
    assert gone.exit_code == 1 and gone.stderr.startswith("moodreel: 404 analysis_not_found: ")
    assert len(gone.stderr.strip().splitlines()) == 1


def test_analyse_url_as_srt_and_failures_are_one_line(env, clips):
    result = invoke(["analyse", clips.url("spoken.mp4"), "--format", "srt"], env)
    assert result.exit_code == 0, result.stderr
    assert "-->" in result.stdout and "[" in result.stdout

    failed = invoke(["analyse", clips.url("noise.mp4")], env)
    assert failed.exit_code == 1
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("moodreel: the analysis ") and " failed: not_media: " in last_line
    assert "Traceback" not in failed.stderr

    bad_key = invoke(["analyse", clips.url("short.mp4")], env | {"MOODREEL_API_KEY": "mr_live_nope"})
    assert bad_key.exit_code == 1
    assert (
        bad_key.stderr.strip()
        == "moodreel: 401 unauthorized: The credentials are malformed, invalid or expired."
    )

    no_key = invoke(["analyses", "list"], {"MOODREEL_URL": env["MOODREEL_URL"], "MOODREEL_API_KEY": ""})
    assert no_key.exit_code == 1 and "MOODREEL_API_KEY" in no_key.stderr

    missing = invoke(["analyse", str(Path("/nonexistent/clip.mp4"))], env)
    assert missing.exit_code == 1 and "no such file" in missing.stderr
