"""The base of every error that carries a stable code.

Clients, job records and logs switch on ``code`` (stable strings such as ``url_not_allowed``,
``too_large``, ``transcript_invalid``); ``message`` is the text safe to show the client; and
``transient`` says whether trying the same work again later may succeed. HTTP problems
(``shared.problems.Problem``) add their status on top; the worker maps the other coded errors to
a failed or a retried job by ``code`` and ``transient``. This module imports nothing, so every
image (gateway, worker, model) can carry it.
"""

from __future__ import annotations


class CodedError(Exception):
    """An error with a stable ``code``, a ``message`` safe to show, and ``transient``.

    Subclasses may fix ``code`` and ``transient`` as class attributes; an instance's arguments
    override them (``None`` keeps the class's).
    """

    code: str = "internal_error"
    transient: bool = False

    def __init__(self, code: str | None, message: str, *, transient: bool | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if transient is not None:
            self.transient = transient
        self.message = message
