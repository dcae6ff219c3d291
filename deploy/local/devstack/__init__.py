"""Duplex's local stack: a real Kafka broker (KRaft) and PostgreSQL on 127.0.0.1, no containers.

Used by ``make stack-up`` (through :mod:`devstack.cli`) and by the pytest fixtures. Nothing here
is imported by the services themselves.
"""
