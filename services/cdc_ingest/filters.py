"""Pair filters (``filter.soql``) where cdc-ingest reads: pushed into backfill queries, and the
record's current state added to stream updates so that mapping decides on the whole record.

- **Push-down**: a backfill of an object every pair of which filters with SOQL reads only what
  one of the clauses selects (``WHERE (a) OR (b)``), by REST and by Bulk, and counts only that.
  Polls and gap repairs read without the clause: they read what changed, and a record that changed
  so as to leave the filter must be seen to be left.
- **Whole state for updates**: a CDC update carries only the fields that changed, so a clause on
  other fields cannot be decided from it (``services/mapping/translate.py`` refuses to guess). For
  each streamed batch, the records updated of a filtered object are read again (one query per
  object and 200 records: the clause's and the conditions' fields and the pairs' mapped fields),
  and every value the event lacks is added, not marked changed. A record gone meanwhile gets
  nothing added, nor do the batch's updates when the read fails (after describing the object again,
  in case a field was deleted), or the tenant has no API budget for it (said once until a read
  succeeds again): mapping then decides on what it knows of the record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.cdc_ingest.contract import RecordChanged, is_update
from services.cdc_ingest.cursor import IDS_PER_QUERY, by_ids_query
from services.cdc_ingest.reading import RecordReader
from services.cdc_ingest.rejection import UndecodableError
from services.cdc_ingest.rest import BudgetEpisode, SalesforceRest
from services.common.change import ChangeKind
from services.common.governor_client import BudgetUnavailable
from services.common.pair_filters import pair_clause
from services.common.salesforce import SalesforceApiError
from services.common.soql_filter import fields_of, parse_where
from services.common.tenant_config import TenantConfig

log = logging.getLogger(__name__)

# What row_change needs of every row besides the values.
_ALWAYS = ("Id", "SystemModstamp", "IsDeleted")


def pushdown(config: TenantConfig) -> dict[str, str]:
    """The clause each object's backfill can carry: only where every pair on the object has one."""
    clauses: dict[str, list[str | None]] = {}
    for pair in config.spec.objects:
        clauses.setdefault(pair.salesforce.object, []).append(pair_clause(pair))
    return {
        entity: " OR ".join(f"({c})" for c in dict.fromkeys(c for c in found if c is not None))
        for entity, found in clauses.items()
        if None not in found
    }


def wanted_fields(config: TenantConfig) -> dict[str, frozenset[str]]:
    """For each object some pair filters on the Salesforce side: the fields its updates are completed with."""
    wanted: dict[str, set[str]] = {}
    for pair in config.spec.objects:
        clause = pair_clause(pair)
        conditions = pair.filter.salesforce if pair.filter is not None else ()
        if clause is None and not conditions:
            continue
        fields = wanted.setdefault(pair.salesforce.object, set())
        if clause is not None:
            fields |= fields_of(parse_where(clause))
        fields |= {condition.field for condition in conditions}
        fields |= {rule.salesforce for rule in pair.fields}
    return {entity: frozenset(fields) for entity, fields in wanted.items()}


class UpdateCompleter:
    """Adds the current values of the fields filters and mappings need to streamed updates."""

    def __init__(self, config: TenantConfig, rest: SalesforceRest, reader: RecordReader) -> None:
        self._wanted = wanted_fields(config)
        self._rest = rest
        self._reader = reader
        self._budget = BudgetEpisode(config.tenant_id, "streamed updates of filtered objects left as they came")

    @property
    def needed(self) -> bool:
        return bool(self._wanted)

    async def complete(self, changes: Sequence[RecordChanged]) -> None:
        updated: dict[str, list[RecordChanged]] = {}
        for change in changes:
            if change.object_type in self._wanted and is_update(change):
                updated.setdefault(change.object_type, []).append(change)
        for entity, found in updated.items():
            await self._complete(entity, found)

    async def _complete(self, entity: str, changes: list[RecordChanged]) -> None:
        try:
            try:
                current = await self._read(entity, changes, refresh=False)
            except SalesforceApiError as error:
                # A field deleted since describe was cached (INVALID_FIELD): describe again, once.
                log.warning("completing updates failed; describing again", extra={"entity": entity, "err": str(error)})
                try:
                    current = await self._read(entity, changes, refresh=True)
                except SalesforceApiError as again:
                    # Never a reason to stop the stream: mapping decides on what the events carry.
                    log.warning("updates left as they came", extra={"entity": entity, "err": str(again)})
                    return
        except BudgetUnavailable as refusal:
            # Nor is a refusal for budget; waiting for it would hold up every event after these.
            self._budget.note(refusal, entity=entity)
            return
        self._budget.granted()
        for change in changes:
            whole = current.get(change.record_id)
            if whole is None:
                continue
            for name, value in whole.fields.items():
                if name not in change.fields:
                    change.fields[name].CopyFrom(value)

    async def _read(self, entity: str, changes: list[RecordChanged], *, refresh: bool) -> dict[str, RecordChanged]:
        types = await self._rest.fields(entity, refresh=refresh)
        lowered = {name.lower(): name for name in types}
        wanted = [lowered[f.lower()] for f in sorted(self._wanted[entity]) if f.lower() in lowered]
        fields = list(dict.fromkeys([*_ALWAYS, *wanted]))
        ids = list(dict.fromkeys(c.record_id for c in changes))
        current: dict[str, RecordChanged] = {}
        for start in range(0, len(ids), IDS_PER_QUERY):
            query = by_ids_query(entity, fields, ids[start : start + IDS_PER_QUERY])
            async for row in self._rest.query(query):
                try:
                    read = self._reader.row_change(entity, row, types, ChangeKind.SNAPSHOT, "filter")
                except UndecodableError:
                    # That record's events stay as they came; the stream itself refuses what it cannot carry.
                    continue
                current[read.record_id] = read
        return current
