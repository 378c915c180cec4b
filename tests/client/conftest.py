"""The SDK is tested against the real stack of tests/worker: gateway, arq worker and model server
as subprocesses on loopback, PostgreSQL and Redis."""

from tests.worker.conftest import *  # noqa: F403 - the stack's session fixtures
