"""Fixed-window request counters in Redis and the IETF ``RateLimit-Policy``/``RateLimit`` headers.

One INCR+EXPIRE pipeline per request (which may read one more key on the way): cheap, atomic,
and shared by every gateway process. The headers follow draft-ietf-httpapi-ratelimit-headers
(structured fields: ``q`` quota, ``w`` window, ``r`` remaining, ``t`` seconds until reset).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.problems import TooManyRequests
from shared.settings import Settings

STATE_KEY = "ratelimit_headers"


@dataclass(frozen=True)
class WindowState:
    policy: str
    limit: int
    window: int
    count: int
    reset_in: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Policy": f'"{self.policy}";q={self.limit};w={self.window}',
            "RateLimit": f'"{self.policy}";r={self.remaining};t={self.reset_in}',
        }


async def hit(
    client: aioredis.Redis, settings: Settings, identity: str, *, limit: int, window: int, policy: str
) -> WindowState:
    state, _ = await hit_and_read(client, settings, identity, limit=limit, window=window, policy=policy)
    return state


async def hit_and_read(
    client: aioredis.Redis,
    settings: Settings,
    identity: str,
    *,
    limit: int,
    window: int,
    policy: str,
    also: Callable[[Pipeline], None] | None = None,
) -> tuple[WindowState, list]:
    """Count the request and, in the same round trip, run the commands ``also`` queues (reading
    another per-caller value the request needs, such as the usage stamp); their replies follow."""
    now = time.time()
    window_start = int(now // window) * window
    key = f"{settings.redis_key_prefix}rl:{policy}:{identity}:{window_start}"
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, window + 1)
        if also is not None:
            also(pipe)
        replies = await pipe.execute()
    reset_in = max(1, math.ceil(window_start + window - now))
    return WindowState(policy, limit, window, int(replies[0]), reset_in), replies[2:]


def remember(state: WindowState, scope_state: dict) -> None:
    """Add a policy to the response's headers (several policies form one structured-field list)."""
    headers = scope_state.setdefault(STATE_KEY, {})
    for name, value in state.headers().items():
        headers[name] = f"{headers[name]}, {value}" if name in headers else value


def enforce(state: WindowState, scope_state: dict) -> None:
    """Remember the headers for the response; raise 429 when the window is spent."""
    remember(state, scope_state)
    if state.exceeded:
        raise TooManyRequests(
            f"More than {state.limit} requests in {state.window} s; retry after {state.reset_in} s.",
            retry_after=state.reset_in,
        )


# --- login throttling ----------------------------------------------------------------------------
def _login_keys(settings: Settings, email: str, client_ip: str) -> list[str]:
    email_digest = hashlib.sha256(email.lower().encode()).hexdigest()[:32]
    return [
        f"{settings.redis_key_prefix}login:email:{email_digest}",
        f"{settings.redis_key_prefix}login:ip:{client_ip}",
    ]


# Admits an attempt only while both counters are under their limits, and counts it in the same
# step: of any number of concurrent attempts exactly the remaining allowance reach the password
# check. A refused attempt is not counted (it cannot prolong the lockout).
_ADMIT_LOGIN_ATTEMPT = """
for index, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[index]) then
    return math.max(redis.call('TTL', key), 1)
  end
end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then
    redis.call('EXPIRE', key, ARGV[#ARGV])
  end
end
return 0
"""


_FORGET_LOGIN_ATTEMPT = """
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
"""


async def admit_login_attempt(client: aioredis.Redis, settings: Settings, email: str, client_ip: str) -> None:
    """Count one sign-in attempt for the e-mail and the client address before the password is
    checked; 429 once either has used its allowance in the window."""
    email_key, ip_key = _login_keys(settings, email, client_ip)
    # One address may try several accounts, but not unboundedly many.
    limits = (settings.login_max_failures, settings.login_max_failures * 4)
    retry_after = await client.eval(
        _ADMIT_LOGIN_ATTEMPT, 2, email_key, ip_key, *limits, settings.login_window_seconds
    )
    if int(retry_after):
        raise TooManyRequests(
            "Too many failed sign-in attempts; try again later.", retry_after=int(retry_after)
        )


async def forget_successful_login(
    client: aioredis.Redis, settings: Settings, email: str, client_ip: str
) -> None:
    """A successful sign-in clears the e-mail's count and returns its attempt to the address."""
    await client.eval(_FORGET_LOGIN_ATTEMPT, 2, *_login_keys(settings, email, client_ip))


# API responses are data, never documents to sniff or frame.
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))


class RateLimitHeadersMiddleware:
    """Adds the headers a dependency left in ``request.state`` to the response — also to error
    responses, which FastAPI builds without the endpoint's ``Response`` object — and the
    security headers every response carries."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = (scope.get("state") or {}).get(STATE_KEY) or {}
                message["headers"] = [
                    *message.get("headers", []),
                    *SECURITY_HEADERS,
                    *((name.lower().encode(), value.encode()) for name, value in extra.items()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
