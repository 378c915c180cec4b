"""The ``moodreel`` command's client commands (``analyse``, ``analyses list|show|export|cancel``),
built on the Python SDK (``clients/python``). They talk to a server over its public API only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import typer

OutputFormat = Literal["table", "json", "csv", "srt"]
EXPORT_FORMATS = ("json", "csv", "srt")

analyses_app = typer.Typer(no_args_is_help=True, help="List, show, export and cancel analyses on a server.")

ServerOption = typer.Option(
    None, "--server", envvar="MOODREEL_URL", help="gateway URL [default: http://127.0.0.1:8000]"
)
ApiKeyOption = typer.Option(None, "--api-key", envvar="MOODREEL_API_KEY", help="an API key (mr_live_…)")
FormatOption = typer.Option("table", "--format", "-f", help="table | json | csv | srt")
OutOption = typer.Option(None, "--out", "-o", help="write here instead of standard output")


def _client(server: str | None, api_key: str | None):
    from moodreel import Moodreel

    if not api_key:
        _fail("an API key is needed: pass --api-key or set MOODREEL_API_KEY (create one in the dashboard)")
    return Moodreel(server, api_key=api_key)


def _fail(message: str) -> None:
    typer.echo(f"moodreel: {message}", err=True)
    raise typer.Exit(1)


def _describe(exc: Exception) -> str:
    from moodreel import AnalysisFailedError, ApiError

    if isinstance(exc, ApiError):
        return f"{exc.status} {exc.code}: {exc.detail or exc.title}"
    if isinstance(exc, AnalysisFailedError):
        return (
            f"the analysis {exc.analysis.get('id')} {exc.analysis.get('status')}: {exc.code}: {exc.message}"
        )
    return str(exc)


class _Errors:
    """Turns the SDK's errors into one line on standard error and exit status 1."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        from moodreel import MoodreelError

        if exc is not None and isinstance(exc, MoodreelError):
            typer.echo(f"moodreel: {_describe(exc)}", err=True)
            raise typer.Exit(1) from None
        return False


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)


def _check_format(output_format: str) -> None:
    if output_format not in ("table", *EXPORT_FORMATS):
        raise typer.BadParameter("choose table, json, csv or srt", param_hint="--format")


def _utterance_table(analysis: dict[str, Any]):
    from rich.table import Table

    table = Table(
        title=f"{analysis.get('name') or analysis['id']}: {analysis['status']}", title_justify="left"
    )
    for column in ("#", "start", "end", "speaker", "text", "emotion", "sentiment", "modalities"):
        table.add_column(column, justify="right" if column in ("#", "start", "end") else "left")
    for u in analysis.get("utterances", []):
        table.add_row(
            str(u["index"]),
            f"{u['start']:.2f}",
            f"{u['end']:.2f}",
            u["speaker"] or "",
            u["text"],
            f"{u['emotion']['label']} {u['emotion']['confidence']:.0%}",
            f"{u['sentiment']['label']} {u['sentiment']['confidence']:.0%}",
            ",".join(u["modalities_used"]),
        )
    return table


def _render(client, analysis: dict[str, Any], output_format: str, out: Path | None) -> None:
    if output_format in EXPORT_FORMATS:
        _write(client.analyses.export(analysis["id"], output_format), out)
        return
    from rich.console import Console

    if out is None:
        _stdout_console().print(_utterance_table(analysis))
    else:
        with out.open("w", encoding="utf-8") as handle:
            Console(file=handle, width=200).print(_utterance_table(analysis))
        typer.echo(f"wrote {out}", err=True)


