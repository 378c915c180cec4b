"""The self-hosted loop: export → train (tiny random-weight config) → guard → publish, and the
model server swapping models under concurrent load on loopback without dropping a request."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx

from services.model.core.checkpoint import load_checkpoint
from services.model.serving.server import create_app, serve_in_background
from services.model.testing import TINY_SPEC, build_tiny_checkpoint
from services.retrain.guard import decide
from services.retrain.loop import publish, retrain
from shared.contract.bundle import CONTENT_TYPE as BUNDLE_CONTENT_TYPE
from shared.contract.predictions import InvocationResponse
from shared.db.session import make_session_factory
from tests.fixtures.db import engine_for
from tests.model.conftest import mini_meld  # noqa: F401  (the fixture)
from tests.model.serving.conftest import make_bundle
from tests.model.training.test_loop import tiny_train_config
from tests.retrain.conftest import UNTIL

BUNDLE_HEADERS = {"Content-Type": BUNDLE_CONTENT_TYPE, "Accept": "application/json"}


def test_retrain_exports_trains_compares_and_publishes(corpus, mini_meld, tmp_path):  # noqa: F811
    baseline = build_tiny_checkpoint(tmp_path / "deployed")
    settings = corpus.settings.model_copy(
        update={
            "model_dir": baseline,
            "retrain_min_new_items": 3,
            "retrain_min_interval_seconds": 3600,
            # Random weights on both sides: a wide margin makes this the "not worse" path.
            "retrain_margin": 1.0,
        }
    )
    factory = make_session_factory(engine_for(corpus.database_url))
    root = tmp_path / "models"
    config = tiny_train_config(tmp_path, mini_meld, epochs=1, evaluate_test=False)
    outcome = retrain(factory, settings, config, root, now=UNTIL)
    assert outcome.started and outcome.new_items == 4
    decision = outcome.decision
    assert decision["deploy"] is True and decision["job"]["baseline"] == str(baseline)
    slices = {c["slice"] for c in decision["comparisons"]}
    assert slices == {"dev", "corrections_dev"}
    # The corrections' held-out slice has one utterance: recorded, not judged.
    assert all(not c["judged"] for c in decision["comparisons"] if c["slice"] == "corrections_dev")

    name = decision["job"]["name"]
    assert (root / "current").resolve() == (root / "versions" / name).resolve()
    published = load_checkpoint(root / "current")
    assert published.meta["data"]["sources"] == ["meld", "corrections"]
    assert published.meta["baseline"]["version"] == "test" and "dev" in published.meta["baseline"]["metrics"]
    assert json.loads((root / "decisions" / f"{name}.json").read_text()) == decision

    # Nothing new since: held by the debounce, nothing trained.
    again = retrain(factory, settings, config, root, now=UNTIL + timedelta(minutes=5))
    assert again.started is False and again.reason == "0 new utterances, fewer than 3"
    assert len(list((root / "decisions").iterdir())) == 1


def test_the_guard_refuses_a_worse_candidate():
    def report(emotion: float) -> dict:
        return {
            "emotion": {"weighted_f1": emotion, "count": 100},
            "sentiment": {"weighted_f1": 0.7, "count": 100},
        }

    meta = {"metrics": {"dev": report(0.58)}, "baseline": {"metrics": {"dev": report(0.60)}}}
    assert decide(meta, margin=0.01, min_slice_utterances=30).deploy is False
    assert decide(meta, margin=0.03, min_slice_utterances=30).deploy is True
    assert decide({"metrics": {"dev": report(0.9)}}, margin=0.01, min_slice_utterances=30).deploy is False
    assert decide({"metrics": {}}, margin=0.01, min_slice_utterances=30, deployed=False).deploy is False


def test_the_server_swaps_models_under_load_and_answers_every_request(tmp_path):
    first = build_tiny_checkpoint(tmp_path / "first", seed=0)
    second = build_tiny_checkpoint(tmp_path / "second", seed=1)
    document = json.loads((second / "checkpoint.json").read_text())
    document["meta"]["version"] = "second"
    (second / "checkpoint.json").write_text(json.dumps(document))
    root = tmp_path / "models"
    publish(first, root, "first")

    from shared.settings import Settings

    settings = Settings(
        environment="test", model_watch_seconds=0.05, model_max_concurrency=2, model_torch_threads=1
    )
    app = create_app(root / "current", settings=settings)
    bundle = make_bundle(TINY_SPEC, count=2).to_bytes()
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/invocations", content=bundle, headers=BUNDLE_HEADERS)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                versions.append(InvocationResponse.model_validate_json(response.content).model.version)

    with serve_in_background(app) as url:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/ping").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with ThreadPoolExecutor(max_workers=4) as pool:
            workers = [pool.submit(hammer, url) for _ in range(4)]
            while len(versions) < 20 and time.monotonic() < deadline:
                time.sleep(0.02)
            publish(second, root, "second")
            while httpx.get(f"{url}/ping").json()["model"]["version"] != "second":
                assert time.monotonic() < deadline, "the server did not reload"
                time.sleep(0.02)
            swapped_at = len(versions)
            while len(versions) < swapped_at + 20 and time.monotonic() < deadline:
                time.sleep(0.02)
            stop.set()
            for worker in workers:
                worker.result()
    assert failures == []
    assert versions[0] == "test" and versions[-1] == "second"
    assert set(versions) == {"test", "second"} and len(versions) >= 40


def test_a_published_version_that_cannot_load_leaves_the_old_model_serving(tmp_path):
    first = build_tiny_checkpoint(tmp_path / "first")
    root = tmp_path / "models"
    publish(first, root, "first")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.json").write_text("{}")

    from shared.settings import Settings

    app = create_app(root / "current", settings=Settings(environment="test", model_watch_seconds=0.05))
    with serve_in_background(app) as url:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/ping").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        publish(broken, root, "broken")
        time.sleep(0.5)
        ping = httpx.get(f"{url}/ping")
        assert ping.status_code == 200 and ping.json()["model"]["version"] == "test"
        response = httpx.post(
            f"{url}/invocations", content=make_bundle(TINY_SPEC).to_bytes(), headers=BUNDLE_HEADERS
        )
        assert response.status_code == 200


def test_publish_is_an_atomic_switch(tmp_path):
    first, second = build_tiny_checkpoint(tmp_path / "a"), build_tiny_checkpoint(tmp_path / "b", seed=2)
    root = tmp_path / "models"
    publish(first, root, "v1")
    publish(second, root, "v2")
    assert (root / "current").is_symlink() and Path((root / "current").readlink()) == Path("versions/v2")
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v1", "v2"]


def test_the_baseline_can_be_a_channel_holding_model_tar_gz(mini_meld, tmp_path):  # noqa: F811
    """What SageMaker's "baseline" channel holds: the deployed model.tar.gz."""
    import torch

    from services.model.serving.packaging import package_model_tar
    from services.model.training.evaluation import score_baseline

    channel = tmp_path / "baseline"
    package_model_tar(build_tiny_checkpoint(tmp_path / "deployed"), channel / "model.tar.gz")
    config = tiny_train_config(tmp_path, mini_meld)
    scored = score_baseline(channel, config, torch.device("cpu"))
    assert scored["version"] == "test" and set(scored["metrics"]) == {"dev"}
    assert scored["metrics"]["dev"]["emotion"]["count"] == 4


def test_the_cli_runs_one_pass_and_reports_the_debounce(corpus, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from services.cli import app
    from shared.settings import get_settings

    monkeypatch.setenv("MOODREEL_DATABASE_URL", corpus.database_url)
    monkeypatch.setenv("MOODREEL_DATA_DIR", str(corpus.settings.data_dir))
    monkeypatch.setenv("MOODREEL_RETRAIN_MIN_NEW_ITEMS", "50")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["retrain", "--publish-dir", str(tmp_path / "models"), "--epochs", "1"]
        )
        assert result.exit_code == 0, result.output
        outcome = json.loads(result.stdout)
        assert outcome["started"] is False and outcome["reason"] == "4 new utterances, fewer than 50"
        assert outcome["export"]["utterances"] == 4
        assert json.loads((tmp_path / "models" / "state.json").read_text())["new_items"] == 4
    finally:
        get_settings.cache_clear()
