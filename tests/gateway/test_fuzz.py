"""Schemathesis (every check, every phase incl. stateful links, fixed seed) against a real gateway
on loopback with PostgreSQL and Redis, once with an API key and once with a JWT: 0 failures.

Bounded for CI: a few examples per operation and a time budget per credential. `make fuzz` runs
the same harness for longer (bench/fuzz.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.fixtures.db import create_postgres_database, drop_postgres_database, migrate
from tests.gateway.fuzz import FuzzTarget, fuzz_gateway, run_schemathesis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SEED = 20261201
MAX_EXAMPLES = 5
SECONDS_PER_CREDENTIAL = 75


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[FuzzTarget]:
    url = create_postgres_database()
    try:
        migrate(url)
        with fuzz_gateway(url, tmp_path_factory.mktemp("fuzz-gateway")) as running:
            yield running
    finally:
        drop_postgres_database(url)


@pytest.mark.parametrize("credential", ["api_key", "jwt"])
def test_schemathesis_finds_nothing(target, credential, tmp_path):
    run = run_schemathesis(
        target,
        credential,
        tmp_path,
        max_examples=MAX_EXAMPLES,
        max_seconds=SECONDS_PER_CREDENTIAL,
        seed=SEED,
    )
    report = run.report
    assert report, f"schemathesis wrote no report (exit {run.returncode}):\n{run.output[-6000:]}"
    # Every operation was exercised, under every phase.
    assert report["operations"]["tested"] == report["operations"]["selected"] >= 25
    assert report["test_cases"]["generated"] > 500
    assert set(report["phases"]) == {"examples", "coverage", "fuzzing", "stateful"}
    assert all(phase["skip_reason"] is None for phase in report["phases"].values()), report["phases"]
    assert run.failures == [] and report["errors"] == [], (
        json.dumps({"failures": run.failures, "errors": report["errors"]}, indent=1)
        + "\n"
        + run.output[-12000:]
    )
    assert run.returncode == 0, run.output[-6000:]
