"""Shared pytest setup. Fixture code lives in ``tests/fixtures``; this file only lists it."""

pytest_plugins = ["tests.fixtures.stack", "tests.fixtures.emulator"]
