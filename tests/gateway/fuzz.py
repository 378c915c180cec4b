"""Schemathesis against a real gateway: the gateway as its own uvicorn process on a free loopback
port (PostgreSQL, Redis), an account with a JWT and an API key, and the schemathesis CLI run once
per credential with every check, stateful links and a fixed seed. Used by
``tests/gateway/test_fuzz.py`` (a short run) and ``bench/fuzz.py`` (``make fuzz``, a long one).

The gateway runs on the ``fuzz`` plan: its request rate and monthly quotas are high enough that
the fuzzer's pace explores the API instead of collecting 429s. Everything else (SSRF rules,
sign-up and login throttling, body limits) is the production code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from tests.worker import stack

REDIS_URL = os.environ.get("MOODREEL_REDIS_URL", "redis://127.0.0.1:6379/0")
PASSWORD = "correct horse battery staple"
FUZZ_PLAN = {
    "analyses_per_month": 1_000_000,
    "video_seconds_per_month": 100_000_000,
    "requests_per_minute": 1_000_000,
}
# Every check schemathesis has; the whole API under every phase.
PHASES = "examples,coverage,fuzzing,stateful"


@dataclass
class FuzzTarget:
    base_url: str
    access_token: str
    api_key: str
    log_path: Path


@contextmanager
def fuzz_gateway(database_url: str, work_dir: Path) -> Iterator[FuzzTarget]:
    """A migrated database is the caller's; this starts the gateway on it and signs up one user."""
    namespace = f"moodreel-fuzz-{uuid.uuid4().hex[:10]}:"
    env = {
        "MOODREEL_ENVIRONMENT": "test",
        "MOODREEL_LOG_LEVEL": "WARNING",
        "MOODREEL_DATABASE_URL": database_url,
        "MOODREEL_REDIS_URL": REDIS_URL,
        "MOODREEL_REDIS_KEY_PREFIX": namespace,
        "MOODREEL_QUEUE_NAME": f"{namespace}queue",
        "MOODREEL_DATA_DIR": str(work_dir / "data"),
        "MOODREEL_SECRET_KEY": "fuzz-test-secret-key-fuzz-test-secret-key",
        "MOODREEL_STORAGE_BACKEND": "local",
        "MOODREEL_PLANS": json.dumps({"fuzz": FUZZ_PLAN}),
        "MOODREEL_DEFAULT_PLAN": "fuzz",
        # The run outlasts the default 15 minutes; the token must stay valid for all of it.
        "MOODREEL_ACCESS_TOKEN_MINUTES": "120",
    }
    port = stack.free_port()
    # This interpreter's uvicorn, so the gateway runs with the packages the test runs with.
    argv = [sys.executable, "-m", "uvicorn", "--factory", "services.gateway.main:create_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    ready = stack.http_ok(f"http://127.0.0.1:{port}/readyz")
    process = stack.Process("gateway", argv, env, work_dir, ready).start(timeout=120)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, timeout=30) as http:
            email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
            http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD}).raise_for_status()
            login = http.post("/v1/auth/login", data={"username": email, "password": PASSWORD})
            login.raise_for_status()
            token = login.json()["access_token"]
            created = http.post(
                "/v1/api-keys",
                json={"name": "fuzz", "scopes": ["analyses:read", "analyses:write"]},
                headers={"Authorization": f"Bearer {token}"},
            )
            created.raise_for_status()
        yield FuzzTarget(base_url, token, created.json()["key"], process.log_path)
    finally:
        process.stop()
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@dataclass
class FuzzRun:
    credential: str
    returncode: int
    seconds: float
    report: dict
    output: str

    @property
    def failures(self) -> list[dict]:
        return self.report.get("failures") or []

    @property
    def failure_details(self) -> str:
        """The CLI's FAILURES section (each failure with its response and a curl line to reproduce
        it; credentials are shown as `[Filtered]`), cut to a size a results file can keep."""
        start = self.output.find(" FAILURES ")
        if start < 0:
            return ""
        ends = [
            i for i in (self.output.find(" WARNINGS ", start), self.output.find(" SUMMARY ", start)) if i > 0
        ]
        end = self.output.rfind("\n", 0, min(ends)) if ends else len(self.output)
        return self.output[self.output.rfind("\n", 0, start) + 1 : end][:8000]

    @property
    def summary(self) -> dict:
        """What bench/results/fuzz.json keeps of one run."""
        report = self.report
        return {
            "credential": self.credential,
            "exit_code": self.returncode,
            "seconds": round(self.seconds, 1),
            "stop_reason": report.get("stop_reason"),
            "operations": report.get("operations"),
            "test_cases": report.get("test_cases"),
            "phases": {name: phase["status"] for name, phase in (report.get("phases") or {}).items()},
            "failures": self.failures,
            "failure_details": self.failure_details,
            "errors": report.get("errors"),
            "warnings": {name: value for name, value in (report.get("warnings") or {}).items() if value},
        }


