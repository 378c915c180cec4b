"""`make demo`: Moodreel end to end through its public API, as a client would use it.

Starts the dev stack when it is not already up, generates a short spoken clip with its
transcript (espeak-ng + ffmpeg), signs up a demo user, creates an API key, uploads the clip,
submits it, follows the progress over Server-Sent Events, prints the per-utterance results as a
table, and says where the dashboard is (the stack keeps running; `make dev-stop` stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.contract.features.demo_media import ToolMissing, make_spoken_clip
from shared.settings import REPO_ROOT, get_settings

TERMINAL = {"succeeded", "failed", "canceled"}


def started_here(state_dir: Path, port: int) -> bool:
    """Whether this state directory's dev stack runs a gateway on ``port`` (its own record)."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import devstack

    return any(
        record.name == "gateway" and devstack.is_running(record) and str(port) in record.argv
        for record in devstack.load_records(state_dir)
    )


def ensure_stack(base_url: str, port: int, model_port: int, state_dir: Path) -> None:
    try:
        answering = httpx.get(f"{base_url}/readyz", timeout=2).status_code < 500
    except httpx.HTTPError:
        answering = False
    if answering or port_in_use(port):
        if started_here(state_dir, port):
            print(f"using the running dev stack at {base_url}")
            return
        # Something else owns the port: another stack, another program. Do not sign up or
        # upload to it.
        raise SystemExit(
            f"port {port} is in use by something this demo did not start (no dev stack of "
            f"{state_dir} runs there). Stop it, or pick free ports: "
            "MOODREEL_DEV_GATEWAY_PORT=8100 MOODREEL_DEV_MODEL_PORT=8180 make demo"
        )
    print("starting the dev stack (make dev) ...")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "devstack.py"), "start", "--state-dir", str(state_dir),
         "--gateway-port", str(port), "--model-port", str(model_port)],
        check=True,
    )  # fmt: skip


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        raise SystemExit(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json() if response.content else {}


def sse_events(client: httpx.Client, path: str, timeout: float):
    """(event, data) pairs from an SSE stream until it ends or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, timeout=httpx.Timeout(10.0, read=30.0)) as response:
        if response.status_code != 200:
            raise SystemExit(f"events: {response.status_code} {response.read().decode()}")
        event, data = "message", []
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                return
            if line == "":
                if data:
                    yield event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())


def results_table(utterances: list[dict]) -> str:
    header = f"{'time':>13}  {'speaker':8} {'emotion':>16} {'sentiment':>16}  {'modalities':18} text"
    lines = [header, "-" * len(header)]
    for u in utterances:
        emotion, sentiment = u["emotion"], u["sentiment"]
        text = u["text"] if len(u["text"]) <= 48 else u["text"][:47] + "…"
        lines.append(
            f"{u['start']:5.1f}–{u['end']:5.1f} s  {(u['speaker'] or '-'):8} "
            f"{emotion['label']:>9} {emotion['confidence']:5.0%} "
            f"{sentiment['label']:>9} {sentiment['confidence']:5.0%}  "
            f"{','.join(u['modalities_used']):18} {text}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MOODREEL_DEV_GATEWAY_PORT", 8000)),
        help="the dev stack's gateway port [default: MOODREEL_DEV_GATEWAY_PORT or 8000]",
    )
    parser.add_argument(
        "--model-port",
        type=int,
        default=int(os.environ.get("MOODREEL_DEV_MODEL_PORT", 8080)),
        help="the model server's port when the stack is started [default: MOODREEL_DEV_MODEL_PORT or 8080]",
    )
    parser.add_argument("--state-dir", type=Path, default=REPO_ROOT / "var")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the analysis")
    args = parser.parse_args()
    base_url = f"http://127.0.0.1:{args.port}"

    ensure_stack(base_url, args.port, args.model_port, args.state_dir)
    try:
        clip = make_spoken_clip(get_settings().data_dir / "demo")
    except ToolMissing as exc:
        raise SystemExit(str(exc)) from None
    print(
        f"generated {clip.video} ({clip.duration:.1f} s, {len(clip.segments)} utterances) and its transcript"
    )

    api = httpx.Client(base_url=base_url, timeout=30.0)
    email, password = f"demo-{secrets.token_hex(4)}@example.com", secrets.token_urlsafe(12)
    check(api.post("/v1/auth/signup", json={"email": email, "password": password}))
    tokens = check(api.post("/v1/auth/login", data={"username": email, "password": password}))
    key = check(
        api.post(
            "/v1/api-keys",
            json={"name": "demo"},
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
    )["key"]
    print(f"signed up {email} and created API key {key[:16]}…")

    client = httpx.Client(base_url=base_url, timeout=30.0, headers={"X-API-Key": key})
    size = clip.video.stat().st_size
    target = check(
        client.post(
            "/v1/uploads", json={"filename": clip.video.name, "content_type": "video/mp4", "size_bytes": size}
        )
    )
    with clip.video.open("rb") as body:
        put = httpx.put(target["url"], content=body.read(), headers=target["headers"], timeout=120.0)
    check(put)
    analysis = check(
        client.post(
            "/v1/analyses",
            json={"upload_id": target["upload_id"], "transcript": clip.segments},
            headers={"Idempotency-Key": secrets.token_hex(16)},
        )
    )
    print(f"submitted analysis {analysis['id']} ({analysis['status']}); following its events:")

    started = time.monotonic()
    for event, data in sse_events(client, f"/v1/analyses/{analysis['id']}/events", args.timeout):
        elapsed = time.monotonic() - started
        if event == "status":
            print(
                f"  {elapsed:6.1f} s  status {data['status']}"
                + (f" ({data.get('error_code')})" if data.get("error_code") else "")
            )
        elif event == "utterance":
            print(f"  {elapsed:6.1f} s  utterance {data['start']:.1f}–{data['end']:.1f} s: "
                  f"{data['emotion']['label']}, {data['sentiment']['label']}")  # fmt: skip
    result = check(client.get(f"/v1/analyses/{analysis['id']}"))
    if result["status"] != "succeeded":
        raise SystemExit(f"analysis {result['status']}: {result.get('error')}")
    print()
    print(results_table(result["utterances"]))
    summary = result["summary"] or {}
    print(
        f"\ndominant emotion {summary.get('dominant_emotion')}, "
        f"sentiment {summary.get('dominant_sentiment')}; model {result.get('model_version')}"
    )
    if str(result.get("model_version") or "").startswith("moodreel-tiny"):
        print(
            "(no trained checkpoint yet: the dev stack serves a tiny random-weight model; labels are noise)"
        )
    print(f"\ndashboard: {base_url}/dashboard  (sign in as {email} / {password})")
    print(f"API docs:  {base_url}/docs    stop the stack with `make dev-stop`")


if __name__ == "__main__":
    main()
