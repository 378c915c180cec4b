"""Dashboard pages: server-rendered Jinja2 + htmx, every action a call to the ``/v1`` API."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import httpx
from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.datastructures import UploadFile as StarletteUploadFile

from services.gateway.dashboard.forward import ForwardToApi
from services.gateway.dashboard.session import (
    CSRF_FIELD,
    ApiError,
    BrowserSession,
    CsrfFailed,
    GatewayApi,
    NotSignedIn,
    gateway_api,
)
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.logging import get_logger
from shared.settings import get_settings

HERE = Path(__file__).resolve().parent
PREFIX = "/dashboard"
# A transcript is text (SRT/VTT/JSON); anything bigger than this is not a transcript.
MAX_TRANSCRIPT_BYTES = 1_000_000
EXPORT_FORMATS = ("json", "csv", "srt")
EMOTION_COLOURS = {
    "anger": "#dc2626",
    "disgust": "#65a30d",
    "fear": "#7c3aed",
    "joy": "#f59e0b",
    "neutral": "#64748b",
    "sadness": "#2563eb",
    "surprise": "#db2777",
}
SENTIMENT_COLOURS = {"negative": "#dc2626", "neutral": "#64748b", "positive": "#16a34a"}

log = get_logger(__name__)
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(
    EMOTIONS=EMOTIONS,
    SENTIMENTS=SENTIMENTS,
    MODALITIES=MODALITIES,
    EMOTION_COLOURS=EMOTION_COLOURS,
    SENTIMENT_COLOURS=SENTIMENT_COLOURS,
    EXPORT_FORMATS=EXPORT_FORMATS,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


@router.get("/static/{path:path}", name="dashboard-static")
async def static_file(path: str) -> Response:
    """The compiled CSS, vendored htmx and the API docs' assets (a route, not a mount, so
    ``include_router`` carries it)."""
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file() or target.suffix not in STATIC_TYPES:
        return Response(status_code=404)
    return FileResponse(
        target, media_type=STATIC_TYPES[target.suffix], headers={"Cache-Control": "public, max-age=3600"}
    )


# --- helpers --------------------------------------------------------------------------------


def render(
    request: Request, session: BrowserSession, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        template,
        {
            "session": session,
            "csrf_token": session.csrf_token,
            "csrf_field": CSRF_FIELD,
            "response_status": status_code,
            **context,
        },
        status_code=status_code,
    )
    session.apply(response)
    return response


def redirect(session: BrowserSession, url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    session.apply(response)
    return response


def to_login(session: BrowserSession, request: Request) -> RedirectResponse:
    return redirect(session, f"{PREFIX}/login?{urlencode({'next': request.url.path})}")


def safe_next(url: str | None) -> str:
    """Only same-site dashboard paths are valid targets after sign-in (no open redirect)."""
    if url and url.startswith(f"{PREFIX}/") and not url.startswith("//") and "\\" not in url:
        return url
    return f"{PREFIX}/analyses"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(max(0.0, float(seconds)), 60)
    return f"{int(minutes)}:{secs:04.1f}"


templates.env.filters["clock"] = format_seconds


def local_time(value: str | None) -> Markup:
    """A UTC timestamp as ``<time>``: shown in UTC without JavaScript, in the browser's own time
    zone with it (dashboard.js)."""
    if not value:
        return Markup("")
    shown = value[:16].replace("T", " ") + " UTC"
    return Markup('<time datetime="{}" data-local-time title="{}">{}</time>').format(value, shown, shown)


templates.env.filters["local_time"] = local_time


def media_limit() -> dict[str, Any]:
    """The upload limit for the form's own check, in bytes and as the API words it."""
    from services.platform.uploads.service import human_size

    limit = get_settings().max_media_bytes
    return {"bytes": limit, "label": human_size(limit)}


templates.env.globals["media_limit"] = media_limit


def static_url(path: str) -> str:
    """A root-relative asset URL, versioned by the file's mtime so caches refresh on rebuild."""
    version = int((STATIC_DIR / path).stat().st_mtime)
    return f"{PREFIX}/static/{path}?v={version}"


templates.env.globals["static_url"] = static_url


def items_of(page: dict[str, Any]) -> list[dict[str, Any]]:
    """The API's list endpoints answer ``{"items": [...]}``."""
    return page["items"]