def _follow(client, analysis_id: str, show_progress: bool, timeout: float) -> None:
    """Follow the event stream to its end, with a progress bar over the media's duration."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True, disable=not show_progress, console=_stderr_console()) as progress:
        task = progress.add_task("queued", total=None, detail="")
        utterances = 0
        duration: float | None = None
        for event in client.analyses.stream(analysis_id, timeout=timeout):
            if event.type == "status":
                progress.update(task, description=event.data["status"])
                if event.data["status"] == "processing" and duration is None:
                    duration = client.analyses.get(analysis_id)["duration_seconds"]
                    if duration:
                        progress.update(task, total=duration)
            elif event.type == "utterance":
                utterances += 1
                if duration is None:
                    duration = client.analyses.get(analysis_id)["duration_seconds"]
                    if duration:
                        progress.update(task, total=duration)
                done = min(float(event.data["end"]), duration) if duration else None
                progress.update(task, completed=done, detail=f"{utterances} utterances")


def _stdout_console():
    from rich.console import Console

    # Piped or redirected output is not folded to 80 columns: ids and texts stay whole.
    return Console(width=None if sys.stdout.isatty() else 240)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def analyse(
    source: str = typer.Argument(..., help="a video/audio file, or an http(s) URL the server fetches"),
    transcript: Path | None = typer.Option(
        None, "--transcript", "-t", exists=True, dir_okay=False, help="SRT, WebVTT or JSON segments"
    ),
    name: str | None = typer.Option(None, help="[default: the file name or the URL's last segment]"),
    window_seconds: float | None = typer.Option(None, help="window length without a transcript"),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    output_format: str = FormatOption,
    out: Path | None = OutOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="a progress bar on standard error"),
    timeout: float = typer.Option(1800.0, help="give up after this many seconds"),
) -> None:
    """Analyse a video: upload it (or send its URL), follow the progress, print the results."""
    _check_format(output_format)
    is_url = source.startswith(("http://", "https://"))
    if not is_url and not Path(source).is_file():
        _fail(f"{source}: no such file (give a file or an http(s) URL)")
    with _Errors(), _client(server, api_key) as client:
        options = {"window_seconds": window_seconds} if window_seconds is not None else None
        source_kwargs = {"url": source} if is_url else {"file": Path(source)}
        analysis = client.analyses.create(**source_kwargs, transcript=transcript, options=options, name=name)
        typer.echo(f"analysis {analysis['id']} queued", err=True)
        _follow(client, analysis["id"], progress and sys.stderr.isatty(), timeout)
        result = client.analyses.wait(analysis["id"], timeout=60)
        _render(client, result, output_format, out)


@analyses_app.command("list")
def list_analyses(
    status: str | None = typer.Option(None, help="queued | processing | succeeded | failed | canceled"),
    q: str | None = typer.Option(None, "--q", help="search the names"),
    limit: int = typer.Option(20, min=1, max=100),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    output_format: str = typer.Option("table", "--format", "-f", help="table | json"),
) -> None:
    """Analyses, newest first."""
    with _Errors(), _client(server, api_key) as client:
        page = client.analyses.list(status=status, q=q, limit=limit)
    if output_format == "json":
        _write(json.dumps(page, indent=2), None)
        return
    from rich.table import Table

    table = Table()
    for column in ("id", "name", "status", "duration", "utterances", "dominant", "created"):
        table.add_column(column, no_wrap=column == "id")
    for item in page["items"]:
        summary = item.get("summary") or {}
        table.add_row(
            item["id"],
            item.get("name") or "",
            item["status"] + (f" ({item['error']['code']})" if item.get("error") else ""),
            f"{item['duration_seconds']:.1f} s" if item["duration_seconds"] is not None else "",
            str(item["utterance_count"]),
            str(summary.get("dominant_emotion") or ""),
            item["created_at"][:19].replace("T", " "),
        )
    _stdout_console().print(table)


@analyses_app.command("show")
def show_analysis(
    analysis_id: str = typer.Argument(...),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
    output_format: str = FormatOption,
    out: Path | None = OutOption,
) -> None:
    """One analysis with its per-utterance results."""
    _check_format(output_format)
    with _Errors(), _client(server, api_key) as client:
        _render(client, client.analyses.get(analysis_id), output_format, out)


@analyses_app.command("export")
def export_analysis(
    analysis_id: str = typer.Argument(...),
    output_format: str = typer.Option("csv", "--format", "-f", help="json | csv | srt"),
    out: Path | None = OutOption,
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
) -> None:
    """The results as JSON, CSV or SRT subtitles."""
    if output_format not in EXPORT_FORMATS:
        raise typer.BadParameter("choose json, csv or srt", param_hint="--format")
    with _Errors(), _client(server, api_key) as client:
        _write(client.analyses.export(analysis_id, output_format), out)


@analyses_app.command("cancel")
def cancel_analysis(
    analysis_id: str = typer.Argument(...),
    server: str | None = ServerOption,
    api_key: str | None = ApiKeyOption,
) -> None:
    """Cancel a running analysis (its quota is refunded), or delete a finished one."""
    with _Errors(), _client(server, api_key) as client:
        client.analyses.cancel(analysis_id)
    typer.echo(f"analysis {analysis_id} canceled or deleted", err=True)
