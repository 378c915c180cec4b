"""Write .env.example and docs/configuration.md from shared/settings.py: every setting, its
environment name, default and (from the comment above it) meaning.

Run `make env-example` after adding a setting; tests/stack checks the file is current.
Defaults under the repository are written relative to it, so no machine's path is committed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from shared.settings import REPO_ROOT, Settings

OUTPUT = REPO_ROOT / ".env.example"
MARKDOWN_OUTPUT = REPO_ROOT / "docs" / "configuration.md"
SECTION = re.compile(r"^\s*# --- (?P<title>.+?) -+\s*$")
FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")

# Variables docker-compose.yml interpolates that are not Moodreel settings.
COMPOSE_ONLY = {
    "POSTGRES_PASSWORD": "moodreel",
    "MINIO_ROOT_USER": "moodreel",
    "MINIO_ROOT_PASSWORD": "moodreel-minio-secret",
    "MOODREEL_IMAGE_TAG": "local",
}
# Settings whose compose value must be set in .env (uncommented in the example).
# Too short on purpose: a production gateway refuses it until it is replaced (>= 32 characters).
REQUIRED_IN_COMPOSE = {"MOODREEL_SECRET_KEY": "change-me"}


def env_name(name: str, field: FieldInfo) -> str:
    """The name the environment sets: the first alias when the field has one."""
    alias = field.validation_alias
    if alias is not None and hasattr(alias, "choices"):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    return f"{Settings.model_config['env_prefix']}{name.upper()}"


def render_default(value: object) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict | list):
        value = json.loads(json.dumps(value, default=lambda v: v.model_dump(mode="json")))
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value)
    # Paths and URLs under the repository: relative, so the file is the same on every machine.
    text = text.replace(str(REPO_ROOT.parent) + "/shared", "../shared").replace(str(REPO_ROOT) + "/", "")
    return text


def parse_settings_source() -> tuple[list[tuple[str, list[str]]], dict[str, str]]:
    """Field names grouped under the section comments of settings.py, in source order, and each
    field's comment (the comment lines right above it)."""
    source = Path(sys.modules[Settings.__module__].__file__).read_text().splitlines()
    grouped: list[tuple[str, list[str]]] = []
    comments: dict[str, str] = {}
    pending: list[str] = []
    in_class = False
    for line in source:
        if line.startswith("class Settings("):
            in_class = True
            continue
        if in_class and line and not line.startswith((" ", "#")):
            break
        if not in_class:
            continue
        if match := SECTION.match(line):
            grouped.append((match["title"], []))
            pending = []
        elif line.strip().startswith("#"):
            pending.append(line.strip().lstrip("#").strip())
        elif (match := FIELD.match(line)) and match["name"] in Settings.model_fields:
            if not grouped:
                grouped.append(("general", []))
            grouped[-1][1].append(match["name"])
            comments[match["name"]] = " ".join(pending)
            pending = []
        elif not line.strip():
            pending = []
    return grouped, comments


def sections() -> list[tuple[str, list[str]]]:
    return parse_settings_source()[0]


def render() -> str:
    lines = [
        "# Moodreel configuration: copy to .env and uncomment what you change.",
        "# Generated from shared/settings.py by `make env-example`; every setting is listed with its",
        "# default. Relative paths are relative to the repository root.",
        "",
    ]
    for title, names in sections():
        lines.append(f"# --- {title} ---")
        for name in names:
            field = Settings.model_fields[name]
            key = env_name(name, field)
            default = field.get_default(call_default_factory=True)
            if key in REQUIRED_IN_COMPOSE:
                lines.append(f"{key}={REQUIRED_IN_COMPOSE[key]}")
            else:
                lines.append(f"# {key}={render_default(default)}")
        lines.append("")
    lines.append("# --- docker compose only (not read by the services) ---")
    lines.extend(f"# {key}={value}" for key, value in COMPOSE_ONLY.items())
    return "\n".join(lines) + "\n"


def type_name(name: str) -> str:
    annotation = Settings.model_fields[name].annotation
    text = getattr(annotation, "__name__", None) if getattr(annotation, "__args__", None) is None else None
    return text or str(annotation).replace("typing.", "").replace("pathlib.", "").replace(
        "shared.settings.", ""
    )


def render_markdown() -> str:
    """docs/configuration.md: every setting with its environment name, type, default and meaning."""
    grouped, comments = parse_settings_source()
    lines = [
        "# Configuration reference",
        "",
        "Every setting of `shared/settings.py`, read from the environment or a `.env` file (copy",
        "[`.env.example`](../.env.example)). Generated by `make env-example`; `tests/stack` fails when",
        "this file or `.env.example` is stale. Relative paths are relative to the repository root.",
        "",
    ]
    for title, names in grouped:
        lines += [f"## {title}", "", "| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name in names:
            field = Settings.model_fields[name]
            default = render_default(field.get_default(call_default_factory=True))
            if isinstance(field.get_default(call_default_factory=True), SecretStr):
                default = "(development value; required in production)"
            meaning = comments.get(name) or field.description or ""
            cells = [f"`{env_name(name, field)}`", f"`{type_name(name)}`", f"`{default}`" if default else "",
                     meaning]  # fmt: skip
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


README = REPO_ROOT / "README.md"
README_BLOCK = re.compile(r"(<!-- settings:begin -->\n).*?(<!-- settings:end -->)", re.S)


def render_readme() -> str:
    """README.md with the settings tables of docs/configuration.md between its markers."""
    tables = render_markdown().split("\n## ", 1)[1]
    block = "### " + tables.replace("\n## ", "\n### ")
    return README_BLOCK.sub(lambda m: m[1] + block + m[2], README.read_text(), count=1)


OUTPUTS = {OUTPUT: render, MARKDOWN_OUTPUT: render_markdown, README: render_readme}


def main() -> None:
    check = "--check" in sys.argv
    for path, renderer in OUTPUTS.items():
        text = renderer()
        if check:
            if not path.exists() or path.read_text() != text:
                sys.exit(f"{path.relative_to(REPO_ROOT)} is out of date: run `make env-example`")
        else:
            path.write_text(text)


if __name__ == "__main__":
    main()