def timeline(utterances: list[dict[str, Any]], duration: float | None) -> dict[str, Any]:
    """Geometry of the emotion timeline (x in percent of the video): one lane per emotion, one cell
    per utterance whose opacity is that emotion's score."""
    end = max([duration or 0.0, *(u["end"] for u in utterances)]) or 1.0
    cells = []
    for u in utterances:
        if u["emotion"] is None:  # no evidence: nothing to draw
            continue
        start, stop = u["start"], u["end"]
        x, width = 100 * start / end, max(0.4, 100 * (stop - start) / end)
        scores = u["emotion"]["scores"]
        for lane, emotion in enumerate(EMOTIONS):
            cells.append(
                {
                    "x": x,
                    "y": lane,
                    "width": width,
                    "emotion": emotion,
                    "opacity": round(0.08 + 0.92 * float(scores.get(emotion, 0.0)), 3),
                    "title": f"{format_seconds(start)}–{format_seconds(stop)} {emotion} "
                    f"{float(scores.get(emotion, 0.0)):.0%}",
                }
            )
    ticks = [round(end * i / 5, 1) for i in range(6)]
    return {"cells": cells, "end": end, "ticks": [(100 * t / end, format_seconds(t)) for t in ticks]}


def share_bars(summary: dict[str, Any], utterances: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Share of speaking time per emotion: the summary's, or while the job runs (no summary yet)
    counted from the utterances scored so far."""
    if shares := summary.get("emotion_share"):
        return [(e, float(shares.get(e, 0.0))) for e in EMOTIONS]
    spoken = dict.fromkeys(EMOTIONS, 0.0)
    for u in utterances:
        if u["emotion"] is not None:
            spoken[u["emotion"]["label"]] += max(0.0, u["end"] - u["start"])
    total = sum(spoken.values()) or 1.0
    return [(e, spoken[e] / total) for e in EMOTIONS]


def speaker_strips(
    summary: dict[str, Any], utterances: list[dict[str, Any]], duration: float | None
) -> list[dict[str, Any]]:
    """One strip per speaker, in order of first appearance: where they speak over the video (x in
    percent, coloured by the utterance's emotion), their speaking time and dominant emotion (the
    summary's; while the job runs, counted from the utterances scored so far)."""
    end = max([duration or 0.0, *(u["end"] for u in utterances)]) or 1.0
    from_summary = {s["speaker"]: s for s in summary.get("speakers") or []}
    strips: dict[str, dict[str, Any]] = {}
    for u in sorted(utterances, key=lambda u: u["start"]):
        if not u.get("speaker"):
            continue
        strip = strips.setdefault(u["speaker"], {"speaker": u["speaker"], "segments": [], "seconds": 0.0})
        strip["seconds"] += max(0.0, u["end"] - u["start"])
        strip["segments"].append(
            {
                "x": 100 * u["start"] / end,
                "width": max(0.4, 100 * (u["end"] - u["start"]) / end),
                "emotion": u["emotion"]["label"],
            }
        )
    for name, strip in strips.items():
        known = from_summary.get(name, {})
        strip["seconds"] = known.get("speaking_seconds", strip["seconds"])
        strip["dominant_emotion"] = known.get("dominant_emotion")
        strip["dominant_sentiment"] = known.get("dominant_sentiment")
    return list(strips.values())


def usage_meters(usage: dict[str, Any]) -> list[dict[str, Any]]:
    """Usage as bars: analyses and video minutes used of the month's limits."""
    meters = []
    for label, block, scale, unit in (
        ("Analyses", usage["analyses"], 1.0, ""),
        ("Video minutes", usage["video_seconds"], 60.0, " min"),
    ):
        used, limit = block["used"] / scale, block["limit"] / scale
        meters.append(
            {
                "label": label,
                "used": used,
                "limit": limit,
                "unit": unit,
                "percent": min(100.0, 100.0 * used / limit) if limit else 0.0,
            }
        )
    return meters


# --- error handling -----------------------------------------------------------------------


async def _page(request: Request, handler) -> Response:
    """Run a view with a session and an API client; session failures become browser answers."""
    session = BrowserSession.from_request(request)
    try:
        async with gateway_api(request, session) as api:
            return await handler(session, api)
    except NotSignedIn:
        if request.headers.get("hx-request"):
            response = Response(status_code=204, headers={"HX-Redirect": f"{PREFIX}/login"})
            session.apply(response)
            return response
        return to_login(session, request)
    except ApiError as exc:
        # An API answer the view did not expect (e.g. 429 from the per-user request rate).
        if request.headers.get("hx-request"):
            return Response(status_code=204)  # keep the current fragment; the next event retries
        return render(request, session, "error.html", status_code=exc.status, message=exc.message)
    except CsrfFailed as exc:
        log.warning("dashboard.csrf_rejected", path=request.url.path, reason=str(exc))
        return render(
            request, session, "error.html", status_code=403, message="This form expired; reload the page."
        )


# --- accounts -----------------------------------------------------------------------------


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    session = BrowserSession.from_request(request)
    return redirect(session, f"{PREFIX}/analyses" if session.signed_in else f"{PREFIX}/login")


# Notices a redirect may ask the sign-in page to show (a fixed set: no text from the URL is shown).
LOGIN_NOTICES = {"password-reset": "Your password was changed. Sign in with the new one."}


@router.get("/login")
async def login_page(request: Request, next: str | None = None, notice: str | None = None) -> Response:
    session = BrowserSession.from_request(request)
    return render(
        request,
        session,
        "login.html",
        next=safe_next(next),
        mode="login",
        notice=LOGIN_NOTICES.get(notice or ""),
    )


@router.get("/signup")
async def signup_page(request: Request) -> Response:
    session = BrowserSession.from_request(request)
    return render(request, session, "login.html", next=f"{PREFIX}/analyses", mode="signup")


async def _sign_in(session: BrowserSession, api: GatewayApi, email: str, password: str) -> None:
    tokens = await api.json(
        "POST", "/v1/auth/login", auth=False, data={"username": email, "password": password}
    )
    session.store_tokens(tokens)


@router.post("/login")
async def login(
    request: Request,
    email: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        try:
            await _sign_in(session, api, email, password)
        except ApiError as exc:
            return render(
                request,
                session,
                "login.html",
                status_code=exc.status,
                mode="login",
                next=safe_next(next),
                email=email,
                error=exc.message,
            )
        return redirect(session, safe_next(next))

    return await _page(request, handler)


@router.post("/signup")
async def signup(
    request: Request,
    email: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        try:
            await api.json("POST", "/v1/auth/signup", auth=False, json={"email": email, "password": password})
            await _sign_in(session, api, email, password)
        except ApiError as exc:
            return render(
                request,
                session,
                "login.html",
                status_code=exc.status,
                mode="signup",
                next=f"{PREFIX}/analyses",
                email=email,
                error=exc.message,
            )
        return redirect(session, f"{PREFIX}/analyses")

    return await _page(request, handler)


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        if session.refresh_token:
            # Revoke the refresh token server-side; the cookies go either way.
            await api.request(
                "POST", "/v1/auth/logout", auth=False, json={"refresh_token": session.refresh_token}
            )
        session.clear()
        return redirect(session, f"{PREFIX}/login")

    return await _page(request, handler)


# --- password change and reset ------------------------------------------------------------


async def _account_page(
    request: Request, session: BrowserSession, api: GatewayApi, status_code: int = 200, **context: Any
) -> Response:
    account = await api.json("GET", "/v1/auth/me")
    return render(request, session, "account.html", status_code=status_code, account=account, **context)


@router.get("/account")
async def account_page(request: Request, changed: bool = False) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        notice = "Password changed. Every other session was signed out." if changed else None
        return await _account_page(request, session, api, notice=notice)

    return await _page(request, handler)


@router.post("/account/password")
async def change_password(
    request: Request,
    current_password: Annotated[str, Form()] = "",
    new_password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        try:
            tokens = await api.json(
                "POST",
                "/v1/auth/password",
                json={"current_password": current_password, "new_password": new_password},
            )
        except ApiError as exc:
            return await _account_page(request, session, api, exc.status, error=exc.message)
        # The API ended every session of the account but answers this one with new tokens.
        session.store_tokens(tokens)
        return redirect(session, f"{PREFIX}/account?changed=true")

    return await _page(request, handler)


@router.get("/reset-password")
async def reset_password_page(request: Request) -> Response:
    session = BrowserSession.from_request(request)
    return render(request, session, "reset_password.html")


@router.post("/reset-password")
async def reset_password(
    request: Request,
    token: Annotated[str, Form()] = "",
    new_password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        try:
            await api.json(
                "POST",
                "/v1/auth/password-reset",
                auth=False,
                json={"token": token.strip(), "new_password": new_password},
            )
        except ApiError as exc:
            return render(request, session, "reset_password.html", status_code=exc.status, error=exc.message)
        session.clear()  # whoever was signed in here, the account's sessions have ended
        return redirect(session, f"{PREFIX}/login?notice=password-reset")

    return await _page(request, handler)


# --- API keys -----------------------------------------------------------------------------


# The new key travels from the POST to the page that shows it once (post/redirect/get, so a
# reload never creates a second key) in a short-lived cookie that only /dashboard/keys receives.
NEW_KEY_COOKIE = "mr_new_key"
NEW_KEY_COOKIE_SECONDS = 120


def show_once(session: BrowserSession, response: Response, cookie: str, path: str, value: dict) -> None:
    """Hand a secret from a POST to the one page that shows it (post/redirect/get)."""
    response.set_cookie(
        cookie,
        base64.urlsafe_b64encode(json.dumps(value).encode()).decode(),
        max_age=NEW_KEY_COOKIE_SECONDS,
        path=path,
        secure=session.secure,
        httponly=True,
        samesite="strict",
    )


def shown_once(request: Request, cookie: str) -> dict | None:
    """The secret ``show_once`` handed over; the page deletes the cookie as it shows it."""
    raw = request.cookies.get(cookie)
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _keys_page(
    request: Request, session: BrowserSession, api: GatewayApi, status_code: int = 200, **context: Any
) -> Response:
    keys = items_of(await api.json("GET", "/v1/api-keys"))
    account = await api.json("GET", "/v1/auth/me")
    return render(
        request, session, "keys.html", status_code=status_code, keys=keys, account=account, **context
    )


@router.get("/keys")
async def keys_page(request: Request) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        response = await _keys_page(request, session, api, created=shown_once(request, NEW_KEY_COOKIE))
        response.delete_cookie(NEW_KEY_COOKIE, path=f"{PREFIX}/keys", httponly=True, samesite="strict")
        return response

    return await _page(request, handler)


@router.post("/keys")
async def create_key(
    request: Request,
    name: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    scope_read: Annotated[bool, Form()] = False,
    scope_write: Annotated[bool, Form()] = False,
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        scopes = [s for s, on in (("analyses:read", scope_read), ("analyses:write", scope_write)) if on]
        try:
            created = await api.json("POST", "/v1/api-keys", json={"name": name, "scopes": scopes})
        except ApiError as exc:
            return await _keys_page(
                request, session, api, exc.status, created=None, error=exc.message, key_name=name
            )
        response = redirect(session, f"{PREFIX}/keys")
        show_once(
            session,
            response,
            NEW_KEY_COOKIE,
            f"{PREFIX}/keys",
            {"name": created["name"], "key": created["key"]},
        )
        return response

    return await _page(request, handler)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    request: Request, key_id: uuid.UUID, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        try:
            await api.json("DELETE", f"/v1/api-keys/{key_id}")
        except ApiError as exc:
            return await _keys_page(
                request, session, api, exc.status, created=None, error=exc.message, key_name=""
            )
        return redirect(session, f"{PREFIX}/keys")

    return await _page(request, handler)


# --- webhooks -----------------------------------------------------------------------------

NEW_SECRET_COOKIE = "mr_new_secret"
WEBHOOK_EVENTS = ("analysis.succeeded", "analysis.failed")
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


async def _webhooks_page(
    request: Request, session: BrowserSession, api: GatewayApi, status_code: int = 200, **context: Any
) -> Response:
    endpoints = items_of(await api.json("GET", "/v1/webhooks/endpoints"))
    return render(
        request,
        session,
        "webhooks.html",
        status_code=status_code,
        endpoints=endpoints,
        events=WEBHOOK_EVENTS,
        **context,
    )


@router.get("/webhooks")
async def webhooks_page(request: Request, notice: str | None = None) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        created = shown_once(request, NEW_SECRET_COOKIE)
        shown = {"test-sent": "Test event queued; its delivery is in the log below."}.get(notice or "")
        response = await _webhooks_page(request, session, api, created=created, notice=shown)
        response.delete_cookie(NEW_SECRET_COOKIE, path=f"{PREFIX}/webhooks", httponly=True, samesite="strict")
        return response

    return await _page(request, handler)


@router.post("/webhooks")
async def create_webhook(request: Request) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        form = await request.form(max_fields=10)
        session.check_csrf(request, str(form.get(CSRF_FIELD) or ""))
        url, description = str(form.get("url") or "").strip(), str(form.get("description") or "").strip()
        event_types = [e for e in form.getlist("event_types") if e in WEBHOOK_EVENTS]
        try:
            created = await api.json(
                "POST",
                "/v1/webhooks/endpoints",
                json={"url": url, "description": description, "event_types": event_types},
            )
        except ApiError as exc:
            return await _webhooks_page(
                request,
                session,
                api,
                status_code=exc.status,
                error=exc.message,
                form={"url": url, "description": description, "event_types": event_types},
            )
        response = redirect(session, f"{PREFIX}/webhooks")
        show_once(
            session,
            response,
            NEW_SECRET_COOKIE,
            f"{PREFIX}/webhooks",
            {"url": created["url"], "secret": created["secret"]},
        )
        return response

    return await _page(request, handler)


async def _webhook_action(request: Request, csrf_token: str, call, done: str) -> Response:
    """A button on the webhooks pages: the API call, then back to ``done``; a refusal is shown on
    the endpoints page."""

    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        try:
            await call(api)
        except ApiError as exc:
            return await _webhooks_page(request, session, api, status_code=exc.status, error=exc.message)
        return redirect(session, done)

    return await _page(request, handler)


@router.post("/webhooks/{endpoint_id}/test")
async def test_webhook(
    request: Request, endpoint_id: uuid.UUID, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    return await _webhook_action(
        request,
        csrf_token,
        lambda api: api.json("POST", f"/v1/webhooks/endpoints/{endpoint_id}/test"),
        f"{PREFIX}/webhooks/deliveries?{urlencode({'endpoint_id': str(endpoint_id)})}",
    )


@router.post("/webhooks/{endpoint_id}/active")
async def set_webhook_active(
    request: Request,
    endpoint_id: uuid.UUID,
    csrf_token: Annotated[str, Form()] = "",
    active: Annotated[bool, Form()] = False,
) -> Response:
    return await _webhook_action(
        request,
        csrf_token,
        lambda api: api.json("PATCH", f"/v1/webhooks/endpoints/{endpoint_id}", json={"is_active": active}),
        f"{PREFIX}/webhooks",
    )


@router.post("/webhooks/{endpoint_id}/delete")
async def delete_webhook(
    request: Request, endpoint_id: uuid.UUID, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    return await _webhook_action(
        request,
        csrf_token,
        lambda api: api.json("DELETE", f"/v1/webhooks/endpoints/{endpoint_id}"),
        f"{PREFIX}/webhooks",
    )


@router.get("/webhooks/deliveries")
async def deliveries_page(
    request: Request,
    endpoint_id: uuid.UUID | None = None,
    status: str | None = None,
    cursor: str | None = None,
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        status_filter = status if status in DELIVERY_STATUSES else None
        params = {
            k: v
            for k, v in (
                ("endpoint_id", str(endpoint_id) if endpoint_id else None),
                ("status", status_filter),
                ("cursor", cursor),
                ("limit", "20"),
            )
            if v
        }
        try:
            page = await api.json("GET", "/v1/webhooks/deliveries", params=params)
        except ApiError as exc:
            return render(request, session, "error.html", status_code=exc.status, message=exc.message)
        endpoints = {e["id"]: e for e in items_of(await api.json("GET", "/v1/webhooks/endpoints"))}
        return render(
            request,
            session,
            "deliveries.html",
            deliveries=items_of(page),
            next_cursor=page["next_cursor"],
            endpoints=endpoints,
            endpoint_id=str(endpoint_id) if endpoint_id else None,
            status=status_filter,
            statuses=DELIVERY_STATUSES,
        )

    return await _page(request, handler)


@router.post("/webhooks/deliveries/{delivery_id}/resend")
async def resend_delivery(
    request: Request,
    delivery_id: uuid.UUID,
    csrf_token: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    # Back to the log page the button was on (its filters), never anywhere else.
    on_log = back.startswith(f"{PREFIX}/webhooks/deliveries") and safe_next(back) == back
    done = back if on_log else f"{PREFIX}/webhooks/deliveries"
    return await _webhook_action(
        request,
        csrf_token,
        lambda api: api.json("POST", f"/v1/webhooks/deliveries/{delivery_id}/resend"),
        done,
    )


# --- analyses -----------------------------------------------------------------------------


@router.get("/analyses")
async def analyses_page(
    request: Request, cursor: str | None = None, status: str | None = None, q: str | None = None
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        params = {k: v for k, v in (("cursor", cursor), ("status", status), ("q", q), ("limit", "20")) if v}
        page = await api.json("GET", "/v1/analyses", params=params)
        usage = await api.json("GET", "/v1/usage")
        return render(
            request,
            session,
            "analyses.html",
            analyses=items_of(page),
            next_cursor=page["next_cursor"],
            status=status,
            q=q,
            usage=usage,
            meters=usage_meters(usage),
        )

    return await _page(request, handler)


@router.get("/analyses/new")
async def new_analysis_page(request: Request) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        usage = await api.json("GET", "/v1/usage")
        return render(request, session, "new_analysis.html", meters=usage_meters(usage), error=None)

    return await _page(request, handler)


def _internal_s3_url(url: str, headers: dict[str, str]) -> str:
    """A URL presigned for the public S3 endpoint (MOODREEL_S3_PUBLIC_ENDPOINT_URL), reached by the
    services' own endpoint: the gateway may not resolve the public name (compose's 127.0.0.1:9000
    is the container itself). The signed Host header is kept, so the signature still holds."""
    settings = get_settings()
    public, internal = settings.s3_public_endpoint_url, settings.s3_endpoint_url
    if not public or not internal or not url.startswith(public.rstrip("/") + "/"):
        return url
    headers["Host"] = urlsplit(public).netloc
    return internal.rstrip("/") + url[len(public.rstrip("/")) :]


async def _upload_file(api: GatewayApi, upload: UploadFile) -> str:
    """Create an upload through the API and PUT the bytes where it says: the gateway's own signed
    local-storage URL (same app, in-process) or a presigned S3 URL. Returns the upload id."""
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    target = await api.json(
        "POST",
        "/v1/uploads",
        json={
            "filename": Path(upload.filename or "video").name,
            "content_type": upload.content_type or "",
            "size_bytes": size,
        },
    )
    url = urlsplit(target["url"])
    # The PUT streams from the spooled temporary file; the body is never held in memory whole.
    content = iter(lambda: upload.file.read(1 << 20), b"")
    headers = {**target["headers"], "Content-Length": str(size)}
    if target["backend"] == "local":
        response = await api.client.request(
            target["method"], url.path, params=url.query, content=_aiter(content), headers=headers
        )
    else:
        put_url = _internal_s3_url(target["url"], headers)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, write=600.0)) as s3:
            response = await s3.request(target["method"], put_url, content=_aiter(content), headers=headers)
    if response.status_code >= 400:
        raise ApiError(response.status_code, _problem(response))
    return str(target["upload_id"])


async def _aiter(chunks) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"title": "Upload failed", "detail": response.text[:200]}
    return body if isinstance(body, dict) else {"title": "Upload failed"}


# The new-analysis form carries the video itself, so the gateway's body limit for JSON requests
# does not apply to this path (services/gateway/limits.py exempts it); it is bounded here, on
# Content-Length and before anything is parsed: the media limit plus room for the other fields.
FORM_OVERHEAD_BYTES = MAX_TRANSCRIPT_BYTES + 1_000_000


@router.post("/analyses")
async def create_analysis(request: Request) -> Response:
    session = BrowserSession.from_request(request)
    if not session.signed_in:
        return to_login(session, request)
    limit = get_settings().max_media_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > limit:
        message = f"Uploads through the dashboard are limited to {limit // 1_000_000} MB."
        return render(request, session, "error.html", status_code=413, message=message)
    form = await request.form(max_files=2, max_fields=10)
    try:
        return await _page(request, lambda session, api: _submit_analysis(request, session, api, form))
    finally:
        await form.close()


def _form_file(form, name: str) -> UploadFile | None:
    value = form.get(name)
    return value if isinstance(value, StarletteUploadFile) and value.filename else None


async def _submit_analysis(request: Request, session: BrowserSession, api: GatewayApi, form) -> Response:
    session.check_csrf(request, str(form.get(CSRF_FIELD) or ""))
    video_url = str(form.get("video_url") or "").strip()
    window_seconds = str(form.get("window_seconds") or "").strip()
    segmentation = str(form.get("segmentation") or "").strip()
    name = str(form.get("name") or "").strip()
    video_file, transcript_file = _form_file(form, "video_file"), _form_file(form, "transcript_file")
    body: dict[str, Any] = {}
    try:
        if transcript_file is not None:
            raw = await transcript_file.read(MAX_TRANSCRIPT_BYTES + 1)
            if len(raw) > MAX_TRANSCRIPT_BYTES:
                raise ApiError(
                    413, {"title": "Transcript too large", "detail": "Transcripts are limited to 1 MB."}
                )
            body["transcript"] = raw.decode("utf-8-sig", errors="replace")
        options: dict[str, Any] = {}
        if window_seconds:
            options["window_seconds"] = float(window_seconds)
        if segmentation:
            options["segmentation"] = segmentation  # the API refuses an unknown value (422)
        # Unchecked boxes are not sent: the hidden "modalities_shown" says the form had them, so a
        # post without it (another client of this form) keeps the default, every modality.
        chosen = [m for m in MODALITIES if form.get(f"modality_{m}")]
        if form.get("modalities_shown") and len(chosen) < len(MODALITIES):
            if not chosen:
                problem = {"title": "No modality chosen", "detail": "Choose at least one modality."}
                raise ApiError(422, problem)
            options["modalities"] = chosen
        if options:
            body["options"] = options
        if name:
            body["name"] = name
        if video_file is not None:
            body["upload_id"] = await _upload_file(api, video_file)
        elif video_url:
            body["video_url"] = video_url
        else:
            raise ApiError(
                422, {"title": "Nothing to analyse", "detail": "Choose a video file or enter a URL."}
            )
        analysis = await api.json("POST", "/v1/analyses", json=body)
    except (ApiError, ValueError) as exc:
        usage = await api.json("GET", "/v1/usage")
        message = exc.message if isinstance(exc, ApiError) else "Window seconds must be a number."
        return render(
            request,
            session,
            "new_analysis.html",
            status_code=getattr(exc, "status", 422),
            meters=usage_meters(usage),
            error=message,
            video_url=video_url,
            window_seconds=window_seconds,
            modalities_chosen=[m for m in MODALITIES if form.get(f"modality_{m}")],
            segmentation=segmentation,
            name=name,
        )
    return redirect(session, f"{PREFIX}/analyses/{analysis['id']}")


def player_kind(analysis: dict[str, Any], upload_type: str | None) -> str | None:
    """``video`` or ``audio`` when the analysis has stored media to play, else None."""
    if analysis["source"].get("upload_id") is None or not upload_type:
        return None
    return "audio" if upload_type.startswith("audio/") else "video"


def _analysis_context(analysis: dict[str, Any], speaker: str | None = None) -> dict[str, Any]:
    utterances = analysis["utterances"]
    summary = analysis["summary"] or {}
    modalities = sorted({m for u in utterances for m in u["modalities_used"]}, key=MODALITIES.index)
    speakers = speaker_strips(summary, utterances, analysis["duration_seconds"])
    if speaker not in {s["speaker"] for s in speakers}:
        speaker = None
    return {
        "analysis": analysis,
        "utterances": utterances,
        "shown_utterances": [u for u in utterances if speaker is None or u.get("speaker") == speaker],
        "speakers": speakers,
        "speaker": speaker,
        "summary": summary,
        "modalities": modalities,
        "timeline": timeline(utterances, analysis["duration_seconds"]),
        "shares": share_bars(summary, utterances),
        "terminal": analysis["status"] in ("succeeded", "failed", "canceled"),
    }


@router.get("/analyses/{analysis_id}")
async def analysis_page(request: Request, analysis_id: uuid.UUID, speaker: str | None = None) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        try:
            analysis = await api.json("GET", f"/v1/analyses/{analysis_id}")
        except ApiError as exc:
            return render(request, session, "error.html", status_code=exc.status, message=exc.message)
        upload_type = None
        if upload_id := analysis["source"].get("upload_id"):
            upload = await api.request("GET", f"/v1/uploads/{upload_id}")
            upload_type = upload.json()["content_type"] if upload.status_code == 200 else None
        return render(
            request,
            session,
            "analysis.html",
            player=player_kind(analysis, upload_type),
            **_analysis_context(analysis, speaker),
        )

    return await _page(request, handler)


@router.get("/analyses/{analysis_id}/live")
async def analysis_live(request: Request, analysis_id: uuid.UUID, speaker: str | None = None) -> Response:
    """The results fragment htmx swaps in on every SSE event."""

    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        analysis = await api.json("GET", f"/v1/analyses/{analysis_id}")
        context = _analysis_context(analysis, speaker)
        response = render(request, session, "_results.html", **context)
        if context["terminal"]:
            # Reload as the static page: it has no SSE connection for the browser to reopen.
            response.headers["HX-Refresh"] = "true"
        return response

    return await _page(request, handler)


@router.get("/analyses/{analysis_id}/events")
async def analysis_events(request: Request, analysis_id: uuid.UUID) -> Response:
    """The API's SSE stream, relayed as is (EventSource cannot send a bearer token)."""

    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        await api.ensure_access()
        return ForwardToApi(f"/v1/analyses/{analysis_id}/events", "", session)

    return await _page(request, handler)


@router.get("/analyses/{analysis_id}/media")
async def analysis_media(request: Request, analysis_id: uuid.UUID) -> Response:
    """The player's source: the API's media route relayed with the browser's Range header, so the
    API answers 206 with the bytes (local storage) or redirects to a presigned URL (S3)."""

    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        await api.ensure_access()
        return ForwardToApi(f"/v1/analyses/{analysis_id}/media", "", session)

    return await _page(request, handler)


@router.get("/analyses/{analysis_id}/utterances/{index}/thumbnail")
async def utterance_thumbnail(request: Request, analysis_id: uuid.UUID, index: int) -> Response:
    """An utterance's face thumbnail (the frame its boxes are drawn on), relayed from the API."""

    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        await api.ensure_access()
        return ForwardToApi(f"/v1/analyses/{analysis_id}/utterances/{index}/thumbnail", "", session)

    return await _page(request, handler)


@router.get("/analyses/{analysis_id}/export")
async def analysis_export(request: Request, analysis_id: uuid.UUID, format: str = "json") -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        if format not in EXPORT_FORMATS:
            return render(request, session, "error.html", status_code=400, message="Unknown export format.")
        await api.ensure_access()
        return ForwardToApi(f"/v1/analyses/{analysis_id}/export", urlencode({"format": format}), session)

    return await _page(request, handler)


@router.post("/analyses/{analysis_id}/utterances/{index}/label")
async def label_utterance(
    request: Request,
    analysis_id: uuid.UUID,
    index: int,
    csrf_token: Annotated[str, Form()] = "",
    emotion: Annotated[str, Form()] = "",
    sentiment: Annotated[str, Form()] = "",
    action: Annotated[str, Form()] = "save",
) -> Response:
    """The label picker: stores the owner's labels through the API and answers with the card
    (htmx swaps it in); without htmx, back to the page."""

    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        body = {} if action == "clear" else {"emotion": emotion or None, "sentiment": sentiment or None}
        error = None
        try:
            utterance = await api.json(
                "PUT", f"/v1/analyses/{analysis_id}/utterances/{index}/label", json=body
            )
        except ApiError as exc:
            if exc.status == 404:
                return render(request, session, "error.html", status_code=404, message=exc.message)
            error = exc.message
            analysis = await api.json("GET", f"/v1/analyses/{analysis_id}")
            utterance = next(u for u in analysis["utterances"] if u["index"] == index)
        if request.headers.get("hx-request") != "true":
            return redirect(session, f"{PREFIX}/analyses/{analysis_id}")
        context = {"u": utterance, "analysis": {"id": analysis_id, "status": "succeeded"}}
        status = 422 if error else 200
        return render(request, session, "_utterance.html", status_code=status, label_error=error, **context)

    return await _page(request, handler)


@router.post("/account/training-consent")
async def training_consent(
    request: Request, csrf_token: Annotated[str, Form()] = "", consent: Annotated[bool, Form()] = False
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        await api.json("PATCH", "/v1/auth/me", json={"training_consent": consent})
        return redirect(session, f"{PREFIX}/keys")

    return await _page(request, handler)


@router.post("/analyses/{analysis_id}/delete")
async def delete_analysis(
    request: Request, analysis_id: uuid.UUID, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        session.check_csrf(request, csrf_token)
        await api.json("DELETE", f"/v1/analyses/{analysis_id}")
        return redirect(session, f"{PREFIX}/analyses")

    return await _page(request, handler)


# --- API samples --------------------------------------------------------------------------


@router.get("/api")
async def api_samples(request: Request) -> Response:
    async def handler(session: BrowserSession, api: GatewayApi) -> Response:
        await api.ensure_access()
        return render(request, session, "api.html", base_url=str(request.base_url).rstrip("/"))

    return await _page(request, handler)


# --- anything else --------------------------------------------------------------------------
# Registered last: only paths no other dashboard route matched get here.
@router.get("/{path:path}")
async def not_found_page(request: Request, path: str) -> Response:
    session = BrowserSession.from_request(request)
    return render(
        request, session, "error.html", status_code=404, message=f"There is no page at {request.url.path}."
    )
