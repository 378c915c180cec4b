"""A Server-Sent Events parser (the WHATWG event-stream format), fed line by line."""

from __future__ import annotations

import json

from moodreel.types import Event


class EventParser:
    """Feed it the stream's lines; it returns an :class:`Event` when a blank line ends one.
    ``last_event_id`` and ``retry_seconds`` follow the stream as the format defines."""

    def __init__(self, last_event_id: str | None = None):
        self.last_event_id = last_event_id
        self.retry_seconds: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if line == "":
            if not self._data:
                self._reset()
                return None
            raw = "\n".join(self._data)
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"raw": raw}
            event = Event(
                self._type or "message", data if isinstance(data, dict) else {"value": data}, self._id
            )
            if self._id is not None:
                self.last_event_id = self._id
            self._reset()
            return event
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_seconds = int(value) / 1000
        return None
