"""Shared test configuration; fixture modules are registered here."""

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.models"]
