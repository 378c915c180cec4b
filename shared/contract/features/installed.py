"""The error for a pretrained model that `make models` has not installed where the spec needs it.

Every loader of an installed model (the face detector, the speech detector, the voice encoder)
raises a subclass, so the worker fails such an analysis with one stable code (``models_missing``)
and the fix in its message, instead of an internal error."""

from __future__ import annotations


class ModelMissing(FileNotFoundError):
    """A model the checkpoint's spec needs is not installed (run `make models`)."""
