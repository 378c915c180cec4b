"""The error for a pretrained model that `make models` has not installed where it is needed.

Each loader of an installed model (the face detector, the speech detector, the voice encoder)
raises a subclass. Where the spec cannot do without the model (the face and speech detectors),
the worker fails the analysis with one stable code (``models_missing``) instead of an internal
error; the voice encoder's absence only leaves speakers untold."""

from __future__ import annotations


class ModelMissing(FileNotFoundError):
    """``model`` (its name in ``models.toml``) is not installed; the message says where it was
    looked for and how to install it, for the operator's log: it names the worker's folders, so it
    is never shown to a client."""

    def __init__(self, model: str, message: str):
        super().__init__(message)
        self.model = model

    def __reduce__(self):
        # Two arguments: the default would rebuild it from the message alone (pickle, copy).
        return type(self), (self.model, str(self))
