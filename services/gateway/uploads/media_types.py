"""The media types an upload may declare, and the extensions that tell a type when the browser
sends none (used by the upload service and stated in the OpenAPI document)."""

from __future__ import annotations

# What browsers put in File.type for these containers (Chrome, Firefox, Safari, on each OS).
EXTENSION_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".m4v": "video/x-m4v",
    ".mov": "video/quicktime",
    ".qt": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
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
