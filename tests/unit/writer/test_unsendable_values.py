"""A write holding a value no request body can carry (a non-finite number, text that is not
Unicode) is refused before any call, on its own: retrying could never send it, and the rest of its
batch is written."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from services.common.salesforce import SalesforceClient, Session, UnlimitedBudget, env_secrets
from services.common.tenant_config import SalesforceSpec
from services.common.values import Value
from services.writer.batching import Batch, Operation, RecordWrite, Transport
from services.writer.executor import BatchExecutor
from services.writer.payload import INVALID_VALUE, Outcome, unsendable

pytestmark = pytest.mark.unit

INSTANCE = "https://acme.my.salesforce.com"


def write(n: int, **fields: Value) -> RecordWrite:
    return RecordWrite(
        command_id=str(n),
        tenant_id="acme",
        crm_object="Account",
        operation=Operation.UPSERT,
        link_id=f"l{n}",
        fields=fields,
        version=1,
        external_id_field="Duplex_Id__c",
        external_id_value=f"x{n}",
    )


class Org:
    """Upserts every record it is sent."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        records = json.loads(request.content)["records"]
        self.sent.append([record["Duplex_Id__c"] for record in records])
        results = [{"id": f"001{i:015d}", "success": True, "created": True, "errors": []} for i in range(len(records))]
        return httpx.Response(200, json=results)


def executor(org: Org) -> BatchExecutor:
    spec = SalesforceSpec.model_validate(
        {
            "instanceUrl": INSTANCE,
            "apiVersion": "62.0",
            "auth": {"mode": "oauth_pkce", "clientId": "duplex-acme"},
            "dailyApiCap": 1000,
        }
    )
    client = SalesforceClient(
        "acme",
        spec,
        secrets=env_secrets({}),
        budget=UnlimitedBudget(),
        http=httpx.AsyncClient(transport=httpx.MockTransport(org)),
        session=Session("t0", INSTANCE),
    )
    return BatchExecutor(client)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (math.nan, "not a finite number"),
        (-math.inf, "not a finite number"),
        ("a\ud800b", "surrogates not allowed"),
        (("A", "\udfff"), "surrogates not allowed"),
    ],
)
def test_a_value_without_a_json_form_is_unsendable(value: Value, problem: str) -> None:
    error = unsendable(write(1, Name="ok", Score__c=value))

    assert error is not None
    assert (error.status_code, error.fields) == (INVALID_VALUE, ("Score__c",))
    assert problem in error.message
    assert error.message.encode()  # the sync log can store the reason


def test_ordinary_values_are_sendable() -> None:
    assert unsendable(write(1, Name="\U0001f600\x00", Score__c=1e308, Count__c=2**63, Tags__c=("A", "B"))) is None


async def test_an_unsendable_write_is_rejected_and_the_rest_of_its_batch_is_written() -> None:
    org = Org()
    writes = (write(1, Name="a"), write(2, Score__c=math.nan), write(3, Name="\ud800"), write(4, Name="d"))

    results = await executor(org).execute(
        Batch("acme", "Account", Operation.UPSERT, "Duplex_Id__c", Transport.REST, writes)
    )

    outcomes = {r.write.link_id: (r.outcome, r.code) for r in results}
    assert outcomes == {
        "l1": (Outcome.SUCCEEDED, ""),
        "l2": (Outcome.REJECTED, INVALID_VALUE),
        "l3": (Outcome.REJECTED, INVALID_VALUE),
        "l4": (Outcome.SUCCEEDED, ""),
    }
    assert org.sent == [["x1", "x4"]]


@pytest.mark.parametrize("transport", [Transport.REST, Transport.BULK])
async def test_a_batch_of_unsendable_writes_makes_no_call(transport: Transport) -> None:
    org = Org()
    writes = (write(1, Score__c=math.inf), write(2, Score__c=-math.inf))

    results = await executor(org).execute(Batch("acme", "Account", Operation.UPSERT, "Duplex_Id__c", transport, writes))

    assert [(r.outcome, r.code) for r in results] == [(Outcome.REJECTED, INVALID_VALUE)] * 2
    assert org.sent == []
