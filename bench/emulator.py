"""The Salesforce emulator's own throughput: it must never be Duplex's bottleneck.

- records/s written through sObject Collections (200 per call, HTTPS, keep-alive), one client
  and two concurrent clients;
- CDC events/s delivered to one Pub/Sub subscriber asking for 100 at a time (TLS gRPC), from the
  oldest retained event to the newest; then again with the subscriber decoding every payload with
  fastavro (its decoding shares the machine's two cores with the emulator).
"""

from __future__ import annotations

import asyncio
import io
import json
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import fastavro
import grpc
import httpx
from eventbus.v1 import pubsub_api_pb2 as pb
from eventbus.v1 import pubsub_api_pb2_grpc as pb_grpc

from bench.report import Figure, Result, rss_mib
from devstack.emulator import API_VERSION, EmulatorProcess, start_emulator

RECORDS = 40_000
BATCH = 200


def _records(tag: str, start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"attributes": {"type": "Account"}, "Name": f"{tag} {i}", "BillingCity": "Lyon"}
        for i in range(start, start + count)
    ]


async def _write(emulator: EmulatorProcess, token: str, tag: str, count: int, clients: int) -> float:
    context = ssl.create_default_context(cafile=emulator.ca_cert)
    headers = {"Authorization": f"Bearer {token}", "Sforce-Call-Options": "client=bench"}
    url = f"/services/data/v{API_VERSION}/composite/sobjects"
    per_client = count // clients

    async def one(offset: int) -> None:
        async with httpx.AsyncClient(base_url=emulator.instance_url, verify=context, headers=headers, timeout=60) as c:
            for start in range(offset, offset + per_client, BATCH):
                response = await c.post(url, json={"allOrNone": True, "records": _records(tag, start, BATCH)})
                response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(one(i * per_client) for i in range(clients)))
    return per_client * clients / (time.perf_counter() - started)


async def _subscribe_all(
    emulator: EmulatorProcess, token: str, expected: int, ca: bytes, *, decode: bool
) -> tuple[float, int]:
    credentials = grpc.ssl_channel_credentials(ca)
    metadata = (("accesstoken", token), ("instanceurl", emulator.instance_url), ("tenantid", emulator.info["org_id"]))
    async with grpc.aio.secure_channel(emulator.grpc_target, credentials) as channel:
        stub = pb_grpc.PubSubStub(channel)
        topic = "/data/AccountChangeEvent"
        queue: asyncio.Queue[pb.FetchRequest] = asyncio.Queue()
        await queue.put(pb.FetchRequest(topic_name=topic, replay_preset=pb.EARLIEST, num_requested=100))

        async def requests() -> Any:
            while True:
                yield await queue.get()

        received = 0
        schemas: dict[str, Any] = {}
        started = time.perf_counter()
        call = stub.Subscribe(requests(), metadata=metadata)
        async for response in call:
            for consumed in response.events if decode else ():
                schema_id = consumed.event.schema_id
                if schema_id not in schemas:
                    info = await stub.GetSchema(pb.SchemaRequest(schema_id=schema_id), metadata=metadata)
                    schemas[schema_id] = fastavro.parse_schema(json.loads(info.schema_json))
                event: Any = fastavro.schemaless_reader(io.BytesIO(consumed.event.payload), schemas[schema_id], None)
                assert event["ChangeEventHeader"]["entityName"] == "Account"
            received += len(response.events)
            if response.events and response.pending_num_requested == 0:
                if received >= expected:
                    break
                await queue.put(pb.FetchRequest(topic_name=topic, num_requested=100))
        elapsed = time.perf_counter() - started
        call.cancel()
    return received / elapsed, received


async def _run() -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        emulator = start_emulator(Path(tmp))
        try:
            token = emulator.password_token()["access_token"]
            one = await _write(emulator, token, "one", RECORDS, clients=1)
            two = await _write(emulator, token, "two", RECORDS, clients=2)
            ca = await asyncio.to_thread(Path(emulator.ca_cert).read_bytes)
            raw, events = await _subscribe_all(emulator, token, 2 * RECORDS, ca, decode=False)
            decoded, _ = await _subscribe_all(emulator, token, 2 * RECORDS, ca, decode=True)
            memory = rss_mib(emulator.process.pid)
        finally:
            emulator.stop()
    return Result(
        "salesforce-emulator",
        {"records": RECORDS, "batch": BATCH, "transport": "HTTPS keep-alive + TLS gRPC", "events": events},
        [
            Figure("collections write, 1 client (records/s)", one, "records/s", target=5_000),
            Figure("collections write, 2 clients (records/s)", two, "records/s", target=5_000),
            Figure("CDC delivered to one subscriber (events/s)", raw, "events/s", target=20_000),
            # The same, with the subscriber (same machine, same 2 cores) decoding every payload.
            Figure("CDC delivered + decoded with fastavro (events/s)", decoded, "events/s"),
            Figure("emulator peak memory", memory, "MiB"),
        ],
    )


def run() -> Result:
    return asyncio.run(_run())
