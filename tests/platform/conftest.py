"""The domains' tests run against the gateway app: its fixtures (settings, in-process client,
accounts, API keys, a live server)."""

from tests.gateway.conftest import *  # noqa: F403
