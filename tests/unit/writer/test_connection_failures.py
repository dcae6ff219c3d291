"""A tenant whose Salesforce connection is unusable holds its writes, and is tried again soon when
only a connect can help (noticing one costs no call to Salesforce)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.connections import VAULT_NOT_CONFIGURED, ConnectionUnavailableError
from services.writer.executor import CONNECTION_RECHECK, call_failure

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("reason", ["not_connected", "needs_reconnect", "revoked"])
def test_a_tenant_waiting_for_a_connect_is_rechecked_soon_and_its_writes_are_kept(reason: str) -> None:
    before = datetime.now(UTC)

    failure = call_failure(ConnectionUnavailableError("acme", reason, "connect it"))

    assert not failure.permanent
    assert failure.error.status_code == "CONNECTION_UNAVAILABLE"
    assert failure.error.message == "tenant acme: connect it"
    assert failure.retry_at is not None
    assert before + CONNECTION_RECHECK <= failure.retry_at <= datetime.now(UTC) + CONNECTION_RECHECK
    assert timedelta(seconds=10) >= CONNECTION_RECHECK


@pytest.mark.parametrize("reason", ["error", VAULT_NOT_CONFIGURED])
def test_other_connection_failures_back_off_as_any_tenant_failure(reason: str) -> None:
    failure = call_failure(ConnectionUnavailableError("acme", reason, "invalid_client"))

    assert not failure.permanent
    assert failure.error.status_code == "CONNECTION_UNAVAILABLE"
    assert failure.retry_at is None
