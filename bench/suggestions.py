"""Mapping suggestions against a labelled set: is an automatic mapping right, is the right field offered.

No broker, no database: :func:`services.admin.suggestions.suggest` runs over the app objects and
describe-like Salesforce objects of ``bench/data/suggestions.yaml``, each app field labelled with the
field an admin would map it to, or null for none. The figures:

- auto precision: of the fields mapped automatically, how many got the labelled field (a wrong
  automatic mapping syncs data into the wrong place until someone notices);
- top-1 and top-3 recall, over fields that have an answer: the labelled field is the first (or among
  the first three) candidates of a suggestion that is not UNMAPPED, so a weak candidate listed beside
  an UNMAPPED field does not count;
- unmapped accuracy, over fields labelled null: they came out UNMAPPED; and, looser, not AUTO.

``tests/unit/admin/test_suggestions.py`` asserts the targets with :func:`evaluate` too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from bench.report import Figure, Result
from services.admin.suggestions import (
    AUTO_CONFIDENCE,
    AUTO_MARGIN,
    MAX_CANDIDATES,
    SUGGESTED_CONFIDENCE,
    Suggestion,
    Tier,
    suggest,
)
from services.common.schema import AppField, AppObject, CrmObject, crm_object
from services.common.tenant_config import FieldType

DATA = Path(__file__).resolve().parent / "data" / "suggestions.yaml"
AUTO_PRECISION_TARGET = 0.95
TOP3_RECALL_TARGET = 0.90


@dataclass(frozen=True)
class Labelled:
    app: AppObject
    crm: CrmObject
    # App field name → the Salesforce field it should map to, or None for none.
    expected: Mapping[str, str | None]


@dataclass(frozen=True)
class Tally:
    fields: int = 0
    autos: int = 0
    correct_autos: int = 0
    answerable: int = 0
    top1: int = 0
    top3: int = 0
    nulls: int = 0
    nulls_unmapped: int = 0
    nulls_not_auto: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Tally)))

    @property
    def auto_precision(self) -> float:
        # No automatic mapping at all is no wrong one.
        return self.correct_autos / self.autos if self.autos else 1.0

    @property
    def top1_recall(self) -> float:
        return self.top1 / self.answerable if self.answerable else 1.0

    @property
    def top3_recall(self) -> float:
        return self.top3 / self.answerable if self.answerable else 1.0

    @property
    def unmapped_accuracy(self) -> float:
        return self.nulls_unmapped / self.nulls if self.nulls else 1.0

    @property
    def nulls_kept_from_auto(self) -> float:
        return self.nulls_not_auto / self.nulls if self.nulls else 1.0


@dataclass(frozen=True)
class Figures:
    by_object: tuple[tuple[str, Tally], ...]
    overall: Tally
    # One line per field the suggestions got wrong, for reading what to improve.
    misses: tuple[str, ...]


def load(path: Path = DATA) -> list[Labelled]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    labelled = []
    for entry in document["objects"]:
        crm = crm_object(entry["salesforce"])
        app_fields = tuple(
            AppField(
                name=str(f["name"]),
                label=str(f.get("label") or ""),
                type=FieldType(f.get("type", "string")),
                picklist=tuple(str(v) for v in f.get("picklist") or ()),
            )
            for f in entry["fields"]
        )
        expected = {str(f["name"]): f["expect"] for f in entry["fields"]}
        targets: dict[str, str] = {}
        for app_name, crm_name in expected.items():
            if crm_name is None:
                continue
            # A typo in the labels would count as the suggestions' miss, and two app fields labelled
            # with one Salesforce field as a miss of whichever loses it.
            if crm.field(crm_name) is None:
                raise ValueError(f"{entry['app']}.{app_name}: {crm.name} has no field {crm_name}")
            if crm_name in targets:
                raise ValueError(f"{entry['app']}: {app_name} and {targets[crm_name]} are both labelled {crm_name}")
            targets[crm_name] = app_name
        labelled.append(Labelled(AppObject(str(entry["app"]), app_fields), crm, expected))
    return labelled


def _tally(suggestion: Suggestion, expected: str | None) -> tuple[Tally, str | None]:
    names = [c.salesforce for c in suggestion.candidates]
    offered = suggestion.tier is not Tier.UNMAPPED
    auto = suggestion.tier is Tier.AUTO
    shown = " ".join([suggestion.tier, *(f"{c.salesforce} {c.confidence:.2f}" for c in suggestion.candidates)])
    if expected is None:
        tally = Tally(
            fields=1,
            autos=int(auto),
            nulls=1,
            nulls_unmapped=int(not offered),
            nulls_not_auto=int(not auto),
        )
        return tally, None if not offered else f"{suggestion.app}: labelled none, got {shown}"
    top1 = offered and names[:1] == [expected]
    top3 = offered and expected in names[:MAX_CANDIDATES]
    tally = Tally(
        fields=1,
        autos=int(auto),
        correct_autos=int(auto and top1),
        answerable=1,
        top1=int(top1),
        top3=int(top3),
    )
    return tally, None if top1 else f"{suggestion.app}: labelled {expected}, got {shown}"


def evaluate(labelled: Iterable[Labelled]) -> Figures:
    by_object: list[tuple[str, Tally]] = []
    misses: list[str] = []
    for case in labelled:
        tally = Tally()
        for suggestion in suggest(case.app, case.crm):
            one, miss = _tally(suggestion, case.expected[suggestion.app])
            tally += one
            if miss:
                misses.append(f"{case.crm.name}.{miss}")
        by_object.append((case.crm.name, tally))
    overall = sum((t for _, t in by_object), Tally())
    return Figures(tuple(by_object), overall, tuple(misses))


def _table(figures: Figures) -> list[str]:
    lines = [
        f"  {'object':<18} {'fields':>6} {'autos':>6} {'auto prec':>9} {'top-1':>6} {'top-3':>6} "
        f"{'null→unmapped':>13} {'null→not auto':>13}"
    ]
    for name, t in (*figures.by_object, ("overall", figures.overall)):
        lines.append(
            f"  {name:<18} {t.fields:>6} {t.autos:>6} {t.auto_precision:>9.2f} {t.top1_recall:>6.2f} "
            f"{t.top3_recall:>6.2f} {t.unmapped_accuracy:>13.2f} {t.nulls_kept_from_auto:>13.2f}"
        )
    return lines


def run() -> Result:
    labelled = load()
    started = time.perf_counter()
    figures = evaluate(labelled)
    elapsed = time.perf_counter() - started
    overall = figures.overall
    return Result(
        benchmark="suggestions: mapping suggestions against the labelled set (bench/data/suggestions.yaml)",
        parameters={
            "objects": len(labelled),
            "app fields": overall.fields,
            "with an answer": overall.answerable,
            "labelled none": overall.nulls,
            "auto": f"confidence >= {AUTO_CONFIDENCE} and {AUTO_MARGIN} ahead",
            "suggested": f"confidence >= {SUGGESTED_CONFIDENCE}",
        },
        figures=[
            Figure("auto precision (right autos / autos)", overall.auto_precision, "ratio", AUTO_PRECISION_TARGET),
            Figure("fields with an answer mapped automatically", overall.correct_autos / overall.answerable, "ratio"),
            Figure("top-1 recall (fields with an answer)", overall.top1_recall, "ratio"),
            Figure("top-3 recall (fields with an answer)", overall.top3_recall, "ratio", TOP3_RECALL_TARGET),
            Figure("unmapped accuracy (labelled none → UNMAPPED)", overall.unmapped_accuracy, "ratio"),
            Figure("labelled none kept from auto", overall.nulls_kept_from_auto, "ratio"),
            Figure("suggest() per object", elapsed / len(labelled) * 1000, "ms", higher_is_better=False),
        ],
        notes=[
            *_table(figures),
            "  recall counts a candidate only in a suggestion that is not UNMAPPED",
            *(["  not right first:"] if figures.misses else []),
            *(f"    {miss}" for miss in figures.misses),
        ],
    )
