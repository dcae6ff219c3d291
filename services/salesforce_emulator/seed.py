"""The seed file: which orgs, users, connected apps, custom objects and custom metadata types exist on first start.

A picklist value is a plain string (its label is the value) or ``{value, label}``. A custom metadata
type lists its fields and its records (``DeveloperName``, optional ``MasterLabel``, custom values)::

    objects:
      Account:
        fields:
          - {name: Segment__c, type: picklist, picklist_values: [{value: cust_direct, label: Customer - Direct}, Other]}
    metadata_types:
      Region_Mapping__mdt:
        label: Region Mapping
        fields:
          - {name: Country_Code__c, type: string, length: 2, required: true}
        records:
          - {DeveloperName: France, MasterLabel: France, Country_Code__c: FR}

The seed creates what is missing and never changes what exists, so it is safe to apply on every
start: with a data file the orgs (and their sessions) survive restarts; with ``:memory:`` the same
seed rebuilds the same orgs, with the same ids, every time.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from services.salesforce_emulator.orgs import Org, OrgRegistry, OrgSpec


class SeedError(Exception):
    """The seed file is missing, unreadable or invalid; the message names the file and the problem."""


class SeedFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    orgs: tuple[OrgSpec, ...]

    @model_validator(mode="after")
    def _one_default(self) -> SeedFile:
        if not self.orgs:
            msg = "a seed defines at least one org"
            raise ValueError(msg)
        defaults = [o.alias for o in self.orgs if o.default]
        if len(defaults) > 1:
            msg = f"only one org can be the default, got {defaults}"
            raise ValueError(msg)
        aliases = [o.alias for o in self.orgs]
        if len(set(aliases)) != len(aliases):
            msg = f"org aliases repeat: {aliases}"
            raise ValueError(msg)
        return self

    @property
    def default_org(self) -> OrgSpec:
        return next((o for o in self.orgs if o.default), self.orgs[0])


def load_seed(path: Path) -> SeedFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        msg = f"cannot read seed file {path}: {exc}"
        raise SeedError(msg) from exc
    try:
        return SeedFile.model_validate(raw)
    except ValidationError as exc:
        msg = f"invalid seed file {path}: {exc}"
        raise SeedError(msg) from exc


def apply_seed(registry: OrgRegistry, seed: SeedFile) -> Org:
    """Create the seed's missing orgs; return the default org."""
    default = seed.default_org
    for spec in seed.orgs:
        registry.ensure(spec.model_copy(update={"default": spec.alias == default.alias}))
    return registry.get(default.alias)
