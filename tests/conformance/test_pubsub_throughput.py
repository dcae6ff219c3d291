"""Delivery throughput of Subscribe: one subscriber asking for 100 events at a time.

The emulator runs in its own process, as in bench/, so that client and server do not share a GIL.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import grpc
import pytest
from eventbus.v1 import pubsub_api_pb2 as pb
from eventbus.v1 import pubsub_api_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

EVENTS = 100_000
REQUIRED_PER_SECOND = 20_000

SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from services.salesforce_emulator import schema
    from services.salesforce_emulator.changes import CommittedTransaction, RecordChange
    from services.salesforce_emulator.event_log import EventLog
    from services.salesforce_emulator.pubsub import build_pubsub_server

    ORG = "00D5g000004ABCDEAQ"
    OBJECTS = {o.name: o for o in schema.STANDARD_OBJECTS}

    async def main(port: int, count: int) -> None:
        log = EventLog(lambda org: OBJECTS)
        for n in range(count):
            change = RecordChange(
                "Account", "UPDATE", (f"0015g{n:010d}AAA",),
                {"Name": f"Acme {n}", "BillingCity": "Paris", "LastModifiedDate": "2024-05-01T12:00:00.000+0000"},
                changed_fields=("Name", "BillingCity", "LastModifiedDate"),
            )
            log.publish(CommittedTransaction(ORG, f"tx{n}", 1_700_000_000_000 + n, n, "005", "", (change,)))
        server = build_pubsub_server(
            "127.0.0.1", port, tls=None, log=log, schema_for=lambda org: OBJECTS, authenticate=lambda *a: ORG
        )
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_one_subscriber_receives_at_least_20000_events_per_second() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(EVENTS)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        more: queue.Queue[int | None] = queue.Queue()

        def requests() -> Iterator[pb.FetchRequest]:
            yield pb.FetchRequest(topic_name="/data/AccountChangeEvent", replay_preset=pb.EARLIEST, num_requested=100)
            while (count := more.get()) is not None:
                yield pb.FetchRequest(num_requested=count)

        metadata = (("accesstoken", "t"), ("instanceurl", "https://x"), ("tenantid", "00D5g000004ABCDEAQ"))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.PubSubStub(channel).Subscribe(requests(), metadata=metadata)
            received = 0
            started = time.perf_counter()
            for response in call:
                received += len(response.events)
                if response.events and response.pending_num_requested == 0:
                    if received >= EVENTS:
                        break
                    more.put(100)
            elapsed = time.perf_counter() - started
            more.put(None)
    finally:
        server.terminate()
        server.wait(10)

    rate = received / elapsed
    print(f"Subscribe delivered {received} events in {elapsed:.2f}s: {rate:,.0f} events/s")
    assert received == EVENTS
    assert rate >= REQUIRED_PER_SECOND
