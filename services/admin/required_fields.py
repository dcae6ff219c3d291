"""Whether each object pair fits the schemas: every field a create needs on the side it creates
records in, and a SOQL filter Salesforce can run. Pure.

Salesforce refuses a create without its required fields (``REQUIRED_FIELD_MISSING``): every
createable, non-nillable field without a default (Contact ``LastName``; Lead ``LastName`` and
``Company``; Opportunity ``Name``, ``StageName`` and ``CloseDate``). A pair that creates records in
Salesforce (its direction flows there) must send each of them with a rule flowing that way; the
external-id field is Duplex's to set. The app side's required fields come from the app object's
declared schema, for pairs that create app records. Without a describe or a declaration there is
nothing to check against, and nothing is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.schema import AppObject, CrmObject
from services.common.soql_filter import check_where, parse_where
from services.common.tenant_config import ObjectPair, TenantConfig


@dataclass(frozen=True)
class MissingFields:
    where: str
    message: str


def _sent(pair: ObjectPair, *, to_crm: bool) -> set[str]:
    return {
        (rule.salesforce if to_crm else rule.app).lower()
        for rule in pair.fields
        if (pair.direction_of(rule).to_crm if to_crm else pair.direction_of(rule).to_app)
    }


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _message(pair: ObjectPair, made: str, lacking: list[str], flowing: str) -> str:
    them = "it" if len(lacking) == 1 else "them"
    return (
        f"pair {pair.name} creates {made}, which require {_listed(lacking)} on create: map {them} with a rule"
        f" flowing to {flowing}"
    )


def missing_required(
    config: TenantConfig, crm: Mapping[str, CrmObject], app: Mapping[str, AppObject]
) -> list[MissingFields]:
    """Each pair whose creates would lack a required field; ``crm`` by lowercase name, ``app`` by name."""
    found: list[MissingFields] = []
    for index, pair in enumerate(config.spec.objects):
        where = f"spec.objects[{index}].fields"
        obj = crm.get(pair.salesforce.object.lower())
        if obj is not None and pair.direction.to_crm:
            sent = _sent(pair, to_crm=True) | {pair.salesforce.external_id_field.lower()}
            lacking = [f.name for f in obj.fields if f.required and f.name.lower() not in sent]
            if lacking:
                flowing = "Salesforce (direction both or app_to_crm)"
                found.append(MissingFields(where, _message(pair, f"Salesforce {obj.name} records", lacking, flowing)))
        declared = app.get(pair.app.object)
        if declared is not None and pair.direction.to_app:
            sent = _sent(pair, to_crm=False) | {pair.app.id_field.lower()}
            lacking = [f.name for f in declared.fields if f.required and f.name.lower() not in sent]
            if lacking:
                flowing = "the app (direction both or crm_to_app)"
                found.append(MissingFields(where, _message(pair, f"app {declared.name} records", lacking, flowing)))
    return found


def filter_problems(config: TenantConfig, crm: Mapping[str, CrmObject]) -> list[tuple[str, str]]:
    """(where, message) for each problem of a pair's SOQL filter or typed filters against its object's describe."""
    found: list[tuple[str, str]] = []
    for index, pair in enumerate(config.spec.objects):
        obj = crm.get(pair.salesforce.object.lower())
        if obj is None:
            continue
        clauses: list[tuple[str, str]] = []
        if pair.filter is not None and pair.filter.soql is not None:
            clauses.append((f"spec.objects[{index}].filter.soql", pair.filter.soql))
        for j, rule in enumerate(pair.fields):
            for k, case in enumerate(rule.classify or ()):
                clauses.append((f"spec.objects[{index}].fields[{j}].classify[{k}].soql", case.soql))
        types = {f.name: f.type for f in obj.fields}
        for where, soql in clauses:
            # The document's own validation refused a clause that does not parse.
            problems = check_where(parse_where(soql), types, object_name=obj.name)
            found += [(where, str(p)) for p in problems]
    return found
