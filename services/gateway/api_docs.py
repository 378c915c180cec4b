"""The API's human documentation, served without any CDN: Swagger UI at ``/docs`` and Redoc at
``/redoc`` load pinned copies from the dashboard's static folder (``make dashboard-assets``), and
every problem ``type`` (``/problems/<code>``) resolves to a page explaining that code."""

from __future__ import annotations

import html
import inspect

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse

from services.gateway.dashboard.views import static_url
from shared.problems import Problem, problem_type

# Codes raised without a class of their own (a class's code narrowed where it is raised) and the
# framework's, so that every ``type`` the API sends has a page.
EXTRA_CODES: dict[str, tuple[int, str, str]] = {
    "invalid_event_id": (
        400,
        "Last-Event-ID is not an event id",
        "Resume an event stream with the `id` of an event it sent.",
    ),
    "upload_url_invalid": (
        403,
        "The upload URL is invalid or expired",
        "Ask `POST /v1/uploads` for a new upload URL.",
    ),
    "method_not_allowed": (
        405,
        "Method not allowed",
        "The path exists but not with this HTTP method; see /docs.",
    ),
    "internal_error": (
        500,
        "Internal server error",
        "The server failed; retry later. The error is logged with the request.",
    ),
}


def problem_catalogue() -> dict[str, tuple[int, str, str]]:
    """``code -> (status, title, explanation)`` for every problem class the gateway has loaded."""
    catalogue: dict[str, tuple[int, str, str]] = {}
    pending = [Problem]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        explanation = inspect.getdoc(cls) if "__doc__" in vars(cls) and cls.__doc__ else ""
        if cls.code in catalogue and not explanation:
            continue
        catalogue[cls.code] = (cls.status, cls.title, explanation or "")
    for code, entry in EXTRA_CODES.items():
        catalogue.setdefault(code, entry)
    return dict(sorted(catalogue.items()))


def install_api_docs(app: FastAPI) -> None:
    """Call with an app created with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} — Swagger UI",
            oauth2_redirect_url=oauth2_redirect,
            swagger_js_url=static_url("vendor/swagger-ui-bundle.js"),
            swagger_css_url=static_url("vendor/swagger-ui.css"),
            swagger_favicon_url=static_url("vendor/swagger-favicon-32x32.png"),
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} — Redoc",
            redoc_js_url=static_url("vendor/redoc.standalone.js"),
            redoc_favicon_url=static_url("vendor/swagger-favicon-32x32.png"),
            with_google_fonts=False,
        )

    @app.get("/problems", include_in_schema=False)
    async def problem_index(request: Request):
        catalogue = problem_catalogue()
        if _wants_json(request):
            return JSONResponse([_entry(code, *entry) for code, entry in catalogue.items()])
        rows = "".join(
            f'<tr><td><a href="{problem_type(code)}"><code>{html.escape(code)}</code></a></td>'
            f"<td>{status}</td><td>{html.escape(title)}</td></tr>"
            for code, (status, title, _) in catalogue.items()
        )
        body = f"<table><tr><th>code</th><th>status</th><th>title</th></tr>{rows}</table>"
        return _page("Problem types", body)

    @app.get("/problems/{code}", include_in_schema=False)
    async def problem_doc(code: str, request: Request):
        entry = problem_catalogue().get(code)
        if entry is None:
            if _wants_json(request):
                return JSONResponse({"code": code, "known": False, "see": "/problems"}, status_code=404)
            return _page(
                "Unknown problem type",
                f"<p>No problem has the code <code>{html.escape(code)}</code>. "
                'See <a href="/problems">every problem type</a>.</p>',
                status_code=404,
            )
        status, title, explanation = entry
        if _wants_json(request):
            return JSONResponse(_entry(code, status, title, explanation))
        body = (
            f"<p><code>{html.escape(code)}</code> · HTTP {status}</p>"
            + "".join(
                f"<p>{html.escape(paragraph)}</p>" for paragraph in explanation.split("\n\n") if paragraph
            )
            + "<p>Problem bodies (RFC 9457, <code>application/problem+json</code>) carry "
            f"<code>type</code> (<code>{problem_type(code)}</code>), <code>title</code>, "
            "<code>status</code>, <code>detail</code> (what exactly was wrong with this request), "
            "<code>instance</code> and this <code>code</code>, plus the members named in the "
            '<a href="/docs">API reference</a> for the operation. '
            '<a href="/problems">Every problem type</a>.</p>'
        )
        return _page(title, body)


def _entry(code: str, status: int, title: str, explanation: str) -> dict:
    return {
        "type": problem_type(code),
        "code": code,
        "status": status,
        "title": title,
        "explanation": explanation,
    }


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "json" in accept and "text/html" not in accept


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} — Moodreel API</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem}"
        "td,th{text-align:left;padding:.2rem .8rem .2rem 0}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status_code)
