"""Write .env.example from shared/settings.py: every setting, its environment name and default.

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
SECTION = re.compile(r"^\s*# --- (?P<title>.+?) -+\s*$")
FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")

# Variables docker-compose.yml interpolates that are not Moodreel settings.
COMPOSE_ONLY = {
    "POSTGRES_PASSWORD": "moodreel",
    "MINIO_ROOT_USER": "moodreel",
    "MINIO_ROOT_PASSWORD": "moodreel-minio-secret",
    "MOODREEL_IMAGE_TAG": "local",
    "FORWARDED_ALLOW_IPS": "127.0.0.1",
}
# Settings whose compose value must be set in .env (uncommented in the example).
REQUIRED_IN_COMPOSE = {"MOODREEL_SECRET_KEY": "change-me-to-a-long-random-string"}


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


def sections() -> list[tuple[str, list[str]]]:
    """Field names grouped under the section comments of settings.py, in source order."""
    source = Path(sys.modules[Settings.__module__].__file__).read_text().splitlines()
    grouped: list[tuple[str, list[str]]] = []
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
        elif (match := FIELD.match(line)) and match["name"] in Settings.model_fields:
            if not grouped:
                grouped.append(("general", []))
            grouped[-1][1].append(match["name"])
    return grouped


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


def main() -> None:
    check = "--check" in sys.argv
    text = render()
    if check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            sys.exit(".env.example is out of date: run `make env-example`")
        return
    OUTPUT.write_text(text)


if __name__ == "__main__":
    main()
