"""Request scheduling: at most ``max_active_requests`` requests run at once, the others wait in
their client's queue and are served client by client; probes never wait; bounded queues."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from services.gateway.main import create_app
from services.gateway.scheduling import RequestScheduler
from tests.gateway.conftest import running_server


def held_app() -> tuple[FastAPI, dict[str, asyncio.Event], list[str]]:
    """An app whose ``/work/{name}`` requests run until ``release[name]`` is set; ``started``
    records the order in which they got past the scheduler."""
    app = FastAPI()
    release: dict[str, asyncio.Event] = {}
    started: list[str] = []

    @app.get("/work/{name}")
    async def work(name: str) -> dict:
        started.append(name)
        await release.setdefault(name, asyncio.Event()).wait()
        return {"name": name}

    @app.get("/stream/{name}")
    async def stream(name: str) -> StreamingResponse:
        started.append(name)

        async def body():
            yield b"first\n"
            await release.setdefault(name, asyncio.Event()).wait()
            yield b"last\n"

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/healthz", name="healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app, release, started


def scheduled(app: FastAPI, settings, **limits) -> RequestScheduler:
    """The app served behind the scheduler as the gateway installs it; returns the scheduler."""
    app.add_middleware(RequestScheduler, settings=settings.model_copy(update=limits))
    app.middleware_stack = app.build_middleware_stack()
    return scheduler_of(app)


def scheduler_of(app) -> RequestScheduler:
    layer = app.middleware_stack
    while not isinstance(layer, RequestScheduler):
        layer = layer.app
    return layer


def from_address(address: str):
    async def request(path: str, transport_app) -> httpx.Response:
        transport = httpx.ASGITransport(app=transport_app, client=(address, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return request


async def until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_waiting_requests_are_served_client_by_client_not_in_arrival_order(settings):
    app, release, started = held_app()
    scheduler = scheduled(app, settings, max_active_requests=1)
    flood, polite = from_address("203.0.113.1"), from_address("203.0.113.2")
    first = asyncio.create_task(flood("/work/f0", app))
    await until(lambda: started == ["f0"])
    # Three more from the flooding client arrive before the other client's one request.
    tasks = [asyncio.create_task(flood(f"/work/f{i}", app)) for i in (1, 2, 3)]
    await until(lambda: scheduler.waiting_total == 3)
    tasks.append(asyncio.create_task(polite("/work/p0", app)))
    await until(lambda: scheduler.waiting_total == 4)
    assert started == ["f0"] and scheduler.active == 1  # one at a time
    for name in ("f0", "f1", "p0", "f2", "f3"):
        await until(lambda name=name: name in started)
        release.setdefault(name, asyncio.Event()).set()
    responses = [await first, *[await task for task in tasks]]
    assert [r.json()["name"] for r in responses] == ["f0", "f1", "f2", "f3", "p0"]
    # The second client's request went right after the first flood request that was waiting.
    assert started == ["f0", "f1", "p0", "f2", "f3"]
    assert scheduler.active == 0 and scheduler.waiting_total == 0 and not scheduler.waiting


async def test_probes_do_not_wait_and_full_queues_are_refused_with_problems(settings):
    app, release, started = held_app()
    scheduler = scheduled(
        app, settings, max_active_requests=1, max_waiting_requests_per_client=2, max_waiting_requests=3
    )
    one, two = from_address("203.0.113.1"), from_address("203.0.113.2")
    held = [asyncio.create_task(one(f"/work/a{i}", app)) for i in range(3)]
    await until(lambda: scheduler.active == 1 and scheduler.waiting_total == 2)

    probe = await one("/healthz", app)
    assert probe.status_code == 200

    refused = await one("/work/a3", app)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "too_many_waiting_requests"

    held.append(asyncio.create_task(two("/work/b0", app)))
    await until(lambda: scheduler.waiting_total == 3)
    busy = await two("/work/b1", app)
    assert busy.status_code == 503 and busy.json()["code"] == "server_busy"
    assert busy.headers["Retry-After"] == "1"

    for name in ("a0", "a1", "b0", "a2"):
        await until(lambda name=name: name in started)
        release.setdefault(name, asyncio.Event()).set()
    assert [(await task).status_code for task in held] == [200] * 4
    assert "a3" not in started and "b1" not in started  # refused before they ran
    assert scheduler.active == 0 and scheduler.waiting_total == 0


async def test_a_slot_is_freed_when_the_response_starts_and_when_a_waiter_goes_away(settings):
    app, release, started = held_app()
    scheduler = scheduled(app, settings, max_active_requests=1)
    client = from_address("203.0.113.1")
    streaming = asyncio.create_task(client("/stream/s", app))
    # The stream has started and still runs (its body waits), but it holds no slot any more.
    await until(lambda: "s" in started and scheduler.active == 0)
    release["w"] = asyncio.Event()
    release["w"].set()
    other = await asyncio.wait_for(client("/work/w", app), 5)
    assert other.json() == {"name": "w"} and not streaming.done()
    release["s"].set()
    assert (await streaming).text == "first\nlast\n"

    blocker = asyncio.create_task(client("/work/x", app))
    await until(lambda: "x" in started)
    gone = asyncio.create_task(client("/work/gone", app))
    await until(lambda: scheduler.waiting_total == 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert scheduler.waiting_total == 0 and not scheduler.waiting
    release["x"].set()
    assert (await blocker).status_code == 200
    assert scheduler.active == 0 and "gone" not in started


def head_only(base_url: str, path: str) -> socket.socket:
    """A request whose head announces a body that never comes: the gateway holds it until the
    connection closes."""
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 100\r\n\r\n".encode()
    )
    return sock


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.mark.timeout(60)
def test_the_gateway_schedules_its_requests(settings):
    """Through the real gateway under uvicorn, one slot: a login whose body never arrives holds
    it; the same address's next request waits and the one after is refused; the probe and an
    upload target are answered meanwhile; closing the held connection lets the waiting one run."""
    limits = {"max_active_requests": 1, "max_waiting_requests_per_client": 1}
    app = create_app(settings.model_copy(update=limits))
    with running_server(app) as base_url, httpx.Client(base_url=base_url, timeout=20) as client:
        assert client.get("/healthz").status_code == 200
        scheduler = scheduler_of(app)
        holder = head_only(base_url, "/v1/auth/login")
        wait_for(lambda: scheduler.active == 1)
        with ThreadPoolExecutor(1) as pool:
            login = {"username": "nobody@example.com", "password": "wrong password"}
            waiting = pool.submit(client.post, "/v1/auth/login", data=login)
            wait_for(lambda: scheduler.waiting_total == 1)
            refused = client.post("/v1/auth/login", data=login)
            assert refused.status_code == 429, refused.text
            assert refused.json()["code"] == "too_many_waiting_requests"
            assert client.get("/healthz").status_code == 200
            upload = client.put(f"/v1/uploads/{uuid.uuid4()}/content?expires=1&signature=x", content=b"x")
            assert upload.status_code == 403 and upload.json()["code"] == "upload_url_invalid", upload.text
            assert not waiting.done()
            holder.close()
            assert waiting.result(timeout=20).status_code == 401  # its turn came
        wait_for(lambda: scheduler.active == 0 and scheduler.waiting_total == 0)
