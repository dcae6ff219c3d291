"""The cdc-ingest integration tests' one set-up: the stack's parts and a migrated database."""

from __future__ import annotations

import pytest

from devstack.emulator import EmulatorProcess
from services.common.topics import TopicNames
from tests.integration.cdc_ingest.harness import Harness, prepare_database


@pytest.fixture
async def cdc(emulator: EmulatorProcess, kafka_bootstrap: str, topic_names: TopicNames, fresh_database: str) -> Harness:
    await prepare_database(fresh_database)
    return Harness(emulator, kafka_bootstrap, topic_names, fresh_database)
