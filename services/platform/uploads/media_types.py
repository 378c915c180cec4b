"""The media types an upload may declare, and the extensions that tell a type when the browser
sends none (used by the upload service and stated in the OpenAPI document)."""

from __future__ import annotations

import re

# What browsers put in File.type for these containers (Chrome, Firefox, Safari, on each OS).
EXTENSION_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".m4v": "video/x-m4v",
    ".mov": "video/quicktime",
    ".qt": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
}
ALLOWED_CONTENT_TYPES = frozenset(
    {
        "video/mp4",
        "video/x-m4v",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/matroska",
        "video/x-msvideo",
        "video/avi",
        "video/msvideo",
        "audio/mpeg",
        "audio/mp3",
        "audio/mp4",
        "audio/x-m4a",
        "audio/m4a",
        "audio/aac",
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "audio/webm",
        "audio/ogg",
        "audio/opus",
        "audio/flac",
        "audio/x-flac",
    }
)
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def _any_case(text: str) -> str:
    """`text` as a regular expression that ignores ASCII case (JSON Schema patterns have no flags)."""
    return "".join(
        f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else ("\\" + c if c in ".+" else c)
        for c in text
    )


def _alternatives(values: list[str]) -> str:
    return "(" + "|".join(_any_case(value) for value in sorted(values, key=len, reverse=True)) + ")"


# A declared type: optional spaces/tabs, the type in any ASCII case, optional parameters of printable
# ASCII (`video/mp4; codecs=avc1`). The same expressions judge requests and appear in the OpenAPI
# document, so the document accepts exactly what the service does.
_PARAMETERS = r"[ \t]*(;[ -~]*)?"
MEDIA_TYPE_PATTERN = r"^[ \t]*" + _alternatives(sorted(ALLOWED_CONTENT_TYPES)) + _PARAMETERS + "$"
GENERIC_TYPE_PATTERN = r"^[ \t]*" + _alternatives(sorted(GENERIC_TYPES - {""})) + "?" + _PARAMETERS + "$"
# A filename whose last extension (after at least one other character of the name) is a media one.
MEDIA_FILENAME_PATTERN = r"[^/]\." + _alternatives([ext.lstrip(".") for ext in EXTENSION_TYPES]) + "$"

_DECLARED_TYPE = re.compile(r"[ \t]*(?P<type>[A-Za-z0-9.+/-]*)" + _PARAMETERS)
_EXTENSION = re.compile(r"[^/]\.(?P<extension>[A-Za-z0-9]+)\Z")


def declared_type(content_type: str) -> str | None:
    """The media type of a Content-Type value, lower-cased; None when it is not one."""
    match = _DECLARED_TYPE.fullmatch(content_type)
    return match["type"].lower() if match else None


def extension_type(filename: str) -> str | None:
    """The media type the filename's extension tells, if it is a media extension."""
    match = _EXTENSION.search(filename)
    if match is None or match.end() != len(filename):
        return None
    return EXTENSION_TYPES.get("." + match["extension"].lower())
