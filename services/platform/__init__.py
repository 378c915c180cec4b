"""The SaaS domains, one package each: endpoints, service, repository, schemas and worker jobs.

A domain's ``__init__`` imports nothing, so the worker image (no web packages) imports jobs
without the endpoints; the gateway (``services.gateway.main``) mounts the endpoints and the
worker (``services.preprocess.worker``) registers the jobs.
"""
