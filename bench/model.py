"""Model service speed: utterances per second and latency through the HTTP server, against the bare
forward pass of the same model in the same process.

For each torch thread count and 1, 8 and 32 utterances per request it times, interleaved,
``POST /invocations`` on a uvicorn server on a loopback port (body already serialised; the time
covers HTTP, parsing the bundle, the forward pass, JSON) and the bare forward pass
(``inputs_from_bundle`` + ``model(...)`` under ``torch.inference_mode``). The server's overhead is
the ratio of the two medians. Results go to bench/results/model.json.

The model is the checkpoint in MOODREEL_MODEL_DIR when there is one, else a random-weight model
of the default ModelConfig and FeatureSpec (MiniLM text, CNN audio and visual: the same shapes and
compute as a trained one). Each request is one forward pass (server batch size 32); the payload
cap is raised so a 32-utterance bundle (~12 MB with the default spec) goes in one request.

    .venv/bin/python bench/model.py [--requests 12] [--threads 1,2] [--model-dir DIR] [--compare-dir DIR]

``--compare-dir`` measures further checkpoints in the same run (for example the MiniLM and the
mpnet text branches), reported under ``compared_models``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from services.model.core.checkpoint import save_checkpoint  # noqa: E402
from services.model.core.config import ModelConfig  # noqa: E402
from services.model.core.network import MoodreelModel, inputs_from_bundle  # noqa: E402
from services.model.serving.inference import ServedModel, model_fn  # noqa: E402
from services.model.serving.server import create_app, serve_in_background  # noqa: E402
from shared.contract.bundle import CONTENT_TYPE, FeatureBundle, UtteranceMeta  # noqa: E402
from shared.contract.features.spec import FeatureSpec  # noqa: E402
from shared.contract.features.text import tokenize_utterances  # noqa: E402
from shared.settings import Settings, get_settings  # noqa: E402

WORK = ROOT / "bench" / "media"
RESULTS = ROOT / "bench" / "results" / "model.json"
BATCHES = (1, 8, 32)


def model_directory(explicit: Path | None) -> tuple[Path, str]:
    configured = explicit or get_settings().model_dir
    if (configured / "checkpoint.json").is_file():
        return configured, "checkpoint"
    directory = WORK / "model-default-random"
    if not (directory / "checkpoint.json").is_file():
        torch.manual_seed(0)
        meta = {"name": "moodreel-bench-random", "version": "bench", "metrics": {}}
        save_checkpoint(directory, MoodreelModel(ModelConfig()), FeatureSpec(), meta)
    return directory, "random weights, default ModelConfig"


def make_bundle(spec: FeatureSpec, count: int, seed: int) -> FeatureBundle:
    rng = np.random.default_rng(seed)
    utterances = [
        UtteranceMeta(
            start=3.0 * i, end=3.0 * i + 2.4, text=f"this is line number {i} of the scene", speaker="A"
        )
        for i in range(count)
    ]
    tokens = {name: tensor.numpy() for name, tensor in tokenize_utterances(utterances, spec).items()}
    n, s, t = spec.frames_per_utterance, spec.frame_size, spec.max_audio_frames
    return FeatureBundle(
        utterances=utterances,
        frames=rng.integers(0, 256, (count, n, 3, s, s), dtype=np.uint8),
        frame_times=np.zeros((count, n), dtype=np.float32),
        log_mel=rng.standard_normal((count, spec.n_mels, t)).astype(np.float16),
        audio_mask=np.ones((count, t), dtype=bool),
        spec_hash=spec.hash,
        modality_mask=np.ones((count, 3), dtype=bool),
        **tokens,
    )


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(directory: Path, args) -> tuple[ServedModel, list[dict]]:
    """Interleaved HTTP and bare timings of one checkpoint, per thread count and batch size."""
    served: ServedModel = model_fn(directory)
    served.batch_size = max(BATCHES)
    settings = Settings(model_max_payload_bytes=64 * 1024 * 1024, model_request_timeout_seconds=55)
    app = create_app(directory, settings=settings, load_model=lambda _: served)
    network = served.loaded.model
    # torch's thread count is per calling thread: the bare pass runs in a worker thread of its own
    # with the same count the server's worker threads get (predict_fn applies served.torch_threads).
    bare_thread = ThreadPoolExecutor(1, thread_name_prefix="bare-forward")

    def forward(bundle: FeatureBundle, threads: int) -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            network(inputs_from_bundle(bundle, served.device))

    results = []
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=120) as http, bare_thread:
        while http.get("/ping").status_code != 200:
            time.sleep(0.05)
        for threads, batch in [(int(t), b) for t in args.threads.split(",") for b in BATCHES]:
            served.torch_threads = threads

            def bare(bundle: FeatureBundle, threads: int = threads) -> None:
                bare_thread.submit(forward, bundle, threads).result()

            bundle = make_bundle(served.spec, batch, seed=batch)
            body = bundle.to_bytes()
            headers = {"Content-Type": CONTENT_TYPE, "Accept": "application/json"}

            def over_http(body: bytes = body, headers: dict = headers) -> None:
                response = http.post("/invocations", content=body, headers=headers)
                response.raise_for_status()

            for _ in range(2):  # warm-up: allocator, thread pools, connection
                over_http()
                bare(bundle)
            http_s, bare_s = [], []
            for _ in range(args.requests):  # interleaved, so load changes hit both alike
                started = time.perf_counter()
                over_http()
                http_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                bare(bundle)
                bare_s.append(time.perf_counter() - started)
            row = {
                "torch_threads": threads,
                "batch": batch,
                "request_bytes": len(body),
                "requests": args.requests,
                "http_p50_ms": round(percentile(http_s, 50) * 1000, 1),
                "http_p95_ms": round(percentile(http_s, 95) * 1000, 1),
                "bare_p50_ms": round(percentile(bare_s, 50) * 1000, 1),
                "bare_p95_ms": round(percentile(bare_s, 95) * 1000, 1),
                "http_utterances_per_s": round(batch * len(http_s) / sum(http_s), 2),
                "bare_utterances_per_s": round(batch * len(bare_s) / sum(bare_s), 2),
                "overhead_ratio_p50": round(statistics.median(http_s) / statistics.median(bare_s), 3),
            }
            results.append(row)
            print(json.dumps(row))
    return served, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="timed requests per batch size")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument(
        "--compare-dir",
        type=Path,
        action="append",
        default=[],
        help="another checkpoint measured in the same run (e.g. another text branch), reported beside",
    )
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts to compare")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file")
    args = parser.parse_args()

    directory, kind = model_directory(args.model_dir)
    served, results = measure(directory, args)
    compared = []
    for other in args.compare_dir:
        other_served, other_results = measure(other, args)
        compared.append(
            {
                "model": {"dir": other.name, "kind": "checkpoint", **other_served.info.model_dump()},
                "text_encoder": other_served.loaded.config.text_encoder,
                "results": other_results,
            }
        )

    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "device": str(served.device),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "model": {"dir": directory.name, "kind": kind, **served.info.model_dump()},
        "text_encoder": served.loaded.config.text_encoder,
        "spec": served.spec.model_dump(),
        "server_batch_size": served.batch_size,
        "results": results,
        "compared_models": compared,
        "note": "HTTP client and server share the process and its CPUs, as a sidecar would share a host.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
