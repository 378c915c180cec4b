"""The ML contract: what the worker and the model service must agree on, and nothing else.

The feature specification (``features/spec.py``, the one source of input shapes) and the feature
pipeline that follows it (``features/``), the tensor bundle sent for scoring (``bundle.py``), the
label sets (``labels.py``), the prediction shapes returned (``predictions.py``) and the client that
calls the model service (``model_client.py``). Besides itself it imports only ``shared``'s
settings, logging and coded errors, never the platform beside it (``shared.db``, ``shared.net``,
``shared.storage``, ``services.platform``), so the model image and ``model.tar.gz`` carry it
without the platform.
"""
