"""The long schemathesis run (`make fuzz`): the gateway as its own uvicorn process on a free loopback
port with a fresh PostgreSQL database (created and dropped here) and a unique Redis prefix, then
schemathesis with every check and phase (stateful links included), a fixed seed, once with an API
key and once with a JWT. Results: bench/results/fuzz.json.

    .venv/bin/python bench/fuzz.py [--max-examples 30] [--seconds-per-credential 270] [--seed 20261201]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.db import create_postgres_database, drop_postgres_database, migrate  # noqa: E402
from tests.gateway.fuzz import fuzz_gateway, run_schemathesis  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "fuzz.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=30)
    parser.add_argument("--seconds-per-credential", type=int, default=270)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    # `timeout` (make fuzz) stops with SIGTERM: still stop the gateway and drop the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import schemathesis

    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    ).stdout.strip()
    started = datetime.now(UTC)
    runs = []
    url = create_postgres_database()
    try:
        migrate(url)
        with tempfile.TemporaryDirectory(prefix="moodreel-fuzz-") as work:
            work_dir = Path(work)
            with fuzz_gateway(url, work_dir) as target:
                for credential in ("api_key", "jwt"):
                    run = run_schemathesis(
                        target,
                        credential,
                        work_dir / credential,
                        max_examples=args.max_examples,
                        max_seconds=args.seconds_per_credential,
                        seed=args.seed,
                    )
                    runs.append(run)
                    print(f"{credential}: {len(run.failures)} failure kinds, exit {run.returncode}")
                    for failure in run.failures:
                        where = ", ".join(failure["operations"])
                        print(f"  {failure['code']} {failure['title']} x{failure['count']}: {where}")
    finally:
        drop_postgres_database(url)

    result = {
        "measured_at": started.isoformat(timespec="seconds"),
        "commit": commit,
        "schemathesis": schemathesis.__version__,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "settings": {
            "checks": "all",
            "phases": "examples,coverage,fuzzing,stateful",
            "max_examples": args.max_examples,
            "seconds_per_credential": args.seconds_per_credential,
            "seed": args.seed,
            "database": "postgresql",
        },
        "total_failures": sum(sum(f["count"] for f in run.failures) for run in runs),
        "runs": [run.summary for run in runs],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if result["total_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