# Operations whose acceptance depends on facts no schema can state, with the extra refusal each may
# give a schema-valid request: user URLs must resolve to public addresses (400 url_not_allowed:
# the SSRF rules, checked against DNS at request time) and transcripts must parse as SRT/WebVTT
# with ordered times (422 transcript_invalid); a password change needs the current password and a
# reset a token the operator issued (400); a Range header must fall within the media (416).
SEMANTIC_REFUSALS = {
    "POST /v1/analyses": (400, 422),
    "POST /v1/webhooks/endpoints": (400,),
    "PATCH /v1/webhooks/endpoints/{endpoint_id}": (400,),
    "POST /v1/auth/password": (400,),
    "POST /v1/auth/password-reset": (400,),
    "GET /v1/analyses/{analysis_id}/media": (416,),
}
# schemathesis' default statuses for schema-valid requests (accepted) and schema-violating ones
# (refused); a declared upload size over the limit is refused as 413, as it should be.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]


def _config(target: FuzzTarget, credential: str) -> str:
    """schemathesis.toml: one credential per run, so the two are never sent together (that is an
    ambiguous request the gateway refuses)."""
    if credential == "api_key":
        lines = ["[auth.openapi.ApiKeyAuth]", f'api_key = "{target.api_key}"']
    else:
        lines = ["[auth.openapi.BearerAuth]", f'bearer = "{target.access_token}"']
    # No crash cache: each run is its seed's, not a replay of earlier runs' findings.
    lines += ["", "[cache]", "enabled = false"]
    lines += ["", "[checks.negative_data_rejection]", f"expected-statuses = {json.dumps(REFUSED)}"]
    for label, statuses in SEMANTIC_REFUSALS.items():
        method, path = label.split(" ", 1)
        expected = json.dumps(ACCEPTED + [str(status) for status in statuses])
        lines += [
            "",
            "[[operations]]",
            f'include-method = "{method}"',
            f'include-path = "{path}"',
            f"checks.positive_data_acceptance.expected-statuses = {expected}",
        ]
    return "\n".join(lines) + "\n"


def run_schemathesis(
    target: FuzzTarget,
    credential: str,
    work_dir: Path,
    *,
    max_examples: int,
    max_seconds: int,
    seed: int,
    extra_args: tuple[str, ...] = (),
) -> FuzzRun:
    """One bounded CLI run; its JSON report is parsed for the failures it found."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / f"schemathesis-{credential}.toml"
    config_path.write_text(_config(target, credential))
    report_path = work_dir / f"report-{credential}.json"
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_path),
        "--no-color",
        "run",
        f"{target.base_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        PHASES,
        "--max-examples",
        str(max_examples),
        "--max-time",
        str(max_seconds),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        # A loaded CI machine is slow; a response is still too slow beyond this.
        "--max-response-time",
        "20",
        "--generation-database",
        "none",
        "--report",
        "json",
        "--report-json-path",
        str(report_path),
        *extra_args,
    ]
    started = time.monotonic()
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=max_seconds + 300, cwd=work_dir, check=False
    )
    seconds = time.monotonic() - started
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return FuzzRun(credential, completed.returncode, seconds, report, completed.stdout + completed.stderr)
