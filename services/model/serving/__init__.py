"""Serving: SageMaker's four inference functions, the HTTP server that wraps them, ``model.tar.gz``
packaging and SageMaker deployment."""
