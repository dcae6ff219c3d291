"""Producer-field checks (services.mapping.intake) and the per-pair quarantine, through the mapper
over in-memory storage."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from duplex.change.v1 import record_changed_pb2
from prometheus_client import CollectorRegistry

from services.common.change import Change, ChangeKind, Side
from services.common.codec import record_key
from services.common.contract import to_proto
from services.common.metrics import Metrics
from services.common.tenant_config import StoredConfig, parse_tenant_config
from services.common.values import Value
from services.mapping.contract import changes_of
from services.mapping.events import Unreadable
from services.mapping.intake import clamp_commit_time, refusal
from services.mapping.links import link_id_for
from services.mapping.mapper import Mapper
from services.mapping.quarantine import QuarantineLimit, Quarantines
from tests.unit.mapping.fakes import FakeDatabase, Outbox
from tests.unit.mapping.test_mapper import DOCUMENT, T0, TENANT, change, link

pytestmark = pytest.mark.unit

OTHER = "beta"
CLIENT = "duplex-acme"  # DOCUMENT's callOptionsClient
NOW = T0 + timedelta(hours=1)


def stored_for(tenant: str, version: int = 1) -> StoredConfig:
    document: dict[str, Any] = copy.deepcopy(DOCUMENT)
    document["metadata"]["name"] = tenant
    return StoredConfig(tenant, version, f"sha-{version}", T0, "test", parse_tenant_config(document))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self) -> None:
        self.db = FakeDatabase()
        self.db.configs[TENANT] = stored_for(TENANT)
        self.db.configs[OTHER] = stored_for(OTHER)
        self.outbox = Outbox()
        self.metrics = Metrics(CollectorRegistry())
        self.clock = Clock()
        self.mapper = Mapper(
            self.db,
            links=self.db.open_links,
            configs=self.db,
            describes=self.db,
            sync_log=self.db,
            publish=self.outbox,
            quarantines=Quarantines(QuarantineLimit(window=10, min_samples=4, cool_off_seconds=60), clock=self.clock),
            max_future_skew=timedelta(minutes=5),
            now=lambda: NOW,
            metrics=self.metrics,
        )

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"service": "mapping", **labels})
        return 0.0 if value is None else value

    def logged(self, event: str) -> list[str]:
        return [e.message or "" for e in self.db.log if e.event == event]


@pytest.fixture
def h() -> Harness:
    return Harness()


def partner(tenant: str, n: int, name: str = "Acme", **options: Any) -> Change:
    fields: dict[str, Value] = {"name": name, "status": "active"}
    return change(Side.APP, "partners", f"a{n}", fields, event_id=f"{tenant}-{n}", tenant=tenant, **options)


# ----------------------------------------------------------------------------- tenant and side


def test_the_payload_tenant_must_be_the_key_tenant_and_the_side_the_topic_side() -> None:
    mine = partner(TENANT, 1)
    assert refusal(mine, record_key(TENANT, "partners", "a1"), Side.APP) is None
    assert refusal(mine, record_key(OTHER, "partners", "a1"), Side.APP) == (
        "payload tenant 'acme' does not match key tenant 'beta'"
    )
    assert refusal(mine, None, Side.APP) == "payload tenant 'acme' does not match key tenant None"
    assert refusal(mine, record_key(TENANT, "partners", "a1"), Side.CRM) == "a app change on the topic of crm changes"


def test_changes_of_turns_a_producer_mismatch_into_an_unreadable_change() -> None:
    events: list[record_changed_pb2.RecordChanged] = [to_proto(partner(TENANT, n)) for n in (1, 2)]
    keys = [record_key(TENANT, "partners", "a1"), record_key(OTHER, "partners", "a2")]
    good, bad = changes_of(events, keys, Side.APP)
    assert isinstance(good, Change)
    assert bad == Unreadable("acme-2", TENANT, "a2", "payload tenant 'acme' does not match key tenant 'beta'")
    # Without keys (tests and tools feeding the mapper directly) nothing is checked.
    assert all(isinstance(c, Change) for c in changes_of(events))


async def test_a_mismatched_change_is_refused_and_logged(h: Harness) -> None:
    (bad,) = changes_of([to_proto(partner(TENANT, 1))], [record_key(OTHER, "partners", "a1")], Side.APP)
    refused = await h.mapper.handle_batch([bad])
    assert refused[0].reason == "INVALID_CHANGE: payload tenant 'acme' does not match key tenant 'beta'"
    assert not refused[0].contained  # not attributable to a pair: the service-wide breaker counts it
    assert h.outbox.sent == []


# ----------------------------------------------------------------------------- commit time


def test_only_a_commit_time_beyond_the_skew_is_clamped() -> None:
    skew = timedelta(minutes=5)
    near = partner(TENANT, 1, at=3600 + 300)  # T0 + 1 h is NOW: exactly the skew ahead
    assert clamp_commit_time(near, NOW, skew) == (near, None)
    far = partner(TENANT, 1, at=3600 + 301)
    clamped, correction = clamp_commit_time(far, NOW, skew)
    assert clamped == replace(far, at=NOW)
    assert correction is not None
    assert correction.field == "origin_commit_time"


async def test_a_future_commit_time_is_clamped_counted_and_logged(h: Harness) -> None:
    future = partner(TENANT, 1, at=10 * 365 * 86400, kind=ChangeKind.CREATE)
    assert await h.mapper.handle_batch([future]) == {}
    (event,) = h.outbox.sent
    assert event.at == NOW
    (message,) = h.logged("change.corrected")
    assert "is in the future; clamped to" in message
    assert h.sample("duplex_producer_fields_corrected_total", tenant=TENANT, field="origin_commit_time") == 1


# ----------------------------------------------------------------------------- echo tags


async def test_an_echo_tag_on_an_app_record_duplex_never_wrote_is_removed(h: Harness) -> None:
    forged = replace(partner(TENANT, 1, kind=ChangeKind.CREATE), origin_client=CLIENT)
    assert await h.mapper.handle_batch([forged]) == {}
    (event,) = h.outbox.sent
    assert event.origin_client == ""
    (message,) = h.logged("change.corrected")
    assert "origin_client 'duplex-acme' removed" in message
    assert h.sample("duplex_producer_fields_corrected_total", tenant=TENANT, field="origin_client") == 1


async def test_a_correction_is_counted_once_when_its_attempt_is_rolled_back_and_mapped_again(h: Harness) -> None:
    forged = replace(partner(TENANT, 1, kind=ChangeKind.CREATE), origin_client=CLIENT)
    # The second change is refused after the first was mapped: the attempt rolls back and the
    # first is mapped again on its own.
    assert list(await h.mapper.handle_batch([forged, partner(TENANT, 2, "x" * 41)])) == [1]
    assert [e.origin_client for e in h.outbox.sent] == [""]
    assert len(h.logged("change.corrected")) == 1
    assert h.sample("duplex_producer_fields_corrected_total", tenant=TENANT, field="origin_client") == 1


async def test_an_echo_tag_is_kept_where_duplex_did_write(h: Harness) -> None:
    h.db.add_link(link("L1", "a1", "001A"))
    echo_of_update = replace(partner(TENANT, 1), origin_client=CLIENT)
    # An app-update CREATE asks the app to create the record with the link id as its external id.
    created = link_id_for(TENANT, "partners", Side.CRM, "001B")
    h.db.add_link(link(created, None, "001B"))
    echo_of_create = replace(partner(TENANT, 2, kind=ChangeKind.CREATE), origin_client=CLIENT, external_id=created)
    other_tag = replace(partner(TENANT, 3, kind=ChangeKind.CREATE), origin_client="billing-service")
    assert await h.mapper.handle_batch([echo_of_update, echo_of_create, other_tag]) == {}
    assert [e.origin_client for e in h.outbox.sent] == [CLIENT, CLIENT, "billing-service"]
    assert h.logged("change.corrected") == []


# ----------------------------------------------------------------------------- quarantine


async def test_a_poisoned_pair_is_quarantined_while_another_tenant_keeps_being_mapped(h: Harness) -> None:
    too_long = "x" * 41  # the name's maxLength is 40
    batch = [c for n in range(6) for c in (partner(TENANT, n, too_long), partner(OTHER, n))]
    refused = await h.mapper.handle_batch(batch)
    # acme's first three rejections count service-wide; the fourth begins the quarantine.
    assert sorted(refused) == [0, 2, 4, 6, 8, 10]
    assert [refused[i].contained for i in sorted(refused)] == [False, False, False, True, True, True]
    assert refused[0].reason.startswith("STRING_TOO_LONG: ")
    assert refused[6].reason.startswith("QUARANTINED: pair 'partners' of tenant 'acme' is quarantined: 4 of its last 4")
    assert refused[6].reason.endswith("(this change: STRING_TOO_LONG: Name: 41 characters, at most 40 allowed)")
    assert [e.link.tenant_id for e in h.outbox.sent] == [OTHER] * 6
    (began,) = [e for e in h.db.log if e.event == "pair.quarantined"]
    assert (began.tenant_id, began.code, began.detail["pair"]) == (TENANT, "QUARANTINED", "partners")
    assert h.sample("duplex_quarantined_pairs", tenant=TENANT, pair="partners") == 1

    # Later changes of the pair, good or bad, are dead-lettered unmapped: no sync-log row each.
    later = [partner(TENANT, 10), partner(OTHER, 10), partner(TENANT, 11, too_long)]
    rows = len(h.db.log)
    refused = await h.mapper.handle_batch(later)
    assert sorted(refused) == [0, 2]
    assert all(
        r.contained and r.reason.startswith("QUARANTINED: pair 'partners' of tenant 'acme'") for r in refused.values()
    )
    assert len(h.db.log) == rows
    assert h.sample("duplex_quarantined_events_total", tenant=TENANT, pair="partners") == 2
    # acme's other pair is not quarantined.
    contact = change(Side.APP, "contacts", "c1", {"last_name": "Doe"}, event_id="c1", tenant=TENANT)
    assert await h.mapper.handle_batch([contact]) == {}

    # A new configuration version lifts it.
    h.db.configs[TENANT] = stored_for(TENANT, version=2)
    assert await h.mapper.handle_batch([partner(TENANT, 12)]) == {}
    assert h.sample("duplex_quarantined_pairs", tenant=TENANT, pair="partners") == 0
    (released,) = [e for e in h.db.log if e.event == "pair.released"]
    assert (released.tenant_id, released.detail["pair"]) == (TENANT, "partners")


async def test_an_unknown_object_stream_is_quarantined_under_its_side_and_object(h: Harness) -> None:
    good = [partner(OTHER, n) for n in range(4)]
    unknown = [change(Side.APP, "invoices", f"i{n}", {"n": n}, event_id=f"i{n}", tenant=TENANT) for n in range(6)]
    refused = await h.mapper.handle_batch([*good, *unknown])
    assert [refused[i].contained for i in sorted(refused)] == [False, False, False, True, True, True]
    assert h.sample("duplex_quarantined_pairs", tenant=TENANT, pair="app:invoices") == 1
    # The cool-off ends it.
    h.clock.now += 60
    assert await h.mapper.handle_batch([partner(OTHER, 9)]) == {}
    assert h.sample("duplex_quarantined_pairs", tenant=TENANT, pair="app:invoices") == 0


async def test_when_every_pair_is_bad_nothing_is_contained(h: Harness) -> None:
    too_long = "x" * 41
    batch = [c for n in range(10) for c in (partner(TENANT, n, too_long), partner(OTHER, n, too_long))]
    refused = await h.mapper.handle_batch(batch)
    assert len(refused) == 20
    # acme (first to be bad enough) is contained from its 4th rejection; beta, which would make both
    # pairs quarantined, is not: its 10 and acme's first 3 count service-wide.
    assert sum(1 for r in refused.values() if not r.contained) == 13
    assert {r.reason.split(":")[0] for r in refused.values() if not r.contained} == {"STRING_TOO_LONG"}
