"""Model swap under load: what a publication (``current`` switched to a new version) costs the
requests being served, against the same server's steady latency measured in the same run.

A model server on a loopback port watches ``<work>/current`` (MOODREEL_MODEL_WATCH_SECONDS 0.2);
four clients send 8-utterance bundles of the default checkpoint's FeatureSpec without pause. The
run times ``--requests`` steady requests, then publishes a second version, and times requests
until ``/ping`` names the new version plus ``--requests`` more. Reported: failed requests (the
property: 0), latency p50/p99 in both windows and their ratio, seconds from publication to the
new model serving. Results go to bench/results/swap.json.

    .venv/bin/python bench/swap.py [--requests 40] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from services.model.core.checkpoint import read_checkpoint_document  # noqa: E402
from services.model.serving.server import create_app, serve_in_background  # noqa: E402
from services.retrain.loop import publish  # noqa: E402
from shared.contract.bundle import CONTENT_TYPE  # noqa: E402
from shared.contract.features.spec import FeatureSpec  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.model.serving.conftest import make_bundle  # noqa: E402

WORK = ROOT / "bench" / "media" / "swap"
RESULTS = ROOT / "bench" / "results" / "swap.json"
CLIENTS = 4


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "services/model/checkpoints/default")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    second = WORK / "second-source"
    shutil.copytree(args.model_dir, second)
    document = json.loads((second / "checkpoint.json").read_text())
    document["meta"]["version"] = "swapped"
    (second / "checkpoint.json").write_text(json.dumps(document))
    publish(args.model_dir, WORK, "first")

    spec = FeatureSpec.model_validate(read_checkpoint_document(args.model_dir)["feature_spec"])
    body = make_bundle(spec, count=8, modality_mask=[[True, False, False]] * 8).to_bytes()
    headers = {"Content-Type": CONTENT_TYPE, "Accept": "application/json"}
    settings = Settings(
        environment="test", model_watch_seconds=0.2, model_max_concurrency=1, model_torch_threads=1
    )
    samples: list[tuple[float, float, str, int]] = []  # (finished at, seconds, version, status)
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                started = time.perf_counter()
                response = http.post("/invocations", content=body, headers=headers)
                version = response.json()["model"]["version"] if response.status_code == 200 else ""
                samples.append(
                    (time.perf_counter(), time.perf_counter() - started, version, response.status_code)
                )

    with serve_in_background(create_app(WORK / "current", settings=settings)) as url:
        while httpx.get(f"{url}/ping").status_code != 200:
            time.sleep(0.1)
        with ThreadPoolExecutor(CLIENTS) as pool:
            workers = [pool.submit(client, url) for _ in range(CLIENTS)]
            while len(samples) < CLIENTS + args.requests:  # the first round warms up
                time.sleep(0.05)
            steady_end = len(samples)
            published_at = time.perf_counter()
            publish(second, WORK, "second")
            while httpx.get(f"{url}/ping").json()["model"]["version"] != "swapped":
                time.sleep(0.02)
            serving_after = time.perf_counter() - published_at
            swap_start, target = steady_end, len(samples) + args.requests
            while len(samples) < target:
                time.sleep(0.05)
            stop.set()
            for worker in workers:
                worker.result()
    steady = [s for _, s, _, _ in samples[CLIENTS:steady_end]]
    swap = [s for _, s, _, _ in samples[swap_start:]]
    result = {
        "benchmark": "model swap under load",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "model": os.path.relpath(args.model_dir, ROOT),
        "clients": CLIENTS,
        "utterances_per_request": 8,
        "requests_total": len(samples),
        "failed_requests": sum(1 for *_, status in samples if status != 200),
        "versions_answered": sorted({v for *_, v, _ in samples}),
        "seconds_from_publication_to_new_model": round(serving_after, 3),
        "steady": {"requests": len(steady), "p50_ms": round(statistics.median(steady) * 1000, 1),
                   "p99_ms": round(percentile(steady, 0.99) * 1000, 1)},
        "during_swap": {"requests": len(swap), "p50_ms": round(statistics.median(swap) * 1000, 1),
                        "p99_ms": round(percentile(swap, 0.99) * 1000, 1)},
    }  # fmt: skip
    result["ratio_p50"] = round(result["during_swap"]["p50_ms"] / result["steady"]["p50_ms"], 3)
    result["ratio_p99"] = round(result["during_swap"]["p99_ms"] / result["steady"]["p99_ms"], 3)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
